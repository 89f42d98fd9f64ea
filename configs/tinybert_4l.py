"""TinyBERT-4L shape: 4 layers, hidden 312, 12 heads, FFN 1200, on the 30,000 vocab (14.1M)."""

import ml_collections

from kdjax.config_lib import model_config


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": "tinybert_4l",
            "model": model_config(
                vocab_size=30000, hidden_size=312, num_layers=4, num_heads=12,
                intermediate_size=1200, embedding_size=312, max_position_embeddings=512,
            ),
        }
    )

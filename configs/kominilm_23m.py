"""KoMiniLM-23M: 6 layers, hidden 384, 12 heads, FFN 1536, vocab 32,000 (23.1M params)."""

import ml_collections

from kdjax.config_lib import model_config


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": "kominilm_23m",
            "model": model_config(
                vocab_size=32000, hidden_size=384, num_layers=6, num_heads=12,
                intermediate_size=1536, embedding_size=384, max_position_embeddings=512,
            ),
        }
    )

"""KR-ELECTRA-Small-KD: the ELECTRA-Small shape (12 layers, hidden 256, 4 heads, FFN 1024,
embedding 128 + embeddings_project to 256), vocab 30,000 shared with the teacher.
13.5M params, 53.9 MB fp32 (paper: 53 MB)."""

import ml_collections

from kdjax.config_lib import model_config


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": "kd_small",
            "model": model_config(
                vocab_size=30000, hidden_size=256, num_layers=12, num_heads=4,
                intermediate_size=1024, embedding_size=128, max_position_embeddings=512,
                head="discriminator",
            ),
        }
    )

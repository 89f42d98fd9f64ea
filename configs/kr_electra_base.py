"""KR-ELECTRA-base discriminator (the teacher): 12 layers, hidden 768, 12 heads, FFN 3072,
embedding 768, WordPiece vocab 30,000, 512 positions. 109.1M params, 436 MB fp32."""

import ml_collections

from kdjax.config_lib import model_config


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": "kr_electra_base",
            "model": model_config(
                vocab_size=30000, hidden_size=768, num_layers=12, num_heads=12,
                intermediate_size=3072, embedding_size=768, max_position_embeddings=512,
                head="discriminator",
            ),
        }
    )

"""KR-ELECTRA(-base) generator: hidden 256, 4 heads, FFN 1024, 12 layers, as in KR-ELECTRA.

The ELECTRA generator shares the discriminator's 768-wide embeddings, so embedding_size (768)
> hidden_size (256) and an `embeddings_project` maps 768 -> 256; the MLM head maps back to 768
and is tied to the word embeddings.
"""

import ml_collections

from kdjax.config_lib import model_config


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": "kr_electra_generator",
            "model": model_config(
                vocab_size=30000, hidden_size=256, num_layers=12, num_heads=4,
                intermediate_size=1024, embedding_size=768, max_position_embeddings=512,
                head="generator",
            ),
        }
    )

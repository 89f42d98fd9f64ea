"""A tiny model for tests and quick checks (runs in milliseconds on CPU).

`debug.py:student` gives a tiny factorized student (all three low-rank parts, like LF-V3).
"""

import ml_collections

from kdjax.config_lib import model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg == "student":
        model = model_config(
            vocab_size=512, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
            embedding_size=16, max_position_embeddings=128, head="discriminator",
            ffn_rank=8, attention_rank=8, embedding_rank=8,
        )
    else:
        model = model_config(
            vocab_size=512, hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128,
            embedding_size=64, max_position_embeddings=128, head="discriminator",
        )
    return ml_collections.ConfigDict({"name": f"debug_{arg or 'teacher'}", "model": model})

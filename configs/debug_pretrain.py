"""ELECTRA pre-training of a tiny discriminator + generator on the built-in Korean sample."""

import ml_collections

from kdjax.config_lib import (
    data_config,
    mesh_config,
    model_config,
    pretrain_config,
    sibling,
    train_config,
)


def get_config() -> ml_collections.ConfigDict:
    disc = sibling(__file__, "debug.py").model
    # The generator is smaller (ELECTRA: 1/4 - 1/3 of the discriminator) and shares its
    # 64-wide embeddings.
    gen = model_config(
        vocab_size=disc.vocab_size, hidden_size=32, num_layers=2, num_heads=2,
        intermediate_size=64, embedding_size=disc.embedding_size or disc.hidden_size,
        max_position_embeddings=disc.max_position_embeddings, head="generator",
    )
    return ml_collections.ConfigDict({
        "name": "debug_pretrain",
        "discriminator": {"model": disc},
        "generator": {"model": gen},
        "pretrain": pretrain_config(),
        "data": data_config(files="builtin:sample", max_length=64, vocab_size=512),
        "train": train_config(steps=20, batch_size=8, log_every=5, save_every=10, lr=2e-3,
                              warmup_steps=2),
        "mesh": mesh_config(),
    })

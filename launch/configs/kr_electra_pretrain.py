"""ELECTRA pre-training of the KR-ELECTRA-base teacher on a Cloud TPU slice: discriminator
`configs/kr_electra_base.py` (12L/768, 109M) and generator `configs/kr_electra_generator.py`
(12L/256 on the shared 768-wide embeddings, 33M), 256 x 128 tokens a step.

Multi-host runs need a tokenizer made beforehand (`kdjax tokenizer train --vocab_size 30000`,
then `--stage` it and pass --config.data.tokenizer=PATH); data.files as in
kr_electra_lf_v3.py. The mesh is data parallel over all chips: `kdjax compile` (docs/scale.md)
shows the step at 256 x 128 fits a v4, v5e or v6e chip with replicated parameters and that
fsdp only adds all-gathers here; use --config.mesh.preset=data_fsdp for larger batches on
v5e (16 GiB chips).
"""

import ml_collections

from kdjax.config_lib import (
    data_config,
    load_config,
    mesh_config,
    pretrain_config,
    train_config,
)


def get_config() -> ml_collections.ConfigDict:
    disc = load_config("kr_electra_base").model
    gen = load_config("kr_electra_generator").model
    return ml_collections.ConfigDict({
        "name": "kr_electra_pretrain",
        "discriminator": {"model": disc},
        "generator": {"model": gen},
        "pretrain": pretrain_config(),
        "data": data_config(files="corpus", max_length=128, tokenizer="tokenizer",
                            vocab_size=30000),
        "train": train_config(steps=1_000_000, batch_size=256, log_every=100, save_every=2000,
                              keep=3, lr=2e-4, warmup_steps=10_000, schedule="linear"),
        "mesh": mesh_config(shape=(-1, 1, 1), rules="replicated"),
    })

"""ELECTRA pre-training of the KR-ELECTRA-base teacher on a Cloud TPU slice: discriminator
`configs/kr_electra_base.py` (12L/768, 109M) and generator `configs/kr_electra_generator.py`
(12L/256 on the shared 768-wide embeddings, 33M), 256 x 128 tokens a step.

Multi-host runs need a tokenizer made beforehand (`kdjax tokenizer train --vocab_size 30000`,
then `--stage` it and pass --config.data.tokenizer=PATH); data.files as in
kr_electra_lf_v3.py. The mesh is the `data_fsdp` preset: FSDP over each host's chips, data
parallel across hosts. `kdjax compile` (docs/scale.md) on a v4-32: the step fits a chip with
replicated parameters (3.1 GiB), but then every chip runs the whole AdamW update of both
models and the step is HBM-bound at 7.4 ms (roofline); data_fsdp shards that state 4 ways:
2.2 GiB a chip, 5.4 ms, 386 collectives a step (fsdp over all 16 chips: 4.8 ms but 2,800
collectives). For a mesh of your own, clear the preset: --config.mesh.preset= \
--config.mesh.shape='(16,1,1)' --config.mesh.rules=replicated.
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
        "mesh": mesh_config(preset="data_fsdp"),
    })

"""A tiny fine-tuning run for tests and quick checks: a random-init `configs/debug.py` model on
NSMC-format data, sequence length 32, batch 8, a few steps.

    kdjax finetune --config configs/finetune/debug.py --config.tokenizer=TOKENIZER_DIR \
        --config.task.data_dir=DIR_WITH_NSMC_TSV --workdir /tmp/ft

`debug.py:TASK` picks another task (e.g. `debug.py:korsts`).
"""

from pathlib import Path

import ml_collections

from kdjax.config_lib import finetune_config

CONFIGS = Path(__file__).resolve().parent.parent


def get_config(task: str | None = None) -> ml_collections.ConfigDict:
    cfg = finetune_config(task or "nsmc", **{
        "name": "finetune_debug",
        "model": str(CONFIGS / "debug.py"),
        "task.max_length": 32,
        "train.steps": 12,
        "train.batch_size": 8,
        "train.lr": 3e-3,
        "train.warmup_steps": 0,
        "train.schedule": "constant",
        "train.log_every": 4,
        "train.save_every": 6,
        "eval.every": 6,
        "eval.batch_size": 16,
        "augment.batch_size": 16,
    })
    return cfg

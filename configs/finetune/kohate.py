"""Fine-tune (or task-distill) a model on Korean hate speech (3-class macro F1, plus binary F1; no
dev split: held-out train). --config.task.binary=True trains none vs. offensive+hate.

Per-task defaults (max_length, epochs, batch size, lr, warmup, weight decay) come from the
task's `defaults` (KoELECTRA fine-tuning settings). Usage:

    kdjax finetune --config configs/finetune/kohate.py --config.model=MODEL_DIR \
        --config.task.data_dir=../shared/data/ko --workdir runs/kohate

Task KD: add --config.distill.teacher=FINETUNED_WORKDIR (see docs/finetune.md).
"""

import ml_collections

from kdjax.config_lib import finetune_config


def get_config() -> ml_collections.ConfigDict:
    return finetune_config("kohate")

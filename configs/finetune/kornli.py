"""Fine-tune (or task-distill) a model on KorNLI (accuracy; no dev split here: held-out train).

Per-task defaults (max_length, epochs, batch size, lr, warmup, weight decay) come from the
task's `defaults` (KoELECTRA fine-tuning settings). Usage:

    kdjax finetune --config configs/finetune/kornli.py --config.model=MODEL_DIR \
        --config.task.data_dir=../shared/data/ko --workdir runs/kornli

Task KD: add --config.distill.teacher=FINETUNED_WORKDIR (see docs/finetune.md).
"""

import ml_collections

from kdjax.config_lib import finetune_config


def get_config() -> ml_collections.ConfigDict:
    return finetune_config("kornli")

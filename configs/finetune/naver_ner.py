"""Fine-tune (or task-distill) a model on Naver NER (entity F1; selection on dev).

Per-task defaults (max_length, epochs, batch size, lr, warmup, weight decay) come from the
task's `defaults` (KoELECTRA fine-tuning settings). Usage:

    kdjax finetune --config configs/finetune/naver_ner.py --config.model=MODEL_DIR \
        --config.task.data_dir=../shared/data/ko --workdir runs/naver_ner

Task KD: add --config.distill.teacher=FINETUNED_WORKDIR (see docs/finetune.md).
"""

import ml_collections

from kdjax.config_lib import finetune_config


def get_config() -> ml_collections.ConfigDict:
    return finetune_config("naver_ner")

"""KorSTS: Korean semantic textual similarity (kakaobrain/KorNLUDatasets), Spearman x100.

Files (header ``genre filename year id score sentence1 sentence2``, tab-separated): the shared
layout ``train.tsv`` / ``dev.tsv`` / ``test.tsv`` or the original release ``sts-train.tsv`` /
``sts-dev.tsv`` / ``sts-test.tsv``. The release has lines with unbalanced quotes, so fields are
read raw (``csv.QUOTE_NONE``). Scores are floats in [0, 5]; the model regresses them directly
(one output, MSE), evaluation reports Spearman (main) and Pearson correlation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdjax.data.tasks.base import Task, read_table
from kdjax.data.tasks.registry import register
from kdjax.errors import DataError

# KoELECTRA finetune/config/korsts/koelectra-base-v3.json: max_seq_len 128, 10 epochs, batch 32,
# lr 5e-5, warmup_proportion 0, weight_decay 0.
DEFAULTS = {"max_length": 128, "epochs": 10, "batch_size": 32, "lr": 5e-5, "warmup": 0.0,
            "weight_decay": 0.0}


@register
class KorSTS(Task):
    name = "korsts"
    title = "KorSTS"
    kind = "regression"
    head = "classification"
    pair = True
    label_names = ("score",)
    metrics = ("spearman", "pearson")
    main_metric = "spearman"
    files = {
        "train": ("train.tsv", "sts-train.tsv"),
        "dev": ("dev.tsv", "sts-dev.tsv"),
        "test": ("test.tsv", "sts-test.tsv"),
    }
    folders = ("korsts", "KorSTS")
    defaults = DEFAULTS

    def read_file(self, path: Path, limit: int | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cols = {"a": ("sentence1",), "b": ("sentence2",), "score": ("score",)}
        for line, row in read_table(path, cols):
            if limit is not None and len(out) >= limit:
                break
            try:
                score = float(row["score"])
            except ValueError:
                score = math.nan
            if not 0.0 <= score <= 5.0:
                raise DataError(
                    f"{path}:{line}: score must be a number in [0, 5], got {row['score']!r}"
                )
            out.append({"text_a": row["a"], "text_b": row["b"], "label": score})
        return out

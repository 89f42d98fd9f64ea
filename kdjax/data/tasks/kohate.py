"""KOHATE: Korean hate speech in news comments (kocohub/korean-hate-speech), macro F1.

Files: the shared layout ``train.tsv`` / ``test.tsv`` or the original release's
``labeled/train.tsv`` and ``labeled/dev.tsv`` (its dev split is the labelled evaluation set, so it
is this task's test split; KoELECTRA names it ``val.tsv``). Columns (header): ``comments``,
``contain_gender_bias``, ``bias``, ``hate`` with ``hate`` in none / offensive / hate. The files
were written by pandas, so pandas-quoted fields are unquoted (``csv.QUOTE_MINIMAL``).

Metrics: 3-class ``macro_f1`` (main, as KoELECTRA / KR-ELECTRA report it) and ``accuracy``, plus
``binary_f1`` / ``binary_accuracy`` after collapsing offensive + hate into one "toxic" class (the
binary view of the Entropy 2025 paper); ``binary_f1`` is the macro F1 over {none, toxic}.
Option ``binary=True`` trains two classes (none / toxic) instead; then only the binary metrics
exist and ``binary_f1`` is the main one.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from kdjax.data.tasks import metrics as m
from kdjax.data.tasks.base import Task, read_table
from kdjax.data.tasks.registry import register
from kdjax.errors import DataError

# KoELECTRA finetune/config/hate-speech/koelectra-base-v3.json: max_seq_len 128, 10 epochs,
# batch 32, lr 5e-5, warmup_proportion 0, weight_decay 0.
DEFAULTS = {"max_length": 128, "epochs": 10, "batch_size": 32, "lr": 5e-5, "warmup": 0.0,
            "weight_decay": 0.0}
HATE_LABELS = ("none", "offensive", "hate")


@register
class KoHate(Task):
    name = "kohate"
    title = "Korean Hate Speech"
    kind = "sequence"
    head = "classification"
    label_names = HATE_LABELS
    metrics = ("macro_f1", "accuracy", "binary_f1", "binary_accuracy")
    main_metric = "macro_f1"
    files = {
        "train": ("train.tsv", "labeled/train.tsv"),
        "test": ("test.tsv", "labeled/dev.tsv", "dev.tsv", "val.tsv"),
    }
    folders = ("kohate", "korean-hate-speech", "hate-speech", "hate_speech")
    defaults = DEFAULTS
    option_defaults = {"binary": False}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["binary"]:
            self.label_names = ("none", "toxic")
            self.metrics = ("binary_f1", "binary_accuracy")
            self.main_metric = "binary_f1"

    def read_file(self, path: Path, limit: int | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cols = {"text": ("comments", "comment", "text"), "hate": ("hate", "label")}
        for line, row in read_table(path, cols, quoting=csv.QUOTE_MINIMAL):
            if limit is not None and len(out) >= limit:
                break
            hate = HATE_LABELS[self._hate_index(row["hate"], path, line)]
            label = (hate != "none") if self.options["binary"] else HATE_LABELS.index(hate)
            out.append({"text": row["text"], "label": int(label), "hate": hate})
        return out

    def _hate_index(self, value: str, path: Path, line: int) -> int:
        v = value.strip().lower()
        if v not in HATE_LABELS:
            raise DataError(
                f"{path}:{line}: unknown hate label {value!r}; expected one of {list(HATE_LABELS)}"
            )
        return HATE_LABELS.index(v)

    def score(self, gold: np.ndarray, pred: np.ndarray) -> dict[str, float]:
        g, p = np.asarray(gold), np.asarray(pred)
        if not self.options["binary"]:
            out = {"macro_f1": m.macro_f1(g, p), "accuracy": m.accuracy(g, p)}
            g, p = (g != 0).astype(np.int32), (p != 0).astype(np.int32)
        else:
            out = {}
        out["binary_f1"] = m.macro_f1(g, p, labels=(0, 1))
        out["binary_accuracy"] = m.accuracy(g, p)
        return {k: float(out[k]) for k in self.metrics}

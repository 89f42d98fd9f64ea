"""KorNLI: Korean natural language inference (kakaobrain/KorNLUDatasets), accuracy.

Files (header ``sentence1<TAB>sentence2<TAB>gold_label``): the shared layout ``train.tsv``
(there: the XNLI dev translation) / ``test.tsv`` (XNLI test), or the original release
``multinli.train.ko.tsv`` + ``snli_1.0_train.ko.tsv`` (concatenated as train),
``xnli.dev.ko.tsv`` (dev) and ``xnli.test.ko.tsv`` (test). The release has lines with unbalanced
quotes, so fields are read raw (``csv.QUOTE_NONE``). Rows whose gold label is ``-`` (no annotator
consensus, SNLI) are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdjax.data.tasks.base import Task, read_table
from kdjax.data.tasks.registry import register

# KoELECTRA finetune/config/kornli/koelectra-base-v3.json: max_seq_len 128, 15 epochs, batch 64,
# lr 5e-5, warmup_proportion 0, weight_decay 0.
DEFAULTS = {"max_length": 128, "epochs": 15, "batch_size": 64, "lr": 5e-5, "warmup": 0.0,
            "weight_decay": 0.0}


@register
class KorNLI(Task):
    name = "kornli"
    title = "KorNLI"
    kind = "sequence"
    head = "classification"
    pair = True
    label_names = ("entailment", "neutral", "contradiction")
    metrics = ("accuracy",)
    main_metric = "accuracy"
    files = {
        "train": ("train.tsv", "multinli.train.ko.tsv+snli_1.0_train.ko.tsv"),
        "dev": ("dev.tsv", "xnli.dev.ko.tsv"),
        "test": ("test.tsv", "xnli.test.ko.tsv"),
    }
    folders = ("kornli", "KorNLI")
    defaults = DEFAULTS

    def read_file(self, path: Path, limit: int | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cols = {"a": ("sentence1",), "b": ("sentence2",), "label": ("gold_label", "label")}
        for line, row in read_table(path, cols):
            if limit is not None and len(out) >= limit:
                break
            if row["label"].strip() == "-":
                continue
            label = self._label_index(row["label"], path, line)
            out.append({"text_a": row["a"], "text_b": row["b"], "label": label})
        return out

"""NSMC: Naver movie-review sentiment (binary), accuracy.

Files: the shared layout ``train.tsv`` / ``test.tsv`` or the original release (e9t/nsmc)
``ratings_train.txt`` / ``ratings_test.txt``; both are ``id<TAB>document<TAB>label`` with a header
(0 negative, 1 positive). Read without quote processing: reviews contain stray ``"``. The few
empty reviews of the original release are kept as empty texts. No dev split: fine-tuning holds
out part of train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdjax.data.tasks.base import Task, read_table
from kdjax.data.tasks.registry import register
from kdjax.errors import DataError

# KoELECTRA finetune/config/nsmc/koelectra-base-v3.json: max_seq_len 128, 10 epochs, batch 32,
# lr 5e-5, warmup_proportion 0, weight_decay 0.
DEFAULTS = {"max_length": 128, "epochs": 10, "batch_size": 32, "lr": 5e-5, "warmup": 0.0,
            "weight_decay": 0.0}


@register
class NSMC(Task):
    name = "nsmc"
    title = "NSMC"
    kind = "sequence"
    head = "classification"
    label_names = ("negative", "positive")
    metrics = ("accuracy",)
    main_metric = "accuracy"
    files = {
        "train": ("train.tsv", "ratings_train.txt"),
        "test": ("test.tsv", "ratings_test.txt"),
    }
    folders = ("nsmc", "NSMC")
    defaults = DEFAULTS

    def read_file(self, path: Path, limit: int | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cols = {"id": ("id",), "text": ("document", "text", "sentence"), "label": ("label",)}
        for line, row in read_table(path, cols):
            if limit is not None and len(out) >= limit:
                break
            label = row["label"].strip()
            if label not in ("0", "1"):
                raise DataError(f"{path}:{line}: label must be 0 or 1, got {row['label']!r}")
            out.append({"id": row["id"], "text": row["text"], "label": int(label)})
        return out

"""Question Pair: paired-question equivalence (songys/Question_pair), accuracy.

Files: the shared layout ``train.tsv`` / ``dev.tsv`` / ``test.tsv`` (header ``question1
question2 is_duplicate``, as KoELECTRA uses them) or the original release's comma-separated
``kor_pair_train.csv`` (``id,qid1,qid2,question1,question2,is_duplicate``) and
``kor_Pair_test.csv`` / ``kor_pair_test.csv`` (``test_id,question1,question2,is_duplicate``).
Columns are found by header name; ``label`` is accepted for ``is_duplicate``. Labels follow the
dataset: 0 = the same question, 1 = a different question.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from kdjax.data.tasks.base import Task, read_table
from kdjax.data.tasks.registry import register
from kdjax.errors import DataError

# KoELECTRA finetune/config/question-pair/koelectra-base-v3.json: max_seq_len 128, 10 epochs,
# batch 32, lr 5e-5, warmup_proportion 0, weight_decay 0.
DEFAULTS = {"max_length": 128, "epochs": 10, "batch_size": 32, "lr": 5e-5, "warmup": 0.0,
            "weight_decay": 0.0}


@register
class QuestionPair(Task):
    name = "question_pair"
    title = "Question Pair"
    kind = "sequence"
    head = "classification"
    pair = True
    label_names = ("same", "different")
    metrics = ("accuracy",)
    main_metric = "accuracy"
    files = {
        "train": ("train.tsv", "kor_pair_train.csv"),
        "dev": ("dev.tsv",),
        "test": ("test.tsv", "kor_Pair_test.csv", "kor_pair_test.csv"),
    }
    folders = ("question_pair", "question-pair", "Question_pair")
    defaults = DEFAULTS

    def read_file(self, path: Path, limit: int | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cols = {"a": ("question1",), "b": ("question2",), "label": ("is_duplicate", "label")}
        for line, row in read_table(path, cols, quoting=csv.QUOTE_MINIMAL):
            if limit is not None and len(out) >= limit:
                break
            label = row["label"].strip()
            if label.endswith(".0"):  # pandas float columns
                label = label[:-2]
            if label not in ("0", "1"):
                raise DataError(
                    f"{path}:{line}: is_duplicate must be 0 or 1, got {row['label']!r}"
                )
            out.append({"text_a": row["a"], "text_b": row["b"], "label": int(label)})
        return out

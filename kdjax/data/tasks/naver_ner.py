"""Naver NER: named-entity recognition (Naver NLP Challenge 2018), entity-level F1.

Files, format detected per file:

* the shared layout / monologg KoBERT-NER TSV ``train.tsv`` / ``dev.tsv`` / ``test.tsv``: one
  sentence a line, ``words<TAB>labels`` with space-separated words and one label per word;
* the original challenge format (``train_data``): ``index<TAB>word<TAB>tag`` lines, a blank line
  between sentences, tags like ``PER_B`` and ``-`` for outside (read as ``PER-B`` and ``O``).

Label set: ``labels.txt`` (or KoBERT-NER's ``label.txt``) next to the data when present, one
label a line (the ``UNK`` placeholder of KoBERT-NER is dropped: it never occurs in the data), else
the fixed Naver set of 29 labels: ``O`` and ``B``/``I`` of PER FLD AFW ORG LOC CVL DAT TIM NUM EVT
ANM PLT MAT TRM in Naver's suffix style (``PER-B``). `load` adopts the label file it finds, so
read ``num_labels`` after loading. Tags written in the other style (``B-PER``) are mapped to the
label set's style.

Features: the first sub-word of each word carries the word's label, every other position -100.
Evaluation: each word's prediction is the arg-max at its first sub-word; words cut off by
truncation (or that produced no token) are predicted ``O``; scores are seqeval-style exact-span
micro F1 / precision / recall over the full gold sentences.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdjax.data.tasks import metrics as m
from kdjax.data.tasks.base import IGNORE_INDEX, Task, TaskData, encode_chunks, require_fast
from kdjax.data.tasks.registry import register
from kdjax.errors import DataError, ShapeError

# KoELECTRA finetune/config/naver-ner/koelectra-base-v3.json: max_seq_len 128, 20 epochs,
# batch 32, lr 5e-5, warmup_proportion 0, weight_decay 0.
DEFAULTS = {"max_length": 128, "epochs": 20, "batch_size": 32, "lr": 5e-5, "warmup": 0.0,
            "weight_decay": 0.0}
ENTITY_TYPES = ("PER", "FLD", "AFW", "ORG", "LOC", "CVL", "DAT", "TIM", "NUM", "EVT", "ANM",
                "PLT", "MAT", "TRM")
NAVER_LABELS = ("O", *(f"{t}-{p}" for t in ENTITY_TYPES for p in ("B", "I")))
LABEL_FILES = ("labels.txt", "label.txt")
_OUTSIDE = ("O", "-")


@register
class NaverNER(Task):
    name = "naver_ner"
    title = "Naver NER"
    kind = "token"
    head = "token_classification"
    label_names = NAVER_LABELS
    metrics = ("f1", "precision", "recall")
    main_metric = "f1"
    files = {
        "train": ("train.tsv", "train_data", "train.txt"),
        "dev": ("dev.tsv", "dev_data", "dev.txt"),
        "test": ("test.tsv", "test_data", "test.txt"),
    }
    folders = ("naver_ner", "naver-ner", "ner")
    defaults = DEFAULTS

    # -- loading ----------------------------------------------------------------------------

    def load(
        self, data_dir: str | os.PathLike[str], split: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        folder = self.resolve_dir(data_dir)
        for name in LABEL_FILES:
            if (folder / name).is_file():
                self.label_names = read_label_file(folder / name)
                break
        return super().load(data_dir, split, limit)

    def read_file(self, path: Path, limit: int | None) -> list[dict[str, Any]]:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
        first = next((ln for ln in lines if ln.strip()), "")
        fields = first.split("\t")
        if len(fields) == 3 and fields[0].strip().isdigit():
            return self._read_challenge(path, lines, limit)
        return self._read_tsv(path, lines, limit)

    def _read_tsv(self, path: Path, lines: list[str], limit: int | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, text in enumerate(lines, start=1):
            if limit is not None and len(out) >= limit:
                break
            if not text.strip():
                continue
            fields = text.split("\t")
            if len(fields) != 2:
                raise DataError(
                    f"{path}:{i}: expected 'words<TAB>labels' (2 tab-separated fields), got "
                    f"{len(fields)}"
                )
            words, tags = fields[0].split(), fields[1].split()
            if not out and [t.lower() for t in tags] in (["labels"], ["label"], ["tags"]):
                continue  # a header line
            if len(words) != len(tags):
                raise DataError(
                    f"{path}:{i}: {len(words)} words but {len(tags)} labels; every word needs "
                    "one label"
                )
            out.append({"words": words, "labels": [self._tag(t, path, i) for t in tags]})
        return out

    def _read_challenge(
        self, path: Path, lines: list[str], limit: int | None
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        words: list[str] = []
        tags: list[str] = []
        for i, text in enumerate([*lines, ""], start=1):
            if limit is not None and len(out) >= limit:
                break
            if not text.strip():
                if words:
                    out.append({"words": words, "labels": tags})
                    words, tags = [], []
                continue
            fields = text.split("\t")
            if len(fields) != 3:
                raise DataError(
                    f"{path}:{i}: expected 'index<TAB>word<TAB>tag' (3 tab-separated fields), "
                    f"got {len(fields)}"
                )
            words.append(fields[1].strip())
            tags.append(self._tag(fields[2], path, i))
        return out

    def _tag(self, tag: str, path: Path, line: int) -> str:
        t = tag.strip()
        if t in self.label_names:
            return t
        if t in _OUTSIDE and "O" in self.label_names:
            return "O"
        prefix, typ = m.split_tag(t)
        if prefix != "O":
            for cand in (f"{typ}-{prefix}", f"{prefix}-{typ}", f"{typ}_{prefix}"):
                if cand in self.label_names:
                    return cand
        raise DataError(
            f"{path}:{line}: unknown NER tag {tag!r}; the label set is {list(self.label_names)} "
            "(put a labels.txt with one label a line next to the data to use another set)"
        )

    # -- features ---------------------------------------------------------------------------

    def featurize(
        self, examples: Sequence[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> TaskData:
        """``tokenizer(words, is_split_into_words=True)`` padded to `max_length`; ``labels``
        [N, L] carry the word label at each word's first sub-word and -100 elsewhere.

        ``meta["word_index"]`` [N, L] int32 holds the word index at first sub-words, -1
        elsewhere.
        """
        require_fast(tokenizer, self.name)
        max_length = self._max_length(max_length)
        n = len(examples)
        keys = ("input_ids", "attention_mask", "token_type_ids")
        arrays = {k: np.zeros((n, max_length), np.int32) for k in keys}
        labels = np.full((n, max_length), IGNORE_INDEX, np.int32)
        word_index = np.full((n, max_length), -1, np.int32)
        index = {name: i for i, name in enumerate(self.label_names)}
        words = [list(e["words"]) for e in examples]
        for rows, enc in encode_chunks(tokenizer, [words], max_length,
                                       is_split_into_words=True, truncation=True):
            for k in keys:
                if k in enc:
                    arrays[k][rows] = np.asarray(enc[k], np.int32)
            for j, ex in enumerate(examples[rows]):
                row = rows.start + j
                prev = None
                for pos, wid in enumerate(enc.word_ids(j)):
                    if wid is not None and wid != prev:
                        word_index[row, pos] = wid
                        tag = ex["labels"][wid]
                        if tag not in index:
                            raise DataError(
                                f"task {self.name}: label {tag!r} of example {row} is not in the "
                                f"label set {list(self.label_names)}"
                            )
                        labels[row, pos] = index[tag]
                    prev = wid
        arrays["labels"] = labels
        return TaskData(arrays=arrays, examples=list(examples), meta={"word_index": word_index})

    # -- evaluation -------------------------------------------------------------------------

    def predict_tags(self, outputs: np.ndarray, data: TaskData) -> list[list[str]]:
        """Per example, one predicted tag per word (``O`` for words without a token)."""
        out = self._check_outputs(outputs, data)
        if out.ndim != 3 or out.shape[2] != self.num_labels:
            raise ShapeError(
                f"task {self.name}: outputs must be logits [N, L, {self.num_labels}], got "
                f"{out.shape}"
            )
        word_index = data.meta["word_index"]
        if word_index.shape[1] != out.shape[1]:
            raise ShapeError(
                f"task {self.name}: outputs have length {out.shape[1]} but the features "
                f"{word_index.shape[1]}"
            )
        best = np.argmax(out, axis=-1)
        preds: list[list[str]] = []
        for i, ex in enumerate(data.examples):
            tags = ["O"] * len(ex["words"])
            for pos in np.nonzero(word_index[i] >= 0)[0]:
                tags[int(word_index[i, pos])] = self.label_names[int(best[i, pos])]
            preds.append(tags)
        return preds

    def evaluate(self, outputs: np.ndarray, data: TaskData) -> dict[str, float]:
        preds = self.predict_tags(outputs, data)
        scores = m.entity_f1([ex["labels"] for ex in data.examples], preds)
        return {k: float(scores[k]) for k in self.metrics}


def read_label_file(path: Path) -> tuple[str, ...]:
    """Labels of a ``labels.txt`` (one a line; blanks and ``UNK`` dropped; ``O`` required)."""
    with open(path, encoding="utf-8-sig") as f:
        labels = [ln.strip() for ln in f if ln.strip() and ln.strip() != "UNK"]
    if "O" not in labels:
        raise DataError(f"{path}: the label list has no 'O' label; add it (one label a line)")
    if len(set(labels)) != len(labels):
        raise DataError(f"{path}: the label list repeats a label")
    return tuple(labels)

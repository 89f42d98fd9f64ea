"""The `Task` base class: file discovery and reading, featurisation, loss and evaluation.

A task knows where its files are (`files`: per split, the shared-layout name first and then the
names of the original public release, so users can point ``data_dir`` at their own download),
how to read them into plain example dicts (`load`), how to turn examples into fixed-length arrays
(`featurize` -> `TaskData`), the jax-traceable training loss of its kind (`loss`) and its metrics
on model outputs (`evaluate`, scores x100).

Kinds and their arrays (N rows, L = max_length; ids int32):

=============  ============================  =========================================
kind           head (EncoderConfig.head)     label arrays / model outputs
=============  ============================  =========================================
sequence       classification                labels [N] int32 / logits [N, C]
regression     classification (1 label)      labels [N] float32 / [N] or [N, 1]
token          token_classification          labels [N, L] int32, -100 ignored / [N, L, C]
span           qa                            start_positions, end_positions [N] / [N, L, 2]
=============  ============================  =========================================

Example dicts: single-sentence tasks ``{"text", "label"}``, pair tasks ``{"text_a", "text_b",
"label"}`` (class index or float score); NER ``{"words", "labels"}``; KorQuAD ``{"id",
"question", "context", "answers": [{"text", "answer_start"}], "title"}``.

``data_dir`` may be the task's own folder or a parent folder holding it (e.g.
``../shared/data/ko`` with ``nsmc/`` inside): `resolve_dir` looks in ``data_dir`` first and then
in ``data_dir/<folder>`` for each of the task's `folders`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kdjax.errors import ConfigError, DataError, ShapeError

__all__ = [
    "IGNORE_INDEX",
    "KINDS",
    "Task",
    "TaskData",
    "encode_chunks",
    "encode_texts",
    "read_table",
    "require_fast",
    "span_loss",
    "sequence_loss",
    "regression_loss",
    "token_loss",
]

IGNORE_INDEX = -100  # label of positions that carry no loss (HF convention)
KINDS = ("sequence", "regression", "token", "span")
_HEADS = {
    "sequence": "classification",
    "regression": "classification",
    "token": "token_classification",
    "span": "qa",
}
_ENCODE_CHUNK = 4096  # rows per tokenizer call: bounded memory, still batched for speed

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # KorQuAD-size fields in user TSVs


@dataclasses.dataclass
class TaskData:
    """One featurized split.

    Attributes:
      arrays: everything the device sees, N rows each: ``input_ids``, ``attention_mask``,
        ``token_type_ids`` [N, L] int32 plus the label keys of the task's kind (see the module
        docstring).
      examples: the raw examples of the split (for KorQuAD one example has >= 1 rows).
      meta: host-only information `Task.evaluate` needs (NER word ids, QA offsets and windows);
        never sent to the device.
    """

    arrays: dict[str, np.ndarray]
    examples: list[dict[str, Any]]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        """N, the number of feature rows (QA windows for KorQuAD)."""
        return int(self.arrays["input_ids"].shape[0])

    def __len__(self) -> int:
        return self.num_rows


# ---------------------------------------------------------------------------------------------
# losses (jax-traceable; jax is imported lazily so that loading data does not need it)
# ---------------------------------------------------------------------------------------------


def _row_weight(batch: dict[str, Any], n: int) -> Any:
    """[B] float32 per-row weight: ``batch["hard_weight"]`` when present (0 = no hard-label
    loss for that row, e.g. augmented or padding rows), else ones."""
    import jax.numpy as jnp

    w = batch.get("hard_weight")
    if w is None:
        return jnp.ones((n,), jnp.float32)
    return jnp.asarray(w, jnp.float32).reshape((n,))


def _nll(logits: Any, labels: Any) -> tuple[Any, Any]:
    """(-log p(label), valid) over the last axis of `logits`; labels < 0 are invalid."""
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(logits, jnp.float32)
    y = jnp.asarray(labels).astype(jnp.int32)
    valid = y >= 0
    log_p = jax.nn.log_softmax(x, axis=-1)
    idx = jnp.clip(y, 0, x.shape[-1] - 1)[..., None]
    nll = -jnp.take_along_axis(log_p, idx, axis=-1)[..., 0]
    return jnp.where(valid, nll, 0.0), valid


def _wmean(values: Any, weights: Any) -> Any:
    import jax.numpy as jnp

    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-6)


def sequence_loss(logits: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Cross-entropy of ``logits`` [B, C] against ``batch["labels"]`` [B] (negative = ignored).

    Returns (scalar loss, {"accuracy"}); both weighted by the optional ``hard_weight`` [B].
    """
    import jax.numpy as jnp

    labels = batch["labels"]
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ShapeError(
            f"sequence loss needs logits [B, C] and labels [B], got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    nll, valid = _nll(logits, labels)
    w = _row_weight(batch, labels.shape[0]) * valid
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _wmean(nll, w), {"accuracy": _wmean(correct, w)}


def regression_loss(logits: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Mean squared error of ``logits`` [B] or [B, 1] against float ``batch["labels"]`` [B].

    Returns (scalar loss, {"mse"}), weighted by the optional ``hard_weight`` [B].
    """
    import jax.numpy as jnp

    labels = batch["labels"]
    x = logits[..., 0] if logits.ndim == 2 and logits.shape[-1] == 1 else logits
    if x.ndim != 1 or x.shape[0] != labels.shape[0]:
        raise ShapeError(
            f"regression loss needs logits [B] or [B, 1] and labels [B], got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    err = (jnp.asarray(x, jnp.float32) - jnp.asarray(labels, jnp.float32)) ** 2
    w = _row_weight(batch, labels.shape[0])
    loss = _wmean(err, w)
    return loss, {"mse": loss}


def token_loss(logits: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Cross-entropy of ``logits`` [B, L, C] against ``batch["labels"]`` [B, L] (-100 ignored),
    averaged over labelled tokens. Returns (scalar loss, {"accuracy"} over labelled tokens)."""
    import jax.numpy as jnp

    labels = batch["labels"]
    if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(labels.shape):
        raise ShapeError(
            f"token loss needs logits [B, L, C] and labels [B, L], got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    nll, valid = _nll(logits, labels)
    w = _row_weight(batch, labels.shape[0])[:, None] * valid
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _wmean(nll, w), {"accuracy": _wmean(correct, w)}


def span_loss(logits: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Extractive-QA loss: mean of the start and end cross-entropies over positions.

    ``logits`` [B, L, 2] (start, end); ``batch["start_positions"]``, ``["end_positions"]`` [B]
    (0 = [CLS] when the answer is not in the window). Returns (scalar loss, {"accuracy"}: share
    of rows whose arg-max start and end are both right).
    """
    import jax.numpy as jnp

    start, end = batch["start_positions"], batch["end_positions"]
    if logits.ndim != 3 or logits.shape[-1] != 2 or logits.shape[0] != start.shape[0]:
        raise ShapeError(
            f"span loss needs logits [B, L, 2] and positions [B], got {tuple(logits.shape)} and "
            f"{tuple(start.shape)}"
        )
    s_nll, s_valid = _nll(logits[..., 0], start)
    e_nll, e_valid = _nll(logits[..., 1], end)
    w = _row_weight(batch, start.shape[0]) * s_valid * e_valid
    correct = (jnp.argmax(logits[..., 0], axis=-1) == start) & (
        jnp.argmax(logits[..., 1], axis=-1) == end
    )
    loss = 0.5 * (_wmean(s_nll, w) + _wmean(e_nll, w))
    return loss, {"accuracy": _wmean(correct.astype(jnp.float32), w)}


_LOSSES = {
    "sequence": sequence_loss,
    "regression": regression_loss,
    "token": token_loss,
    "span": span_loss,
}


# ---------------------------------------------------------------------------------------------
# reading helpers
# ---------------------------------------------------------------------------------------------


def read_table(
    path: Path,
    columns: dict[str, tuple[str, ...]],
    *,
    quoting: int = csv.QUOTE_NONE,
    delimiter: str | None = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a delimited file with a header line, as ``(line number, {field: value})``.

    Args:
      path: the file; ``.csv`` is comma-separated, anything else tab-separated (unless
        `delimiter` is given).
      columns: wanted field -> accepted header names (first match wins).
      quoting: ``csv.QUOTE_NONE`` (raw fields; the KorNLI/KorSTS/NSMC releases contain stray
        quotes) or ``csv.QUOTE_MINIMAL`` (files written by pandas, e.g. korean-hate-speech).

    Raises:
      DataError: the header lacks a wanted column, or a row has too few fields (extra fields
        must be empty, e.g. trailing tabs), naming ``file:line``.
    """
    if delimiter is None:
        delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = None
        for row in reader:
            if row and any(c.strip() for c in row):
                header = [c.strip() for c in row]
                break
        if header is None:
            raise DataError(f"{path} is empty; expected a header line and rows")
        index: dict[str, int] = {}
        for field, names in columns.items():
            hit = next((header.index(n) for n in names if n in header), None)
            if hit is None:
                raise DataError(
                    f"{path}: header {header} has no {' / '.join(names)} column; expected "
                    f"columns {[n[0] for n in columns.values()]}"
                )
            index[field] = hit
        width = len(header)
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) > width and not any(c.strip() for c in row[width:]):
                row = row[:width]
            if len(row) != width:
                raise DataError(
                    f"{path}:{line}: expected {width} {'comma' if delimiter == ',' else 'tab'}-"
                    f"separated fields ({', '.join(header)}), got {len(row)}; fix or remove "
                    "this line"
                )
            yield line, {field: row[i] for field, i in index.items()}


def require_fast(tokenizer: Any, task: str) -> None:
    """ConfigError unless `tokenizer` is a fast (Rust) HF tokenizer (word ids / offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"task {task} needs a fast tokenizer (word_ids / offset mapping); load it with "
            "kdjax.data.tokenizer.load_tokenizer or AutoTokenizer.from_pretrained(..., "
            "use_fast=True)"
        )


def encode_chunks(tokenizer: Any, columns: Sequence[Sequence[Any]], max_length: int,
                  **kwargs: Any) -> Iterator[tuple[slice, Any]]:
    """(rows, tokenizer output) per chunk of rows of `columns` (texts, text pairs or word
    lists; N rows each), padded to `max_length`: bounded memory, still batched for speed."""
    n = len(columns[0])
    for lo in range(0, n, _ENCODE_CHUNK):
        rows = slice(lo, min(n, lo + _ENCODE_CHUNK))
        yield rows, tokenizer(*(list(c[rows]) for c in columns), max_length=max_length,
                              padding="max_length", return_token_type_ids=True,
                              return_attention_mask=True, **kwargs)


def encode_texts(
    tokenizer: Any,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None,
    max_length: int,
) -> dict[str, np.ndarray]:
    """Tokenize single texts or pairs (``truncation="longest_first"``), padded to max_length.

    Returns ``input_ids``, ``attention_mask``, ``token_type_ids`` [N, max_length] int32.
    """
    out = {
        k: np.zeros((len(texts_a), max_length), np.int32)
        for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    columns = [texts_a] if texts_b is None else [texts_a, texts_b]
    for rows, enc in encode_chunks(tokenizer, columns, max_length, truncation="longest_first"):
        for k in out:
            if k in enc:
                out[k][rows] = np.asarray(enc[k], np.int32)
    return out


# ---------------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------------


class Task:
    """Base class of the Korean benchmark tasks (subclass, set the class attributes, implement
    `read_file`; sequence/regression tasks then featurize and evaluate with the defaults here).

    Class attributes:
      name: registry key (``nsmc``); title: display name (``NSMC``).
      kind: ``sequence`` | ``regression`` | ``token`` | ``span``; head: the EncoderConfig head.
      num_labels, label_names: output classes (regression: 1, ``("score",)``).
      metrics, main_metric: what `evaluate` returns (x100) and what model selection uses.
      files: split -> candidate file names, tried in order; the first present is read. A name
        ``a+b`` is a group: every present member is read and concatenated (KorNLI's MultiNLI
        and SNLI training translations).
      folders: sub-folder names tried under ``data_dir`` when the files are not directly in it.
      defaults: fine-tuning settings (max_length, epochs, batch_size, lr, warmup fraction,
        weight_decay, ...) from the KoELECTRA fine-tuning configs.
      option_defaults: the task options `__init__` accepts, with their default values.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    kind: ClassVar[str] = "sequence"
    head: ClassVar[str] = "classification"
    label_names: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ("accuracy",)
    main_metric: str = "accuracy"
    files: ClassVar[dict[str, tuple[str, ...]]] = {}
    folders: ClassVar[tuple[str, ...]] = ()
    defaults: dict[str, Any] = {}
    option_defaults: ClassVar[dict[str, Any]] = {}
    pair: ClassVar[bool] = False  # sequence/regression: examples have text_a/text_b

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            valid = ", ".join(sorted(self.option_defaults)) or "none"
            raise ConfigError(
                f"task {self.name}: unknown option(s) {', '.join(unknown)}; valid options: {valid}"
            )
        merged = dict(self.option_defaults)
        for key, value in options.items():
            default = merged[key]
            if isinstance(default, bool):
                if not isinstance(value, bool | np.bool_):
                    raise ConfigError(f"task {self.name}: option {key} must be true/false, got "
                                      f"{value!r}")
                value = bool(value)
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int | np.integer):
                    raise ConfigError(f"task {self.name}: option {key} must be an integer, got "
                                      f"{value!r}")
                value = int(value)
            merged[key] = value
        self.options: dict[str, Any] = merged
        self.defaults = dict(type(self).defaults)
        self.label_names = tuple(type(self).label_names)
        if self.kind not in KINDS:
            raise ConfigError(f"task {self.name}: unknown kind {self.kind!r}; expected {KINDS}")

    @property
    def num_labels(self) -> int:
        """Number of model outputs per row (per token for NER; 1 for regression, 2 for QA)."""
        return len(self.label_names)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"

    # -- files ------------------------------------------------------------------------------

    @property
    def splits(self) -> tuple[str, ...]:
        """Splits this task can have (``train``, ``dev``, ``test``)."""
        return tuple(self.files)

    def _candidates(self, split: str) -> tuple[str, ...]:
        return self.files.get(split, ())

    def _find_in(self, folder: Path, split: str) -> list[Path]:
        for cand in self._candidates(split):
            members = [folder / m for m in cand.split("+")]
            present = [p for p in members if p.is_file()]
            if present:
                return present
        return []

    def resolve_dir(self, data_dir: str | os.PathLike[str]) -> Path:
        """The folder holding this task's files: `data_dir` itself, or ``data_dir/<folder>`` for
        the first of `folders` that holds any of them (falls back to `data_dir`)."""
        root = Path(data_dir).expanduser()
        for folder in (root, *(root / f for f in self.folders)):
            if folder.is_dir() and any(self._find_in(folder, s) for s in self.files):
                return folder
        return root

    def find_files(self, data_dir: str | os.PathLike[str], split: str) -> list[Path]:
        """The files of `split` under `data_dir` (empty list when absent)."""
        if split not in self.files:
            return []
        return self._find_in(self.resolve_dir(data_dir), split)

    def has_split(self, data_dir: str | os.PathLike[str], split: str) -> bool:
        """Whether `split` exists for this task under `data_dir`."""
        return bool(self.find_files(data_dir, split))

    def load(
        self, data_dir: str | os.PathLike[str], split: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Read the examples of `split` (the first `limit` when given).

        Raises:
          DataError: no file of the split (names the folder and the file names tried), a bad row
            (``file:line``), or no examples.
          ConfigError: a split this task never has.
        """
        if split not in self.files:
            raise ConfigError(
                f"task {self.name} has no {split!r} split; it has {', '.join(self.files)}"
            )
        if limit is not None and limit < 0:
            raise ConfigError(f"task {self.name}: limit must be >= 0 or None, got {limit}")
        folder = self.resolve_dir(data_dir)
        paths = self._find_in(folder, split)
        if not paths:
            names = ", ".join(self._candidates(split))
            sub = "/".join(self.folders)
            raise DataError(
                f"task {self.name}: no {split} file in {folder} (looked for {names}, also in "
                f"sub-folders {sub}); point data_dir at the {self.title or self.name} data"
            )
        examples: list[dict[str, Any]] = []
        for path in paths:
            left = None if limit is None else limit - len(examples)
            if left == 0:
                break
            try:
                examples.extend(self.read_file(path, left))
            except UnicodeDecodeError as exc:
                raise DataError(f"{path} is not UTF-8 text ({exc}); convert it to UTF-8") from None
        if not examples and limit != 0:
            raise DataError(f"task {self.name}: {', '.join(map(str, paths))} holds no examples")
        return examples

    def read_file(self, path: Path, limit: int | None) -> list[dict[str, Any]]:
        """Examples of one file (at most `limit`); implemented by each task."""
        raise NotImplementedError

    def _label_index(self, value: str, path: Path, line: int) -> int:
        v = value.strip()
        if v in self.label_names:
            return self.label_names.index(v)
        raise DataError(
            f"{path}:{line}: unknown label {value!r}; expected one of {list(self.label_names)}"
        )

    # -- features ---------------------------------------------------------------------------

    def _max_length(self, max_length: int) -> int:
        """`max_length` as an int (every `featurize` checks it first); >= 8 or ConfigError."""
        if not isinstance(max_length, int | np.integer) or max_length < 8:
            raise ConfigError(f"task {self.name}: max_length must be an integer >= 8, got "
                              f"{max_length!r}")
        return int(max_length)

    def featurize(
        self, examples: Sequence[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> TaskData:
        """Arrays for sequence/regression tasks: ``tokenizer(text[, text_b])`` padded to
        `max_length` plus ``labels`` [N] (int32 class ids, or float32 scores)."""
        max_length = self._max_length(max_length)
        if self.kind not in ("sequence", "regression"):
            raise NotImplementedError(f"{type(self).__name__} must implement featurize")
        if self.pair:
            arrays = encode_texts(
                tokenizer,
                [e["text_a"] for e in examples],
                [e["text_b"] for e in examples],
                max_length,
            )
        else:
            arrays = encode_texts(tokenizer, [e["text"] for e in examples], None, max_length)
        dtype = np.float32 if self.kind == "regression" else np.int32
        arrays["labels"] = np.asarray([e["label"] for e in examples], dtype).reshape(-1)
        return TaskData(arrays=arrays, examples=list(examples), meta={})

    # -- loss and metrics -------------------------------------------------------------------

    def loss(self, logits: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """jax-traceable training loss of this task's kind: (scalar, small metrics dict).

        Shapes: sequence logits [B, C]; regression [B] or [B, 1]; token [B, L, C]; span
        [B, L, 2]. An optional ``batch["hard_weight"]`` [B] float weights each row (0 = no
        hard-label loss).
        """
        return _LOSSES[self.kind](logits, batch)

    def _check_outputs(self, outputs: np.ndarray, data: TaskData) -> np.ndarray:
        out = np.asarray(outputs)
        n = data.num_rows
        if out.ndim == 0 or out.shape[0] != n:
            raise ShapeError(
                f"task {self.name}: outputs have shape {out.shape} but the data has {n} rows; "
                "pass the model outputs of every row of data.arrays, in order"
            )
        return out

    def predictions(self, outputs: np.ndarray, data: TaskData) -> np.ndarray:
        """Predicted class ids [N] (sequence) or scores [N] (regression)."""
        out = self._check_outputs(outputs, data)
        if self.kind == "regression":
            return out.reshape(out.shape[0], -1)[:, 0].astype(np.float64)
        if out.ndim != 2 or out.shape[1] != self.num_labels:
            raise ShapeError(
                f"task {self.name}: outputs must be logits [N, {self.num_labels}], got {out.shape}"
            )
        return np.argmax(out, axis=-1)

    def evaluate(self, outputs: np.ndarray, data: TaskData) -> dict[str, float]:
        """Every metric in `metrics` (x100) for the model `outputs` on each row of `data`."""
        pred = self.predictions(outputs, data)
        return self.score(data.arrays["labels"], pred)

    def score(self, gold: np.ndarray, pred: np.ndarray) -> dict[str, float]:
        """Metrics from gold labels and predictions (sequence/regression tasks)."""
        from kdjax.data.tasks import metrics as m

        funcs = {
            "accuracy": m.accuracy,
            "macro_f1": m.macro_f1,
            "spearman": m.spearman,
            "pearson": m.pearson,
        }
        return {k: float(funcs[k](gold, pred)) for k in self.metrics}

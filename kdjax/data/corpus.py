"""Corpus pipeline: text -> token ids -> fixed-length examples -> step-indexed global batches.

Determinism and resume: the global batch of step `s` is a pure function of (corpus, seed, s):
examples are visited in a fresh seeded permutation each epoch, and batch `s` is the slice
`[s * global_batch, (s + 1) * global_batch)` of that endless sequence. The data position is
thus just the step, stored in every checkpoint; a resumed run sees exactly the batches it
would have seen. Every process builds the same example order and materialises only the rows
its own devices hold (`jax.make_array_from_process_local_data`), so 1 process x 8 devices and
2 processes x 4 devices train on identical global batches.

Sources: local `.txt`, `.txt.gz`, `.jsonl(.gz)` (field "text"), `.parquet` files, globs or
directories; or `hf:NAME[:CONFIG]` for a `datasets` hub dataset (online only; streamed).
Tokenised corpora are cached as `.npy` under the cache directory, keyed by the files' sizes and
mtimes, the tokenizer's vocabulary and the packing settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from kdjax.errors import DataError

log = logging.getLogger(__name__)

SAMPLE = Path(__file__).resolve().parent / "samples" / "ko_sample.txt"
GENERAL = Path(__file__).resolve().parent / "samples" / "ko_general.txt"
# Everyday sentences in pairs, line 2k + 1 a paraphrase of line 2k (none of them in SAMPLE or
# PARAPHRASE): distilling on them shows the student that a meaning outlives its wording, which
# is what the teacher's nearest neighbours are about (the demo, three seeds each: 68.4 % agreement
# with them, 64.3 % without)
GENERAL_PAIRS = Path(__file__).resolve().parent / "samples" / "ko_general_pairs.txt"
# Line i paraphrases SAMPLE's line i in other words (few shared pieces): the demo's held-out
# pairs, so "is a sentence's nearest neighbour its paraphrase" has a right answer.
PARAPHRASE = Path(__file__).resolve().parent / "samples" / "ko_paraphrase.txt"
TEXT_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".json", ".parquet")


def builtin_source(name: str) -> list[str]:
    """Files of a named built-in corpus: 'sample' (kdjax's own 70 Korean sentences, the demo's
    held-out set), 'paraphrase' (a paraphrase of each of them, line by line; held out with
    them), 'general' (290 more of them, everyday topics: reviews, news, weather, daily
    life, work, and everyday sentences in paraphrase pairs; the demo distils on them) or
    'konlpy' (the Korean constitution and bill texts that the KoNLPy package ships)."""
    if name == "sample":
        return [str(SAMPLE)]
    if name == "general":
        return [str(GENERAL), str(GENERAL_PAIRS)]
    if name == "paraphrase":
        return [str(PARAPHRASE)]
    if name == "konlpy":
        import importlib.util

        spec = importlib.util.find_spec("konlpy")
        if spec is None or not spec.submodule_search_locations:
            raise DataError("corpus 'builtin:konlpy' needs the konlpy package: pip install konlpy")
        root = Path(next(iter(spec.submodule_search_locations))) / "data" / "corpus"
        files = sorted(str(p) for p in root.glob("**/*.txt"))
        if not files:
            raise DataError(f"no corpus files found under {root}; reinstall konlpy")
        return files
    raise DataError(f"unknown built-in corpus {name!r}; use builtin:sample, builtin:paraphrase, "
                    "builtin:general or builtin:konlpy")


def resolve_sources(sources: Sequence[str] | str) -> list[str]:
    """Expand `builtin:NAME`, globs and directories into a list of files (or `hf:` names)."""
    from kdjax.data.tokenizer import expand_globs

    if isinstance(sources, str):
        sources = [s for s in sources.split(",") if s]
    if not sources:
        raise DataError("data.files is empty; give corpus files (e.g. data.files='corpus/*.txt')")
    out: list[str] = []
    for src in sources:
        if src.startswith("builtin:"):
            out += builtin_source(src.split(":", 1)[1])
        elif src.startswith("hf:"):
            out.append(src)
        else:
            try:
                out += expand_globs([src])
            except DataError:
                raise DataError(f"data.files: {src!r} matches no file; check the path") from None
    return out


def iter_texts(sources: Sequence[str], text_field: str = "text") -> Iterator[str]:
    """Stripped non-empty lines/documents of every source, in order."""
    from kdjax.data.tokenizer import iter_text_lines

    for src in sources:
        if src.startswith("hf:") or src.endswith(".parquet"):
            yield from _iter_datasets(src, text_field)
        else:
            yield from iter_text_lines([src], text_field=text_field)


def _iter_datasets(src: str, text_field: str) -> Iterator[str]:
    import datasets

    if src.startswith("hf:"):
        name, _, conf = src[3:].partition(":")
        ds = datasets.load_dataset(name, conf or None, split="train", streaming=True)
    else:
        ds = datasets.load_dataset("parquet", data_files=src, split="train", streaming=True)
    for record in ds:
        text = record.get(text_field)
        if text is None:
            raise DataError(f"{src}: records have no {text_field!r} field (data.text_field)")
        for line in str(text).splitlines():
            if line.strip():
                yield line.strip()


def _fingerprint(sources: Sequence[str], tokenizer: Any, **settings: Any) -> str:
    h = hashlib.sha256()
    for src in sources:
        h.update(src.encode())
        if os.path.exists(src):
            st = os.stat(src)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    vocab = tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items())[:: max(1, len(vocab) // 2000)]).encode())
    h.update(str(len(vocab)).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


def tokenize_corpus(
    sources: Sequence[str],
    tokenizer: Any,
    max_length: int,
    pack: bool = True,
    cache_dir: str | os.PathLike | None = None,
    text_field: str = "text",
    limit_lines: int | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """Token ids [num_examples, max_length] (int32, [PAD]-padded), cached when `cache_dir`.

    pack=True concatenates documents (separated by [SEP]) and cuts [CLS] + (L - 2) + [SEP]
    windows, as ELECTRA's pre-training data; pack=False gives one truncated row per line.
    """
    if max_length < 8:
        raise DataError(f"data.max_length={max_length} is too small (>= 8)")
    key = _fingerprint(sources, tokenizer, L=max_length, pack=pack, field=text_field,
                       limit=limit_lines)
    cache = Path(cache_dir) / f"tokens-{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache)
    cls_id, sep_id, pad_id = (tokenizer.cls_token_id, tokenizer.sep_token_id,
                              tokenizer.pad_token_id)
    if None in (cls_id, sep_id, pad_id):
        raise DataError("the tokenizer lacks [CLS]/[SEP]/[PAD] tokens; use a BERT/ELECTRA "
                        "WordPiece tokenizer (kdjax tokenizer train)")
    rows: list[np.ndarray] = []
    buffer: list[int] = []
    body = max_length - 2
    n_lines = 0
    texts = iter_texts(sources, text_field)
    # delay: a corpus tokenised in under a second shows no bar (in a log it left "0 lines")
    with tqdm(desc="tokenizing", unit=" lines", disable=not show_progress, leave=False,
              delay=1.0) as bar:
        for chunk in _chunks(texts, 1000):
            if limit_lines is not None:
                chunk = chunk[: max(0, limit_lines - n_lines)]
            if not chunk:
                break
            n_lines += len(chunk)
            bar.update(len(chunk))
            buffer = _encode_chunk(tokenizer, chunk, rows, buffer, pack, max_length,
                                   (cls_id, sep_id, pad_id))
    if pack and len(buffer) > 1:
        row = np.full(max_length, pad_id, np.int32)
        piece = [cls_id, *buffer[:body], sep_id]
        row[: len(piece)] = piece
        rows.append(row)
    if not rows:
        raise DataError(f"the corpus ({', '.join(map(str, sources[:3]))}) has no text")
    examples = np.stack(rows)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, examples)
        os.replace(tmp, cache)
    log.info("corpus: %d lines -> %d examples of length %d", n_lines, len(examples), max_length)
    return examples


def _encode_chunk(tokenizer: Any, chunk: list[str], rows: list[np.ndarray], buffer: list[int],
                  pack: bool, max_length: int, ids3: tuple[int, int, int]) -> list[int]:
    """Tokenise `chunk`, append finished rows to `rows`; returns the packing remainder."""
    cls_id, sep_id, pad_id = ids3
    body = max_length - 2
    # verbose=False: long documents are split into rows here, so transformers' "longer than
    # the maximum sequence length" warning does not apply
    for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
        if not ids:
            continue
        if pack:
            buffer.extend(ids)
            buffer.append(sep_id)
            while len(buffer) >= body:
                rows.append(np.array([cls_id, *buffer[:body], sep_id], np.int32))
                buffer = buffer[body:]
        else:
            row = np.full(max_length, pad_id, np.int32)
            piece = [cls_id, *ids[:body], sep_id]
            row[: len(piece)] = piece
            rows.append(row)
    return buffer


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def group_permutation(rng: np.random.Generator, n: int, group: int = 1) -> np.ndarray:
    """A permutation [n] of row indices that moves blocks of `group` consecutive rows together
    (rows 2k and 2k + 1 stay neighbours at group 2: a paraphrase pair lands in one batch);
    group 1 is `rng.permutation(n)`."""
    if group <= 1:
        return rng.permutation(n)
    blocks = rng.permutation(-(-n // group))
    perm = (blocks[:, None] * group + np.arange(group)).ravel()
    return perm[perm < n]


class StepBatches:
    """The global batch of any step, built from a [N, L] example array (see module doc)."""

    def __init__(self, examples: np.ndarray, global_batch: int, seed: int, pad_id: int = 0,
                 group: int = 1):
        if global_batch <= 0:
            raise DataError(f"train.batch_size must be positive, got {global_batch}")
        if group < 1:
            raise DataError(f"data.group_rows must be >= 1, got {group}")
        self.examples = examples
        self.global_batch = global_batch
        self.seed = seed
        self.pad_id = pad_id
        self.group = group
        self._perms: dict[int, np.ndarray] = {}

    @property
    def num_examples(self) -> int:
        return len(self.examples)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed, epoch])
            self._perms[epoch] = group_permutation(rng, self.num_examples, self.group)
        return self._perms[epoch]

    def rows(self, step: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `rows` (indices into the global batch) of step `step`'s batch."""
        n = self.num_examples
        flat = step * self.global_batch + np.asarray(rows, np.int64)
        epochs, pos = flat // n, flat % n
        idx = np.array([self._perm(int(e))[p] for e, p in zip(epochs, pos)], np.int64)
        ids = self.examples[idx]
        return {
            "input_ids": ids,
            "attention_mask": (ids != self.pad_id).astype(np.int32),
            "token_type_ids": np.zeros_like(ids),
        }

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch / self.num_examples

    @property
    def keys(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask", "token_type_ids")

    def shapes(self) -> list[dict[str, tuple[tuple[int, ...], str]]]:
        """The one batch shape of every step: {name: ((B, L), dtype)}."""
        shape = (self.global_batch, int(self.examples.shape[1]))
        return [{k: (shape, "int32") for k in self.keys}]

    def batch_rows(self, step: int) -> int:
        """Rows of step `step`'s global batch (always `global_batch` for a corpus)."""
        return self.global_batch

    def tokens(self, step: int) -> np.ndarray:
        """[padded, real] tokens of step `step`'s global batch (for throughput figures)."""
        rows = self.rows(step, np.arange(self.global_batch))
        return np.array([rows["input_ids"].size, rows["attention_mask"].sum()], np.float64)


def local_rows(sharding: jax.sharding.Sharding, global_batch: int) -> np.ndarray:
    """Indices of the global-batch rows held by this process's devices (sorted)."""
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    rows: set[int] = set()
    for index in index_map.values():
        sl = index[0] if index else slice(None)
        rows.update(range(*sl.indices(global_batch)))
    return np.array(sorted(rows), np.int64)


def to_global(host: dict[str, np.ndarray], sharding: Any, global_batch: int) -> dict[str, Any]:
    """Host-local rows -> global jax.Arrays laid out by `sharding` (all processes call this)."""
    return {
        name: jax.make_array_from_process_local_data(
            sharding, value, (global_batch, *value.shape[1:])
        )
        for name, value in host.items()
    }


class Prefetcher:
    """Background thread that builds and transfers the next batches while the device works."""

    def __init__(self, batches: StepBatches, sharding: Any, start_step: int, depth: int = 2):
        self.batches, self.sharding = batches, sharding
        self._rows: dict[int, np.ndarray] = {}  # global batch size -> this process's rows
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._step = start_step
        self._thread = threading.Thread(target=self._run, daemon=True, name="kdjax-prefetch")
        self._thread.start()

    def _run(self) -> None:
        step = self._step
        while not self._stop.is_set():
            try:
                size = self.batches.batch_rows(step)
                if size not in self._rows:
                    self._rows[size] = local_rows(self.sharding, size)
                host = self.batches.rows(step, self._rows[size])
                item: Any = (step, to_global(host, self.sharding, size))
            except Exception as e:  # surfaced in the main thread by next()
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return
            step += 1

    def next(self, expected_step: int) -> dict[str, Any]:
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        step, batch = item
        assert step == expected_step, (step, expected_step)
        return batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

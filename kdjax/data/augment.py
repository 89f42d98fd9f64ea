"""Korean-aware data augmentation for task distillation: whole-word MLM replacement.

TinyBERT augments task data by replacing words with GloVe neighbours (English only) or with
BERT MLM predictions for single-piece words. Korean eojeols are split into several WordPiece /
SentencePiece units (stem + particles/endings), so replacing one unit at a time mostly produces
ungrammatical pieces ('학교##에서' -> '학교##을서'). Here every *word* (a word-start sub-word plus
its continuation sub-words) is the unit: in each copy of an example every word is chosen with
probability `prob`, all of its sub-words are replaced by [MASK] together, and one forward pass of
an MLM head (the teacher's own, or the ELECTRA generator's) predicts every masked position. Each
position's replacement is sampled from the top_k candidates of the MLM head after removing the
original id, the special tokens and the tokens of the wrong boundary kind (a word start stays a
word start, a continuation stays a continuation), so every chosen word really changes and word
boundaries, attention_mask and token_type_ids stay valid.

Only sequence-level tasks can be augmented this way: their label belongs to the whole example.
Token (NER) and span (QA) labels are tied to positions/words whose text changes.

The teacher's outputs are the only supervision of augmented rows (the caller sets a
`hard_weight` of 0 for them); labels are copied unchanged only so that every key keeps N rows.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.errors import ConfigError, ShapeError
from kdjax.models.config import EncoderConfig
from kdjax.models.model import build_model

__all__ = ["AUGMENTABLE_KINDS", "load_mlm", "mlm_augment", "word_starts"]

AUGMENTABLE_KINDS = ("sequence", "regression")
_INPUT_KEY = "input_ids"
_MAX_RETRIES = 8  # redraws for a copy that equals the original or an earlier copy


# ---------------------------------------------------------------------------------------------
# Word boundaries
# ---------------------------------------------------------------------------------------------


def _vocab_tables(tokenizer: Any, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-id tables of the tokenizer's vocabulary.

    Returns:
      special: [V] bool, the special tokens ([PAD], [CLS], [SEP], [MASK], [UNK] ...) and ids
        the tokenizer does not have (a model vocab padded beyond the tokenizer's).
      start: [V] bool, True for tokens that begin a word (WordPiece: no "##" prefix;
        SentencePiece: a "▁" prefix). Tokens of unknown style all count as word starts.
    `size` (default len(tokenizer)) is V; ids >= len(tokenizer) are marked special.
    """
    vocab: dict[str, int] = tokenizer.get_vocab()
    n = len(tokenizer)
    size = max(n, max(vocab.values(), default=-1) + 1) if size is None else size
    tokens = [""] * size
    for token, idx in vocab.items():
        if 0 <= idx < size:
            tokens[idx] = token
    special = np.zeros(size, bool)
    special[n:] = True
    for idx in tokenizer.all_special_ids:
        if 0 <= idx < size:
            special[idx] = True
    for idx in range(min(n, size)):
        if not tokens[idx]:
            special[idx] = True  # a hole in the vocabulary: never produce it
    prefix, marker = _subword_style(tokenizer, vocab)
    if prefix:
        start = np.array([not t.startswith(prefix) for t in tokens], bool)
    elif marker:
        start = np.array([t.startswith(marker) for t in tokens], bool)
    else:
        start = np.ones(size, bool)
    return special, start & ~special


def _subword_style(tokenizer: Any, vocab: dict[str, int]) -> tuple[str, str]:
    """(continuation prefix, word-start marker): ("##", "") WordPiece, ("", "▁") SentencePiece."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = getattr(backend, "model", None)
    prefix = getattr(model, "continuing_subword_prefix", None)
    if type(model).__name__ == "WordPiece" and prefix:
        return prefix, ""
    if any(t.startswith("▁") for t in vocab):
        return "", "▁"
    if prefix or any(t.startswith("##") for t in vocab):
        return prefix or "##", ""
    return "", ""


def _starts_from_tables(
    input_ids: np.ndarray, special: np.ndarray, start: np.ndarray
) -> np.ndarray:
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ShapeError(f"input_ids must be [N, L], got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= len(special)):
        raise ConfigError(
            f"input_ids hold ids outside the tokenizer's vocabulary (0..{len(special) - 1}); "
            "augment with the tokenizer the data was featurized with"
        )
    is_special = special[ids]
    starts = start[ids]
    # A continuation right after a special token (a word cut by truncation / a [SEP]) is the
    # first sub-word of what is left of its word.
    prev_special = np.ones_like(is_special)
    prev_special[:, 1:] = is_special[:, :-1]
    return (starts | prev_special) & ~is_special


def word_starts(input_ids: np.ndarray, tokenizer: Any) -> np.ndarray:
    """Which positions begin a word.

    Args:
      input_ids: [N, L] int token ids.
      tokenizer: the HF tokenizer that produced them (WordPiece or SentencePiece).
    Returns:
      [N, L] bool: True at the first sub-word of each word (WordPiece: a token without the
      "##" prefix; SentencePiece: a token starting with "▁"; a continuation right after a
      special token, i.e. a word cut by truncation, also counts). Special tokens ([CLS],
      [SEP], [UNK], [MASK]) and padding are never word starts.
    """
    special, start = _vocab_tables(tokenizer)
    return _starts_from_tables(input_ids, special, start)


def _word_start_index(starts: np.ndarray, in_word: np.ndarray) -> np.ndarray:
    """[N, L] int: the position of the word start each position belongs to (-1: no word)."""
    length = starts.shape[1]
    pos = np.where(starts, np.arange(length)[None, :], -1)
    owner = np.maximum.accumulate(pos, axis=1)
    return np.where(in_word, owner, -1)


# ---------------------------------------------------------------------------------------------
# The MLM forward (jitted, fixed shapes)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _predict_fn(config: EncoderConfig, top_k: int) -> Any:
    """A jitted `(params, ids, mask, types, positions, is_start, key, start_ok, cont_ok)` ->
    [B, P] sampled replacement ids (see `_predict`)."""
    model = build_model(config)

    def predict(params, ids, mask, types, positions, original, is_start, key, start_ok,
                cont_ok):
        # ids/mask/types: [B, L]; positions/original/is_start: [B, P]; start_ok/cont_ok: [V].
        out = model.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types,
                          deterministic=True, mlm_positions=positions)
        logits = out.logits.astype(jnp.float32)  # [B, P, V]
        vocab = jnp.arange(logits.shape[-1], dtype=original.dtype)
        allowed = jnp.where(is_start[..., None], start_ok, cont_ok)
        allowed = allowed & (vocab != original[..., None])
        logits = jnp.where(allowed, logits, -jnp.inf)
        values, indices = jax.lax.top_k(logits, top_k)  # [B, P, k]
        finite = jnp.isfinite(values[..., 0])
        values = jnp.where(finite[..., None], values, 0.0)
        choice = jax.random.categorical(key, values, axis=-1)  # [B, P]
        sampled = jnp.take_along_axis(indices, choice[..., None], axis=-1)[..., 0]
        return jnp.where(finite, sampled.astype(original.dtype), original)

    return jax.jit(predict)


def _row_hash(ids: np.ndarray) -> np.ndarray:
    """[N] uint64 hash of each row of `ids` [N, L] (to find duplicate rows cheaply)."""
    weights = np.random.default_rng(0x6B646A6178).integers(
        1, 2**63, size=ids.shape[1], dtype=np.uint64
    )
    return (ids.astype(np.uint64) * weights).sum(axis=1)  # wraps modulo 2**64


def _bucket(n: int, length: int) -> int:
    """Width P of the masked-position slots for a batch whose fullest row masks `n` tokens.

    The smallest power of two >= n, but at least length // 4 and at most `length`, so at most
    three shapes are compiled (L/4, L/2, L) while the [B, P, V] logits stay small.
    """
    floor = max(1, length // 4)
    return min(length, max(floor, 1 << max(0, int(n) - 1).bit_length()))


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------


def _check_args(arrays: dict[str, np.ndarray], mlm_config: EncoderConfig, tokenizer: Any,
                prob: float, copies: int, top_k: int, batch_size: int, task_kind: str) -> int:
    if task_kind not in AUGMENTABLE_KINDS:
        if task_kind in ("token", "span"):
            raise ConfigError(
                f"augment: a {task_kind!r} task cannot be augmented by word replacement: its "
                "labels are tied to token positions / words that the replacement changes; set "
                "augment.copies=0 for this task"
            )
        raise ConfigError(
            f"augment: unknown task kind {task_kind!r}; expected one of "
            f"{', '.join(AUGMENTABLE_KINDS)}"
        )
    for key in ("start_positions", "end_positions"):
        if key in arrays:
            raise ConfigError(
                f"augment: arrays have {key!r} (a span task); only sequence / regression "
                "tasks can be augmented, set augment.copies=0"
            )
    if _INPUT_KEY not in arrays:
        raise ConfigError(f"augment: arrays have no {_INPUT_KEY!r} (keys: {sorted(arrays)})")
    ids = np.asarray(arrays[_INPUT_KEY])
    if ids.ndim != 2:
        raise ShapeError(f"augment: input_ids must be [N, L], got shape {ids.shape}")
    n = ids.shape[0]
    for key, value in arrays.items():
        if np.shape(value)[:1] != (n,):
            raise ShapeError(
                f"augment: arrays[{key!r}] has shape {np.shape(value)} but input_ids has "
                f"{n} rows"
            )
    labels = arrays.get("labels")
    if labels is not None and np.ndim(labels) > 1:
        raise ConfigError(
            f"augment: labels have shape {np.shape(labels)} (per-token labels); only sequence "
            "/ regression tasks can be augmented, set augment.copies=0"
        )
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
        raise ConfigError(f"augment.prob must be in [0, 1], got {prob!r}")
    for key, value, low in (("copies", copies, 0), ("top_k", top_k, 1),
                            ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"augment.{key} must be an integer >= {low}, got {value!r}")
    if mlm_config.head != "generator":
        raise ConfigError(
            f"augment: the MLM model has head {mlm_config.head!r}, not a masked-LM head; point "
            "augment.mlm_model at the generator (kdjax pretrain WORKDIR/generator, an HF "
            "ElectraForMaskedLM or BertForMaskedLM directory)"
        )
    if mlm_config.vocab_size < len(tokenizer):
        raise ConfigError(
            f"augment: the MLM model's vocab_size={mlm_config.vocab_size} is smaller than the "
            f"tokenizer's {len(tokenizer)}; use the MLM model that shares the task tokenizer"
        )
    if ids.shape[1] > mlm_config.max_position_embeddings:
        raise ConfigError(
            f"augment: sequences of length {ids.shape[1]} exceed the MLM model's "
            f"max_position_embeddings={mlm_config.max_position_embeddings}; lower "
            "task.max_length"
        )
    if tokenizer.mask_token_id is None:
        raise ConfigError("augment: the tokenizer has no mask token ([MASK]); use the teacher's")
    return n


def mlm_augment(
    arrays: dict[str, np.ndarray],
    mlm_config: EncoderConfig,
    mlm_params: Any,
    tokenizer: Any,
    *,
    prob: float = 0.3,
    copies: int = 4,
    top_k: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    task_kind: str = "sequence",
) -> dict[str, np.ndarray]:
    """Make `copies` augmented versions of every row by whole-word MLM replacement.

    Args:
      arrays: featurized task rows, N each: input_ids [N, L] int, attention_mask [N, L],
        token_type_ids [N, L] (optional), labels [N] (int or float) and any other [N, ...]
        key (e.g. hard_weight); everything but input_ids is copied unchanged.
      mlm_config: config of the MLM model (head "generator": an ELECTRA generator or a BERT
        MLM head), sharing `tokenizer`'s vocabulary.
      mlm_params: its parameters (tied word embeddings included), e.g. from `load_mlm`.
      tokenizer: the tokenizer the rows were featurized with (defines words and specials).
      prob: probability that each word of a copy is replaced. With prob > 0, a row with at
        least one word always gets at least one word replaced.
      copies: augmented copies per row (0: empty outputs).
      top_k: each masked position samples its replacement from the top_k allowed candidates
        (probabilities of the MLM head renormalised over them). Never the original id, never a
        special token, and of the same kind (word start / continuation) as the original, so
        word boundaries are kept and every selected word changes.
      seed: the numpy Generator (word choice) and the jax PRNG (sampling) are seeded from it;
        the same inputs and seed give the same output.
      batch_size: rows per MLM forward pass (the last batch is padded to this size).
      progress: show a tqdm bar over the forward passes.
      task_kind: the task's kind; "sequence" / "regression" only ("token" / "span" labels are
        tied to positions, ConfigError).
    Returns:
      dict with the same keys and dtypes as `arrays`, copies * N rows each, copy-major: row
      c * N + i is copy c of row i. input_ids differ only at the sub-words of the chosen words;
      copies of a row differ from the row and from each other whenever the row has a word.
    Raises:
      ConfigError: token/span task, a model without an MLM head, bad prob/copies/top_k, a
        vocabulary mismatch.
    """
    n = _check_args(arrays, mlm_config, tokenizer, prob, copies, top_k, batch_size, task_kind)
    ids = np.asarray(arrays[_INPUT_KEY])
    length = ids.shape[1]
    special, start_table = _vocab_tables(tokenizer, mlm_config.vocab_size)
    cont_table = ~start_table & ~special
    mask = np.asarray(arrays.get("attention_mask", np.ones_like(ids)))
    types = np.asarray(arrays.get("token_type_ids", np.zeros_like(ids)))
    real = mask.astype(bool)
    starts = _starts_from_tables(ids, special, start_table) & real
    owner = _word_start_index(starts, ~special[ids] & real)
    has_word = starts.any(axis=1)

    out = {key: np.concatenate([np.asarray(v)] * copies, axis=0) if copies else
           np.asarray(v)[:0].copy() for key, v in arrays.items()}
    if copies == 0 or n == 0 or prob == 0.0:
        return out

    k = int(min(top_k, mlm_config.vocab_size))
    predict = _predict_fn(mlm_config, k)
    params = jax.device_put(mlm_params)
    start_ok = jnp.asarray(start_table)
    cont_ok = jnp.asarray(cont_table)
    rng = np.random.default_rng(seed)
    base_key = jax.random.key(seed)
    mask_id = int(tokenizer.mask_token_id)
    calls = [0]

    def select(rows: np.ndarray) -> np.ndarray:
        """[len(rows), L] bool: the positions of the chosen whole words of `rows`."""
        s = starts[rows]
        u = rng.random(s.shape)
        chosen = s & (u < prob)
        # Every row with a word replaces at least one: the word closest to being chosen.
        forced = has_word[rows] & ~chosen.any(axis=1)
        if forced.any():
            closest = np.argmin(np.where(s, u, np.inf), axis=1)
            chosen[forced, closest[forced]] = True
        o = owner[rows]
        return (o >= 0) & np.take_along_axis(chosen, np.maximum(o, 0), axis=1)

    def replace(rows: np.ndarray, bar: Any) -> np.ndarray:
        """New input_ids [len(rows), L] for `rows` (one fresh draw of words and tokens)."""
        sel = select(rows)
        new = ids[rows].copy()
        for begin in range(0, len(rows), batch_size):
            part = slice(begin, begin + batch_size)
            b_rows, b_sel = rows[part], sel[part]
            pad = batch_size - len(b_rows)
            b_ids = np.where(b_sel, mask_id, ids[b_rows])
            count = int(b_sel.sum(axis=1).max(initial=0))
            if count == 0:  # nothing to predict in this batch
                if bar is not None:
                    bar.update(1)
                continue
            width = _bucket(count, length)
            # Chosen positions first (in order), then position 0 as filler.
            order = np.argsort(~b_sel, axis=1, kind="stable")[:, :width]
            valid = np.take_along_axis(b_sel, order, axis=1)
            positions = np.where(valid, order, 0)
            original = np.take_along_axis(ids[b_rows], positions, axis=1)
            is_start = np.take_along_axis(starts[b_rows], positions, axis=1)
            padded = [np.pad(a, ((0, pad), (0, 0)), mode="edge") for a in
                      (b_ids, mask[b_rows], types[b_rows], positions, original, is_start)]
            key = jax.random.fold_in(base_key, calls[0])
            calls[0] += 1
            sampled = np.asarray(predict(params, *(jnp.asarray(a) for a in padded[:3]),
                                         jnp.asarray(padded[3], jnp.int32),
                                         jnp.asarray(padded[4]), jnp.asarray(padded[5]),
                                         key, start_ok, cont_ok))[:len(b_rows)]
            r, c = np.nonzero(valid)
            new[begin + r, positions[r, c]] = sampled[r, c]
            if bar is not None:
                bar.update(1)
        return new

    from tqdm.auto import tqdm

    batches = -(-n // batch_size)
    bar = tqdm(total=copies * batches, desc="augment", unit="batch", disable=not progress)
    made: list[np.ndarray] = [ids]  # the original, then each finished copy
    hashes = [_row_hash(ids)]
    all_rows = np.arange(n)
    try:
        for _ in range(copies):
            new = replace(all_rows, bar)
            for _retry in range(_MAX_RETRIES):
                h = _row_hash(new)
                same = np.zeros(n, bool)
                for earlier, h_earlier in zip(made, hashes):
                    cand = np.nonzero(h == h_earlier)[0]
                    same[cand] |= (new[cand] == earlier[cand]).all(axis=1)
                redo = np.nonzero(same & has_word)[0]
                if not len(redo):
                    break
                new[redo] = replace(redo, None)
            made.append(new.astype(ids.dtype, copy=False))
            hashes.append(_row_hash(new))
    finally:
        bar.close()
    out[_INPUT_KEY] = np.concatenate(made[1:], axis=0)
    return out


# ---------------------------------------------------------------------------------------------
# Loading an MLM model
# ---------------------------------------------------------------------------------------------


def load_mlm(path: str | os.PathLike) -> tuple[EncoderConfig, dict]:
    """(config, params) of a masked-LM model to draw replacements from.

    Args:
      path: a kdjax model directory with head "generator" (kdjax pretrain writes
        WORKDIR/generator; a pretrain WORKDIR itself is read through its generator/), or an HF
        directory / hub id of an ElectraForMaskedLM (ELECTRA generator) or BertForMaskedLM /
        BertForPreTraining checkpoint.
    Returns:
      (EncoderConfig with head "generator", params with the tied word embeddings).
    Raises:
      ConfigError: the model has no MLM head (e.g. an ELECTRA discriminator or a fine-tuned
        classifier). CheckpointError: the path holds no model.
    """
    from kdjax.modeldir import is_model_dir, load_model

    p = Path(path)
    if not is_model_dir(p) and is_model_dir(p / "generator"):
        p = p / "generator"
    cfg, params = load_model(p if p.exists() else path)
    if cfg.head != "generator":
        raise ConfigError(
            f"augment.mlm_model={str(path)!r} is a {cfg.family} model with head {cfg.head!r}, "
            "which has no masked-LM head; point augment.mlm_model at the generator (kdjax "
            "pretrain WORKDIR/generator, or an HF ElectraForMaskedLM / BertForMaskedLM "
            "directory such as the ELECTRA '...-generator' checkpoint)"
        )
    return cfg, params

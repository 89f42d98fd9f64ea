"""Tokenizers for Korean ELECTRA teachers and students.

* `load_tokenizer` loads a teacher's tokenizer from a local HF directory (``tokenizer.json``,
  a WordPiece ``vocab.txt`` or a SentencePiece ``.model``) and makes sure Hangul survives
  normalisation.
* `train_wordpiece` / `train_sentencepiece` learn a new vocabulary from plain-text corpora
  (``.txt``, ``.txt.gz``, ``.jsonl`` with a ``"text"`` field, ``.jsonl.gz``), streamed line by line.
* `morpheme_split` is the Korean morpheme-aware pre-tokenisation (kiwipiepy) used optionally at
  training time.
* `add_tokenizer_cli` / `run_tokenizer_cli` implement ``kdjax tokenizer train``.

Korean and BERT normalisation: BERT's ``strip_accents`` (on by default when lowercasing) applies
NFD, which decomposes every Hangul syllable into conjoining jamo ('안' -> 'ᄋ' + 'ᅡ' + 'ᆫ'); a
vocabulary built on syllables then maps Korean words to ``[UNK]``. Every WordPiece tokenizer
trained here uses ``strip_accents=False`` (and ``do_lower_case=False`` unless asked), and
`load_tokenizer` repairs loaded BERT-style tokenizers whose normaliser would decompose Hangul
although their vocabulary holds syllables (e.g. transformers 5 defaults ``do_lower_case=True``
when ``tokenizer_config.json`` does not say otherwise).

Morpheme pre-tokenisation (as in KR-ELECTRA, whose vocabulary reflects morpheme boundaries) is
applied to the *training text only*: the saved HF tokenizers do not run a morpheme analyser at
inference, they segment raw text greedily with the learned units.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import logging
import os
import re
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdjax.errors import ConfigError, DataError

if TYPE_CHECKING:  # heavy imports stay lazy so that `kdjax --help` is fast
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "DEFAULT_SPECIAL_TOKENS",
    "add_tokenizer_cli",
    "expand_globs",
    "iter_morpheme_split",
    "iter_text_lines",
    "load_tokenizer",
    "morpheme_split",
    "run_tokenizer_cli",
    "sentencepiece_to_hf",
    "train_sentencepiece",
    "train_wordpiece",
]

logger = logging.getLogger(__name__)

# Order matters: ids 0..4, so [PAD] is 0 as in ELECTRA / BERT checkpoints.
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SPECIAL_ROLES = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")

_TEXT_SUFFIXES = (".txt", ".text", ".txt.gz", ".text.gz")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
_SPM_NAMES = ("spm.model", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
_LOOKED_FOR = "tokenizer.json, vocab.txt or a SentencePiece *.model"
_HANGUL_SYLLABLE = re.compile("[\uac00-\ud7a3]")
# Marks morpheme boundaries inside an eojeol for SentencePiece's `pretokenization_delimiter`
# (a private-use code point, never in real text; SentencePiece removes it after splitting).
_SPM_MORPHEME_DELIMITER = "\ue000"
_BATCH_LINES = 1000


# ---------------------------------------------------------------------------------------------
# Corpus reading
# ---------------------------------------------------------------------------------------------


def _is_jsonl(path: Path) -> bool:
    return path.name.lower().endswith(_JSONL_SUFFIXES)


def _check_corpus_files(files: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Validate corpus paths up front (exists, is a file, supported format) before any training."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]  # a single path is a common slip; accept it
    paths = [Path(f).expanduser() for f in files]
    if not paths:
        raise DataError("no corpus files given; pass at least one .txt, .txt.gz or .jsonl file")
    for path in paths:
        if not path.is_file():
            raise DataError(f"corpus file {path} does not exist; check the path")
        if not path.name.lower().endswith(_TEXT_SUFFIXES + _JSONL_SUFFIXES):
            raise DataError(
                f"unsupported corpus file {path}; use plain text (.txt, .txt.gz, one text per "
                'line) or JSON lines (.jsonl, .jsonl.gz, objects with a "text" field)'
            )
    return paths


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    """Yield the raw lines of one corpus file (JSON lines: the text field, split on newlines)."""
    is_json = _is_jsonl(path)
    try:
        handle = (
            gzip.open(path, "rt", encoding="utf-8")
            if path.name.lower().endswith(".gz")
            else open(path, encoding="utf-8")
        )
        with handle:
            for lineno, line in enumerate(handle, start=1):
                if not is_json:
                    yield line
                    continue
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}:{lineno}: invalid JSON ({exc.msg}); each line of a .jsonl file "
                        "must be one JSON object"
                    ) from None
                if not isinstance(record, dict) or text_field not in record:
                    raise DataError(
                        f"{path}:{lineno}: no {text_field!r} field; each .jsonl line must be an "
                        f'object like {{"{text_field}": "..."}}'
                    )
                text = record[text_field]
                if text is None:
                    continue
                if not isinstance(text, str):
                    raise DataError(
                        f"{path}:{lineno}: field {text_field!r} is {type(text).__name__}, "
                        "expected a string"
                    )
                yield from text.splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid UTF-8 ({exc.reason} at byte {exc.start}); re-encode it as UTF-8"
        ) from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataError(
            f"{path} is not a valid gzip file ({exc}); recompress or rename it"
        ) from None


def iter_text_lines(
    files: Iterable[str | os.PathLike[str]],
    *,
    limit_lines: int | None = None,
    text_field: str = "text",
) -> Iterator[str]:
    """Lazily yield the stripped, non-empty text lines of corpus files, in order.

    Args:
      files: ``.txt`` / ``.txt.gz`` (one text per line) or ``.jsonl`` / ``.jsonl.gz`` files
        (one JSON object per line; ``record[text_field]`` is used, split on newlines).
      limit_lines: stop after this many non-empty lines in total (None: read everything).
      text_field: JSON field holding the text.

    Raises:
      DataError: a file is missing, has an unsupported suffix, bad JSON or bad encoding.
    """
    if limit_lines is not None and limit_lines <= 0:
        raise ConfigError(f"limit_lines must be positive, got {limit_lines}; omit it to read all")
    paths = _check_corpus_files(files)
    count = 0
    for path in paths:
        for raw in _iter_file(path, text_field):
            line = raw.strip()
            if not line:
                continue
            yield line
            count += 1
            if limit_lines is not None and count >= limit_lines:
                return


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


class _LineStream:
    """Iterable over training lines that counts them and remembers a failure.

    SentencePiece turns Python exceptions raised by its sentence iterator into a RuntimeError
    with a C++ message; keeping the original lets us re-raise our one-line DataError instead.
    """

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = lines
        self.count = 0
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for line in self._lines:
                self.count += 1
                yield line
        except Exception as exc:
            self.error = exc
            raise


# ---------------------------------------------------------------------------------------------
# Korean morpheme pre-tokenisation
# ---------------------------------------------------------------------------------------------

_KIWI: Any = None


def _get_kiwi() -> Any:
    """Return a process-wide `kiwipiepy.Kiwi` (created on first use: loading takes ~2 s)."""
    global _KIWI
    if _KIWI is None:
        try:
            from kiwipiepy import Kiwi
        except ImportError:
            raise ConfigError(
                "morpheme pre-tokenisation needs kiwipiepy, which is not installed; run "
                "`pip install kdjax[korean]` (or `pip install kiwipiepy`)"
            ) from None
        try:
            _KIWI = Kiwi()
        except Exception as exc:  # e.g. kiwipiepy_model missing or broken
            raise ConfigError(
                f"could not start the kiwipiepy analyser ({exc}); reinstall it with "
                "`pip install -U kiwipiepy kiwipiepy_model`"
            ) from None
    return _KIWI


def _join_morphemes(text: str, tokens: Sequence[Any], sep: str) -> str:
    """Rebuild `text` with `sep` between adjacent morphemes and one space between eojeols.

    Kiwi reports lemmas ('했' -> '하' + '었'); we use the *surface* spans instead so that the
    training text keeps the characters seen at inference. Overlapping spans (contractions) are
    merged and any text Kiwi did not cover is kept as its own piece.
    """
    spans: list[list[int]] = []
    for tok in sorted(tokens, key=lambda t: t.start):
        start, end = tok.start, tok.start + tok.len
        if end <= start:
            continue
        if spans and start < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    # Non-space text outside every span (rare) becomes extra pieces.
    covered = [(0, 0), *((s, e) for s, e in spans), (len(text), len(text))]
    extra = []
    for (_, prev_end), (next_start, _) in zip(covered, covered[1:]):
        for m in re.finditer(r"\S+", text[prev_end:next_start]):
            extra.append([prev_end + m.start(), prev_end + m.end()])
    spans = sorted(spans + extra)
    pieces: list[str] = []
    for i, (start, end) in enumerate(spans):
        if i:
            pieces.append(sep if start == spans[i - 1][1] else " ")
        pieces.append(text[start:end])
    return "".join(pieces)


def morpheme_split(text: str, sep: str = " ") -> str:
    """Split Korean text into surface morphemes with kiwipiepy.

    ``morpheme_split("학교에서 공부를 했다") == "학교 에서 공부 를 했 다"``. Morphemes inside one
    eojeol are joined by `sep` (a space by default), eojeols by a single space.

    Raises:
      ConfigError: kiwipiepy is not installed (``pip install kdjax[korean]``).
    """
    if not text.strip():
        return ""
    return _join_morphemes(text, _get_kiwi().tokenize(text), sep)


def iter_morpheme_split(
    lines: Iterable[str], *, sep: str = " ", batch_size: int = 512
) -> Iterator[str]:
    """Streaming `morpheme_split`: analyse `lines` in batches (Kiwi's multi-threaded batch mode)."""
    kiwi = _get_kiwi()
    for batch in _batched(lines, batch_size):
        for text, tokens in zip(batch, kiwi.tokenize(batch)):
            yield _join_morphemes(text, tokens, sep)


def _training_lines(
    paths: list[Path],
    *,
    limit_lines: int | None,
    text_field: str,
    morpheme_pretokenize: bool,
    morpheme_sep: str,
    show_progress: bool,
) -> Iterator[str]:
    lines: Iterable[str] = iter_text_lines(paths, limit_lines=limit_lines, text_field=text_field)
    if show_progress:
        from tqdm.auto import tqdm

        lines = tqdm(lines, desc="tokenizer: reading", unit=" lines", total=limit_lines)
    if morpheme_pretokenize:
        _get_kiwi()  # fail fast (ConfigError) before reading anything
        lines = iter_morpheme_split(lines, sep=morpheme_sep)
    return iter(lines)


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _check_special_tokens(special_tokens: Sequence[str]) -> tuple[str, ...]:
    specials = tuple(str(t) for t in special_tokens)
    if len(specials) < len(_SPECIAL_ROLES) or len(set(specials)) != len(specials):
        raise ConfigError(
            f"special_tokens must be >= 5 distinct tokens in the order pad, unk, cls, sep, mask "
            f"(e.g. {list(DEFAULT_SPECIAL_TOKENS)}), got {list(specials)}"
        )
    return specials


def _special_kwargs(specials: Sequence[str]) -> dict[str, Any]:
    """HF special-token kwargs: first five by role, the rest as extra special tokens."""
    kwargs: dict[str, Any] = dict(zip(_SPECIAL_ROLES, specials))
    if len(specials) > len(_SPECIAL_ROLES):
        kwargs["extra_special_tokens"] = list(specials[len(_SPECIAL_ROLES) :])
    return kwargs


def _check_vocab_size(vocab_size: int, specials: Sequence[str]) -> None:
    if vocab_size <= len(specials):
        raise ConfigError(
            f"vocab_size={vocab_size} must exceed the {len(specials)} special tokens; "
            "use e.g. 30000 for a full model or a few hundred for a smoke test"
        )


def _save_hf(
    tok: PreTrainedTokenizerFast, out_dir: Path, specials: Sequence[str], meta: dict[str, Any],
    extra: dict[str, str] | None = None,
) -> None:
    """save_pretrained + the files transformers 5 no longer writes (special_tokens_map.json),
    through `kdjax.storage.save_tokenizer`: staged, then renamed into place with tokenizer.json
    last, so a full disk leaves no truncated file and a tokenizer.json means a whole
    tokenizer."""
    from kdjax.storage import save_tokenizer

    special_map: dict[str, Any] = dict(zip(_SPECIAL_ROLES, specials))
    if len(specials) > len(_SPECIAL_ROLES):
        special_map["additional_special_tokens"] = list(specials[len(_SPECIAL_ROLES) :])
    files = {
        "special_tokens_map.json": json.dumps(special_map, ensure_ascii=False, indent=2) + "\n",
        "kdjax_tokenizer.json": json.dumps(meta, ensure_ascii=False, indent=2) + "\n",
        **(extra or {}),
    }
    save_tokenizer(tok, out_dir, files)


def _train_meta(kind: str, paths: list[Path], lines: int, **params: Any) -> dict[str, Any]:
    return {"kind": kind, "files": [str(p) for p in paths], "lines": lines, **params}


# ---------------------------------------------------------------------------------------------
# WordPiece
# ---------------------------------------------------------------------------------------------


def _is_standalone_char(ch: str) -> bool:
    """True for characters BERT's pre-tokeniser always splits off (punctuation, CJK ideographs).

    Such characters are always whole words, so their '##' form is never used.
    """
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    if unicodedata.category(ch).startswith("P"):
        return True
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _canonical_alphabet(counts: Counter[str], limit: int) -> list[str]:
    """The `limit` most frequent non-space characters (ties by code point), by code point.

    Why kdjax picks the alphabet and the '##c' ids itself: the `tokenizers` WordPiece (BPE)
    trainer keeps its word counts in a Rust HashMap, randomly seeded per process. Which
    characters survive `limit_alphabet` on a count tie, and the ids the '##c' forms get (first
    seen, in HashMap order), then differ between processes, and the merges, whose ties break
    by id, follow: two runs of one config trained different vocabularies. With the alphabet
    given as `initial_alphabet` and every '##c' given a fixed id, training is deterministic.
    """
    chars = [c for c in counts if not c.isspace()]
    chars.sort(key=lambda c: (-counts[c], c))
    return sorted(chars[:limit])


def _complete_wordpiece_vocab(
    trained: dict[str, int], specials: Sequence[str], vocab_size: int
) -> list[str]:
    """Final WordPiece vocabulary (ordered by id) of at most `vocab_size` tokens.

    WordPiece maps a whole word to [UNK] when one of its characters has no unit in its position,
    so every alphabet character gets both its word-initial form 'c' and continuation form '##c'
    (the trainer only adds the forms it saw; with morpheme pre-tokenisation particles like '를'
    are seen word-initially only, yet appear as '##를' at inference). Room is made by dropping the
    last learned (least frequent) merges.
    """
    special_set = set(specials)
    ordered = [t for t, _ in sorted(trained.items(), key=lambda kv: kv[1]) if t not in special_set]
    chars: dict[str, None] = {}  # insertion-ordered set
    for t in ordered:
        c = t[2:] if t.startswith("##") else t
        if len(c) == 1:
            chars.setdefault(c)
    base = list(chars) + ["##" + c for c in chars if not _is_standalone_char(c)]
    base_set = set(base)
    merges = [t for t in ordered if t not in base_set and not (t.startswith("##") and len(t) == 3)]
    room = vocab_size - len(specials) - len(base)
    if room < 0:
        raise ConfigError(
            f"vocab_size={vocab_size} cannot hold the {len(chars)} characters of the corpus and "
            f"their '##' forms ({len(specials) + len(base)} tokens); raise vocab_size or lower "
            "limit_alphabet"
        )
    return [*specials, *base, *merges[:room]]


def _wordpiece_hf(
    vocab: list[str], specials: Sequence[str], lowercase: bool, model_max_length: int
) -> PreTrainedTokenizerFast:
    from transformers import BertTokenizerFast

    # BertTokenizerFast (== ElectraTokenizerFast in transformers 5) rebuilds the BERT pipeline;
    # strip_accents=False keeps Hangul syllables composed.
    return BertTokenizerFast(
        vocab={t: i for i, t in enumerate(vocab)},
        do_lower_case=lowercase,
        strip_accents=False,
        tokenize_chinese_chars=True,
        model_max_length=model_max_length,
        **_special_kwargs(specials),
    )


def train_wordpiece(
    files: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    vocab_size: int = 30000,
    min_frequency: int = 2,
    morpheme_pretokenize: bool = False,
    lowercase: bool = False,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    limit_lines: int | None = None,
    show_progress: bool = True,
    *,
    limit_alphabet: int | None = None,
    text_field: str = "text",
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a BERT/ELECTRA-style WordPiece vocabulary and save an HF tokenizer directory.

    The corpus is streamed (never fully loaded). `out_dir` receives ``vocab.txt``,
    ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` (and
    ``kdjax_tokenizer.json`` with the training parameters); it loads with
    ``AutoTokenizer.from_pretrained(out_dir)``, ``BertTokenizerFast`` or ``ElectraTokenizerFast``.

    Args:
      files: corpus files (see `iter_text_lines`).
      out_dir: output directory (created if needed).
      vocab_size: maximum vocabulary size, special tokens included.
      min_frequency: minimum pair frequency for a merge.
      morpheme_pretokenize: split training text into Korean morphemes (kiwipiepy) first, so the
        learned units follow morpheme boundaries; not applied at inference.
      lowercase: lowercase text (accents are never stripped: that would decompose Hangul).
      special_tokens: pad, unk, cls, sep, mask (+ extras), given ids 0, 1, 2, ...
      limit_lines: read at most this many non-empty lines.
      show_progress: tqdm bar over the lines read.
      limit_alphabet: keep this many most frequent characters (each costs 'c' and '##c');
        default ``min(6000, (vocab_size - n_special) // 3)``. Words with other characters become
        [UNK].
      text_field: JSON field of ``.jsonl`` inputs.
      model_max_length: saved as the tokenizer's ``model_max_length``.

    Raises:
      DataError: missing/unsupported/empty input. ConfigError: bad sizes or special tokens,
      or kiwipiepy missing when `morpheme_pretokenize` is set.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    specials = _check_special_tokens(special_tokens)
    _check_vocab_size(vocab_size, specials)
    if min_frequency < 1:
        raise ConfigError(f"min_frequency must be >= 1, got {min_frequency}")
    if limit_alphabet is None:
        limit_alphabet = max(1, min(6000, (vocab_size - len(specials)) // 3))
    paths = _check_corpus_files(files)
    out = Path(out_dir).expanduser()

    tok = Tokenizer(models.WordPiece(unk_token=specials[1], continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    stream = _LineStream(
        _training_lines(
            paths,
            limit_lines=limit_lines,
            text_field=text_field,
            morpheme_pretokenize=morpheme_pretokenize,
            morpheme_sep=" ",
            show_progress=show_progress,
        )
    )
    # Two passes over a spooled copy of the (possibly morpheme-split) lines: the first fixes
    # the alphabet, the second trains. See `_canonical_alphabet` for why.
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        counts: Counter[str] = Counter()
        normalize = tok.normalizer.normalize_str
        for line in stream:
            counts.update(normalize(line))
            spool.write(line.replace("\n", " ") + "\n")
        if stream.count == 0:
            raise DataError(
                f"no text lines found in {[str(p) for p in paths]}; the corpus is empty"
            )
        alphabet = _canonical_alphabet(counts, limit_alphabet)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            # The '##c' forms as (temporary) special tokens get fixed ids up front; only the
            # vocabulary list is kept, so they are ordinary tokens in the saved tokenizer.
            special_tokens=[*specials, *("##" + c for c in alphabet
                                         if not _is_standalone_char(c))],
            initial_alphabet=alphabet,
            limit_alphabet=len(alphabet),
            continuing_subword_prefix="##",
            show_progress=False,  # our tqdm bar covers reading, the slow part
        )
        spool.seek(0)
        lines = (line.rstrip("\n") for line in spool)
        tok.train_from_iterator(_batched(lines, _BATCH_LINES), trainer=trainer)

    vocab = _complete_wordpiece_vocab(tok.get_vocab(), specials, vocab_size)
    hf = _wordpiece_hf(vocab, specials, lowercase, model_max_length)
    out.mkdir(parents=True, exist_ok=True)
    meta = _train_meta(
        "wordpiece",
        paths,
        stream.count,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        morpheme_pretokenize=morpheme_pretokenize,
        lowercase=lowercase,
        limit_alphabet=limit_alphabet,
    )
    # + the classic BERT vocab file (one token per line, line number == id)
    _save_hf(hf, out, specials, meta, {"vocab.txt": "".join(t + "\n" for t in vocab)})
    logger.info(
        "trained WordPiece vocab of %d tokens on %d lines -> %s", len(vocab), stream.count, out
    )
    return hf


# ---------------------------------------------------------------------------------------------
# SentencePiece
# ---------------------------------------------------------------------------------------------


def _load_spm_proto(model_file: Path) -> Any:
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise ConfigError(
            "reading SentencePiece models needs sentencepiece and protobuf; run "
            "`pip install sentencepiece protobuf`"
        ) from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as exc:
        raise DataError(f"{model_file} is not a SentencePiece model ({exc}); retrain it") from None
    if not proto.pieces:
        raise DataError(f"{model_file} is not a SentencePiece model (no pieces); retrain it")
    return proto


def _bpe_merges(vocab: dict[str, int], skip: set[str]) -> list[tuple[str, str]]:
    """Merges reproducing a SentencePiece BPE model: pieces in id (= merge) order."""
    merges: list[tuple[str, str]] = []
    for piece, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        if piece in skip:
            continue
        local = [
            (piece[:i], piece[i:])
            for i in range(1, len(piece))
            if piece[:i] in vocab and piece[i:] in vocab and not {piece[:i], piece[i:]} & skip
        ]
        merges.extend(sorted(local, key=lambda lr: (vocab[lr[0]], vocab[lr[1]])))
    return merges


def sentencepiece_to_hf(
    model_file: str | os.PathLike[str], *, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """Convert a SentencePiece ``.model`` (unigram or BPE) into an HF fast tokenizer.

    Mirrors SentencePiece's normalisation (its precompiled NFKC-based charsmap, whitespace
    cleanup), ``▁`` word boundaries and decoding. Control / unknown pieces become special tokens
    (their roles are guessed from names such as ``[CLS]``, ``<s>``); when both a cls-like and a
    sep-like token exist, sequences are wrapped as ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers import processors as tk_processors
    from tokenizers.models import BPE, Unigram
    from transformers import PreTrainedTokenizerFast

    path = Path(model_file).expanduser()
    proto = _load_spm_proto(path)
    spec = proto.trainer_spec
    normal, unknown, control, user_defined = 1, 2, 3, 4  # SentencePiece piece types
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    specials = [p for p, _, t in pieces if t in (unknown, control)]
    if spec.model_type == 1:
        model: Any = Unigram(
            [(p, s) for p, s, _ in pieces], unk_id=spec.unk_id, byte_fallback=spec.byte_fallback
        )
    elif spec.model_type == 2:
        vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
        skip = {p for p, _, t in pieces if t not in (normal,)}
        model = BPE(
            vocab,
            _bpe_merges(vocab, skip),
            unk_token=spec.unk_piece,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
            dropout=None,
        )
    else:
        raise DataError(
            f"{path} is a SentencePiece 'char'/'word' model; only unigram and bpe models can be "
            "converted, retrain with model_type='unigram' or 'bpe'"
        )
    tok = Tokenizer(model)

    norm_spec = proto.normalizer_spec
    norms: list[Any] = []
    if norm_spec.precompiled_charsmap:
        norms.append(normalizers.Precompiled(norm_spec.precompiled_charsmap))
    if norm_spec.remove_extra_whitespaces:
        norms += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if norms:
        tok.normalizer = normalizers.Sequence(norms)
    scheme = "always" if norm_spec.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    if spec.byte_fallback:
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                *([decoders.Strip(" ", 1, 0)] if norm_spec.add_dummy_prefix else []),
            ]
        )
    else:
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials])
    tok.add_tokens(
        [AddedToken(p, special=False, normalized=False) for p, _, t in pieces if t == user_defined]
    )

    # Guess roles from piece names; ELECTRA-style names first.
    def find(*names: str) -> str | None:
        present = {p for p, _, _ in pieces}
        return next((n for n in names if n in present), None)

    roles: dict[str, Any] = {
        "pad_token": spec.pad_piece if spec.pad_id >= 0 else find("[PAD]", "<pad>"),
        "unk_token": spec.unk_piece,
        "cls_token": find("[CLS]", "<cls>") or (spec.bos_piece if spec.bos_id >= 0 else None),
        "sep_token": find("[SEP]", "<sep>") or (spec.eos_piece if spec.eos_id >= 0 else None),
        "mask_token": find("[MASK]", "<mask>"),
        "bos_token": spec.bos_piece if spec.bos_id >= 0 else None,
        "eos_token": spec.eos_piece if spec.eos_id >= 0 else None,
    }
    roles = {k: v for k, v in roles.items() if v is not None}
    cls, sep = roles.get("cls_token"), roles.get("sep_token")
    if cls and sep:
        ids = {p: i for i, (p, _, _) in enumerate(pieces)}
        tok.post_processor = tk_processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, ids[cls]), (sep, ids[sep])],
        )
    extras = [p for p in specials if p not in roles.values()]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=model_max_length,
        **roles,
        **({"extra_special_tokens": extras} if extras else {}),
    )


def train_sentencepiece(
    files: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    vocab_size: int = 32000,
    model_type: str = "unigram",
    morpheme_pretokenize: bool = False,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    limit_lines: int | None = None,
    show_progress: bool = True,
    *,
    character_coverage: float = 0.9995,
    input_sentence_size: int = 5_000_000,
    text_field: str = "text",
    model_max_length: int = 512,
    **spm_kwargs: Any,
) -> PreTrainedTokenizerFast:
    """Train a SentencePiece model and save it with an HF tokenizer next to it.

    `out_dir` receives ``spm.model`` / ``spm.vocab`` (the SentencePiece model itself) and the
    converted HF fast tokenizer (``tokenizer.json``, ``tokenizer_config.json``,
    ``special_tokens_map.json``), so ``AutoTokenizer.from_pretrained(out_dir)`` and
    `load_tokenizer` (on the directory or on ``spm.model``) both work.

    Special tokens: the first is the pad piece (id 0), the second the unknown piece (id 1), the
    rest are control symbols (ids 2, 3, ...); no bos/eos pieces. SentencePiece's default
    ``nmt_nfkc`` normalisation keeps Hangul syllables composed (NFKC) but maps compatibility
    jamo such as 'ㅋ' to conjoining jamo; pass ``normalization_rule_name="identity"`` to avoid it.

    With `morpheme_pretokenize`, morpheme boundaries inside an eojeol are passed through
    SentencePiece's ``pretokenization_delimiter``: pieces never cross a morpheme boundary, while
    '▁' still marks real spaces only (consistent with raw text at inference).

    Args:
      model_type: "unigram" or "bpe".
      character_coverage: SentencePiece's character coverage (0.9995 suits Korean).
      input_sentence_size: SentencePiece samples at most this many lines into memory.
      spm_kwargs: extra `SentencePieceTrainer.train` options (override the defaults).
      Other arguments as in `train_wordpiece`.

    Raises:
      DataError: bad input, or vocab_size too large for the corpus. ConfigError: bad options.
    """
    import sentencepiece as spm

    specials = _check_special_tokens(special_tokens)
    _check_vocab_size(vocab_size, specials)
    if model_type not in ("unigram", "bpe"):
        raise ConfigError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    paths = _check_corpus_files(files)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    stream = _LineStream(
        _training_lines(
            paths,
            limit_lines=limit_lines,
            text_field=text_field,
            morpheme_pretokenize=morpheme_pretokenize,
            morpheme_sep=_SPM_MORPHEME_DELIMITER,
            show_progress=show_progress,
        )
    )
    options: dict[str, Any] = {
        "model_prefix": str(out / "spm"),
        "vocab_size": vocab_size,
        "model_type": model_type,
        "character_coverage": character_coverage,
        "input_sentence_size": input_sentence_size,
        "shuffle_input_sentence": True,
        "max_sentence_length": 16384,
        "pad_id": 0,
        "pad_piece": specials[0],
        "unk_id": 1,
        "unk_piece": specials[1],
        "bos_id": -1,
        "eos_id": -1,
        "control_symbols": list(specials[2:]),
        "num_threads": os.cpu_count() or 1,
        "minloglevel": 1 if show_progress else 2,
    }
    if morpheme_pretokenize:
        options["pretokenization_delimiter"] = _SPM_MORPHEME_DELIMITER
    options.update(spm_kwargs)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(stream), **options)
    except RuntimeError as exc:
        if stream.error is not None:  # our DataError, wrapped by SentencePiece
            raise stream.error from None
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        if stream.count == 0:
            raise DataError(f"no text lines found in {[str(p) for p in paths]}") from None
        too_high = re.search(
            r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", msg
        )
        if too_high:
            raise DataError(
                f"vocab_size={vocab_size} is too large for this corpus (at most "
                f"{too_high.group(2)}); lower vocab_size or add text"
            ) from None
        # Drop SentencePiece's "INTERNAL: file.cc(line) [check] " prefix, keep its advice.
        msg = re.sub(r"^.*?\] (?=\S)", "", msg, count=1)
        raise DataError(f"SentencePiece training failed: {msg}") from None
    if stream.error is not None:
        raise stream.error

    hf = sentencepiece_to_hf(out / "spm.model", model_max_length=model_max_length)
    meta = _train_meta(
        "sentencepiece",
        paths,
        stream.count,
        vocab_size=vocab_size,
        model_type=model_type,
        morpheme_pretokenize=morpheme_pretokenize,
        character_coverage=character_coverage,
    )
    _save_hf(hf, out, specials, meta)
    logger.info("trained SentencePiece %s vocab of %d pieces -> %s", model_type, len(hf), out)
    return hf


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _find_spm_model(directory: Path) -> Path | None:
    for name in _SPM_NAMES:
        if (directory / name).is_file():
            return directory / name
    return next(iter(sorted(directory.glob("*.model"))), None)


def _load_vocab_txt(vocab_file: Path) -> PreTrainedTokenizerFast:
    """A BERT/ELECTRA WordPiece tokenizer from a bare vocab.txt (cased, no accent stripping)."""
    from transformers import BertTokenizerFast

    tokens = vocab_file.read_text(encoding="utf-8").splitlines()
    if not tokens:
        raise DataError(f"{vocab_file} is empty; point at a complete tokenizer directory")
    vocab = {t: i for i, t in enumerate(tokens)}
    roles = {r: t for r, t in zip(_SPECIAL_ROLES, DEFAULT_SPECIAL_TOKENS) if t in vocab}
    return BertTokenizerFast(vocab=vocab, do_lower_case=False, strip_accents=False, **roles)


def _vocab_is_cased(tok: PreTrainedTokenizerBase, vocab: dict[str, int]) -> bool:
    specials = set(tok.all_special_tokens)
    return any(
        ch.isupper()
        for t in vocab
        if t not in specials and not (t.startswith("[") and t.endswith("]"))
        for ch in t
    )


def _ensure_hangul_safe(tok: PreTrainedTokenizerBase, directory: Path | None) -> None:
    """Stop a BERT normaliser from decomposing Hangul when the vocabulary holds syllables."""
    from tokenizers import normalizers

    backend = getattr(tok, "backend_tokenizer", None)
    norm = getattr(backend, "normalizer", None)
    if norm is None:
        return
    probe = "안녕하세요"
    if norm.normalize_str(probe) == probe:
        return
    vocab = tok.get_vocab()
    if not any(_HANGUL_SYLLABLE.search(t) for t in vocab):
        return  # a jamo-level vocab (e.g. multilingual uncased BERT) expects decomposition
    if not isinstance(norm, normalizers.BertNormalizer):
        logger.warning(
            "the tokenizer's normaliser decomposes Hangul syllables but its vocabulary holds "
            "syllables; Korean words may become [UNK]"
        )
        return
    cfg = _read_json(directory / "tokenizer_config.json") if directory else {}
    lowercase = (
        bool(cfg["do_lower_case"]) if "do_lower_case" in cfg else not _vocab_is_cased(tok, vocab)
    )
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=norm.clean_text,
        handle_chinese_chars=norm.handle_chinese_chars,
        strip_accents=False,
        lowercase=lowercase,
    )
    for name, value in (("do_lower_case", lowercase), ("strip_accents", False)):
        if hasattr(tok, name):
            setattr(tok, name, value)
        tok.init_kwargs[name] = value  # so that save_pretrained keeps the fix
    logger.warning(
        "tokenizer normalisation stripped accents, which decomposes Hangul syllables; using "
        "strip_accents=False, do_lower_case=%s (set both in tokenizer_config.json to silence this)",
        lowercase,
    )


def load_tokenizer(
    path: str | os.PathLike[str], *, fix_hangul: bool = True
) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local HF model directory or tokenizer file (never the hub).

    `path` may be a directory with ``tokenizer.json`` and/or ``tokenizer_config.json`` (loaded
    with ``AutoTokenizer.from_pretrained(path, local_files_only=True)``), a directory with only a
    WordPiece ``vocab.txt`` (BERT/ELECTRA style, cased) or only a SentencePiece ``*.model``, or
    one of those files directly.

    With `fix_hangul` (default), a BERT-style tokenizer whose normaliser would NFD-decompose Hangul
    syllables although its vocabulary holds syllables is switched to ``strip_accents=False`` (see
    the module docstring).

    Raises:
      DataError: the path does not exist, holds no tokenizer files, or they cannot be loaded.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            f"tokenizer path {p} does not exist; pass a local HF model directory containing "
            f"{_LOOKED_FOR}"
        )
    directory: Path | None = p if p.is_dir() else p.parent
    tok: PreTrainedTokenizerBase
    if p.is_file():
        name = p.name.lower()
        if name.endswith(".model"):
            tok = sentencepiece_to_hf(p)
        elif name.endswith(".json"):
            from tokenizers import Tokenizer
            from transformers import PreTrainedTokenizerFast

            try:
                backend = Tokenizer.from_file(str(p))
            except Exception as exc:
                raise DataError(f"cannot load tokenizer file {p}: {exc}") from None
            vocab = backend.get_vocab()
            roles = {r: t for r, t in zip(_SPECIAL_ROLES, DEFAULT_SPECIAL_TOKENS) if t in vocab}
            tok = PreTrainedTokenizerFast(tokenizer_object=backend, **roles)
            directory = None
        elif name.endswith(".txt"):
            tok = _load_vocab_txt(p)
        else:
            raise DataError(f"unknown tokenizer file {p}; expected {_LOOKED_FOR}")
    else:
        tok = _load_directory(p)
    if fix_hangul:
        _ensure_hangul_safe(tok, directory)
    return tok


def _load_directory(p: Path) -> PreTrainedTokenizerBase:
    has_json = (p / "tokenizer.json").is_file()
    vocab_txt = p / "vocab.txt" if (p / "vocab.txt").is_file() else None
    spm_model = _find_spm_model(p)
    if not (has_json or vocab_txt or spm_model):
        raise DataError(
            f"no tokenizer files in {p} (looked for tokenizer.json, vocab.txt, "
            f"{', '.join(_SPM_NAMES)}, *.model); point at the teacher's HF directory or train "
            "one with `kdjax tokenizer train`"
        )
    error: Exception | None = None
    if has_json or (p / "tokenizer_config.json").is_file() or (p / "config.json").is_file():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as exc:  # unknown model_type, bad config...: try the raw files below
            error = exc
    if vocab_txt is not None:
        return _load_vocab_txt(vocab_txt)
    if spm_model is not None:
        return sentencepiece_to_hf(spm_model)
    first = str(error).strip().splitlines()[0] if error and str(error).strip() else repr(error)
    raise DataError(f"cannot load the tokenizer in {p}: {first}")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def expand_globs(patterns: Iterable[str]) -> list[str]:
    """Expand file globs (``**`` allowed) and directories into a sorted, de-duplicated file list.

    A directory stands for its supported corpus files (recursively).

    Raises:
      DataError: a pattern matches no file (the message names it).
    """
    files: dict[str, None] = {}
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = [m for m in sorted(glob.glob(expanded, recursive=True)) if os.path.isfile(m)]
        elif os.path.isdir(expanded):
            matches = sorted(
                str(f)
                for f in Path(expanded).rglob("*")
                if f.is_file() and f.name.lower().endswith(_TEXT_SUFFIXES + _JSONL_SUFFIXES)
            )
        else:
            matches = [expanded] if os.path.isfile(expanded) else []
        if not matches:
            raise DataError(
                f"--files pattern {pattern!r} matched no file; check the path (quote globs so the "
                "shell does not expand them)"
            )
        files.update(dict.fromkeys(matches))
    return list(files)


def add_tokenizer_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tokenizer train ...`` on the main CLI's subparsers.

    The ``tokenizer`` parser sets ``func=run_tokenizer_cli`` as a default, so a main CLI can call
    ``args.func(args)``.
    """
    parser = subparsers.add_parser(
        "tokenizer",
        help="train a WordPiece / SentencePiece vocabulary",
        description="Tokenizer utilities.",
    )
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="{train}")
    sub.required = True
    train = sub.add_parser(
        "train",
        help="train a vocabulary on text corpora",
        description=(
            "Train a WordPiece (BERT/ELECTRA) or SentencePiece vocabulary on .txt, .txt.gz or "
            ".jsonl files and save an HF tokenizer directory. Prints a JSON summary."
        ),
    )
    train.add_argument(
        "--files", nargs="+", required=True, metavar="GLOB", help="corpus files or globs"
    )
    train.add_argument("--out", required=True, metavar="DIR", help="output directory")
    train.add_argument("--kind", choices=("wordpiece", "sentencepiece"), default="wordpiece")
    train.add_argument(
        "--vocab_size",
        "--vocab-size",
        type=int,
        default=None,
        metavar="N",
        help="default 30000 (wordpiece) / 32000 (sentencepiece)",
    )
    train.add_argument(
        "--min_frequency",
        "--min-frequency",
        type=int,
        default=2,
        metavar="N",
        help="minimum merge frequency (wordpiece only)",
    )
    train.add_argument(
        "--morphemes",
        action="store_true",
        help="split training text into Korean morphemes first (needs kiwipiepy)",
    )
    train.add_argument(
        "--limit_lines",
        "--limit-lines",
        type=int,
        default=None,
        metavar="N",
        help="read at most N lines",
    )
    train.add_argument(
        "--model_type",
        "--model-type",
        choices=("unigram", "bpe"),
        default="unigram",
        help="sentencepiece model type",
    )
    train.add_argument(
        "--character_coverage",
        "--character-coverage",
        type=float,
        default=0.9995,
        metavar="F",
        help="share of characters covered by the alphabet (sentencepiece only)",
    )
    train.add_argument("--lowercase", action="store_true", help="lowercase text (wordpiece only)")
    train.add_argument("--no_progress", "--no-progress", action="store_true", help="no tqdm bar")
    parser.set_defaults(func=run_tokenizer_cli)
    return parser


def run_tokenizer_cli(args: argparse.Namespace) -> int:
    """Handle a parsed ``tokenizer ...`` namespace; prints a one-line JSON summary, returns 0."""
    command = getattr(args, "tokenizer_command", "train")
    if command != "train":
        raise ConfigError(f"unknown tokenizer command {command!r}; use `kdjax tokenizer train`")
    files = expand_globs(args.files)
    kind = args.kind
    show_progress = not getattr(args, "no_progress", False)
    if kind == "wordpiece":
        tok = train_wordpiece(
            files,
            args.out,
            vocab_size=args.vocab_size or 30000,
            min_frequency=args.min_frequency,
            morpheme_pretokenize=args.morphemes,
            lowercase=getattr(args, "lowercase", False),
            limit_lines=args.limit_lines,
            show_progress=show_progress,
        )
    else:
        tok = train_sentencepiece(
            files,
            args.out,
            vocab_size=args.vocab_size or 32000,
            model_type=getattr(args, "model_type", "unigram"),
            character_coverage=getattr(args, "character_coverage", 0.9995),
            morpheme_pretokenize=args.morphemes,
            limit_lines=args.limit_lines,
            show_progress=show_progress,
        )
    print(
        json.dumps({"vocab_size": len(tok), "out": str(args.out), "kind": kind}, ensure_ascii=False)
    )
    return 0

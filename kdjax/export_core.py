"""kdjax -> Hugging Face: model directories that transformers loads unchanged.

Two formats (see docs/export.md):

* ``"electra"``: a standard transformers ELECTRA (or BERT, for ``family="bert"``) directory.
  Low-rank factors are multiplied out (`kdjax.factorize.merge_params`): the outputs are the
  same, the file is as large as the dense model. Loads with the ordinary classes
  (``ElectraForPreTraining``, ``AutoModelForSequenceClassification``, ``pipeline``...).
* ``"factorized"``: the factors are kept, so the file is 4 bytes x the student's parameter
  count; the directory ships ``configuration_kdjax_electra.py`` / ``modeling_kdjax_electra.py``
  (from ``kdjax/hf_remote/``) and an ``auto_map``, so the Auto classes load it with
  ``trust_remote_code=True``.

Weight names come from `kdjax.hf.key_table`, the table `kdjax.from_hf` imports with, so an
export reads back with `kdjax.from_hf` to the same parameters.

The export core: `to_hf` (config + params -> directory), `export_size` (exact file size
without writing) and the rules of an export directory (`check_output_dir`, `commit_export`),
which both `kdjax.export` (``kdjax export``: a run -> HF or ONNX) and `kdjax.deploy` (ONNX,
built from a `to_hf` directory) import; it imports neither.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict

from kdjax.errors import ConfigError, NonFiniteError
from kdjax.hf import key_table
from kdjax.modeldir import non_finite_report, save_safetensors
from kdjax.models.config import EncoderConfig
from kdjax.storage import LOCK_FILE, Staging, atomic_write_json, is_scratch

log = logging.getLogger(__name__)

FORMATS = ("electra", "factorized")
DTYPES = ("float32", "bfloat16")
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Written last into every export directory (HF and ONNX): the files that export wrote. A later
# export may replace exactly those (and delete the ones it no longer writes); anything else in
# the directory is someone else's (see `check_output_dir`).
EXPORT_MANIFEST = "kdjax_export.json"
# |weight| above this in an export: finite, but a diverged run's (lr far too high), not a model
HUGE_WEIGHT = 1e4

_ELECTRA_ARCHS = {
    "none": "ElectraModel",
    "discriminator": "ElectraForPreTraining",
    "generator": "ElectraForMaskedLM",
    "classification": "ElectraForSequenceClassification",
    "token_classification": "ElectraForTokenClassification",
    "qa": "ElectraForQuestionAnswering",
}
_BERT_ARCHS = {
    "none": "BertModel",
    "generator": "BertForMaskedLM",
    "classification": "BertForSequenceClassification",
    "token_classification": "BertForTokenClassification",
    "qa": "BertForQuestionAnswering",
}
# the Auto class of each head: ElectraForMaskedLM -> AutoModelForMaskedLM, ElectraModel -> AutoModel
_AUTO_CLASSES = {head: "AutoModel" + arch.removeprefix("ElectraModel").removeprefix("Electra")
                 for head, arch in _ELECTRA_ARCHS.items()}
_PIPELINE_TAGS = {
    "none": "feature-extraction",
    "discriminator": "feature-extraction",
    "generator": "fill-mask",
    "classification": "text-classification",
    "token_classification": "token-classification",
    "qa": "question-answering",
}
_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16"}
_BYTES = {"float32": 4, "bfloat16": 2}


# -- checks and conversions -------------------------------------------------------------------
def _check_format(format: str) -> str:
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    return format


def check_dtype(dtype: Any) -> str:
    name = getattr(dtype, "name", None) or str(dtype)
    name = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16"}.get(name, name)
    if name not in DTYPES:
        raise ConfigError(f"export dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return name


def _np_dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.float32


def check_family(cfg: EncoderConfig, format: str) -> None:
    if cfg.family == "electra":
        return
    if format == "factorized":
        raise ConfigError(
            "format='factorized' ships a low-rank ELECTRA; a BERT-family model "
            "(model.family='bert') exports with format='electra' (as a transformers BERT)"
        )
    if cfg.head == "discriminator":
        raise ConfigError("transformers has no BERT class with an ELECTRA discriminator head; "
                          "export it with model.family='electra'")
    if cfg.emb_size != cfg.hidden_size:
        raise ConfigError(f"a BERT-family model needs embedding_size == hidden_size "
                          f"({cfg.emb_size} != {cfg.hidden_size}); use model.family='electra'")
    if cfg.head == "none":
        log.warning("BertModel has a pooler that kdjax does not keep: transformers initialises "
                    "bert.pooler.* at random (pooler_output is meaningless, the hidden states "
                    "are exact)")
    if cfg.head == "generator" and cfg.hidden_act != "gelu":
        raise ConfigError(f"BERT's MLM transform uses hidden_act ({cfg.hidden_act!r}) where "
                          "kdjax's uses exact GELU; export with model.family='electra'")


def parse_size(size: int | str) -> int:
    """Bytes of a size like 50MB (10^6), 1GB, 500KB or 64MiB (2^20); an int is bytes."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ConfigError(f"max_shard_size must be positive, got {size}")
        return size
    text = str(size).strip().upper().replace(" ", "")
    units = (("KIB", 2**10), ("MIB", 2**20), ("GIB", 2**30), ("KB", 10**3), ("MB", 10**6),
             ("GB", 10**9), ("B", 1))
    unit, factor = next(((u, f) for u, f in units if text.endswith(u)), ("", 1))
    number = text[: len(text) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"max_shard_size={size!r} is not a size like '50MB', '2GB' or '64MiB'")
    return int(value * factor)


def host_tree(params: Any) -> dict:
    """Plain nested dicts of float32 numpy arrays (jax arrays fetched, boxes removed)."""
    import flax.linen as nn
    import jax

    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]  # a variables dict
    params = nn.meta.unbox(params)
    host = jax.device_get(params)

    def plain(tree: Any) -> Any:
        if isinstance(tree, Mapping):
            return {str(k): plain(v) for k, v in tree.items()}
        return np.asarray(tree).astype(np.float32)

    return plain(host)


def _checked_flat(params: dict, cfg: EncoderConfig) -> dict[tuple[str, ...], np.ndarray]:
    """Flat {path: array} of `cfg` (loop layout); ConfigError on missing/misshapen weights."""
    from kdjax.models.model import abstract_params

    want = flatten_dict(abstract_params(cfg))
    have = flatten_dict(params)
    problems = [f"missing {'/'.join(p)}" for p in want if p not in have]
    problems += [f"{'/'.join(p)} has shape {tuple(have[p].shape)}, the config gives "
                 f"{tuple(s.shape)}" for p, s in want.items()
                 if p in have and tuple(have[p].shape) != tuple(s.shape)]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        ranks = (f"num_layers={cfg.num_layers}, head={cfg.head!r}, ranks "
                 f"{cfg.embedding_rank}/{cfg.attention_rank}/{cfg.ffn_rank}")
        raise ConfigError(f"params do not match the model config ({ranks}): "
                          f"{'; '.join(problems[:3])}{more}; pass the config the params were "
                          "built with (and only the model's params, e.g. state.params['student'])")
    extra = sorted("/".join(p) for p in have if p not in want)
    if extra:
        log.warning("to_hf: dropping %d weight(s) the model does not use: %s", len(extra),
                    ", ".join(extra[:6]) + (" ..." if len(extra) > 6 else ""))
    return {p: have[p] for p in want}


def _prefix(cfg: EncoderConfig) -> str:
    return "" if cfg.head == "none" else f"{cfg.family}."


def hf_state_dict(
    model_config: Any, params: Any, format: str = "electra"
) -> tuple[EncoderConfig, dict[str, np.ndarray]]:
    """(config of the exported model, {HF key: float32 array [torch layout]}) for `format`.

    Accepts the scan or loop layout, jax or numpy arrays. For format="electra" the low-rank
    factors are multiplied out, so the returned config has all ranks 0.
    """
    from kdjax.factorize import merge_params, unstack_layers

    format = _check_format(format)
    cfg = EncoderConfig.from_any(model_config)
    check_family(cfg, format)
    host = host_tree(params)
    if not isinstance(host, dict) or not {"embeddings", "encoder"} <= set(host):
        found = ", ".join(sorted(host)) if isinstance(host, dict) else type(host).__name__
        raise ConfigError(f"params have no embeddings/encoder (found: {found}); pass only the "
                          "model's own params, e.g. state.params['student']")
    host = unstack_layers(host, cfg)
    out_cfg = cfg.replace(scan_layers=False, scan_unroll=1, remat=False, param_dtype="float32",
                          dtype="float32")
    flat = _checked_flat(host, out_cfg)
    if format == "electra" and out_cfg.is_factorized:
        from flax.traverse_util import unflatten_dict

        out_cfg, merged = merge_params(unflatten_dict(flat), out_cfg)
        flat = {p: np.asarray(v) for p, v in flatten_dict(merged).items()}
    state = {}
    for hf_key, path, transform in key_table(out_cfg, _prefix(out_cfg)):
        value = flat[path]
        state[hf_key] = np.ascontiguousarray(value.T if transform == "linear" else value)
    check_finite_weights(state)
    return out_cfg, state


def check_finite_weights(state: Mapping[str, np.ndarray]) -> None:
    """`NonFiniteError` (one line) when a tensor holds NaN/inf; a warning when the weights are
    finite but huge (|w| > `HUGE_WEIGHT`: a run whose learning rate was far too high)."""
    bad = non_finite_report(dict(state))
    if bad:
        raise NonFiniteError(f"refusing to export: {bad}; the run diverged - export an earlier "
                             "checkpoint (--step N) or train again with a lower train.lr")
    peak, where = 0.0, ""
    for name, value in state.items():
        m = float(np.max(np.abs(value))) if value.size else 0.0
        if m > peak:
            peak, where = m, name
    if peak > HUGE_WEIGHT:
        log.warning("export: weights up to %.3g (%s): far beyond a trained model's; the run "
                    "probably diverged (train.lr too high)", peak, where)


# -- config.json ------------------------------------------------------------------------------
def _labels(cfg: EncoderConfig, id2label: Any) -> dict[str, Any]:
    if cfg.head not in ("classification", "token_classification"):
        if id2label is not None:
            log.warning("to_hf: id2label ignored for head %r", cfg.head)
        return {}
    if id2label is None:
        names = [f"LABEL_{i}" for i in range(cfg.num_labels)]
    elif isinstance(id2label, Mapping):
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
        if sorted(int(k) for k in id2label) != list(range(len(names))):
            raise ConfigError(f"id2label keys must be 0..{len(names) - 1}, got {list(id2label)}")
    else:
        names = [str(x) for x in id2label]
    if len(names) != cfg.num_labels:
        raise ConfigError(f"id2label has {len(names)} labels but model.num_labels="
                          f"{cfg.num_labels}")
    return {"id2label": {str(i): n for i, n in enumerate(names)},
            "label2id": {n: i for i, n in enumerate(names)}}


def hf_config(
    cfg: EncoderConfig,
    format: str = "electra",
    dtype: str = "float32",
    id2label: Any = None,
    source: EncoderConfig | None = None,
) -> dict[str, Any]:
    """The config.json dict of an export of `cfg` (the exported model's config).

    `source` is the config the weights came from (differs from `cfg` when factors were merged).
    """
    from kdjax import __version__

    format, dtype = _check_format(format), check_dtype(dtype)
    bert = cfg.family == "bert"
    kd: dict[str, Any] = {"format": format, "family": cfg.family, "head": cfg.head,
                          "kdjax_version": __version__}
    if format == "factorized":
        from kdjax.hf_remote import ARCHITECTURES, AUTO_MAP, MODEL_TYPE

        arch, model_type = ARCHITECTURES[cfg.head], MODEL_TYPE
        ranks = {"embedding_rank": cfg.embedding_rank, "attention_rank": cfg.attention_rank,
                 "ffn_rank": cfg.ffn_rank}
        kd.update(ranks)
    else:
        arch = (_BERT_ARCHS if bert else _ELECTRA_ARCHS)[cfg.head]
        model_type, ranks = ("bert" if bert else "electra"), {}
        if source is not None and source.is_factorized:
            kd["merged_from_ranks"] = {"embedding": source.embedding_rank,
                                       "attention": source.attention_rank,
                                       "ffn": source.ffn_rank}
    out: dict[str, Any] = {"architectures": [arch], "model_type": model_type}
    if format == "factorized":
        out["auto_map"] = dict(AUTO_MAP)
    out.update({
        "vocab_size": cfg.vocab_size,
        **({} if bert else {"embedding_size": cfg.emb_size}),
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": cfg.hidden_act,
        "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "classifier_dropout": None if cfg.classifier_dropout < 0 else cfg.classifier_dropout,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "tie_word_embeddings": True,
        "dtype": dtype,
        **ranks,
        **_labels(cfg, id2label),
        "kdjax": kd,
    })
    return out


# -- safetensors ------------------------------------------------------------------------------
def _safetensors_header_bytes(tensors: Mapping[str, tuple[tuple[int, ...], str]],
                              metadata: Mapping[str, str]) -> int:
    """Bytes of a safetensors header (8-byte length + padded JSON) for these tensors.

    Mirrors the Rust writer: tensors sorted by name (one dtype), compact JSON, spaces to a
    multiple of 8.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in sorted(tensors):
        shape, dtype = tensors[name]
        size = math.prod(shape) * _BYTES[dtype]
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    n = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode())
    return 8 + n + (8 - n % 8) % 8


def export_size(model_config: Any, format: str = "factorized",
                dtype: str = "float32") -> dict[str, Any]:
    """Exact size of the (unsharded) model.safetensors an export of `model_config` would write.

    Computed from shapes only (`jax.eval_shape`): nothing is allocated or written, so this is
    instant for any model. Returns {"params", "bytes", "mb", "tensors"}.
    """
    from kdjax.models.model import abstract_params

    format, dtype = _check_format(format), check_dtype(dtype)
    cfg = EncoderConfig.from_any(model_config).replace(scan_layers=False, scan_unroll=1,
                                                        remat=False)
    check_family(cfg, format)
    if format == "electra":
        cfg = cfg.replace(embedding_rank=0, attention_rank=0, ffn_rank=0)
    shapes = flatten_dict(abstract_params(cfg))
    tensors = {}
    for hf_key, path, transform in key_table(cfg, _prefix(cfg)):
        shape = tuple(shapes[path].shape)
        tensors[hf_key] = (shape[::-1] if transform == "linear" else shape, dtype)
    params = sum(math.prod(s) for s, _ in tensors.values())
    size = _safetensors_header_bytes(tensors, {"format": "pt"}) + params * _BYTES[dtype]
    return {"params": params, "bytes": size, "mb": round(size / 1e6, 2), "tensors": len(tensors)}


def _write_weights(state: dict[str, np.ndarray], out: Path,
                   max_shard_size: int | str | None) -> list[str]:
    """model.safetensors, or shards + model.safetensors.index.json, split by huggingface_hub
    (the names and index transformers reads), into `out` (an export's staging folder)."""
    from huggingface_hub import split_state_dict_into_shards_factory

    limit = parse_size(max_shard_size) if max_shard_size is not None else 2**62
    split = split_state_dict_into_shards_factory(
        dict(sorted(state.items())), get_storage_size=lambda a: int(a.nbytes),
        filename_pattern="model{suffix}.safetensors", max_shard_size=limit)
    for name, keys in split.filename_to_tensors.items():
        save_safetensors({k: state[k] for k in keys}, out / name, {"format": "pt"})
    if not split.is_sharded:
        return [WEIGHTS_NAME]
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in state.values()))},
             "weight_map": dict(sorted(split.tensor_to_filename.items()))}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return [*split.filename_to_tensors, INDEX_NAME]


# -- model card -------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _model_card(cfg: EncoderConfig, source: EncoderConfig, format: str, dtype: str,
                params: int, file_bytes: int, card: Mapping[str, Any] | None) -> str:
    card = dict(card or {})
    name = card.pop("name", None) or f"kdjax {cfg.family} ({cfg.head})"
    description = card.pop("description", "")
    language = card.pop("language", "ko")
    license_ = card.pop("license", None)
    metrics = card.pop("metrics", None) or {}
    auto = _AUTO_CLASSES[cfg.head]
    remote = format == "factorized"
    tags = ["kdjax", cfg.family, "knowledge-distillation"]
    if source.is_factorized:
        tags.append("low-rank")
    front = ["---", f"language: {language}", "library_name: transformers",
             f"pipeline_tag: {_PIPELINE_TAGS[cfg.head]}", "tags:", *[f"- {t}" for t in tags]]
    if license_:
        front.append(f"license: {license_}")
    front.append("---")
    ranks = (f"embedding {source.embedding_rank}, attention {source.attention_rank}, "
             f"FFN {source.ffn_rank}" if source.is_factorized else "dense")
    if format == "factorized":
        fmt = ("factorized: the low-rank factors are kept (custom code in this directory, load "
               "with `trust_remote_code=True`)")
    elif source.is_factorized:
        fmt = (f"{cfg.family}: standard transformers {cfg.family.upper()}; the low-rank factors "
               "were multiplied out (same outputs, dense size)")
    else:
        fmt = f"{cfg.family}: standard transformers {cfg.family.upper()}"
    rows = [
        ("format", fmt),
        ("architecture", hf_config(cfg, format)["architectures"][0]),
        ("parameters", f"{params:,}"),
        ("fp32 size", f"{params * 4 / 1e6:.1f} MB"),
        (f"weights on disk ({dtype})", f"{file_bytes / 1e6:.1f} MB"),
        ("shape", f"{cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads, "
                  f"FFN {cfg.intermediate_size}, embedding {cfg.emb_size}, vocab "
                  f"{cfg.vocab_size}, max length {cfg.max_position_embeddings}"),
        ("low-rank factorization", ranks),
        ("head", cfg.head),
    ]
    lines = [*front, "", f"# {name}", ""]
    if description:
        lines += [description, ""]
    lines += ["Exported from kdjax (JAX/Flax knowledge distillation and low-rank factorization "
              "of Korean ELECTRA models).", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    trust = ", trust_remote_code=True" if remote else ""
    lines += ["", "## Usage", "", "```python",
              f"from transformers import AutoTokenizer, {auto}", "",
              f'tokenizer = AutoTokenizer.from_pretrained("PATH"{trust})',
              f'model = {auto}.from_pretrained("PATH"{trust})',
              'outputs = model(**tokenizer("안녕하세요", return_tensors="pt"))', "```", ""]
    lines += ["`kdjax.from_hf(\"PATH\")` reads this directory back into Flax.", ""]
    if card:
        lines += ["## Training", "", "| | |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in card.items() if v not in (None, "", {})]
        lines.append("")
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
        lines.append("")
    return "\n".join(lines)


# -- the output directory -----------------------------------------------------------------------
def owned_files(out: Path) -> set[str] | None:
    """The files an earlier kdjax export wrote into `out` (its `EXPORT_MANIFEST`, itself
    included); None when `out` has no readable manifest."""
    try:
        files = json.loads((out / EXPORT_MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {str(f) for f in files if isinstance(f, str) and "/" not in f} | {EXPORT_MANIFEST}


def _listing(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit
                                       else "")


def check_output_dir(out: Path, overwrite: bool = False, sources: tuple[Any, ...] = (),
                     command: str = "kdjax export") -> None:
    """Where an export may write (one `ConfigError` line otherwise): a new or empty directory,
    or one an earlier export wrote (its manifest); a directory holding other files only with
    `overwrite`. Never a file, a kdjax workdir or model directory, or a directory the model is
    read from (`sources`), whatever `overwrite` says. `command` names the writer in the error
    (`kdjax import` and `kdjax trim` follow the same rules)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory (new, empty, or an "
                          "earlier export)")
    real = os.path.realpath(out)
    for src in sources:
        if src is not None and os.path.realpath(src) == real:
            raise ConfigError(f"--out {out} is the directory being exported from; choose "
                              "another --out")
    if not out.is_dir():
        return
    from kdjax.modeldir import MODEL_FILE

    for mark, what in ((LOCK_FILE, "a kdjax workdir"), (MODEL_FILE, "a kdjax model directory"),
                       ("checkpoints", "a kdjax workdir")):
        if (out / mark).exists():
            raise ConfigError(f"--out {out} is {what} (it has {mark}); export into a new "
                              "directory instead")
    if owned_files(out) is not None or overwrite:
        return
    present = sorted(p.name for p in out.iterdir() if not is_scratch(p.name))
    if present:
        raise ConfigError(
            f"--out {out} is not empty and was not written by {command} (it holds "
            f"{_listing(present)}); choose a new or empty directory, or pass --overwrite "
            "(kdjax then replaces only the files it writes and deletes nothing else)")


def commit_export(stage: Staging, overwrite: bool, info: Mapping[str, Any],
                  command: str = "kdjax export") -> list[str]:
    """Move the staged files of an export into place and record them in `EXPORT_MANIFEST`.

    A staged name that exists in the directory but was not written by kdjax needs
    `overwrite`; files of the earlier export that this one does not write again (old shards,
    remote code, an int8 model) are deleted; nothing else is. Returns the written names."""
    from kdjax import __version__

    out = stage.out
    owned = owned_files(out)
    mine = owned or set()
    names = stage.names()
    clash = [n for n in names if (out / n).exists() and n not in mine]
    if clash and not overwrite:
        raise ConfigError(f"--out {out} already holds {_listing(clash)}, not written by "
                          f"{command}; pass --overwrite to replace them or choose another --out")
    record = {"kdjax_version": __version__, **info}
    # First the union, so that a crash while moving leaves no file of ours unlisted.
    atomic_write_json(out / EXPORT_MANIFEST, {**record, "files": sorted(mine | set(names)
                                                                        - {EXPORT_MANIFEST})})
    written = stage.commit()
    atomic_write_json(out / EXPORT_MANIFEST, {**record, "files": sorted(written)})
    for name in sorted(mine - set(written) - {EXPORT_MANIFEST}):
        stale = out / name
        if stale.is_file():
            stale.unlink()
    others = sorted(p.name for p in out.iterdir() if p.name not in set(written) | {
        EXPORT_MANIFEST} and not is_scratch(p.name))
    weights = [n for n in others if n.endswith((".safetensors", ".bin", ".onnx", ".index.json"))]
    if weights:
        log.warning("export: %s also holds %s, which kdjax did not write and left in place; "
                    "loaders may read them", out, _listing(weights))
    return sorted(written)


# -- the export -------------------------------------------------------------------------------
def _resolve_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None or hasattr(tokenizer, "save_pretrained"):
        return tokenizer
    from kdjax.data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer)


def to_hf(
    model_config: Any,
    params: Any,
    out_dir: str | os.PathLike,
    format: str = "electra",
    tokenizer: Any = None,
    dtype: str = "float32",
    max_shard_size: int | str | None = None,
    model_card: Mapping[str, Any] | None = None,
    id2label: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face model directory for a kdjax model; returns its path.

    Args:
      model_config: the model's `EncoderConfig` (or a dict / ml-collections model section).
      params: its parameters (scan or loop layout; numpy or jax arrays; only the model's own
        weights - distillation projections and optimizer state are not part of them).
      out_dir: output directory: new, empty, or written by an earlier export (its
        kdjax_export.json lists the files it wrote: those are replaced, or deleted when this
        export does not write them again); see `check_output_dir`.
      format: "electra" (standard transformers ELECTRA/BERT, factors multiplied out) or
        "factorized" (factors kept; custom code + auto_map, load with trust_remote_code=True).
      tokenizer: a transformers tokenizer or a tokenizer path; saved with `save_pretrained`.
      dtype: "float32" or "bfloat16" (transformers then loads the model in bfloat16).
      max_shard_size: e.g. "50MB": split the weights into shards of at most this size plus
        model.safetensors.index.json (a single tensor larger than that gets its own shard).
      model_card: README.md content: optional "name", "description", "license", "metrics"
        (dict), anything else (recipe, teacher, steps...) is listed under "Training".
      id2label: label names (list, or {id: name}) of a classification / token classification
        head; default LABEL_0...
      overwrite: also write into a directory holding other files, replacing those with the
        names this export writes; no other file is deleted.

    Raises `NonFiniteError` (nothing written) when a weight is NaN/inf, `ConfigError` for an
    output directory it may not write, `StorageError` when the disk fails (nothing replaced).
    Every file is staged inside `out_dir` first and renamed into place at the end.
    """
    format, dtype = _check_format(format), check_dtype(dtype)
    out = Path(out_dir).expanduser()
    check_output_dir(out, overwrite)
    source = EncoderConfig.from_any(model_config)
    out_cfg, state = hf_state_dict(source, params, format)
    config = hf_config(out_cfg, format, dtype, id2label, source=source)
    tok = _resolve_tokenizer(tokenizer)
    if tok is not None and len(tok) > out_cfg.vocab_size:
        raise ConfigError(f"the tokenizer has {len(tok)} tokens but the model's vocab_size is "
                          f"{out_cfg.vocab_size}; pass the tokenizer the model was trained with")
    np_dtype = _np_dtype(dtype)
    state = {k: v.astype(np_dtype) for k, v in state.items()}

    from kdjax.hf_remote import FILES, REMOTE_DIR

    with Staging(out) as stage:  # a full disk fails here, before any file of `out` changes
        files = _write_weights(state, stage.dir, max_shard_size)
        (stage.dir / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False)
                                               + "\n")
        if format == "factorized":
            for name in FILES:
                shutil.copyfile(REMOTE_DIR / name, stage.dir / name)
        if tok is not None:
            tok.save_pretrained(str(stage.dir))
        n_params = sum(v.size for v in state.values())
        file_bytes = sum((stage.dir / f).stat().st_size for f in files
                         if f.endswith(".safetensors"))
        card = _model_card(out_cfg, source, format, dtype, n_params, file_bytes, model_card)
        (stage.dir / "README.md").write_text(card, encoding="utf-8")
        commit_export(stage, overwrite, {"format": format, "dtype": dtype})
    log.info("exported %s (%s, %s, %d params, %.1f MB) to %s", config["architectures"][0],
             format, dtype, n_params, file_bytes / 1e6, out)
    return out

"""`kdjax export`: a run's model (its Orbax checkpoint, or a model directory) as a Hugging Face
directory (`kdjax.export_core.to_hf`, docs/export.md) or an ONNX Runtime one (`--format onnx
[--quantize int8]`: `kdjax.deploy.to_onnx`, docs/deploy.md). Python: `export_workdir`; CLI:
`add_export_cli` (``kdjax export --workdir DIR --out DIR --format electra|factorized|onnx``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdjax.errors import CheckpointError, ConfigError, KdjaxError
from kdjax.export_core import (
    FORMATS,
    check_dtype,
    check_output_dir,
    export_size,
    owned_files,
    parse_size,
    to_hf,
)
from kdjax.models.config import EncoderConfig
from kdjax.paths import absolute, shown

log = logging.getLogger(__name__)


# -- from a run's workdir ---------------------------------------------------------------------
def _checkpoint_steps(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _last_metrics(workdir: Path) -> dict[str, Any]:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut off by a crash
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in record.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}
    return {}


def _find_tokenizer(workdir: Path, meta: Mapping[str, Any], model_dir: Path | None = None
                    ) -> Any:
    """The run's tokenizer: the model directory exported from (`model_dir`), WORKDIR/model
    (best/ for finetune), WORKDIR/tokenizer, data.tokenizer, the teacher's."""
    from kdjax.data.tokenizer import load_tokenizer

    candidates: list[str | Path] = [workdir / "model", workdir / "best", workdir / "tokenizer",
                                    workdir / "generator"]
    if model_dir is not None:
        candidates.insert(0, model_dir)
    data = (meta.get("config") or {}).get("data") or {}
    if data.get("tokenizer") not in (None, "", "auto"):
        candidates.append(str(data["tokenizer"]))
    teacher = meta.get("teacher")
    if isinstance(teacher, str) and teacher not in ("", "random"):
        candidates += [Path(teacher) / "model", Path(teacher)]
    for cand in candidates:
        if not Path(cand).exists():
            continue
        try:
            return load_tokenizer(cand)
        except KdjaxError:
            continue
    log.warning("export: no tokenizer found for %s (looked in %s); the export has no "
                "tokenizer files", workdir, ", ".join(str(c) for c in candidates))
    return None


def _run_card(wd: Path, meta: Mapping[str, Any], cfg: EncoderConfig, part: str,
              given: str) -> dict[str, Any]:
    """Model-card fields of a run: name, kind, recipe, objective, teacher, step, metrics; the
    workdir as `given`, the teacher's path relative (`shown`): a card leaves this machine."""
    from kdjax.models.size import param_report

    run_config = meta.get("config") or {}
    objective = run_config.get("objective")
    terms = objective.get("terms") if isinstance(objective, Mapping) else None
    card: dict[str, Any] = {
        "name": f"{run_config.get('name') or wd.name}" + (f" ({part})" if part else ""),
        "kind": meta.get("kind") or meta.get("trained_by"),
        "recipe": run_config.get("name"),
        "objective": ", ".join(f"{k}: {v.get('loss')}" for k, v in terms.items()
                               if isinstance(v, Mapping)) if isinstance(terms, Mapping) else None,
        "teacher": shown(meta["teacher"]) if isinstance(meta.get("teacher"), str) else None,
    }
    if meta.get("teacher_config"):
        try:
            teacher = param_report(meta["teacher_config"])["params"]
            student = param_report(cfg)["params"]
            card["teacher params"] = f"{teacher:,}"
            card["compression"] = f"{teacher / student:.1f}x fewer parameters than the teacher"
        except KdjaxError:
            pass
    card.update({"step": meta.get("step"), "workdir": shown(given), "metrics": _last_metrics(wd)})
    return card


def _load_run_model(workdir: Path, step: int | None,
                    part: str) -> tuple[EncoderConfig, Any, dict[str, Any], Path | None]:
    """(config, params, meta, the model directory read or None for a checkpoint)."""
    from kdjax.modeldir import MODEL_FILE, load_checkpoint_model, load_model_dir

    if not workdir.exists():
        raise CheckpointError(f"workdir {workdir} does not exist")
    ckpt = workdir / "checkpoints"
    steps = _checkpoint_steps(ckpt)
    if steps:
        if step is not None and step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {ckpt} (have {steps})")
        used = steps[-1] if step is None else step
        cfg, params, meta = load_checkpoint_model(workdir, used, part=part)
        return cfg, params, {**meta, "step": used}, None
    # No checkpoints: a kdjax model directory (WORKDIR/model, or the directory itself) will do.
    # (a `kdjax finetune` WORKDIR keeps its selected model in best/)
    model_dir = {"": [workdir, workdir / "model", workdir / "best"],
                 "gen": [workdir / "generator"]}.get(part, [])
    for cand in model_dir:
        if (cand / MODEL_FILE).is_file() and step is None:
            cfg, params = load_model_dir(cand)
            info = _read_json(cand / MODEL_FILE)
            info.pop("config", None)
            return cfg, params, info, cand
    raise CheckpointError(
        f"no checkpoints in {ckpt}" + (f" for step {step}" if step is not None else "")
        + " and no kdjax model directory in the workdir; is it the --workdir of a "
        "`kdjax distill`/`pretrain`/`finetune` run?"
    )


def _check_onnx_options(format: str, dtype: Any, max_shard_size: Any, quantize: str | None,
                        onnx_weights: str | None) -> bool:
    """True for format="onnx"; ConfigError for options that only go with one of the formats."""
    if format != "onnx":
        if quantize not in (None, "", "none"):
            raise ConfigError(f"--quantize {quantize} needs --format onnx (the Hugging Face "
                              f"formats are float32/bfloat16 safetensors; got --format {format})")
        if onnx_weights is not None:
            raise ConfigError(f"--onnx_weights needs --format onnx (got --format {format}); "
                              "for Hugging Face directories pick electra or factorized")
        return False
    from kdjax.deploy import ONNX_WEIGHTS, check_quantize, require_onnx

    if check_dtype(dtype) != "float32":
        raise ConfigError("--format onnx writes a float32 graph (and an int8 one with "
                          f"--quantize int8); drop --dtype {dtype}")
    if max_shard_size is not None:
        raise ConfigError("--max_shard_size applies to Hugging Face safetensors, not to "
                          "--format onnx (one .onnx file)")
    check_quantize(quantize)
    if onnx_weights is not None and onnx_weights not in ONNX_WEIGHTS:
        raise ConfigError(f"unknown --onnx_weights {onnx_weights!r}; use one of "
                          f"{', '.join(ONNX_WEIGHTS)}")
    require_onnx()  # before the (possibly long) checkpoint restore
    return True


def export_workdir(
    workdir: str | os.PathLike,
    out_dir: str | os.PathLike,
    format: str = "electra",
    step: int | None = None,
    dtype: str = "float32",
    part: str = "",
    max_shard_size: int | str | None = None,
    tokenizer: Any = None,
    model_card: Mapping[str, Any] | None = None,
    quantize: str | None = None,
    onnx_weights: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export the model of a kdjax run (its Orbax checkpoint) as a Hugging Face directory.

    The checkpoint is restored to host numpy on CPU (`kdjax.train.checkpoint.read_state_numpy`),
    whatever mesh it was saved on; only the main model's weights are kept (`part="gen"` picks
    the generator of a pretrain run, with the embeddings it shares with the discriminator).
    The tokenizer is the run's (WORKDIR/model or WORKDIR/tokenizer, else data.tokenizer or the
    teacher's directory from the checkpoint's meta); the model card records the run (kind,
    recipe, teacher, step) and the last line of WORKDIR/metrics.jsonl. On multi-host runs
    every process restores, process 0 writes. Without checkpoints, a kdjax model directory
    (WORKDIR/model, or WORKDIR/best of a `kdjax finetune` run) is exported instead.

    ``format="onnx"`` writes an ONNX Runtime directory instead (`kdjax.deploy.to_onnx`:
    model.onnx, plus model_int8.onnx with ``quantize="int8"``; ``onnx_weights`` "auto" |
    "merged" | "factorized" picks the graph, default auto = factorized when the model has
    factors); it needs the ``onnx`` extra and float32, unsharded output.

    `out_dir` must be new, empty or an earlier export (`check_output_dir`; `overwrite` for a
    directory holding other files), and never the workdir or model directory read; a model
    directory exports with its own tokenizer.

    Raises CheckpointError (missing workdir / checkpoint / model part), ConfigError (unknown
    format or dtype, options that do not go together, an output directory it may not write)
    and NonFiniteError (NaN/inf weights) with one-line messages.
    """
    import jax

    onnx = _check_onnx_options(format, dtype, max_shard_size, quantize, onnx_weights)
    if not onnx and format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; use one of "
                          f"{', '.join(FORMATS)}, onnx")
    dtype = check_dtype(dtype)
    if max_shard_size is not None:
        parse_size(max_shard_size)
    wd = Path(absolute(workdir))
    out = Path(absolute(out_dir))
    check_output_dir(out, overwrite, sources=(wd,))  # before the (long) restore
    cfg, params, meta, model_dir = _load_run_model(wd, step, part)
    check_output_dir(out, overwrite, sources=(wd, model_dir))
    tok = tokenizer if tokenizer is not None else _find_tokenizer(wd, meta, model_dir)
    card = _run_card(wd, meta, cfg, part, os.fspath(workdir))
    card.update(model_card or {})
    labels = meta.get("id2label") or meta.get("labels") or meta.get("label_names") or None
    if jax.process_index() != 0:
        return out
    if onnx:
        from kdjax.deploy import to_onnx

        manifest = to_onnx(cfg, params, out, weights=onnx_weights or "auto",
                           quantize=quantize, tokenizer=tok, model_card=card,
                           id2label=labels if cfg.head in ("classification",
                                                           "token_classification") else None,
                           overwrite=overwrite)
        return Path(manifest["out"])
    return to_hf(cfg, params, out, format=format, tokenizer=tok, dtype=dtype,
                 max_shard_size=max_shard_size, model_card=card,
                 id2label=labels if cfg.head in ("classification", "token_classification")
                 else None, overwrite=overwrite)


# -- CLI --------------------------------------------------------------------------------------
def add_export_cli(subparsers: argparse._SubParsersAction) -> Any:
    """Add `kdjax export` to the CLI; returns its handler `(args, overrides) -> int`."""
    p = subparsers.add_parser(
        "export", help="convert a run's checkpoint into a Hugging Face model directory",
        description="Restore the Orbax checkpoint of a kdjax run (any mesh) on CPU and write a "
        "transformers directory: --format electra (standard ELECTRA, low-rank factors "
        "multiplied out) or --format factorized (factors kept, trust_remote_code=True); or an "
        "ONNX Runtime directory: --format onnx [--quantize int8].",
    )
    p.add_argument("--workdir", required=True,
                   help="run directory of `kdjax distill/pretrain/finetune` (or a model dir)")
    p.add_argument("--out", required=True, help="output Hugging Face model directory")
    p.add_argument("--format", default="electra",
                   help="electra (default) | factorized | onnx (ONNX Runtime graph; needs the "
                   "onnx extra: pip install 'kdjax[onnx]')")
    p.add_argument("--quantize", default=None,
                   help="int8: with --format onnx, also write model_int8.onnx (ONNX Runtime "
                   "dynamic quantization)")
    p.add_argument("--onnx_weights", default=None,
                   help="with --format onnx: auto (default: factorized when the model has "
                   "low-rank factors, else merged) | merged (factors multiplied out) | "
                   "factorized (factors kept as two MatMuls: the small file)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--dtype", default="float32", help="float32 (default) | bfloat16")
    p.add_argument("--part", default="", help="model of the run to export (default: the main "
                   "one; 'gen' = the generator of a pretrain run)")
    p.add_argument("--max_shard_size", default=None,
                   help="split the weights into shards of at most this size, e.g. 50MB")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (default: the run's own)")
    p.add_argument("--overwrite", action="store_true",
                   help="also write into a --out that holds files kdjax export did not write, "
                   "replacing those with the names it writes (it deletes nothing else); without "
                   "it --out must be new, empty or an earlier kdjax export")
    return run_export_cli


def run_export_cli(args: argparse.Namespace, overrides: list[str]) -> int:
    """`kdjax export`: prints one JSON line describing the written directory."""
    if overrides:
        raise ConfigError(f"kdjax export takes no --config.* overrides (got {overrides[0]})")
    out = export_workdir(args.workdir, args.out, format=args.format, step=args.step,
                         dtype=args.dtype, part=args.part, max_shard_size=args.max_shard_size,
                         tokenizer=args.tokenizer, quantize=args.quantize,
                         onnx_weights=args.onnx_weights, overwrite=args.overwrite)
    import jax

    if jax.process_index() == 0 and args.format == "onnx":
        from kdjax.deploy import MANIFEST

        manifest = _read_json(out / MANIFEST)
        keys = ("out", "weights", "head", "architecture", "inputs", "outputs", "onnx_mb",
                "int8_mb", "parity_max_abs", "parity_kdjax_max_abs", "files")
        print(json.dumps({"format": "onnx", **{k: manifest[k] for k in keys if k in manifest}},
                         ensure_ascii=False))
    elif jax.process_index() == 0:
        config = _read_json(out / "config.json")
        files = sorted(owned_files(out) or ())  # what it wrote, not what else is there
        size = sum((out / f).stat().st_size for f in files if f.endswith(".safetensors"))
        print(json.dumps({"out": str(out), "format": args.format, "dtype": args.dtype,
                          "architecture": (config.get("architectures") or [None])[0],
                          "weights_mb": round(size / 1e6, 2), "files": files},
                         ensure_ascii=False))
    return 0


# to_hf, export_size, parse_size: the export core's, here too (docs/export.md imports them so)
__all__ = ["add_export_cli", "export_size", "export_workdir", "parse_size", "run_export_cli",
           "to_hf"]

"""kdjax's native model directory, and one loader for every kind of model path.

A model directory (`WORKDIR/model` after a run) holds `kdjax_model.json` (the EncoderConfig,
provenance), `params.safetensors` (flat "a/b/c" keys, fp32) and the tokenizer files. It is
what `pretrain` hands to `distill` as a teacher and what `export` converts to HF.

`load_model(path)` accepts an HF directory or hub id, a kdjax model directory, or a run's
workdir (its `model/`, or else the latest checkpoint).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from kdjax.errors import CheckpointError
from kdjax.models.config import EncoderConfig

MODEL_FILE = "kdjax_model.json"
PARAMS_FILE = "params.safetensors"


def save_safetensors(tensors: dict[str, np.ndarray], path: str | os.PathLike,
                     metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (temp file + rename), readable by others.

    safetensors creates files 0600; model directories are meant to be shared (served, copied,
    uploaded), so the file gets the mode `save_pretrained` gives: 0666 minus the umask.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


def save_model_dir(out_dir: str | os.PathLike, config: EncoderConfig, params: Any,
                   tokenizer: Any = None, **info: Any) -> Path:
    """Write a model directory (process 0 only; `params` fully gathered on host)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = {"/".join(k): np.ascontiguousarray(np.asarray(v, np.float32))
            for k, v in flatten_dict(params).items()}
    save_safetensors(flat, out / PARAMS_FILE, {"format": "kdjax"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    from kdjax import __version__

    meta = {"config": config.to_dict(), "kdjax_version": __version__, **info}
    (out / MODEL_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    return out


def load_model_dir(path: str | os.PathLike, **overrides: Any) -> tuple[EncoderConfig, dict]:
    from safetensors.numpy import load_file

    path = Path(path)
    meta = json.loads((path / MODEL_FILE).read_text())
    cfg = EncoderConfig.from_any({**meta["config"], **overrides})
    flat = load_file(path / PARAMS_FILE)
    params = unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    if cfg.scan_layers != meta["config"].get("scan_layers", False):
        from kdjax.factorize import stack_layers, unstack_layers

        saved = EncoderConfig.from_any(meta["config"])
        params = stack_layers(unstack_layers(params, saved), cfg) if cfg.scan_layers else \
            unstack_layers(params, saved)
    return cfg, params


def is_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MODEL_FILE).is_file()


def find_model_dir(path: str | os.PathLike) -> Path | None:
    """The model directory of `path`: itself, or a workdir's `model/`."""
    p = Path(path)
    if is_model_dir(p):
        return p
    if is_model_dir(p / "model"):
        return p / "model"
    return None


def load_model(path: str | os.PathLike, **overrides: Any) -> tuple[EncoderConfig, dict]:
    """(config, params) from an HF dir / hub id, a kdjax model dir, or a kdjax workdir."""
    model_dir = find_model_dir(path)
    if model_dir is not None:
        return load_model_dir(model_dir, **overrides)
    p = Path(path)
    if (p / "checkpoints").is_dir() and (p / "config.json").is_file() and not (
        p / "model.safetensors"
    ).exists():
        return load_from_checkpoint(p, **overrides)
    from kdjax.hf import from_hf

    return from_hf(path, **overrides)


def load_from_checkpoint(workdir: str | os.PathLike, step: int | None = None, part: str = "",
                         **overrides: Any) -> tuple[EncoderConfig, dict]:
    """The model of a run from its Orbax checkpoint (no optimizer state kept)."""
    from etils import epath

    from kdjax.train.checkpoint import read_state_numpy

    state, meta = read_state_numpy(epath.Path(workdir) / "checkpoints", step)
    models = meta.get("models") or {}
    part = part or meta.get("main_model", "")
    if part not in models:
        raise CheckpointError(f"checkpoint in {workdir} does not record model {part!r}")
    cfg = EncoderConfig.from_any({**models[part], **overrides})
    params = dict(state["params"][part])
    for key, source in (meta.get("tied") or {}).get(part, {}).items():
        params[key] = state["params"][source][key]  # e.g. the generator's shared embeddings
    return cfg, params

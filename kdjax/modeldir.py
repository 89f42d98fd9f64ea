"""kdjax's native model directory, and one loader for every kind of model path.

A model directory (`WORKDIR/model` after a run) holds `kdjax_model.json` (the EncoderConfig,
provenance), `params.safetensors` (flat "a/b/c" keys, fp32) and the tokenizer files. It is
what `pretrain` hands to `distill` as a teacher and what `export` converts to HF.

`load_model(path)` accepts an HF directory or hub id, a kdjax model directory, or a run's
workdir (its `model/`, or else the latest checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from kdjax.errors import CheckpointError, ConfigError, KdjaxError, NonFiniteError
from kdjax.models.config import EncoderConfig
from kdjax.storage import Staging, atomic_path

MODEL_FILE = "kdjax_model.json"
PARAMS_FILE = "params.safetensors"


def save_safetensors(tensors: dict[str, np.ndarray], path: str | os.PathLike,
                     metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (`kdjax.storage.atomic_path`: temp file + rename),
    readable by others.

    safetensors creates files 0600; model directories are meant to be shared (served, copied,
    uploaded), so the file gets the mode `save_pretrained` gives: 0666 minus the umask.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def non_finite_report(flat: dict[str, np.ndarray], limit: int = 3) -> str | None:
    """None when every float tensor of `flat` ({name: array}) is finite, else a short report:
    "13 of 43 tensors hold NaN/inf (a, b, c, ...)"."""
    bad = [k for k, v in flat.items()
           if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()]
    if not bad:
        return None
    more = ", ..." if len(bad) > limit else ""
    return f"{len(bad)} of {len(flat)} tensors hold NaN/inf ({', '.join(bad[:limit])}{more})"


def save_model_dir(out_dir: Any, config: EncoderConfig, params: Any, tokenizer: Any = None,
                   **info: Any) -> Any:
    """Write a model directory (process 0 only; `params` fully gathered on host); `out_dir`
    may be remote (gs://: written locally, then copied). Returns the directory.

    Every file is written into a staging folder first and renamed into place at the end,
    kdjax_model.json (which marks the directory as a model) last: a full disk replaces
    nothing, a crash leaves no truncated file. Non-finite weights raise `NonFiniteError` and
    write nothing.
    """
    flat = {"/".join(k): np.ascontiguousarray(np.asarray(v, np.float32))
            for k, v in flatten_dict(params).items()}
    bad = non_finite_report(flat)
    if bad:
        raise NonFiniteError(f"not writing the model directory {out_dir}: {bad}; the weights "
                             "diverged (lower train.lr and train again)")
    if "://" in str(out_dir):
        return _save_remote(out_dir, config, params, tokenizer, **info)
    out = Path(out_dir)
    from kdjax import __version__

    meta = {"config": config.to_dict(), "kdjax_version": __version__, **info}
    with Staging(out) as stage:
        save_safetensors(flat, stage.dir / PARAMS_FILE, {"format": "kdjax"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(stage.dir))
        (stage.dir / MODEL_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
        stage.commit(last=(MODEL_FILE,))
    return out


def _save_remote(target: Any, config: EncoderConfig, params: Any, tokenizer: Any,
                 **info: Any) -> Any:
    import tempfile

    from etils import epath

    target = epath.Path(target)
    with tempfile.TemporaryDirectory() as tmp:
        local = save_model_dir(Path(tmp) / target.name, config, params, tokenizer, **info)
        target.mkdir(parents=True, exist_ok=True)
        for f in sorted(local.rglob("*")):
            if f.is_file():
                dst = target / str(f.relative_to(local))
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(f.read_bytes())
    return target


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
    cfg, params, _ = load_checkpoint_model(workdir, step, part, **overrides)
    return cfg, params


def load_checkpoint_model(workdir: str | os.PathLike, step: int | None = None, part: str = "",
                          **overrides: Any) -> tuple[EncoderConfig, dict, dict]:
    """(config, params, the checkpoint's meta) of a run's model from its Orbax checkpoint."""
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
    return cfg, params, meta


# -- any model reference -> config + params -------------------------------------------------------
@dataclasses.dataclass
class ModelSpec:
    """A resolved model reference: config, host params (None = random init), where its
    tokenizer lives, the task it was fine-tuned for (when recorded)."""

    config: EncoderConfig
    params: Any
    source: str
    tok_dir: Path | None = None
    task: str | None = None


def _model_dir_of(p: Path) -> Path | None:
    if is_model_dir(p / "best"):  # a `kdjax finetune` WORKDIR
        return p / "best"
    return find_model_dir(p)


def resolve_model(spec: str, what: str = "model", **overrides: Any) -> ModelSpec:
    """Load `spec`: a kdjax model directory, a run's workdir (`model/`, `best/` or its latest
    checkpoint), an HF directory or hub id, or a size config `file.py[:arg]` (random init:
    params None). `what` names the config key in errors; `overrides` are EncoderConfig fields
    (e.g. a teacher's dtype). Every failure is one `ConfigError`/`CheckpointError` line."""
    spec = str(spec)
    if spec.partition(":")[0].endswith(".py"):
        from kdjax.config_lib import load_config

        section = load_config(spec)
        model = section.get("model", None)
        if model is None:
            for key in ("student", "discriminator"):
                if key in section:
                    model = section[key].model
                    break
        if model is None:
            raise ConfigError(f"{what}={spec!r} has no model section (a size config such as "
                              "configs/debug.py is expected)")
        return ModelSpec(EncoderConfig.from_any({**model.to_dict(), **overrides}), None, spec)
    p = Path(spec).expanduser()
    hub_like = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if not p.exists() and not hub_like:
        raise ConfigError(f"{what}={spec!r} does not exist; give a model directory (HF, kdjax "
                          "model dir or workdir) or a size config such as configs/debug.py")
    model_dir = _model_dir_of(p) if p.exists() else None
    try:
        cfg, params = load_model(model_dir or (p if p.exists() else spec), **overrides)
    except KdjaxError as e:
        raise type(e)(f"{what}={spec!r}: {e}") from e
    except Exception as e:
        raise ConfigError(f"{what}={spec!r} is not a model ({type(e).__name__}: "
                          f"{str(e)[:120]})") from e
    task = None
    if model_dir is not None:
        task = json.loads((model_dir / MODEL_FILE).read_text()).get("task")
    tok_dir = model_dir or (p if p.is_dir() else None)
    return ModelSpec(cfg, params, spec, tok_dir, task)

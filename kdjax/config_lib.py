"""Loading ml-collections config files and applying `--config.a.b=value` overrides.

A config file is a Python file with `get_config()` (optionally `get_config(arg)`, selected
with `file.py:arg` as in big_vision) returning an `ml_collections.ConfigDict`. Bundled files
in the repository's `configs/` can be named without the path: `kd_small` or `finetune/nsmc`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(spec: str) -> tuple[Path, str | None]:
    """`path[:arg]` -> (existing file path, arg). Bare names look in the bundled configs/."""
    path_str, _, arg = spec.partition(":")
    candidates = [Path(path_str)]
    if not path_str.endswith(".py"):
        candidates.append(Path(path_str + ".py"))
    bundled = path_str.removeprefix("configs/")  # the README's paths, from another directory
    candidates += [CONFIG_DIR / c for c in (bundled, bundled + ".py") if not os.path.isabs(c)]
    for cand in candidates:
        if cand.is_file():
            return cand, (arg or None)
    raise ConfigError(
        f"config file {path_str!r} not found (also looked in {CONFIG_DIR}); "
        "pass a path to a .py file with get_config()"
    )


def load_config(
    spec: str | os.PathLike, overrides: Sequence[str] = ()
) -> ml_collections.ConfigDict:
    """Load a config file (see module doc) and apply `a.b=value` overrides."""
    path, arg = resolve_config_path(os.fspath(spec))
    module_spec = importlib.util.spec_from_file_location(f"kdjax_config_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as e:  # a broken config file is a user error; say which file
        raise ConfigError(f"could not load config {path}: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config() function")
    if arg is not None:
        try:
            inspect.signature(module.get_config).bind(arg)
        except TypeError:
            raise ConfigError(
                f"config file {path} has get_config() without an argument; drop ':{arg}'"
            ) from None
    config = module.get_config(arg) if arg is not None else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    return apply_overrides(config, overrides)


def sibling(file: str, name: str) -> ml_collections.ConfigDict:
    """Load another config file next to `file` (for a config that extends another)."""
    return load_config(str(Path(file).resolve().parent / name))


def _parse_text(text: str, current: Any, key: str) -> Any:
    """Command-line text -> a Python value for `key` (whose current value is `current`):
    true/false for bools, the text itself for strings, a Python literal otherwise (the text
    when it is none). Type checks are ml_collections' own (`set_value`)."""
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key} expects true/false, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _locate(config: ml_collections.ConfigDict, key: str) -> tuple[Any, str]:
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"unknown config key {'.'.join(parents[: i + 1])!r} (in {key!r})")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        is_dict = isinstance(node, ml_collections.ConfigDict)
        known = ", ".join(sorted(node.keys())) if is_dict else ""
        raise ConfigError(f"unknown config key {key!r}; keys here: {known}")
    return node, leaf


def set_value(config: ml_collections.ConfigDict, key: str, value: Any,
              shown: str | None = None) -> None:
    """`config.<key> = value` with ml_collections' type checking (ints widen to floats,
    lists and tuples convert); a wrong type or an unknown key is a `ConfigError` naming the
    key. A mapping assigned to a section merges into it key by key."""
    node, leaf = _locate(config, key)
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
        for k, v in value.items():
            set_value(config, f"{key}.{k}", v)
        return
    if isinstance(value, bool) and current is not None and not isinstance(current, bool):
        # ml_collections lets a bool into an int field (bool is an int); a config never means it
        raise ConfigError(f"--config.{key}={shown or value!r} has type bool, expected "
                          f"{type(current).__name__}")
    try:
        node[leaf] = value
    except TypeError:
        raise ConfigError(f"--config.{key}={shown or value!r} has type {type(value).__name__}, "
                          f"expected {type(current).__name__}") from None


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> Any:
    """Apply `["a.b=value", ...]`; an unknown key or a value of the wrong type is an error
    naming the key."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, text = item.split("=", 1)
        key = key.removeprefix("--config.").removeprefix("config.")
        node, leaf = _locate(config, key)
        set_value(config, key, _parse_text(text, node[leaf], key), shown=repr(text))
    return config


def overrides_for(task: str, overrides: Sequence[str], tasks: Sequence[str]) -> list[str]:
    """The overrides that apply to `task`: all plain ones, plus `TASK.key=v` ones for this
    task with the `TASK.` prefix dropped (e.g. `kohate.task.binary=true`)."""
    out = []
    for item in overrides:
        key = item.removeprefix("--config.").removeprefix("config.")
        head, _, rest = key.partition(".")
        if head in tasks and rest:
            if head == task:
                out.append(rest)
        else:
            out.append(key)
    return out


def check_float(key: str, value: Any, low: float, high: float, low_ok: bool = True,
                high_ok: bool = True) -> float:
    """`value` as a float within [low, high] (`low_ok` / `high_ok`: whether the bound itself
    is allowed); else one `ConfigError` naming `key`. NaN and inf never pass: the step
    computes in float32, where e.g. lr=1e39 is inf."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}") from None
    inside = math.isfinite(x) and (x > low or (low_ok and x == low)) and \
        (x < high or (high_ok and x == high))
    if not inside:
        span = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
        raise ConfigError(f"{key}={value!r} is out of range: it must be a finite number in "
                          f"{span}")
    return x


def model_config(**overrides: Any) -> ml_collections.ConfigDict:
    """A `model` section with every `EncoderConfig` field (defaults = KR-ELECTRA-base)."""
    defaults = {f.name: f.default for f in dataclasses.fields(EncoderConfig)}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown model config key(s): {', '.join(unknown)}")
    defaults.update(overrides)
    EncoderConfig(**defaults)  # validate early, at config-load time
    return ml_collections.ConfigDict(defaults)


def data_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The `data` section: corpus files, tokenizer, sequence length, masking."""
    return _section(overrides, "data", {
        "files": "builtin:sample",  # paths, globs, dirs, builtin:sample|konlpy, hf:NAME
        "text_field": "text",
        "max_length": 128,
        "pack": True,
        "tokenizer": "auto",  # auto: the teacher's, else trained on the corpus into WORKDIR
        "vocab_size": 8000,  # for a tokenizer trained by `auto`
        "tokenizer_lines": 0,  # lines used to train it (0 = all)
        "mlm_probability": 0.15,
        "limit_lines": 0,  # 0 = read everything
        # corpus rows kept out of training for the held-out evaluation (at most a tenth)
        "heldout_rows": 256,
        # shuffle blocks of this many consecutive rows as one (pack=False: 2 keeps the pairs of
        # a file whose line 2k + 1 restates line 2k in one batch, for a relation loss)
        "group_rows": 1,
    })


def pretrain_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The `pretrain` section (ELECTRA): the discriminator's loss weight and the generator's
    sampling temperature, optionally annealed from `temperature_start` (easy, near-uniform
    replacements a young discriminator can learn to spot) down to `temperature` over the first
    `temperature_anneal` fraction of the steps."""
    return _section(overrides, "pretrain", {
        "disc_weight": 50.0,
        "temperature": 1.0,
        "temperature_start": 1.0,
        "temperature_anneal": 0.0,
    })


def train_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The `train` section: steps, batch, optimizer, logging and checkpoint cadence."""
    return _section(overrides, "train", {
        "steps": 1000,
        "batch_size": 32,  # global, across all devices and hosts
        "grad_accum": 1,
        "log_every": 50,
        "save_every": 500,
        "eval_every": 0,  # pretrain/distill held-out evaluation; 0 = with every save
        "keep": 3,
        "keep_period": 0,  # also keep every Nth step (0 = off)
        "async_checkpoints": True,
        # start over in a workdir that has checkpoints: they (and metrics.jsonl) are moved to
        # WORKDIR/set-aside-<time>/ first; give it once, on the command line
        "restart": False,
        "seed": 0,
        "lr": 5e-4,
        "warmup_steps": 0.1,  # int steps, or a float < 1 = fraction of train.steps
        "schedule": "linear",  # linear | cosine | constant
        "end_lr_factor": 0.0,
        "weight_decay": 0.01,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-6,
        "clip_norm": 1.0,
        "max_consecutive_skips": 10,
    })


def mesh_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The `mesh` section: shape over (data, fsdp, tensor), -1 = the remaining devices."""
    return _section(overrides, "mesh", {
        "shape": (-1, 1, 1),
        "axes": ("data", "fsdp", "tensor"),
        "rules": "replicated",  # replicated | fsdp | tensor, or [(logical, mesh_axis), ...]
        "num_devices": 0,  # 0 = all devices; N = the first N (debugging, scaling checks)
        # a kdjax.presets name (data, fsdp, data_fsdp[:F], data_tensor[:T], fsdp_tensor[:T]):
        # sets shape and rules for the device count at run time; "" = use shape and rules
        "preset": "",
    })


def _section(overrides: dict[str, Any], name: str, defaults: dict[str, Any]) -> Any:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown {name} config key(s): {', '.join(unknown)}")
    return ml_collections.ConfigDict({**defaults, **overrides})


# Task.defaults keys that configure training rather than the Task
TASK_TRAIN_DEFAULTS = ("max_length", "epochs", "batch_size", "lr", "warmup", "weight_decay")


def finetune_config(task: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The default config of `kdjax finetune` on `task` (a name in `kdjax.data.tasks`).

    Training defaults (max_length, epochs, batch_size, lr, warmup, weight_decay) come from the
    Task's `defaults`; its other defaults (e.g. KorQuAD doc_stride) become `task.*` options.
    `overrides`: `"a.b"=value` (dotted), `section={key: value}` (merged) or a top-level key
    (model, tokenizer, name), each type-checked; an unknown key is a ConfigError naming it.
    """
    from kdjax.data.tasks import get_task

    t = get_task(task)
    d = dict(getattr(t, "defaults", {}) or {})
    options = dict(getattr(t, "option_defaults", {}) or {})
    options.update({k: v for k, v in d.items() if k in options and k not in TASK_TRAIN_DEFAULTS})
    train = train_config(
        steps=0, batch_size=int(d.get("batch_size", 32)), lr=float(d.get("lr", 5e-5)),
        warmup_steps=float(d.get("warmup", 0.1)), weight_decay=float(d.get("weight_decay", 0.01)),
        log_every=50, save_every=500, keep=1,
    )
    train.epochs = float(d.get("epochs", 3))  # used when train.steps is 0
    cfg = ml_collections.ConfigDict({
        "name": f"finetune_{task}",
        "task": {"name": task, "data_dir": "", "max_length": int(d.get("max_length", 128)),
                 # pad each batch only to the smallest of these lengths that holds it
                 # (kdjax.data.task_batches; training, evaluation, prediction); () = every
                 # batch padded to max_length
                 "buckets": (16, 32, 64, 128),
                 # with buckets: each batch holds as many rows as fill batch_size x max_length
                 # tokens (shorter buckets, more rows) instead of batch_size rows: on NSMC
                 # 2.9x the examples/s of one length, against 2.0x (bench/buckets.py)
                 "bucket_equal_tokens": True,
                 "limit_train": 0, "limit_eval": 0, "heldout_fraction": 0.1,
                 "heldout_seed": 0, **options},
        # a model path (HF dir / hub id, kdjax model dir, kdjax workdir) or a size config
        # file such as "configs/debug.py" (= random init; then set tokenizer)
        "model": "",
        "tokenizer": "",  # "" = the model's (or the teacher's) own tokenizer
        "distill": {"teacher": "", "alpha": 0.5, "temperature": 1.0, "objective": ""},
        "stages": {"pre_finetune": False, "distill": True, "post_finetune": False},
        "augment": {"copies": 0, "prob": 0.3, "top_k": 8, "mlm_model": "", "seed": 0,
                    "batch_size": 64},
        "train": train,
        "eval": {"every": 0, "batch_size": 64},
        "mesh": mesh_config(),
    })
    for key, value in overrides.items():
        set_value(cfg, key, value)
    return cfg

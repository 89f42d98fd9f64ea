"""Paths a user gives, resolved once at the boundary (the CLI, the library's entry points).

Every local path may be relative to the current directory (the README's own commands use
`--workdir kdjax-demo`); kdjax turns it into an absolute path before any library sees it,
because some need one (Orbax refuses relative checkpoint paths) and a run's recorded config
must mean the same thing when it is resumed from another directory. Remote paths (`gs://...`)
and hub ids (`org/name` that is not a local path) stay as they are.
"""

from __future__ import annotations

import os
from typing import Any

# Config keys that hold paths, and what kind of value each is:
#   dir   - a local/remote path
#   model - a path, a hub id, or a size config `file.py[:arg]`
#   files - corpus sources: comma-separated (or a list of) paths/globs, builtin:*, hf:*
CONFIG_PATH_KEYS: dict[str, str] = {
    "teacher.path": "model",
    "student.init": "model",  # random | teacher_svd | PATH
    "data.files": "files",
    "data.tokenizer": "model",  # auto | PATH | hub id
    "model": "model",
    "tokenizer": "model",
    "task.data_dir": "dir",
    "distill.teacher": "model",
    "augment.mlm_model": "model",
}
# Values of model-like keys that are keywords, not paths.
_KEYWORDS = frozenset({"", "auto", "random", "teacher_svd"})


def is_remote(path: Any) -> bool:
    """`gs://bucket/...` and other URLs."""
    return "://" in str(path)


def absolute(path: str | os.PathLike[str]) -> str:
    """A local path made absolute (`~` expanded); a remote path or "" unchanged."""
    text = os.fspath(path)
    if not text or is_remote(text):
        return text
    return os.path.abspath(os.path.expanduser(text))


def shown(path: str | os.PathLike[str]) -> str:
    """A path as generated docs print it (report.md, model cards): as the user gave it, an
    absolute local one relative to the current directory, never this machine's own path."""
    text = os.fspath(path)
    return os.path.relpath(text) if os.path.isabs(text) else text


def _hub_like(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def model_ref(spec: str) -> str:
    """A model reference: a local path (made absolute), a size config `file.py[:arg]` (its
    file made absolute when it exists here; bundled names like `debug.py` stay), a hub id or a
    keyword (unchanged)."""
    text = str(spec)
    if text in _KEYWORDS or is_remote(text):
        return text
    file, sep, arg = text.partition(":")
    if file.endswith(".py"):
        local = os.path.expanduser(file)
        return absolute(local) + sep + arg if os.path.isfile(local) else text
    local = os.path.expanduser(text)
    if os.path.exists(local) or not _hub_like(text):
        return absolute(local)
    return text


def corpus_sources(spec: Any) -> Any:
    """`data.files`: each local path or glob made absolute; builtin:/hf: entries unchanged.
    Keeps the container type (a comma-separated string stays a string)."""
    items = [s for s in spec.split(",") if s] if isinstance(spec, str) else list(spec)
    out = [s if s.startswith(("builtin:", "hf:")) else absolute(s) for s in map(str, items)]
    return ",".join(out) if isinstance(spec, str) else type(spec)(out)


_RESOLVERS = {"dir": absolute, "model": model_ref, "files": corpus_sources}


def resolve_config_paths(config: Any) -> Any:
    """Make every path-valued key of `config` (see `CONFIG_PATH_KEYS`) absolute, in place.

    Keys a config does not have are skipped; returns `config`.
    """
    for dotted, kind in CONFIG_PATH_KEYS.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part) if hasattr(node, "get") else None
            if node is None:
                break
        if node is None or not hasattr(node, "ignore_type") or leaf not in node:
            continue
        value = node[leaf]
        if not (isinstance(value, str) or (kind == "files" and isinstance(value, list | tuple))):
            continue
        resolved = _RESOLVERS[kind](value)
        if resolved != value:
            with node.ignore_type():
                node[leaf] = resolved
    return config

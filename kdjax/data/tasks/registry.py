"""The task registry: names, aliases, lookup, and the data folder every task reads.

Task modules register their `Task` subclass here (`@register`); `kdjax.data.tasks` imports
them all, so importing the package fills the registry. Kept apart from the package's
`__init__` so that the task modules import it downward, not the package that imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from kdjax.data.tasks.base import Task
from kdjax.errors import ConfigError, DataError

# The paper's (and KoELECTRA's / KR-ELECTRA's) table order.
TASK_ORDER = ("nsmc", "naver_ner", "kornli", "korsts", "question_pair", "korquad", "kohate")
_ALIASES = {
    "hate_speech": "kohate",
    "korean_hate_speech": "kohate",
    "hatespeech": "kohate",
    "ner": "naver_ner",
    "qpair": "question_pair",
    "paired_question": "question_pair",
    "korquad1": "korquad",
    "korquad_v1": "korquad",
    "korquad_1.0": "korquad",
}
_REGISTRY: dict[str, type[Task]] = {}
T = TypeVar("T", bound=type[Task])


def register(cls: T) -> T:
    """Class decorator adding a `Task` subclass to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no task name")
    other = _REGISTRY.get(cls.name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"task name {cls.name!r} is taken by {other.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def task_names() -> list[str]:
    """Registered task names: the benchmark's seven in the paper's order, then any others."""
    return [n for n in TASK_ORDER if n in _REGISTRY] + sorted(
        n for n in _REGISTRY if n not in TASK_ORDER
    )


def canonical_name(name: str) -> str:
    """The registry name of `name` (case, ``-`` and aliases normalised).

    Raises ConfigError naming the known tasks when there is none.
    """
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ConfigError(
            f"unknown task {name!r}; known tasks: {', '.join(task_names())} (or 'all')"
        )
    return key


def get_task(name: str, **options: Any) -> Task:
    """A new `Task` instance. Unknown name or option -> ConfigError listing the valid ones."""
    return _REGISTRY[canonical_name(name)](**options)


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Task names of ``"all"``, ``"nsmc,korsts"`` or a list, canonical and de-duplicated."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in items:
        if not str(item).strip():
            continue
        if str(item).strip().lower() == "all":
            new = task_names()
        else:
            new = [canonical_name(item)]
        names.extend(n for n in new if n not in names)
    if not names:
        raise ConfigError(
            f"no task given in {spec!r}; use 'all' or a comma-separated list of "
            f"{', '.join(task_names())}"
        )
    return names


def check_data_dir(data_dir: str) -> None:
    """DataError unless `data_dir` is a folder (one subfolder per task: nsmc/, kohate/ ...)."""
    if not data_dir:
        raise DataError("--data_dir is required: the folder with one subfolder per task")
    if not Path(data_dir).is_dir():
        raise DataError(f"data_dir {data_dir!r} is not a directory; point --data_dir at the "
                        "folder holding nsmc/, kohate/ ... (see docs/evaluation.md)")

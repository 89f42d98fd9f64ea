"""Korean downstream tasks: registry, loaders, featurization, losses and metrics.

>>> from kdjax.data.tasks import get_task
>>> task = get_task("nsmc")
>>> train = task.featurize(task.load("../shared/data/ko", "train"), tokenizer, 128)
>>> scores = task.evaluate(logits, test)     # {"accuracy": 90.1}

Tasks, in the order of the Korean ELECTRA benchmark tables: ``nsmc``, ``naver_ner``, ``kornli``,
``korsts``, ``question_pair``, ``korquad``, ``kohate``. Names are case-insensitive and ``-`` may
stand for ``_``; a few common aliases (``hate_speech``, ``naver-ner``, ``qpair``) resolve too.
"""

from __future__ import annotations

# Each task module registers its task on import (`registry.register`).
from kdjax.data.tasks import (  # noqa: F401
    kohate,
    kornli,
    korquad,
    korsts,
    naver_ner,
    nsmc,
    question_pair,
)
from kdjax.data.tasks.base import IGNORE_INDEX, Task, TaskData
from kdjax.data.tasks.registry import (
    TASK_ORDER,
    canonical_name,
    check_data_dir,
    get_task,
    register,
    resolve_tasks,
    task_names,
)

__all__ = [
    "IGNORE_INDEX",
    "TASK_ORDER",
    "Task",
    "TaskData",
    "canonical_name",
    "check_data_dir",
    "get_task",
    "register",
    "resolve_tasks",
    "task_names",
]


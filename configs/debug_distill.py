"""Tiny teacher -> tiny factorized (LF-V3-shaped) student on kdjax's built-in Korean sample.

20 steps in well under a minute on a laptop CPU; tests and quick checks use it. The teacher is
randomly initialised unless teacher.path is set (e.g. to a `kdjax pretrain` workdir).
Swap the objective with `debug_distill.py:ckd` (any name in configs/objectives/).
"""

import ml_collections

from kdjax.config_lib import data_config, mesh_config, sibling, train_config


def get_config(objective: str | None = None) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "name": "debug_distill",
        "teacher": {"path": "", "init": "random", "dtype": "",
                    "model": sibling(__file__, "debug.py").model},
        "student": {"model": sibling(__file__, "debug.py:student").model, "init": "random"},
        "objective": sibling(__file__, f"objectives/{objective or 'paper_kd'}.py"),
        "data": data_config(files="builtin:sample", max_length=64, vocab_size=512),
        "train": train_config(steps=20, batch_size=8, log_every=5, save_every=10, lr=2e-3,
                              warmup_steps=2),
        "mesh": mesh_config(),
    })

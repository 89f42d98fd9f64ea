"""Orbax checkpoints under WORKDIR/checkpoints: async saves, retention, fallback on corruption.

Each step directory holds two items: `state` (the TrainState, sharded arrays, restorable onto
any mesh by passing target shardings) and `meta` (JSON: the config, the data position, the
teacher's provenance, kdjax version). The teacher's weights are never saved.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from kdjax.errors import CheckpointError

log = logging.getLogger(__name__)


class Checkpointer:
    """A thin policy layer over `ocp.CheckpointManager`."""

    def __init__(self, directory: str | epath.Path, keep: int = 3, keep_period: int | None = None,
                 async_save: bool = True):
        self.directory = epath.Path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep and keep > 0 else None,
            keep_period=keep_period or None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._unreadable: set[int] = set()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
        """Start an (async) save of `state` at `step`; returns False if it already exists.

        A step that `restore` found unreadable is replaced (else the corrupt copy would stay
        the newest checkpoint and every later resume would fall back again).
        """
        if step in self._unreadable:
            log.warning("replacing the unreadable checkpoint at step %d", step)
            self.manager.delete(step)
            self._unreadable.discard(step)
        if step in self.manager.all_steps():
            return False
        return self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore(self, target: Any) -> tuple[Any, dict[str, Any], int] | None:
        """Restore the newest readable checkpoint into `target` (ShapeDtypeStructs with
        shardings); an unreadable one is reported and the previous one is tried."""
        for step in reversed(self.all_steps()):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                            meta=ocp.args.JsonRestore()),
                )
                return restored.state, dict(restored.meta or {}), step
            except Exception as e:  # corrupt / partial: fall back, loudly
                self._unreadable.add(step)
                log.error(
                    "checkpoint at step %d in %s is unreadable (%s: %s); falling back to the "
                    "previous one", step, self.directory, type(e).__name__, str(e)[:200],
                )
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def read_state_numpy(directory: str | epath.Path, step: int | None = None) -> tuple[Any, dict]:
    """(state tree as numpy, meta) of a checkpoint, without knowing its structure up front.

    Used to load a teacher or a model for export from a workdir on any machine (CPU).
    """
    root = epath.Path(directory)
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []
    if not steps:
        raise CheckpointError(f"no checkpoints in {root}")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} in {root} (have {steps})")
    item = root / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        meta_tree = checkpointer.metadata(item)
        tree = getattr(getattr(meta_tree, "item_metadata", meta_tree), "tree", None)
        if tree is None:
            raise CheckpointError(f"checkpoint {item} has no readable tree metadata")
        restore_args = jax.tree_util.tree_map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree
        )
        state = checkpointer.restore(item, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"checkpoint at step {step} in {root} is unreadable ({type(e).__name__}); pass "
            "an older step"
        ) from e
    meta_file = root / str(step) / "meta" / "metadata"
    meta = {}
    if meta_file.exists():
        import json

        meta = json.loads(meta_file.read_text())
    return state, meta

"""Orbax checkpoints under WORKDIR/checkpoints: async saves, retention, safe restore.

Each step directory holds two items: `state` (the TrainState, sharded arrays, restorable onto
any mesh by passing target shardings) and `meta` (JSON: the config, the data position, the
teacher's provenance, kdjax version). The teacher's weights are never saved.

What a run does with the checkpoints it finds (`Checkpointer.restore`):

* none                                -> start fresh;
* the newest is unreadable            -> fall back to the newest readable one, loudly;
* none can be read                    -> stop (`CheckpointError`) and delete nothing: a
  transient storage fault must not throw a run away; `train.restart=True` starts over on
  purpose (the old checkpoints are moved aside, see `set_aside`);
* readable but not this run's shapes  -> stop (`CheckpointMismatchError`), naming the first
  differing keys and shapes (a changed model, objective or optimizer, not corruption).

A save that fails (unwritable directory, full disk) stops the run with one `CheckpointError`
at the step it was due, or - for a failure inside Orbax's background write - at the first step
after it (`Checkpointer.check`, polled every step, costs no device sync). Orbax writes into a
temporary directory and renames it when complete, so a failed save leaves no step that looks
good.

Non-finite values never reach a checkpoint: `save` refuses a state with NaN/inf in any float
leaf (params, optimizer moments) with `NonFiniteError`, and `restore` treats a checkpoint
holding them (written by an older kdjax) like an unreadable one. `last_finite` is the newest
step this process saved or restored and checked finite: the one an error can point to.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from kdjax.errors import CheckpointError, NonFiniteError
from kdjax.paths import absolute

log = logging.getLogger(__name__)

_RESTART_HINT = ("to start over on purpose pass --config.train.restart=True (the old "
                 "checkpoints are moved aside, nothing is deleted) or use another --workdir")


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose arrays do not fit the run's state (changed config)."""


def _manager(directory: epath.Path, options: ocp.CheckpointManagerOptions,
             pytree_handler: bool = False) -> ocp.CheckpointManager:
    # Registering the items' handlers up front lets `metadata(step)` describe a checkpoint
    # that this process has not saved or restored yet (the fit check on resume).
    state = ocp.PyTreeCheckpointHandler() if pytree_handler else ocp.StandardCheckpointHandler()
    return ocp.CheckpointManager(
        directory, item_names=("state", "meta"),
        item_handlers={"state": state, "meta": ocp.JsonCheckpointHandler()}, options=options,
    )


def _key(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))))
                    for k in path)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_key(path): tuple(getattr(leaf, "shape", np.shape(leaf))) for path, leaf in leaves}


def tree_differences(saved: Any, target: Any, limit: int = 3) -> list[str]:
    """The first `limit` differences between a checkpoint's array tree and the run's target
    (keys only one side has, shapes that differ), as readable strings; [] when they fit."""
    have, want = _shapes(saved), _shapes(target)
    out = []
    for key in sorted(set(have) | set(want)):
        if key not in have:
            out.append(f"{key} {want[key]} is not in the checkpoint")
        elif key not in want:
            out.append(f"{key} {have[key]} is in the checkpoint but not in this run")
        elif have[key] != want[key]:
            out.append(f"{key} has shape {have[key]} in the checkpoint, {want[key]} in this run")
        if len(out) >= limit:
            break
    return out


@jax.jit
def _finite(tree: Any) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def all_finite(tree: Any) -> bool:
    """Whether every float leaf of `tree` (device arrays on any mesh, or host arrays) is
    finite: one jitted reduction, read on every process (the result is replicated)."""
    out = _finite(tree)
    return bool(np.asarray(out.addressable_data(0)))


def _cause(e: BaseException) -> str:
    """A storage failure in a few words: `No space left on device (ENOSPC)` for an OSError or
    for tensorstore's "... [os_error_code='28']" (whose message is a paragraph of temporary
    paths), else the exception's first 300 characters."""
    import errno
    import re

    from kdjax.storage import describe

    if isinstance(e, OSError):
        return describe(e)
    codes = re.findall(r"os_error_code='(\d+)'", str(e))
    if codes:
        code = int(codes[-1])
        return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"
    return f"{type(e).__name__}: {str(e)[:300]}"


def _check_writable(directory: epath.Path) -> None:
    """Fail before any training when the checkpoint directory cannot be written."""
    probe = directory / f".kdjax-write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except Exception as e:
        raise CheckpointError(f"cannot write checkpoints to {directory}: {type(e).__name__}: "
                              f"{e}; fix the permissions or pick another --workdir") from e


def set_aside(workdir: str | epath.Path, names: tuple[str, ...]) -> epath.Path | None:
    """Move `names` (e.g. checkpoints/, metrics.jsonl) of `workdir` into
    WORKDIR/set-aside-<UTC time>/ so that a run can start over without deleting anything.
    Returns that folder, or None when there was nothing to move."""
    root = epath.Path(workdir)
    present = [n for n in names if (root / n).exists()]
    if not present:
        return None
    dest = root / time.strftime("set-aside-%Y%m%d-%H%M%S", time.gmtime())
    dest.mkdir(parents=True, exist_ok=True)
    for name in present:
        (root / name).rename(dest / name)
    log.warning("train.restart: moved %s of %s to %s; starting over", ", ".join(present), root,
                dest)
    return dest


class Checkpointer:
    """A policy layer over `ocp.CheckpointManager` (see the module doc)."""

    def __init__(self, directory: str | epath.Path, keep: int = 3, keep_period: int | None = None,
                 async_save: bool = True):
        # Orbax refuses relative paths (in its background thread, once training is underway).
        self.directory = epath.Path(absolute(directory))
        if jax.process_index() == 0:
            _check_writable(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep and keep > 0 else None,
            keep_period=keep_period or None,
            enable_async_checkpointing=async_save,
            create=True,
            # The step directory is made in the calling thread, so an unwritable directory
            # fails the save at its step instead of leaving Orbax's writer threads waiting on
            # it for minutes.
            async_options=ocp.options.AsyncOptions(create_directories_asynchronously=False),
        )
        self.manager = _manager(self.directory, options)
        self._unreadable: set[int] = set()
        self._pending: int | None = None  # step of an async save not yet known to be good
        self._failed = False
        self.last_finite: int | None = None  # newest step saved or restored, checked finite

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _save_error(self, step: int, e: BaseException) -> CheckpointError:
        self._failed = True
        for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            try:  # a half-written step must not survive as if it were good
                tmp.rmtree() if tmp.is_dir() else tmp.unlink()
            except Exception:  # the cause (e.g. a read-only disk) may forbid this too
                pass
        log.debug("saving step %d failed", step, exc_info=e)
        return CheckpointError(f"saving the checkpoint of step {step} to {self.directory} "
                               f"failed: {_cause(e)}")

    def describe_last_finite(self) -> str:
        """Where the newest checkpoint known to hold finite values is and how to go on from
        it, for an error message."""
        if self.last_finite is None:
            return (f"no checkpoint in {self.directory} holds finite weights yet (none was "
                    "saved before the values went non-finite): run again with a lower "
                    "train.lr")
        return (f"the last checkpoint with finite weights is step {self.last_finite} in "
                f"{self.directory}: run again with a lower train.lr to resume from it")

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
        """Start an (async) save of `state` at `step`; returns False if it already exists.

        Raises `NonFiniteError` (nothing written) when a float leaf of `state` holds NaN/inf,
        `CheckpointError` if this save, or the previous one, failed. A step that `restore`
        found unreadable is replaced (else the corrupt copy would stay the newest checkpoint
        and every later resume would fall back again).
        """
        self.check(block=True)
        if not all_finite(state):
            raise NonFiniteError(
                f"not saving the checkpoint of step {step}: the weights or optimizer state hold "
                f"NaN/inf (the run diverged); {self.describe_last_finite()}")
        if step in self._unreadable:
            log.warning("replacing the unreadable checkpoint at step %d", step)
            self.manager.delete(step)
            self._unreadable.discard(step)
        if step in self.manager.all_steps():
            return False
        try:
            saved = self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)),
                force=True,
            )
        except Exception as e:
            raise self._save_error(step, e) from e
        self._pending = step
        self.last_finite = step
        return saved

    def check(self, block: bool = False) -> None:
        """Raise `CheckpointError` if the last async save failed. Non-blocking unless `block`
        (then it waits for that save); cheap enough to call every step."""
        if self._pending is None or (not block and self.manager.is_saving_in_progress()):
            return
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(step, e) from e

    def restore(self, target: Any) -> tuple[Any, dict[str, Any], int] | None:
        """Restore the newest readable checkpoint into `target` (ShapeDtypeStructs with
        shardings); None when there is none. See the module doc for the failure cases."""
        steps = self.all_steps()
        if not steps:
            return None
        tried: list[str] = []
        for step in reversed(steps):
            try:
                saved = self.manager.metadata(step).item_metadata["state"]
                saved = getattr(saved, "tree", saved)
                if saved is None:
                    raise CheckpointError("no state metadata")
            except Exception as e:
                tried.append(f"step {step} ({type(e).__name__}: {str(e)[:120]})")
                self._unreadable.add(step)
                continue
            diff = tree_differences(saved, target)
            if diff:
                raise CheckpointMismatchError(
                    f"the checkpoint at step {step} in {self.directory} does not fit this "
                    f"run's config: {'; '.join(diff)}. Resume with the config it was saved with "
                    f"({self.directory.parent / 'config.json'}), or {_RESTART_HINT}")
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                            meta=ocp.args.JsonRestore()),
                )
            except Exception as e:
                tried.append(f"step {step} ({type(e).__name__}: {str(e)[:120]})")
                self._unreadable.add(step)
                continue
            if not all_finite(restored.state):  # written before kdjax checked
                tried.append(f"step {step} (holds NaN/inf)")
                self._unreadable.add(step)
                continue
            self.last_finite = step
            if tried:
                log.error("unreadable checkpoint(s) in %s: %s; resuming from step %d",
                          self.directory, "; ".join(tried), step)
            return restored.state, dict(restored.meta or {}), step
        raise CheckpointError(
            f"none of the {len(steps)} checkpoint(s) in {self.directory} can be read (tried "
            f"{'; '.join(tried)}); nothing was deleted - if the storage is back, run "
            f"again to resume; {_RESTART_HINT}")

    def wait(self) -> None:
        """Block until pending saves are written; raises `CheckpointError` if one failed."""
        if self._pending is not None:
            self.check(block=True)
        else:
            self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves (raising if one failed, unless a failure was already raised)."""
        try:
            if not self._failed:
                self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:
                if not self._failed:
                    raise


def read_state_numpy(directory: str | epath.Path, step: int | None = None) -> tuple[Any, dict]:
    """(state tree as numpy, meta) of a checkpoint, without knowing its structure up front.

    Used to load a teacher or a model for export from a workdir on any machine (CPU); reads
    only through Orbax's public metadata and restore API.
    """
    root = epath.Path(absolute(directory))
    if not root.exists():
        raise CheckpointError(f"no checkpoints in {root}")
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    manager = _manager(root, options, pytree_handler=True)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise CheckpointError(f"no checkpoints in {root}")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {root} (have {steps})")
        try:
            tree = manager.metadata(step).item_metadata["state"]
            tree = getattr(tree, "tree", tree)
            if tree is None:
                raise CheckpointError(f"checkpoint at step {step} in {root} has no state")
            restore_args = jax.tree_util.tree_map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(restore_args=restore_args),
                meta=ocp.args.JsonRestore()))
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(
                f"checkpoint at step {step} in {root} is unreadable ({type(e).__name__}); pass "
                "an older step"
            ) from e
    finally:
        manager.close()
    return restored.state, dict(restored.meta or {})

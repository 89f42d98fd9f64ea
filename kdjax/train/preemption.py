"""Stopping a run cleanly on SIGTERM (TPU preemption, `kill`) or Ctrl-C.

One process: Python handlers note the request; the run finishes its step, saves a checkpoint
and stops. A second Ctrl-C stops at once.

Several processes (`jax.distributed`): they must stop at one common step - a process that
stops alone leaves the others waiting in the next step's collectives and its checkpoint save
waits for them. JAX's preemption service (started by `jax.distributed.initialize`) already
solves this: it catches SIGTERM on any host, tells the others through the coordination
service, and picks a step every host will still reach; `multihost_utils.
reached_preemption_sync_point(step)`, called at every step on every host, says when. kdjax
leaves SIGTERM to it there (a Python handler would replace JAX's).

The command then exits with `exit_status(signal)` (143 after SIGTERM, 130 after Ctrl-C), not
0: a scheduler sees that the run stopped before its end and should run it again.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jax

log = logging.getLogger(__name__)


class Preemption:
    """`should_stop(step)` after every step (on every process); see the module doc."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the signal that asked to stop (SIGTERM if unknown)
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.requested = True
        self.signum = signum
        log.warning("signal %d: saving a checkpoint after the current step", signum)

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop after `step` (the same answer on every process)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            stop = bool(multihost_utils.reached_preemption_sync_point(step))
            if stop and self.signum is None:
                self.signum = int(signal.SIGTERM)  # JAX's preemption service caught it
            return stop
        return self.requested

    @contextmanager
    def installed(self) -> Iterator[Preemption]:
        signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else ()
        try:
            for sig in signals:
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no handlers
            pass
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)
            self._old.clear()


def exit_status(signum: int | None) -> int:
    """The exit status of a run stopped (and checkpointed) on `signum`: 128 + the signal, as
    a shell reports a process the signal killed - 143 for SIGTERM (preemption), 130 for
    Ctrl-C - so a scheduler tells it from a finished run (0) and retries it; the retry
    resumes from the checkpoint."""
    return 128 + int(signum if signum is not None else signal.SIGTERM)

"""Metric sinks: WORKDIR/metrics.jsonl (one JSON object a line) and TensorBoard."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from etils import epath

from kdjax.storage import atomic_write_text


def _plain(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if math.isnan(f) or math.isinf(f):
        return str(f)  # keep the line valid JSON
    return int(f) if isinstance(v, int) else f


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def summary_writer_class() -> Any:
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX imports torch when it is installed, only to recognise torch tensors (kdjax
    logs Python floats): 2 s before a run's first step. torch is hidden while tensorboardX
    imports and visible again afterwards.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` -> ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Writes on process 0 only; other processes get a no-op writer.

    `start_step`: the step the run starts (or resumes) from. Rows of an earlier attempt past
    it are dropped first, so that after a resume every step appears once.
    """

    def __init__(self, workdir: str | epath.Path, enabled: bool = True, tensorboard: bool = True,
                 start_step: int | None = None):
        self.enabled = enabled
        self.path = epath.Path(workdir) / "metrics.jsonl"
        # GCS objects cannot be appended to (gcsfs silently turns mode "a" into "w"): remote
        # files are rewritten whole, keeping the lines of an earlier (resumed) run
        self._remote = "://" in str(self.path)
        self._lines: list[str] = []
        if enabled and self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)
            if start_step is not None:
                kept = [ln for ln in lines if (s := _step_of(ln)) is not None and s <= start_step]
                if len(kept) != len(lines):  # all at once: a full disk keeps the old file
                    atomic_write_text(self.path, "".join(kept))
                lines = kept
            if self._remote:
                self._lines = lines
        self._tb = None
        if enabled and tensorboard:
            try:
                self._tb = summary_writer_class()(str(epath.Path(workdir) / "tensorboard"))
            except Exception:  # TensorBoard is a convenience; never fail a run over it
                self._tb = None

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        if self._remote:
            self._lines.append(line)
            self.path.write_text("".join(self._lines))
        else:
            with self.path.open("a") as f:
                f.write(line)
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()

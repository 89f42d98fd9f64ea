"""Metric sinks: WORKDIR/metrics.jsonl (one JSON object a line) and TensorBoard."""

from __future__ import annotations

import json
import math
from typing import Any

from etils import epath


def _plain(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if math.isnan(f) or math.isinf(f):
        return str(f)  # keep the line valid JSON
    return int(f) if isinstance(v, int) else f


class MetricsWriter:
    """Writes on process 0 only; other processes get a no-op writer."""

    def __init__(self, workdir: str | epath.Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))
            except Exception:  # TensorBoard is a convenience; never fail a run over it
                self._tb = None

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()

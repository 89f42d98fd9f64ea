"""What the benchmarks' drivers share: each measurement runs in a fresh worker interpreter (its
own peak RSS, no state carried between frameworks), started by `spawn` and read back from one
`RESULT {json}` line; and the machine facts every recorded run names.

No jax / torch / kdjax imports here: a worker that only runs ONNX Runtime must not load them.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


class Interrupted(Exception):
    """Ctrl-C reached the driver (and, through the process group, the worker)."""


_CHILD: subprocess.Popen | None = None


def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def minor_faults() -> int:
    """Minor page faults of this process so far (a fresh page's first touch counts one)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def cpu_model() -> str:
    """`lscpu`'s model name (falls back to /proc/cpuinfo)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def spawn(script: str | Path, job: dict[str, Any], timeout: float,
          env_extra: dict[str, str] | None = None, cwd: str | Path | None = None
          ) -> dict[str, Any]:
    """Run `python SCRIPT --worker JOB_JSON` and return its `RESULT` line's object, or
    {"error": ...} (timeout, crash). The worker's stderr (progress bars) passes through.

    Same session and process group as the driver: Ctrl-C reaches the worker too, and the worker
    shares the driver's scheduler autogroup (a new session gets its own autogroup, which on a
    shared Linux box with sched_autogroup_enabled=1 slowed a 2-thread PyTorch worker 10x).
    """
    global _CHILD
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TF_CPP_MIN_LOG_LEVEL": "2",
           "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(job)]
    _CHILD = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        out, _ = _CHILD.communicate(timeout=timeout)
    except KeyboardInterrupt:
        stop_child()
        raise Interrupted from None
    except subprocess.TimeoutExpired:
        stop_child()
        return {"error": f"timed out after {timeout:.0f}s"}
    finally:
        rc = _CHILD.returncode
        _CHILD = None
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": f"worker exited with {rc}"}


def stop_child() -> None:
    """Stop the running worker by its pid: SIGINT (it may already have one from the terminal),
    then SIGKILL after 10 s."""
    child = _CHILD
    if child is None or child.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()

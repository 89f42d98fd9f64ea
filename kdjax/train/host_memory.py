"""Host-memory advice for XLA:CPU: the per-step temp buffer.

XLA:CPU allocates one fresh buffer for an executable's temporaries on every execution (about
1 GB for the kd_small distillation step at batch 16) and frees it afterwards. `import kdjax`
normally keeps that buffer in the process's heap (`kdjax.host_heap`: 0 page faults per step
after the first). Where it could not (JAX's backend started before kdjax was imported, or
`KDJAX_HOST_HEAP=off`), glibc maps the buffer from the OS every step, and with the kernel's
transparent huge pages (THP) in "madvise" or "never" mode it is faulted in 4 KiB at a time:
265k page faults and ~0.3-0.7 s per step on a 2-core EPYC (docs/performance.md, "CPU: the
per-step buffer"). kdjax then says so once, at compile time, with the two ways out.

The same buffer is why the trainer waits for each CPU step before dispatching the next when the
temporaries are large (`sync_each_step`): dispatched early, the next step's execution can
allocate its temporaries while the running one still holds its own, so the heap grows again
after warm-up (new page faults) and the process peaks higher.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kdjax import host_heap

log = logging.getLogger(__name__)

THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# Below this the faults cost too little to mention, and the next step's early dispatch (which
# hides the host's per-step work) is worth more than keeping one step's temporaries at a time.
ADVICE_MIN_TEMP_BYTES = 256 * 2**20
_advised = False


def thp_mode(path: Path = THP_ENABLED) -> str:
    """The active THP mode ("always", "madvise" or "never"), "" where the file is missing."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    if "[" not in text or "]" not in text:
        return ""
    return text[text.index("[") + 1:text.index("]")]


def huge_page_advice(temp_bytes: int, backend: str, mode: str,
                     heap: str = "not applied") -> str | None:
    """The advice line for a step with `temp_bytes` of XLA temporaries, or None when moot.

    `heap`: `kdjax.host_heap.status()`; when "on" the buffer stays in the heap and nothing needs
    saying. Only XLA:CPU allocates its temporaries per execution; GPU/TPU allocators keep theirs.
    """
    if backend != "cpu" or heap == "on" or mode not in ("madvise", "never") \
            or temp_bytes < ADVICE_MIN_TEMP_BYTES:
        return None
    return (
        f"XLA:CPU allocates {temp_bytes / 2**20:.0f} MB of temporaries for every step and the "
        f"host heap is not retained ({heap}), so with transparent huge pages '{mode}' each step "
        f"faults them in 4 KiB pages: set KDJAX_HOST_HEAP=on and import kdjax before the first "
        f"JAX computation (the kdjax CLI does), or `echo always | sudo tee {THP_ENABLED}`; "
        f"either made the kd_small step ~15-25% faster (docs/performance.md)"
    )


def temp_bytes(compiled: Any) -> int | None:
    """XLA's temporaries of a compiled executable in bytes (None where PjRt does not say)."""
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - memory analysis is optional in PjRt
        return None


def sync_each_step(compiled: Any, backend: str) -> bool:
    """Whether to wait for each execution of `compiled` before dispatching the next.

    True on XLA:CPU when its temporaries reach `ADVICE_MIN_TEMP_BYTES`: kd_small at batch 32
    (1.9 GB of temporaries) ran 749 / 748 tok/s synced vs 685 / 696 dispatched ahead, with no
    page faults after warm-up and 3.0 vs 6.6 GB peak RSS (docs/performance.md). GPU/TPU keep
    their allocators' memory and overlap the host's work with the device's: never.
    """
    if backend != "cpu":
        return False
    temp = temp_bytes(compiled)
    return temp is not None and temp >= ADVICE_MIN_TEMP_BYTES


def advise_on_compiled(compiled: Any, backend: str) -> str | None:
    """Log `huge_page_advice` for a compiled step, once per process; returns the line."""
    global _advised
    if _advised or backend != "cpu":
        return None
    temp = temp_bytes(compiled)
    if temp is None:
        return None
    advice = huge_page_advice(temp, backend, thp_mode(), host_heap.status())
    if advice:
        _advised = True
        log.info(advice)
    return advice

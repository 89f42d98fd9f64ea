"""Host-memory advice for XLA:CPU: transparent huge pages for the per-step temp buffer.

XLA:CPU maps one fresh buffer for an executable's temporaries on every execution (about 1 GB for
the kd_small distillation step at batch 16) and unmaps it afterwards. With the kernel's
transparent huge pages (THP) in "madvise" or "never" mode that buffer is faulted in 4 KiB at a
time: 265k page faults and ~0.7 s of system time per step on a 2-core EPYC, against ~850 faults
and 0.16 s with THP "always" (docs/performance.md, "CPU: huge pages"). kdjax cannot madvise a
mapping XLA owns, so it tells the user once, at compile time, when the setting would help.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# Below this the faults cost too little to mention.
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


def huge_page_advice(temp_bytes: int, backend: str, mode: str) -> str | None:
    """The advice line for a step with `temp_bytes` of XLA temporaries, or None when moot.

    Only XLA:CPU maps its temporaries per execution from the OS; GPU/TPU allocators keep theirs.
    """
    if backend != "cpu" or mode not in ("madvise", "never") or temp_bytes < ADVICE_MIN_TEMP_BYTES:
        return None
    return (
        f"XLA:CPU maps {temp_bytes / 2**20:.0f} MB of temporaries for every step and "
        f"transparent huge pages are '{mode}', so each step faults them in 4 KiB pages; "
        f"`echo always | sudo tee {THP_ENABLED}` made the kd_small step ~10-20% faster "
        f"(docs/performance.md)"
    )


def advise_on_compiled(compiled: Any, backend: str) -> str | None:
    """Log `huge_page_advice` for a compiled step, once per process; returns the line."""
    global _advised
    if _advised or backend != "cpu":
        return None
    try:
        temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - memory analysis is optional in PjRt
        return None
    advice = huge_page_advice(temp, backend, thp_mode())
    if advice:
        _advised = True
        log.info(advice)
    return advice

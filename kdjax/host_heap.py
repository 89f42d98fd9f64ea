"""Keep XLA:CPU's per-step buffers in memory the process already owns (glibc malloc settings).

XLA:CPU allocates an executable's temporaries afresh on every execution (about 1 GB for the
kd_small distillation step at batch 16) and frees them afterwards. glibc serves an allocation
that large with `mmap` (and, from XLA's worker threads, from per-thread arenas that fall back to
`mmap` above 64 MB), and returns it to the kernel on `free`, so every step faults the whole
buffer in again, 4 KiB at a time unless transparent huge pages are "always": 265k page faults
and ~0.3-0.7 s of a 2.4 s step on a 2-core EPYC. PyTorch's allocator keeps its memory, so eager
PyTorch never pays this.

`retain_host_heap()` sets three malloc parameters with `mallopt` so that those buffers come from
the main heap and stay there between steps: one arena (`M_ARENA_MAX=1`, so XLA's threads use the
main heap), no `mmap` for large blocks (`M_MMAP_MAX=0`), and no trimming of the heap's free top
(`M_TRIM_THRESHOLD=-1`). After the first step the page faults per step are 0 (measured in
docs/performance.md). The price: the process keeps its peak heap instead of returning it, as
PyTorch's caching allocator does. (Trimming once after compiling, `malloc_trim(0)`, was
measured and made it worse: the freed pages faulted back in, 5.0 GB peak RSS against 3.2 GB
at batch 32.)

`import kdjax` applies it before JAX starts its threads, when JAX will run on the CPU only
(`kdjax.host_platform.cpu_only_jax`: `JAX_PLATFORMS=cpu`, which `kdjax.host_platform` sets when
no accelerator is attached, or no GPU/TPU plugin installed); `KDJAX_HOST_HEAP=off` disables it and
`KDJAX_HOST_HEAP=on` forces it. The arena limit holds only for threads that have not allocated
yet, so it must run before the first JAX computation; `status()` says whether it did.
No JAX import here: this module runs before JAX is imported.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import sys

from kdjax.host_platform import backend_started, cpu_only_jax

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# -1: never trim the heap's top on free (mallopt(3)). A finite threshold is an int (< 2 GiB), and
# the kd_small step's temporaries at batch 32 pass that: every step then trimmed and faulted
# them again (609 tok/s against 1,100 at batch 16).
TRIM_THRESHOLD = -1
ENV = "KDJAX_HOST_HEAP"

_status = "not applied"


def status() -> str:
    """What `retain_host_heap` did in this process: "on", "on (late: ...)" or why not."""
    return _status


def _native_threads() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            match = re.search(r"^Threads:\s+(\d+)", f.read(), re.M)
        return int(match.group(1)) if match else 0
    except OSError:
        return 0


def retain_host_heap(environ: dict[str, str] | None = None) -> str:
    """Apply the malloc settings above when they apply; returns `status()`.

    `KDJAX_HOST_HEAP`: "auto" (default: CPU-only JAX), "on" (always) or "off" (never).
    Does nothing off Linux/glibc. Safe to call more than once.
    """
    global _status
    env = os.environ if environ is None else environ
    setting = env.get(ENV, "auto").strip().lower()
    if setting not in ("auto", "on", "off"):
        _status = f"not applied ({ENV}={setting!r} is not auto, on or off)"
        return _status
    if setting == "off":
        _status = f"not applied ({ENV}=off)"
        return _status
    if setting == "auto" and not cpu_only_jax(env):
        _status = ("not applied (JAX may use an accelerator here; KDJAX_HOST_HEAP=on forces "
                   "it)")
        return _status
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        _status = "not applied (needs Linux with glibc)"
        return _status
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _status = "not applied (libc.so.6 has no mallopt)"
        return _status
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    if not ok:
        _status = "not applied (mallopt refused a setting)"
        return _status
    threads = _native_threads()
    # Threads that already allocated keep their arena; XLA's pool starts with the backend.
    _status = "on" if not backend_started() else (
        "on (late: JAX's CPU backend was already running; import kdjax before the first JAX "
        f"computation for the full effect; {threads} threads)")
    return _status

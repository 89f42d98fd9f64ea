"""Compile CPU programs with LLVM's -O2 pipeline instead of XLA's default -O3.

XLA:CPU generates an LLVM kernel for every fusion of a program and runs LLVM's optimisation
pipeline on each. At XLA's default (`xla_backend_optimization_level=3`) that pipeline fully
unrolls the small loops of small shapes, which is most of the compile time of a small model's
step: the debug_distill step compiles in 6.4-8.2 s at level 2 against 9.8-11.9 s at level 3
(947 fusions), while the kd_small step (3,517 fusions, 12 x 384 teacher) compiles in the same
14-17 s at either level and runs at the same speed (batch 16: 620-714 tok/s against 657-681 in
alternating runs; docs/performance.md). The step's heavy work is in the dot and convolution
libraries XLA calls (YNNPACK / Eigen), which the level does not touch; levels 1 and 0 are
slower to run (522 and 550 tok/s).

`import kdjax` calls `prefer_quick_cpu_compile()` before JAX is imported: when JAX will run on the
CPU only (`kdjax.host_platform.cpu_only_jax`: `JAX_PLATFORMS=cpu`, which `kdjax.host_platform` sets
when no accelerator is attached, or no accelerator plugin installed) and `XLA_FLAGS` does not
already set the level, it appends `--xla_backend_optimization_level=2` to `XLA_FLAGS`. Set the
level yourself in `XLA_FLAGS` (e.g. `--xla_backend_optimization_level=3`) to keep XLA's choice;
`KDJAX_CPU_OPT_LEVEL=off` leaves `XLA_FLAGS` untouched. TPU topology compiles (`kdjax compile`)
produce the same program either way (checked: the same bytes, FLOPs and code size for
debug_distill on v5e:2x2). No JAX import here: XLA reads `XLA_FLAGS` once, when its first
backend starts, so this must run before the first JAX computation.
"""

from __future__ import annotations

import os
import re

from kdjax.host_platform import backend_started, cpu_only_jax

FLAG = "--xla_backend_optimization_level"
LEVEL = 2
ENV = "KDJAX_CPU_OPT_LEVEL"

_status = "not checked"


def status() -> str:
    """What `prefer_quick_cpu_compile` did in this process: the level in effect and who set
    it, or why it was left alone."""
    return _status


def prefer_quick_cpu_compile(environ: dict[str, str] | None = None) -> str:
    """Append `--xla_backend_optimization_level=2` to `XLA_FLAGS` in `environ` (default
    os.environ) for a CPU-only JAX that has not started yet; returns `status()`.

    `KDJAX_CPU_OPT_LEVEL`: "auto" (default), "off" (never touch `XLA_FLAGS`), or a level 0-3 to
    use instead of 2 (still only for a CPU-only JAX).
    """
    global _status
    env = os.environ if environ is None else environ
    setting = env.get(ENV, "auto").strip().lower()
    if setting not in ("auto", "off", "0", "1", "2", "3"):
        _status = f"not applied ({ENV}={setting!r} is not auto, off or a level 0-3)"
        return _status
    if setting == "off":
        _status = f"not applied ({ENV}=off)"
        return _status
    flags = env.get("XLA_FLAGS", "")
    if FLAG in flags:
        # the user's choice, or a kdjax parent process's (its environment is inherited)
        found = re.findall(rf"{FLAG}=(\S+)", flags)
        _status = f"{FLAG}={found[-1] if found else '?'} (already in XLA_FLAGS)"
        return _status
    if environ is None and backend_started():
        _status = "not applied (JAX's backend started before kdjax was imported)"
        return _status
    if not cpu_only_jax(env):
        _status = "not applied (JAX may use an accelerator here)"
        return _status
    level = LEVEL if setting == "auto" else int(setting)
    env["XLA_FLAGS"] = f"{flags} {FLAG}={level}".strip()
    _status = f"{FLAG}={level} (set by kdjax)"
    return _status

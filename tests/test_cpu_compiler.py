"""kdjax.cpu_compiler: LLVM -O2 for a CPU-only JAX, through XLA_FLAGS, unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kdjax import cpu_compiler as cc

FLAG = "--xla_backend_optimization_level"


def test_cpu_only_jax_gets_level_2_after_the_users_flags() -> None:
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert cc.prefer_quick_cpu_compile(env) == f"{FLAG}=2 (set by kdjax)"
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}=2"
    env = {"JAX_PLATFORMS": "cpu"}
    cc.prefer_quick_cpu_compile(env)
    assert env["XLA_FLAGS"] == f"{FLAG}=2"


@pytest.mark.parametrize("env,why", [
    ({"JAX_PLATFORMS": "cpu", "KDJAX_CPU_OPT_LEVEL": "off"}, "=off"),
    ({"JAX_PLATFORMS": "cuda,cpu"}, "accelerator"),
    ({"JAX_PLATFORMS": "tpu"}, "accelerator"),
    ({"JAX_PLATFORMS": "cpu", "KDJAX_CPU_OPT_LEVEL": "fast"}, "is not auto, off or a level"),
])
def test_left_alone(env: dict[str, str], why: str) -> None:
    before = env.get("XLA_FLAGS")
    status = cc.prefer_quick_cpu_compile(env)
    assert status.startswith("not applied") and why in status, status
    assert env.get("XLA_FLAGS") == before


def test_a_level_already_in_xla_flags_is_kept_and_reported() -> None:
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_cpu_enable_fast_math=false {FLAG}=3"}
    assert cc.prefer_quick_cpu_compile(env) == f"{FLAG}=3 (already in XLA_FLAGS)"
    assert env["XLA_FLAGS"] == f"--xla_cpu_enable_fast_math=false {FLAG}=3"


def test_an_explicit_level() -> None:
    env = {"JAX_PLATFORMS": "cpu", "KDJAX_CPU_OPT_LEVEL": "3"}
    cc.prefer_quick_cpu_compile(env)
    assert env["XLA_FLAGS"] == f"{FLAG}=3"


def test_import_kdjax_sets_it_before_xla_reads_the_flags() -> None:
    """A fresh CPU process: `import kdjax` puts the flag in XLA_FLAGS and XLA accepts it (XLA
    aborts the process on a flag it does not know, so a misspelt flag fails here)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "KDJAX_CPU_OPT_LEVEL")}
    env["JAX_PLATFORMS"] = "cpu"
    code = ("import os, kdjax, jax, jax.numpy as jnp\n"
            "from kdjax import cpu_compiler\n"
            "assert float(jax.jit(lambda x: (x * x).sum())(jnp.arange(4.0))) == 14.0\n"
            "print(cpu_compiler.status()); print(os.environ['XLA_FLAGS'])\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    status, flags = out.stdout.strip().splitlines()[-2:]
    assert status == f"{FLAG}=2 (set by kdjax)" and flags == f"{FLAG}=2"

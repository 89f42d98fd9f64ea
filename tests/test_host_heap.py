"""kdjax.host_heap: XLA:CPU's per-step buffers stay in the process heap (no page faults)."""

import json
import os
import subprocess
import sys

import pytest

from kdjax import host_heap
from kdjax.train.host_memory import thp_mode

# A jitted gradient with ~150 MB of XLA temporaries, run 6 times: minor page faults per call.
PROBE = r"""
import json, resource, sys
import kdjax, kdjax.host_heap as hh
import jax, jax.numpy as jnp

def f(x, w):
    hs, h = [], x
    for _ in range(8):
        h = jnp.tanh(h @ w)
        hs.append(h)
    return sum(jnp.sum(t * t) for t in hs)

x, w = jnp.ones((4096, 1024)), jnp.full((1024, 1024), 1e-3)
step = jax.jit(jax.grad(f, argnums=1)).lower(x, w).compile()
temp = step.memory_analysis().temp_size_in_bytes
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"status": hh.status(), "temp_pages": temp // 4096, "faults": faults}))
"""


def _probe(setting: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "KDJAX_HOST_HEAP": setting}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_auto_reads_host_platforms_plugin_inventory(monkeypatch):
    """One list of accelerator plugins: host_platform's scan decides for the heap too."""
    from kdjax import host_platform

    monkeypatch.setattr(host_platform, "installed_plugins", lambda: ["jax_cuda12_plugin"])
    line = host_heap.retain_host_heap({"KDJAX_HOST_HEAP": "auto"})
    assert line.startswith("not applied (JAX may use an accelerator")


def test_settings_off_and_invalid_apply_nothing():
    assert host_heap.retain_host_heap({"KDJAX_HOST_HEAP": "off"}) == \
        "not applied (KDJAX_HOST_HEAP=off)"
    line = host_heap.retain_host_heap({"KDJAX_HOST_HEAP": "yes"})
    assert "KDJAX_HOST_HEAP='yes'" in line and "auto, on or off" in line
    line = host_heap.retain_host_heap({"KDJAX_HOST_HEAP": "auto", "JAX_PLATFORMS": "tpu"})
    assert line.startswith("not applied (JAX may use an accelerator")


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc settings")
def test_retained_heap_stops_per_step_page_faults():
    on = _probe("on")
    assert on["status"] == "on"
    assert on["temp_pages"] > 30_000
    # After the first call the temporaries come from memory the heap already holds.
    # One probe process in about eight faulted on every call although the settings applied
    # (2026-12-01, CI on a 2-core VM; cause not found): a second process must then hold.
    if min(on["faults"][1:]) >= 0.05 * on["temp_pages"]:
        first, on = on, _probe("on")
        assert min(on["faults"][1:]) < 0.05 * on["temp_pages"], (first, on)
    if thp_mode() != "always":  # with THP "always" the OS path faults little either way
        off = _probe("off")
        assert off["status"].startswith("not applied")
        assert min(off["faults"][1:]) > 0.5 * off["temp_pages"], off

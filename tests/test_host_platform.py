"""kdjax.host_platform: JAX runs on the CPU when a plugin is installed but nothing is attached."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdjax import host_platform as hp


def _touch(root: Path, path: str, text: str = "") -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


@pytest.mark.parametrize("name,kind", [
    ("libtpu", "tpu"), ("xla_cuda12", "cuda"), ("jax_cuda13_plugin", "cuda"),
    ("xla_rocm60", "rocm"), ("metal_plugin", None),
])
def test_plugin_kind(name: str, kind: str | None) -> None:
    assert hp.plugin_kind(name) == kind


def test_libtpu_without_a_tpu_runs_on_cpu(tmp_path: Path) -> None:
    _touch(tmp_path, "/sys/bus/pci/devices/0000:00:04.0/vendor", "0x1af4\n")  # virtio, not Google
    assert hp.decide({}, ["libtpu"], "linux", str(tmp_path)) == "cpu"
    assert hp.decide({}, ["xla_cuda12"], "linux", str(tmp_path)) == "cpu"


@pytest.mark.parametrize("device", ["/dev/accel0", "/dev/vfio/0"])
def test_an_attached_tpu_is_left_to_jax(tmp_path: Path, device: str) -> None:
    _touch(tmp_path, device)
    assert hp.decide({}, ["libtpu"], "linux", str(tmp_path)) is None


def test_a_tpu_on_the_pci_bus_counts_but_a_google_nic_does_not(tmp_path: Path) -> None:
    _touch(tmp_path, "/sys/bus/pci/devices/0000:00:04.0/vendor", "0x1ae0\n")  # gVNIC
    _touch(tmp_path, "/sys/bus/pci/devices/0000:00:04.0/device", "0x0042\n")
    assert hp.decide({}, ["libtpu"], "linux", str(tmp_path)) == "cpu"
    _touch(tmp_path, "/sys/bus/pci/devices/0000:00:05.0/vendor", "0x1ae0\n")  # a v5e chip
    _touch(tmp_path, "/sys/bus/pci/devices/0000:00:05.0/device", "0x0063\n")
    assert hp.decide({}, ["libtpu"], "linux", str(tmp_path)) is None


def test_an_attached_gpu_is_left_to_jax(tmp_path: Path) -> None:
    _touch(tmp_path, "/dev/nvidia0")
    assert hp.decide({}, ["xla_cuda12"], "linux", str(tmp_path)) is None
    # a GPU does not make libtpu useful, but with both installed JAX must still see the GPU
    assert hp.decide({}, ["libtpu", "xla_cuda12"], "linux", str(tmp_path)) is None
    _touch(tmp_path, "/dev/kfd")
    assert hp.decide({}, ["xla_rocm60"], "linux", str(tmp_path)) is None


def test_the_users_choice_and_unknown_plugins_are_respected(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert hp.decide({"JAX_PLATFORMS": "tpu"}, ["libtpu"], "linux", root) is None
    assert hp.decide({"JAX_FORCE_TPU_INIT": "1"}, ["libtpu"], "linux", root) is None
    assert hp.decide({}, ["libtpu", "metal_plugin"], "linux", root) is None
    assert hp.decide({}, ["libtpu"], "darwin", root) is None
    assert hp.decide({}, ["libtpu"], "linux", root, jax_started=True) is None
    assert hp.decide({}, [], "linux", root) is None  # CPU-only jaxlib: nothing to do


def test_cpu_only_jax_reads_jax_platforms_then_the_plugins(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    assert hp.cpu_only_jax({"JAX_PLATFORMS": "cpu"})
    assert hp.cpu_only_jax({"JAX_PLATFORMS": " CPU "})
    assert not hp.cpu_only_jax({"JAX_PLATFORMS": "tpu"})
    assert not hp.cpu_only_jax({"JAX_PLATFORMS": "cuda,cpu"})
    for plugins, cpu_only in (([], True), (["libtpu"], False), (["jax_rocm7_plugin"], False)):
        monkeypatch.setattr(hp, "installed_plugins", lambda p=plugins: p)
        assert hp.cpu_only_jax({}) is cpu_only


def test_prefer_cpu_sets_the_variable_only_when_decided(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hp, "installed_plugins", lambda: ["libtpu"])
    monkeypatch.setattr(hp, "attached", lambda kind, root="/": False)
    env: dict[str, str] = {}
    # JAX's platforms are chosen in this test process (conftest), so nothing may change here...
    assert hp.prefer_cpu_without_accelerator(env) == "left to JAX" and env == {}
    # ...and before JAX it sets the CPU platform
    monkeypatch.delitem(sys.modules, "jax")
    assert hp.prefer_cpu_without_accelerator(env).startswith("JAX_PLATFORMS=cpu (libtpu")
    assert env == {"JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize("imports", ["kdjax, jax", "jax, kdjax"])
def test_a_new_process_without_jax_platforms(tmp_path: Path, imports: str) -> None:
    """`import kdjax` in a fresh process with JAX_PLATFORMS unset, before or after `import jax`
    (before any computation): on a host with no accelerator JAX ends on the CPU, with the host
    heap on, XLA:CPU at -O2 and no libtpu probing output."""
    if sys.platform != "linux" or any(hp.attached(k) for k in ("tpu", "cuda", "rocm")):
        pytest.skip("an accelerator is attached, or not Linux (the heap needs glibc)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_PLATFORMS", "XLA_FLAGS", "KDJAX_CPU_OPT_LEVEL")}
    env["KDJAX_HOST_HEAP"] = "auto"
    code = (f"import {imports}; print(jax.devices()[0].platform); "
            "print(kdjax.host_platform.status()); print(kdjax.host_heap.status()); "
            "print(kdjax.cpu_compiler.status())")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    platform, platform_status, heap, compiler = out.stdout.strip().splitlines()
    assert platform == "cpu"
    assert heap == "on"
    assert "level=2 (set by kdjax)" in compiler, compiler
    if hp.installed_plugins():
        assert platform_status.startswith("JAX_PLATFORMS=cpu"), platform_status
        assert "TPU accelerator type" not in out.stderr
        assert "worker hostname" not in out.stderr
    else:
        assert platform_status == "left to JAX"

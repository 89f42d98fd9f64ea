"""Run JAX on the CPU when an accelerator plugin is installed but no accelerator is attached.

A laptop or CI runner with the `tpu` extra (libtpu, for `kdjax compile` and the launch
pre-flight) or a CUDA jaxlib but no such chip: JAX would try the accelerator backend first.
With libtpu that means libtpu's VM-metadata probing, three lines of "could not determine TPU
accelerator type / unexpected worker hostname" on every command, and a CPU backend it picks
only after that; and because an accelerator *may* be in use, kdjax's host heap
(`kdjax.host_heap`) stays off, which costs the CPU step its page faults again.

`prefer_cpu_without_accelerator()` runs at `import kdjax`, before JAX is imported: when
`JAX_PLATFORMS` is unset, every installed plugin is one kdjax recognises (TPU, CUDA, ROCm) and
none of their devices is attached, it sets `JAX_PLATFORMS=cpu`, the backend JAX would have ended
on anyway. It changes nothing when the user set `JAX_PLATFORMS` (or JAX's `jax_platforms`
config) or `JAX_FORCE_TPU_INIT`, when a JAX backend has already started, off Linux, when an
unrecognised plugin is installed (e.g. Apple's Metal), or when any TPU / NVIDIA / AMD device is
visible. `import jax` before `import kdjax` is fine while no computation has run: the choice
then goes into JAX's config as well. TPU topology compiles
(`kdjax compile`) need no TPU backend and keep working. No JAX import here.
"""

from __future__ import annotations

import functools
import glob
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Iterable

_GOOGLE_PCI_VENDOR = "0x1ae0"
# TPU chips' PCI device ids (v3, -, v4, v5p, v5e, v6e, 7x), as jax/_src/hardware_utils.py lists
# them; Google's other PCI devices (gVNIC, NVMe disks on GCE CPU VMs) are not accelerators.
_TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f",
                              "0x0076"})
# device files whose presence means the accelerator of that kind may be usable
_DEVICE_GLOBS = {
    "tpu": ("/dev/accel*", "/dev/vfio/[0-9]*"),
    "cuda": ("/dev/nvidia[0-9]*", "/dev/nvidiactl", "/dev/dxg"),  # dxg: WSL2's GPU
    "rocm": ("/dev/kfd",),
}

_status = "not checked"


def status() -> str:
    """What `prefer_cpu_without_accelerator` did in this process."""
    return _status


@functools.cache  # one scan: this module, host_heap and cpu_compiler all ask at `import kdjax`
def installed_plugins() -> list[str]:
    """Names of the installed JAX accelerator plugins (libtpu, the `jax_plugins` namespace
    packages and entry points), found without importing JAX or any plugin."""
    names = []
    if importlib.util.find_spec("libtpu") is not None:
        names.append("libtpu")
    try:
        import jax_plugins  # a namespace package: importing it runs no plugin code

        names += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
    except ImportError:
        pass
    try:
        names += [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
    except Exception:  # noqa: BLE001 - broken metadata must not stop `import kdjax`
        names.append("<unreadable jax_plugins entry points>")
    return sorted(set(names))


def cpu_only_jax(environ: dict[str, str] | None = None) -> bool:
    """True when JAX will use the CPU backend only: `JAX_PLATFORMS` names only cpu, or it is
    unset and no accelerator plugin is installed (`installed_plugins`)."""
    env = os.environ if environ is None else environ
    platforms = {p.strip().lower() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()}
    if platforms:
        return platforms <= {"cpu"}
    return not installed_plugins()


def plugin_kind(name: str) -> str | None:
    """"tpu", "cuda" or "rocm" for a plugin name, None for one kdjax does not know."""
    lowered = name.lower()
    for kind in ("tpu", "cuda", "rocm"):
        if kind in lowered:
            return kind
    return None


def attached(kind: str, root: str = "/") -> bool:
    """Whether a device of this kind is visible on this host (device files under `root`; for
    TPUs also a TPU chip on the PCI bus, as JAX's own check reads them)."""

    def at(pattern: str) -> str:
        return os.path.join(root, pattern.lstrip("/"))

    if any(glob.glob(at(p)) for p in _DEVICE_GLOBS[kind]):
        return True
    if kind == "tpu":
        for device in glob.glob(at("/sys/bus/pci/devices/*")):
            try:
                with open(os.path.join(device, "vendor"), encoding="ascii") as f:
                    vendor = f.read().strip()
                with open(os.path.join(device, "device"), encoding="ascii") as f:
                    chip = f.read().strip()
            except OSError:
                continue
            if vendor == _GOOGLE_PCI_VENDOR and chip in _TPU_PCI_DEVICES:
                return True
    return False


def decide(environ: dict[str, str], plugins: Iterable[str], platform: str = sys.platform,
           root: str = "/", jax_started: bool = False) -> str | None:
    """The `JAX_PLATFORMS` value to set ("cpu"), or None to leave JAX's choice alone."""
    if environ.get("JAX_PLATFORMS", "").strip() or "JAX_FORCE_TPU_INIT" in environ:
        return None
    if jax_started or platform != "linux":
        return None
    plugins = list(plugins)
    if not plugins:
        return None  # CPU-only JAX: nothing to avoid
    kinds = {plugin_kind(p) for p in plugins}
    if None in kinds:
        return None
    if any(attached(kind, root) for kind in kinds):
        return None
    return "cpu"


def prefer_cpu_without_accelerator(environ: dict[str, str] | None = None) -> str:
    """Set `JAX_PLATFORMS=cpu` in `environ` (default os.environ) when `decide` says so;
    returns `status()`."""
    global _status
    env = os.environ if environ is None else environ
    # `import jax` before `import kdjax` is fine as long as no backend has started: JAX reads
    # JAX_PLATFORMS into its config at import, so the choice then goes into the config too
    jax_module = sys.modules.get("jax")
    jax_started = jax_module is not None and (
        backend_started() or bool(getattr(jax_module.config, "jax_platforms", None)))
    # the plugin scan reads every installed distribution's metadata: skip it when the platforms
    # are chosen (environment or JAX's config) or a backend runs (`decide` leaves those alone)
    chosen = bool(env.get("JAX_PLATFORMS", "").strip()) or jax_started
    plugins = [] if chosen else installed_plugins()
    choice = decide(env, plugins, jax_started=jax_started)
    if choice is None:
        _status = "left to JAX"
    else:
        env["JAX_PLATFORMS"] = choice
        if jax_module is not None and environ is None:
            jax_module.config.update("jax_platforms", choice)
        _status = f"JAX_PLATFORMS={choice} ({', '.join(plugins)} installed, no device attached)"
    return _status


def backend_started() -> bool:
    """Whether JAX has started a backend in this process (without importing JAX)."""
    xb = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(xb, "_backends", None))

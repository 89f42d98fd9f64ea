"""Mesh presets and the Cloud TPU slice table.

A mesh in kdjax is a shape over the axes (data, fsdp, tensor) plus a rules preset
(`kdjax.sharding.RULES`: replicated | fsdp | tensor). Presets name the common choices so a
run on a TPU slice does not need the arithmetic:

| preset | shape (N devices) | rules | use it for |
| --- | --- | --- | --- |
| `data` | (N, 1, 1) | replicated | teacher + student fit on one chip: fastest |
| `fsdp` | (1, N, 1) | fsdp | params + optimizer state too big for one chip |
| `data_fsdp[:F]` | (N/F, F, 1) | fsdp | FSDP in groups of F (default: one host's chips) |
| `data_tensor[:T]` | (N/T, 1, T) | tensor | wide models; T (default 4) divides the heads |
| `fsdp_tensor[:T]` | (1, N/T, T) | tensor | the largest teachers: FSDP x tensor |

KR-ELECTRA-base (109M params, 0.44 GB fp32, frozen: no gradients or optimizer state) and a
small student fit on any TPU chip, so `data` is the default choice; `fsdp` / `data_fsdp` trade
some all-gather traffic for memory when batches or teachers grow.

`RECOMMENDED` is what the compiled steps showed (`kdjax compile`, docs/scale.md, v4-32 with each
mesh): every paper recipe fits a v4, v5e or v6e chip with replicated parameters at 256 x 128
tokens a step. Distillation (kd_small, lf_v3, kominilm) is compute-bound at the same roofline
step under every mesh (1.7-2.0 ms on v4-32), and `data` needs 2-3 collectives a step where
fsdp issues 1,800-4,300 (the windowed einsums' collective-permutes) and data x fsdp ~400: so
`data`. ELECTRA pre-training (110M discriminator + generator, all trained) is HBM-bound under
`data` (7.4 ms: every chip updates all of AdamW's 1.3 GiB of state), and sharding the state
pays: `data_fsdp` (FSDP inside a host, data parallel across hosts) 5.4 ms with 386
collectives, `fsdp` 4.8 ms with 2,800; so `data_fsdp` for pre-training.

`mesh_for("data_tensor:4", 16)` -> `{"shape": (4, 1, 4), "rules": "tensor"}`; a preset that
does not fit the device count raises `ConfigError` naming the sizes that would.

TPU slices. The number in an accelerator type counts TensorCores for v2/v3/v4/v5p (2 per chip)
and chips for v5e (`v5litepod-N`) and v6e. Each TPU VM ("host", one JAX process) drives 4
chips, except single-host v5e/v6e slices of up to 8 chips. Runtime (software) versions are the
ones Google lists for JAX (https://cloud.google.com/tpu/docs/runtimes).

| slice | chips | hosts | runtime version |
| --- | ---: | ---: | --- |
| v4-8 | 4 | 1 | tpu-ubuntu2204-base |
| v4-16 | 8 | 2 | tpu-ubuntu2204-base |
| v4-32 | 16 | 4 | tpu-ubuntu2204-base |
| v4-64 | 32 | 8 | tpu-ubuntu2204-base |
| v4-128 | 64 | 16 | tpu-ubuntu2204-base |
| v5p-8 | 4 | 1 | v2-alpha-tpuv5 |
| v5p-16 | 8 | 2 | v2-alpha-tpuv5 |
| v5p-32 | 16 | 4 | v2-alpha-tpuv5 |
| v5p-64 | 32 | 8 | v2-alpha-tpuv5 |
| v5litepod-1 | 1 | 1 | v2-alpha-tpuv5-lite |
| v5litepod-4 | 4 | 1 | v2-alpha-tpuv5-lite |
| v5litepod-8 | 8 | 1 | v2-alpha-tpuv5-lite |
| v5litepod-16 | 16 | 4 | v2-alpha-tpuv5-lite |
| v5litepod-32 | 32 | 8 | v2-alpha-tpuv5-lite |
| v5litepod-64 | 64 | 16 | v2-alpha-tpuv5-lite |
| v5litepod-256 | 256 | 64 | v2-alpha-tpuv5-lite |
| v6e-1 | 1 | 1 | v2-alpha-tpuv6e |
| v6e-4 | 4 | 1 | v2-alpha-tpuv6e |
| v6e-8 | 8 | 1 | v2-alpha-tpuv6e |
| v6e-16 | 16 | 4 | v2-alpha-tpuv6e |
| v6e-32 | 32 | 8 | v2-alpha-tpuv6e |
| v6e-64 | 64 | 16 | v2-alpha-tpuv6e |
| v6e-256 | 256 | 64 | v2-alpha-tpuv6e |

`v5e-N` is accepted as an alias of `v5litepod-N`. Other sizes of these families are parsed by
the same rule (`slice_info("v4-256")`).

Command line: `python -m kdjax.presets v4-32 data` prints the slice and the `--config.mesh.*`
overrides to pass to `kdjax distill|pretrain` (see launch/README.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from collections.abc import Sequence
from typing import Any

from kdjax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")  # = kdjax.sharding.MESH_AXES (not imported: no jax here)


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    rules: str
    default_arg: str  # "" (no argument), "local" (devices of one host) or a number
    help: str


PRESETS: dict[str, Preset] = {
    "data": Preset("data", "replicated", "", "pure data parallelism, parameters replicated"),
    "fsdp": Preset("fsdp", "fsdp", "", "every parameter sharded over all devices (ZeRO-3)"),
    "data_fsdp": Preset("data_fsdp", "fsdp", "local",
                        "FSDP inside groups of F devices, data parallel across groups"),
    "data_tensor": Preset("data_tensor", "tensor", "4",
                          "tensor parallelism over T devices, data parallel across"),
    "fsdp_tensor": Preset("fsdp_tensor", "tensor", "4",
                          "tensor parallelism over T devices, FSDP across"),
}


RECOMMENDED: dict[str, str] = {"pretrain": "data_fsdp", "distill": "data", "finetune": "data"}


@dataclasses.dataclass(frozen=True)
class SliceInfo:
    """A Cloud TPU accelerator type: how many chips (= JAX devices) and hosts (= processes)."""

    name: str
    family: str
    chips: int
    hosts: int
    runtime_version: str

    @property
    def chips_per_host(self) -> int:
        return self.chips // self.hosts


# family -> (TensorCores per chip counted in the name, chips per host, largest single-host
# slice in chips, runtime version for JAX)
_FAMILIES: dict[str, tuple[int, int, int, str]] = {
    "v2": (2, 4, 4, "tpu-ubuntu2204-base"),
    "v3": (2, 4, 4, "tpu-ubuntu2204-base"),
    "v4": (2, 4, 4, "tpu-ubuntu2204-base"),
    "v5p": (2, 4, 4, "v2-alpha-tpuv5"),
    "v5litepod": (1, 4, 8, "v2-alpha-tpuv5-lite"),
    "v6e": (1, 4, 8, "v2-alpha-tpuv6e"),
}
_ALIASES = {"v5e": "v5litepod"}

SLICES: tuple[str, ...] = (
    "v4-8", "v4-16", "v4-32", "v4-64", "v4-128",
    "v5p-8", "v5p-16", "v5p-32", "v5p-64",
    "v5litepod-1", "v5litepod-4", "v5litepod-8", "v5litepod-16", "v5litepod-32",
    "v5litepod-64", "v5litepod-256",
    "v6e-1", "v6e-4", "v6e-8", "v6e-16", "v6e-32", "v6e-64", "v6e-256",
)


def slice_info(accelerator_type: str) -> SliceInfo:
    """Chips, hosts and runtime version of a TPU accelerator type such as `v4-32`."""
    m = re.fullmatch(r"\s*(v\d+[a-z]*)-(\d+)\s*", str(accelerator_type))
    family = _ALIASES.get(m.group(1), m.group(1)) if m else ""
    if not m or family not in _FAMILIES:
        raise ConfigError(
            f"unknown TPU accelerator type {accelerator_type!r}; expected FAMILY-SIZE with "
            f"FAMILY one of {', '.join([*_FAMILIES, *_ALIASES])} (e.g. v4-32, v5litepod-16, "
            "v6e-8)"
        )
    cores_per_chip, per_host, single_host_max, runtime = _FAMILIES[family]
    size = int(m.group(2))
    if size < 1 or size % cores_per_chip:
        raise ConfigError(f"{accelerator_type!r}: the size of a {family} slice counts "
                          f"TensorCores and must be a multiple of {cores_per_chip}")
    chips = size // cores_per_chip
    if cores_per_chip == 1 and (chips & (chips - 1) or chips > 256):  # v5e / v6e: 2D slices
        raise ConfigError(f"{accelerator_type!r}: {family} slices have 1, 4, 8, 16, ..., 256 "
                          "chips")
    if chips <= single_host_max:
        hosts = 1
    elif chips % per_host:
        raise ConfigError(f"{accelerator_type!r}: {chips} chips do not fill hosts of "
                          f"{per_host} chips")
    else:
        hosts = chips // per_host
    return SliceInfo(f"{family}-{size}", family, chips, hosts, runtime)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def parse_preset(spec: str) -> tuple[Preset, str]:
    """`name[:arg]` -> (preset, arg or "")."""
    name, _, arg = str(spec).strip().partition(":")
    if name not in PRESETS:
        raise ConfigError(f"unknown mesh preset {spec!r}; choose one of "
                          f"{', '.join(PRESETS)} (optionally NAME:SIZE, e.g. data_tensor:4)")
    preset = PRESETS[name]
    if arg and not preset.default_arg:
        raise ConfigError(f"mesh preset {name!r} takes no size (got {spec!r})")
    return preset, arg


def mesh_for(preset: str, num_devices: int, *, local_devices: int | None = None
             ) -> dict[str, Any]:
    """The mesh `shape` (data, fsdp, tensor) and `rules` preset name for `num_devices`.

    `preset` is a name from `PRESETS`, optionally with a size (`data_fsdp:4`,
    `data_tensor:2`). `local_devices` (devices per host) is the default FSDP group of
    `data_fsdp`. Raises `ConfigError` when the preset cannot tile `num_devices` devices.
    """
    p, arg = parse_preset(preset)
    n = int(num_devices)
    if n < 1:
        raise ConfigError(f"mesh preset {preset!r}: num_devices must be >= 1, got {num_devices}")
    if p.name == "data":
        shape = (n, 1, 1)
    elif p.name == "fsdp":
        shape = (1, n, 1)
    else:
        if arg:
            try:
                k = int(arg)
            except ValueError:
                raise ConfigError(f"mesh preset {preset!r}: size {arg!r} is not an integer"
                                  ) from None
        elif p.default_arg == "local":
            k = int(local_devices) if local_devices else n
        else:
            k = min(int(p.default_arg), n)
        what = "fsdp" if p.name == "data_fsdp" else "tensor"
        if k < 1 or n % k:
            raise ConfigError(
                f"mesh preset {preset!r}: {what}={k} does not divide the {n} devices; "
                f"use one of {', '.join(map(str, _divisors(n)))}"
            )
        shape = {"data_fsdp": (n // k, k, 1), "data_tensor": (n // k, 1, k),
                 "fsdp_tensor": (1, n // k, k)}[p.name]
    return {"shape": shape, "rules": p.rules}


def mesh_for_slice(preset: str, accelerator_type: str) -> dict[str, Any]:
    """`mesh_for` with the device count and devices per host of a TPU slice."""
    info = slice_info(accelerator_type)
    return mesh_for(preset, info.chips, local_devices=info.chips_per_host)


def check_mesh(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """The concrete mesh shape (a -1 entry filled in) or a `ConfigError` saying why `shape`
    does not fit `num_devices`. Same rule as `kdjax.sharding.make_mesh`, without jax."""
    dims = [int(s) for s in shape]
    if len(dims) != len(MESH_AXES):
        raise ConfigError(f"mesh.shape {tuple(dims)} must have {len(MESH_AXES)} entries "
                          f"({', '.join(MESH_AXES)})")
    if dims.count(-1) > 1 or any(d == 0 or d < -1 for d in dims):
        raise ConfigError(f"mesh.shape {tuple(dims)}: entries must be >= 1, with at most one -1")
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if num_devices % known:
            raise ConfigError(f"mesh.shape {tuple(dims)} cannot be filled with {num_devices} "
                              f"devices ({num_devices} is not divisible by {known})")
        dims[dims.index(-1)] = num_devices // known
    if math.prod(dims) != num_devices:
        raise ConfigError(
            f"mesh.shape {tuple(dims)} needs {math.prod(dims)} devices but {num_devices} are "
            f"available; use -1 for one axis or a preset (mesh_for('data', {num_devices}))"
        )
    return tuple(dims)


def apply_preset(mesh_cfg: Any, num_devices: int, local_devices: int | None = None) -> Any:
    """Set `shape` and `rules` of a `mesh` config section from its `preset` key (if set)."""
    spec = mesh_cfg.get("preset", "") if hasattr(mesh_cfg, "get") else ""
    if not spec:
        return mesh_cfg
    chosen = mesh_for(spec, num_devices, local_devices=local_devices)
    mesh_cfg.shape = tuple(chosen["shape"])
    mesh_cfg.rules = chosen["rules"]
    return mesh_cfg


def overrides(preset: str, accelerator_type: str) -> list[str]:
    """`--config.mesh.*` flags for `kdjax distill|pretrain` on a slice."""
    chosen = mesh_for_slice(preset, accelerator_type)
    shape = "(" + ",".join(str(s) for s in chosen["shape"]) + ")"
    return [f"--config.mesh.shape={shape}", f"--config.mesh.rules={chosen['rules']}"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or len(argv) > 2:
        print("usage: python -m kdjax.presets ACCELERATOR_TYPE [PRESET]\n"
              "  e.g. python -m kdjax.presets v4-32 fsdp\n"
              f"presets: {', '.join(PRESETS)}; slices: {', '.join(SLICES)}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        info = slice_info(argv[0])
        out: dict[str, Any] = {**dataclasses.asdict(info), "chips_per_host": info.chips_per_host}
        if len(argv) == 2:
            out["mesh"] = mesh_for_slice(argv[1], argv[0])
            out["overrides"] = " ".join(overrides(argv[1], argv[0]))
        else:  # what kdjax compile showed for the paper's runs (docs/scale.md)
            out["recommended"] = {kind: mesh_for_slice(p, argv[0])
                                  for kind, p in RECOMMENDED.items()}
    except ConfigError as e:
        print(f"kdjax: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

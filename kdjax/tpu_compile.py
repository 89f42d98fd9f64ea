"""`kdjax compile`: a run's jitted step compiled for a Cloud TPU slice, on any host.

With libtpu installed (`pip install -e ".[tpu]"`, or `libtpu` alone), XLA compiles for a TPU
topology that is not attached: `jax.experimental.topologies.get_topology_desc` describes the
slice's devices, the mesh is laid over them, and the step that `kdjax pretrain | distill |
finetune` would run is lowered from abstract inputs and compiled. Nothing is loaded - no
weights, no data, no teacher checkpoint: the shapes come from the config (the teacher's from
`teacher.model`, the vocabulary from the model config, the batch from `train.batch_size` x
`data.max_length`).

The step is the trainer's own (`kdjax.train.trainer.build_program`: the same state and frozen
teacher shardings, batch sharding, donation, gradient accumulation and dtypes); only its
devices differ. The compiled executable then says, per device:

  memory     `memory_analysis()`: arguments (params / optimizer / teacher / batch, from their
             shard shapes and the TPU layouts of the entry computation), outputs, temporaries,
             code; total = arguments + outputs - aliased (the donated state) + temporaries
             + code, against the chip's HBM (`CHIPS`)
  FLOPs      `cost_analysis()["flops"]` (per device) beside kdjax's analytic model
             (`kdjax.flops`, per step)
  collectives  every all-reduce / all-gather / reduce-scatter / all-to-all / collective-permute
             of the optimized HLO (`compiled.as_text()`), counted per step (ops inside a
             gradient-accumulation loop count once per micro-batch) with their bytes
  roofline   compute at the chip's bf16 peak, HBM traffic at its bandwidth, collectives' wire
             bytes at its ICI bandwidth: the step can be no faster than the largest of the
             three, which bounds tokens/s and MFU from above. HBM traffic is kdjax's count of
             the optimized HLO (`hlo_costs`): operands and results in HBM only. XLA's
             `bytes accessed` (reported beside it) also counts the operands XLA placed in the
             on-chip VMEM (memory space S(1)), 6x the HBM count for kd_small on v5e.

Topologies: libtpu's names (`v4:2x2x2`, `v5e:16x16`, `v5p:2x2x1`, `v6e:4x4`) or Cloud TPU
accelerator types (`v4-32`, `v5litepod-16`, `v5e-256`, `v6e-8`). v4 and v5p are compiled with
one device per chip (megacore), as JAX sees them on their TPU VMs: `v4:2x2x2` is a v4-16 of 8
chips; v5e and v6e have one TensorCore per chip.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdjax import host_platform
from kdjax.errors import ConfigError, KdjaxError

GiB = 2**30
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip (= one JAX device here): HBM and peak rates from Google's Cloud TPU pages.

    `ici_bytes_per_s` is the chip's aggregate inter-chip bandwidth, so a collective's time at
    that rate is a lower bound (one mesh axis uses only some of the links).
    """

    name: str
    hbm_bytes: int
    bf16_flops: float  # dense bf16 peak, FLOP/s
    hbm_bytes_per_s: float
    ici_bytes_per_s: float


CHIPS: dict[str, Chip] = {  # keyed by `device.device_kind`
    "TPU v4": Chip("v4", 32 * GiB, 275e12, 1.2e12, 300e9),
    "TPU v5 lite": Chip("v5e", 16 * GiB, 197e12, 819e9, 200e9),
    "TPU v5": Chip("v5p", 95 * GiB, 459e12, 2.765e12, 600e9),
    "TPU v6 lite": Chip("v6e", 32 * GiB, 918e12, 1.64e12, 448e9),
}

# family -> (libtpu topology prefix, chip config, standard slice shapes by chip count)
_CUBE = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
         256: "4x8x8", 512: "8x8x8"}
_PLANE = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
          256: "16x16"}
_FAMILIES: dict[str, tuple[str, str, dict[int, str]]] = {
    "v4": ("v4", "megacore", _CUBE),
    "v5p": ("v5", "megacore", _CUBE),
    "v5e": ("v5e", "default", _PLANE),
    "v6e": ("v6e", "default", _PLANE),
}
_FAMILY_ALIASES = {"v5": "v5p", "v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice as libtpu names it, and as Cloud TPU sells it."""

    name: str  # what the user asked for
    family: str  # v4 | v5p | v5e | v6e
    topology_name: str  # libtpu's, e.g. "v4:2x2x4"
    chip_config: str  # "megacore" (one device per chip) or "default"
    chips: int
    accelerator_type: str  # e.g. "v4-32", "v5litepod-16"

    @property
    def host_bounds(self) -> tuple[int, int, int]:
        """Chips per host (TPU VM): 2x2x1, except single-host slices of 1 and 8 chips."""
        if self.family in ("v5e", "v6e") and self.chips in (1, 8):
            return (1, 1, 1) if self.chips == 1 else (2, 4, 1)
        return (2, 2, 1)


def resolve_topology(name: str) -> Topology:
    """`v4:2x2x2`, `v5e:16x16`, `v5p:2x2x1`, `v6e:4x4`, or `v4-32`, `v5litepod-16`, `v5e-256`."""
    text = str(name).strip().lower()
    families = ", ".join(_FAMILIES)
    m = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+)+)", text)
    if m:
        family = _FAMILY_ALIASES.get(m.group(1), m.group(1))
        if family not in _FAMILIES:
            raise ConfigError(f"--topology {name!r}: unknown TPU family {m.group(1)!r}; "
                              f"kdjax compile knows {families}")
        prefix, chip_config, shapes = _FAMILIES[family]
        dims = [int(d) for d in m.group(2).split("x")]
        if len(dims) != (3 if shapes is _CUBE else 2) or min(dims) < 1:
            example = "v4:2x2x2" if shapes is _CUBE else "v5e:4x4"
            raise ConfigError(f"--topology {name!r}: a {family} topology has "
                              f"{3 if shapes is _CUBE else 2} dimensions, e.g. {example}")
        chips = math.prod(dims)
        topo_name = f"{prefix}:{m.group(2)}"
    else:
        from kdjax.presets import slice_info

        try:
            info = slice_info(text)
        except ConfigError:
            raise ConfigError(
                f"--topology {name!r} is neither a TPU topology (v4:2x2x2, v5e:16x16, "
                "v5p:2x2x1, v6e:4x4) nor a slice (v4-32, v5litepod-16, v5e-256, v6e-8)"
            ) from None
        family = _FAMILY_ALIASES.get(info.family, info.family)
        if family not in _FAMILIES:
            raise ConfigError(f"--topology {name!r}: kdjax compile knows {families}")
        prefix, chip_config, shapes = _FAMILIES[family]
        chips = info.chips
        if chips not in shapes:
            raise ConfigError(f"--topology {name!r}: no standard {family} shape for {chips} "
                              f"chips; give the topology (e.g. {prefix}:{shapes[4]})")
        topo_name = f"{prefix}:{shapes[chips]}"
    accel = {"v4": f"v4-{2 * chips}", "v5p": f"v5p-{2 * chips}", "v5e": f"v5litepod-{chips}",
             "v6e": f"v6e-{chips}"}[family]
    return Topology(str(name), family, topo_name, chip_config, chips, accel)


def _no_attached_tpu() -> bool:
    """No TPU chip on this host (TPU VMs expose /dev/accel* or /dev/vfio/N, and the chip on
    the PCI bus)."""
    return not host_platform.attached("tpu")


def use_host_platform() -> None:
    """Run jax itself on the CPU (the TPU is only a compile target) unless the user chose
    platforms: with libtpu installed and no TPU attached, JAX would otherwise try to start a
    TPU backend. A no-op once a backend is running."""
    import jax
    from jax._src import xla_bridge

    if not os.environ.get("JAX_PLATFORMS") and not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")


@functools.cache
def _topology_devices(topology_name: str, chip_config: str, host_bounds: tuple[int, ...],
                      accelerator_type: str) -> tuple[Any, ...]:
    if _no_attached_tpu():
        # libtpu otherwise probes for TPU VM metadata and prints what it could not find, and
        # takes /tmp/libtpu_lockfile, which would make a second compile on this host fail
        # (there is no chip to guard)
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=topology_name, chip_config_name=chip_config,
            chips_per_host_bounds=host_bounds)
    except RuntimeError as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "not installed" in text:
            raise KdjaxError("kdjax compile needs libtpu to compile for a TPU: pip install "
                             "-e \".[tpu]\" (or pip install libtpu)") from None
        raise ConfigError(f"libtpu cannot describe topology {topology_name!r}: "
                          f"{text[:200]}") from None
    return tuple(desc.devices)


def topology_devices(topo: Topology) -> list[Any]:
    """The slice's compile-only TPU devices (cached per process)."""
    use_host_platform()
    return list(_topology_devices(topo.topology_name, topo.chip_config, topo.host_bounds,
                                  topo.accelerator_type))


# -- the step, from the config ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _SpecialIds:
    """What masking reads from a tokenizer: the [MASK] id and the ids never masked. kdjax's
    WordPiece order ([PAD], [UNK], [CLS], [SEP], [MASK]); only constants of the step."""

    mask_token_id: int = 4
    all_special_ids: tuple[int, ...] = (0, 1, 2, 3, 4)


@dataclasses.dataclass
class Target:
    """What to compile: a workload on a mesh with one batch shape (no weights, no data)."""

    kind: str  # distill | pretrain | finetune | task_distill
    workload: Any
    train: Any  # the `train` config section
    mesh: Any
    rules: Any
    batch_keys: tuple[str, ...]
    batch_shape: dict[str, tuple[tuple[int, ...], str]]
    rules_name: Any = ""  # mesh.rules as configured: a preset name or (logical, mesh) pairs

    @property
    def global_batch(self) -> int:
        return int(self.train.batch_size)

    @property
    def length(self) -> int:
        return int(self.batch_shape["input_ids"][0][1])


def _rules_label(spec: Any) -> Any:
    return spec if isinstance(spec, str) else [list(pair) for pair in spec]


def detect_kind(config: Any) -> str:
    """distill | pretrain | finetune, from the config's sections."""
    if "task" in config:
        return "finetune"
    if "discriminator" in config:
        return "pretrain"
    if "teacher" in config or "student" in config:
        return "distill"
    raise ConfigError("the config is neither a pretrain (discriminator), distill (teacher, "
                      "student) nor finetune (task) recipe; kdjax compile needs one of these")


def build_target(config: Any, devices: Sequence[Any], kind: str | None = None) -> Target:
    """The run's workload, mesh and batch shape over `devices`, validated as the run would."""
    kind = kind or detect_kind(config)
    if kind in ("distill", "pretrain"):
        return _corpus_target(config, kind, devices)
    if kind == "finetune":
        return _finetune_target(config, devices)
    raise ConfigError(f"unknown kind {kind!r}; choose distill, pretrain or finetune")


def _corpus_target(config: Any, kind: str, devices: Sequence[Any]) -> Target:
    from kdjax.data.corpus import StepBatches
    from kdjax.models.config import EncoderConfig
    from kdjax.train import pretrain_distill as pd
    from kdjax.train.trainer import make_mesh

    pd.check_run_config(config, kind)
    mesh, rules = make_mesh(config.mesh, config.train, devices)
    t_cfg = None
    if kind == "distill":
        t_cfg = EncoderConfig.from_any({**config.teacher.model.to_dict(),
                                        **pd.teacher_overrides(config.teacher)})
        vocab = t_cfg.vocab_size
    else:
        vocab = EncoderConfig.from_any(config.discriminator.model.to_dict()).vocab_size
    workload, *_ = pd.make_workload(config, kind, _SpecialIds(), vocab, t_cfg)
    # the run's own batch class, over a one-row stand-in corpus: the same keys, shapes, dtypes
    batches = StepBatches(np.zeros((1, int(config.data.max_length)), np.int32),
                          int(config.train.batch_size), 0)
    return Target(kind, workload, config.train, mesh, rules, batches.keys, batches.shapes()[0],
                  _rules_label(config.mesh.rules))


def _model_config(spec: str, what: str) -> Any:
    """An EncoderConfig from a size config or a kdjax model directory, without its weights;
    other model references (HF directories, hub ids) are resolved as the run would."""
    from kdjax.modeldir import MODEL_FILE, find_model_dir, resolve_model
    from kdjax.models.config import EncoderConfig

    p = Path(str(spec)).expanduser()
    if not str(spec).partition(":")[0].endswith(".py") and p.exists():
        model_dir = find_model_dir(p / "best") or find_model_dir(p)
        if model_dir is not None:
            import json

            return EncoderConfig.from_any(json.loads((model_dir / MODEL_FILE).read_text())
                                          ["config"])
    return resolve_model(str(spec), what).config


# Label arrays of each task kind (`kdjax.data.tasks.base`): name -> (per-row shape, dtype);
# "L" is the sequence length.
_TASK_LABELS: dict[str, dict[str, tuple[tuple[Any, ...], str]]] = {
    "sequence": {"labels": ((), "int32")},
    "regression": {"labels": ((), "float32")},
    "token": {"labels": (("L",), "int32")},
    "span": {"start_positions": ((), "int32"), "end_positions": ((), "int32")},
}


def task_arrays(kind: str, length: int, rows: int = 1, hard_weight: bool = False
                ) -> dict[str, np.ndarray]:
    """Zero arrays with the keys, shapes and dtypes `Task.featurize` gives a task of `kind`
    (plus `hard_weight`, which task KD adds)."""
    arrays = {k: np.zeros((rows, length), np.int32)
              for k in ("input_ids", "attention_mask", "token_type_ids")}
    for key, (shape, dtype) in _TASK_LABELS[kind].items():
        arrays[key] = np.zeros((rows, *(length if d == "L" else d for d in shape)), dtype)
    if hard_weight:
        arrays["hard_weight"] = np.ones((rows,), np.float32)
    return arrays


def _finetune_target(config: Any, devices: Sequence[Any]) -> Target:
    from kdjax.data.task_batches import ArrayBatches
    from kdjax.data.tasks import get_task
    from kdjax.train import finetune as ft
    from kdjax.train.trainer import make_mesh

    ft.check_config(config, data=False)
    names = ft.plan_stages(config)
    tcfg = config.task
    task = get_task(str(tcfg.name), **{k: v for k, v in tcfg.items()
                                       if k not in ft.TASK_SETTINGS})
    mesh, rules = make_mesh(config.mesh, config.train, devices)
    model = _model_config(str(config.model), "model")
    teacher = None
    stage = "distill" if "distill" in names else names[0]  # task KD: the teacher's forward too
    if stage == "distill":
        teacher = _model_config(str(config.distill.teacher), "distill.teacher")
        if str(config.model).partition(":")[0].endswith(".py"):  # random init: one vocabulary
            model = model.replace(vocab_size=teacher.vocab_size)
    max_len = int(tcfg.max_length)
    for name, cfg in (("model", model), ("distill.teacher", teacher)):
        if cfg is not None and max_len > cfg.max_position_embeddings:
            raise ConfigError(f"task.max_length={max_len} exceeds {name}'s "
                              f"max_position_embeddings={cfg.max_position_embeddings}")
    workload = ft.stage_workload(config, task, stage, ft.task_model_config(model, task), teacher)
    train = copy.deepcopy(config.train)
    if int(train.steps) <= 0:  # the run derives steps from epochs x data; only the schedule's
        train.steps = 1000    # constants depend on it
    batches = ArrayBatches(task_arrays(task.kind, max_len, hard_weight=stage == "distill"),
                           int(train.batch_size), 0)
    return Target(workload.kind, workload, train, mesh, rules, tuple(batches.keys),
                  batches.shapes()[0], _rules_label(config.mesh.rules))


# -- compile ----------------------------------------------------------------------------------
class DoesNotFit(KdjaxError):
    """XLA refused the step: it needs more HBM than a chip has (RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, required: int | None, available: int | None,
                 program: Any, inputs: tuple):
        super().__init__(message)
        self.required, self.available = required, available
        self.program, self.inputs = program, inputs  # (not `args`: Exception's own)


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _xla_size(text: str) -> int | None:
    m = re.fullmatch(r"([\d.]+)([KMGT]?)i?B?", text.strip())
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


@dataclasses.dataclass
class Compiled:
    """A compiled step and what built it."""

    target: Target
    program: Any  # kdjax.train.trainer.Program
    args: tuple  # (state, teacher, batch) ShapeDtypeStructs with shardings
    executable: Any  # jax.stages.Compiled
    seconds: float  # lower + compile


def compile_target(target: Target) -> Compiled:
    """Lower and compile the trainer's step (`build_program`) for the target's devices."""
    from kdjax.train.placement import mesh_context
    from kdjax.train.trainer import build_program

    # Built outside the mesh context: building runs a few eager ops (optax's state layout),
    # which a compile-only TPU mesh has no device for; tracing (lower) happens inside it.
    program = build_program(target.workload, target.train, target.mesh, target.rules,
                            target.batch_keys)
    args = program.abstract_args(target.batch_shape)
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    # A compile-only topology has no client to load a cached executable with: with the
    # persistent cache on (a training run earlier in the process turns it on), a repeated
    # compile warned "Error reading persistent compilation cache entry" and compiled anyway.
    # JAX decides once per process whether the cache is used (at its first compile, e.g. the
    # CPU ops that build the program), so the setting alone is not enough: reset that decision
    # on the way in and out.
    cache_on = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        with mesh_context(target.mesh, target.rules):
            start = time.perf_counter()
            lowered = program.step_fn.lower(*args)
            executable = _compile_or_oom(lowered, program, args)
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_on)
        compilation_cache.reset_cache()
    return Compiled(target, program, args, executable, time.perf_counter() - start)


def _compile_or_oom(lowered: Any, program: Any, args: Any) -> Any:
    """`lowered.compile()`; XLA's out-of-HBM error becomes `DoesNotFit`."""
    try:
        return lowered.compile()
    except Exception as e:  # XLA's out-of-memory is a compile error on TPU
        text = str(e).strip()
        if "RESOURCE_EXHAUSTED" not in text:
            raise
        line = text.splitlines()[0].replace("RESOURCE_EXHAUSTED: ", "")
        need = re.search(r"required[^(]*\(([^)]*)\)", line)
        have = re.search(r"available HBM \(([^)]*)\)", line)
        raise DoesNotFit(f"XLA: {line}", _xla_size(need.group(1)) if need else None,
                         _xla_size(have.group(1)) if have else None, program,
                         args) from None


# -- the optimized HLO: argument bytes by role, collectives -----------------------------------
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
                "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1}
# dtype[dims]{minor_to_major:T(tile)...}: the layout part is optional
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*[a-z0-9]*)\[(?P<dims>[\d,]*)\]"
                    r"(?:\{(?P<m2m>[\d,]*)(?::(?P<attrs>[^}]*))?\})?")
_TILE = re.compile(r"T\(([\d,]+)\)")
_SPACE = re.compile(r"S\((\d+)\)")
_COMP_HEADER = re.compile(r"^(?P<entry>ENTRY\s+)?%(?P<name>[^\s(]+)\s.*\{\s*$")
_CALLED = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)"
                     r"=%([^\s,)}]+)|branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(?P<type>.*?)\s(?P<op>" + "|".join(COLLECTIVES) +
    r")(?P<suffix>-start|-done)?\(")
_PARAM = re.compile(r"^\s*%\S+\s*=\s*(?P<type>\S+)\s+parameter\((?P<index>\d+)\)"
                    r"(?:.*op_name=\"(?P<name>[^\"]*)\")?")


def _arrays(type_text: str) -> list[tuple[str, tuple[int, ...], str | None, str | None]]:
    """(dtype, dims, minor_to_major, layout attrs) of every array in an HLO type string."""
    out = []
    for m in _ARRAY.finditer(type_text):
        if m.group("dtype") not in _DTYPE_BYTES:
            continue
        dims = tuple(int(d) for d in m.group("dims").split(",") if d)
        out.append((m.group("dtype"), dims, m.group("m2m"), m.group("attrs")))
    return out


def memory_space(attrs: str | None) -> int:
    """The memory space of a TPU layout (`{1,0:T(8,128)S(1)}` -> 1): 0 is HBM; others are
    on-chip (1 VMEM, and small scalar / semaphore spaces)."""
    m = _SPACE.search(attrs or "")
    return int(m.group(1)) if m else 0


def array_bytes(type_text: str, padded: bool = False, hbm_only: bool = False) -> int:
    """Bytes of the arrays in an HLO type (`f32[32,64]{1,0:T(8,128)}`, or a tuple of them).

    `padded`: as laid out in TPU memory: the minor dimensions rounded up to the layout's first
    tile (T(8,128): rows to 8, columns to 128), which is what `memory_analysis()` counts.
    `hbm_only`: only the arrays in HBM (memory space 0), not those XLA placed on chip.
    """
    total = 0.0
    for dtype, dims, m2m, attrs in _arrays(type_text):
        if hbm_only and memory_space(attrs):
            continue
        shape = list(dims)
        tile = _TILE.search(attrs or "") if padded else None
        if tile and shape:
            order = [int(i) for i in m2m.split(",")] if m2m else list(range(len(shape)))[::-1]
            physical = [shape[i] for i in reversed(order)]  # major -> minor
            t = [int(x) for x in tile.group(1).split(",")]
            for k, size in enumerate(reversed(t)):
                if k < len(physical):
                    j = len(physical) - 1 - k
                    physical[j] = -(-physical[j] // size) * size
            shape = physical
        elif tile and not shape:  # a scalar still occupies one tile row
            shape = [math.prod(int(x) for x in tile.group(1).split(",")[-1:])]
        total += math.prod(shape) * _DTYPE_BYTES[dtype]
    return int(total)


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    """{computation name: its instruction lines}, and the ENTRY computation's name."""
    comps: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        header = _COMP_HEADER.match(line)
        if header and not line.startswith(" "):
            current = header.group("name")
            comps[current] = []
            if header.group("entry"):
                entry = current
        elif current is not None and line.startswith(" "):
            comps[current].append(line)
    return comps, entry


# 2: the roofline's HBM term counts HBM-resident bytes only; 3: while loops stepping their
# counter by more than 1 (TPU windowed einsums under fsdp) count their real trip count
REPORT_VERSION = 3
_CONST = re.compile(r"%(\S+)\s*=\s*[su](?:32|64)\[\]\S*\s+constant\((\d+)\)")


def _trip_count(line: str, comps: dict[str, list[str]]) -> int:
    """Iterations of a while loop: XLA's known_trip_count, else `i < N` in its condition with
    the counter from 0, stepped by the constant its body adds to it (1 for jax's lax.scan /
    fori_loop; XLA's TPU windowed einsums, which overlap fsdp's all-gathers with the matmuls,
    step a u32 counter by 2 over the shards); 1 when neither is there."""
    known = _TRIP.search(line)
    if known:
        return int(known.group(1))
    cond = re.search(r"condition=%([^\s,)}]+)", line)
    cond_lines = comps.get(cond.group(1), []) if cond else []
    consts = dict(_CONST.findall("\n".join(cond_lines)))
    gtes = dict(re.findall(r"%(\S+)\s*=.*get-tuple-element\(\S+\), index=(\d+)",
                           "\n".join(cond_lines)))
    for text in cond_lines:
        m = re.search(r"compare\(%([^\s,)]+), %([^\s,)]+)\), direction=LT", text)
        if text.lstrip().startswith("ROOT") and m and m.group(2) in consts:
            limit = int(consts[m.group(2)])
            index = gtes.get(m.group(1))
            step = _counter_step(line, comps, int(index)) if index is not None else 1
            return max(1, -(-limit // step))
    return 1


def _counter_step(line: str, comps: dict[str, list[str]], index: int) -> int:
    """What a while body adds to tuple element `index` each iteration (1 if not a constant)."""
    body = re.search(r"body=%([^\s,)}]+)", line)
    lines = comps.get(body.group(1), []) if body else []
    root = next((t for t in lines if t.lstrip().startswith("ROOT") and " tuple(" in t), "")
    if not root:
        return 1
    operands = re.findall(r"%([^\s,)]+)", root.split(" tuple(", 1)[1])
    if index >= len(operands):
        return 1
    consts = dict(_CONST.findall("\n".join(lines)))
    for text in lines:
        m = re.match(r"\s*%(\S+)\s*=.*\sadd\(%([^\s,)]+), %([^\s,)]+)\)", text)
        if m and m.group(1) == operands[index]:
            step = consts.get(m.group(3)) or consts.get(m.group(2))
            return max(1, int(step)) if step else 1
    return 1


def _multipliers(comps: dict[str, list[str]], entry: str) -> dict[str, int]:
    """How often each computation runs per step: 1 for ENTRY, x trip count inside a while
    loop (gradient accumulation, scan_layers), inherited through calls."""
    mult: dict[str, int] = {entry: 1}
    stack = [entry]
    while stack:
        name = stack.pop()
        for line in comps.get(name, ()):
            trip = _trip_count(line, comps) if " while(" in line else 1
            for m in _CALLED.finditer(line):
                callees = [m.group(1)] if m.group(1) else \
                    [c.strip().lstrip("%") for c in m.group(2).split(",") if c.strip()]
                for callee in callees:
                    times = mult[name] * (trip if "body=%" + callee in line else 1)
                    if callee in comps and times > mult.get(callee, 0):
                        mult[callee] = times
                        stack.append(callee)
    return mult


def _group_size(line: str, num_devices: int) -> int:
    """Devices in each group of a collective (its replica_groups, in any of XLA's forms)."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if m:
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        axes = re.findall(r"'([^']+)'", m.group(2))
        return math.prod(int(sizes[a]) for a in axes if a in sizes) or 1
    m = re.search(r"replica_groups=\[([\d,]+)\]<=", line)
    if m:
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
    if m:
        return len([x for x in m.group(1).split(",") if x]) or num_devices
    return num_devices  # replica_groups={} : every device


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>\S+)\s*=\s*(?P<type>.*?)\s(?P<op>[a-z][\w\-]*)"
                    r"\((?P<args>[^)]*)\)")
_NOT_MEMORY = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
               "conditional", "call", "copy-done", "slice-done", "after-all", "partition-id",
               "replica-id"}


def _valid_pairs(out: int, size: int, stride: int, pad_lo: int, lhs_dil: int, rhs_dil: int,
                 in_size: int) -> int:
    """(output position, window position) pairs of one spatial dimension that land on a real
    input element (not padding, not a hole of lhs dilation): XLA's convolution MAC count."""
    top = (in_size - 1) * lhs_dil
    count = 0
    for o in range(out):
        base = o * stride - pad_lo
        if lhs_dil == 1 and rhs_dil == 1:
            count += max(0, min(size - 1, top - base) - max(0, -base) + 1)
        else:
            count += sum(1 for k in range(size)
                         if 0 <= base + k * rhs_dil <= top and (base + k * rhs_dil) % lhs_dil
                         == 0)
    return count


def _conv_flops(line: str, out_type: str, operands: list[str], types: dict[str, str]) -> float:
    labels = re.search(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)", line)
    if not labels or len(operands) < 2:
        return 0.0
    lhs_l, rhs_l, out_l = labels.groups()
    lhs, rhs, out = (_arrays(types.get(operands[0], "")), _arrays(types.get(operands[1], "")),
                     _arrays(out_type))
    if not (lhs and rhs and out):
        return 0.0
    lhs_d, rhs_d, out_d = lhs[0][1], rhs[0][1], out[0][1]
    window = re.search(r"window=\{([^}]*)\}", line)
    attrs = dict(kv.split("=", 1) for kv in window.group(1).split()) if window else {}

    def field(key: str, n: int, default: int) -> list[int]:
        return [int(x) for x in attrs[key].split("x")] if key in attrs else [default] * n

    spatial = [c for c in out_l if c.isdigit()]
    n = len(spatial)
    size = field("size", n, 1)
    stride, lhs_dil, rhs_dil = field("stride", n, 1), field("lhs_dilate", n, 1), \
        field("rhs_dilate", n, 1)
    pads = [tuple(int(v) for v in p.split("_")) for p in attrs["pad"].split("x")] \
        if "pad" in attrs else [(0, 0)] * n
    macs = out_d[out_l.index("b")] * out_d[out_l.index("f")] * rhs_d[rhs_l.index("i")]
    for j, d in enumerate(spatial):
        macs *= _valid_pairs(out_d[out_l.index(d)], size[j], stride[j], pads[j][0], lhs_dil[j],
                             rhs_dil[j], lhs_d[lhs_l.index(d)])
    return 2.0 * macs


def _dot_flops(line: str, out_type: str, operands: list[str], types: dict[str, str]) -> float:
    contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
    lhs = _arrays(types.get(operands[0], "")) if operands else []
    out = _arrays(out_type)
    if not (contract and lhs and out):
        return 0.0
    k = math.prod(lhs[0][1][int(i)] for i in contract.group(1).split(",") if i)
    return 2.0 * math.prod(out[0][1]) * k


def hlo_costs(hlo: str) -> dict[str, float]:
    """kdjax's own count of the matmul FLOPs and HBM bytes of an optimized HLO module, once
    (every computation run once, as XLA's `cost_analysis()` counts a while loop's body) and
    per step (loop bodies x their trip count). Their ratio corrects XLA's totals for loops:
    gradient accumulation, `scan_layers`.

    FLOPs: 2 x MACs of every dot / convolution (convolutions as XLA counts them: valid window
    positions only). Bytes: the HBM operands + results of the instructions outside fusions
    (each fusion reads its operands from and writes its results to HBM, or to the on-chip
    VMEM where XLA placed them: those do not count), and what prefetches move (`_hbm_bytes`).
    """
    comps, entry = _computations(hlo)
    mult = _multipliers(comps, entry)
    fused = {m for lines in comps.values() for line in lines if " fusion(" in line
             for m in re.findall(r"calls=%([^\s,)}]+)", line)}
    reducers = {m for lines in comps.values() for line in lines
                for m in re.findall(r"to_apply=%([^\s,)}]+)", line)}
    types: dict[str, str] = {}
    parsed: dict[str, list[tuple[str, str, str, list[str]]]] = {}
    for name, lines in comps.items():
        rows = parsed.setdefault(name, [])
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            types[m.group("name")] = m.group("type")
            operands = re.findall(r"%([^\s,)]+)", m.group("args"))
            rows.append((line, m.group("type"), m.group("op"), operands))
    out: dict[str, Any] = {"flops_once": 0.0, "flops_per_step": 0.0, "bytes_once": 0.0,
                           "bytes_per_step": 0.0}
    by_op: dict[str, float] = {}
    for name, rows in parsed.items():
        times = mult.get(name, 0)
        if not times:
            continue
        control = name not in fused and name not in reducers
        for line, out_type, op, operands in rows:
            flops = 0.0
            if op == "convolution":
                flops = _conv_flops(line, out_type, operands, types)
            elif op == "dot":
                flops = _dot_flops(line, out_type, operands, types)
            out["flops_once"] += flops
            out["flops_per_step"] += flops * times
            if control and op not in _NOT_MEMORY and not op.endswith("-done"):
                moved = _hbm_bytes(op, out_type, [types.get(o, "") for o in operands])
                out["bytes_once"] += moved
                out["bytes_per_step"] += moved * times
                by_op[_op_group(line)] = by_op.get(_op_group(line), 0.0) + moved * times
    out["top"] = sorted(by_op.items(), key=lambda kv: -kv[1])[:8]
    return out


def _hbm_bytes(op: str, out_type: str, operand_types: list[str]) -> int:
    """HBM bytes an instruction outside fusions reads and writes. Arrays XLA placed on chip
    (VMEM) do not count: a fusion reading a prefetched weight reads VMEM, and the prefetch
    itself (`copy-start` / `slice-start`: (source, destination, context)) moves its
    destination's bytes across HBM once."""
    if op in ("copy-start", "slice-start"):
        arrays = _arrays(out_type)
        if len(arrays) >= 2:
            src, dst = arrays[0], arrays[1]
            if memory_space(src[3]) and memory_space(dst[3]):
                return 0  # on chip to on chip
            size = dst if memory_space(dst[3]) else src
            return array_bytes(f"{size[0]}[{','.join(map(str, size[1]))}]"
                               f"{{{size[2] or ''}:{size[3] or ''}}}", padded=True)
    return array_bytes(out_type, padded=True, hbm_only=True) + sum(
        array_bytes(t, padded=True, hbm_only=True) for t in operand_types)


def _op_group(line: str) -> str:
    """Where an instruction comes from, for the HBM-traffic breakdown: its jax op_name with
    layer numbers folded (encoder/layer_N/...), cut after the module path."""
    m = re.search(r'op_name="([^"]*)"', line)
    if not m:
        return "(XLA-inserted: copies, prefetches, layout changes)"
    name = re.sub(r"layer_\d+", "layer_N", m.group(1).replace("jit(train_step)/", ""))
    name = re.sub(r"\[\\?'[^\]]*\]", "[...]", name) if name.startswith(("state", "frozen")) \
        else name
    parts = [p for p in name.split("/") if p]
    return "/".join(parts[:4])


def collectives(hlo: str, num_devices: int) -> dict[str, dict[str, int]]:
    """Per kind: count (executions per step), bytes (the buffers moved, per device) and
    wire_bytes (what one device sends: ring all-reduce 2(n-1)/n x bytes, all-gather and
    reduce-scatter (n-1)/n x the full buffer, all-to-all (n-1)/n, permute 1x)."""
    comps, entry = _computations(hlo)
    mult = _multipliers(comps, entry)
    out = {k: {"count": 0, "bytes": 0, "wire_bytes": 0} for k in COLLECTIVES}
    for name, lines in comps.items():
        times = mult.get(name, 0)
        if not times:
            continue
        for line in lines:
            m = _COLLECTIVE.match(line)
            if not m or m.group("suffix") == "-done":
                continue
            op, type_text = m.group("op"), m.group("type")
            arrays = _arrays(type_text)
            if m.group("suffix") == "-start" and op == "all-gather":
                arrays = arrays[len(arrays) // 2:]  # (operands, results): the results
            elif m.group("suffix") == "-start" and op == "collective-permute":
                arrays = arrays[:1]  # (operand, result, context...)
            size = sum(math.prod(d) * _DTYPE_BYTES[t] for t, d, _, _ in arrays)
            n = _group_size(line, num_devices)
            if op == "reduce-scatter":
                size *= n  # the result is one shard of the reduced buffer
            share = (n - 1) / n if n > 1 else 0.0
            wire = {"all-reduce": 2 * share, "all-gather": share, "reduce-scatter": share,
                    "all-to-all": share, "collective-permute": 1.0}[op] * size
            out[op]["count"] += times
            out[op]["bytes"] += int(size) * times
            out[op]["wire_bytes"] += int(wire) * times
    return out


def argument_bytes(hlo: str) -> dict[str, int]:
    """Per device, the step's inputs as laid out in HBM, by role: params, optimizer (AdamW
    moments and count), state (step, RNG, skip counters), teacher, batch. The roles come from
    the argument paths XLA keeps (`state.params[...]`, `frozen[...]`, `batch[...]`); inputs the
    step never reads are pruned by jit and take no memory."""
    comps, entry = _computations(hlo)
    out = {"params": 0, "optimizer": 0, "state": 0, "teacher": 0, "batch": 0, "other": 0}
    for line in comps.get(entry, ()):
        m = _PARAM.match(line)
        if not m:
            continue
        name = (m.group("name") or "").replace("\\'", "'")
        role = ("params" if name.startswith("state.params") else
                "optimizer" if name.startswith("state.opt_state") else
                "state" if name.startswith("state.") else
                "teacher" if name.startswith("frozen") else
                "batch" if name.startswith("batch") else "other")
        out[role] += array_bytes(m.group("type"), padded=True)
    return out


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings, without TPU
    tile padding (the shard shape times the item size)."""
    import jax

    return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                   for x in jax.tree_util.tree_leaves(tree)))


# -- the report -------------------------------------------------------------------------------
def analyze(result: Compiled, topo: Topology, config_name: str = "") -> dict[str, Any]:
    """The report of a compiled step (see the module doc): one JSON-able dict, bytes and FLOPs
    per device unless a key says `per_step`."""
    from kdjax.flops import workload_flops

    target, exe = result.target, result.executable
    devices = target.mesh.devices.size
    kind_name = target.mesh.devices.flat[0].device_kind
    chip = CHIPS.get(kind_name)
    if chip is None:
        raise ConfigError(f"no HBM / peak figures for {kind_name!r}; kdjax compile knows "
                          f"{', '.join(CHIPS)}")
    hlo = exe.as_text()
    mem = exe.memory_analysis()
    cost = exe.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    args = argument_bytes(hlo)
    total = (int(mem.argument_size_in_bytes) + int(mem.output_size_in_bytes)
             - int(mem.alias_size_in_bytes) + int(mem.temp_size_in_bytes)
             + int(mem.generated_code_size_in_bytes))
    coll = collectives(hlo, devices)
    state, frozen, batch = result.args
    logical = {"params": shard_bytes(state.params),
               "optimizer": shard_bytes(state.replace(params={})),
               "teacher": shard_bytes(frozen), "batch": shard_bytes(batch)}
    tokens = target.global_batch * target.length
    analytic = workload_flops(target.workload, target.length)["total"] * tokens
    # XLA counts a while loop's body once (gradient accumulation, scan_layers): scale its
    # totals by kdjax's own per-step / once ratio of the same HLO
    own = hlo_costs(hlo)
    scale = {"flops": own["flops_per_step"] / own["flops_once"] if own["flops_once"] else 1.0,
             "bytes": own["bytes_per_step"] / own["bytes_once"] if own["bytes_once"] else 1.0}
    flops = float(cost.get("flops", 0.0)) * scale["flops"]
    accessed = float(cost.get("bytes accessed", 0.0)) * scale["bytes"]
    hbm_traffic = float(own["bytes_per_step"])
    times = {"compute": flops / chip.bf16_flops,
             "hbm": hbm_traffic / chip.hbm_bytes_per_s,
             "ici": sum(c["wire_bytes"] for c in coll.values()) / chip.ici_bytes_per_s}
    bound = max(times, key=lambda k: times[k])
    step_s = times[bound]
    return {
        "kind": target.kind,
        "config": config_name,
        "topology": topo.topology_name,
        "accelerator_type": topo.accelerator_type,
        "device_kind": kind_name,
        "devices": devices,
        "hosts": len({d.process_index for d in target.mesh.devices.flat}),
        "mesh": {k: int(v) for k, v in target.mesh.shape.items()},
        "rules": target.rules_name,
        "global_batch": target.global_batch,
        "length": target.length,
        "grad_accum": int(target.train.grad_accum),
        "tokens_per_step": tokens,
        # per-device memory (bytes), the step's inputs by role as XLA lays them out
        "params_bytes": args["params"],
        "optimizer_bytes": args["optimizer"] + args["state"],
        "teacher_bytes": args["teacher"],
        "batch_bytes": args["batch"] + args["other"],
        # the same without TPU tile padding (a [30000, 32] table fills 128 lanes: 4x)
        "unpadded_bytes": logical,
        "arguments_bytes": int(mem.argument_size_in_bytes),
        "outputs_bytes": int(mem.output_size_in_bytes),
        "aliased_bytes": int(mem.alias_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "code_bytes": int(mem.generated_code_size_in_bytes),
        "total_bytes": total,
        "hbm_bytes": chip.hbm_bytes,
        "headroom_bytes": chip.hbm_bytes - total,
        "fits": total <= chip.hbm_bytes,
        # FLOPs: XLA's count of the compiled step (per device, and x devices) and kdjax's
        "xla_flops_per_device": flops,
        "xla_flops_per_step": flops * devices,
        "analytic_flops_per_step": float(analytic),
        # XLA's bytes accessed (every memory space) and kdjax's HBM-only count (the roofline's)
        "bytes_accessed_per_device": accessed,
        "hbm_traffic_per_device": hbm_traffic,
        "loop_scale": {k: round(v, 4) for k, v in scale.items()},
        # where the HBM traffic comes from (kdjax's count of the HLO, by jax op_name)
        "hbm_traffic_top": [[name, int(b)] for name, b in own["top"]],
        "collectives": coll,
        "roofline": {
            "compute_s": times["compute"], "hbm_s": times["hbm"], "ici_s": times["ici"],
            "step_s": step_s, "bound": bound,
            "tokens_per_s": tokens / step_s if step_s > 0 else None,
            "mfu_ceiling": analytic / (step_s * devices * chip.bf16_flops) if step_s > 0
            else None,
        },
        "chip": dataclasses.asdict(chip),
        "compile_s": round(result.seconds, 2),
        "report_version": REPORT_VERSION,
    }


def _gb(n: float) -> str:
    """Bytes in GiB, or MiB below 1 GiB."""
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / 2**20:.1f} MiB"


def render(r: dict[str, Any]) -> str:
    """The report as text (what `kdjax compile` prints without --json)."""
    if r.get("compile_error"):
        return (f"kdjax compile: {r['kind']} {r['config']} for {r['topology']} "
                f"({r['accelerator_type']}): {r['devices']} x {r['device_kind']}, mesh "
                f"{r['mesh']}, global batch {r['global_batch']} x {r['length']}: DOES NOT "
                f"FIT - {r['compile_error']}\n  inputs per device (unpadded): "
                + ", ".join(f"{k} {_gb(v)}" for k, v in r["unpadded_bytes"].items()))
    chip, roof = r["chip"], r["roofline"]
    mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items())
    lines = [
        f"kdjax compile: {r['kind']} {r['config']} for {r['topology']} ({r['accelerator_type']}"
        f"): {r['devices']} x {r['device_kind']} on {r['hosts']} host(s), compiled in "
        f"{r['compile_s']:.1f} s",
        f"  mesh {mesh}, rules {r['rules']}; global batch {r['global_batch']} x length "
        f"{r['length']} = {r['tokens_per_step']} tokens/step, grad_accum {r['grad_accum']}",
        "  memory per device:",
        f"    params {_gb(r['params_bytes'])}   optimizer {_gb(r['optimizer_bytes'])}   "
        f"teacher {_gb(r['teacher_bytes'])}   batch {_gb(r['batch_bytes'])}   (as laid out in "
        "HBM; unpadded: " + ", ".join(f"{k} {_gb(v)}" for k, v in r["unpadded_bytes"].items())
        + ")",
        f"    arguments {_gb(r['arguments_bytes'])}   outputs {_gb(r['outputs_bytes'])} "
        f"(aliased {_gb(r['aliased_bytes'])})   temporaries {_gb(r['temp_bytes'])}   code "
        f"{_gb(r['code_bytes'])}",
        f"    total {_gb(r['total_bytes'])} of {_gb(r['hbm_bytes'])} HBM: "
        + (f"fits, {_gb(r['headroom_bytes'])} headroom" if r["fits"] else
           f"DOES NOT FIT, {_gb(-r['headroom_bytes'])} over"),
        f"  FLOPs per step: XLA {r['xla_flops_per_step']:.3e} "
        f"({r['xla_flops_per_device']:.3e} per device), kdjax analytic "
        f"{r['analytic_flops_per_step']:.3e}",
        "  collectives per step (count, bytes per device):",
    ]
    for kind, c in r["collectives"].items():
        if c["count"]:
            lines.append(f"    {kind:<19} {c['count']:5d}  {c['bytes'] / 2**20:10.2f} MiB")
    if not any(c["count"] for c in r["collectives"].values()):
        lines.append("    none")
    total_top = sum(b for _, b in r["hbm_traffic_top"]) or 1
    lines.append(f"  HBM traffic per step and device: {_gb(r['hbm_traffic_per_device'])} "
                 f"(XLA's bytes accessed, on-chip VMEM included: "
                 f"{_gb(r['bytes_accessed_per_device'])})")
    lines.append("  HBM traffic by origin (kdjax's count of the optimized HLO): " + "; ".join(
        f"{name} {b / total_top:.0%}" for name, b in r["hbm_traffic_top"][:5]))
    tok = roof["tokens_per_s"]
    lines += [
        f"  roofline ({chip['name']}: {chip['bf16_flops'] / 1e12:.0f} TFLOP/s bf16, "
        f"{chip['hbm_bytes_per_s'] / 1e9:.0f} GB/s HBM, {chip['ici_bytes_per_s'] / 1e9:.0f} "
        f"GB/s ICI): compute {roof['compute_s'] * 1e3:.2f} ms, HBM {roof['hbm_s'] * 1e3:.2f} "
        f"ms, ICI {roof['ici_s'] * 1e3:.2f} ms -> step >= {roof['step_s'] * 1e3:.2f} ms "
        f"({roof['bound']}-bound)",
        f"    <= {tok:,.0f} tokens/s, MFU <= {roof['mfu_ceiling']:.1%}" if tok else "",
    ]
    return "\n".join(line for line in lines if line)


def oom_report(target: Target, topo: Topology, err: DoesNotFit,
               config_name: str = "") -> dict[str, Any]:
    """The report of a step XLA refused for lack of HBM: what XLA said it needs, the inputs'
    shard bytes, kdjax's FLOPs; no executable, so no XLA FLOPs, collectives or roofline."""
    from kdjax.flops import workload_flops

    kind_name = target.mesh.devices.flat[0].device_kind
    chip = CHIPS[kind_name]
    state, frozen, batch = err.inputs
    logical = {"params": shard_bytes(state.params),
               "optimizer": shard_bytes(state.replace(params={})),
               "teacher": shard_bytes(frozen), "batch": shard_bytes(batch)}
    tokens = target.global_batch * target.length
    total = err.required if err.required is not None else sum(logical.values())
    return {
        "kind": target.kind, "config": config_name, "topology": topo.topology_name,
        "accelerator_type": topo.accelerator_type, "device_kind": kind_name,
        "devices": target.mesh.devices.size,
        "hosts": len({d.process_index for d in target.mesh.devices.flat}),
        "mesh": {k: int(v) for k, v in target.mesh.shape.items()}, "rules": target.rules_name,
        "global_batch": target.global_batch, "length": target.length,
        "grad_accum": int(target.train.grad_accum), "tokens_per_step": tokens,
        "params_bytes": logical["params"], "optimizer_bytes": logical["optimizer"],
        "teacher_bytes": logical["teacher"], "batch_bytes": logical["batch"],
        "unpadded_bytes": logical, "total_bytes": total, "hbm_bytes": chip.hbm_bytes,
        "usable_hbm_bytes": err.available, "headroom_bytes": chip.hbm_bytes - total,
        "fits": False, "compile_error": str(err),
        "xla_flops_per_device": None, "xla_flops_per_step": None,
        "analytic_flops_per_step": float(workload_flops(target.workload, target.length)["total"]
                                         * tokens),
        "collectives": {k: {"count": None, "bytes": None, "wire_bytes": None}
                        for k in COLLECTIVES},
        "roofline": None, "chip": dataclasses.asdict(chip), "compile_s": None,
    }


def compile_run(config: Any, topology: str, kind: str | None = None,
                config_name: str = "") -> dict[str, Any]:
    """`kdjax compile`: resolve the topology, build the run's step over its devices, compile,
    analyze. Returns the report (see `analyze`; `oom_report` when XLA refuses it)."""
    topo = resolve_topology(topology)
    devices = topology_devices(topo)
    target = build_target(config, devices, kind)
    try:
        return analyze(compile_target(target), topo, config_name)
    except DoesNotFit as err:
        return oom_report(target, topo, err, config_name)


# -- command line -----------------------------------------------------------------------------
def fit_error(report: dict[str, Any]) -> str | None:
    """The one-line reason a compiled step does not fit the chip's HBM, or None."""
    if report["fits"]:
        return None
    have = report.get("usable_hbm_bytes") or report["hbm_bytes"]
    return (f"the {report['kind']} step for {report['topology']} needs "
            f"{_gb(report['total_bytes'])} per device but a {report['device_kind']} chip has "
            f"{_gb(have)} of HBM; lower train.batch_size (or raise train.grad_accum), or shard "
            f"with --config.mesh.preset=fsdp")


def add_compile_cli(sub: Any) -> Any:
    """Register `kdjax compile`; returns its handler."""
    p = sub.add_parser(
        "compile", help="compile a run's train step for a TPU slice on this host (libtpu): "
        "HBM per chip, FLOPs, collectives, roofline step time")
    p.add_argument("--config", required=True, help="the run's config (pretrain, distill or "
                   "finetune recipe), e.g. configs/distill_paper.py:lf_v3")
    p.add_argument("--topology", required=True, help="TPU topology (v4:2x2x2, v5e:16x16, "
                   "v5p:2x2x1, v6e:4x4) or slice (v4-32, v5litepod-16, v5e-256, v6e-8)")
    p.add_argument("--kind", default="", choices=("", "distill", "pretrain", "finetune"),
                   help="the command whose step to compile (default: from the config)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--require_fit", action="store_true", help="exit with an error (status 2) "
                   "when the step does not fit the chip's HBM (launch/run.sh --compile-check)")

    def handler(args: Any, overrides: list[str]) -> int:
        import json
        import logging

        from kdjax.config_lib import load_config

        config = load_config(args.config, overrides)
        logging.getLogger(__name__).info("compiling the %s step for %s", args.kind or
                                         detect_kind(config), args.topology)
        report = compile_run(config, args.topology, kind=args.kind or None,
                             config_name=args.config)
        print(json.dumps(report) if args.json else render(report), flush=True)
        problem = fit_error(report) if args.require_fit else None
        if problem:
            raise KdjaxError(problem)
        return 0

    return handler

"""Device mesh and logical-axis rules: a sharding is a rules table, not code.

The model names every parameter axis (vocab, embed, heads, mlp, rank, ...) and its main
activations (batch, length, act_embed, act_mlp, act_heads, kv_length). A preset maps those
names onto the mesh axes `data`, `fsdp` and `tensor`; any preset works on any mesh shape
(an axis of size 1 is a no-op), so CPU, one GPU and a TPU pod run the same code.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from kdjax.errors import ConfigError

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch is split over every data-parallel axis

Rules = tuple[tuple[str, Any], ...]

_ACTIVATIONS: Rules = (
    ("batch", BATCH),
    ("length", None),
    ("kv_length", None),
    ("act_embed", None),
)

RULES: dict[str, Rules] = {
    # Pure data parallelism: parameters replicated on every device.
    "replicated": _ACTIVATIONS + (("act_mlp", None), ("act_heads", None)),
    # ZeRO-3 style: every large parameter split over `fsdp`, along `embed` where it has one,
    # else its `mlp` / `heads` / `vocab` / `rank` axis (in that order: the first that the
    # device count divides). Low-rank factors [rank, mlp] and embeddings [vocab, rank] have
    # no `embed` axis: with `embed` alone they stayed whole on every device (the TPU compile
    # showed an LF-V3 student ~5x above 1/N). Gathered per layer inside the step by XLA.
    "fsdp": _ACTIVATIONS + (
        ("act_mlp", None), ("act_heads", None),
        ("embed", "fsdp"), ("mlp", "fsdp"), ("heads", "fsdp"), ("vocab", "fsdp"),
        ("rank", "fsdp"),
    ),
    # Megatron tensor parallelism over `tensor` (heads, FFN and vocab split), plus FSDP on embed.
    "tensor": _ACTIVATIONS + (
        ("act_mlp", "tensor"), ("act_heads", "tensor"),
        ("embed", "fsdp"), ("vocab", "tensor"), ("heads", "tensor"), ("mlp", "tensor"),
    ),
}


def get_rules(name_or_rules: str | Sequence[Sequence[Any]]) -> Rules:
    """A rules preset by name, or a user table `[(logical, mesh_axis_or_None), ...]`."""
    if isinstance(name_or_rules, str):
        if name_or_rules not in RULES:
            raise ConfigError(
                f"mesh.rules={name_or_rules!r} is not a preset; choose one of "
                f"{', '.join(RULES)} or give a list of (logical_axis, mesh_axis) pairs"
            )
        return RULES[name_or_rules]
    rules = tuple((str(a), None if b is None else (tuple(b) if isinstance(b, (list, tuple))
                                                    else str(b))) for a, b in name_or_rules)
    for logical, axes in rules:
        for ax in (axes if isinstance(axes, tuple) else (axes,)):
            if ax is not None and ax not in MESH_AXES:
                raise ConfigError(
                    f"mesh.rules maps {logical!r} to unknown mesh axis {ax!r}; "
                    f"mesh axes are {', '.join(MESH_AXES)}"
                )
    return rules


def make_mesh(
    shape: Sequence[int], axes: Sequence[str] = MESH_AXES, devices: Sequence[Any] | None = None,
    *, whole: bool | None = None,
) -> Mesh:
    """A mesh over all (or the given) devices; one entry of `shape` may be -1 (= the rest).

    `devices` may be a TPU topology's compile-only devices (`kdjax.tpu_compile`). `whole` says
    that `devices` is a whole slice (default: all of `jax.devices()`): it is then laid out by
    `jax.make_mesh`, which follows the physical ICI torus on TPU (rings for the mesh axes); a
    subset (`mesh.num_devices`) keeps its order. Axis types are explicitly Auto, so sharding
    constraints inside the jitted step are honoured under `jax.set_mesh`.
    """
    axes = tuple(axes)
    shape = [int(s) for s in shape]
    if len(shape) != len(axes):
        raise ConfigError(f"mesh.shape {tuple(shape)} and mesh.axes {axes} differ in length")
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
        raise ConfigError(f"mesh.axes has unknown axis {unknown}; use {', '.join(MESH_AXES)}")
    if whole is None:
        whole = devices is None or len(devices) == len(jax.devices())
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if shape.count(-1) > 1:
        raise ConfigError(f"mesh.shape {tuple(shape)}: at most one -1 entry")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if known <= 0 or n % known:
            raise ConfigError(
                f"mesh.shape {tuple(shape)} cannot be filled with {n} devices "
                f"({n} is not divisible by {known})"
            )
        shape[shape.index(-1)] = n // known
    if math.prod(shape) != n or min(shape) < 1:
        raise ConfigError(
            f"mesh.shape {tuple(shape)} needs {math.prod(shape)} devices but {n} are "
            f"available; use -1 for one axis (e.g. mesh.shape=(-1, 1, 1)) to fill the rest"
        )
    types = (AxisType.Auto,) * len(axes)
    if whole:
        try:
            return jax.make_mesh(tuple(shape), axes, axis_types=types, devices=devices)
        except (ValueError, NotImplementedError, AssertionError) as e:
            # e.g. a shape that does not map onto the torus: device order then
            log.info("mesh %s has no physical layout on %s (%s); devices in id order",
                     tuple(shape), devices[0].device_kind, e)
    return Mesh(np.asarray(devices).reshape(shape), axes, axis_types=types)


def mesh_spec(logical: Sequence[str | None], shape: Sequence[int], rules: Rules,
              mesh: Mesh) -> PartitionSpec:
    """The mesh axes of one parameter of logical axes `logical` and shape `shape`.

    flax's rule semantics (the earliest rule that names a dimension's logical axis and whose
    mesh axes are still free wins it; a rule to None keeps it whole), plus divisibility: a
    mesh axis that does not divide a dimension (12 heads on 8 devices, 30,000 vocabulary rows
    on 256) is not dropped but offered to the next rule's dimension, so one odd dimension
    does not replicate the whole array.
    """
    dims = list(logical)[:len(shape)] + [None] * (len(shape) - len(logical))
    out: list[Any] = [None] * len(shape)
    fixed = [name is None for name in dims]  # decided: sharded, or replicated by a rule
    used: set[str] = set()
    for name, target in rules:
        for i, dim_name in enumerate(dims):
            if fixed[i] or dim_name != name:
                continue
            if target is None:
                fixed[i] = True
                continue
            axes = target if isinstance(target, tuple) else (target,)
            if any(a in used for a in axes):
                continue
            size = math.prod(mesh.shape[a] for a in axes if a in mesh.shape)
            if shape[i] % size:
                log.debug("dim %d (%s) not divisible by %s=%d: offered on", shape[i], name,
                          axes, size)
                continue
            out[i], fixed[i] = target, True
            used.update(axes)
    return PartitionSpec(*out)


def unbox(tree: Any) -> Any:
    """Strip `nn.Partitioned` boxes without applying sharding constraints (safe on abstract
    trees and outside jit, where flax's `unbox` would try to constrain the values)."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    return jax.tree_util.tree_map(
        lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box
    )


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of `nn.Partitioned` (or plain) abstract leaves.

    Leaves without logical metadata (step counters, RNG keys, optax scalars) are replicated.
    """
    specs = nn.get_partition_spec(boxed_tree)
    shapes = unbox(boxed_tree)

    def one(spec: Any, leaf: Any) -> NamedSharding:
        logical = tuple(spec) if isinstance(spec, PartitionSpec) else ()
        return NamedSharding(mesh, mesh_spec(logical, getattr(leaf, "shape", ()), rules, mesh))

    return jax.tree_util.tree_map(
        one, specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None
    )


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, ...] input: batch over every data-parallel mesh axis."""
    present = tuple(a for a in BATCH if a in mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(present, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())

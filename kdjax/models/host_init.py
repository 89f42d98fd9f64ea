"""Random parameter initialisation on the host, in NumPy: no init program to compile.

A jitted `model.init` is one XLA program with a threefry key derivation and a threefry draw for
every parameter; XLA:CPU compiles it at ~50 ms a leaf, so a 12-layer model's init costs 4-8 s
of compile before the first step (docs/performance.md), for arrays that are only normal, zeros
or ones. kdjax's initialisers therefore record what they draw (`Init`: the kind and the std) on
the parameter's logical-axis box, `jax.eval_shape(init)` reads shapes, dtypes and those records
without computing anything, and `host_params` draws the values with NumPy.

Values: a leaf's draw depends only on the seed and the leaf's path (`student/encoder/layer_0/
...`), not on the mesh, the backend, the process or the other leaves, so every process of a
multi-host run draws the same tree and a leaf keeps its value when a model grows a head. They
are not the values of the jitted `model.init` with the same seed (`kdjax.init_params` still
gives those): the same distributions, different streams.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import numpy as np

KINDS = ("normal", "zeros", "ones")


@dataclasses.dataclass(frozen=True)
class Init:
    """What an initialiser draws: `normal` (mean 0, `std`), `zeros` or `ones`."""

    kind: str
    std: float = 0.0


class Recorded(nn.LogicallyPartitioned):
    """A logically partitioned parameter that also records its initialiser (static metadata:
    it survives `jax.eval_shape`, `nn.scan`'s added layer axis and every `replace`)."""

    init: Init | None = flax.struct.field(pytree_node=False, default=None)


def recorded(init: Init, axes: tuple[str | None, ...]) -> Callable[..., Recorded]:
    """A flax initialiser `(key, shape, dtype) -> Recorded` that draws `init` with JAX (for the
    jitted path) and carries `init` and the logical `axes` on the box.

    >>> kernel_init = recorded(Init("normal", 0.02), ("embed", "mlp"))
    """
    if init.kind not in KINDS:
        raise ValueError(f"unknown initialiser kind {init.kind!r}; one of {KINDS}")
    if init.kind == "normal":
        fn = nn.initializers.normal(stddev=init.std)
    elif init.kind == "zeros":
        fn = nn.initializers.zeros_init()
    else:
        fn = nn.initializers.ones_init()

    def wrapper(*args: Any, **kwargs: Any) -> Recorded:
        return Recorded(fn(*args, **kwargs), axes, init=init)

    return wrapper


def _leaf_seed(seed: int, path: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(path.encode())])


def draw(init: Init, shape: tuple[int, ...], dtype: Any, seed: int, path: str) -> np.ndarray:
    """One leaf's values: [*shape] of `dtype`, a function of (seed, path) only."""
    if init.kind == "zeros":
        return np.zeros(shape, dtype)
    if init.kind == "ones":
        return np.ones(shape, dtype)
    rng = np.random.Generator(np.random.PCG64(_leaf_seed(seed, path)))
    values = rng.standard_normal(shape, dtype=np.float32)
    values *= np.float32(init.std)
    return values.astype(dtype, copy=False)


def host_params(boxed: Any, seed: int) -> Any:
    """Unboxed NumPy params for an abstract boxed tree (`jax.eval_shape` of an init), drawn on
    the host, in the same tree structure (empty subtrees kept); None when some leaf has no
    recorded initialiser (then the caller runs the jitted init). `boxed`: nested dicts whose
    leaves are `Recorded` boxes around `ShapeDtypeStruct`s."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=is_box)
    if not all(isinstance(x, Recorded) and x.init is not None for x in leaves):
        return None

    def one(path: tuple, box: Recorded) -> np.ndarray:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        return draw(box.init, tuple(box.value.shape), box.value.dtype, seed, name)

    return jax.tree_util.tree_map_with_path(one, boxed, is_leaf=is_box)


def train_rng(seed: int) -> np.ndarray:
    """The state's training key data, uint32[2] (a raw threefry key), from the seed."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x7472]).generate_state(2, np.uint32)

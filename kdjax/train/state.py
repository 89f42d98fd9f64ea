"""Train state (a pytree) and its sharded construction.

Built as maxtext/big_vision do: `jax.eval_shape` of the init gives the abstract state with
logical axis metadata -> partition specs -> NamedShardings on the mesh -> the real state is
created directly sharded: the params drawn on the host (`kdjax.models.host_init`) and placed
shard by shard, the optimizer state by `jax.jit(tx.init, out_shardings=...)`. Nothing is ever
materialised on one device first, so a base-size model initialises on a pod as easily as on a
laptop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from kdjax import sharding as shd
from kdjax.models import host_init
from kdjax.train.placement import place


@flax.struct.dataclass
class TrainState:
    """Everything a step updates. `rng` is raw uint32 key data (checkpoint-friendly)."""

    step: jax.Array
    params: Any  # trainable: student (+ projections), or ELECTRA disc + gen
    opt_state: Any
    rng: jax.Array
    skipped_steps: jax.Array  # total updates skipped for non-finite loss/grads
    consecutive_skips: jax.Array


def state_shardings(
    init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, mesh: Mesh,
    rules: shd.Rules, boxed: Any = None,
) -> tuple[TrainState, TrainState]:
    """(abstract unboxed state, matching NamedShardings) without allocating anything. `boxed`:
    `jax.eval_shape(init_params, key)` when the caller has it already."""
    if boxed is None:
        boxed = jax.eval_shape(init_params, jax.random.key(0))
    param_sh = shd.logical_shardings(boxed, mesh, rules)
    abstract_params = shd.unbox(boxed)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    rep = shd.replicated(mesh)
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, param_sh, transform_non_params=lambda _: rep
    )
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    abstract = TrainState(
        step=scalar, params=abstract_params, opt_state=abstract_opt,
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32), skipped_steps=scalar,
        consecutive_skips=scalar,
    )
    shardings = TrainState(
        step=rep, params=param_sh, opt_state=opt_sh, rng=rep, skipped_steps=rep,
        consecutive_skips=rep,
    )
    return abstract, shardings


def create_state(
    init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, seed: int,
    shardings: TrainState, boxed: Any = None,
) -> TrainState:
    """Initialise the state directly into its shardings (`boxed`: the init's abstract boxed
    params, when the caller has them).

    The params are drawn on the host (`host_init`: no init program to compile, the same values
    on every process and mesh) and placed shard by shard; one small jitted program builds the
    optimizer state from them (it donates them, so nothing is held twice). A model with a
    parameter whose initialiser is not recorded falls back to the jitted `init_params`.
    """
    if boxed is None:
        boxed = jax.eval_shape(init_params, jax.random.key(0))
    host = host_init.host_params(boxed, seed)
    if host is None:
        return _create_state_jitted(init_params, tx, seed, shardings)
    params = place(host, shardings.params)
    rng = place(host_init.train_rng(seed), shardings.rng)  # global arrays on every process

    def init(params: Any, rng: jax.Array) -> TrainState:
        zero = jnp.zeros((), jnp.int32)
        return TrainState(step=zero, params=params, opt_state=tx.init(params), rng=rng,
                          skipped_steps=zero, consecutive_skips=zero)

    return jax.jit(init, out_shardings=shardings, donate_argnums=(0, 1))(params, rng)


def _create_state_jitted(
    init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, seed: int,
    shardings: TrainState,
) -> TrainState:
    def init(rng: jax.Array) -> TrainState:
        init_rng, train_rng = jax.random.split(rng)
        params = nn.meta.unbox(init_params(init_rng))
        zero = jnp.zeros((), jnp.int32)
        return TrainState(
            step=zero, params=params, opt_state=tx.init(params),
            rng=jax.random.key_data(train_rng), skipped_steps=zero, consecutive_skips=zero,
        )

    return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def random_params(init_params: Callable[[jax.Array], Any], seed: int, shardings: Any,
                  boxed: Any = None) -> Any:
    """Randomly initialised params (a frozen random teacher) placed into `shardings`: drawn on
    the host like `create_state`'s, else by the jitted init."""
    if boxed is None:
        boxed = jax.eval_shape(init_params, jax.random.key(0))
    host = host_init.host_params(boxed, seed)
    if host is None:
        return jax.jit(lambda k: nn.meta.unbox(init_params(k)), out_shardings=shardings)(
            jax.random.key(seed))
    return place(host, shardings)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings (Orbax restore targets)."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )

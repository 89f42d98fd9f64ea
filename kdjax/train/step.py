"""The jitted train step: loss + grads (optionally accumulated over micro-batches), a
non-finite guard that skips the update, and the optax update."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from kdjax.train.state import TrainState

Array = jax.Array


def make_train_step(workload: Any, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum: int = 1) -> Callable:
    """`step(state, frozen, batch) -> (state, metrics)`; metrics stay on device.

    `workload`: see `kdjax.train.workloads` (loss, and loss_weight for `grad_accum > 1`).
    """

    def loss_and_grads(params: Any, frozen: Any, batch: dict, rng: Array, step: Array):
        def fn(p: Any) -> tuple[Array, dict]:
            return workload.loss(p, frozen, batch, rng, step)

        return jax.value_and_grad(fn, has_aux=True)(params)

    def train_step(state: TrainState, frozen: Any, batch: dict[str, Array]):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if grad_accum == 1:
            (loss, aux), grads = loss_and_grads(state.params, frozen, batch, rng, state.step)
        else:
            # [B, ...] -> [A, B/A, ...]; one optimizer update from the A micro-batches, each
            # weighted by `workload.loss_weight` (its real tokens): the full batch's
            # token-weighted mean loss and gradient, not the mean of micro-batch means (which
            # over-weights the tokens of short, padded micro-batches).
            # Micro-batch a is rows a, A + a, 2A + a, ...: the batch is split over the devices
            # in contiguous blocks, so every device holds its share of every micro-batch. (With
            # rows [a B/A, (a+1) B/A) each micro-batch sat on 1/A of the devices, and the TPU
            # compile showed XLA moving activations between devices in every micro-step.)
            micro = jax.tree_util.tree_map(
                lambda x: jnp.swapaxes(
                    x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]), 0, 1),
                batch,
            )

            def body(carry: Any, inputs: Any) -> tuple[Any, None]:
                i, mb = inputs
                (l_, a_), g_ = loss_and_grads(state.params, frozen, mb,
                                              jax.random.fold_in(rng, i), state.step)
                w = workload.loss_weight(mb)
                scaled = jax.tree_util.tree_map(lambda x: x * w, (l_, a_, g_))
                total, weight = carry
                return (jax.tree_util.tree_map(jnp.add, total, scaled), weight + w), None

            zeros = jax.eval_shape(
                lambda: loss_and_grads(state.params, frozen,
                                       jax.tree_util.tree_map(lambda x: x[0], micro), rng,
                                       state.step)
            )
            zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
            init = ((zeros[0][0], zeros[0][1], zeros[1]), jnp.zeros((), jnp.float32))
            ((loss, aux, grads), weight), _ = jax.lax.scan(
                body, init, (jnp.arange(grad_accum), micro))
            weight = jnp.maximum(weight, 1e-9)
            loss, aux, grads = jax.tree_util.tree_map(lambda x: x / weight, (loss, aux, grads))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite loss or gradient leaves params and optimizer state untouched.
        keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
            lambda n, o: jnp.where(finite, n, o), new, old
        )
        skipped = (~finite).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            skipped_steps=state.skipped_steps + skipped,
            consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + 1),
        )
        metrics = {
            "loss": loss, **aux, "grad_norm": grad_norm, "lr": schedule(state.step),
            "skipped_steps": new_state.skipped_steps,
            "consecutive_skips": new_state.consecutive_skips,
        }
        return new_state, metrics

    return train_step

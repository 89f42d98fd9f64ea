"""The optimizer: global-norm clip, AdamW decay mask, schedules, config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from kdjax.errors import ConfigError
from kdjax.train.optimizer import (
    clip_by_global_norm,
    decay_mask,
    learning_rate_schedule,
    make_optimizer,
)


def _grads(scale: float) -> dict:
    rng = np.random.default_rng(0)
    return {
        "dense": {"kernel": jnp.asarray(rng.normal(size=(4, 3)) * scale, jnp.float32),
                  "bias": jnp.asarray(rng.normal(size=(3,)) * scale, jnp.float32)},
        "norm": {"scale": jnp.asarray(rng.normal(size=(5,)) * scale, jnp.float32)},
    }


@pytest.mark.parametrize("scale", [0.0, 0.01, 1.0, 100.0])
def test_clip_matches_optax(scale: float) -> None:
    grads = _grads(scale)
    ours, _ = clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    ref, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=0)
    norm = float(optax.tree.norm(ours))
    assert norm == pytest.approx(min(float(optax.tree.norm(grads)), 1.0), rel=1e-6)
    if 0 < float(optax.tree.norm(grads)) < 1.0:  # below the limit: untouched, bit for bit
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(grads)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_clip_passes_non_finite_on() -> None:
    # the train step's guard discards a non-finite update; the clip must not hide it
    grads = _grads(1.0)
    grads["dense"]["bias"] = grads["dense"]["bias"].at[0].set(jnp.nan)
    out, _ = clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    assert not np.isfinite(np.asarray(out["dense"]["kernel"])).all()


def test_clip_has_no_elementwise_divide() -> None:
    # one scalar factor, then a multiply per element (which XLA fuses into the readers of the
    # clipped gradient); optax's per-element divide became a kernel per leaf on XLA:CPU
    def update(g):
        return clip_by_global_norm(1.0).update(g, optax.EmptyState())[0]

    jaxpr = jax.make_jaxpr(update)(_grads(1.0))
    divides = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "div"]
    assert divides, "the factor is a scalar divide"
    assert all(v.aval.shape == () for e in divides for v in e.outvars)
    ref = jax.make_jaxpr(lambda g: optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())[0])
    assert any(v.aval.shape != () for e in ref(_grads(1.0)).jaxpr.eqns
               if e.primitive.name == "div" for v in e.outvars)  # what this test guards against


def _train_cfg(**over) -> ml_collections.ConfigDict:
    values = dict(steps=100, warmup_steps=10, lr=1e-3, end_lr_factor=0.1, schedule="linear",
                  weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0)
    return ml_collections.ConfigDict({**values, **over})


def test_optimizer_state_layout_is_optax_chain() -> None:
    # checkpoints written with optax.clip_by_global_norm in the chain restore unchanged
    params = _grads(1.0)
    tx, _ = make_optimizer(_train_cfg())
    ref = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(optax.constant_schedule(1e-3), mask=decay_mask))
    assert (jax.tree.structure(tx.init(params)) == jax.tree.structure(ref.init(params)))


def test_optimizer_clips_before_adamw() -> None:
    params = jax.tree.map(jnp.zeros_like, _grads(1.0))
    tx, _ = make_optimizer(_train_cfg(weight_decay=0.0, warmup_steps=0, lr=1.0))
    ref = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(optax.linear_schedule(1.0, 0.1, 100), b1=0.9, b2=0.999,
                                  eps=1e-6, weight_decay=0.0, mask=decay_mask))
    grads = _grads(100.0)
    ours, _ = tx.update(grads, tx.init(params), params)
    theirs, _ = ref.update(grads, ref.init(params), params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)


def test_no_clip_when_zero() -> None:
    tx, _ = make_optimizer(_train_cfg(clip_norm=0.0))
    assert len(tx.init(_grads(1.0))) == 1  # adamw only


def test_decay_mask() -> None:
    mask = decay_mask(_grads(1.0))
    assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}}


def test_schedule_warmup_fraction_and_errors() -> None:
    sched = learning_rate_schedule(_train_cfg(warmup_steps=0.1))
    assert float(sched(0)) == 0.0
    assert float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(100)) == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="train.schedule"):
        learning_rate_schedule(_train_cfg(schedule="step"))
    with pytest.raises(ConfigError, match="train.lr"):
        make_optimizer(_train_cfg(lr=0.0))

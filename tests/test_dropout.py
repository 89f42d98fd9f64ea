"""kdjax's dropout: the counter-based hash mask (exact Threefry-2x32), its statistics, its
independence across keys and streams, inverted scaling and gradients, and what the compiled
step gets from it (no random-bits draw, one key per layer, the hash computed once per site)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.dropout import Dropout, dropout, keep_mask, key_words, threefry2x32
from kdjax.models.model import abstract_params, build_model


def test_threefry_matches_jax():
    key = jnp.array([0x12345678, 0x9ABCDEF0], jnp.uint32)
    counters = jnp.arange(64, dtype=jnp.uint32) * jnp.uint32(2654435761)
    want = np.asarray(threefry_2x32(key, counters))
    x0, x1 = threefry2x32(key, counters[:32], counters[32:])
    np.testing.assert_array_equal(np.concatenate([x0, x1]), want)


def test_key_words_typed_raw_and_wide_keys():
    typed = jax.random.key(7)
    np.testing.assert_array_equal(key_words(typed), jax.random.key_data(typed))
    np.testing.assert_array_equal(key_words(jax.random.key_data(typed)), jax.random.key_data(typed))
    wide = jax.random.key(7, impl="rbg")  # 4 words, folded to 2
    words = np.asarray(jax.random.key_data(wide))
    np.testing.assert_array_equal(key_words(wide), words[:2] ^ words[2:])


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_fraction(rate):
    mask = np.asarray(keep_mask(jax.random.key(0), (16, 4, 64, 64), rate))  # 262k draws
    std = np.sqrt(rate * (1 - rate) / mask.size)
    assert abs(mask.mean() - (1 - rate)) < 5 * std
    # no structure along any axis: every row's rate is plausible
    rows = mask.reshape(16, -1).mean(axis=1)
    assert np.all(np.abs(rows - (1 - rate)) < 6 * np.sqrt(rate * (1 - rate) / rows.size * 16))


def test_streams_keys_and_rows_are_independent():
    shape, rate = (8, 128, 64), 0.3
    p = 1 - rate
    base = np.asarray(keep_mask(jax.random.key(0), shape, rate))
    others = [
        keep_mask(jax.random.key(0), shape, rate, stream=1),
        keep_mask(jax.random.key(1), shape, rate),
    ]
    n = base.size
    for other in others:
        agree = (base == np.asarray(other)).mean()  # independent masks: p^2 + (1-p)^2
        assert abs(agree - (p * p + (1 - p) ** 2)) < 5 * np.sqrt(0.25 / n)
    assert not np.array_equal(base[0], base[1])


def test_mask_of_a_row_does_not_depend_on_the_batch_size():
    key = jax.random.key(3)
    small = np.asarray(keep_mask(key, (4, 32, 16), 0.2))
    large = np.asarray(keep_mask(key, (9, 32, 16), 0.2))
    np.testing.assert_array_equal(small, large[:4])


def test_dropout_scales_kept_values_and_its_gradient_is_the_mask():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 50, 8)), jnp.float32)
    key, rate = jax.random.key(5), 0.25
    keep = np.asarray(keep_mask(key, x.shape, rate))
    y = np.asarray(dropout(x, rate, key))
    np.testing.assert_allclose(y, np.where(keep, np.asarray(x) / (1 - rate), 0.0), rtol=1e-6)
    grad = jax.grad(lambda t: dropout(t, rate, key).sum())(x)
    np.testing.assert_allclose(np.asarray(grad), keep / (1 - rate), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(dropout(x, 0.0, key)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(dropout(x, 1.0, key)), 0.0)


def test_module_is_identity_when_deterministic_and_needs_a_key_otherwise():
    x = jnp.ones((2, 3))
    mod = Dropout(0.5)
    np.testing.assert_array_equal(mod.apply({}, x, deterministic=True), x)
    out = mod.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert set(np.unique(np.asarray(out))) <= {0.0, 2.0}
    with pytest.raises(Exception, match="dropout"):
        mod.apply({}, x, deterministic=False)


def test_bad_stream_and_oversized_arrays():
    with pytest.raises(ValueError, match="stream"):
        keep_mask(jax.random.key(0), (2, 2), 0.1, stream=4096)
    with pytest.raises(ConfigError, match="leading axis"):
        jax.eval_shape(lambda: keep_mask(jax.random.key(0), (1 << 20, 1), 0.1))


CFG = EncoderConfig(
    vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
    max_position_embeddings=16, hidden_dropout=0.1, attention_dropout=0.1,
)


def _train_loss(cfg: EncoderConfig):
    model = build_model(cfg)
    ids = jnp.ones((2, 8), jnp.int32)

    def loss(params, key):
        out = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": key})
        return jnp.sum(out.last_hidden_state**2)

    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_params(cfg))
    return loss, params


def _primitives(jaxpr) -> list[str]:
    names = [eqn.primitive.name for eqn in jaxpr.eqns]
    for sub in jax.extend.core.subjaxprs(jaxpr):
        names.extend(_primitives(sub))
    return names


def test_training_forward_draws_no_random_bits_and_one_key_per_layer():
    loss, params = _train_loss(CFG)
    jaxpr = jax.make_jaxpr(jax.grad(loss))(params, jax.random.key(0)).jaxpr
    names = _primitives(jaxpr)
    assert "random_bits" not in names and "threefry2x32" not in names
    # embeddings + one per layer (not one per dropout site: three in a layer)
    assert names.count("random_fold_in") == 1 + CFG.num_layers


def test_compiled_step_computes_each_mask_once():
    """XLA must not copy the 20-round hash into each kernel that reads a mask (forward select,
    backward select, fused reductions): one kernel per dropout site holds it."""
    loss, params = _train_loss(CFG)
    hlo = jax.jit(jax.grad(loss)).lower(params, jax.random.key(0)).compile().as_text()
    computations = re.split(r"\n(?=\S)", hlo)
    with_hash = [c for c in computations if c.count("shift-left(") >= 16]  # 20 rotations
    sites = 1 + 3 * CFG.num_layers  # embeddings; attention probs and two hidden per layer
    assert len(with_hash) == sites, [c.split("\n", 1)[0][:80] for c in with_hash]


SHARDED = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from kdjax.models.dropout import dropout
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
x = np.random.default_rng(0).normal(size=(8, 6, 10)).astype(np.float32)
key = jax.random.key(11)
one = np.asarray(jax.jit(lambda t: dropout(t, 0.3, key))(x))
spec = NamedSharding(mesh, P("data", "model", None))
f = jax.jit(lambda t: dropout(t, 0.3, key), in_shardings=spec, out_shardings=spec)
many = f(jax.device_put(x, spec))
assert len(many.sharding.device_set) == 8
np.testing.assert_array_equal(np.asarray(many), one)
print("same")
"""


def test_masks_are_the_same_on_a_sharded_mesh():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "same" in out.stdout, out.stderr[-2000:]

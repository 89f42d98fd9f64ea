"""The dense-layer matmul with the hand-written backward, and the erf-form exact GELU."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kdjax.models.dense_dot import dense_dot_general, dense_matmul
from kdjax.models.layers import activation, gelu_exact


def _autodiff_matmul(x, w):
    return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


@pytest.mark.parametrize(
    "x_shape, w_shape",
    [
        ((4, 7, 16), (16, 48)),  # in < out: dk = x^T dy
        ((4, 7, 48), (48, 16)),  # in > out: dk = (dy^T x)^T
        ((5, 12), (12, 12)),  # 2-D input, square kernel
        ((2, 3, 5, 8), (8, 6)),  # several leading axes
        ((8,), (8, 3)),  # a single vector: the kernel gradient is an outer product
    ],
)
def test_dense_matmul_value_and_grads_match_autodiff(x_shape, w_shape):
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, w_shape)
    dy = jax.random.normal(ky, x_shape[:-1] + w_shape[-1:])

    y, vjp = jax.vjp(dense_matmul, x, w)
    y_ref, vjp_ref = jax.vjp(_autodiff_matmul, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(vjp(dy), vjp_ref(dy)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dense_matmul_grads_keep_input_dtypes():
    x = jnp.ones((2, 3, 8), jnp.bfloat16)
    w = jnp.ones((8, 4), jnp.float32)
    _, vjp = jax.vjp(lambda x, w: dense_matmul(x, w.astype(jnp.bfloat16)), x, w)
    dx, dw = vjp(jnp.ones((2, 3, 4), jnp.bfloat16))
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    np.testing.assert_allclose(dw, np.full((8, 4), 6.0))


def test_dense_dot_general_passes_other_contractions_through():
    a = jax.random.normal(jax.random.key(1), (3, 4, 5))
    b = jax.random.normal(jax.random.key(2), (3, 5, 6))
    dims = (((2,), (1,)), ((0,), (0,)))  # a batched matmul is not a dense layer
    np.testing.assert_allclose(dense_dot_general(a, b, dims), lax.dot_general(a, b, dims),
                               rtol=1e-6)


def test_flax_dense_with_dense_dot_general_trains_like_the_default():
    x = jax.random.normal(jax.random.key(3), (2, 5, 16))
    ours = nn.Dense(24, dot_general=dense_dot_general)
    ref = nn.Dense(24)
    params = ref.init(jax.random.key(4), x)

    def loss(module, p):
        return jnp.sum(jnp.tanh(module.apply(p, x)) ** 2)

    g_ours = jax.jit(jax.grad(lambda p: loss(ours, p)))(params)
    g_ref = jax.jit(jax.grad(lambda p: loss(ref, p)))(params)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gelu_exact_matches_the_erfc_form_and_torchs_formula():
    x = jnp.linspace(-12.0, 12.0, 4001, dtype=jnp.float32)
    got = np.asarray(gelu_exact(x), np.float64)
    xd = np.asarray(x, np.float64)
    exact = 0.5 * xd * np.array([1.0 + math.erf(v / math.sqrt(2.0)) for v in xd])
    np.testing.assert_allclose(got, exact, atol=2e-6)
    np.testing.assert_allclose(got, jax.nn.gelu(x, approximate=False), atol=2e-6)
    g = jax.vmap(jax.grad(gelu_exact))(x)
    g_ref = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
    np.testing.assert_allclose(g, g_ref, atol=2e-6)
    assert activation("gelu") is gelu_exact


def test_gelu_exact_keeps_bf16():
    assert gelu_exact(jnp.ones((3,), jnp.bfloat16)).dtype == jnp.bfloat16

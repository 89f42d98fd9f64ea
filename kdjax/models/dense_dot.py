"""The matmul of every dense layer, with a hand-written backward pass.

`x @ kernel` for x [..., in] and kernel [in, out]. Its value is `lax.dot_general`'s; only the
backward pass differs from JAX's autodiff, and only in how the two gradient matmuls are laid
out:

  dx [..., in]  = dot_general(dy [..., out], kernel [in, out]) contracting `out`
  dk [in, out]  = dot_general(x [..., in], dy [..., out]) contracting every leading axis
                  (or its transpose dy^T x when in > out, see `_bwd`)

Autodiff's transpose rule emits the kernel gradient as a dot producing [out, in] followed by a
transpose (or a dot whose contracting axes XLA:CPU cannot hand to its fast YNNPACK/XNNPACK
kernels), so on CPU that matmul fell back to Eigen at about half speed. Writing dk directly in
[in, out] order keeps all three matmuls of a dense layer on the fast path: a 6-layer
256 -> 1024 -> 256 MLP's gradient ran 18% faster on a 2-core EPYC (see docs/performance.md). On
GPU/TPU the layouts are equivalent and the compiled code is the same up to operand order.

The gradient is exact (the same sums, accumulated in a different order), dtypes follow the
primal inputs (a bf16 activation gets a bf16 gradient, the kernel's cast handles fp32 params),
and sharding is unaffected: these are ordinary dot_generals that GSPMD partitions like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax import lax

Array = jax.Array
DimensionNumbers = tuple[tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]]


@jax.custom_vjp
def dense_matmul(x: Array, kernel: Array) -> Array:
    """`x @ kernel`: x [..., in], kernel [in, out] -> [..., out], with the layout-aware backward."""
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return dense_matmul(x, kernel), (x, kernel)


def _bwd(residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    dx = lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())))
    lead = tuple(range(x.ndim - 1))
    if x.shape[-1] > dy.shape[-1]:
        # The fast kernels need one operand transposed: transpose the narrower one (dy), e.g.
        # [tokens, 256] rather than the [tokens, 1024] GELU output of an FFN's output layer.
        dk = lax.dot_general(dy, x, ((lead, lead), ((), ()))).T
    else:
        dk = lax.dot_general(x, dy, ((lead, lead), ((), ())))
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


dense_matmul.defvjp(_fwd, _bwd)


def dense_dot_general(
    lhs: Array,
    rhs: Array,
    dimension_numbers: DimensionNumbers,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> Array:
    """A drop-in `dot_general` for `flax.linen.Dense(dot_general=...)`.

    The dense-layer contraction (lhs [..., in] . rhs [in, out], no batch axes, default precision)
    goes through `dense_matmul`; anything else is passed to `lax.dot_general` unchanged.
    """
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    is_dense = (
        tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,)
        and not lhs_batch and not rhs_batch and rhs.ndim == 2
        and precision is None and preferred_element_type is None
    )
    if is_dense:
        return dense_matmul(lhs, rhs)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)

"""Dropout whose mask comes from a counter-based hash, not a random-bits draw.

`flax.linen.Dropout` draws its mask with `jax.random.bernoulli`: a key derivation (`fold_in`)
and a random-bits array per call site. On CPU, JAX lowers each threefry as a rolled loop, so
every dropout cost XLA two `while` loops (~14 kernels: 100 of the debug student step's 947).
Here the keep decision of element `i` is Threefry-2x32 (20 rounds, the function behind
`jax.random`, bit for bit) of the counter `(stream, index of i)` under the call's key, written
as plain uint32 arithmetic: one loop-free kernel per site computes it, and the forward and
backward selects read it. A layer makes one key (`make_rng`) and gives each of its dropout
sites its own `stream`.

The mask depends on the key and the element's global index only, so it is the same on every
mesh and sharding (the index is the logical one; GSPMD partitions the iota).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from kdjax.errors import ConfigError

Array = jax.Array

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA  # Threefry's key-schedule constant
# counter word 0 = stream << _LEAD_BITS | leading index; word 1 = index within the leading slice
_LEAD_BITS = 20
_MAX_STREAMS = 1 << (32 - _LEAD_BITS)


def threefry2x32(key: Array, c0: Array, c1: Array) -> tuple[Array, Array]:
    """Threefry-2x32 (20 rounds) of counters (c0, c1) under `key`, elementwise.

    Args:
      key: uint32 [2] key words.
      c0, c1: uint32 counters (any broadcastable shapes).
    Returns:
      The two uint32 output words, each of the broadcast shape of (c0, c1). Equal to
      `jax.extend.random.threefry_2x32(key, concat([c0, c1]))` split in halves, but as plain
      integer arithmetic that XLA fuses with its consumer.
    """
    k0, k1 = key[0], key[1]
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(_PARITY))
    x0, x1 = c0 + ks[0], c1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = (x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))
            x1 = x1 ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def key_words(key: Array) -> Array:
    """uint32 [2] words of a PRNG key (typed or raw; wider implementations are folded to 2)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = jnp.asarray(key, jnp.uint32).reshape(-1)
    if words.shape[0] < 2 or words.shape[0] % 2:
        raise ValueError(f"a PRNG key has an even number of uint32 words, got {words.shape}")
    folded = words[:2]
    for i in range(2, words.shape[0], 2):
        folded = folded ^ words[i : i + 2]
    return folded


def keep_mask(key: Array, shape: tuple[int, ...], rate: float, stream: int = 0) -> Array:
    """bool mask of `shape`, True with probability 1 - `rate` (independently per element).

    Args:
      key: a PRNG key (typed or raw uint32).
      shape: mask shape, e.g. [batch, heads, length, length].
      rate: drop probability in [0, 1).
      stream: which of a key's independent masks (0 <= stream < 4096): call sites that share a
        key must use different streams.
    Returns:
      bool [*shape].
    """
    if not 0 <= stream < _MAX_STREAMS:
        raise ValueError(f"dropout stream must be in [0, {_MAX_STREAMS}), got {stream}")
    shape = tuple(int(d) for d in shape)
    lead, rest = (shape[0], shape[1:]) if shape else (1, ())
    if lead >= 1 << _LEAD_BITS or math.prod(rest) >= 1 << 32:
        raise ConfigError(
            f"dropout on an array of shape {shape}: the leading axis must be < {1 << _LEAD_BITS} "
            f"and the product of the others < 2**32"
        )
    full = shape or (1,)
    # flat index within the leading slice, and the leading index, as uint32 (no 64-bit needed)
    inner = jnp.zeros(full, jnp.uint32)
    stride = 1
    for axis in range(len(full) - 1, 0, -1):
        inner = inner + lax.broadcasted_iota(jnp.uint32, full, axis) * jnp.uint32(stride)
        stride *= full[axis]
    outer = lax.broadcasted_iota(jnp.uint32, full, 0) | jnp.uint32(stream << _LEAD_BITS)
    bits, _ = threefry2x32(key_words(key), outer, inner)
    # keep iff bits < (1 - rate) * 2**32, compared through sqrt: XLA's fusion never copies an
    # "expensive" op (sqrt is one) into several kernels, so the hash is computed once into
    # this float array and only the comparison is fused into each kernel that reads the mask
    # (without it XLA:CPU copied the 20-round hash into every forward and backward consumer:
    # 21 copies for the debug student, compile slower). Monotone, exact up to float rounding.
    level = lax.sqrt(bits.astype(jnp.float32))
    mask = level < jnp.float32(math.sqrt((1.0 - rate) * 2**32))
    return mask.reshape(shape)


def dropout(x: Array, rate: float, key: Array, stream: int = 0) -> Array:
    """Inverted dropout of `x` (any shape): kept elements scaled by 1 / (1 - rate), others 0."""
    if rate == 0.0:
        return x
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = keep_mask(key, x.shape, rate, stream)
    return lax.select(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


class Dropout(nn.Module):
    """Drop-in for `flax.linen.Dropout` (no `broadcast_dims`) with the fused hash mask.

    One key per call (`make_rng(rng_collection)`); modules with several dropout sites make one
    key and call `dropout(..., stream=i)` instead.
    """

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        """x [...] -> x [...] (unchanged when deterministic or rate == 0)."""
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.rate, self.make_rng(self.rng_collection))

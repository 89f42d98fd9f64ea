"""Inference throughput: sentences/s of a jitted, deterministic forward pass.

The measured program is what a deployed sentence classifier runs: the model's encoder
(embeddings, optional embeddings_project, every layer) plus a small classification head
([CLS] -> dense -> GELU -> labels), on a `[batch, length]` block of token ids with a full
attention mask. Compilation and `warmup` calls are excluded; each timed call ends with
`block_until_ready`, and the median over `iters` calls is reported, so one slow call (a
context switch, a GC pause) does not move the number.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.model import abstract_params, build_model

# Parameter groups of the shared encoder (everything else is a head).
ENCODER_KEYS = ("embeddings", "embeddings_project", "encoder")


def random_params(config: EncoderConfig, seed: int = 0, scale: float = 0.02) -> dict:
    """Parameters of the right shapes and dtypes, N(0, scale) on the host: the timed program
    does not depend on the values, and this needs no compiled init."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: (rng.standard_normal(a.shape) * scale).astype(a.dtype),
        abstract_params(config))


def classifier_params(config: EncoderConfig, params: Any = None, seed: int = 0) -> dict:
    """Parameters of `config` (head = classification): the encoder part of `params` when
    given (any head, or none), a random classification head on top."""
    fresh = random_params(config, seed)
    if params is None:
        return fresh
    out = dict(fresh)
    for key in ENCODER_KEYS:
        if key in params:
            out[key] = params[key]
    return out


def throughput(config: Any, params: Any = None, batch: int = 32, length: int = 128,
               warmup: int = 2, iters: int = 10, num_labels: int = 2, seed: int = 0) -> float:
    """Sentences per second of a jitted eval forward of `config`'s encoder + a classifier head.

    Args:
      config: an `EncoderConfig` (or dict / ConfigDict); its head is replaced by a
        `num_labels`-way classification head, its dtype/attention settings are kept.
      params: the model's parameters (their encoder part is used; None = random init, which
        times the same program).
      batch, length: input block `[batch, length]` (length capped at max_position_embeddings).
      warmup: untimed calls after compilation.
      iters: timed calls; the median time per call is used.
    Returns:
      batch / median seconds per call.
    """
    if batch < 1 or length < 1 or iters < 1 or warmup < 0:
        raise ConfigError(
            f"throughput needs batch, length, iters >= 1 and warmup >= 0, got batch={batch}, "
            f"length={length}, iters={iters}, warmup={warmup}"
        )
    cfg = EncoderConfig.from_any(config).replace(
        head="classification", num_labels=num_labels, remat=False
    )
    length = min(length, cfg.max_position_embeddings)
    model = build_model(cfg)
    variables = {"params": jax.device_put(classifier_params(cfg, params, seed))}
    rng = np.random.default_rng(seed)
    input_ids = jnp.asarray(rng.integers(5, cfg.vocab_size, size=(batch, length)), jnp.int32)
    attention_mask = jnp.ones((batch, length), jnp.int32)
    token_type_ids = jnp.zeros((batch, length), jnp.int32)

    @jax.jit
    def forward(variables: Any, ids: jax.Array, mask: jax.Array, types: jax.Array) -> jax.Array:
        out = model.apply(variables, ids, attention_mask=mask, token_type_ids=types,
                          deterministic=True)
        return out.logits  # [batch, num_labels]

    args = (variables, input_ids, attention_mask, token_type_ids)
    compiled = forward.lower(*args).compile()
    for _ in range(warmup):
        compiled(*args).block_until_ready()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        compiled(*args).block_until_ready()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def device_description() -> str:
    """e.g. "cpu x1" or "NVIDIA H100 80GB HBM3 x1" (the device throughput was measured on)."""
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform) or dev.platform
    return f"{kind} x{jax.local_device_count()}"

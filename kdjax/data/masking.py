"""BERT/ELECTRA dynamic masking, on device inside the jitted step (no host cost, resumable:
the masking RNG is folded from the step)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def max_predictions(length: int, prob: float) -> int:
    """Fixed number of prediction slots per row (static shape): ceil-ish of prob x length."""
    return max(1, int(round(prob * length)) + 1)


def mask_tokens(
    rng: Array,
    input_ids: Array,
    attention_mask: Array,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    prob: float = 0.15,
    mask_frac: float = 0.8,
    random_frac: float = 0.1,
    num_predictions: int | None = None,
) -> dict[str, Array]:
    """Choose ~`prob` of the real, non-special tokens of each row and corrupt them 80/10/10.

    Args:
      rng: PRNG key.
      input_ids: [B, L] int; attention_mask: [B, L] (1 = real token).
      special_ids: ids never selected ([CLS], [SEP], [PAD], ...).
      num_predictions: prediction slots per row P (default `max_predictions(L, prob)`).
    Returns:
      {"input_ids": corrupted [B, L], "mlm_positions": [B, P] int32, "mlm_mask": [B, P]
       (1 = a real prediction), "mlm_targets": [B, P] original ids at the positions}.
    """
    batch, length = input_ids.shape
    p = num_predictions or max_predictions(length, prob)
    p = min(p, length)
    k_select, k_kind, k_random = jax.random.split(rng, 3)
    candidate = attention_mask.astype(bool)
    for sid in special_ids:
        candidate &= input_ids != sid
    n_candidates = candidate.sum(axis=1)
    n_mask = jnp.clip(jnp.round(n_candidates * prob).astype(jnp.int32), 1, p)
    n_mask = jnp.minimum(n_mask, n_candidates)
    noise = jnp.where(candidate, jax.random.uniform(k_select, (batch, length)), -1.0)
    _, positions = jax.lax.top_k(noise, p)  # the p highest-noise candidates per row
    valid = jnp.arange(p)[None, :] < n_mask[:, None]
    targets = jnp.take_along_axis(input_ids, positions, axis=1)
    u = jax.random.uniform(k_kind, (batch, p))
    random_tokens = jax.random.randint(k_random, (batch, p), 0, vocab_size, input_ids.dtype)
    new = jnp.where(u < mask_frac, mask_id, jnp.where(u < mask_frac + random_frac,
                                                      random_tokens, targets))
    new = jnp.where(valid, new, targets)
    rows = jnp.arange(batch)[:, None]
    corrupted = input_ids.at[rows, positions].set(new.astype(input_ids.dtype))
    return {
        "input_ids": corrupted,
        "mlm_positions": positions.astype(jnp.int32),
        "mlm_mask": valid.astype(jnp.int32),
        "mlm_targets": targets,
    }

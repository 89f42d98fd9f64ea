"""The optimizer: AdamW (no decay on biases and LayerNorm), warmup + decay, global-norm clip."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from kdjax.errors import ConfigError

NO_DECAY = ("bias", "scale", "generator_bias")


def decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: kernels and embedding tables, not biases/LN."""

    def keep(path: tuple, _: Any) -> bool:
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", str(last)))
        return name not in NO_DECAY

    return jax.tree_util.tree_map_with_path(keep, params)


def learning_rate_schedule(cfg: Any) -> optax.Schedule:
    """Linear warmup to `train.lr`, then linear or cosine decay to `train.end_lr_factor` x lr."""
    steps = int(cfg.steps)
    warmup = int(cfg.warmup_steps)
    if isinstance(cfg.warmup_steps, float) and cfg.warmup_steps < 1:
        warmup = int(cfg.warmup_steps * steps)  # a fraction of the run
    warmup = min(warmup, steps)
    peak = float(cfg.lr)
    end = peak * float(cfg.end_lr_factor)
    kind = cfg.schedule
    decay_steps = max(1, steps - warmup)
    if kind == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif kind == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
    elif kind == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ConfigError(f"train.schedule={kind!r} is not one of linear, cosine, constant")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scales every update leaf by `min(1, max_norm / global_norm)`: `optax.clip_by_global_norm`
    up to rounding (below the limit the leaves are returned unchanged, bit for bit).

    One scalar factor and a multiply per element: XLA fuses the multiply into each kernel that
    reads the clipped gradient (AdamW's new mu, nu and param). optax's per-element divide is
    rated expensive, so on XLA:CPU the clipped gradient of every leaf became a kernel and a
    buffer of its own (one more fusion to compile per parameter leaf).
    """

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        g_norm = optax.tree.norm(updates)
        # g_norm == 0 gives inf -> 1; a non-finite norm gives a non-finite update, which the
        # train step's guard discards.
        factor = jnp.minimum(1.0, max_norm / g_norm)
        return jax.tree.map(lambda t: t * factor.astype(t.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(cfg: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, lr schedule) from the `train` config section (`config_lib.train_config`
    holds every key's default; nothing is defaulted here)."""
    if float(cfg.lr) <= 0:
        raise ConfigError(f"train.lr must be > 0, got {cfg.lr}")
    schedule = learning_rate_schedule(cfg)
    parts = []
    clip = float(cfg.clip_norm)
    if clip > 0:
        parts.append(clip_by_global_norm(clip))
    parts.append(optax.adamw(
        schedule,
        b1=float(cfg.b1),
        b2=float(cfg.b2),
        eps=float(cfg.eps),
        weight_decay=float(cfg.weight_decay),
        mask=decay_mask,
    ))
    return optax.chain(*parts), schedule

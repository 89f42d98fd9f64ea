"""Distillation losses: pure `jax.numpy`, masked, float32 accumulation, jit-safe.

Conventions shared by every loss here:

* Arguments are ``(student, teacher, ..., mask=None)``; ``mask`` is ``[batch, length]`` with
  1 (or True) for a real token and 0 for padding; ``None`` means every position is valid.
* Inputs are cast to float32 inside, so bf16 activations are accumulated in fp32.
* The result is a float32 scalar averaged over valid positions (and heads / rows / pairs /
  triplets where that applies). Every denominator is ``max(count, 1)``, so a fully-masked batch
  gives 0, never NaN.
* Padded positions are replaced by zeros with ``jnp.where`` *before* any exp/log/norm, so
  whatever padding holds (garbage, ``-1e4`` fills, even inf) changes neither the value nor the
  gradient.
* No ``stop_gradient`` is applied to the teacher: the caller computes the teacher outside the
  differentiated function (or wraps it itself).
* Shapes are checked with Python on ``.shape`` (static under ``jax.jit``); a mismatch raises
  `kdjax.errors.ShapeError` naming the loss and both shapes. Bad options raise
  `kdjax.errors.ConfigError`.
* Each loss body is wrapped in ``jax.jit`` with its non-array options (``kind``, ``window``,
  ``num_relation_heads``, ``scale_by_t2``) static: free inside a caller's jit, and one fused
  compile instead of op-by-op dispatch when called eagerly.

`LOSSES` maps each public loss name to its function so objectives can look losses up by name.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from kdjax.errors import ConfigError, ShapeError

Array = jax.Array
ArrayLike = Any  # jax.Array | np.ndarray; kept loose so numpy inputs type-check too

__all__ = [
    "LOSSES",
    "attention_kl",
    "attention_score_mse",
    "binary_kd_loss",
    "cosine_loss",
    "gather_positions",
    "hard_label_loss",
    "hidden_mse",
    "kd_loss",
    "ltr_angle",
    "ltr_distance",
    "masked_lm_kd_loss",
    "mse_logits_loss",
    "nst_mmd",
    "pooled_mse",
    "qkv_relation_kl",
    "sentence_anchor_kl",
    "sentence_relation_kl",
    "value_relation_kl",
    "wr_angle",
    "wr_distance",
]

# Finite fill for masked logits: -inf would turn fully-masked rows into NaN (inf - inf).
_NEG = -1e9
# Floor for norms (and probabilities in attention_kl): keeps 0-vectors / 0-probs NaN-free.
_EPS = 1e-12
_WIDTH_FREE_HINT = (
    "for different head counts or widths use the width-free qkv_relation_kl or the CKD "
    "relation losses wr_distance/ltr_distance"
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _f32(x: ArrayLike) -> Array:
    return jnp.asarray(x).astype(jnp.float32)


def _shape_error(name: str, student: Any, teacher: Any, what: str, hint: str = "") -> ShapeError:
    msg = f"{name}: {what}: student shape {tuple(student)} vs teacher shape {tuple(teacher)}"
    return ShapeError(f"{msg}; {hint}" if hint else msg)


def _check_ndim(name: str, x: Array, ndims: tuple[int, ...], role: str, layout: str) -> None:
    if x.ndim not in ndims:
        raise ShapeError(f"{name}: {role} must be {layout}, got shape {tuple(x.shape)}")


def _valid(mask: ArrayLike | None, shape: tuple[int, ...], name: str) -> Array:
    """Boolean validity array of `shape` from an optional 0/1 mask of exactly that shape."""
    if mask is None:
        return jnp.ones(shape, dtype=bool)
    m = jnp.asarray(mask)
    if tuple(m.shape) != tuple(shape):
        raise ShapeError(
            f"{name}: mask shape {tuple(m.shape)} does not match the expected {tuple(shape)}"
        )
    return m.astype(jnp.float32) > 0


def _zero_pad(x: Array, valid: Array) -> Array:
    """Zero the padded entries of `x` ([*valid.shape, ...]) so they cannot leak NaN/inf."""
    v = valid.reshape(valid.shape + (1,) * (x.ndim - valid.ndim))
    return jnp.where(v, x, 0.0)


def _mean_pool(x: Array, valid: Array) -> Array:
    """[B, L, D] -> [B, D]: the mean over each row's valid tokens (E5's pooling; 0 for none)."""
    count = jnp.maximum(jnp.sum(valid, axis=1, keepdims=True), 1).astype(jnp.float32)
    return jnp.sum(_zero_pad(x, valid), axis=1) / count


def _masked_mean(values: Array, valid: Array) -> Array:
    """Mean of `values` over entries where `valid` (broadcastable); 0 when nothing is valid."""
    valid = jnp.broadcast_to(valid, values.shape)
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return total / jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)


def _normalize(x: Array) -> Array:
    """x / max(||x||, eps) along the last axis; the max sits inside the sqrt so the gradient of
    a zero vector (padding, j == i differences) is finite."""
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, _EPS * _EPS))


def _row_kl(student_logits: Array, teacher_logits: Array, key_valid: Array) -> Array:
    """KL(softmax(teacher) || softmax(student)) per row over the keys where `key_valid`.

    Logits [..., N], key_valid broadcastable to them; returns [...]. A row with no valid key
    gives 0 (its logits are all the finite fill, so log_softmax stays finite).
    """
    key_valid = jnp.broadcast_to(key_valid, student_logits.shape)
    log_ps = jax.nn.log_softmax(jnp.where(key_valid, student_logits, _NEG), axis=-1)
    log_pt = jax.nn.log_softmax(jnp.where(key_valid, teacher_logits, _NEG), axis=-1)
    terms = jnp.exp(log_pt) * (log_pt - log_ps)
    return jnp.sum(jnp.where(key_valid, terms, 0.0), axis=-1)


def _temperature_ok(temperature: Any, name: str) -> None:
    if isinstance(temperature, int | float) and not temperature > 0:
        raise ConfigError(f"{name}: temperature must be > 0, got {temperature}")


def _compiled(*static: str) -> Callable[[Callable[..., Array]], Callable[..., Array]]:
    """jax.jit with the non-array options static. Inside an outer jit this is inlined; called
    eagerly it compiles one fused program per shape instead of dispatching op by op. Shape and
    option checks run at trace time (shapes are static), so errors still surface eagerly."""
    return functools.partial(jax.jit, static_argnames=static)


# --------------------------------------------------------------------------------------------
# prediction-layer losses
# --------------------------------------------------------------------------------------------


def kd_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    temperature: float | Array = 1.0,
    mask: ArrayLike | None = None,
    scale_by_t2: bool = True,
) -> Array:
    """Soft-target KD (Hinton): KL(p_t || p_s) with p = softmax(logits / T), times T².

    Args:
      student_logits, teacher_logits: [..., classes], equal shapes (e.g. [B, C] for sequence
        classification, [B, L, C] for token classification).
      temperature: softening temperature T > 0.
      mask: the leading shape of the logits ([B] or [B, L]); None = all valid.
      scale_by_t2: multiply by T² so gradient magnitudes do not shrink with T.

    Returns:
      scalar: mean KL over valid positions (× T²).
    """
    _temperature_ok(temperature, "kd_loss")
    return _kd_loss(student_logits, teacher_logits, temperature, mask, scale_by_t2)


@_compiled("scale_by_t2")
def _kd_loss(
    student_logits: Array, teacher_logits: Array, temperature: Any, mask: Any, scale_by_t2: bool
) -> Array:
    name = "kd_loss"
    s, t = _f32(student_logits), _f32(teacher_logits)
    if s.shape != t.shape:
        raise _shape_error(name, s.shape, t.shape, "logit shapes differ")
    _check_ndim(name, s, tuple(range(1, 8)), "student_logits", "[..., classes]")
    valid = _valid(mask, s.shape[:-1], name)
    temp = jnp.asarray(temperature, jnp.float32)
    s = _zero_pad(s, valid) / temp
    t = _zero_pad(t, valid) / temp
    log_ps = jax.nn.log_softmax(s, axis=-1)
    log_pt = jax.nn.log_softmax(t, axis=-1)
    p_t = jnp.exp(log_pt)
    # where(): a teacher logit of -inf (p_t = 0) must give 0, not 0 * inf.
    kl = jnp.sum(jnp.where(p_t > 0, p_t * (log_pt - log_ps), 0.0), axis=-1)
    loss = _masked_mean(kl, valid)
    return loss * temp**2 if scale_by_t2 else loss


def binary_kd_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    temperature: float | Array = 1.0,
    mask: ArrayLike | None = None,
    scale_by_t2: bool = True,
) -> Array:
    """KD for per-token sigmoid logits (ELECTRA discriminator's replaced-token detection).

    KL(Bernoulli(σ(t/T)) || Bernoulli(σ(s/T))) per token, computed from log-sigmoids.

    Args:
      student_logits, teacher_logits: [B, L] (any equal shape) of binary logits.
      temperature: T > 0.
      mask: same shape as the logits; None = all valid.
      scale_by_t2: multiply by T².

    Returns:
      scalar: mean KL over valid tokens (× T²).
    """
    _temperature_ok(temperature, "binary_kd_loss")
    return _binary_kd_loss(student_logits, teacher_logits, temperature, mask, scale_by_t2)


@_compiled("scale_by_t2")
def _binary_kd_loss(
    student_logits: Array, teacher_logits: Array, temperature: Any, mask: Any, scale_by_t2: bool
) -> Array:
    name = "binary_kd_loss"
    s, t = _f32(student_logits), _f32(teacher_logits)
    if s.shape != t.shape:
        raise _shape_error(name, s.shape, t.shape, "logit shapes differ")
    valid = _valid(mask, s.shape, name)
    temp = jnp.asarray(temperature, jnp.float32)
    s = jnp.where(valid, s, 0.0) / temp
    t = jnp.where(valid, t, 0.0) / temp
    # log σ(x) and log(1 - σ(x)) = log σ(-x), both stable for large |x|.
    log_ps1, log_ps0 = jax.nn.log_sigmoid(s), jax.nn.log_sigmoid(-s)
    log_pt1, log_pt0 = jax.nn.log_sigmoid(t), jax.nn.log_sigmoid(-t)
    pt1, pt0 = jnp.exp(log_pt1), jnp.exp(log_pt0)
    # where(): a saturated teacher (p = 0 on one side) must give 0, not 0 * inf.
    kl = jnp.where(pt1 > 0, pt1 * (log_pt1 - log_ps1), 0.0) + jnp.where(
        pt0 > 0, pt0 * (log_pt0 - log_ps0), 0.0
    )
    loss = _masked_mean(kl, valid)
    return loss * temp**2 if scale_by_t2 else loss


@_compiled()
def mse_logits_loss(
    student: ArrayLike, teacher: ArrayLike, mask: ArrayLike | None = None
) -> Array:
    """MSE between student and teacher predictions (regression heads, e.g. KorSTS).

    Args:
      student, teacher: equal shapes, [B], [B, 1], [B, C] or [B, L, C].
      mask: a leading prefix of that shape ([B] or [B, L]); None = all valid.

    Returns:
      scalar: squared error averaged over the trailing (non-mask) axes, then over valid
      positions.
    """
    name = "mse_logits_loss"
    s, t = _f32(student), _f32(teacher)
    if s.shape != t.shape:
        raise _shape_error(name, s.shape, t.shape, "shapes differ")
    if mask is None:
        valid = jnp.ones(s.shape[:1], bool)
    else:
        mshape = tuple(jnp.shape(mask))
        if tuple(s.shape[: len(mshape)]) != mshape:
            raise ShapeError(f"{name}: mask shape {mshape} is not a prefix of {tuple(s.shape)}")
        valid = _valid(mask, mshape, name)
    sq = (_zero_pad(s, valid) - _zero_pad(t, valid)) ** 2
    per_pos = jnp.mean(sq.reshape(valid.shape + (-1,)), axis=-1)
    return _masked_mean(per_pos, valid)


def gather_positions(x: ArrayLike, positions: ArrayLike) -> Array:
    """Gather rows of `x` [B, L, ...] at `positions` [B, P] (ints) -> [B, P, ...].

    Indices are clipped into [0, L-1] (padding slots often hold -1 or 0), so the result is
    always finite; callers mask invalid slots.
    """
    x = jnp.asarray(x)
    pos = jnp.clip(jnp.asarray(positions).astype(jnp.int32), 0, x.shape[1] - 1)
    idx = pos.reshape(pos.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def masked_lm_kd_loss(
    student_hidden: ArrayLike,
    teacher_hidden: ArrayLike,
    student_logits_fn: Callable[[Array], Array],
    teacher_logits_fn: Callable[[Array], Array],
    positions: ArrayLike,
    temperature: float | Array = 1.0,
    mask: ArrayLike | None = None,
    scale_by_t2: bool = True,
) -> Array:
    """Vocabulary-sized KD evaluated only at the masked (MLM) positions.

    Gathers the P prediction positions from the hidden states *before* projecting to the
    vocabulary, so only [B, P, V] logits exist, never [B, L, V].

    Args:
      student_hidden: [B, L, D_s] hidden states entering the student's MLM head.
      teacher_hidden: [B, L, D_t] hidden states entering the teacher's MLM head.
      student_logits_fn: maps [B, P, D_s] -> [B, P, V] (e.g. a closure over generator-head
        params); teacher_logits_fn: [B, P, D_t] -> [B, P, V]. Same V on both sides.
      positions: [B, P] integer token indices of the masked positions.
      temperature: T > 0.
      mask: [B, P] validity of each entry of `positions` (1 = a real masked token, 0 = padding
        of the position list); None = all valid.
      scale_by_t2: multiply by T².

    Returns:
      scalar: `kd_loss` over the valid gathered positions.
    """
    name = "masked_lm_kd_loss"
    sh, th = jnp.asarray(student_hidden), jnp.asarray(teacher_hidden)
    _check_ndim(name, sh, (3,), "student_hidden", "[B, L, D]")
    _check_ndim(name, th, (3,), "teacher_hidden", "[B, L, D]")
    if sh.shape[:2] != th.shape[:2]:
        raise _shape_error(name, sh.shape, th.shape, "batch/length differ")
    pos = jnp.asarray(positions)
    if pos.ndim != 2 or pos.shape[0] != sh.shape[0]:
        raise ShapeError(f"{name}: positions must be [B, P] with B={sh.shape[0]}, got {pos.shape}")
    valid = _valid(mask, tuple(pos.shape), name)
    s_logits = student_logits_fn(gather_positions(sh, pos))
    t_logits = teacher_logits_fn(gather_positions(th, pos))
    return kd_loss(s_logits, t_logits, temperature, mask=valid, scale_by_t2=scale_by_t2)


@_compiled("kind")
def hard_label_loss(
    logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None, kind: str = "ce"
) -> Array:
    """Supervised loss on gold labels (the α-weighting with KD is done by the objective).

    Args:
      logits: kind="ce": [..., C]; kind="mse": same shape as labels, or labels.shape + (1,);
        kind="bce": same shape as labels (one logit per position, e.g. ELECTRA RTD [B, L]).
      labels: kind="ce": integer class ids [...]; negative ids (HF's -100) are ignored.
        kind="mse": float targets. kind="bce": 0/1 targets.
      mask: labels' shape; None = all valid.
      kind: "ce" | "mse" | "bce".

    Returns:
      scalar: mean loss over valid positions.
    """
    name = "hard_label_loss"
    x = _f32(logits)
    y = jnp.asarray(labels)
    valid = _valid(mask, tuple(y.shape), name)
    if kind == "ce":
        if tuple(x.shape[:-1]) != tuple(y.shape):
            raise ShapeError(f"{name}: ce needs logits [..., C] over labels [...], got logits "
                             f"{tuple(x.shape)} and labels {tuple(y.shape)}")
        y = y.astype(jnp.int32)
        valid = valid & (y >= 0)
        log_p = jax.nn.log_softmax(_zero_pad(x, valid), axis=-1)
        idx = jnp.clip(y, 0, x.shape[-1] - 1)[..., None]
        nll = -jnp.take_along_axis(log_p, idx, axis=-1)[..., 0]
        return _masked_mean(nll, valid)
    if kind in ("mse", "bce"):
        if x.ndim == y.ndim + 1 and x.shape[-1] == 1:
            x = x[..., 0]
        if tuple(x.shape) != tuple(y.shape):
            raise ShapeError(f"{name}: {kind} needs logits shaped like labels, got logits "
                             f"{tuple(x.shape)} and labels {tuple(y.shape)}")
        x = jnp.where(valid, x, 0.0)
        yf = jnp.where(valid, y.astype(jnp.float32), 0.0)
        if kind == "mse":
            per = (x - yf) ** 2
        else:
            per = -(yf * jax.nn.log_sigmoid(x) + (1.0 - yf) * jax.nn.log_sigmoid(-x))
        return _masked_mean(per, valid)
    raise ConfigError(f"{name}: unknown kind {kind!r}; expected one of 'ce', 'mse', 'bce'")


# --------------------------------------------------------------------------------------------
# representation losses (equal widths)
# --------------------------------------------------------------------------------------------


def _check_same_hidden(name: str, s: Array, t: Array) -> None:
    _check_ndim(name, s, (3,), "student_h", "[B, L, D]")
    _check_ndim(name, t, (3,), "teacher_h", "[B, L, D]")
    if s.shape[:2] != t.shape[:2]:
        raise _shape_error(name, s.shape, t.shape, "batch/length differ")
    if s.shape != t.shape:
        raise _shape_error(
            name, s.shape, t.shape, "hidden widths differ",
            "add a learned projection from the student width to the teacher width before "
            f"this loss, or {_WIDTH_FREE_HINT}",
        )


@_compiled()
def hidden_mse(student_h: ArrayLike, teacher_h: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """TinyBERT hidden-state MSE.

    Args:
      student_h, teacher_h: [B, L, D], equal D (project the student first if widths differ).
      mask: [B, L].

    Returns:
      scalar: squared error averaged over D and valid tokens.
    """
    name = "hidden_mse"
    s, t = _f32(student_h), _f32(teacher_h)
    _check_same_hidden(name, s, t)
    valid = _valid(mask, s.shape[:2], name)
    per_tok = jnp.mean((_zero_pad(s, valid) - _zero_pad(t, valid)) ** 2, axis=-1)
    return _masked_mean(per_tok, valid)


@_compiled()
def cosine_loss(student_h: ArrayLike, teacher_h: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """DistilBERT's alpha_cos term: mean over valid tokens of 1 - cos(h_s, h_t).

    Args:
      student_h, teacher_h: [B, L, D], equal D.
      mask: [B, L].

    Returns:
      scalar in [0, 2].
    """
    name = "cosine_loss"
    s, t = _f32(student_h), _f32(teacher_h)
    _check_same_hidden(name, s, t)
    valid = _valid(mask, s.shape[:2], name)
    cos = jnp.sum(_normalize(_zero_pad(s, valid)) * _normalize(_zero_pad(t, valid)), axis=-1)
    return _masked_mean(1.0 - cos, valid)


# --------------------------------------------------------------------------------------------
# attention losses (equal head counts and lengths)
# --------------------------------------------------------------------------------------------


def _check_attention(name: str, s: Array, t: Array) -> None:
    _check_ndim(name, s, (4,), "student", "[B, H, L, L]")
    _check_ndim(name, t, (4,), "teacher", "[B, H, L, L]")
    if s.shape != t.shape:
        raise _shape_error(name, s.shape, t.shape, "attention shapes differ", _WIDTH_FREE_HINT)
    if s.shape[2] != s.shape[3]:
        raise ShapeError(f"{name}: attention must be [B, H, L, L], got {tuple(s.shape)}")


def _pair_valid(valid: Array) -> Array:
    """[B, L] token validity -> [B, 1, L, L] (query, key) validity."""
    return (valid[:, :, None] & valid[:, None, :])[:, None]


@_compiled()
def attention_score_mse(
    student_scores: ArrayLike, teacher_scores: ArrayLike, mask: ArrayLike | None = None
) -> Array:
    """TinyBERT attention transfer on pre-softmax scores.

    Padded query rows and key columns are excluded outright (rather than compared through
    the additive -1e4 fill).

    Args:
      student_scores, teacher_scores: [B, H, L, L] pre-softmax scores, equal shapes.
      mask: [B, L].

    Returns:
      scalar: squared error averaged over heads and valid (query, key) pairs.
    """
    name = "attention_score_mse"
    s, t = _f32(student_scores), _f32(teacher_scores)
    _check_attention(name, s, t)
    pair = _pair_valid(_valid(mask, (s.shape[0], s.shape[2]), name))
    sq = (jnp.where(pair, s, 0.0) - jnp.where(pair, t, 0.0)) ** 2
    return _masked_mean(sq, pair)


@_compiled()
def attention_kl(
    student_probs: ArrayLike,
    teacher_probs: ArrayLike,
    mask: ArrayLike | None = None,
    eps: float = _EPS,
) -> Array:
    """MiniLM attention-distribution transfer: KL(teacher row || student row).

    Args:
      student_probs, teacher_probs: [B, H, L, L] post-softmax attention, equal shapes.
      mask: [B, L]; padded keys are dropped from each row's sum, padded query rows from the
        average. Rows are not renormalised (the model's softmax already put ~0 mass there).
      eps: probabilities are clipped to >= eps before the log.

    Returns:
      scalar: KL summed over valid keys, averaged over heads and valid query rows.
    """
    name = "attention_kl"
    s, t = _f32(student_probs), _f32(teacher_probs)
    _check_attention(name, s, t)
    valid = _valid(mask, (s.shape[0], s.shape[2]), name)
    pair = _pair_valid(valid)
    s = jnp.where(pair, s, 1.0)
    t = jnp.where(pair, t, 1.0)
    terms = t * (jnp.log(jnp.maximum(t, eps)) - jnp.log(jnp.maximum(s, eps)))
    kl = jnp.sum(jnp.where(pair, terms, 0.0), axis=-1)  # [B, H, L]
    return _masked_mean(kl, valid[:, None, :])


# --------------------------------------------------------------------------------------------
# self-relation losses (MiniLM / MiniLMv2)
# --------------------------------------------------------------------------------------------


def _self_relation_kl(s: Array, t: Array, valid: Array) -> Array:
    """s [B, A, L, d_s], t [B, A, L, d_t], valid [B, L] -> mean over heads and valid rows of
    KL(softmax(t tᵀ/√d_t) || softmax(s sᵀ/√d_s)) over valid keys."""
    s = _zero_pad(s.transpose(0, 2, 1, 3), valid).transpose(0, 2, 1, 3)
    t = _zero_pad(t.transpose(0, 2, 1, 3), valid).transpose(0, 2, 1, 3)
    s_logits = jnp.einsum("bald,bamd->balm", s, s) / math.sqrt(s.shape[-1])
    t_logits = jnp.einsum("bald,bamd->balm", t, t) / math.sqrt(t.shape[-1])
    kl = _row_kl(s_logits, t_logits, valid[:, None, None, :])  # [B, A, L]
    return _masked_mean(kl, valid[:, None, :])


@_compiled()
def value_relation_kl(
    student_v: ArrayLike, teacher_v: ArrayLike, mask: ArrayLike | None = None
) -> Array:
    """MiniLM value-relation transfer.

    Per head: softmax(V Vᵀ / √d_head) over valid keys, KL(teacher || student) per valid row.

    Args:
      student_v: [B, H, L, d_s] per-head values; teacher_v: [B, H, L, d_t]. Head counts must
        match (use `qkv_relation_kl` otherwise); head dims may differ.
      mask: [B, L].

    Returns:
      scalar: averaged over heads and valid rows.
    """
    name = "value_relation_kl"
    s, t = _f32(student_v), _f32(teacher_v)
    _check_ndim(name, s, (4,), "student_v", "[B, H, L, d]")
    _check_ndim(name, t, (4,), "teacher_v", "[B, H, L, d]")
    if s.shape[:3] != t.shape[:3]:
        raise _shape_error(
            name, s.shape, t.shape, "batch/heads/length differ",
            "for different head counts use the width-free qkv_relation_kl",
        )
    return _self_relation_kl(s, t, _valid(mask, (s.shape[0], s.shape[2]), name))


def _to_relation_heads(name: str, x: Array, num_heads: int, role: str) -> Array:
    """[B, H, L, d] or [B, L, D] -> [B, A, L, D/A]."""
    _check_ndim(name, x, (3, 4), role, "[B, H, L, d] or [B, L, D]")
    if x.ndim == 4:  # concatenate the attention heads back to [B, L, H*d]
        b, h, seq, d = x.shape
        x = x.transpose(0, 2, 1, 3).reshape(b, seq, h * d)
    b, seq, width = x.shape
    if width % num_heads:
        raise ShapeError(
            f"{name}: {role} width {width} (shape {tuple(x.shape)}) is not divisible by "
            f"num_relation_heads={num_heads}; pick a count dividing both widths"
        )
    return x.reshape(b, seq, num_heads, width // num_heads).transpose(0, 2, 1, 3)


@_compiled("num_relation_heads")
def qkv_relation_kl(
    student_x: ArrayLike,
    teacher_x: ArrayLike,
    mask: ArrayLike | None = None,
    num_relation_heads: int = 8,
) -> Array:
    """MiniLMv2 multi-head self-attention relation transfer (used for Q-Q, K-K and V-V).

    Heads are concatenated to [B, L, D] and re-split into A_r relation heads of size D/A_r on
    each side independently, so teacher and student may differ in head count and width.

    Args:
      student_x: [B, H_s, L, d_s] or [B, L, D_s]; teacher_x: [B, H_t, L, d_t] or [B, L, D_t].
      mask: [B, L].
      num_relation_heads: A_r; must divide both widths. The default 8 divides every common
        width (256, 312, 384, 512, 768, 1024); MiniLMv2 used 12 for base and 48 for large
        teachers.

    Returns:
      scalar: KL(teacher || student) of softmax(X Xᵀ/√d_r) rows, averaged over relation heads
      and valid rows.
    """
    name = "qkv_relation_kl"
    if isinstance(num_relation_heads, bool) or not isinstance(num_relation_heads, int) or (
        num_relation_heads < 1
    ):
        raise ConfigError(f"{name}: num_relation_heads must be a positive int, "
                          f"got {num_relation_heads!r}")
    s = _to_relation_heads(name, _f32(student_x), num_relation_heads, "student")
    t = _to_relation_heads(name, _f32(teacher_x), num_relation_heads, "teacher")
    if s.shape[0] != t.shape[0] or s.shape[2] != t.shape[2]:
        raise _shape_error(name, jnp.shape(student_x), jnp.shape(teacher_x),
                           "batch/length differ")
    return _self_relation_kl(s, t, _valid(mask, (s.shape[0], s.shape[2]), name))


# --------------------------------------------------------------------------------------------
# CKD word relation (WR) and layer-transforming relation (LTR), NST/MMD
# --------------------------------------------------------------------------------------------


def _check_tokens(name: str, s: Array, t: Array) -> None:
    _check_ndim(name, s, (3,), "student_h", "[B, L, D]")
    _check_ndim(name, t, (3,), "teacher_h", "[B, L, D]")
    if s.shape[:2] != t.shape[:2]:
        raise _shape_error(name, s.shape, t.shape, "batch/length differ")


def _distance_relation_kl(s: Array, t: Array, row_valid: Array) -> Array:
    """Per set of N vectors: cosine-similarity rows, diagonal and invalid members excluded,
    softmax, KL(teacher || student). s [..., N, d_s], t [..., N, d_t], row_valid [..., N]
    -> per-row KL [..., N] (0 where a row has no valid off-diagonal key)."""
    n = s.shape[-2]
    s_sim = jnp.einsum("...id,...jd->...ij", _normalize(s), _normalize(s))
    t_sim = jnp.einsum("...id,...jd->...ij", _normalize(t), _normalize(t))
    key_valid = row_valid[..., :, None] & row_valid[..., None, :] & ~jnp.eye(n, dtype=bool)
    return _row_kl(s_sim, t_sim, key_valid)


@_compiled()
def wr_distance(student_h: ArrayLike, teacher_h: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """CKD word relation, distance-wise (pairwise).

    Cosine similarities between tokens of the same layer [B, L, L], diagonal and padding
    excluded, row softmax, KL(teacher || student) per row.

    Args:
      student_h: [B, L, D_s]; teacher_h: [B, L, D_t] (widths may differ).
      mask: [B, L].

    Returns:
      scalar: averaged over valid rows (a row with no valid off-diagonal key counts as 0).
      (CKD's code divides the summed KL by the number of valid pairs instead.)
    """
    name = "wr_distance"
    s, t = _f32(student_h), _f32(teacher_h)
    _check_tokens(name, s, t)
    valid = _valid(mask, s.shape[:2], name)
    kl = _distance_relation_kl(_zero_pad(s, valid), _zero_pad(t, valid), valid)
    return _masked_mean(kl, valid)


@_compiled("temperature")
def sentence_relation_kl(student_h: ArrayLike, teacher_h: ArrayLike,
                         mask: ArrayLike | None = None,
                         temperature: float | Array = 0.05) -> Array:
    """Sentence relation: the nearest-neighbour structure of a batch's sentence embeddings.

    Each example's sentence embedding is its mean over valid tokens (E5's pooling); the
    cosine similarities between the batch's sentences, divided by `temperature`, diagonal
    excluded, row softmax, KL(teacher || student) per sentence. Sentence encoders such as
    multilingual-E5 put every sentence at cosine ~0.84 of every other (std ~0.03), so
    token-level MSE barely sees the small differences that decide which sentence is nearest;
    the temperature makes them count.

    Args:
      student_h: [B, L, D_s]; teacher_h: [B, L, D_t] (widths may differ).
      mask: [B, L].
      temperature: > 0; the similarity scale (0.05: a 0.03 difference in cosine is a factor of
        1.8 in probability).

    Returns:
      scalar: averaged over the sentences with a valid token (0 for a batch of one).
    """
    name = "sentence_relation_kl"
    _temperature_ok(temperature, name)
    s, t = _f32(student_h), _f32(teacher_h)
    _check_tokens(name, s, t)
    valid = _valid(mask, s.shape[:2], name)
    ps, pt = _mean_pool(s, valid), _mean_pool(t, valid)  # [B, D_s], [B, D_t]
    rows = jnp.any(valid, axis=1)  # [B]
    n = ps.shape[0]
    key_valid = rows[:, None] & rows[None, :] & ~jnp.eye(n, dtype=bool)
    s_sim = _normalize(ps) @ _normalize(ps).T / temperature
    t_sim = _normalize(pt) @ _normalize(pt).T / temperature
    return _masked_mean(_row_kl(s_sim, t_sim, key_valid), rows)


@_compiled("temperature")
def sentence_anchor_kl(student_h: ArrayLike, teacher_h: ArrayLike,
                       mask: ArrayLike | None = None,
                       temperature: float | Array = 0.05) -> Array:
    """Sentences placed among the teacher's: the batch's teacher sentences as anchors (SEED,
    Fang et al. 2021, with the batch for its queue).

    Each example's sentence embedding is its mean over valid tokens (E5's pooling). For
    sentence i, the cosines of the student's embedding to every teacher embedding j of the
    batch (j = i included), divided by `temperature`, row softmax; the target is the same row
    from the teacher's own embedding; KL(teacher || student) per sentence. Where
    `sentence_relation_kl` compares the student with itself (rotation-free: a rotated space
    scores 0), this compares it with the teacher's space: sentence i must sit nearer teacher i
    than its neighbours do, and among them where the teacher puts it.

    Args:
      student_h, teacher_h: [B, L, D], equal D.
      mask: [B, L].
      temperature: > 0; the similarity scale (0.05, as in `sentence_relation_kl`).

    Returns:
      scalar >= 0: averaged over the sentences with a valid token (0 when none has one).
    """
    name = "sentence_anchor_kl"
    _temperature_ok(temperature, name)
    s, t = _f32(student_h), _f32(teacher_h)
    _check_same_hidden(name, s, t)
    valid = _valid(mask, s.shape[:2], name)
    ps, pt = _normalize(_mean_pool(s, valid)), _normalize(_mean_pool(t, valid))  # [B, D]
    rows = jnp.any(valid, axis=1)  # [B]
    key_valid = rows[:, None] & rows[None, :]
    return _masked_mean(_row_kl(ps @ pt.T / temperature, pt @ pt.T / temperature, key_valid),
                        rows)


def pooled_mse(student_h: ArrayLike, teacher_h: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """Sentence-embedding MSE (Reimers & Gurevych 2020, distilling a sentence encoder): the
    squared distance between the student's and the teacher's mean over valid tokens (E5's
    pooling), mean over the feature axis, averaged over the sentences with a valid token.

    Where `sentence_relation_kl` matches who is near whom, this matches where each sentence
    is: the two together pin the student's embedding space to the teacher's.

    Args:
      student_h, teacher_h: [B, L, D], equal D.
      mask: [B, L].

    Returns:
      scalar >= 0 (0 for a batch with no valid token).
    """
    name = "pooled_mse"
    s, t = _f32(student_h), _f32(teacher_h)
    _check_same_hidden(name, s, t)
    valid = _valid(mask, s.shape[:2], name)
    diff = _mean_pool(s, valid) - _mean_pool(t, valid)
    return _masked_mean(jnp.mean(jnp.square(diff), axis=-1), jnp.any(valid, axis=1))


def _angle_potentials(center: Array, others: Array) -> Array:
    """cos of the angle at `center` [..., d] between `others` [..., N, d] -> [..., N, N]."""
    e = _normalize(others - center[..., None, :])
    return jnp.einsum("...jd,...kd->...jk", e, e)


@_compiled("window")
def wr_angle(
    student_h: ArrayLike,
    teacher_h: ArrayLike,
    mask: ArrayLike | None = None,
    window: int | None = None,
) -> Array:
    """CKD word relation, angle-wise (triplets).

    Potential of (i, j, k) = <normalize(h_j - h_i), normalize(h_k - h_i)> (cosine of the angle
    at i); loss = squared difference of student and teacher potentials over valid triplets
    (i, j, k all real tokens, j != i, k != i).

    Args:
      student_h: [B, L, D_s]; teacher_h: [B, L, D_t] (widths may differ).
      mask: [B, L].
      window: None = all triplets (O(B·L²·D) memory for the differences, O(B·L³) for the
        potentials). An int w >= 1 restricts j, k to |i-j| <= w, |i-k| <= w and only ever
        builds [B, L, 2w+1, D] / [B, L, 2w+1, 2w+1] (O(B·L·w²)); w >= L-1 equals the full
        version. (CKD's `window` is the odd window size 2w+1; here it is the radius w.)

    Returns:
      scalar: mean squared potential difference over valid triplets.
    """
    name = "wr_angle"
    s, t = _f32(student_h), _f32(teacher_h)
    _check_tokens(name, s, t)
    valid = _valid(mask, s.shape[:2], name)
    s, t = _zero_pad(s, valid), _zero_pad(t, valid)
    seq = s.shape[1]
    if window is None:
        s_pot = _angle_potentials(s, jnp.broadcast_to(s[:, None], (s.shape[0], seq) + s.shape[1:]))
        t_pot = _angle_potentials(t, jnp.broadcast_to(t[:, None], (t.shape[0], seq) + t.shape[1:]))
        not_i = ~jnp.eye(seq, dtype=bool)  # [i, j]
        other = valid[:, None, :] & not_i[None]  # [B, i, j]: j real and != i
        trip = valid[:, :, None, None] & other[:, :, :, None] & other[:, :, None, :]
        return _masked_mean((s_pot - t_pot) ** 2, trip)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"{name}: window must be None or an int >= 1, got {window!r}")
    w = min(window, max(seq - 1, 1))  # a wider window adds only out-of-range slots
    offsets = jnp.arange(-w, w + 1)
    idx = jnp.arange(seq)[:, None] + offsets[None, :]  # [L, W] neighbour indices
    in_range = (idx >= 0) & (idx < seq) & (offsets[None, :] != 0)
    idx = jnp.clip(idx, 0, seq - 1)  # out-of-range slots are marked invalid just above
    other = valid[:, idx] & in_range[None]  # [B, L, W]
    s_pot = _angle_potentials(s, s[:, idx])  # [B, L, W, W]
    t_pot = _angle_potentials(t, t[:, idx])
    trip = valid[:, :, None, None] & other[:, :, :, None] & other[:, :, None, :]
    return _masked_mean((s_pot - t_pot) ** 2, trip)


def _check_layers(name: str, s: Array, t: Array) -> None:
    _check_ndim(name, s, (4,), "student_hs", "[K, B, L, D]")
    _check_ndim(name, t, (4,), "teacher_hs", "[K, B, L, D]")
    if s.shape[:3] != t.shape[:3]:
        raise _shape_error(name, s.shape, t.shape, "layers/batch/length differ")
    if s.shape[0] < 2:
        raise ShapeError(f"{name}: needs K >= 2 mapped layers, got shape {tuple(s.shape)}")


@_compiled()
def ltr_distance(
    student_hs: ArrayLike, teacher_hs: ArrayLike, mask: ArrayLike | None = None
) -> Array:
    """CKD layer-transforming relation, distance-wise.

    For each token, cosine similarities between its K mapped layer representations [K, K],
    diagonal excluded, row softmax, KL(teacher || student) per row.

    Args:
      student_hs: [K, B, L, D_s]; teacher_hs: [K, B, L, D_t] (K >= 2 mapped layers, widths
        may differ).
      mask: [B, L].

    Returns:
      scalar: averaged over the K rows and valid tokens.
    """
    name = "ltr_distance"
    s, t = _f32(student_hs), _f32(teacher_hs)
    _check_layers(name, s, t)
    valid = _valid(mask, s.shape[1:3], name)
    s = _zero_pad(s.transpose(1, 2, 0, 3), valid)  # [B, L, K, D]
    t = _zero_pad(t.transpose(1, 2, 0, 3), valid)
    rows = jnp.broadcast_to(valid[..., None], s.shape[:3])
    kl = _distance_relation_kl(s, t, rows)  # [B, L, K]
    return _masked_mean(kl, rows)


@_compiled()
def ltr_angle(student_hs: ArrayLike, teacher_hs: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """CKD layer-transforming relation, angle-wise.

    For each token, triplets (i, j, k) over its K layer representations with j != i, k != i;
    potential = cosine of the angle at layer i; squared student/teacher difference.

    Args:
      student_hs: [K, B, L, D_s]; teacher_hs: [K, B, L, D_t] (K >= 2; K >= 3 is needed for
        a non-trivial angle: with K = 2 every potential is 1).
      mask: [B, L].

    Returns:
      scalar: mean over valid tokens and their K·(K-1)² triplets.
    """
    name = "ltr_angle"
    s, t = _f32(student_hs), _f32(teacher_hs)
    _check_layers(name, s, t)
    valid = _valid(mask, s.shape[1:3], name)
    s = _zero_pad(s.transpose(1, 2, 0, 3), valid)  # [B, L, K, D]
    t = _zero_pad(t.transpose(1, 2, 0, 3), valid)
    k = s.shape[2]
    bcast = lambda x: jnp.broadcast_to(x[..., None, :, :], x.shape[:2] + (k,) + x.shape[2:])
    s_pot = _angle_potentials(s, bcast(s))  # [B, L, K(i), K(j), K(k)]
    t_pot = _angle_potentials(t, bcast(t))
    not_i = ~jnp.eye(k, dtype=bool)
    trip = valid[..., None, None, None] & not_i[:, :, None] & not_i[:, None, :]
    return _masked_mean((s_pot - t_pot) ** 2, trip)


@_compiled()
def nst_mmd(student_h: ArrayLike, teacher_h: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """Width-free NST/MMD-style similarity-matrix matching (TextBrewer's `mmd` loss, variant).

    Each token vector is L2-normalised, the [L, L] cosine-similarity matrix is built within the
    student and within the teacher, and their squared difference is averaged over valid
    (i, j) pairs. TextBrewer's `mmd_loss` instead divides the raw Gram matrix by the width and
    takes two states per side; normalising makes the scale independent of the widths.

    Args:
      student_h: [B, L, D_s]; teacher_h: [B, L, D_t] (widths may differ).
      mask: [B, L].

    Returns:
      scalar: mean squared difference over valid pairs (diagonal included).
    """
    name = "nst_mmd"
    s, t = _f32(student_h), _f32(teacher_h)
    _check_tokens(name, s, t)
    valid = _valid(mask, s.shape[:2], name)
    s, t = _normalize(_zero_pad(s, valid)), _normalize(_zero_pad(t, valid))
    diff = jnp.einsum("bid,bjd->bij", s, s) - jnp.einsum("bid,bjd->bij", t, t)
    pair = valid[:, :, None] & valid[:, None, :]
    return _masked_mean(diff**2, pair)


LOSSES: dict[str, Callable[..., Array]] = {
    "kd_loss": kd_loss,
    "binary_kd_loss": binary_kd_loss,
    "mse_logits_loss": mse_logits_loss,
    "masked_lm_kd_loss": masked_lm_kd_loss,
    "hard_label_loss": hard_label_loss,
    "hidden_mse": hidden_mse,
    "cosine_loss": cosine_loss,
    "attention_score_mse": attention_score_mse,
    "attention_kl": attention_kl,
    "value_relation_kl": value_relation_kl,
    "qkv_relation_kl": qkv_relation_kl,
    "wr_distance": wr_distance,
    "wr_angle": wr_angle,
    "sentence_relation_kl": sentence_relation_kl,
    "sentence_anchor_kl": sentence_anchor_kl,
    "pooled_mse": pooled_mse,
    "ltr_distance": ltr_distance,
    "ltr_angle": ltr_angle,
    "nst_mmd": nst_mmd,
}

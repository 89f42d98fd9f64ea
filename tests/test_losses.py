"""Distillation losses: NumPy references written from the formulas, masking, NaN-safety, jit."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.distill import losses as L
from kdjax.errors import ConfigError, ShapeError

B, SEQ = 2, 5
# Non-contiguous holes too, so windowed gathers and key masks are exercised off the edges.
MASK = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], dtype=np.int32)
EPS = 1e-12


# ------------------------------------------------------------------------------------------
# NumPy references (float64, explicit loops)
# ------------------------------------------------------------------------------------------


def _ones(mask, shape):
    return np.ones(shape, dtype=bool) if mask is None else np.asarray(mask).astype(bool)


def _softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def _kl(p_t, p_s):
    return float(np.sum(p_t * (np.log(p_t) - np.log(p_s))))


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _unit(v):
    return v / np.linalg.norm(v)


def ref_kd(s, t, mask, temperature=1.0, scale_by_t2=True):
    s, t = np.float64(s), np.float64(t)
    m = _ones(mask, s.shape[:-1])
    total, n = 0.0, 0
    for idx in np.ndindex(*s.shape[:-1]):
        if m[idx]:
            total += _kl(_softmax(t[idx] / temperature), _softmax(s[idx] / temperature))
            n += 1
    return total / max(n, 1) * (temperature**2 if scale_by_t2 else 1.0)


def ref_binary_kd(s, t, mask, temperature=1.0):
    s, t = np.float64(s), np.float64(t)
    m = _ones(mask, s.shape)
    total, n = 0.0, 0
    for idx in np.ndindex(*s.shape):
        if m[idx]:
            pt = 1 / (1 + math.exp(-t[idx] / temperature))
            ps = 1 / (1 + math.exp(-s[idx] / temperature))
            total += pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
            n += 1
    return total / max(n, 1) * temperature**2


def ref_token_mse(s, t, mask):
    s, t = np.float64(s), np.float64(t)
    m = _ones(mask, s.shape[:2])
    vals = [np.mean((s[b, i] - t[b, i]) ** 2) for b, i in np.ndindex(*m.shape) if m[b, i]]
    return sum(vals) / max(len(vals), 1)


def ref_cosine(s, t, mask):
    m = _ones(mask, s.shape[:2])
    vals = [1 - _cos(s[b, i], t[b, i]) for b, i in np.ndindex(*m.shape) if m[b, i]]
    return sum(vals) / max(len(vals), 1)


def ref_attention_score_mse(s, t, mask):
    bsz, heads, seq, _ = s.shape
    m = _ones(mask, (bsz, seq))
    vals = [
        (float(s[b, h, i, j]) - float(t[b, h, i, j])) ** 2
        for b, h, i, j in np.ndindex(bsz, heads, seq, seq)
        if m[b, i] and m[b, j]
    ]
    return sum(vals) / max(len(vals), 1)


def ref_attention_kl(s, t, mask):
    bsz, heads, seq, _ = s.shape
    m = _ones(mask, (bsz, seq))
    vals = []
    for b, h, i in np.ndindex(bsz, heads, seq):
        if not m[b, i]:
            continue
        row = 0.0
        for j in range(seq):
            if m[b, j]:
                pt, ps = float(t[b, h, i, j]), float(s[b, h, i, j])
                row += pt * (math.log(max(pt, EPS)) - math.log(max(ps, EPS)))
        vals.append(row)
    return sum(vals) / max(len(vals), 1)


def ref_self_relation(s, t, mask):
    """s [B, A, L, d_s], t [B, A, L, d_t]: KL of softmax(x_i·x_j/√d) rows over valid keys."""
    s, t = np.float64(s), np.float64(t)
    bsz, heads, seq, _ = s.shape
    m = _ones(mask, (bsz, seq))
    vals = []
    for b, a, i in np.ndindex(bsz, heads, seq):
        if not m[b, i]:
            continue
        keys = [j for j in range(seq) if m[b, j]]
        ls = [s[b, a, i] @ s[b, a, j] / math.sqrt(s.shape[-1]) for j in keys]
        lt = [t[b, a, i] @ t[b, a, j] / math.sqrt(t.shape[-1]) for j in keys]
        vals.append(_kl(_softmax(lt), _softmax(ls)))
    return sum(vals) / max(len(vals), 1)


def _split_relation_heads(x, num_heads):
    x = np.float64(x)
    if x.ndim == 4:  # [B, H, L, d] -> [B, L, H*d] by concatenating the heads
        x = np.stack(
            [np.stack([np.concatenate(list(x[b, :, i])) for i in range(x.shape[2])])
             for b in range(x.shape[0])]
        )
    bsz, seq, width = x.shape
    size = width // num_heads
    out = np.zeros((bsz, num_heads, seq, size))
    for b, a, i in np.ndindex(bsz, num_heads, seq):
        out[b, a, i] = x[b, i, a * size:(a + 1) * size]
    return out


def ref_qkv(s, t, mask, num_relation_heads):
    return ref_self_relation(
        _split_relation_heads(s, num_relation_heads),
        _split_relation_heads(t, num_relation_heads),
        mask,
    )


def _distance_rows(s_set, t_set, valid):
    """Per member a: KL over members c != a (both valid) of softmax(cos). Returns a list."""
    out = []
    for a in range(len(s_set)):
        if not valid[a]:
            continue
        keys = [c for c in range(len(s_set)) if c != a and valid[c]]
        if not keys:
            out.append(0.0)
            continue
        ls = [_cos(s_set[a], s_set[c]) for c in keys]
        lt = [_cos(t_set[a], t_set[c]) for c in keys]
        out.append(_kl(_softmax(lt), _softmax(ls)))
    return out


def ref_wr_distance(s, t, mask):
    s, t = np.float64(s), np.float64(t)
    m = _ones(mask, s.shape[:2])
    vals = []
    for b in range(s.shape[0]):
        vals += _distance_rows(s[b], t[b], m[b])
    return sum(vals) / max(len(vals), 1)


def _pooled_rows(s, t, mask):
    """(rows with a valid token, student and teacher mean-pooled sentences per row)."""
    s, t = np.float64(s), np.float64(t)
    m = _ones(mask, s.shape[:2]).astype(bool)
    rows = [b for b in range(s.shape[0]) if m[b].any()]
    return rows, {b: s[b][m[b]].mean(0) for b in rows}, {b: t[b][m[b]].mean(0) for b in rows}


def ref_sentence_relation(s, t, mask, temperature=0.05):
    """Mean-pooled sentences, then per sentence a KL over the others of softmax(cos / T)."""
    rows, ps, pt = _pooled_rows(s, t, mask)
    vals = []
    for a in rows:
        keys = [c for c in rows if c != a]
        if not keys:
            vals.append(0.0)
            continue
        ls = [_cos(ps[a], ps[c]) / temperature for c in keys]
        lt = [_cos(pt[a], pt[c]) / temperature for c in keys]
        vals.append(_kl(_softmax(lt), _softmax(ls)))
    return sum(vals) / max(len(vals), 1)


def ref_sentence_anchor(s, t, mask, temperature=0.05):
    """Mean-pooled sentences; per sentence a KL over every teacher sentence (itself included)
    of softmax(cos / T), the teacher's own row as the target."""
    rows, ps, pt = _pooled_rows(s, t, mask)
    vals = []
    for a in rows:
        ls = [_cos(ps[a], pt[c]) / temperature for c in rows]
        lt = [_cos(pt[a], pt[c]) / temperature for c in rows]
        vals.append(_kl(_softmax(lt), _softmax(ls)))
    return sum(vals) / max(len(vals), 1)


def _angle(x, i, j, k):
    return float(_unit(x[j] - x[i]) @ _unit(x[k] - x[i]))


def ref_wr_angle(s, t, mask, window=None):
    s, t = np.float64(s), np.float64(t)
    bsz, seq = s.shape[:2]
    m = _ones(mask, (bsz, seq))
    w = seq if window is None else window
    vals = []
    for b, i, j, k in np.ndindex(bsz, seq, seq, seq):
        if not (m[b, i] and m[b, j] and m[b, k]) or j == i or k == i:
            continue
        if abs(i - j) > w or abs(i - k) > w:
            continue
        vals.append((_angle(s[b], i, j, k) - _angle(t[b], i, j, k)) ** 2)
    return sum(vals) / max(len(vals), 1)


def ref_ltr_distance(s, t, mask):
    s, t = np.float64(s), np.float64(t)
    k, bsz, seq = s.shape[:3]
    m = _ones(mask, (bsz, seq))
    vals = []
    for b, i in np.ndindex(bsz, seq):
        if m[b, i]:
            vals += _distance_rows(s[:, b, i], t[:, b, i], np.ones(k, bool))
    return sum(vals) / max(len(vals), 1)


def ref_ltr_angle(s, t, mask):
    s, t = np.float64(s), np.float64(t)
    k, bsz, seq = s.shape[:3]
    m = _ones(mask, (bsz, seq))
    vals = []
    for b, pos in np.ndindex(bsz, seq):
        if not m[b, pos]:
            continue
        for i, j, c in np.ndindex(k, k, k):
            if j != i and c != i:
                vals.append((_angle(s[:, b, pos], i, j, c) - _angle(t[:, b, pos], i, j, c)) ** 2)
    return sum(vals) / max(len(vals), 1)


def ref_nst_mmd(s, t, mask):
    s, t = np.float64(s), np.float64(t)
    bsz, seq = s.shape[:2]
    m = _ones(mask, (bsz, seq))
    vals = [
        (_cos(s[b, i], s[b, j]) - _cos(t[b, i], t[b, j])) ** 2
        for b, i, j in np.ndindex(bsz, seq, seq)
        if m[b, i] and m[b, j]
    ]
    return sum(vals) / max(len(vals), 1)


# ------------------------------------------------------------------------------------------
# cases: how to build inputs for each loss, and which axes are batch / token axes
# ------------------------------------------------------------------------------------------


def _normal(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _probs(rng, bsz, heads, seq):
    return np.asarray(jax.nn.softmax(_normal(rng, bsz, heads, seq, seq, scale=2.0), -1))


def _orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _rotate(x, rng):
    return (x @ _orthogonal(rng, x.shape[-1])).astype(np.float32)


def _rotate_blocks(x, rng, num_blocks):
    """Rotate each relation-head block of the concatenated width separately (the invariance
    qkv_relation_kl has: a global rotation would mix relation heads)."""
    four_d = x.ndim == 4
    if four_d:
        bsz, heads, seq, d = x.shape
        x = x.transpose(0, 2, 1, 3).reshape(bsz, seq, heads * d)
    size = x.shape[-1] // num_blocks
    q = np.zeros((x.shape[-1],) * 2, np.float32)
    for a in range(num_blocks):
        q[a * size:(a + 1) * size, a * size:(a + 1) * size] = _orthogonal(rng, size)
    y = x @ q
    if four_d:
        y = y.reshape(bsz, seq, heads, d).transpose(0, 2, 1, 3)
    return y.astype(np.float32)


@dataclass
class Case:
    id: str
    fn: Callable[..., Any]
    # make(rng, bsz, seq, equal_width) -> (student, teacher)
    make: Callable[[np.random.Generator, int, int, bool], tuple[np.ndarray, np.ndarray]]
    ref: Callable[..., float]
    kwargs: dict = field(default_factory=dict)
    batch_axis: int = 0
    token_axes: tuple[int, ...] = (1,)
    rotate: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
    min_batch: int = 1  # a relation across the batch needs 3 examples to be non-zero


def _hidden_pair(ds, dt):
    return lambda rng, b, n, eq: (_normal(rng, b, n, ds), _normal(rng, b, n, ds if eq else dt))


def _layers_pair(k, ds, dt):
    return lambda rng, b, n, eq: (
        _normal(rng, k, b, n, ds),
        _normal(rng, k, b, n, ds if eq else dt),
    )


CASES = [
    Case("kd_loss", L.kd_loss,
         lambda rng, b, n, eq: (_normal(rng, b, n, 7, scale=2), _normal(rng, b, n, 7, scale=2)),
         ref_kd, {"temperature": 2.0}),
    Case("binary_kd_loss", L.binary_kd_loss,
         lambda rng, b, n, eq: (_normal(rng, b, n, scale=2), _normal(rng, b, n, scale=2)),
         ref_binary_kd, {"temperature": 2.0}),
    Case("mse_logits_loss", L.mse_logits_loss,
         lambda rng, b, n, eq: (_normal(rng, b, n, 3), _normal(rng, b, n, 3)), ref_token_mse),
    Case("hidden_mse", L.hidden_mse, _hidden_pair(6, 6), ref_token_mse),
    Case("cosine_loss", L.cosine_loss, _hidden_pair(6, 6), ref_cosine),
    Case("attention_score_mse", L.attention_score_mse,
         lambda rng, b, n, eq: (_normal(rng, b, 3, n, n), _normal(rng, b, 3, n, n)),
         ref_attention_score_mse, token_axes=(2, 3)),
    Case("attention_kl", L.attention_kl,
         lambda rng, b, n, eq: (_probs(rng, b, 3, n), _probs(rng, b, 3, n)),
         ref_attention_kl, token_axes=(2, 3)),
    Case("value_relation_kl", L.value_relation_kl,
         lambda rng, b, n, eq: (_normal(rng, b, 3, n, 4), _normal(rng, b, 3, n, 4 if eq else 6)),
         ref_self_relation, token_axes=(2,), rotate=_rotate),
    Case("qkv_relation_kl_3d", L.qkv_relation_kl, _hidden_pair(8, 12),
         functools.partial(ref_qkv, num_relation_heads=2), {"num_relation_heads": 2},
         rotate=functools.partial(_rotate_blocks, num_blocks=2)),
    # [B, H, L, d] inputs with different head counts (2 vs 3) on the two sides.
    Case("qkv_relation_kl_4d", L.qkv_relation_kl,
         lambda rng, b, n, eq: (_normal(rng, b, 2, n, 4), _normal(rng, b, 2 if eq else 3, n, 4)),
         functools.partial(ref_qkv, num_relation_heads=4), {"num_relation_heads": 4},
         token_axes=(2,), rotate=functools.partial(_rotate_blocks, num_blocks=4)),
    Case("wr_distance", L.wr_distance, _hidden_pair(6, 10), ref_wr_distance, rotate=_rotate),
    Case("wr_angle", L.wr_angle, _hidden_pair(6, 10), ref_wr_angle, rotate=_rotate),
    Case("wr_angle_window1", L.wr_angle, _hidden_pair(6, 10),
         functools.partial(ref_wr_angle, window=1), {"window": 1}, rotate=_rotate),
    Case("ltr_distance", L.ltr_distance, _layers_pair(3, 6, 10), ref_ltr_distance,
         batch_axis=1, token_axes=(2,), rotate=_rotate),
    Case("ltr_angle", L.ltr_angle, _layers_pair(4, 6, 10), ref_ltr_angle,
         batch_axis=1, token_axes=(2,), rotate=_rotate),
    Case("nst_mmd", L.nst_mmd, _hidden_pair(6, 10), ref_nst_mmd, rotate=_rotate),
    Case("sentence_relation_kl", L.sentence_relation_kl, _hidden_pair(6, 10),
         ref_sentence_relation, rotate=_rotate, min_batch=3),
    Case("sentence_relation_kl_t1", L.sentence_relation_kl, _hidden_pair(6, 10),
         ref_sentence_relation, kwargs={"temperature": 1.0}, rotate=_rotate, min_batch=3),
    Case("sentence_anchor_kl", L.sentence_anchor_kl, _hidden_pair(6, 6), ref_sentence_anchor),
    Case("sentence_anchor_kl_t1", L.sentence_anchor_kl, _hidden_pair(6, 6),
         ref_sentence_anchor, kwargs={"temperature": 1.0}),
]
RELATION_CASES = [c for c in CASES if c.rotate is not None]


def _padded(case: Case, shape, mask) -> np.ndarray:
    """Boolean array of `shape`: True where any token axis indexes a padded position."""
    mask = np.asarray(mask).astype(bool)
    out = np.zeros(shape, bool)
    for idx in np.ndindex(*shape):
        b = idx[case.batch_axis]
        out[idx] = any(not mask[b, idx[ax]] for ax in case.token_axes)
    return out


def _call(case: Case, s, t, mask, **extra):
    return case.fn(s, t, mask=mask, **{**case.kwargs, **extra})


_VALUE_AND_GRAD: dict[str, Callable[..., Any]] = {}


def _value_and_grad(case: Case, s, t, mask):
    """(loss, d loss / d student) through one cached jitted program per case (and shape), so
    every gradient check is also a jit check and compiles once."""
    if case.id not in _VALUE_AND_GRAD:
        f = lambda x, y, m: _call(case, x, y, m)
        _VALUE_AND_GRAD[case.id] = jax.jit(jax.value_and_grad(f))
    val, g = _VALUE_AND_GRAD[case.id](s, t, mask)
    return float(val), np.asarray(g)


def _grad(case: Case, s, t, mask):
    return _value_and_grad(case, s, t, mask)[1]


def _finite(x) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x))))


ids = [c.id for c in CASES]


# ------------------------------------------------------------------------------------------
# generic properties, every loss
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_matches_numpy_reference(case):
    rng = np.random.default_rng(0)
    s, t = case.make(rng, B, SEQ, False)
    for mask in (MASK, None):
        got = float(_call(case, s, t, mask))
        np.testing.assert_allclose(
            got, case.ref(s, t, mask, **case.kwargs), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_zero_when_student_equals_teacher(case):
    s, _ = case.make(np.random.default_rng(1), B, SEQ, True)
    assert abs(float(_call(case, s, s.copy(), MASK))) < 1e-6


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_positive_with_finite_nonzero_gradient(case):
    batch = max(B, case.min_batch)
    s, t = case.make(np.random.default_rng(2), batch, SEQ, False)
    mask = MASK if batch == B else np.tile(MASK, (batch // B + 1, 1))[:batch]
    val, g = _value_and_grad(case, s, t, mask)
    assert val > 1e-4
    np.testing.assert_allclose(val, float(_call(case, s, t, mask)), rtol=1e-5)
    assert g.shape == s.shape
    assert _finite(g)
    assert np.abs(g).max() > 1e-6


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_padding_values_do_not_matter(case):
    rng = np.random.default_rng(3)
    s, t = case.make(rng, B, SEQ, False)
    pad_s, pad_t = _padded(case, s.shape, MASK), _padded(case, t.shape, MASK)
    assert pad_s.any()
    # Large junk, including inf in the teacher, where the mask says padding.
    s2 = np.where(pad_s, _normal(rng, *s.shape, scale=1e3), s).astype(np.float32)
    t2 = np.where(pad_t, np.float32(np.inf), t).astype(np.float32)
    (val, g), (val2, g2) = _value_and_grad(case, s, t, MASK), _value_and_grad(case, s2, t2, MASK)
    np.testing.assert_allclose(val2, val, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g2, g, rtol=1e-5, atol=1e-7)
    assert not np.any(g2[pad_s])  # no gradient flows into padding


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_no_nan_fully_masked_rows_and_length_one(case):
    rng = np.random.default_rng(4)
    s, t = case.make(rng, B, SEQ, False)
    one_empty = np.array([[0] * SEQ, [1] * SEQ], np.int32)
    for mask in (one_empty, np.zeros((B, SEQ), np.int32)):
        val, g = _value_and_grad(case, s, t, mask)
        assert np.isfinite(val) and _finite(g)
    assert val == 0.0  # everything masked
    s1, t1 = case.make(rng, B, 1, False)
    for mask in (np.array([[1], [1]], np.int32), np.array([[1], [0]], np.int32)):
        val, g = _value_and_grad(case, s1, t1, mask)
        assert np.isfinite(val) and _finite(g)
        np.testing.assert_allclose(val, case.ref(s1, t1, mask, **case.kwargs), atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_jit_matches_eager(case):
    s, t = case.make(np.random.default_rng(5), B, SEQ, False)
    # Gradients are taken under jax.jit in every test above (see _value_and_grad).
    fn = jax.jit(functools.partial(case.fn, **case.kwargs))
    np.testing.assert_allclose(
        float(fn(s, t, mask=MASK)), case.ref(s, t, MASK, **case.kwargs), rtol=1e-5, atol=1e-5
    )


def test_bf16_inputs_accumulate_in_float32():
    rng = np.random.default_rng(6)
    s, t = _normal(rng, B, SEQ, 6), _normal(rng, B, SEQ, 10)
    out = L.wr_distance(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16), MASK)
    assert out.dtype == jnp.float32 and out.shape == ()


# ------------------------------------------------------------------------------------------
# relation losses: rotation invariance, width freedom
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", RELATION_CASES, ids=[c.id for c in RELATION_CASES])
def test_relation_losses_rotation_invariant(case):
    rng = np.random.default_rng(7)
    s, t = case.make(rng, B, SEQ, False)
    base = float(_call(case, s, t, MASK))
    rotated = float(_call(case, case.rotate(s, rng), case.rotate(t, rng), MASK))
    np.testing.assert_allclose(rotated, base, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", RELATION_CASES, ids=[c.id for c in RELATION_CASES])
def test_relation_losses_accept_different_widths(case):
    s, t = case.make(np.random.default_rng(8), B, SEQ, False)
    assert s.shape[-1] != t.shape[-1] or s.shape[1] != t.shape[1]
    assert _finite(_call(case, s, t, MASK))


def test_wr_angle_window_at_least_length_equals_full():
    rng = np.random.default_rng(9)
    s, t = _normal(rng, 3, 7, 6), _normal(rng, 3, 7, 9)
    mask = np.array([[1] * 7, [1, 1, 0, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0]])
    full = float(L.wr_angle(s, t, mask))
    for w in (6, 50):  # L-1 and far beyond L
        np.testing.assert_allclose(float(L.wr_angle(s, t, mask, window=w)), full, rtol=1e-5)
    np.testing.assert_allclose(
        float(L.wr_angle(s, t, mask, window=2)), ref_wr_angle(s, t, mask, window=2), atol=1e-5
    )
    # A narrow window is a different (sub-sampled) loss, not the same number.
    assert abs(float(L.wr_angle(s, t, mask, window=1)) - full) > 1e-4


def _all_shapes(jaxpr):
    """Output shapes of every equation, descending into nested (jit/custom-vjp) jaxprs."""
    for eqn in jaxpr.eqns:
        yield from (v.aval.shape for v in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _all_shapes(sub)


def test_wr_angle_window_never_builds_cubic_tensor():
    seq, w = 64, 2
    s = jnp.zeros((1, seq, 4))
    jaxpr = jax.make_jaxpr(jax.grad(functools.partial(L.wr_angle, window=w)))(s, s)
    shapes = list(_all_shapes(jaxpr.jaxpr))
    assert len(shapes) > 20  # really looked inside the jitted body
    assert max(math.prod(shape) for shape in shapes) <= seq * (2 * w + 1) ** 2 * 4
    assert not any(shape.count(seq) >= 2 for shape in shapes)


def test_ltr_angle_trivial_with_two_layers():
    # With K = 2 every angle potential is cos(0) = 1 on both sides.
    rng = np.random.default_rng(10)
    s, t = _normal(rng, 2, B, SEQ, 4), _normal(rng, 2, B, SEQ, 8)
    assert abs(float(L.ltr_angle(s, t, MASK))) < 1e-6


# ------------------------------------------------------------------------------------------
# individual losses
# ------------------------------------------------------------------------------------------


def test_kd_loss_temperature_scaling():
    rng = np.random.default_rng(11)
    s, t = _normal(rng, 4, 5, scale=3), _normal(rng, 4, 5, scale=3)
    soft = float(L.kd_loss(s, t, temperature=2.0, scale_by_t2=False))
    np.testing.assert_allclose(float(L.kd_loss(s, t, temperature=2.0)), 4.0 * soft, rtol=1e-6)
    np.testing.assert_allclose(soft, float(L.kd_loss(s / 2, t / 2)), rtol=1e-5)
    np.testing.assert_allclose(soft, ref_kd(s, t, None, 2.0, False), rtol=1e-5)
    # [B] mask for sequence-level logits [B, C].
    m = np.array([1, 0, 1, 1])
    np.testing.assert_allclose(float(L.kd_loss(s, t, mask=m)), ref_kd(s, t, m), rtol=1e-5)


def test_kd_loss_traced_temperature_under_jit():
    rng = np.random.default_rng(12)
    s, t = _normal(rng, 3, 6), _normal(rng, 3, 6)
    got = jax.jit(L.kd_loss)(s, t, jnp.float32(3.0))
    np.testing.assert_allclose(float(got), ref_kd(s, t, None, 3.0), rtol=1e-5)


def test_kd_loss_teacher_minus_inf_logit_is_finite():
    s = np.zeros((1, 3), np.float32)
    t = np.array([[0.0, 1.0, -np.inf]], np.float32)
    val = L.kd_loss(s, t)
    assert _finite(val) and _finite(jax.grad(L.kd_loss)(s, t))
    expected = _kl(_softmax([0, 1]), _softmax([0, 0, 0])[:2])  # the -inf class has p_t = 0
    np.testing.assert_allclose(float(val), expected, rtol=1e-5)
    saturated = np.array([[np.inf, -np.inf]], np.float32)
    assert _finite(L.binary_kd_loss(np.zeros((1, 2), np.float32), saturated))


def test_mse_logits_loss_regression_shapes():
    rng = np.random.default_rng(13)
    s, t = _normal(rng, 5), _normal(rng, 5)
    m = np.array([1, 1, 0, 1, 0])
    expected = np.mean([(s[i] - t[i]) ** 2 for i in range(5) if m[i]])
    np.testing.assert_allclose(float(L.mse_logits_loss(s, t, m)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(L.mse_logits_loss(s[:, None], t[:, None], m)), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(float(L.mse_logits_loss(s, t)), np.mean((s - t) ** 2), rtol=1e-6)


def test_hard_label_loss_kinds():
    rng = np.random.default_rng(14)
    logits = _normal(rng, B, SEQ, 4, scale=2)
    labels = rng.integers(0, 4, (B, SEQ))
    labels[0, 1] = -100  # HF ignore index
    vals = [
        -math.log(_softmax(logits[b, i])[labels[b, i]])
        for b, i in np.ndindex(B, SEQ)
        if MASK[b, i] and labels[b, i] >= 0
    ]
    got = L.hard_label_loss(logits, labels, MASK)
    np.testing.assert_allclose(float(got), np.mean(vals), rtol=1e-5)
    assert _finite(jax.grad(L.hard_label_loss)(logits, labels, MASK))

    pred, target = _normal(rng, 6, 1), _normal(rng, 6)
    np.testing.assert_allclose(
        float(L.hard_label_loss(pred, target, kind="mse")), np.mean((pred[:, 0] - target) ** 2),
        rtol=1e-6,
    )
    assert abs(float(L.hard_label_loss(target, target, kind="mse"))) == 0.0

    x = _normal(rng, B, SEQ, scale=3)
    y = rng.integers(0, 2, (B, SEQ))
    bce = [
        -(y[b, i] * math.log(1 / (1 + math.exp(-x[b, i])))
          + (1 - y[b, i]) * math.log(1 - 1 / (1 + math.exp(-x[b, i]))))
        for b, i in np.ndindex(B, SEQ)
        if MASK[b, i]
    ]
    np.testing.assert_allclose(float(L.hard_label_loss(x, y, MASK, kind="bce")), np.mean(bce),
                               rtol=1e-5)
    bce_jit = jax.jit(functools.partial(L.hard_label_loss, kind="bce"))
    np.testing.assert_allclose(float(bce_jit(x, y, MASK)), np.mean(bce), rtol=1e-5)
    zero = np.zeros((B, SEQ))
    for kind, lab in (("ce", labels), ("bce", y)):
        val = L.hard_label_loss(x if kind == "bce" else logits, lab, zero, kind=kind)
        assert float(val) == 0.0


def test_masked_lm_kd_equals_kd_over_full_logits_at_masked_positions():
    rng = np.random.default_rng(15)
    vocab, ds, dt = 11, 6, 10
    hs, ht = _normal(rng, B, SEQ, ds), _normal(rng, B, SEQ, dt)
    ws, wt = _normal(rng, ds, vocab), _normal(rng, dt, vocab)
    bias = _normal(rng, vocab)
    s_fn = lambda h: h @ ws + bias
    t_fn = lambda h: h @ wt
    positions = np.array([[1, 3, 0], [4, 2, -1]])  # -1: padding slot of the position list
    pmask = np.array([[1, 1, 1], [1, 1, 0]])
    full_s, full_t = np.asarray(s_fn(hs)), np.asarray(t_fn(ht))  # [B, L, V]
    sel = [(b, positions[b, p]) for b, p in np.ndindex(*positions.shape) if pmask[b, p]]
    sel_s = np.stack([full_s[b, i] for b, i in sel])
    sel_t = np.stack([full_t[b, i] for b, i in sel])
    expected = float(L.kd_loss(sel_s, sel_t, temperature=2.0))
    got = L.masked_lm_kd_loss(hs, ht, s_fn, t_fn, positions, temperature=2.0, mask=pmask)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    np.testing.assert_allclose(expected, ref_kd(sel_s, sel_t, None, 2.0), rtol=1e-5)
    # Restricting the [B, L, V] token-level kd_loss to the masked positions gives the same.
    token_mask = np.zeros((B, SEQ), np.int32)
    for b, i in sel:
        token_mask[b, i] = 1
    np.testing.assert_allclose(
        float(L.kd_loss(full_s, full_t, 2.0, mask=token_mask)), expected, rtol=1e-5
    )
    jitted = jax.jit(lambda a, c, p, m: L.masked_lm_kd_loss(a, c, s_fn, t_fn, p, 2.0, m))
    np.testing.assert_allclose(float(jitted(hs, ht, positions, pmask)), expected, rtol=1e-5)
    g = jax.grad(lambda h: L.masked_lm_kd_loss(h, ht, s_fn, t_fn, positions, mask=pmask))(hs)
    assert _finite(g) and np.abs(g).max() > 0
    assert not np.any(np.asarray(g)[0, 4])  # position never selected -> no gradient
    empty = L.masked_lm_kd_loss(hs, ht, s_fn, t_fn, positions, mask=np.zeros_like(pmask))
    assert float(empty) == 0.0


def test_losses_registry_complete():
    public = {
        "kd_loss", "binary_kd_loss", "mse_logits_loss", "masked_lm_kd_loss", "hard_label_loss",
        "hidden_mse", "cosine_loss", "attention_score_mse", "attention_kl", "value_relation_kl",
        "qkv_relation_kl", "wr_distance", "wr_angle", "ltr_distance", "ltr_angle", "nst_mmd",
        "sentence_relation_kl", "sentence_anchor_kl", "pooled_mse",
    }
    assert set(L.LOSSES) == public
    for name, fn in L.LOSSES.items():
        assert fn is getattr(L, name) and fn.__doc__


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------


def test_hidden_mse_width_mismatch_names_both_shapes():
    s, t = np.zeros((2, 5, 8), np.float32), np.zeros((2, 5, 12), np.float32)
    with pytest.raises(ShapeError) as info:
        L.hidden_mse(s, t)
    msg = str(info.value)
    assert "hidden_mse" in msg and "(2, 5, 8)" in msg and "(2, 5, 12)" in msg
    assert "projection" in msg and "\n" not in msg
    with pytest.raises(ShapeError):
        jax.jit(L.hidden_mse)(s, t)


def test_attention_kl_head_mismatch_names_both_shapes():
    s, t = np.zeros((2, 4, 5, 5), np.float32), np.zeros((2, 12, 5, 5), np.float32)
    with pytest.raises(ShapeError) as info:
        L.attention_kl(s, t)
    msg = str(info.value)
    assert "attention_kl" in msg and "(2, 4, 5, 5)" in msg and "(2, 12, 5, 5)" in msg
    assert "qkv_relation_kl" in msg and "wr_distance" in msg


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: L.value_relation_kl(np.zeros((1, 2, 3, 4)), np.zeros((1, 3, 3, 4))),
         "qkv_relation_kl"),
        (lambda: L.qkv_relation_kl(np.zeros((1, 3, 8)), np.zeros((1, 3, 10)),
                                   num_relation_heads=4), "divisible"),
        (lambda: L.wr_distance(np.zeros((1, 3, 8)), np.zeros((1, 4, 8))), "(1, 4, 8)"),
        (lambda: L.kd_loss(np.zeros((2, 3)), np.zeros((2, 4))), "(2, 4)"),
        (lambda: L.kd_loss(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), mask=np.ones((2, 4))),
         "mask"),
        (lambda: L.ltr_distance(np.zeros((1, 2, 3, 4)), np.zeros((1, 2, 3, 4))), "K >= 2"),
        (lambda: L.cosine_loss(np.zeros((1, 3, 4)), np.zeros((1, 3, 6))), "projection"),
        (lambda: L.attention_score_mse(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 4, 4))),
         "(1, 2, 4, 4)"),
    ],
)
def test_shape_errors(call, needle):
    with pytest.raises(ShapeError) as info:
        call()
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda: L.hard_label_loss(np.zeros((2, 3)), np.zeros(2, np.int32), kind="focal"),
        lambda: L.kd_loss(np.zeros((2, 3)), np.zeros((2, 3)), temperature=0.0),
        lambda: L.wr_angle(np.zeros((1, 3, 4)), np.zeros((1, 3, 4)), window=0),
        lambda: L.qkv_relation_kl(np.zeros((1, 3, 4)), np.zeros((1, 3, 4)),
                                  num_relation_heads=0),
    ],
)
def test_config_errors(call):
    with pytest.raises(ConfigError):
        call()


def test_sentence_relation_sees_which_sentence_is_nearest():
    """Sentences that all sit close to one common direction (E5's geometry, cosine ~0.8):
    moving one sentence towards another by a small step changes which one is nearest, and the
    sharp relation sees it where the MSE of the tokens stays small."""
    rng = np.random.default_rng(11)
    common = 3.0 * rng.standard_normal(16)
    t = (common + rng.standard_normal((5, 16)))[:, None, :].repeat(3, axis=1).astype(np.float32)
    s = t.copy()
    s[0] = 0.8 * t[0] + 0.2 * t[1]  # sentence 0 leans towards sentence 1
    mse = float(L.hidden_mse(s, t))
    rel = float(L.sentence_relation_kl(s, t))
    assert mse < 0.01 * float(np.mean(t ** 2))  # 0.2% of the tokens' energy
    assert float(L.sentence_relation_kl(t, t)) == pytest.approx(0.0, abs=1e-6)
    # the sharp softmax turns the small cosine change into a clear signal (~400x T = 1)
    assert rel > 100 * float(L.sentence_relation_kl(s, t, temperature=1.0)) and rel > 0.01
    with pytest.raises(ConfigError, match="temperature"):
        L.sentence_relation_kl(s, t, temperature=0.0)


def test_sentence_anchor_sees_a_rotated_space_that_the_relation_forgives():
    """A student whose sentences are the teacher's turned by a rotation keeps every
    neighbourhood (sentence_relation_kl 0) but sits elsewhere in the teacher's space: the
    anchor KL sees it; one sentence leaning towards another is seen too."""
    rng = np.random.default_rng(12)
    common = 3.0 * rng.standard_normal(16)
    t = (common + rng.standard_normal((6, 16)))[:, None, :].repeat(3, axis=1).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    rotated = (t @ q).astype(np.float32)
    assert float(L.sentence_relation_kl(rotated, t)) == pytest.approx(0.0, abs=1e-5)
    assert float(L.sentence_anchor_kl(rotated, t)) > 0.1
    lean = t.copy()
    lean[0] = 0.8 * t[0] + 0.2 * t[1]
    assert float(L.sentence_anchor_kl(lean, t)) > 1e-3
    # cosines: the norms are free, as in E5's use of the embeddings
    assert float(L.sentence_anchor_kl(2.5 * t, t)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ShapeError, match="sentence_anchor_kl.*projection"):
        L.sentence_anchor_kl(t[..., :8], t)
    with pytest.raises(ConfigError, match="temperature"):
        L.sentence_anchor_kl(t, t, temperature=-1.0)


def test_pooled_mse_is_the_distance_of_the_mean_pooled_sentences():
    """pooled_mse compares each sentence's mean over its valid tokens (E5's pooling): padding
    does not count, token noise that averages out does not count, a shifted sentence does."""
    rng = np.random.default_rng(5)
    t = rng.standard_normal((3, 4, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.int32)
    s = t.copy()
    s[:, 3] += 100.0 * (mask[:, 3] == 0)[:, None]  # garbage on padding only
    assert float(L.pooled_mse(s, t, mask)) == pytest.approx(0.0, abs=1e-6)
    # per-token noise with zero mean over each sentence's valid tokens: the pooled vectors agree
    noise = np.zeros_like(t)
    noise[:, 0], noise[:, 1] = 1.0, -1.0
    assert float(L.pooled_mse(t + noise, t, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.hidden_mse(t + noise, t, mask)) > 0.1
    # sentence 2 shifted by 0.5 in every feature: (0.5^2) / 3 sentences
    s = t.copy()
    s[2] += 0.5
    assert float(L.pooled_mse(s, t, mask)) == pytest.approx(0.25 / 3, rel=1e-5)
    # a sentence with no valid token is left out of the mean
    mask[0] = 0
    assert float(L.pooled_mse(s, t, mask)) == pytest.approx(0.25 / 2, rel=1e-5)
    with pytest.raises(ShapeError, match="pooled_mse"):
        L.pooled_mse(t[..., :4], t, mask)

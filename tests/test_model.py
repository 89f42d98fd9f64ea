"""The encoder model's contract: outputs and their shapes, attention masking, fused vs einsum
attention, remat / scan equivalence (values and gradients), dropout, bf16, logical axes and
sharding constraints, the low-rank building blocks and shape errors.

Parity with transformers lives in test_hf_parity.py. Compile time dominates on CPU, so the
tests share a few tiny configs, draw parameters with numpy from `abstract_params` (no jitted
init) and run the model eagerly (op-by-op dispatch reuses compiled primitives across configs).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import kdjax.sharding
from kdjax.errors import ConfigError, KdjaxError, ShapeError
from kdjax.factorize import stack_layers, unstack_layers
from kdjax.models.config import EncoderConfig
from kdjax.models.layers import LowRankDense, WordEmbeddings, factor_std
from kdjax.models.model import abstract_params, build_model
from kdjax.models.size import count_params

V, B, L = 64, 3, 10

# E (8) < H (16): embeddings_project is used; 2 layers, 2 heads of 8.
BASE = EncoderConfig(
    vocab_size=V, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
    embedding_size=8, max_position_embeddings=16, head="discriminator", num_labels=3,
)
# Every low-rank part (LF-V3 shape).
FACTORIZED = BASE.replace(ffn_rank=4, attention_rank=4, embedding_rank=4)

IDS = np.random.default_rng(0).integers(1, V, size=(B, L)).astype(np.int32)
MASK = np.ones((B, L), np.int32)
MASK[1, 6:] = 0  # rows padded to different lengths
MASK[2, 3:] = 0
IDS[MASK == 0] = 0
TYPES = np.zeros((B, L), np.int32)
TYPES[0, 5:] = 1


@functools.cache
def params_for(cfg: EncoderConfig, seed: int = 0) -> dict:
    """Random jax parameters shaped like `init_params(cfg)` (numpy draws: no jitted init).

    The std is large enough (0.2) that a wrong mask, a swapped weight or a skipped layer
    shows up in the outputs; LayerNorm scales are around 1.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        x = rng.normal(0.0, 0.2, leaf.shape)
        if getattr(path[-1], "key", None) == "scale":
            x += 1.0
        return jnp.asarray(x, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(cfg))


def run(cfg: EncoderConfig, params=None, ids=IDS, mask=MASK, **kwargs):
    params = params_for(cfg) if params is None else params
    if np.ndim(ids) == 2 and "token_type_ids" not in kwargs:
        kwargs["token_type_ids"] = TYPES[: ids.shape[0], : ids.shape[1]]
    return build_model(cfg).apply({"params": params}, ids, attention_mask=mask, **kwargs)


def close(a, b, tol=1e-5, what=""):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol,
                               rtol=0, err_msg=what)


FAST_COMPILE = {"xla_backend_optimization_level": 0}

ALL_MAPS = dict(output_hidden_states=True, output_attentions=True, output_attention_scores=True,
                output_qkv=True)


# --------------------------------------------------------------------------------------------
# 1. Output contract
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [BASE, BASE.replace(embedding_size=0, num_heads=4), FACTORIZED,
     BASE.replace(embedding_size=24, head="generator")],  # E < H, E == H, low rank, E > H
    ids=["E<H", "E==H", "factorized", "E>H"],
)
def test_hidden_states_and_attentions(cfg):
    out = run(cfg, output_hidden_states=True, output_attentions=True)
    h, heads = cfg.hidden_size, cfg.num_heads
    assert len(out.hidden_states) == cfg.num_layers + 1
    for x in out.hidden_states:
        assert x.shape == (B, L, h)
    close(out.hidden_states[-1], out.last_hidden_state, 0)

    # The first entry is the embedding output, after embeddings_project when E != H.
    p = params_for(cfg)
    close(out.hidden_states[0], _embedding_output(cfg, p), 1e-5, "hidden_states[0]")

    assert len(out.attentions) == cfg.num_layers
    pad = MASK == 0
    for a in out.attentions:
        a = np.asarray(a)
        assert a.shape == (B, heads, L, L)
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
        # zero probability on padded keys, for every query (padded queries included)
        assert np.all(a[np.broadcast_to(pad[:, None, None, :], a.shape)] == 0.0)
        assert np.all(a[np.broadcast_to(~pad[:, None, None, :], a.shape)] > 0.0)


def _embedding_output(cfg: EncoderConfig, p: dict) -> np.ndarray:
    """Word + position + type embeddings, LayerNorm, then embeddings_project, in numpy."""
    e = p["embeddings"]
    table = np.asarray(e["word_embeddings"]["embedding"], np.float64)
    if cfg.embedding_rank:
        table = table @ np.asarray(e["word_embeddings"]["projection"], np.float64)
    x = (table[IDS] + np.asarray(e["position_embeddings"]["embedding"])[:L][None]
         + np.asarray(e["token_type_embeddings"]["embedding"])[TYPES])
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    x = (x - mu) / np.sqrt(var + cfg.layer_norm_eps)
    x = x * np.asarray(e["LayerNorm"]["scale"]) + np.asarray(e["LayerNorm"]["bias"])
    if cfg.emb_size != cfg.hidden_size:
        proj = p["embeddings_project"]
        x = x @ np.asarray(proj["kernel"]) + np.asarray(proj["bias"])
    return x


@pytest.mark.parametrize(
    "head, family, shape",
    [
        ("none", "electra", None),
        ("discriminator", "electra", (B, L)),
        ("generator", "electra", (B, L, V)),
        ("classification", "electra", (B, 3)),
        ("classification", "bert", (B, 3)),
        ("token_classification", "electra", (B, L, 3)),
        ("qa", "electra", (B, L, 2)),
    ],
)
def test_head_logits_shapes(head, family, shape):
    cfg = BASE.replace(head=head, family=family)
    out = run(cfg)
    if shape is None:
        assert out.logits is None
    else:
        assert out.logits.shape == shape
        assert np.all(np.isfinite(np.asarray(out.logits)))
    top = set(params_for(cfg))
    expected_head = {
        "none": set(), "discriminator": {"discriminator_head"},
        "generator": {"generator_head", "generator_bias"}, "classification": {"classifier"},
        "token_classification": {"classifier"}, "qa": {"qa_head"},
    }[head]
    assert top - {"embeddings", "embeddings_project", "encoder"} == expected_head
    if head == "classification":
        # the BERT family pools [CLS] with a dense + tanh pooler; ELECTRA has dense + out_proj
        assert ("pooler" in params_for(cfg)["classifier"]) == (family == "bert")
        assert ("dense" in params_for(cfg)["classifier"]) == (family == "electra")


def test_heads_read_the_cls_token_only_for_sequence_classification():
    cfg = BASE.replace(head="classification")
    a = run(cfg)
    ids = IDS.copy()
    ids[0, 2] = (ids[0, 2] % (V - 1)) + 1  # change a non-[CLS] token of row 0
    b = run(cfg, ids=ids)
    assert not np.allclose(a.last_hidden_state[0, 0], b.last_hidden_state[0, 0])
    close(a.logits[1:], b.logits[1:], 0)  # other rows are untouched


def test_generator_logits_at_mlm_positions_equal_gathered_full_logits():
    cfg = BASE.replace(embedding_size=24, head="generator")  # E > H, like the ELECTRA generator
    full = run(cfg)
    assert full.mlm_hidden.shape == (B, L, 24)
    positions = np.array([[0, 4], [5, 1], [2, 2]], np.int32)
    part = run(cfg, mlm_positions=positions)
    assert part.logits.shape == (B, 2, V)
    assert part.mlm_hidden.shape == (B, 2, 24)
    gathered = np.take_along_axis(np.asarray(full.logits), positions[..., None], axis=1)
    close(part.logits, gathered, 1e-5)
    # the vocab projection is tied to the word embeddings
    p = params_for(cfg)
    tied = (np.asarray(full.mlm_hidden) @ np.asarray(p["embeddings"]["word_embeddings"]
                                                     ["embedding"]).T
            + np.asarray(p["generator_bias"]))
    close(full.logits, tied, 1e-4)


def test_optional_outputs_are_none_unless_requested():
    out = run(BASE)
    for key in ("hidden_states", "attentions", "attention_scores", "queries", "keys", "values",
                "mlm_hidden"):
        assert getattr(out, key) is None, key
    assert out.logits.shape == (B, L)
    only_scores = run(BASE, output_attention_scores=True)
    assert only_scores.attentions is None and only_scores.hidden_states is None
    assert len(only_scores.attention_scores) == BASE.num_layers


def test_scores_qkv_and_attentions_are_consistent():
    cfg = BASE
    out = run(cfg, **ALL_MAPS)
    d = cfg.head_dim
    mask_bias = np.where(MASK == 0, np.finfo(np.float32).min, 0.0)[:, None, None, :]
    for i in range(cfg.num_layers):
        scores, probs = np.asarray(out.attention_scores[i]), np.asarray(out.attentions[i])
        q, k, v = (np.asarray(t[i]) for t in (out.queries, out.keys, out.values))
        assert scores.shape == (B, cfg.num_heads, L, L)
        for t in (q, k, v):
            assert t.shape == (B, cfg.num_heads, L, d)
        close(scores, np.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d), 1e-5, f"scores {i}")
        close(jax.nn.softmax(scores + mask_bias, axis=-1), probs, 1e-6, f"softmax {i}")
        # scores are taken before the mask: padded keys still have finite raw scores
        assert np.all(np.isfinite(scores))
    # layer 0's queries are the query projection of the embedding output, split into heads
    p = params_for(cfg)["encoder"]["layer_0"]["attention"]["query"]
    x0 = np.asarray(out.hidden_states[0])
    q0 = x0 @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
    q0 = q0.reshape(B, L, cfg.num_heads, d).transpose(0, 2, 1, 3)
    close(out.queries[0], q0, 1e-5)


def test_compute_logits_false_skips_the_head():
    cfg = BASE.replace(head="generator")
    with_head, without = run(cfg), run(cfg, compute_logits=False)
    assert without.logits is None and without.mlm_hidden is None
    close(with_head.last_hidden_state, without.last_hidden_state, 0)


def test_padding_does_not_change_real_tokens():
    """Whatever sits in padded positions (ids, segment ids) leaves the real tokens unchanged."""
    out = run(BASE)
    ids = IDS.copy()
    ids[MASK == 0] = 7
    changed = build_model(BASE).apply({"params": params_for(BASE)}, ids, attention_mask=MASK,
                                      token_type_ids=np.where(MASK == 0, 1, TYPES))
    real = MASK == 1
    close(np.asarray(out.last_hidden_state)[real],
          np.asarray(changed.last_hidden_state)[real], 1e-5)
    close(np.asarray(out.logits)[real], np.asarray(changed.logits)[real], 1e-5)
    assert not np.allclose(out.last_hidden_state[1, 6:], changed.last_hidden_state[1, 6:])


# --------------------------------------------------------------------------------------------
# 2. Fused attention
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [BASE, FACTORIZED], ids=["dense", "factorized"])
def test_fused_attention_equals_einsum(cfg):
    want = run(cfg.replace(attention_impl="einsum"), params_for(cfg), output_hidden_states=True)
    for impl in ("fused", "auto"):
        got = run(cfg.replace(attention_impl=impl), params_for(cfg), output_hidden_states=True)
        for i, (a, b) in enumerate(zip(got.hidden_states, want.hidden_states)):
            close(a, b, 1e-5, f"{impl} hidden {i}")
        close(got.logits, want.logits, 1e-5, impl)


def test_auto_uses_the_fused_kernel_only_without_attention_maps(monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    trace = lambda cfg, **kw: jax.eval_shape(functools.partial(run, cfg, **kw))  # noqa: E731
    trace(BASE)
    assert len(calls) >= BASE.num_layers  # (traced once per layer or more)
    calls.clear()
    trace(BASE, output_attentions=True)
    trace(BASE, output_attention_scores=True)
    trace(BASE.replace(attention_impl="einsum"))
    assert calls == []
    # training with attention dropout needs the einsum path (the fused kernel has no dropout)
    trace(BASE, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert calls == []
    trace(BASE.replace(attention_dropout=0.0), deterministic=False,
          rngs={"dropout": jax.random.key(0)})
    assert len(calls) >= BASE.num_layers  # (traced once per layer or more)


@pytest.mark.parametrize("flag", ["output_attentions", "output_attention_scores"])
def test_fused_attention_with_attention_maps_is_an_error(flag):
    # Current behaviour: a ValueError naming the problem (raised while tracing the layer).
    with pytest.raises(ValueError, match="fused.*attention maps"):
        run(BASE.replace(attention_impl="fused"), params_for(BASE), **{flag: True})


def test_fused_attention_with_attention_maps_is_a_config_error():
    with pytest.raises(KdjaxError, match="attention_impl"):
        run(BASE.replace(attention_impl="fused"), params_for(BASE), output_attentions=True)


# --------------------------------------------------------------------------------------------
# 3. remat / scan
# --------------------------------------------------------------------------------------------


LAYOUTS = {
    "remat": dict(remat=True),
    "scan": dict(scan_layers=True),
    "remat+scan": dict(remat=True, scan_layers=True),
    "scan+unroll": dict(scan_layers=True, scan_unroll=2),  # both layers in one iteration
}


_WEIGHTS = np.random.default_rng(1).normal(size=(B, L, 16)).astype(np.float32)


@functools.cache
def _outputs_and_grads(cfg: EncoderConfig):
    """jit(params -> (hidden states, attentions, logits), d loss / d params) for `cfg`."""

    def loss(params):
        out = run(cfg, params, output_hidden_states=True, output_attentions=True)
        value = jnp.sum(out.last_hidden_state * _WEIGHTS) + jnp.sum(out.logits * MASK)
        value += sum(jnp.sum(a[:, :, :, :2]) for a in out.attentions)
        return value, (out.hidden_states, out.attentions, out.logits)

    # -O0: a third of the compile time of these tiny graphs, same numerics at 1e-5
    return jax.jit(lambda p: jax.grad(loss, has_aux=True)(p)[::-1], compiler_options=FAST_COMPILE)


LOOP = FACTORIZED


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_remat_and_scan_equal_the_loop(layout):
    (want_h, want_a, want_logits), want_grads = _outputs_and_grads(LOOP)(params_for(LOOP))
    cfg = LOOP.replace(**LAYOUTS[layout])
    params = stack_layers(params_for(LOOP), cfg)
    # the converted tree is exactly the one the model itself creates in this layout
    shapes = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), params)
    assert shapes == jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), abstract_params(cfg))
    jaxpr = str(jax.make_jaxpr(functools.partial(run, cfg))(params))
    assert ("remat" in jaxpr) == cfg.remat and ("scan[" in jaxpr) == cfg.scan_layers
    (hidden, attentions, logits), grads = _outputs_and_grads(cfg)(params)
    assert len(hidden) == len(want_h) == LOOP.num_layers + 1
    for i, (a, b) in enumerate(zip(hidden, want_h)):
        close(a, b, 1e-5, f"{layout} hidden {i}")
    assert len(attentions) == len(want_a) == LOOP.num_layers
    for i, (a, b) in enumerate(zip(attentions, want_a)):
        close(a, b, 1e-5, f"{layout} attention {i}")
    close(logits, want_logits, 1e-5, layout)

    flat_got = flatten_dict(unstack_layers(grads, cfg))
    flat_want = flatten_dict(want_grads)
    assert flat_got.keys() == flat_want.keys()
    for path, g in flat_want.items():
        assert np.any(np.asarray(g) != 0), path  # every parameter gets a gradient
        close(flat_got[path], g, 1e-5 * max(1.0, float(np.abs(g).max())), "/".join(path))


# --------------------------------------------------------------------------------------------
# 4. Dropout
# --------------------------------------------------------------------------------------------


def test_dropout():
    cfg = BASE.replace(hidden_dropout=0.2, attention_dropout=0.2)
    params = params_for(BASE)
    det_a = run(cfg, params)
    det_b = run(cfg, params, rngs={"dropout": jax.random.key(1)})  # eval mode ignores the rng
    close(det_a.last_hidden_state, det_b.last_hidden_state, 0)
    close(det_a.last_hidden_state, run(BASE, params).last_hidden_state, 0)

    train = jax.jit(lambda key: run(cfg, params, deterministic=False, rngs={"dropout": key}),
                    compiler_options=FAST_COMPILE)
    a, a_again, b = train(jax.random.key(0)), train(jax.random.key(0)), train(jax.random.key(1))
    close(a.last_hidden_state, a_again.last_hidden_state, 0)
    close(a.logits, a_again.logits, 0)
    assert not np.allclose(a.last_hidden_state, b.last_hidden_state, atol=1e-3)
    assert not np.allclose(a.last_hidden_state, det_a.last_hidden_state, atol=1e-3)
    with pytest.raises(Exception, match="dropout"):  # training mode needs a dropout rng
        jax.eval_shape(functools.partial(run, cfg, params, deterministic=False))


def test_scan_unroll_with_a_remainder_equals_the_rolled_scan():
    # 3 layers, 2 bodies per iteration: one full iteration and a remainder; in training mode,
    # so the per-layer dropout keys must also be the rolled scan's
    cfg = FACTORIZED.replace(num_layers=3, scan_layers=True, hidden_dropout=0.2,
                             attention_dropout=0.2)
    params = params_for(cfg)

    def train(c):
        return jax.jit(lambda key: run(c, params, deterministic=False, rngs={"dropout": key},
                                       output_hidden_states=True),
                       compiler_options=FAST_COMPILE)(jax.random.key(5))

    rolled, unrolled = train(cfg), train(cfg.replace(scan_unroll=2))
    for i, (a, b) in enumerate(zip(unrolled.hidden_states, rolled.hidden_states)):
        close(a, b, 1e-6, f"hidden {i}")
    jaxpr = str(jax.make_jaxpr(functools.partial(run, cfg.replace(scan_unroll=2)))(params))
    assert "unroll=2" in jaxpr
    with pytest.raises(ConfigError, match="model.scan_unroll"):
        cfg.replace(scan_unroll=0)


def test_no_dropout_in_training_mode_is_deterministic():
    cfg = BASE.replace(hidden_dropout=0.0, attention_dropout=0.0)
    params = params_for(BASE)
    train = run(cfg, params, deterministic=False, rngs={"dropout": jax.random.key(3)})
    close(train.last_hidden_state, run(cfg, params).last_hidden_state, 1e-6)


# --------------------------------------------------------------------------------------------
# 5. bf16
# --------------------------------------------------------------------------------------------


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("head", ["discriminator", "generator"])
def test_bf16_compute_with_fp32_params(head):
    cfg32 = BASE.replace(head=head)
    cfg16 = cfg32.replace(dtype="bfloat16", param_dtype="float32")
    assert {x.dtype for x in jax.tree_util.tree_leaves(abstract_params(cfg16))} == {
        jnp.dtype("float32")
    }
    params = params_for(cfg32)
    want = run(cfg32, params, output_hidden_states=True, output_attentions=True)
    # jitted: a new dtype would otherwise compile every primitive anew (slower than one jit)
    got = jax.jit(functools.partial(run, cfg16, output_hidden_states=True,
                                    output_attentions=True), compiler_options=FAST_COMPILE)(params)
    for i, (a, b) in enumerate(zip(got.hidden_states, want.hidden_states)):
        assert a.dtype == jnp.bfloat16, i
        assert _rel(a, b) < 5e-2, (i, _rel(a, b))
    assert got.last_hidden_state.dtype == jnp.bfloat16
    assert _rel(got.logits, want.logits) < 5e-2
    for a in got.attentions:  # scores and softmax stay in fp32: rows still sum to 1
        np.testing.assert_allclose(np.asarray(a, np.float32).sum(-1), 1.0, atol=1e-5)


def test_bf16_params():
    cfg = BASE.replace(dtype="bfloat16", param_dtype="bfloat16")
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves(abstract_params(cfg))}
    assert dtypes == {jnp.dtype("bfloat16")}


# --------------------------------------------------------------------------------------------
# 6. Logical axes and sharding constraints
# --------------------------------------------------------------------------------------------


def _boxed(cfg):
    tree = abstract_params(cfg, boxed=True)
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_box)
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in leaves}


@pytest.mark.parametrize(
    "cfg",
    [BASE.replace(head="generator"), FACTORIZED, FACTORIZED.replace(scan_layers=True),
     BASE.replace(head="classification", family="bert", scan_layers=True, remat=True)],
    ids=["dense", "factorized", "factorized-scan", "bert-scan-remat"],
)
def test_every_parameter_has_logical_axes(cfg):
    boxed = _boxed(cfg)
    assert len(boxed) == len(jax.tree_util.tree_leaves(abstract_params(cfg)))
    known = {"vocab", "embed", "embed2", "heads", "mlp", "rank", "norm", "labels", "layers",
             None}
    for path, leaf in boxed.items():
        assert isinstance(leaf, nn.Partitioned), path
        names = leaf.names
        assert isinstance(names, tuple) and len(names) == leaf.value.ndim, (path, names)
        assert set(names) <= known, (path, names)
        in_stack = path.startswith("encoder/layers/")
        assert (names[0] == "layers") == in_stack, (path, names)
        if in_stack:
            assert leaf.value.shape[0] == cfg.num_layers
        factor = path.endswith(("/down/kernel", "/up/kernel", "/projection")) or (
            cfg.embedding_rank and path.endswith("word_embeddings/embedding"))
        assert ("rank" in names) == bool(factor), (path, names)


def test_specific_logical_axes():
    dense, fact = _boxed(BASE), _boxed(FACTORIZED.replace(scan_layers=True))
    emb = "embeddings/word_embeddings/"
    assert dense[emb + "embedding"].names == ("vocab", "embed")
    assert fact[emb + "embedding"].names == ("vocab", "rank")
    assert fact[emb + "projection"].names == ("rank", "embed")
    layer = "encoder/layer_0/"
    assert dense[layer + "attention/query/kernel"].names == ("embed", "heads")
    assert dense[layer + "attention/output/kernel"].names == ("heads", "embed")
    assert dense[layer + "intermediate/kernel"].names == ("embed", "mlp")
    assert dense[layer + "output/kernel"].names == ("mlp", "embed")
    stack = "encoder/layers/"
    assert fact[stack + "attention/query/down/kernel"].names == ("layers", "embed", "rank")
    assert fact[stack + "attention/query/up/kernel"].names == ("layers", "rank", "heads")
    assert fact[stack + "intermediate/down/kernel"].names == ("layers", "embed", "rank")
    assert fact[stack + "intermediate/up/kernel"].names == ("layers", "rank", "mlp")
    assert fact[stack + "intermediate/up/bias"].names == ("layers", "mlp")
    assert fact[stack + "output/down/kernel"].names == ("layers", "mlp", "rank")


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
def test_lowered_forward_carries_sharding_constraints(scan):
    cfg = BASE.replace(scan_layers=scan)
    model = build_model(cfg)
    params = stack_layers(params_for(BASE), cfg)

    def forward(p, ids, mask):
        return model.apply({"params": p}, ids, attention_mask=mask, output_attentions=True)

    def constraints() -> int:
        text = jax.jit(forward).lower(params, IDS, MASK).as_text()
        return text.count("@Sharding") + text.count("sharding_constraint")

    mesh = kdjax.sharding.make_mesh((1, 1, 1))
    with jax.set_mesh(mesh), nn.logical_axis_rules(kdjax.sharding.RULES["tensor"]):
        n = constraints()
    # embeddings output + per layer: attention scores, FFN activation, layer output
    assert n >= 1 + (1 if scan else cfg.num_layers) * 3, n
    assert constraints() == 0  # no mesh and no rules: nothing to constrain


# --------------------------------------------------------------------------------------------
# 7. Low-rank building blocks
# --------------------------------------------------------------------------------------------


def test_low_rank_dense_params_and_product():
    cfg = BASE
    layer = LowRankDense(24, 4, ("embed", "mlp"), cfg)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 16)), jnp.float32)
    shapes = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
    assert count_params(nn.meta.unbox(shapes)) == 16 * 4 + 4 * 24 + 24
    assert set(nn.meta.unbox(shapes)) == {"down", "up"}
    assert "bias" not in shapes["down"]  # the bias sits on the second factor
    rng = np.random.default_rng(3)
    p = {"down": {"kernel": rng.normal(size=(16, 4)).astype(np.float32)},
         "up": {"kernel": rng.normal(size=(4, 24)).astype(np.float32),
                "bias": rng.normal(size=(24,)).astype(np.float32)}}
    y = layer.apply({"params": p}, x)
    want = np.asarray(x) @ (p["down"]["kernel"] @ p["up"]["kernel"]) + p["up"]["bias"]
    close(y, want, 1e-4)


def test_factor_std_gives_the_product_the_initializer_std():
    std, rank = 0.02, 64
    cfg = BASE.replace(initializer_range=std)
    assert factor_std(std, rank) ** 4 * rank == pytest.approx(std**2)
    layer = LowRankDense(512, rank, ("embed", "mlp"), cfg)
    init = jax.jit(layer.init, compiler_options=FAST_COMPILE)
    p = nn.meta.unbox(init(jax.random.key(0), jnp.zeros((1, 512)))["params"])
    down, up = np.asarray(p["down"]["kernel"]), np.asarray(p["up"]["kernel"])
    assert down.std() == pytest.approx(factor_std(std, rank), rel=0.05)
    assert (down @ up).std() == pytest.approx(std, rel=0.1)
    np.testing.assert_array_equal(np.asarray(p["up"]["bias"]), 0.0)

    emb_cfg = BASE.replace(vocab_size=1024, embedding_size=128, embedding_rank=16,
                           initializer_range=std)
    init = jax.jit(WordEmbeddings(emb_cfg).init, compiler_options=FAST_COMPILE)
    w = nn.meta.unbox(init(jax.random.key(1), jnp.zeros((1, 2), jnp.int32))["params"])
    product = np.asarray(w["embedding"]) @ np.asarray(w["projection"])
    assert product.shape == (1024, 128)
    assert product.std() == pytest.approx(std, rel=0.1)


def test_low_rank_word_embeddings_lookup_and_attend():
    cfg = FACTORIZED
    module = WordEmbeddings(cfg)
    p = params_for(cfg)["embeddings"]["word_embeddings"]
    a, b = np.asarray(p["embedding"]), np.asarray(p["projection"])
    assert a.shape == (V, 4) and b.shape == (4, cfg.emb_size)
    x = np.random.default_rng(4).normal(size=(B, L, cfg.emb_size)).astype(np.float32)
    close(module.apply({"params": p}, x, method=WordEmbeddings.attend), x @ (a @ b).T, 1e-5)
    close(module.apply({"params": p}, IDS), (a @ b)[IDS], 1e-6)


# --------------------------------------------------------------------------------------------
# 8. Shape errors and short position tables
# --------------------------------------------------------------------------------------------


def test_input_longer_than_positions_is_a_shape_error():
    ids = np.ones((2, 17), np.int32)
    with pytest.raises(ShapeError, match=r"17.*max_position_embeddings=16"):
        run(BASE, ids=ids, mask=None)


def test_one_dimensional_input_ids_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"\[batch, length\].*\(10,\)"):
        run(BASE, ids=IDS[0], mask=None)


@pytest.mark.parametrize("name", ["attention_mask", "token_type_ids"])
def test_mask_of_the_wrong_shape_is_a_shape_error(name):
    model = build_model(BASE)
    bad = np.ones((B, L - 1), np.int32)
    with pytest.raises(ShapeError) as e:
        model.apply({"params": params_for(BASE)}, IDS, **{name: bad})
    msg = str(e.value)
    assert name in msg and str((B, L - 1)) in msg and str((B, L)) in msg


def test_short_position_table():
    """max_position_embeddings < 8: abstract_params must not trace a longer input."""
    cfg = BASE.replace(max_position_embeddings=4)
    shapes = abstract_params(cfg)
    assert shapes["embeddings"]["position_embeddings"]["embedding"].shape == (4, 8)
    out = jax.eval_shape(functools.partial(run, cfg, ids=IDS[:, :4], mask=MASK[:, :4]))
    assert out.last_hidden_state.shape == (B, 4, 16)
    with pytest.raises(ShapeError, match="input length 5"):
        jax.eval_shape(functools.partial(run, cfg, ids=IDS[:, :5], mask=MASK[:, :5]))


def test_position_ids_of_the_wrong_shape_is_a_shape_error():
    with pytest.raises(ShapeError, match="position_ids"):
        run(BASE, position_ids=np.zeros((B, L + 1), np.int32))


def test_config_error_for_bad_build_model_input():
    with pytest.raises(ConfigError, match="model.bogus"):
        build_model({"bogus": 1})

"""The configurable distillation objective: weighting, schedules, recipes, identity, requests,
validation errors, layer maps and jit, on tiny models (debug configs, batch 2, one padded row).
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.config_lib import load_config
from kdjax.distill import losses as L
from kdjax.distill.objective import auto_relation_heads, build_objective
from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.model import abstract_params, build_model

B, SEQ = 2, 9
MASK_ID = 4

TEACHER = EncoderConfig.from_any(load_config("debug").model)  # 64 wide, 4 layers, 4 heads
STUDENT = EncoderConfig.from_any(load_config("debug:student").model)  # 32 wide, 2 layers, 2 heads
STUDENT_4H = STUDENT.replace(num_heads=4)  # the teacher's head count
TEACHER_GEN = TEACHER.replace(head="generator")
STUDENT_GEN = STUDENT.replace(head="generator")

RECIPES = ("paper_kd", "minilm", "minilmv2", "kominilm", "tinybert", "distilbert", "ckd")
# recipe -> (student config, teacher config) that the recipe supports.
PAIRS = {
    "paper_kd": (STUDENT, TEACHER),
    "minilmv2": (STUDENT, TEACHER),
    "ckd": (STUDENT, TEACHER),
    "minilm": (STUDENT_4H, TEACHER),
    "kominilm": (STUDENT_4H, TEACHER),
    "tinybert": (STUDENT_4H, TEACHER),
    "distilbert": (STUDENT_GEN, TEACHER_GEN),
}


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
    """XLA backend optimisation dominates the runtime of these tiny programs; skip it here.
    Values are the same up to rounding (jit's cache does not key on this flag, so a program
    compiled here may be reused by a later test: it is only less optimised)."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


# Every optional output, so one compiled forward per model serves every objective.
ALL_OUTPUTS = (("compute_logits", True), ("output_attention_scores", True),
               ("output_attentions", True), ("output_hidden_states", True), ("output_qkv", True))


@functools.cache
def params(cfg: EncoderConfig, seed: int):
    """Random parameters of `cfg`'s shapes, filled with NumPy (no init compile): LayerNorm
    scales near 1, biases near 0, every matrix N(0, 0.1). Different seeds = different models."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if name == "scale":
            return jnp.asarray(1.0 + 0.05 * noise)
        return jnp.asarray((0.02 if name.endswith("bias") else 0.1) * noise)

    return jax.tree_util.tree_map_with_path(fill, abstract_params(cfg))


@functools.cache
def make_batch(mlm: bool = False):
    """Two rows of length 9; row 1 has 3 padded positions. With `mlm`, 3 positions per row are
    replaced by [MASK] (the last slot of row 1 is padding of the position list)."""
    rng = np.random.default_rng(0)
    attention_mask = np.ones((B, SEQ), np.int32)
    attention_mask[1, 6:] = 0
    ids = np.where(attention_mask > 0, rng.integers(5, 512, size=(B, SEQ)), 0).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": attention_mask}
    if mlm:
        positions = np.array([[1, 3, 5], [2, 4, 0]], np.int32)
        mlm_mask = np.array([[1, 1, 1], [1, 1, 0]], np.int32)
        labels = np.take_along_axis(ids, positions, axis=1)
        masked = ids.copy()
        for b in range(B):
            for p, m in zip(positions[b], mlm_mask[b]):
                if m:
                    masked[b, p] = MASK_ID
        batch.update(input_ids=masked, mlm_positions=positions, mlm_mask=mlm_mask,
                     labels=labels, label_mask=mlm_mask)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def apply_model(cfg, p, batch, kwargs):
    return build_model(cfg).apply(
        {"params": p}, batch["input_ids"], batch["attention_mask"],
        mlm_positions=batch.get("mlm_positions"), **kwargs,
    )


@functools.cache
def forward_fn(cfg):
    """A jitted forward of `cfg` returning every optional output."""
    return jax.jit(lambda p, batch: apply_model(cfg, p, batch, dict(ALL_OUTPUTS)))


@functools.cache
def outputs(cfg, seed, mlm=False):
    """Every output of model `cfg` with parameters `seed` on the test batch (cached)."""
    return forward_fn(cfg)(params(cfg, seed), make_batch(mlm))


def projections(obj, seed=3):
    return nn.meta.unbox(obj.init_projections(jax.random.key(seed)))


def identity_projections(obj):
    out = {}
    for name, p in projections(obj).items():
        d_in, d_out = p["kernel"].shape
        assert d_in == d_out
        out[name] = {"kernel": jnp.eye(d_in), "bias": jnp.zeros((d_out,))}
    return out


def recipe(name, *overrides):
    return load_config(f"objectives/{name}", list(overrides))


# EncoderOutput fields -> the model_kwargs flag that produces them.
FIELD_FLAGS = {
    "hidden_states": "output_hidden_states", "attentions": "output_attentions",
    "attention_scores": "output_attention_scores", "queries": "output_qkv",
    "keys": "output_qkv", "values": "output_qkv", "logits": "compute_logits",
    "mlm_hidden": "compute_logits",
}


def strip(out, kwargs):
    """`out` with only the fields `kwargs` (from `model_kwargs`) asks for, so an objective that
    reads an output it did not request fails instead of passing."""
    return out.replace(**{f: None for f, flag in FIELD_FLAGS.items() if not kwargs[flag]})


def run_objective(obj, proj, s_out, t_out, batch, step):
    t_out = strip(t_out, obj.model_kwargs("teacher")) if obj.needs_teacher else None
    return obj(proj, strip(s_out, obj.model_kwargs("student")), t_out, batch, step)


def evaluate(config, s_cfg=STUDENT, t_cfg=TEACHER, step=0, mlm=False, same=False):
    """Build the objective and evaluate it (eagerly) on cached model outputs. `same`: the
    student is the teacher (same config and parameters) with identity projections."""
    obj = build_objective(config, s_cfg, t_cfg)
    s_out = outputs(t_cfg, 0, mlm) if same else outputs(s_cfg, 1, mlm)
    proj = identity_projections(obj) if same else projections(obj)
    total, logged = run_objective(obj, proj, s_out, outputs(t_cfg, 0, mlm), make_batch(mlm), step)
    return obj, total, logged


def tree_norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))))


def tree_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------------------------
# 1. total = sum of weight x value
# ------------------------------------------------------------------------------------------


def test_total_is_weighted_sum_of_logged_terms():
    weights = {"logits": 0.5, "hidden": 2.0, "attn_q": 0.5, "attn_k": 2.0}
    config = recipe("paper_kd", *(f"terms.{k}.weight={w}" for k, w in weights.items()))
    obj, total, logged = evaluate(config)
    assert {t.name: t.weight for t in obj.terms} == weights
    assert set(logged) == set(weights)  # constant weights are not logged
    values = {k: float(v) for k, v in logged.items()}
    assert all(v > 0 for v in values.values()), values
    expected = sum(weights[k] * values[k] for k in weights)
    np.testing.assert_allclose(float(total), expected, rtol=1e-6, atol=1e-6)
    # Changing one weight moves the total by exactly the weight change times that term.
    config2 = recipe("paper_kd", *(f"terms.{k}.weight={w}" for k, w in weights.items()),
                     "terms.hidden.weight=3.0")
    _, total2, _ = evaluate(config2)
    np.testing.assert_allclose(float(total2) - float(total), values["hidden"], rtol=1e-5)


# ------------------------------------------------------------------------------------------
# 2. weight schedules
# ------------------------------------------------------------------------------------------


def test_linear_schedule_weight_over_steps():
    config = {"terms": {
        "kd": {"loss": "binary_kd_loss", "feature": "logits",
               "schedule": {"kind": "linear", "start": 1.0, "end": 0.0, "steps": 10}},
        "wr": {"loss": "wr_distance", "feature": "hidden", "mapping": "last", "weight": 2.0},
    }}
    for step, want in ((0, 1.0), (5, 0.5), (10, 0.0), (25, 0.0)):
        _, total, logged = evaluate(config, step=jnp.asarray(step, jnp.int32))
        assert "wr_weight" not in logged  # constant weights are not logged
        np.testing.assert_allclose(float(logged["kd_weight"]), want, atol=1e-7)
        assert float(logged["kd"]) > 0 and float(logged["wr"]) > 0
        expected = want * float(logged["kd"]) + 2.0 * float(logged["wr"])
        np.testing.assert_allclose(float(total), expected, rtol=1e-6, atol=1e-7)


def test_tinybert_piecewise_switches_stage_at_boundary():
    stage1, stage2 = ("emb", "hidden", "attn"), ("pred",)
    totals = {}
    for step in (0, 3, 4, 100):
        _, total, logged = evaluate(load_config("objectives/tinybert:4"), STUDENT_4H, step=step)
        on, off = (stage1, stage2) if step < 4 else (stage2, stage1)
        for name in on:
            assert float(logged[f"{name}_weight"]) == 1.0, (step, name)
        for name in off:
            assert float(logged[f"{name}_weight"]) == 0.0, (step, name)
        assert all(float(logged[n]) > 0 for n in stage1 + stage2)
        np.testing.assert_allclose(float(total), sum(float(logged[n]) for n in on), rtol=1e-6)
        totals[step] = float(total)
    assert totals[0] == totals[3] and totals[4] == totals[100] and totals[3] != totals[4]


def test_piecewise_schedule_with_several_boundaries():
    config = {"terms": {"kd": {
        "loss": "binary_kd_loss", "feature": "logits", "weight": 2.0,
        "schedule": {"kind": "piecewise", "boundaries": (3, 6), "values": (0.0, 0.5, 1.0)},
    }}}
    for step, mult in ((0, 0.0), (2, 0.0), (3, 0.5), (5, 0.5), (6, 1.0), (50, 1.0)):
        _, total, logged = evaluate(config, step=step)
        np.testing.assert_allclose(float(logged["kd_weight"]), 2.0 * mult)
        np.testing.assert_allclose(float(total), 2.0 * mult * float(logged["kd"]), rtol=1e-6)


# ------------------------------------------------------------------------------------------
# 3. every recipe: finite total, finite non-zero gradients
# ------------------------------------------------------------------------------------------


# Recipes grouped by student: one compiled program per group (one student forward, the
# per-recipe backward passes batched by jacrev) keeps the file fast.
GROUPS = {
    STUDENT: ("paper_kd", "minilmv2", "ckd"),
    STUDENT_4H: ("minilm", "kominilm", "tinybert"),
    STUDENT_GEN: ("distilbert",),
}


@functools.cache
def recipe_grads(s_cfg):
    """{recipe: (objective, total, logged, d total / d student params, d total / d projections)}
    for the recipes of GROUPS[s_cfg], from one jitted program."""
    names = GROUPS[s_cfg]
    t_cfg = PAIRS[names[0]][1]
    objs = [build_objective(recipe(n), s_cfg, t_cfg) for n in names]
    mlm = any(o.needs_mlm_positions for o in objs)
    batch, t_out, forward = make_batch(mlm), outputs(t_cfg, 0, mlm), forward_fn(s_cfg)

    @jax.jit
    @functools.partial(jax.jacrev, argnums=(0, 1), has_aux=True)
    def grads(s_params, projs):
        s_out = forward(s_params, batch)
        res = [run_objective(o, p, s_out, t_out, batch, 0) for o, p in zip(objs, projs)]
        totals = jnp.stack([total for total, _ in res])
        return totals, (totals, [logged for _, logged in res])

    projs = [projections(o) for o in objs]
    (g_student, g_projs), (totals, logged) = grads(params(s_cfg, 1), projs)
    return {
        name: (obj, totals[i], logged[i], jax.tree.map(lambda g, i=i: g[i], g_student),
               jax.tree.map(lambda g, i=i: g[i], g_projs[i]))
        for i, (name, obj) in enumerate(zip(names, objs))
    }


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_and_has_gradients(name):
    s_cfg, t_cfg = PAIRS[name]
    obj, total, logged, g_student, g_proj = recipe_grads(s_cfg)[name]
    assert obj.needs_mlm_positions == (name == "distilbert")
    assert set(g_proj) == {t.name for t in obj.terms if t.projection}
    assert np.isfinite(float(total)) and float(total) > 0
    for term in obj.terms:
        value = float(logged[term.name])
        assert np.isfinite(value), term.name
        assert value > 0, f"{term.name} is 0 for different student and teacher"
    assert tree_finite(g_student) and tree_norm(g_student) > 0
    assert tree_norm(g_student["encoder"]) > 0
    assert tree_finite(g_proj)
    for term in obj.terms:
        if term.projection:
            assert tree_norm(g_proj[term.name]["kernel"]) > 0, term.name
    # The jitted value agrees with an eager evaluation.
    _, eager_total, _ = evaluate(recipe(name), s_cfg, t_cfg, mlm=obj.needs_mlm_positions)
    np.testing.assert_allclose(float(total), float(eager_total), rtol=1e-5)


def test_labels_only_objective_runs_without_teacher():
    config = {"terms": {"mlm": {"loss": "hard_label_loss", "feature": "labels"}}}
    obj = build_objective(config, STUDENT_GEN, TEACHER_GEN)
    assert not obj.needs_teacher
    batch = make_batch(True)
    s_out = outputs(STUDENT_GEN, 1, True)
    total, logged = run_objective(obj, {}, s_out, None, batch, 0)
    want = L.hard_label_loss(s_out.logits, batch["labels"], mask=batch["label_mask"])
    np.testing.assert_allclose(float(total), float(want), rtol=1e-6)
    np.testing.assert_allclose(float(logged["mlm"]), float(want), rtol=1e-6)


# ------------------------------------------------------------------------------------------
# 4. student == teacher: every distillation term vanishes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ("paper_kd", "minilm", "minilmv2", "ckd"))
def test_identical_student_and_teacher_give_zero(name):
    obj, total, logged = evaluate(recipe(name), TEACHER, TEACHER, same=True)
    assert len(logged) == len(obj.terms)
    for term_name, value in logged.items():
        assert abs(float(value)) <= 1e-5, (term_name, float(value))
    assert abs(float(total)) <= 1e-5
    # The zero comes from the equality: a different teacher-shaped student is not ~0.
    _, _, logged = evaluate(recipe(name), TEACHER, TEACHER)
    for term_name, value in logged.items():
        assert float(value) > 1e-5, (term_name, float(value))


# ------------------------------------------------------------------------------------------
# 5. model_kwargs: only what the terms read
# ------------------------------------------------------------------------------------------


def test_model_kwargs_ckd():
    obj = build_objective(recipe("ckd"), STUDENT, TEACHER)
    for who in ("student", "teacher"):
        kw = obj.model_kwargs(who)
        assert kw["output_hidden_states"] and kw["compute_logits"]
        assert not kw["output_attentions"] and not kw["output_qkv"]
        assert not kw["output_attention_scores"]


def test_model_kwargs_minilm():
    obj = build_objective(recipe("minilm"), STUDENT_4H, TEACHER)
    for who in ("student", "teacher"):
        kw = obj.model_kwargs(who)
        assert kw["output_attentions"] and kw["output_qkv"]
        assert not kw["output_hidden_states"] and not kw["output_attention_scores"]
        assert not kw["compute_logits"]


def test_model_kwargs_tinybert_asks_for_scores():
    obj = build_objective(recipe("tinybert"), STUDENT_4H, TEACHER)
    kw = obj.model_kwargs("teacher")
    assert kw["output_attention_scores"] and kw["output_hidden_states"] and kw["compute_logits"]
    assert not kw["output_attentions"] and not kw["output_qkv"]


def test_model_kwargs_logits_only():
    config = {"terms": {"kd": {"loss": "binary_kd_loss", "feature": "logits"}}}
    obj = build_objective(config, STUDENT, TEACHER)
    for who in ("student", "teacher"):
        kw = obj.model_kwargs(who)
        assert kw.pop("compute_logits") is True
        assert not any(kw.values()), kw
    assert obj.needs_teacher and not obj.needs_mlm_positions


def test_model_kwargs_labels_only():
    config = {"terms": {"mlm": {"loss": "hard_label_loss", "feature": "labels"}}}
    obj = build_objective(config, STUDENT_GEN, TEACHER_GEN)
    assert obj.needs_teacher is False
    assert not any(obj.model_kwargs("teacher").values())
    kw = obj.model_kwargs("student")
    assert kw.pop("compute_logits") is True and not any(kw.values())


def test_model_kwargs_distilbert():
    obj = build_objective(recipe("distilbert"), STUDENT_GEN, TEACHER_GEN)
    assert obj.needs_mlm_positions and obj.needs_teacher
    for who in ("student", "teacher"):
        kw = obj.model_kwargs(who)
        assert kw["compute_logits"] and kw["output_hidden_states"]
        assert not kw["output_attentions"] and not kw["output_qkv"]


# ------------------------------------------------------------------------------------------
# 6. configuration errors, raised at build time and naming the term
# ------------------------------------------------------------------------------------------

_ERRORS = {
    "unknown_loss": ({"loss": "kl_magic", "feature": "hidden"}, STUDENT, TEACHER,
                     ["kl_magic"]),
    "unknown_feature": ({"loss": "hidden_mse", "feature": "pooled"}, STUDENT, TEACHER,
                        ["pooled"]),
    "heads": ({"loss": "attention_kl", "feature": "attention", "mapping": "last"},
              STUDENT, TEACHER, [r"\b2\b", r"\b4\b", "qkv_relation_kl"]),
    "width": ({"loss": "hidden_mse", "feature": "hidden"}, STUDENT, TEACHER,
              ["projection", r"\b32\b", r"\b64\b"]),
    "attn_embeddings": ({"loss": "attention_kl", "feature": "attention", "mapping": "uniform",
                         "include_embeddings": True}, STUDENT_4H, TEACHER,
                        ["include_embeddings"]),
    "unknown_key": ({"loss": "hidden_mse", "feature": "hidden", "projection": True,
                     "wieght": 2.0}, STUDENT, TEACHER, ["wieght"]),
    "mlm_heads": ({"loss": "kd_loss", "feature": "mlm_logits"}, STUDENT, TEACHER,
                  ["generator"]),
    "schedule_kind": ({"loss": "binary_kd_loss", "feature": "logits",
                       "schedule": {"kind": "exponential"}}, STUDENT, TEACHER,
                      ["schedule", "exponential"]),
    "piecewise_lengths": ({"loss": "binary_kd_loss", "feature": "logits",
                           "schedule": {"kind": "piecewise", "boundaries": (5, 10),
                                        "values": (1.0, 0.0)}}, STUDENT, TEACHER,
                          ["schedule", "piecewise"]),
}


@pytest.mark.parametrize("case", sorted(_ERRORS))
def test_config_errors_name_the_term(case):
    spec, s_cfg, t_cfg, patterns = _ERRORS[case]
    # A valid term next to the broken one: the error must name the broken one.
    config = {"terms": {"ok": {"loss": "binary_kd_loss", "feature": "logits"}, "broken": spec}}
    with pytest.raises(ConfigError) as info:
        build_objective(config, s_cfg, t_cfg)
    msg = str(info.value)
    assert "objective.terms.broken" in msg, msg
    for pattern in patterns:
        assert re.search(pattern, msg), (pattern, msg)


@pytest.mark.parametrize("terms", [{}, None])
def test_empty_terms_is_an_error(terms):
    config = {} if terms is None else {"terms": terms}
    with pytest.raises(ConfigError, match="objective.terms"):
        build_objective(config, STUDENT, TEACHER)


def test_errors_come_from_recipes_on_incompatible_pairs():
    # minilm on the 2-head student: caught at build time, before any model runs.
    with pytest.raises(ConfigError, match=r"objective\.terms\.at\b.*qkv_relation_kl"):
        build_objective(recipe("minilm"), STUDENT, TEACHER)
    with pytest.raises(ConfigError, match=r"objective\.terms\.soft_ce\b"):
        build_objective(recipe("distilbert"), STUDENT, TEACHER)


# ------------------------------------------------------------------------------------------
# 7. layer maps and relation heads
# ------------------------------------------------------------------------------------------


def _hidden_term(**extra):
    return {"terms": {"h": {"loss": "hidden_mse", "feature": "hidden", "projection": True,
                            **extra}}}


@pytest.mark.parametrize("extra, pairs", [
    ({"mapping": "uniform"}, ((1, 2), (2, 4))),
    ({"mapping": "uniform", "include_embeddings": True}, ((0, 0), (1, 2), (2, 4))),
    ({"mapping": "last"}, ((2, 4),)),
    ({"mapping": "emb_skip"}, ((0, 0), (1, 2), (2, 4))),
    ({"mapping": "every"}, ((1, 2), (2, 4))),
    ({"mapping": "explicit", "pairs": ((2, 3), (1, 1))}, ((2, 3), (1, 1))),
    ({"feature": "embeddings"}, ((0, 0),)),
])
def test_layer_pairs_follow_the_mapping(extra, pairs):
    obj = build_objective(_hidden_term(**extra), STUDENT, TEACHER)
    assert obj.terms[0].pairs == pairs


def test_recipe_layer_pairs():
    want = {
        "paper_kd": {"hidden": ((0, 0), (1, 2), (2, 4)), "attn_q": ((2, 4),)},
        "ckd": {"wr_dist": ((2, 4),), "ltr_dist": ((0, 0), (1, 2), (2, 4))},
        "kominilm": {"at": ((1, 2), (2, 4)), "vr": ((1, 2), (2, 4))},
        "tinybert": {"emb": ((0, 0),), "hidden": ((1, 2), (2, 4)), "attn": ((1, 2), (2, 4))},
    }
    for name, terms in want.items():
        obj = build_objective(recipe(name), *PAIRS[name])
        got = {t.name: t.pairs for t in obj.terms}
        for term, pairs in terms.items():
            assert got[term] == pairs, (name, term)


def test_per_layer_term_is_the_mean_over_its_pairs():
    obj = build_objective(_hidden_term(mapping="uniform", include_embeddings=True),
                          STUDENT, TEACHER)
    proj = projections(obj)
    batch = make_batch()
    s_hs = outputs(STUDENT, 1).hidden_states
    t_hs = outputs(TEACHER, 0).hidden_states
    p = proj["h"]
    values = [L.hidden_mse(s_hs[i] @ p["kernel"] + p["bias"], t_hs[j],
                           mask=batch["attention_mask"])
              for i, j in ((0, 0), (1, 2), (2, 4))]
    _, total, logged = evaluate(_hidden_term(mapping="uniform", include_embeddings=True))
    np.testing.assert_allclose(float(logged["h"]), float(np.mean(values)), rtol=1e-5)
    np.testing.assert_allclose(float(total), float(np.mean(values)), rtol=1e-5)


def _cfg(width, heads):
    return EncoderConfig(hidden_size=width, num_heads=heads, intermediate_size=4 * width,
                         num_layers=2)


def test_auto_relation_heads():
    assert auto_relation_heads(_cfg(256, 4), _cfg(768, 12)) == 8
    assert auto_relation_heads(_cfg(768, 12), _cfg(256, 4)) == 8
    assert auto_relation_heads(_cfg(384, 12), _cfg(768, 12)) == 12
    assert auto_relation_heads(STUDENT, TEACHER) == 4
    # The recipes resolve "auto" to that count; an explicit count is kept.
    obj = build_objective(recipe("minilmv2"), _cfg(256, 4), _cfg(768, 12))
    assert all(dict(t.options)["num_relation_heads"] == 8 for t in obj.terms)
    obj = build_objective(recipe("minilmv2"), _cfg(384, 12), _cfg(768, 12))
    assert all(dict(t.options)["num_relation_heads"] == 12 for t in obj.terms)
    config = {"terms": {"qq": {"loss": "qkv_relation_kl", "feature": "q", "mapping": "last",
                               "options": {"num_relation_heads": 16}}}}
    obj = build_objective(config, _cfg(256, 4), _cfg(768, 12))
    assert dict(obj.terms[0].options)["num_relation_heads"] == 16


def test_relation_heads_must_divide_both_widths():
    config = {"terms": {"qq": {"loss": "qkv_relation_kl", "feature": "q", "mapping": "last",
                               "options": {"num_relation_heads": 12}}}}
    with pytest.raises(ConfigError, match=r"objective\.terms\.qq.*\b12\b.*\b256\b"):
        build_objective(config, _cfg(256, 4), _cfg(768, 12))


# ------------------------------------------------------------------------------------------
# 8. jit
# ------------------------------------------------------------------------------------------


def test_objective_under_jit_matches_eager():
    # TinyBERT: projections, attention scores and a piecewise schedule on a traced step.
    s_cfg, t_cfg = STUDENT_4H, TEACHER
    obj = build_objective(load_config("objectives/tinybert:3"), s_cfg, t_cfg)
    proj = projections(obj)

    def total_fn(s_params, t_params, batch, step):
        t_out = forward_fn(t_cfg)(t_params, batch)
        return run_objective(obj, proj, forward_fn(s_cfg)(s_params, batch), t_out, batch, step)[0]

    traces = []
    jitted = jax.jit(lambda *a: (traces.append(1), total_fn(*a))[1])
    args = (params(s_cfg, 1), params(t_cfg, 0), make_batch())
    values = []
    for step in (0, 5):  # both sides of the boundary, one compilation
        step = jnp.asarray(step, jnp.int32)
        eager = float(total_fn(*args, step))
        np.testing.assert_allclose(float(jitted(*args, step)), eager, rtol=1e-5, atol=1e-7)
        values.append(eager)
    assert values[0] != values[1]
    assert len(traces) == 1  # the step is traced, not baked in


# ------------------------------------------------------------------------------------------
# Terms that could not run must fail at build time (cheap, before any compute).
# ------------------------------------------------------------------------------------------


def _build_or_config_error(config, s_cfg=STUDENT, t_cfg=TEACHER):
    """The objective, or None when the build raised ConfigError (any other error propagates)."""
    try:
        return build_objective(config, s_cfg, t_cfg)
    except ConfigError as e:
        assert "objective.terms." in str(e), str(e)
        return None


def test_relation_heads_from_a_cli_override_are_usable():
    config = recipe("minilmv2", "terms.qq.options.num_relation_heads=4")
    obj = build_objective(config, STUDENT, TEACHER)
    heads = dict(obj.terms[0].options)["num_relation_heads"]
    assert heads == 4 and isinstance(heads, int)


@pytest.mark.parametrize("heads", [0, -4])
def test_bad_relation_head_counts_are_config_errors(heads):
    config = {"terms": {"qq": {"loss": "qkv_relation_kl", "feature": "q", "mapping": "last",
                               "options": {"num_relation_heads": heads}}}}
    assert _build_or_config_error(config) is None


@pytest.mark.parametrize("spec, s_cfg", [
    # softmax KD over a discriminator's [B, L] sigmoid logits -> ShapeError at compute
    ({"loss": "kd_loss", "feature": "logits"}, STUDENT),
    # projections only make sense on [B, L, H] features -> dot_general TypeError at compute
    ({"loss": "attention_score_mse", "feature": "attention_scores", "mapping": "last",
      "projection": True}, STUDENT_4H),
    ({"loss": "qkv_relation_kl", "feature": "q", "mapping": "last", "projection": True},
     STUDENT),
    # attention losses on hidden states -> ShapeError at compute
    ({"loss": "attention_kl", "feature": "hidden", "mapping": "last"}, STUDENT_4H),
    ({"loss": "value_relation_kl", "feature": "hidden", "mapping": "last"}, STUDENT_4H),
])
def test_unrunnable_terms_fail_at_build(spec, s_cfg):
    assert _build_or_config_error({"terms": {"bad": spec}}, s_cfg) is None


def test_generator_label_term_needs_mlm_positions():
    config = {"terms": {"mlm": {"loss": "hard_label_loss", "feature": "labels"},
                        "cos": {"loss": "cosine_loss", "feature": "hidden", "mapping": "last",
                                "projection": True}}}
    assert build_objective(config, STUDENT_GEN, TEACHER_GEN).needs_mlm_positions


def test_cosine_schedule_ends_at_end_like_linear():
    spec = {"start": 2.0, "end": 0.5, "steps": 10}
    config = {"terms": {k: {"loss": "binary_kd_loss", "feature": "logits",
                            "schedule": {"kind": k, **spec}} for k in ("linear", "cosine")}}
    obj = build_objective(config, STUDENT, TEACHER)
    ends = [float(t.weight_at(jnp.asarray(10))) for t in obj.terms]
    np.testing.assert_allclose(ends, [0.5, 0.5])

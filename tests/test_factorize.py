"""Tests of `kdjax.factorize`: SVD factors, factorize/merge of whole models, student init."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.errors import ConfigError, ShapeError
from kdjax.factorize import (
    every_kth,
    factorize_params,
    init_student_from_teacher,
    merge_factors,
    merge_params,
    select_layers,
    stack_layers,
    svd_factors,
    unstack_layers,
)
from kdjax.models.config import EncoderConfig
from kdjax.models.model import build_model, init_params

V, H, HEADS, F = 97, 32, 4, 64
BASE = EncoderConfig(
    vocab_size=V,
    hidden_size=H,
    num_heads=HEADS,
    intermediate_size=F,
    num_layers=2,
    max_position_embeddings=16,
    head="discriminator",
    hidden_dropout=0.0,
    attention_dropout=0.0,
)


def full_ranks(cfg: EncoderConfig) -> EncoderConfig:
    return cfg.replace(
        ffn_rank=min(cfg.hidden_size, cfg.intermediate_size),
        attention_rank=cfg.hidden_size,
        embedding_rank=min(cfg.vocab_size, cfg.emb_size),
    )


def leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


@functools.cache
def init_shapes(cfg: EncoderConfig):
    """`init_params(cfg)` as ShapeDtypeStructs (traced once per config: tracing dominates)."""
    return jax.eval_shape(lambda: init_params(cfg))


def assert_like_init(params, cfg: EncoderConfig) -> None:
    """Same tree structure, shapes and dtypes as `init_params(cfg)`."""
    ref = init_shapes(cfg)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref)
    for (path, a), (_, b) in zip(leaves(params), leaves(ref)):
        assert a.shape == b.shape and a.dtype == b.dtype, jax.tree_util.keystr(path)


def assert_trees_close(a, b, atol: float) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for (path, x), (_, y) in zip(leaves(a), leaves(b)):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path)
        )


def random_params(cfg: EncoderConfig, seed: int = 0, as_jax: bool = False) -> dict:
    """Random parameters shaped like `init_params(cfg)`, drawn with numpy.

    numpy leaves by default: that keeps the (host-side) conversions free of per-shape jax
    compiles, which dominate the runtime of tiny tests; `as_jax` gives jax arrays.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        x = rng.normal(0.0, 0.2, leaf.shape)
        if getattr(path[-1], "key", None) == "scale":
            x += 1.0
        return jnp.asarray(x, leaf.dtype) if as_jax else x.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, init_shapes(cfg))


BATCH_IDS = np.random.default_rng(0).integers(1, V, size=(3, 10)).astype(np.int32)
BATCH_MASK = np.ones((3, 10), np.int32)
BATCH_MASK[1, 6:] = 0
BATCH_MASK[2, 3:] = 0


def run(cfg: EncoderConfig, params) -> list[np.ndarray]:
    """Every hidden state and the head logits on a padded batch (eager: faster than jit here)."""
    out = build_model(cfg).apply(
        {"params": params}, BATCH_IDS, attention_mask=BATCH_MASK, output_hidden_states=True
    )
    assert len(out.hidden_states) == cfg.num_layers + 1
    return [np.asarray(h) for h in out.hidden_states] + [np.asarray(out.logits)]


def run_loop(cfg: EncoderConfig, params) -> list[np.ndarray]:
    """`run` in the loop layout (a reference for scan-layout params; cheaper than a scan)."""
    return run(cfg.replace(scan_layers=False), unstack_layers(params, cfg))


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


# -- svd_factors / merge_factors ------------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 5, 16, 23])
def test_truncation_error_is_the_discarded_singular_values(rank):
    w = np.random.default_rng(1).normal(size=(24, 40)).astype(np.float32)
    down, up = svd_factors(w, rank)
    assert down.shape == (24, rank) and up.shape == (rank, 40)
    assert down.dtype == up.dtype == np.float32
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    residual = w.astype(np.float64) - merge_factors(down, up).astype(np.float64)
    np.testing.assert_allclose(np.sum(residual**2), np.sum(s[rank:] ** 2), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(residual, 2), s[rank], rtol=1e-5)
    # Balanced: both factors carry sqrt(s).
    np.testing.assert_allclose(np.linalg.norm(down, axis=0), np.sqrt(s[:rank]), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(up, axis=1), np.sqrt(s[:rank]), rtol=1e-5)


@pytest.mark.parametrize("shape", [(20, 12), (12, 20), (16, 16)])
def test_full_rank_factorization_is_exact(shape):
    w = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    down, up = svd_factors(w, min(shape))
    assert np.max(np.abs(merge_factors(down, up) - w)) <= 1e-5


def test_batched_factors_match_per_matrix_and_keep_array_kind():
    w = jnp.asarray(np.random.default_rng(3).normal(size=(3, 20, 12)), jnp.float32)
    down, up = svd_factors(w, 4)
    assert isinstance(down, jax.Array) and isinstance(up, jax.Array)
    assert down.shape == (3, 20, 4) and up.shape == (3, 4, 12) and down.dtype == jnp.float32
    merged = merge_factors(down, up)
    assert isinstance(merged, jax.Array) and merged.shape == (3, 20, 12)
    for i in range(3):
        d_i, u_i = svd_factors(np.asarray(w[i]), 4)
        np.testing.assert_allclose(np.asarray(merged[i]), d_i @ u_i, atol=1e-5)
    full = merge_factors(*svd_factors(w, 12))
    assert float(jnp.max(jnp.abs(full - w))) <= 1e-5


def test_bfloat16_in_bfloat16_out():
    w = jnp.asarray(np.random.default_rng(4).normal(size=(16, 8)), jnp.bfloat16)
    down, up = svd_factors(w, 8)
    assert down.dtype == up.dtype == jnp.bfloat16
    assert merge_factors(down, up).dtype == jnp.bfloat16


def test_lower_rank_gives_larger_matrix_error():
    w = np.random.default_rng(5).normal(size=(32, 64)).astype(np.float32)
    errors = [
        float(np.linalg.norm(w - merge_factors(*svd_factors(w, r)))) for r in (32, 24, 16, 8, 2)
    ]
    assert errors[0] <= 1e-4
    assert all(a < b for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("rank", [0, 9, -1, 2.0, True])
def test_bad_rank_raises(rank):
    with pytest.raises(ConfigError, match="rank"):
        svd_factors(np.ones((8, 6), np.float32), rank)


def test_bad_shapes_raise():
    with pytest.raises(ShapeError):
        svd_factors(np.ones(5, np.float32), 1)
    with pytest.raises(ShapeError, match=r"\(8, 3\).*\(4, 5\)"):
        merge_factors(np.ones((8, 3)), np.ones((4, 5)))


# -- factorize_params / merge_params ---------------------------------------------------------------
@functools.cache
def dense_outputs(head: str, emb: int) -> list[np.ndarray]:
    """Outputs of the dense reference model (loop layout, seed 7), computed once per head."""
    cfg = BASE.replace(head=head, embedding_size=emb)
    return run(cfg, random_params(cfg, 7))


@pytest.mark.parametrize(
    "head, emb, src_scan, dst_scan",
    [
        ("discriminator", 0, False, False),
        ("discriminator", 0, True, True),
        ("generator", 16, False, False),
        ("generator", 16, False, True),
    ],
)
def test_full_rank_factorization_reproduces_dense_model(head, emb, src_scan, dst_scan):
    dense_cfg = BASE.replace(head=head, embedding_size=emb, scan_layers=src_scan)
    target_cfg = full_ranks(dense_cfg).replace(scan_layers=dst_scan)
    as_jax = src_scan  # jax arrays in -> jax arrays out; numpy in -> numpy out
    loop_cfg = dense_cfg.replace(scan_layers=False)
    dense = stack_layers(random_params(loop_cfg, 7, as_jax=as_jax), dense_cfg)
    factored = factorize_params(dense, dense_cfg, target_cfg)
    assert_like_init(factored, target_cfg)
    leaf_type = jax.Array if as_jax else np.ndarray
    assert all(isinstance(x, leaf_type) for x in jax.tree_util.tree_leaves(factored))
    # The factorized model really runs in its own layout (scan or loop).
    assert max_diff(dense_outputs(head, emb), run(target_cfg, factored)) <= 1e-4


@pytest.mark.parametrize(
    "ranks, scan",
    [
        (dict(ffn_rank=8), False),  # LF-V1
        (dict(ffn_rank=8, attention_rank=4), True),  # LF-V2
        (dict(ffn_rank=8, attention_rank=4, embedding_rank=6), False),  # LF-V3
        (dict(ffn_rank=8, attention_rank=4, embedding_rank=6), True),
        (dict(embedding_rank=6), True),
    ],
)
def test_factorized_tree_matches_init_params(ranks, scan):
    dense_cfg = BASE.replace(head="generator", embedding_size=16, scan_layers=scan)
    target_cfg = dense_cfg.replace(**ranks)
    out = factorize_params(random_params(dense_cfg), dense_cfg, target_cfg)
    assert_like_init(out, target_cfg)


def test_factorize_copies_everything_not_factorized():
    dense_cfg = BASE.replace(embedding_size=16)
    target_cfg = dense_cfg.replace(ffn_rank=8)
    dense = random_params(dense_cfg)
    out = factorize_params(dense, dense_cfg, target_cfg)
    for i in range(2):
        layer, ref = out["encoder"][f"layer_{i}"], dense["encoder"][f"layer_{i}"]
        assert_trees_close(layer["attention"], ref["attention"], atol=0)
        assert_trees_close(layer["output_norm"], ref["output_norm"], atol=0)
        np.testing.assert_array_equal(layer["output"]["up"]["bias"], ref["output"]["bias"])
    for key in ("embeddings", "embeddings_project", "discriminator_head"):
        assert_trees_close(out[key], dense[key], atol=0)


def test_param_dtype_follows_target_config():
    dense_cfg = BASE
    target_cfg = BASE.replace(ffn_rank=8, param_dtype="bfloat16")
    out = factorize_params(random_params(dense_cfg), dense_cfg, target_cfg)
    assert_like_init(out, target_cfg)


def test_lower_rank_gives_larger_but_finite_output_differences():
    dense_cfg = BASE  # the same dense model as dense_outputs("discriminator", 0)
    dense = random_params(dense_cfg, 7)
    diffs = []
    for rank in (16, 4):
        cfg = dense_cfg.replace(ffn_rank=rank, attention_rank=rank, embedding_rank=rank)
        out = run(cfg, factorize_params(dense, dense_cfg, cfg))
        diffs.append(max_diff(dense_outputs("discriminator", 0), out))
    assert all(np.isfinite(diffs))
    assert 1e-4 < diffs[0] < diffs[1], diffs


@pytest.mark.parametrize("scan", [False, True])
def test_merge_inverts_factorize_at_full_rank(scan):
    dense_cfg = BASE.replace(head="generator", embedding_size=16, scan_layers=scan)
    target_cfg = full_ranks(dense_cfg)
    dense = random_params(dense_cfg, 5)
    merged_cfg, merged = merge_params(factorize_params(dense, dense_cfg, target_cfg), target_cfg)
    assert merged_cfg == dense_cfg
    assert_trees_close(merged, dense, atol=1e-5)


@pytest.mark.parametrize("head, scan", [("generator", False), ("discriminator", True)])
def test_merge_of_random_low_rank_model_keeps_outputs(head, scan):
    cfg = BASE.replace(
        head=head, embedding_size=16, scan_layers=scan, ffn_rank=6, attention_rank=5,
        embedding_rank=7,
    )
    params = random_params(cfg, 11)
    dense_cfg, dense = merge_params(params, cfg)
    assert dense_cfg == cfg.replace(ffn_rank=0, attention_rank=0, embedding_rank=0)
    assert not dense_cfg.is_factorized
    assert_like_init(dense, dense_cfg)
    # Merging is layout-agnostic; the scan model itself runs in the test above.
    assert max_diff(run_loop(cfg, params), run_loop(dense_cfg, dense)) <= 1e-5


def test_merge_of_dense_model_is_a_copy():
    params = random_params(BASE)
    cfg, out = merge_params(params, BASE)
    assert cfg == BASE
    assert_trees_close(out, params, atol=0)


def test_refactorizing_a_factorized_model_merges_first():
    src_cfg = BASE.replace(ffn_rank=8, attention_rank=6)
    dst_cfg = BASE.replace(ffn_rank=4, attention_rank=6)
    params = random_params(src_cfg, 2)
    out = factorize_params(params, src_cfg, dst_cfg)
    assert_like_init(out, dst_cfg)
    layer = out["encoder"]["layer_0"]
    assert_trees_close(layer["attention"], params["encoder"]["layer_0"]["attention"], atol=0)
    src = params["encoder"]["layer_0"]["intermediate"]
    w = merge_factors(src["down"]["kernel"], src["up"]["kernel"])
    expected = merge_factors(*svd_factors(w, 4))
    dst = layer["intermediate"]
    got = merge_factors(dst["down"]["kernel"], dst["up"]["kernel"])
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6)


@pytest.mark.parametrize(
    "key, dense_value, target_value",
    [
        ("hidden_size", 32, 48),
        ("intermediate_size", 64, 96),
        ("embedding_size", 16, 24),
        ("vocab_size", 97, 101),
        ("num_heads", 4, 8),
        ("num_layers", 2, 3),
        ("head", "discriminator", "generator"),
    ],
)
def test_mismatched_widths_raise_config_error(key, dense_value, target_value):
    dense_cfg = BASE.replace(**{key: dense_value})
    target_cfg = BASE.replace(**{key: target_value}, ffn_rank=8)
    with pytest.raises(ConfigError) as err:  # the configs are compared before the params
        factorize_params({}, dense_cfg, target_cfg)
    message = str(err.value)
    assert "\n" not in message
    assert key in message and repr(dense_value) in message and repr(target_value) in message


def test_params_not_matching_their_config_raise():
    dense_cfg = BASE
    params = random_params(BASE.replace(ffn_rank=8))
    with pytest.raises(ConfigError, match="intermediate"):
        factorize_params(params, dense_cfg, dense_cfg.replace(attention_rank=8))
    with pytest.raises(ConfigError, match="scan_layers"):
        merge_params(random_params(BASE), BASE.replace(scan_layers=True))


def test_short_max_position_embeddings():
    cfg = BASE.replace(max_position_embeddings=4)
    out = factorize_params(random_params(cfg), cfg, cfg.replace(ffn_rank=4))
    assert_like_init(out, cfg.replace(ffn_rank=4))


def test_target_head_none_drops_the_head():
    cfg = BASE.replace(head="generator")
    out = factorize_params(random_params(cfg), cfg, cfg.replace(head="none", ffn_rank=4))
    assert_like_init(out, cfg.replace(head="none", ffn_rank=4))


# -- layouts ---------------------------------------------------------------------------------------
def test_unstack_and_stack_layers_round_trip():
    scan_cfg = BASE.replace(num_layers=3, scan_layers=True, ffn_rank=4)
    stacked = random_params(scan_cfg)
    loop = unstack_layers(stacked, scan_cfg)
    assert_like_init(loop, scan_cfg.replace(scan_layers=False))
    for i in range(3):
        np.testing.assert_array_equal(
            loop["encoder"][f"layer_{i}"]["intermediate"]["down"]["kernel"],
            stacked["encoder"]["layers"]["intermediate"]["down"]["kernel"][i],
        )
    assert_trees_close(stack_layers(loop, scan_cfg), stacked, atol=0)
    loop_cfg = scan_cfg.replace(scan_layers=False)
    assert_trees_close(unstack_layers(loop, loop_cfg), loop, atol=0)
    assert_trees_close(stack_layers(loop, loop_cfg), loop, atol=0)


# -- students --------------------------------------------------------------------------------------
def test_every_kth():
    assert every_kth(12, 6) == [2, 4, 6, 8, 10, 12]
    assert every_kth(12, 4) == [3, 6, 9, 12]
    assert every_kth(12, 12) == list(range(1, 13))
    assert every_kth(12, 1) == [12]
    assert every_kth(12, 5) == [2, 4, 7, 9, 12]
    with pytest.raises(ConfigError, match="13"):
        every_kth(12, 13)
    with pytest.raises(ConfigError):
        every_kth(12, 0)


@pytest.mark.parametrize(
    "teacher_scan, student_scan", [(False, False), (True, False), (True, True)]
)
def test_select_layers_copies_the_chosen_layers(teacher_scan, student_scan):
    teacher_cfg = BASE.replace(num_layers=4, scan_layers=teacher_scan, head="generator")
    teacher = random_params(teacher_cfg, 9, as_jax=teacher_scan)
    student_cfg = None
    if student_scan != teacher_scan:
        student_cfg = teacher_cfg.replace(num_layers=2, scan_layers=student_scan)
    layers = np.array([4, 2]) if teacher_scan else [4, 2]
    cfg, student = select_layers(teacher, teacher_cfg, layers, student_cfg)
    assert cfg == teacher_cfg.replace(num_layers=2, scan_layers=student_scan)
    assert_like_init(student, cfg)
    t_loop, s_loop = unstack_layers(teacher, teacher_cfg), unstack_layers(student, cfg)
    assert_trees_close(s_loop["encoder"]["layer_0"], t_loop["encoder"]["layer_3"], atol=0)
    assert_trees_close(s_loop["encoder"]["layer_1"], t_loop["encoder"]["layer_1"], atol=0)
    for key in ("embeddings", "generator_head", "generator_bias"):
        assert_trees_close(student[key], teacher[key], atol=0)


def test_select_layers_rejects_bad_layer_numbers():
    teacher_cfg = BASE.replace(num_layers=4)
    teacher = random_params(teacher_cfg)
    for layers in ([0, 2], [2, 5], [], [1.5]):
        with pytest.raises(ConfigError, match="layer"):
            select_layers(teacher, teacher_cfg, layers)
    with pytest.raises(ConfigError, match="num_layers=3"):
        select_layers(teacher, teacher_cfg, [2, 4], teacher_cfg.replace(num_layers=3))


@pytest.mark.parametrize("scan", [False, True])
def test_init_student_from_teacher(scan):
    teacher_cfg = BASE.replace(num_layers=4, head="generator", embedding_size=16)
    teacher = random_params(teacher_cfg, 4)
    student_cfg = teacher_cfg.replace(num_layers=2, scan_layers=scan, ffn_rank=8, attention_rank=8)
    student = init_student_from_teacher(teacher, teacher_cfg, student_cfg)
    assert_like_init(student, student_cfg)
    # Default layers are every_kth(4, 2) == [2, 4]; full ranks reproduce that dense student.
    full_cfg = full_ranks(student_cfg)
    full = init_student_from_teacher(teacher, teacher_cfg, full_cfg)
    sel_cfg, selected = select_layers(teacher, teacher_cfg, [2, 4])
    merged_cfg, merged = merge_params(full, full_cfg)
    assert merged_cfg.replace(scan_layers=False) == sel_cfg
    assert_trees_close(unstack_layers(merged, merged_cfg), selected, atol=1e-5)
    if not scan:  # equal weights give equal outputs; run the model once anyway
        assert max_diff(run(sel_cfg, selected), run(full_cfg, full)) <= 1e-4


def test_init_student_with_other_widths_explains_the_alternative():
    teacher_cfg = BASE.replace(num_layers=4)
    student_cfg = BASE.replace(num_layers=2, hidden_size=16, ffn_rank=8)
    with pytest.raises(ConfigError) as err:
        init_student_from_teacher(random_params(teacher_cfg), teacher_cfg, student_cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "hidden_size" in message and "32" in message and "16" in message
    assert "SVD" in message and "random init" in message


# -- activation-aware (whitened) SVD --------------------------------------------------------------
def test_whitened_svd_is_exact_at_full_rank_and_better_on_its_inputs():
    from kdjax.factorize import svd_factors, whitened_svd_factors

    rng = np.random.default_rng(3)
    w = rng.normal(size=(24, 40))
    # inputs that use a few directions strongly: where plain SVD spends rank on the wrong ones
    x = rng.normal(size=(500, 24)) * np.geomspace(10.0, 0.01, 24)
    gram = x.T @ x / len(x)
    down, up = whitened_svd_factors(w, gram, 24, damp=0.0)
    np.testing.assert_allclose(down @ up, w, atol=1e-8)
    for rank in (2, 6, 12):
        pd, pu = svd_factors(w, rank)
        err_plain = np.linalg.norm(x @ (w - pd @ pu))
        for damp, factor in ((1e-8, 0.75), (1e-2, 1.0)):  # ~optimal; the default damping
            wd, wu = whitened_svd_factors(w, gram, rank, damp=damp)
            assert wd.shape == (24, rank) and wu.shape == (rank, 40)
            err_white = np.linalg.norm(x @ (w - wd @ wu))
            assert err_white < factor * err_plain, (rank, damp, err_white, err_plain)
    # identity statistics: the plain SVD's product
    wd, wu = whitened_svd_factors(w, np.eye(24), 6, damp=0.0)
    np.testing.assert_allclose(wd @ wu, np.matmul(*svd_factors(w, 6)), atol=1e-8)
    with pytest.raises(ShapeError, match="gram"):
        whitened_svd_factors(w, np.eye(23), 6)
    with pytest.raises(ConfigError, match="rank"):
        whitened_svd_factors(w, gram, 25)


def test_input_grams_are_each_projections_inputs_over_real_tokens():
    from kdjax.activation_stats import input_grams

    cfg = BASE.replace(num_layers=3, head="none")
    params = random_params(cfg)
    grams = input_grams(params, cfg, [{"input_ids": BATCH_IDS, "attention_mask": BATCH_MASK}])
    names = ("attention/query/", "attention/key/", "attention/value/", "attention/output/",
             "intermediate/", "output/")
    assert set(grams) == {f"encoder/layer_{i}/{n}" for i in range(3) for n in names}
    hidden = run(cfg, params)[:-1]
    real = BATCH_MASK.astype(bool)
    for i in range(3):  # q / k / v read the layer's input: hidden state i
        x = hidden[i][real].astype(np.float64)
        np.testing.assert_allclose(grams[f"encoder/layer_{i}/attention/query/"],
                                   x.T @ x / len(x), rtol=1e-4, atol=1e-5)
        assert grams[f"encoder/layer_{i}/output/"].shape == (F, F)
    # in two batches, the second shorter (padded inside): the same statistics
    split = input_grams(params, cfg, [
        {"input_ids": BATCH_IDS[:2], "attention_mask": BATCH_MASK[:2]},
        {"input_ids": BATCH_IDS[2:], "attention_mask": BATCH_MASK[2:]}])
    for key, value in grams.items():
        np.testing.assert_allclose(split[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    only = input_grams(params, cfg, [{"input_ids": BATCH_IDS, "attention_mask": BATCH_MASK}],
                       layers=[2])
    assert {k.split("/")[1] for k in only} == {"layer_1"}


def test_whitened_student_start_is_closer_to_the_teacher_on_the_data():
    """select_layers with the teacher's grams: the student's hidden states on the data the
    grams came from are closer to the teacher's layers' than with the plain SVD."""
    from kdjax.activation_stats import input_grams
    from kdjax.factorize import select_layers

    teacher = BASE.replace(num_layers=4, head="none")
    params = random_params(teacher, seed=5)
    batch = [{"input_ids": BATCH_IDS, "attention_mask": BATCH_MASK}]
    grams = input_grams(params, teacher, batch, layers=[2, 4])
    student = teacher.replace(num_layers=2, ffn_rank=4, attention_rank=6)
    _, plain = select_layers(params, teacher, [2, 4], student)
    _, white = select_layers(params, teacher, [2, 4], student, grams)
    assert_like_init(white, student)
    full_cfg, full = select_layers(params, teacher, [2, 4])
    ref = run(full_cfg, full)[1]  # the full-rank student's first layer
    real = BATCH_MASK.astype(bool)
    err = {name: float(np.linalg.norm((run(student, p)[1] - ref)[real]))
           for name, p in (("plain", plain), ("whitened", white))}
    assert err["whitened"] < err["plain"], err

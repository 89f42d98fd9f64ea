"""Length buckets: batches padded to the smallest bucket that holds them (training), rows
grouped by length for prediction, and the pre-training detection metrics."""

from __future__ import annotations

import numpy as np
import pytest

from kdjax.data.task_batches import ArrayBatches, bucket_lengths


def _arrays(lengths: list[int], max_length: int = 64) -> dict[str, np.ndarray]:
    n = len(lengths)
    mask = np.zeros((n, max_length), np.int32)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    ids = (np.arange(n)[:, None] * 1000 + np.arange(max_length)[None, :] + 1) * mask
    token_labels = np.where(mask == 1, np.arange(max_length)[None, :] % 3, -100)
    return {"input_ids": ids.astype(np.int32), "attention_mask": mask,
            "token_type_ids": np.zeros_like(mask), "labels": token_labels.astype(np.int32),
            "row_label": np.arange(n, dtype=np.int32)}


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.gamma(2.0, 9.0, size=n), 3, 64)]


def test_bucket_lengths_always_end_with_max_length():
    assert bucket_lengths((16, 32, 64, 128), 64) == (16, 32, 64)
    assert bucket_lengths((32,), 64) == (32, 64)
    assert bucket_lengths(None, 48) == (48,)
    from kdjax.errors import ConfigError

    with pytest.raises(ConfigError, match="task.buckets"):
        bucket_lengths((0, 16), 64)


def test_every_batch_holds_its_rows_and_an_epoch_covers_every_row():
    lengths = _lengths(500)
    batches = ArrayBatches(_arrays(lengths), 16, seed=3, buckets=(16, 32))
    spe = batches.steps_per_epoch()
    seen: list[int] = []
    for step in range(spe):
        rows = batches.rows(step, np.arange(16))
        length = rows["input_ids"].shape[1]
        assert length in (16, 32, 64)
        real = rows["attention_mask"].sum(axis=1)
        assert real.max() <= length  # no row is cut
        assert rows["labels"].shape == rows["input_ids"].shape  # token arrays cut too
        assert rows["row_label"].shape == (16,)  # row arrays whole
        seen += rows["row_label"].tolist()
    assert set(seen) == set(range(500))  # every row once (plus top-ups of last batches)
    assert len(seen) - 500 < 16 * 3  # at most one topped-up batch per bucket


def test_buckets_cut_padding_and_keep_lengths_matched():
    lengths = _lengths(800, seed=1)
    one = ArrayBatches(_arrays(lengths), 32, seed=0)
    bucketed = ArrayBatches(_arrays(lengths), 32, seed=0, buckets=(16, 32))
    assert one.padding_share() > 0.6 and bucketed.padding_share() < 0.35
    # each row sits in the smallest bucket that holds it (unless its bucket was merged up)
    for step in range(bucketed.steps_per_epoch()):
        idx, length = bucketed._batch(step)
        assert all(bucketed.lengths[i] <= length for i in idx)


def test_bucketed_batches_are_a_pure_function_of_seed_and_step():
    arrays = _arrays(_lengths(300, seed=2))
    a = ArrayBatches(arrays, 8, seed=5, buckets=(16, 32))
    b = ArrayBatches(arrays, 8, seed=5, buckets=(16, 32))
    for step in (0, 7, 3 * a.steps_per_epoch() + 2):  # any order, across epochs (resume)
        for key, value in a.rows(step, np.arange(8)).items():
            np.testing.assert_array_equal(value, b.rows(step, np.arange(8))[key])
    # a process's share of the rows is the same rows as in the whole batch
    whole = a.rows(4, np.arange(8))
    half = a.rows(4, np.arange(4, 8))
    np.testing.assert_array_equal(whole["row_label"][4:], half["row_label"])
    c = ArrayBatches(arrays, 8, seed=6, buckets=(16, 32))
    assert not np.array_equal(a.rows(0, np.arange(8))["row_label"],
                              c.rows(0, np.arange(8))["row_label"])


def test_a_bucket_smaller_than_a_batch_joins_a_neighbour():
    lengths = [5] * 40 + [30] * 3 + [60] * 40  # bucket 32 has 3 rows < batch 16
    batches = ArrayBatches(_arrays(lengths), 16, seed=0, buckets=(16, 32))
    assert sorted(batches._groups) == [16, 64]
    assert sorted(len(v) for v in batches._groups.values()) == [40, 43]
    shapes = batches.shapes()
    assert [s["input_ids"][0] for s in shapes] == [(16, 16), (16, 64)]
    assert shapes[0]["row_label"][0] == (16,)


def test_predictor_buckets_give_the_same_outputs():
    """Grouping rows by length and padding less changes no logit (padding is masked)."""
    import jax

    from kdjax import sharding as shd
    from kdjax.eval.throughput import random_params
    from kdjax.models.config import EncoderConfig
    from kdjax.train.placement import mesh_context, place
    from kdjax.train.predict import Predictor

    lengths = _lengths(37, seed=4)
    arrays = _arrays(lengths, 48)
    arrays["input_ids"] = np.where(arrays["attention_mask"] == 1,
                                   arrays["input_ids"] % 97 + 5, 0).astype(np.int32)
    mesh = shd.make_mesh((-1, 1, 1))
    rules = shd.get_rules("replicated")
    for head, labels in (("classification", 3), ("token_classification", 4), ("qa", 2)):
        cfg = EncoderConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=2,
                            intermediate_size=64, max_position_embeddings=64, head=head,
                            num_labels=labels)
        params = random_params(cfg, 0)
        with mesh_context(mesh, rules):
            sh = jax.tree_util.tree_map(lambda _: shd.replicated(mesh), params)
            placed = place(params, sh)
            full = Predictor(cfg, mesh, sh, 8)(placed, arrays)
            bucketed = Predictor(cfg, mesh, sh, 8, buckets=(16, 32))(placed, arrays)
        assert full.shape == bucketed.shape, head
        if head == "classification":
            np.testing.assert_allclose(bucketed, full, atol=1e-5)
        else:  # compare the real positions; padding positions are zero-filled
            mask = arrays["attention_mask"].astype(bool)
            np.testing.assert_allclose(bucketed[mask], full[mask], atol=1e-5)


def test_detection_metrics_are_precision_recall_and_auc_of_replaced_tokens():
    import jax.numpy as jnp

    from kdjax.train.workloads import detection_metrics

    logits = jnp.asarray([[3.0, -1.0, 0.5, -2.0, 9.0], [-0.5, 2.0, -3.0, 1.0, 9.0]])
    replaced = jnp.asarray([[1, 0, 0, 0, 1], [0, 1, 0, 1, 0]], bool)
    real = jnp.asarray([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], bool)  # last column: padding
    m = {k: float(v) for k, v in detection_metrics(logits, replaced, real).items()}
    # real tokens: positives 3.0, 2.0, 1.0; negatives -1.0, 0.5, -2.0, -0.5, -3.0
    assert m["replaced_fraction"] == pytest.approx(3 / 8)
    assert m["disc_precision"] == pytest.approx(3 / 4)  # predicted: 3.0, 0.5, 2.0, 1.0
    assert m["disc_recall"] == pytest.approx(1.0)
    # AUC: the share of (replaced, original) pairs ranked right (Mann-Whitney)
    pos, neg = [3.0, 2.0, 1.0], [-1.0, 0.5, -2.0, -0.5, -3.0]
    want = np.mean([p > n for p in pos for n in neg])
    assert m["disc_auc"] == pytest.approx(want)
    # a discriminator that says "original" everywhere: accuracy high, recall 0, AUC 0.5
    flat = {k: float(v) for k, v in detection_metrics(jnp.full((2, 5), -4.0), replaced,
                                                      real).items()}
    assert flat["disc_accuracy"] == pytest.approx(5 / 8)
    assert flat["disc_recall"] == 0.0 and flat["disc_precision"] == 0.0


def test_equal_token_batches_hold_more_rows_when_shorter():
    lengths = _lengths(900, seed=7)
    batches = ArrayBatches(_arrays(lengths), 16, seed=1, buckets=(16, 32), equal_tokens=True,
                           multiple=4)
    sizes = {}
    seen = []
    for step in range(batches.steps_per_epoch()):
        rows = batches.rows(step, np.arange(batches.batch_rows(step)))
        n, length = rows["input_ids"].shape
        sizes[length] = n
        assert n % 4 == 0 and n * length <= 16 * 64  # the token budget, a multiple of 4
        seen += rows["row_label"].tolist()
    assert sizes == {16: 64, 32: 32, 64: 16}
    assert set(seen) == set(range(900))
    assert [s["input_ids"][0] for s in batches.shapes()] == [(64, 16), (32, 32), (16, 64)]
    # deterministic per step, like every other batching
    again = ArrayBatches(_arrays(lengths), 16, seed=1, buckets=(16, 32), equal_tokens=True,
                         multiple=4)
    step = batches.steps_per_epoch() + 3
    np.testing.assert_array_equal(batches.rows(step, np.arange(batches.batch_rows(step)))[
        "row_label"], again.rows(step, np.arange(again.batch_rows(step)))["row_label"])

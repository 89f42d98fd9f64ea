"""`data.group_rows`: blocks of consecutive corpus rows shuffled as one (paraphrase pairs in one
batch) in training batches and in the held-out split."""

import numpy as np
import pytest

from kdjax.data.corpus import StepBatches, group_permutation
from kdjax.errors import DataError
from kdjax.train.pretrain_distill import split_heldout_rows


def _rows_of(batches: StepBatches, step: int) -> np.ndarray:
    return batches.rows(step, np.arange(batches.global_batch))["input_ids"][:, 0]


def test_group_one_is_the_plain_permutation():
    """group 1 draws exactly what it drew before the option existed (runs stay reproducible)."""
    a = group_permutation(np.random.default_rng([3, 0]), 101, 1)
    b = np.random.default_rng([3, 0]).permutation(101)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n,group", [(20, 2), (21, 2), (30, 3), (23, 4)])
def test_group_permutation_keeps_blocks_together(n, group):
    perm = group_permutation(np.random.default_rng(0), n, group)
    assert sorted(perm.tolist()) == list(range(n))  # a permutation, the last block short
    # every block of consecutive rows appears in order, in one run
    blocks = [perm[perm // group == b] for b in range(-(-n // group))]
    for b, rows in enumerate(blocks):
        start = int(np.flatnonzero(perm == rows[0])[0])
        np.testing.assert_array_equal(perm[start:start + len(rows)],
                                      np.arange(b * group, min(n, (b + 1) * group)))
    assert not np.array_equal(perm, np.arange(n))  # and it did shuffle


def test_pairs_share_a_batch_and_survive_the_heldout_split():
    """Rows 2k, 2k + 1 (a sentence and its paraphrase): with group_rows 2 the held-out rows are
    whole pairs, and every training batch holds both halves of each of its pairs; with 1 they
    do not."""
    examples = np.arange(200, dtype=np.int32)[:, None].repeat(4, axis=1)
    train, held = split_heldout_rows(examples, 15, seed=0, group=2)
    assert len(held) == 16 and len(train) == 184  # 15 rounds up to whole pairs
    for part in (train, held):
        first = part[:, 0]
        np.testing.assert_array_equal(first[0::2] // 2, first[1::2] // 2)
    batches = StepBatches(train, 8, seed=1, group=2)
    for step in range(40):  # several epochs
        ids = _rows_of(batches, step)
        np.testing.assert_array_equal(ids[0::2] // 2, ids[1::2] // 2)
    plain = StepBatches(train, 8, seed=1)
    apart = sum(int((_rows_of(plain, s)[0::2] // 2 != _rows_of(plain, s)[1::2] // 2).any())
                for s in range(10))
    assert apart == 10


def test_group_rows_below_one_is_a_config_error():
    with pytest.raises(DataError, match="data.group_rows"):
        StepBatches(np.zeros((4, 8), np.int32), 2, seed=0, group=0)

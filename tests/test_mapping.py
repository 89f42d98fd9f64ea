"""Layer-mapping strategies against the published TinyBERT / CKD / MiniLM conventions."""

from __future__ import annotations

import pytest

from kdjax.distill import mapping
from kdjax.distill.mapping import layer_map
from kdjax.errors import ConfigError

# (student layers S, teacher layers T) -> expected pairs, written out by hand.
UNIFORM = {
    (12, 12): [(i, i) for i in range(1, 13)],
    # TinyBERT-6 from BERT-base: teacher layers 2, 4, ..., 12.
    (6, 12): [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)],
    # TinyBERT-4 from BERT-base: teacher layers 3, 6, 9, 12.
    (4, 12): [(1, 3), (2, 6), (3, 9), (4, 12)],
    (3, 12): [(1, 4), (2, 8), (3, 12)],
}

# CKD "emb+skip" (GeondoPark/CKD utils.matching_alignment): gcd steps plus the embeddings.
EMB_SKIP = {
    (12, 12): [(0, 0)] + [(i, i) for i in range(1, 13)],
    (6, 12): [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)],
    (4, 12): [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)],
    (3, 12): [(0, 0), (1, 4), (2, 8), (3, 12)],
    # gcd(4, 6) = 2: student step 2, teacher step 3.
    (4, 6): [(0, 0), (2, 3), (4, 6)],
}

LAST = {(12, 12): [(12, 12)], (6, 12): [(6, 12)], (4, 12): [(4, 12)], (3, 12): [(3, 12)],
        (4, 6): [(4, 6)]}

EVERY = {
    (12, 12): [(i, i) for i in range(1, 13)],
    (6, 12): [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)],
    (4, 12): [(1, 3), (2, 6), (3, 9), (4, 12)],
    (3, 12): [(1, 4), (2, 8), (3, 12)],
    # i * 6 / 4 = 1.5, 3, 4.5, 6 -> halves round up.
    (4, 6): [(1, 2), (2, 3), (3, 5), (4, 6)],
}


@pytest.mark.parametrize(
    ("strategy", "table"),
    [("uniform", UNIFORM), ("emb_skip", EMB_SKIP), ("last", LAST), ("every", EVERY)],
)
def test_published_mappings(strategy, table):
    for (s, t), expected in table.items():
        assert layer_map(strategy, s, t) == expected, (strategy, s, t)
        assert getattr(mapping, strategy)(s, t) == expected


def test_uniform_include_embeddings_matches_tinybert_reps():
    # TinyBERT's hidden-state loss uses teacher_reps[i * k] for i = 0..S (embeddings first).
    assert layer_map("uniform", 4, 12, include_embeddings=True) == [
        (0, 0), (1, 3), (2, 6), (3, 9), (4, 12)
    ]


def test_uniform_rejects_non_multiple():
    with pytest.raises(ConfigError, match="multiple"):
        layer_map("uniform", 4, 6)


def test_emb_skip_without_embeddings_is_ckd_skip():
    assert layer_map("emb+skip", 4, 6, include_embeddings=False) == [(2, 3), (4, 6)]
    assert layer_map("EMB-SKIP", 3, 12) == EMB_SKIP[(3, 12)]


def test_every_never_maps_to_embeddings():
    pairs = layer_map("every", 12, 3)
    assert [s for s, _ in pairs] == list(range(1, 13))
    assert all(1 <= t <= 3 for _, t in pairs)
    assert pairs[-1] == (12, 3)


def test_explicit_valid_and_embeddings():
    assert layer_map("explicit", 4, 12, pairs=[[1, 2], (4, 12)]) == [(1, 2), (4, 12)]
    assert layer_map("explicit", 4, 12, pairs=[(4, 12)], include_embeddings=True) == [
        (0, 0), (4, 12)
    ]


@pytest.mark.parametrize(
    ("pairs", "needle"),
    [
        ([(5, 3)], "(5, 3)"),
        ([(1, 13)], "(1, 13)"),
        ([(-1, 3)], "(-1, 3)"),
        ([(1, 2, 3)], "(1, 2, 3)"),
        ([(1.5, 3)], "(1.5, 3)"),
        ([(1, 3), (1, 3)], "twice"),
        ([], "empty"),
        (None, "pairs"),
    ],
)
def test_explicit_rejects_bad_pairs(pairs, needle):
    with pytest.raises(ConfigError) as info:
        layer_map("explicit", 4, 12, pairs=pairs)
    assert needle in str(info.value)


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        layer_map("diagonal", 4, 12)
    for name in ("uniform", "emb_skip", "last", "every", "explicit"):
        assert name in str(info.value)


@pytest.mark.parametrize("bad", [0, -2, 2.0, "4", True])
def test_bad_layer_counts(bad):
    with pytest.raises(ConfigError, match="num_student_layers"):
        layer_map("last", bad, 12)


def test_pairs_only_for_explicit():
    with pytest.raises(ConfigError, match="explicit"):
        layer_map("uniform", 4, 12, pairs=[(1, 3)])

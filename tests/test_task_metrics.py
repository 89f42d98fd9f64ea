"""Task metrics on hand-computed cases (kdjax.data.tasks.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdjax.data.tasks import metrics as m


def test_accuracy_and_macro_f1() -> None:
    gold = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    assert m.accuracy(gold, pred) == pytest.approx(400 / 6)
    # class 0: tp1 fp1 fn1 -> 1/2; class 1: tp2 fp1 fn0 -> 4/5; class 2: tp1 fp0 fn1 -> 2/3
    assert m.macro_f1(gold, pred) == pytest.approx(100 * (0.5 + 0.8 + 2 / 3) / 3)
    # a class listed explicitly but absent everywhere scores 0
    assert m.macro_f1([0, 1], [0, 1], labels=(0, 1, 2)) == pytest.approx(200 / 3)
    assert m.accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="shape"):
        m.accuracy([0, 1], [0])


def test_spearman_and_pearson() -> None:
    # no ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert m.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(80.0)
    # ties get the average rank: gold ranks [1, 2.5, 2.5, 4]
    assert m.spearman([1.0, 2.0, 2.0, 3.0], [10, 20, 30, 40]) == pytest.approx(
        100 * 4.5 / math.sqrt(4.5 * 5.0)
    )
    assert m.spearman([5, 4, 3], [1, 2, 3]) == pytest.approx(-100.0)
    assert m.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(100.0)
    assert m.pearson([1, 2, 3], [1, 1, 1]) == 0.0  # constant predictions: undefined -> 0
    assert m.spearman([1.0], [2.0]) == 0.0


def test_bio_spans_both_styles_and_edges() -> None:
    assert m.bio_spans(["PER-B", "PER-I", "O", "LOC-B"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    assert m.bio_spans(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    assert m.bio_spans(["PER_B", "PER_I", "-"]) == [("PER", 0, 2)]  # raw challenge tags
    # an I without B starts a span, also at the sentence start
    assert m.bio_spans(["PER-I", "PER-I"]) == [("PER", 0, 2)]
    assert m.bio_spans(["O", "LOC-I"]) == [("LOC", 1, 2)]
    # an I of another type ends the span and starts a new one; B right after B splits
    assert m.bio_spans(["PER-B", "LOC-I", "LOC-I"]) == [("PER", 0, 1), ("LOC", 1, 3)]
    assert m.bio_spans(["ORG-B", "ORG-B", "ORG-I"]) == [("ORG", 0, 1), ("ORG", 1, 3)]
    assert m.bio_spans(["O", "O"]) == []
    assert m.bio_spans([]) == []


def test_entity_f1_counts_exact_spans() -> None:
    gold = [["PER-B", "PER-I", "O", "LOC-B"], ["ORG-B", "O"]]
    pred = [["PER-B", "O", "O", "LOC-B"], ["ORG-B", "DAT-B"]]
    # gold spans: PER(0,2) LOC(3,4) ORG(0,1); predicted: PER(0,1) LOC(3,4) ORG(0,1) DAT(1,2)
    s = m.entity_f1(gold, pred)
    assert s["precision"] == pytest.approx(50.0)
    assert s["recall"] == pytest.approx(200 / 3)
    assert s["f1"] == pytest.approx(100 * 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert m.entity_f1(gold, gold)["f1"] == pytest.approx(100.0)
    # mixed label styles compare by span, not by spelling
    assert m.entity_f1([["B-PER", "I-PER"]], [["PER-B", "PER-I"]])["f1"] == pytest.approx(100.0)
    assert m.entity_f1([["O"]], [["O"]]) == {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    with pytest.raises(ValueError, match="sentence 0"):
        m.entity_f1([["O", "O"]], [["O"]])


def test_korquad_normalize_official_rules() -> None:
    assert m.korquad_normalize("《해리 포터》") == "해리 포터"
    assert m.korquad_normalize("‘동의보감’") == "동의보감"
    assert m.korquad_normalize("〈서울〉의  <A>  (B).") == "서울 의 a b"
    assert m.korquad_normalize(' "Hello,"  World! ') == "hello world"
    assert m.korquad_normalize("\t정육점\n") == "정육점"
    # non-ASCII punctuation other than the listed symbols is kept (as in the official script)
    assert m.korquad_normalize("「책」") == "「책」"


def test_korquad_em_and_character_f1() -> None:
    assert m.korquad_exact_match("《정육점》", "정육점") == 1.0
    assert m.korquad_exact_match("해리 포터", "해리포터") == 0.0  # spaces matter for EM
    assert m.korquad_f1("해리 포터", "해리포터") == pytest.approx(1.0)  # ...not for F1
    # 3 common characters: P = 3/4, R = 3/3
    assert m.korquad_f1("정육점을", "정육점") == pytest.approx(2 * 0.75 / 1.75)
    assert m.korquad_f1("", "정육점") == 0.0
    assert m.korquad_f1("가나", "다라") == 0.0
    s = m.korquad_scores(["정육점을", "난세", ""], [["정육점", "정육점을"], ["난세를"], ["x"]])
    assert s["exact_match"] == pytest.approx(100 / 3)  # best of several gold answers
    assert s["f1"] == pytest.approx(100 * (1.0 + 0.8 + 0.0) / 3)
    assert m.korquad_scores([], []) == {"exact_match": 0.0, "f1": 0.0}


def test_metrics_accept_numpy() -> None:
    g = np.array([0, 1, 1])
    assert m.accuracy(g, np.array([0, 1, 0])) == pytest.approx(200 / 3)
    assert m.spearman(np.array([0.5, 1.5, 4.0]), np.array([[1.0], [2.0], [3.0]]).ravel()) == (
        pytest.approx(100.0)
    )

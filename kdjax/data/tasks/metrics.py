"""Task metrics: numpy, scipy and Python, no framework imports.

Every aggregate score here is a percentage (x100, e.g. 91.17), the way the Korean benchmark
tables report them: `accuracy`, `macro_f1`, `spearman`, `pearson`, `entity_f1`,
`korquad_scores`. The per-pair KorQuAD functions (`korquad_exact_match`, `korquad_f1`) return
0/1 and 0..1 exactly like the official script's ``exact_match_score`` / ``f1_score``.

NER spans (`bio_spans`, `entity_f1`) follow seqeval's default (non-strict IOB2) mode: a span
starts at ``B`` or at an ``I`` that does not continue a span of the same type ("I without B"),
and ends before the next ``B``, ``O`` or ``I`` of another type. Both label styles are read:
prefix (``B-PER`` / ``I-PER``) and Naver's suffix style (``PER-B`` / ``PER-I``, also the raw
challenge's ``PER_B``); ``O``, ``-`` and any other tag are outside.

KorQuAD follows the official KorQuAD 1.0 evaluation script (itself SQuAD v1.1's script with
character-level F1): remove quote and bracket symbols (' " 《 》 < > 〈 〉 ( ) ‘ ’) by
replacing them with a space, lower-case, drop ASCII punctuation, collapse whitespace; exact match
compares the normalised strings, F1 counts common characters of the normalised strings with the
spaces removed; each question scores its best gold answer.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "bio_spans",
    "entity_f1",
    "korquad_exact_match",
    "korquad_f1",
    "korquad_normalize",
    "korquad_scores",
    "macro_f1",
    "pearson",
    "spearman",
    "split_tag",
]


def _pair(gold: Sequence | np.ndarray, pred: Sequence | np.ndarray) -> tuple[np.ndarray, ...]:
    g, p = np.asarray(gold), np.asarray(pred)
    if g.shape != p.shape:
        raise ValueError(f"gold and predictions differ in shape: {g.shape} vs {p.shape}")
    return g, p


# ---------------------------------------------------------------------------------------------
# classification / regression
# ---------------------------------------------------------------------------------------------


def accuracy(gold: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> float:
    """Share of exact matches, x100 (0 for empty input)."""
    g, p = _pair(gold, pred)
    return float(100.0 * np.mean(g == p)) if g.size else 0.0


def _f1(tp: int, fp: int, fn: int) -> float:
    denom = 2 * tp + fp + fn
    return 2.0 * tp / denom if denom else 0.0


def macro_f1(
    gold: Sequence[int] | np.ndarray,
    pred: Sequence[int] | np.ndarray,
    labels: Iterable[int] | None = None,
) -> float:
    """Unweighted mean of the per-class F1, x100.

    Classes are `labels` when given, else every class present in gold or predictions (like
    scikit-learn's ``f1_score(average="macro")``); a class never predicted and never gold scores 0
    only when it is listed explicitly.
    """
    g, p = _pair(gold, pred)
    classes = sorted(set(g.tolist()) | set(p.tolist())) if labels is None else list(labels)
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = int(np.sum((g == c) & (p == c)))
        fp = int(np.sum((g != c) & (p == c)))
        fn = int(np.sum((g == c) & (p != c)))
        scores.append(_f1(tp, fp, fn))
    return float(100.0 * np.mean(scores))


def _correlation(fn: Any, gold: Sequence[float] | np.ndarray,
                 pred: Sequence[float] | np.ndarray) -> float:
    g, p = _pair(gold, pred)
    g = g.astype(np.float64).ravel()
    p = p.astype(np.float64).ravel()
    # undefined for fewer than two points or a constant side: 0, where scipy gives nan + warns
    if g.size < 2 or np.ptp(g) == 0 or np.ptp(p) == 0:
        return 0.0
    return float(100.0 * fn(g, p).statistic)


def pearson(gold: Sequence[float] | np.ndarray, pred: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation (`scipy.stats.pearsonr`), x100; 0 when either side is constant."""
    from scipy import stats

    return _correlation(stats.pearsonr, gold, pred)


def spearman(gold: Sequence[float] | np.ndarray, pred: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (`scipy.stats.spearmanr`, ties at their average rank), x100;
    0 when either side is constant."""
    from scipy import stats

    return _correlation(stats.spearmanr, gold, pred)


# ---------------------------------------------------------------------------------------------
# NER
# ---------------------------------------------------------------------------------------------


def split_tag(tag: str) -> tuple[str, str]:
    """('B' | 'I' | 'O', entity type) for a prefix-style or suffix-style BIO tag."""
    if len(tag) > 2:
        if tag[1] in "-_" and tag[0] in "BI":
            return tag[0], tag[2:]
        if tag[-2] in "-_" and tag[-1] in "BI":
            return tag[-1], tag[:-2]
    return "O", ""


def bio_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, start, end)`` (end exclusive) of one tag sequence.

    ``["PER-B", "PER-I", "O", "LOC-I"]`` -> ``[("PER", 0, 2), ("LOC", 3, 4)]``.
    """
    spans: list[tuple[str, int, int]] = []
    cur_type, cur_start = "", -1
    for i, tag in enumerate(tags):
        prefix, typ = split_tag(tag)
        continues = prefix == "I" and cur_start >= 0 and typ == cur_type
        if continues:
            continue
        if cur_start >= 0:
            spans.append((cur_type, cur_start, i))
            cur_type, cur_start = "", -1
        if prefix in ("B", "I"):
            cur_type, cur_start = typ, i
    if cur_start >= 0:
        spans.append((cur_type, cur_start, len(tags)))
    return spans


def entity_f1(
    gold_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Micro-averaged exact-span entity scores over sentences (seqeval style), x100.

    Returns ``{"f1", "precision", "recall"}``; a predicted span counts only when its type,
    start and end all match a gold span of the same sentence.
    """
    if len(gold_seqs) != len(pred_seqs):
        raise ValueError(f"{len(gold_seqs)} gold sentences but {len(pred_seqs)} predicted")
    tp = n_gold = n_pred = 0
    for i, (g, p) in enumerate(zip(gold_seqs, pred_seqs)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted tags")
        gs, ps = set(bio_spans(g)), set(bio_spans(p))
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": 100.0 * f1, "precision": 100.0 * precision, "recall": 100.0 * recall}


# ---------------------------------------------------------------------------------------------
# KorQuAD 1.0 (official evaluation script semantics)
# ---------------------------------------------------------------------------------------------

_KORQUAD_SYMBOLS = re.compile("['\"《》<>〈〉()‘’]")
_PUNCT = frozenset(string.punctuation)


def korquad_normalize(text: str) -> str:
    """The official KorQuAD 1.0 ``normalize_answer``: symbols -> space, lower, no ASCII
    punctuation, single spaces."""
    text = _KORQUAD_SYMBOLS.sub(" ", text)
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    return " ".join(text.split())


def korquad_exact_match(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(korquad_normalize(prediction) == korquad_normalize(ground_truth))


def korquad_f1(prediction: str, ground_truth: str) -> float:
    """Character-level F1 (0..1) of the normalised strings, spaces excluded."""
    pred_chars = list(korquad_normalize(prediction).replace(" ", ""))
    gold_chars = list(korquad_normalize(ground_truth).replace(" ", ""))
    common = Counter(pred_chars) & Counter(gold_chars)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_chars)
    recall = same / len(gold_chars)
    return 2 * precision * recall / (precision + recall)


def korquad_scores(
    predictions: Sequence[str], gold_answers: Sequence[Sequence[str]]
) -> dict[str, float]:
    """``{"exact_match", "f1"}`` x100 over questions, each scored against its best gold answer."""
    if len(predictions) != len(gold_answers):
        raise ValueError(f"{len(predictions)} predictions but {len(gold_answers)} questions")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for pred, golds in zip(predictions, gold_answers):
        em += max((korquad_exact_match(pred, g) for g in golds), default=0.0)
        f1 += max((korquad_f1(pred, g) for g in golds), default=0.0)
    n = len(predictions)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}

"""KorQuAD baseline: a lexical-overlap answer extractor with a logistic-regression span ranker.

For each question:

1. the context is cut into sentences; each is scored by the IDF-weighted character bigrams it
   shares with the question (IDF fitted on the training contexts' sentences), and the
   `top_sentences` best are kept (the "window" the answer is looked for in);
2. candidate answers are the spans of 1..`max_words` whitespace words (eojeol) of those
   sentences, each as written and with a trailing Korean particle (-은, -에서, -이다 ...),
   trailing punctuation or a parenthesised aside cut off (answers are bare noun phrases:
   "히로히토이며" -> "히로히토");
3. each candidate is described by lexical features: its sentence's rank and overlap, its
   distance to the nearest context word that matches a question word (left and right), its
   length, shape and cut-off particle, its neighbours' endings, whether it repeats the question,
   and the question word (누구 / 언제 / 몇 ...) crossed with the candidate's shape and last
   character;
4. a logistic regression over those features, trained on the training questions (label: the
   candidate equals the gold answer after the official normalisation), ranks the candidates;
   the best one is the answer.

Predictions are scored with the task's official KorQuAD 1.0 EM / F1 (`korquad_scores`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from kdjax.baseline.features import word_shape
from kdjax.data.tasks.metrics import korquad_normalize

# Particles and copula endings that follow a noun phrase, longest first (an answer is the noun
# phrase without them).
JOSA = tuple(sorted({
    "에서는", "에서도", "에게서", "으로는", "으로도", "으로서", "으로써", "이라는", "이라고",
    "이었다", "이었던", "이었으며", "이며", "이고", "이다", "였다", "였던", "이던", "인데", "이자",
    "라는", "라고", "에서", "에게", "으로", "까지", "부터", "처럼", "보다", "에는", "에도",
    "와의", "과의", "로서", "로써", "로는", "이나", "이란", "란", "과", "와", "은", "는", "이",
    "가", "을", "를", "의", "에", "로", "도", "만", "께", "며", "인", "나", "야",
}, key=len, reverse=True))
# Question words: what kind of answer is asked for.
WH_WORDS = ("누구", "누가", "언제", "어디", "몇", "무엇", "무슨", "어느", "어떤", "얼마", "왜",
            "어떻게", "며칠", "뭐", "무얼")
_OPEN = "(\"'「『《〈[‘“"
_CLOSE = ",.;:!?)\"'」』》〉]’”…·"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def strip_josa(word: str) -> tuple[str, str]:
    """(stem, particle): the longest trailing particle cut off when a stem remains."""
    for j in JOSA:
        if word.endswith(j) and len(word) > len(j):
            return word[: -len(j)], j
    return word, ""


def _bigrams(text: str) -> list[str]:
    s = re.sub(r"\s+", "", text)
    return [s[i : i + 2] for i in range(len(s) - 1)]


def split_sentences(context: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `context` (split after . ! ? and at newlines)."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(context):
        if m.start() > start:
            spans.append((start, m.start()))
        start = m.end()
    if start < len(context):
        spans.append((start, len(context)))
    return spans


@dataclass
class Candidates:
    """The candidate answers of a list of questions, flattened.

    Attributes:
      features: per candidate, its feature strings.
      texts: per candidate, the answer text.
      question: per candidate, the index of its question.
      num_questions: how many questions.
    """

    features: list[list[str]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    question: list[int] = field(default_factory=list)
    num_questions: int = 0

    def best(self, scores: np.ndarray) -> list[str]:
        """Per question, the text of its highest-scoring candidate ("" when it has none;
        ties: the earlier candidate)."""
        best: dict[int, tuple[float, int]] = {}
        for i, (q, s) in enumerate(zip(self.question, scores.tolist())):
            if q not in best or s > best[q][0]:
                best[q] = (s, i)
        return [self.texts[best[q][1]] if q in best else "" for q in range(self.num_questions)]


def _bucket(x: float, step: float = 0.1) -> str:
    return f"{min(1.0, math.floor(x / step) * step):.1f}"


class QACandidates(BaseEstimator, TransformerMixin):
    """KorQuAD examples -> `Candidates` (the lexical extractor's steps 1-3; see the module doc).

    Args:
      top_sentences: how many of the best-overlapping sentences to take candidates from.
      max_words: the longest candidate, in whitespace words.
    """

    def __init__(self, top_sentences: int = 2, max_words: int = 3) -> None:
        self.top_sentences = top_sentences
        self.max_words = max_words

    def fit(self, examples: Sequence[dict[str, Any]], y: Any = None) -> QACandidates:
        """Fit the character-bigram IDF on the sentences of the distinct training contexts."""
        df: Counter[str] = Counter()
        n = 0
        for context in dict.fromkeys(e["context"] for e in examples):
            for s, t in split_sentences(context):
                df.update(set(_bigrams(context[s:t])))
                n += 1
        self.idf_ = {g: math.log((1 + n) / (1 + c)) + 1.0 for g, c in df.items()}
        self.idf_default_ = math.log(1 + n) + 1.0
        return self

    def transform(self, examples: Sequence[dict[str, Any]]) -> Candidates:
        out = Candidates(num_questions=len(examples))
        for qi, ex in enumerate(examples):
            for feats, text in self._question(ex["question"], ex["context"]):
                out.features.append(feats)
                out.texts.append(text)
                out.question.append(qi)
        return out

    # -- one question ---------------------------------------------------------------------------

    def _question(self, question: str, context: str) -> list[tuple[list[str], str]]:
        q_words = [w.strip(_OPEN + _CLOSE) for w in question.split()]
        q_words = [w for w in q_words if w]
        wh, wh_next = "", ""
        for i, w in enumerate(q_words):
            hit = next((h for h in WH_WORDS if w.startswith(h)), None)
            if hit:
                wh = hit
                wh_next = strip_josa(q_words[i + 1])[0] if i + 1 < len(q_words) else ""
                break
        stems = {strip_josa(w)[0] for w in q_words}
        stems = {s for s in stems if len(s) >= 2 and not any(s.startswith(h) for h in WH_WORDS)}
        q_last = strip_josa(q_words[-1])[0] if q_words else ""
        q_compact = re.sub(r"\s+", "", question)
        q_bigrams = set(_bigrams(question))
        total = sum(self.idf_.get(g, self.idf_default_) for g in q_bigrams) or 1.0

        scored = []
        for s, t in split_sentences(context):
            shared = q_bigrams & set(_bigrams(context[s:t]))
            scored.append((sum(self.idf_.get(g, self.idf_default_) for g in shared), s, t))
        order = sorted(range(len(scored)), key=lambda i: (-scored[i][0], i))
        cands: list[tuple[list[str], str]] = []
        seen: set[tuple[int, int]] = set()
        for rank, si in enumerate(order[: self.top_sentences]):
            overlap, s, t = scored[si]
            words = [(m.start() + s, m.end() + s) for m in re.finditer(r"\S+", context[s:t])]
            matched = [self._matches(context[a:b], stems, q_compact) for a, b in words]
            base = [f"srank={rank}", f"soverlap={_bucket(overlap / total)}"]
            if wh:
                base.append(f"wh={wh}")
            for i in range(len(words)):
                for j in range(i, min(len(words), i + self.max_words)):
                    for start, end, cut in self._spans(context, words, i, j):
                        if end <= start or (start, end) in seen:
                            continue
                        seen.add((start, end))
                        text = context[start:end]
                        feats = self._span_features(text, cut, words, matched, i, j, context,
                                                    wh, wh_next, q_last, q_compact)
                        cands.append((base + feats, text))
        return cands

    @staticmethod
    def _matches(word: str, stems: set[str], q_compact: str) -> bool:
        """Whether a context word repeats a question word (its stem is in the question, or a
        question stem is inside it)."""
        w = word.strip(_OPEN + _CLOSE)
        stem = strip_josa(w)[0]
        return (len(stem) >= 2 and stem in q_compact) or any(s in w for s in stems)

    @staticmethod
    def _spans(context: str, words: list[tuple[int, int]], i: int, j: int
               ) -> list[tuple[int, int, str]]:
        """(start, end, what was cut) variants of the span of words i..j."""
        start, end = words[i][0], words[j][1]
        while start < end and context[start] in _OPEN:
            start += 1
        raw_end = end
        while end > start and context[end - 1] in _CLOSE:
            end -= 1
        out = [(start, end, "punct" if end < raw_end else "")]
        last_start = max(start, words[j][0])
        paren = context.find("(", last_start, end)
        if paren > last_start:  # 히로히토(일본어: -> 히로히토
            out.append((start, paren, "paren"))
        stem, josa = strip_josa(context[last_start:end])
        if josa:
            out.append((start, last_start + len(stem), josa))
        return out

    @staticmethod
    def _span_features(text: str, cut: str, words: list[tuple[int, int]], matched: list[bool],
                       i: int, j: int, context: str, wh: str, wh_next: str, q_last: str,
                       q_compact: str) -> list[str]:
        n = j - i + 1
        left = next((i - k for k in range(i - 1, -1, -1) if matched[k]), None)
        right = next((k - j for k in range(j + 1, len(words)) if matched[k]), None)
        shape = word_shape(text)
        shape = shape if len(shape) <= 4 else shape[:2] + "~" + shape[-2:]
        compact = re.sub(r"\s+", "", text)
        in_q = sum(g in q_compact for g in _bigrams(text)) / max(1, len(compact) - 1)
        feats = [
            f"nw={n}", f"nc={min(len(compact), 12) // 2}", f"cut={cut}",
            f"dl={min(left, 5) if left is not None else 'none'}",
            f"dr={min(right, 5) if right is not None else 'none'}",
            f"dmin={min(x for x in (left, right, 9) if x is not None)}",
            f"inq={_bucket(in_q, 0.25)}", f"shape={shape}",
        ]
        if any(matched[i : j + 1]):
            feats.append("cand_matched")
        if i > 0:
            lw = context[words[i - 1][0] : words[i - 1][1]]
            feats += [f"lsuf={lw[-2:]}", f"lsuf1={lw[-1:]}"]
            if matched[i - 1]:
                feats.append("lmatch")
            if q_last and q_last in lw:
                feats.append("qlast_left")
        else:
            feats.append("lsuf=<s>")
        if j + 1 < len(words):
            rw = context[words[j + 1][0] : words[j + 1][1]]
            feats.append(f"rpre={rw[:2]}")
            if matched[j + 1]:
                feats.append("rmatch")
            if q_last and q_last in rw:
                feats.append("qlast_right")
        else:
            feats.append("rpre=</s>")
        if q_last and len(q_last) >= 2 and q_last in text:
            feats.append("qlast_in_cand")
        if wh:
            feats += [f"wh={wh}|shape={shape}", f"wh={wh}|last={compact[-1:]}",
                      f"wh={wh}|nw={n}", f"wh={wh}|cut={cut}"]
            if wh_next and compact.endswith(wh_next[:1]):
                feats.append("wh_next_match")
        return feats


def candidate_labels(cands: Candidates, examples: Sequence[dict[str, Any]]) -> np.ndarray:
    """1 for a candidate equal to one of its question's gold answers after the official
    normalisation, else 0."""
    gold = [{korquad_normalize(a["text"]) for a in ex["answers"]} for ex in examples]
    return np.asarray([int(korquad_normalize(t) in gold[q])
                       for t, q in zip(cands.texts, cands.question)], np.int32)

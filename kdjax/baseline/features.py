"""scikit-learn feature extractors of the baselines (imported only once scikit-learn is there).

* `text_features`: character n-grams (inside word boundaries) + word n-grams, TF-IDF, for one
  text per example (NSMC, KOHATE).
* `PairFeatures`: two sentences -> the n-grams of each side, of their shared part (elementwise
  product of the L2-normalised TF-IDF vectors) and of their difference (|a - b|), plus a few
  dense overlap scores (TF-IDF cosines, Jaccard overlaps, lengths), standardised on train
  (KorNLI, Question Pair, KorSTS).
* `TokenFeatures`: one feature-string list per word of a sentence: the word, its affixes and
  character n-grams, the same for the neighbouring words, its `word_shape` (Naver NER).

Korean words (eojeol) carry their particles (학교에서 = 학교 + 에서), so character n-grams and
suffixes are what lets a linear model see stems and particles without a morphological analyser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion

WORD_PATTERN = r"\S+"  # Korean words are whitespace-separated (eojeol); keep particles attached


def char_vectorizer(max_features: int | None, ngrams: tuple[int, int] = (1, 3)) -> TfidfVectorizer:
    """TF-IDF of character n-grams inside word boundaries (``char_wb``), sublinear tf."""
    return TfidfVectorizer(analyzer="char_wb", ngram_range=ngrams, min_df=2, sublinear_tf=True,
                           max_features=max_features, dtype=np.float32)


def word_vectorizer(max_features: int | None, ngrams: tuple[int, int] = (1, 2)) -> TfidfVectorizer:
    """TF-IDF of whitespace-word n-grams, sublinear tf."""
    return TfidfVectorizer(analyzer="word", token_pattern=WORD_PATTERN, lowercase=True,
                           ngram_range=ngrams, min_df=2, sublinear_tf=True,
                           max_features=max_features, dtype=np.float32)


def text_features(max_features: int | None = 200_000) -> FeatureUnion:
    """Single texts -> [char 1-3-gram TF-IDF | word 1-2-gram TF-IDF] (sparse)."""
    return FeatureUnion([("char", char_vectorizer(max_features)),
                         ("word", word_vectorizer(max_features))])


# -- sentence pairs -----------------------------------------------------------------------------

def _words(text: str) -> set[str]:
    return set(text.lower().split())


def _bigrams(text: str) -> set[str]:
    s = re.sub(r"\s+", " ", text.lower()).strip()
    return {s[i : i + 2] for i in range(len(s) - 1)}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _cover(a: set[str], b: set[str]) -> float:
    """Share of `a` found in `b`."""
    return len(a & b) / len(a) if a else 1.0


def _digits(text: str) -> set[str]:
    return set(re.findall(r"\d+", text))


def _rowdot(a: sp.csr_matrix, b: sp.csr_matrix) -> np.ndarray:
    return np.asarray(a.multiply(b).sum(axis=1)).ravel()


class PairFeatures(BaseEstimator, TransformerMixin):
    """(text_a, text_b) pairs -> sparse [A | B | A*B | |A-B|] for a char and a word TF-IDF
    (fitted on both sides of train), followed by dense overlap features.

    Args:
      max_features: vocabulary cap of each vectorizer (None = all n-grams seen twice).
      sides: which per-side blocks to include: "ab" (A and B: what each sentence says on its
        own, e.g. the question type of a paraphrase pair), "b" (only the second sentence: for
        NLI the hypothesis' negations and hedges; a premise alone says nothing about the
        label, each premise comes with all three) or "" (only the shared and differing
        n-grams and the overlap scores: KorSTS similarity is symmetric and about overlap).
    """

    DENSE = ("cos_char", "cos_word", "jaccard_word", "jaccard_bigram", "cover_ab", "cover_ba",
             "len_ratio", "len_diff", "words_diff", "same_text", "digits_match", "digits_only_one")

    def __init__(self, max_features: int | None = 200_000, sides: str = "ab") -> None:
        self.max_features = max_features
        self.sides = sides

    def _dense(self, pairs: Sequence[tuple[str, str]], blocks: list[tuple[Any, Any]]
               ) -> np.ndarray:
        cos = [_rowdot(a, b) for a, b in blocks]  # rows are L2-normalised: dot = cosine
        rows = []
        for a, b in pairs:
            wa, wb = _words(a), _words(b)
            ba, bb = _bigrams(a), _bigrams(b)
            la, lb = len(a.strip()), len(b.strip())
            da, db = _digits(a), _digits(b)
            rows.append([
                _jaccard(wa, wb), _jaccard(ba, bb), _cover(wa, wb), _cover(wb, wa),
                min(la, lb) / max(la, lb, 1), abs(la - lb) / max(la, lb, 1),
                abs(len(wa) - len(wb)) / max(len(wa), len(wb), 1),
                float(" ".join(a.split()) == " ".join(b.split())),
                float(da == db), float(bool(da) != bool(db)),
            ])
        return np.column_stack([*cos, np.asarray(rows, np.float64).reshape(len(pairs), -1)])

    def _blocks(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[Any, Any]]:
        a = [p[0] for p in pairs]
        b = [p[1] for p in pairs]
        return [(v.transform(a), v.transform(b)) for v in self.vectorizers_]

    def fit(self, pairs: Sequence[tuple[str, str]], y: Any = None) -> PairFeatures:
        pairs = list(pairs)
        both = [p[0] for p in pairs] + [p[1] for p in pairs]
        self.vectorizers_ = [char_vectorizer(self.max_features).fit(both),
                             word_vectorizer(self.max_features, (1, 1)).fit(both)]
        dense = self._dense(pairs, self._blocks(pairs))
        self.mean_ = dense.mean(axis=0)
        self.scale_ = np.where(dense.std(axis=0) > 0, dense.std(axis=0), 1.0)
        return self

    def transform(self, pairs: Iterable[tuple[str, str]]) -> sp.csr_matrix:
        pairs = list(pairs)
        blocks = self._blocks(pairs)
        parts: list[Any] = []
        for a, b in blocks:
            parts += [x for x, side in ((a, "a"), (b, "b")) if side in self.sides]
            parts += [a.multiply(b), abs(a - b)]
        dense = (self._dense(pairs, blocks) - self.mean_) / self.scale_
        parts.append(sp.csr_matrix(dense.astype(np.float32)))
        return sp.hstack(parts, format="csr", dtype=np.float32)


# -- tokens (NER) -------------------------------------------------------------------------------

def word_shape(word: str) -> str:
    """Character classes of a word, runs collapsed: 2018년 -> 9가, Samsung -> Aa."""
    out = []
    for ch in word:
        if ch.isdigit():
            c = "9"
        elif "\uac00" <= ch <= "\ud7a3":
            c = "가"
        elif "\u4e00" <= ch <= "\u9fff":
            c = "漢"
        elif ch.isalpha():
            c = "A" if ch.isupper() else "a"
        else:
            c = ch
        if not out or out[-1] != c:
            out.append(c)
    return "".join(out)


def _char_ngrams(word: str, n_max: int) -> list[str]:
    w = f"<{word}>"
    return [w[i : i + n] for n in range(1, n_max + 1) for i in range(len(w) - n + 1)]


class TokenFeatures(BaseEstimator, TransformerMixin):
    """Sentences (lists of words) -> one list of feature strings per word, all sentences
    flattened in order. Stateless; pair it with a vectorizer (`CountVectorizer(analyzer=
    as_is)`).

    Features of word i: the word, its 1-3-char prefixes and suffixes (Korean particles such as
    -에서, -의 sit at the end), its character n-grams up to `ngrams`, its shape; the words at
    i-2..i+2, and the suffixes and character n-grams of the neighbours i-1 and i+1; sentence
    start / end markers.
    """

    def __init__(self, ngrams: int = 3, window: int = 2) -> None:
        self.ngrams = ngrams
        self.window = window

    def fit(self, sentences: Any, y: Any = None) -> TokenFeatures:
        return self

    def _word(self, word: str, tag: str, full: bool) -> list[str]:
        w = word.lower()
        feats = [f"{tag}w={w}", f"{tag}shape={word_shape(word)}"]
        feats += [f"{tag}s{k}={w[-k:]}" for k in (1, 2, 3) if len(w) >= k]
        if full:
            feats += [f"{tag}p{k}={w[:k]}" for k in (1, 2, 3) if len(w) >= k]
            feats += [f"{tag}len={min(len(w), 8)}"]
        feats += [f"{tag}c={g}" for g in _char_ngrams(w, self.ngrams)]
        return feats

    def transform(self, sentences: Iterable[Sequence[str]]) -> list[list[str]]:
        out: list[list[str]] = []
        for words in sentences:
            n = len(words)
            for i, word in enumerate(words):
                feats = ["bias", *self._word(word, "", True)]
                for d in (-1, 1):
                    j = i + d
                    if 0 <= j < n:
                        feats += self._word(words[j], f"{d:+d}", False)
                    else:
                        feats.append(f"{d:+d}w=<{'bos' if d < 0 else 'eos'}>")
                for d in range(2, self.window + 1):
                    for j, tag in ((i - d, f"-{d}"), (i + d, f"+{d}")):
                        feats.append(f"{tag}w={words[j].lower() if 0 <= j < n else '<pad>'}")
                out.append(feats)
        return out


def as_is(features: list[str]) -> list[str]:
    """The analyzer of a `CountVectorizer` over ready-made feature lists (module level so the
    vectorizer stays picklable)."""
    return features

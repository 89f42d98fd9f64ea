"""The baseline of each task kind, as scikit-learn pipelines (needs scikit-learn).

=============================  ==========================================================
task kind                      method (hyper-parameter chosen on dev / held-out train)
=============================  ==========================================================
sequence, one text             [char 1-3-gram | word 1-2-gram] TF-IDF -> logistic regression
  (NSMC, KOHATE)               (C)
sequence, pair                 `PairFeatures` -> logistic regression (C)
  (KorNLI, Question Pair)
regression, pair (KorSTS)      `PairFeatures` (shared / differing n-grams + overlap) -> ridge
                               (alpha)
token (Naver NER)              `TokenFeatures` (word + neighbours' character n-grams,
                               affixes, shape) -> linear SVM per word (C)
span (KorQuAD)                 lexical-overlap candidates (`kdjax.baseline.qa`) -> logistic
                               regression ranker (C)
=============================  ==========================================================

The feature steps are fitted once on train; one estimator per grid value is fitted on the train
matrix and scored on the selection split; the fitted feature steps and the chosen estimator
make one `sklearn.pipeline.Pipeline`, which predicts the test split. Predictions are scored by
the task's own metric code (`Task.score`, `entity_f1`, `korquad_scores`): the functions
`kdjax finetune` and `kdjax evaluate` score models with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.svm import LinearSVC

from kdjax.baseline.features import PairFeatures, TokenFeatures, as_is, text_features
from kdjax.baseline.qa import QACandidates, candidate_labels
from kdjax.data.tasks import metrics as m
from kdjax.data.tasks.base import Task

LR_GRID = (0.1, 0.3, 1.0, 3.0)  # inverse L2 strength of every logistic regression
RIDGE_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)
SVM_GRID = (0.03, 0.1, 0.3)
MAX_FEATURES = 200_000  # vocabulary cap per TF-IDF vectorizer (NSMC has ~1M char/word n-grams)
# Per-side blocks of each pair task (see PairFeatures): NLI premises come with all three labels,
# so only the hypothesis is informative on its own; similarity is symmetric.
PAIR_SIDES = {"kornli": "b", "korsts": ""}


def _logistic(c: float, n_classes: int, balanced: bool = False) -> LogisticRegression:
    """liblinear for two classes (fast on sparse text), multinomial lbfgs for more."""
    weight = "balanced" if balanced else None
    if n_classes <= 2:
        return LogisticRegression(C=c, solver="liblinear", class_weight=weight, random_state=0)
    return LogisticRegression(C=c, solver="lbfgs", max_iter=1000, class_weight=weight)


class Method:
    """One task's baseline.

    `inputs` turns examples into what the pipeline reads (texts, pairs, sentences, candidate
    feature lists) plus any extra information decoding needs; `feature_steps` are the
    pipeline's (unfitted) feature steps, `estimator` its last step for one grid value; `decode`
    turns the fitted pipeline's (or estimator's) outputs into predictions in the task's terms,
    `score` scores them with the task's metric code.
    """

    description = ""
    param = "C"
    grid: tuple[float, ...] = LR_GRID

    def __init__(self, task: Task) -> None:
        self.task = task

    def prepare(self, train: Sequence[dict[str, Any]]) -> None:
        """Fit what lives outside the pipeline (nothing by default)."""

    def inputs(self, examples: Sequence[dict[str, Any]]) -> tuple[Any, Any]:
        raise NotImplementedError

    def feature_steps(self) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def targets(self, examples: Sequence[dict[str, Any]], extra: Any) -> np.ndarray:
        return np.asarray([e["label"] for e in examples])

    def estimator(self, value: float) -> Any:
        raise NotImplementedError

    def decode(self, model: Any, x: Any, extra: Any, examples: Sequence[dict[str, Any]]
               ) -> Any:
        return model.predict(x)

    def score(self, examples: Sequence[dict[str, Any]], predictions: Any) -> dict[str, float]:
        """The task's metrics (x100) of `predictions`, by the task's own scoring code."""
        gold = np.asarray([e["label"] for e in examples])
        return {k: float(v) for k, v in self.task.score(gold, np.asarray(predictions)).items()}

    def settings(self) -> dict[str, Any]:
        """The fixed settings, recorded in the results."""
        return {}


class TextClassifier(Method):
    description = "char 1-3-gram + word 1-2-gram TF-IDF, logistic regression"

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        # macro F1 rewards the rare classes (KOHATE 'hate'): weight classes inversely to their
        # frequency, the usual setting for that metric
        self.balanced = "f1" in task.main_metric

    def inputs(self, examples: Sequence[dict[str, Any]]) -> tuple[Any, Any]:
        return [e["text"] for e in examples], None

    def feature_steps(self) -> list[tuple[str, Any]]:
        return [("features", text_features(MAX_FEATURES))]

    def estimator(self, value: float) -> Any:
        return _logistic(value, self.task.num_labels, self.balanced)

    def settings(self) -> dict[str, Any]:
        return {"char_ngrams": [1, 3], "word_ngrams": [1, 2], "min_df": 2,
                "max_features": MAX_FEATURES, "sublinear_tf": True,
                "class_weight": "balanced" if self.balanced else None}


class PairClassifier(TextClassifier):
    description = ("pair TF-IDF (char 1-3-gram, word) of each side, shared and differing "
                   "n-grams + overlap features, logistic regression")

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        self.sides = PAIR_SIDES.get(task.name, "ab")

    def inputs(self, examples: Sequence[dict[str, Any]]) -> tuple[Any, Any]:
        return [(e["text_a"], e["text_b"]) for e in examples], None

    def feature_steps(self) -> list[tuple[str, Any]]:
        return [("features", PairFeatures(MAX_FEATURES, sides=self.sides))]

    def settings(self) -> dict[str, Any]:
        return {"char_ngrams": [1, 3], "word_ngrams": [1, 1], "min_df": 2,
                "max_features": MAX_FEATURES, "sides": self.sides or "none",
                "blocks": "sides + a*b + |a-b| per vectorizer, 12 overlap features",
                "class_weight": "balanced" if self.balanced else None}


class PairRegressor(PairClassifier):
    description = "pair TF-IDF shared / differing n-grams + overlap features, ridge regression"
    param = "alpha"
    grid = RIDGE_GRID

    def targets(self, examples: Sequence[dict[str, Any]], extra: Any) -> np.ndarray:
        return np.asarray([e["label"] for e in examples], np.float64)

    def estimator(self, value: float) -> Any:
        return Ridge(alpha=value)


class TokenTagger(Method):
    description = ("per-word linear SVM on the word's and its neighbours' character n-grams, "
                   "affixes and shapes")
    grid = SVM_GRID

    def inputs(self, examples: Sequence[dict[str, Any]]) -> tuple[Any, Any]:
        return [list(e["words"]) for e in examples], None

    def feature_steps(self) -> list[tuple[str, Any]]:
        return [("tokens", TokenFeatures()),
                ("vectorize", CountVectorizer(analyzer=as_is, binary=True, min_df=2,
                                              dtype=np.float32))]

    def targets(self, examples: Sequence[dict[str, Any]], extra: Any) -> np.ndarray:
        return np.asarray([t for e in examples for t in e["labels"]])

    def estimator(self, value: float) -> Any:
        return LinearSVC(C=value, random_state=0)

    def decode(self, model: Any, x: Any, extra: Any, examples: Sequence[dict[str, Any]]
               ) -> list[list[str]]:
        flat = model.predict(x).tolist()
        out, i = [], 0
        for e in examples:
            out.append(flat[i : i + len(e["words"])])
            i += len(e["words"])
        return out

    def score(self, examples: Sequence[dict[str, Any]], predictions: Any) -> dict[str, float]:
        # the metric NaverNER.evaluate applies to a model's per-word predictions
        scores = m.entity_f1([e["labels"] for e in examples], predictions)
        return {k: float(scores[k]) for k in self.task.metrics}

    def settings(self) -> dict[str, Any]:
        return {"char_ngrams": [1, 3], "affixes": [1, 3], "window": 2, "min_df": 2}


class SpanReader(Method):
    description = ("lexical-overlap sentence choice + span candidates ranked by logistic "
                   "regression on overlap / distance / shape features")

    def prepare(self, train: Sequence[dict[str, Any]]) -> None:
        self.candidates = QACandidates().fit(train)

    def inputs(self, examples: Sequence[dict[str, Any]]) -> tuple[Any, Any]:
        cands = self.candidates.transform(examples)
        return cands.features, cands

    def feature_steps(self) -> list[tuple[str, Any]]:
        return [("vectorize", CountVectorizer(analyzer=as_is, binary=True, min_df=2,
                                              dtype=np.float32))]

    def targets(self, examples: Sequence[dict[str, Any]], extra: Any) -> np.ndarray:
        return candidate_labels(extra, examples)

    def estimator(self, value: float) -> Any:
        return LogisticRegression(C=value, solver="liblinear", random_state=0)

    def decode(self, model: Any, x: Any, extra: Any, examples: Sequence[dict[str, Any]]
               ) -> list[str]:
        return extra.best(np.asarray(model.decision_function(x)))

    def score(self, examples: Sequence[dict[str, Any]], predictions: Any) -> dict[str, float]:
        # the metric KorQuAD.evaluate applies to a model's predicted answer texts
        scores = m.korquad_scores(predictions, [[a["text"] for a in e["answers"]]
                                                for e in examples])
        return {k: float(scores[k]) for k in self.task.metrics}

    def settings(self) -> dict[str, Any]:
        return {"top_sentences": self.candidates.top_sentences,
                "max_words": self.candidates.max_words, "min_df": 2}


def method_for(task: Task) -> Method:
    """The baseline method of `task`, by its kind (and whether it is a sentence pair task)."""
    if task.kind == "sequence":
        return PairClassifier(task) if task.pair else TextClassifier(task)
    if task.kind == "regression":
        return PairRegressor(task) if task.pair else _TextRegressor(task)
    if task.kind == "token":
        return TokenTagger(task)
    return SpanReader(task)


class _TextRegressor(TextClassifier):
    """Single-text regression (no benchmark task has one; registered extras may)."""

    description = "char 1-3-gram + word 1-2-gram TF-IDF, ridge regression"
    param = "alpha"
    grid = RIDGE_GRID

    def targets(self, examples: Sequence[dict[str, Any]], extra: Any) -> np.ndarray:
        return np.asarray([e["label"] for e in examples], np.float64)

    def estimator(self, value: float) -> Any:
        return Ridge(alpha=value)

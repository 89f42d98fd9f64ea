"""KorQuAD 1.0: Korean extractive question answering, exact match / F1 (official script).

Files (SQuAD v1.1 JSON: ``data[].paragraphs[].{context, qas[].{id, question, answers[]}}``):
the shared layout ``train.json`` / ``dev.json`` / ``test.json`` or the original release
``KorQuAD_v1.0_train.json`` (train) and ``KorQuAD_v1.0_dev.json`` (the public evaluation set,
used as test: the official test set is hidden).

Features follow the BERT/KoELECTRA SQuAD recipe: the question is cut to ``max_query_length``
tokens (at most half of ``max_length``), the context is tokenized once with the fast tokenizer's
offset mapping and cut into windows ``[CLS] question [SEP] context-window [SEP]`` that start every
``doc_stride`` tokens (``doc_stride`` is the step between window starts, as in the original
script, not Hugging Face's overlap). A window's ``start_positions`` / ``end_positions`` point at
the first answer's first and last token when the window holds the whole answer, else at 0
([CLS]).

Evaluation: per window, the ``n_best`` highest start and end logits over context tokens are
paired (end >= start, at most ``max_answer_length`` tokens, start in the window where that token
has its maximal context); the best start + end score over all windows of a question gives the
answer, cut from the context with the token offsets. Scores: `korquad_scores` (official KorQuAD
1.0 normalisation, character F1), x100.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdjax.data.tasks import metrics as m
from kdjax.data.tasks.base import Task, TaskData, require_fast
from kdjax.data.tasks.registry import register
from kdjax.errors import ConfigError, DataError, ShapeError

# KoELECTRA finetune/config/korquad/koelectra-base-v3.json: max_seq_length 512, doc_stride 128,
# max_query_length 64, max_answer_length 30, n_best_size 20, 7 epochs, batch 8 (small models:
# 32), lr 5e-5, warmup_proportion 0, weight_decay 0.
DEFAULTS = {"max_length": 512, "epochs": 7, "batch_size": 8, "lr": 5e-5, "warmup": 0.0,
            "weight_decay": 0.0, "doc_stride": 128, "max_query_length": 64,
            "max_answer_length": 30, "n_best": 20}
_OPTIONS = ("doc_stride", "max_query_length", "max_answer_length", "n_best")


@register
class KorQuAD(Task):
    name = "korquad"
    title = "KorQuAD 1.0"
    kind = "span"
    head = "qa"
    label_names = ("start", "end")
    metrics = ("exact_match", "f1")
    main_metric = "f1"
    files = {
        "train": ("train.json", "KorQuAD_v1.0_train.json"),
        "dev": ("dev.json",),
        "test": ("test.json", "KorQuAD_v1.0_dev.json"),
    }
    folders = ("korquad", "KorQuAD")
    defaults = DEFAULTS
    option_defaults = {k: DEFAULTS[k] for k in _OPTIONS}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for key in _OPTIONS:
            if self.options[key] < 1:
                raise ConfigError(f"task korquad: option {key} must be >= 1, got "
                                  f"{self.options[key]}")
        self.defaults.update(self.options)

    # -- loading ----------------------------------------------------------------------------

    def read_file(self, path: Path, limit: int | None) -> list[dict[str, Any]]:
        try:
            with open(path, encoding="utf-8-sig") as f:
                doc = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON ({exc}); expected SQuAD v1.1 JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise DataError(f"{path}: expected SQuAD v1.1 JSON with a top-level 'data' list")
        out: list[dict[str, Any]] = []
        for a, article in enumerate(doc["data"]):
            title = article.get("title", "") if isinstance(article, dict) else ""
            for p, para in enumerate(_get(article, "paragraphs", path, f"data[{a}]")):
                where = f"data[{a}].paragraphs[{p}]"
                context = _get(para, "context", path, where)
                for q, qa in enumerate(_get(para, "qas", path, where)):
                    if limit is not None and len(out) >= limit:
                        return out
                    qwhere = f"{where}.qas[{q}]"
                    qid = str(_get(qa, "id", path, qwhere))
                    answers = [
                        _fix_answer(context, ans, path, qid)
                        for ans in _get(qa, "answers", path, qwhere)
                    ]
                    if not answers:
                        raise DataError(f"{path}: question {qid} has no answer; KorQuAD 1.0 "
                                        "questions need at least one")
                    out.append({"id": qid, "question": _get(qa, "question", path, qwhere),
                                "context": context, "answers": answers, "title": title})
        return out

    # -- features ---------------------------------------------------------------------------

    def featurize(
        self, examples: Sequence[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> TaskData:
        """Windows of every example; arrays ``input_ids``, ``attention_mask``,
        ``token_type_ids`` [N, L], ``start_positions``, ``end_positions`` [N] int32 (N >= number
        of examples).

        ``meta``: ``example_index`` [N] (row -> example), ``offsets`` [N, L, 2] int32 (character
        span of each context token in its context, -1 elsewhere), ``max_context`` [N, L] bool.
        """
        require_fast(tokenizer, self.name)
        max_length = self._max_length(max_length)
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if cls_id is None or sep_id is None:
            raise ConfigError("task korquad needs a tokenizer with [CLS] and [SEP] tokens")
        stride = self.options["doc_stride"]
        q_cap = min(self.options["max_query_length"], max_length // 2)

        questions = tokenizer(
            [e["question"] for e in examples], add_special_tokens=False, truncation=True,
            max_length=q_cap,
        )["input_ids"]
        contexts: dict[str, tuple[list[int], np.ndarray]] = {}
        unique = list(dict.fromkeys(e["context"] for e in examples))
        if unique:
            enc = tokenizer(unique, add_special_tokens=False, return_offsets_mapping=True,
                            verbose=False)
            for text, ids, offs in zip(unique, enc["input_ids"], enc["offset_mapping"]):
                contexts[text] = (list(ids), np.asarray(offs, np.int32).reshape(-1, 2))

        rows: list[dict[str, Any]] = []
        for ei, ex in enumerate(examples):
            q_ids = list(questions[ei])
            c_ids, c_offs = contexts[ex["context"]]
            max_doc = max_length - len(q_ids) - 3
            ans = ex["answers"][0]
            tok_start, tok_end = _answer_tokens(c_offs, ans["answer_start"],
                                                ans["answer_start"] + len(ans["text"]))
            spans = _doc_spans(len(c_ids), max_doc, stride)
            owner = _max_context_owner(spans, len(c_ids))
            base = len(q_ids) + 2
            for si, (start, length) in enumerate(spans):
                ids = [cls_id, *q_ids, sep_id, *c_ids[start : start + length], sep_id]
                offsets = np.full((max_length, 2), -1, np.int32)
                max_ctx = np.zeros((max_length,), bool)
                offsets[base : base + length] = c_offs[start : start + length]
                max_ctx[base : base + length] = owner[start : start + length] == si
                s_pos = e_pos = 0
                if 0 <= tok_start and start <= tok_start and tok_end < start + length:
                    s_pos, e_pos = tok_start - start + base, tok_end - start + base
                rows.append({"ids": ids, "segment": base, "ex": ei, "offsets": offsets,
                             "max_ctx": max_ctx, "start": s_pos, "end": e_pos})

        n = len(rows)
        arrays = {
            "input_ids": np.full((n, max_length), pad_id, np.int32),
            "attention_mask": np.zeros((n, max_length), np.int32),
            "token_type_ids": np.zeros((n, max_length), np.int32),
            "start_positions": np.zeros((n,), np.int32),
            "end_positions": np.zeros((n,), np.int32),
        }
        offsets = np.full((n, max_length, 2), -1, np.int32)
        max_context = np.zeros((n, max_length), bool)
        example_index = np.zeros((n,), np.int32)
        for i, r in enumerate(rows):
            length = len(r["ids"])
            arrays["input_ids"][i, :length] = r["ids"]
            arrays["attention_mask"][i, :length] = 1
            arrays["token_type_ids"][i, r["segment"] : length] = 1
            arrays["start_positions"][i] = r["start"]
            arrays["end_positions"][i] = r["end"]
            offsets[i] = r["offsets"]
            max_context[i] = r["max_ctx"]
            example_index[i] = r["ex"]
        meta = {"example_index": example_index, "offsets": offsets, "max_context": max_context}
        return TaskData(arrays=arrays, examples=list(examples), meta=meta)

    # -- evaluation -------------------------------------------------------------------------

    def predict_answers(self, outputs: np.ndarray, data: TaskData) -> list[str]:
        """The predicted answer text of every example (``""`` when no valid span exists)."""
        out = self._check_outputs(outputs, data).astype(np.float32)
        offsets = data.meta["offsets"]
        if out.ndim != 3 or out.shape[2] != 2 or out.shape[1] != offsets.shape[1]:
            raise ShapeError(
                f"task {self.name}: outputs must be logits [N, {offsets.shape[1]}, 2], got "
                f"{out.shape}"
            )
        n_best = self.options["n_best"]
        max_answer = self.options["max_answer_length"]
        best: dict[int, tuple[float, int, int, int]] = {}
        for i in range(out.shape[0]):
            in_ctx = offsets[i, :, 0] >= 0
            starts_ok = in_ctx & data.meta["max_context"][i]
            if not starts_ok.any():
                continue
            s_logit = np.where(starts_ok, out[i, :, 0], -np.inf)
            e_logit = np.where(in_ctx, out[i, :, 1], -np.inf)
            k = min(n_best, int(starts_ok.sum()))
            s_idx = np.argsort(-s_logit, kind="stable")[:k]
            e_idx = np.argsort(-e_logit, kind="stable")[: min(n_best, int(in_ctx.sum()))]
            s, e = np.meshgrid(s_idx, e_idx, indexing="ij")
            ok = (e >= s) & (e - s + 1 <= max_answer)
            if not ok.any():
                continue
            score = np.where(ok, s_logit[s] + e_logit[e], -np.inf)
            j = np.unravel_index(int(np.argmax(score)), score.shape)
            cand = (float(score[j]), i, int(s[j]), int(e[j]))
            ex = int(data.meta["example_index"][i])
            if ex not in best or cand[0] > best[ex][0]:
                best[ex] = cand
        answers = []
        for ei, ex in enumerate(data.examples):
            if ei not in best:
                answers.append("")
                continue
            _, row, s, e = best[ei]
            answers.append(ex["context"][offsets[row, s, 0] : offsets[row, e, 1]])
        return answers

    def evaluate(self, outputs: np.ndarray, data: TaskData) -> dict[str, float]:
        preds = self.predict_answers(outputs, data)
        gold = [[a["text"] for a in ex["answers"]] for ex in data.examples]
        scores = m.korquad_scores(preds, gold)
        return {k: float(scores[k]) for k in self.metrics}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _get(obj: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{path}: {where} has no {key!r}; expected SQuAD v1.1 JSON")
    return obj[key]


def _fix_answer(context: str, ans: Any, path: Path, qid: str) -> dict[str, Any]:
    """The answer with an ``answer_start`` that really points at its text (the nearest
    occurrence when the given offset is off)."""
    if not isinstance(ans, dict) or "text" not in ans or "answer_start" not in ans:
        raise DataError(f"{path}: question {qid}: each answer needs 'text' and 'answer_start'")
    text, start = str(ans["text"]), int(ans["answer_start"])
    if context[start : start + len(text)] == text:
        return {"text": text, "answer_start": start}
    hits = [i for i in range(len(context)) if context.startswith(text, i)] if text else []
    if not hits:
        raise DataError(f"{path}: question {qid}: answer {text!r} does not occur in its context")
    return {"text": text, "answer_start": min(hits, key=lambda i: abs(i - start))}


def _answer_tokens(offsets: np.ndarray, char_start: int, char_end: int) -> tuple[int, int]:
    """First and last context token overlapping ``[char_start, char_end)`` ((-1, -1) if none)."""
    after = np.nonzero(offsets[:, 1] > char_start)[0]
    before = np.nonzero(offsets[:, 0] < char_end)[0]
    if not len(after) or not len(before) or before[-1] < after[0]:
        return -1, -1
    return int(after[0]), int(before[-1])


def _doc_spans(n_tokens: int, max_doc: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) windows over the context tokens, starts `stride` apart (BERT recipe)."""
    if max_doc < 1:
        raise ConfigError(f"task korquad: max_length leaves {max_doc} context tokens; raise "
                          "max_length or lower max_query_length")
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        length = min(n_tokens - start, max_doc)
        spans.append((start, length))
        if start + length >= n_tokens:
            return spans
        start += min(length, stride)


def _max_context_owner(spans: list[tuple[int, int]], n_tokens: int) -> np.ndarray:
    """[n_tokens] index of the window giving each context token its most context: the largest
    min(left, right) + 0.01 * window length, first window on ties (BERT's check)."""
    pos = np.arange(n_tokens)
    scores = np.full((len(spans), n_tokens), -1.0)
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        inside = (pos >= start) & (pos <= end)
        score = np.minimum(pos - start, end - pos) + 0.01 * length
        scores[i] = np.where(inside, score, -1.0)
    return np.argmax(scores, axis=0) if n_tokens else np.zeros((0,), np.int64)

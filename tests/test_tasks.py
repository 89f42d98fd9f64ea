"""Korean tasks: registry, loaders (shared layout and original releases), featurization, loss,
evaluate round trips and user errors. Tiny fixtures written here; a tiny WordPiece tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from kdjax.data.tasks import (
    IGNORE_INDEX,
    Task,
    TaskData,
    get_task,
    register,
    resolve_tasks,
    task_names,
)
from kdjax.data.tasks.naver_ner import NAVER_LABELS
from kdjax.errors import ConfigError, DataError

SENTENCES = """이 영화는 배우들의 연기가 정말 훌륭해서 두 시간이 금방 지나갔다.
스토리가 너무 뻔하고 지루해서 중간에 잠들 뻔했어요.
세종대왕은 조선의 네 번째 왕으로 한글을 창제하였다.
김철수는 서울대학교에서 물리학을 공부했다.
이순신 장군은 임진왜란 때 거북선을 이끌고 싸웠다.
남자 한 명이 기타를 연주하고 있다.
한 여자가 부엌에서 요리를 하고 있다.
오늘 날씨가 정말 좋아서 공원에 갔다.
""".strip().splitlines()

CONTEXT = (
    "오늘 날씨가 정말 좋아서 공원에 갔다. 남자 한 명이 기타를 연주하고 있다. "
    "세종대왕은 조선의 네 번째 왕으로 한글을 창제하였다. 한 여자가 부엌에서 요리를 하고 있다. "
    "이순신 장군은 임진왜란 때 거북선을 이끌고 싸웠다. 김철수는 서울대학교에서 물리학을 공부했다."
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    from kdjax.data.tokenizer import train_wordpiece

    d = tmp_path_factory.mktemp("tok")
    (d / "corpus.txt").write_text("\n".join(SENTENCES * 3) + "\n", encoding="utf-8")
    # a small vocabulary, so that words split into several sub-words (세종 ##대왕 ##은)
    return train_wordpiece([d / "corpus.txt"], d / "out", vocab_size=260, min_frequency=1,
                           show_progress=False, limit_alphabet=1000)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def onehot(labels: np.ndarray, n: int, scale: float = 10.0) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[labels] * scale


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


def test_registry_names_aliases_and_errors() -> None:
    assert task_names() == ["nsmc", "naver_ner", "kornli", "korsts", "question_pair", "korquad",
                            "kohate"]
    assert resolve_tasks("all") == task_names()
    assert resolve_tasks("nsmc, korsts,nsmc") == ["nsmc", "korsts"]
    assert resolve_tasks(["Naver-NER", "hate-speech"]) == ["naver_ner", "kohate"]
    assert get_task("question-pair").name == "question_pair"
    with pytest.raises(ConfigError, match="unknown task 'klue'.*nsmc"):
        get_task("klue")
    with pytest.raises(ConfigError, match="unknown task"):
        resolve_tasks("nsmc,klue")
    with pytest.raises(ConfigError, match="no task"):
        resolve_tasks(" , ")
    with pytest.raises(ConfigError, match="unknown option.*binaryy.*valid options: binary"):
        get_task("kohate", binaryy=True)
    with pytest.raises(ConfigError, match="valid options: none"):
        get_task("nsmc", binary=True)
    with pytest.raises(ConfigError, match="doc_stride must be an integer"):
        get_task("korquad", doc_stride="128")
    with pytest.raises(ConfigError, match="doc_stride must be >= 1"):
        get_task("korquad", doc_stride=0)
    with pytest.raises(ValueError, match="taken"):

        @register
        class Other(Task):  # noqa: F841
            name = "nsmc"


def test_task_attributes() -> None:
    for name in task_names():
        t = get_task(name)
        assert t.kind in ("sequence", "regression", "token", "span")
        assert t.main_metric in t.metrics
        assert t.num_labels == len(t.label_names) >= 1
        assert {"max_length", "epochs", "batch_size", "lr", "warmup", "weight_decay"} <= set(
            t.defaults
        )
        assert "train" in t.files and "test" in t.files
    assert get_task("korsts").head == "classification" and get_task("korsts").num_labels == 1
    assert get_task("naver_ner").head == "token_classification"
    assert get_task("naver_ner").label_names == NAVER_LABELS and len(NAVER_LABELS) == 29
    q = get_task("korquad", doc_stride=64)
    assert q.head == "qa" and q.defaults["doc_stride"] == 64 and q.defaults["max_length"] == 512
    assert get_task("korquad").defaults["doc_stride"] == 128  # class defaults untouched
    b = get_task("kohate", binary=True)
    assert b.num_labels == 2 and b.main_metric == "binary_f1"
    assert get_task("kohate").num_labels == 3


# ---------------------------------------------------------------------------------------------
# loaders: shared layout and original releases
# ---------------------------------------------------------------------------------------------


def test_nsmc_shared_original_and_parent_dir(tmp_path: Path) -> None:
    write(tmp_path / "ko/nsmc/train.tsv",
          "id\tdocument\tlabel\n1\t정말 재밌다\t1\n2\t지루했다\t0\n3\t최고\t1\n")
    t = get_task("nsmc")
    # data_dir may be the parent of the task folder
    ex = t.load(tmp_path / "ko", "train")
    assert ex[0] == {"id": "1", "text": "정말 재밌다", "label": 1} and len(ex) == 3
    assert len(t.load(tmp_path / "ko/nsmc", "train", limit=2)) == 2
    assert t.has_split(tmp_path / "ko", "train") and not t.has_split(tmp_path / "ko", "test")
    assert not t.has_split(tmp_path / "ko", "dev")
    # original release: stray quotes stay raw, empty review kept
    write(tmp_path / "orig/ratings_test.txt",
          'id\tdocument\tlabel\n9\t"최고의 영화\t1\n10\t\t0\n11\t그냥 "보통"\t0\n')
    ex = t.load(tmp_path / "orig", "test")
    assert [e["text"] for e in ex] == ['"최고의 영화', "", '그냥 "보통"']


def test_kohate_layouts_and_binary(tmp_path: Path) -> None:
    header = "comments\tcontain_gender_bias\tbias\thate\n"
    write(tmp_path / "kohate/train.tsv",
          header + "좋아요\tFalse\tnone\tnone\n별로\tFalse\tnone\toffensive\n"
          '"나쁜 ""놈"""\tTrue\tothers\thate\n')
    write(tmp_path / "release/labeled/dev.tsv", header + "멋지네요\tFalse\tnone\tnone\n")
    t = get_task("kohate")
    ex = t.load(tmp_path, "train")
    assert [e["label"] for e in ex] == [0, 1, 2]
    assert ex[2]["text"] == '나쁜 "놈"'  # pandas quoting undone
    assert t.load(tmp_path / "release", "test")[0]["text"] == "멋지네요"
    b = get_task("kohate", binary=True)
    assert [e["label"] for e in b.load(tmp_path, "train")] == [0, 1, 1]


def test_kornli_original_release_concatenates_and_skips_dash(tmp_path: Path) -> None:
    header = "sentence1\tsentence2\tgold_label\n"
    write(tmp_path / "multinli.train.ko.tsv",
          header + '그가 "말했다\t그는 말했다.\tentailment\n가\t나\tneutral\n')
    write(tmp_path / "snli_1.0_train.ko.tsv", header + "다\t라\t-\n마\t바\tcontradiction\n")
    write(tmp_path / "xnli.dev.ko.tsv", header + "사\t아\tneutral\n")
    t = get_task("kornli")
    ex = t.load(tmp_path, "train")
    assert [e["label"] for e in ex] == [0, 1, 2]  # "-" skipped, two files concatenated
    assert ex[0]["text_a"] == '그가 "말했다'  # unbalanced quote read raw
    assert len(t.load(tmp_path, "train", limit=1)) == 1
    assert t.has_split(tmp_path, "dev") and not t.has_split(tmp_path, "test")
    write(tmp_path / "shared/train.tsv", header + "가\t나\tcontradiction\n")
    assert t.load(tmp_path / "shared", "train")[0]["label"] == 2


def test_korsts_and_question_pair_layouts(tmp_path: Path) -> None:
    header = "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\n"
    write(tmp_path / "KorSTS/sts-dev.tsv",
          header + 'main-captions\tMSRvid\t2012test\t0001\t4.5\t"남자가 춤을\t남자가 춤을 춘다\n')
    ex = get_task("korsts").load(tmp_path, "dev")
    assert ex == [{"text_a": '"남자가 춤을', "text_b": "남자가 춤을 춘다", "label": 4.5}]
    write(tmp_path / "qp/kor_pair_train.csv",
          'id,qid1,qid2,question1,question2,is_duplicate\n1,1,2,"밥 먹었어, 오늘?",밥 먹음,0\n'
          "2,3,4,잠 와,졸려,1\n")
    write(tmp_path / "qp2/dev.tsv", "question1\tquestion2\tis_duplicate\n가\t나\t1\n")
    qp = get_task("question_pair")
    assert qp.load(tmp_path / "qp", "train")[0] == {
        "text_a": "밥 먹었어, 오늘?", "text_b": "밥 먹음", "label": 0}
    assert qp.load(tmp_path / "qp2", "dev")[0]["label"] == 1


NER_TSV = ("세종대왕은 조선의 왕이다\tPER-B O CVL-B\n"
           "김철수는 서울대학교에서 공부했다\tPER-B ORG-B O\n")


def test_naver_ner_shared_and_challenge_formats(tmp_path: Path) -> None:
    write(tmp_path / "shared/train.tsv", NER_TSV)
    write(tmp_path / "shared/labels.txt", "UNK\n" + "\n".join(NAVER_LABELS) + "\n")
    t = get_task("naver_ner")
    ex = t.load(tmp_path / "shared", "train")
    assert ex[1] == {"words": ["김철수는", "서울대학교에서", "공부했다"],
                     "labels": ["PER-B", "ORG-B", "O"]}
    assert t.label_names == NAVER_LABELS  # UNK placeholder dropped
    write(tmp_path / "orig/train_data",
          "1\t이순신\tPER_B\n2\t장군은\tCVL_B\n3\t싸웠다\t-\n\n1\t세종대왕\tPER_B\n2\t만세\t-\n\n")
    ex = t.load(tmp_path / "orig", "train")
    assert ex == [{"words": ["이순신", "장군은", "싸웠다"], "labels": ["PER-B", "CVL-B", "O"]},
                  {"words": ["세종대왕", "만세"], "labels": ["PER-B", "O"]}]
    # prefix-style tags map onto the Naver label set; a custom labels.txt is adopted
    write(tmp_path / "prefix/test.tsv", "이순신 장군\tB-PER I-PER\n")
    assert t.load(tmp_path / "prefix", "test")[0]["labels"] == ["PER-B", "PER-I"]
    write(tmp_path / "custom/test.tsv", "이순신 장군\tB-PER I-PER\n")
    write(tmp_path / "custom/label.txt", "O\nB-PER\nI-PER\n")
    t2 = get_task("naver_ner")
    assert t2.load(tmp_path / "custom", "test")[0]["labels"] == ["B-PER", "I-PER"]
    assert t2.num_labels == 3


def squad(path: Path, qas: list[dict], context: str = CONTEXT) -> Path:
    doc = {"version": "KorQuAD_v1.0_dev",
           "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}
    return write(path, json.dumps(doc, ensure_ascii=False))


def qa(qid: str, question: str, *answers: str, shift: int = 0) -> dict:
    return {"id": qid, "question": question,
            "answers": [{"text": a, "answer_start": CONTEXT.index(a) + shift} for a in answers]}


def test_korquad_layouts(tmp_path: Path) -> None:
    squad(tmp_path / "KorQuAD_v1.0_dev.json",
          [qa("q1", "한글을 만든 왕은?", "세종대왕", "세종대왕은")])
    squad(tmp_path / "shared/train.json", [qa("q2", "누가 싸웠나?", "이순신", shift=3)])
    t = get_task("korquad")
    ex = t.load(tmp_path, "test")
    assert ex[0]["id"] == "q1" and len(ex[0]["answers"]) == 2
    assert ex[0]["context"] == CONTEXT and ex[0]["title"] == "t"
    # a wrong answer_start is moved to the nearest occurrence of the answer text
    ans = t.load(tmp_path / "shared", "train")[0]["answers"][0]
    assert CONTEXT[ans["answer_start"] :].startswith("이순신")


# ---------------------------------------------------------------------------------------------
# user errors
# ---------------------------------------------------------------------------------------------


def test_missing_files_and_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no train file in .*train\.tsv, ratings_train\.txt"):
        get_task("nsmc").load(tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match=r"labeled/dev\.tsv"):
        get_task("kohate").load(tmp_path, "test")
    with pytest.raises(ConfigError, match="no 'dev' split"):
        get_task("nsmc").load(tmp_path, "dev")


@pytest.mark.parametrize(
    ("task", "name", "text", "match"),
    [
        ("nsmc", "train.tsv", "id\tdocument\tlabel\n1\t좋다\t1\n2\t싫다\t2\n",
         r"train\.tsv:3: label"),
        ("nsmc", "train.tsv", "id\tdocument\tlabel\n1\t좋다\n", r"train\.tsv:2: expected 3 tab"),
        ("nsmc", "train.tsv", "id\ttext2\tlabel\n", "no document / text / sentence column"),
        ("nsmc", "train.tsv", "", "is empty"),
        ("kornli", "train.tsv", "sentence1\tsentence2\tgold_label\n가\t나\tmaybe\n",
         r"train\.tsv:2: unknown label 'maybe'"),
        ("korsts", "train.tsv",
         "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\ng\tf\ty\t1\tfive\t가\t나\n",
         r"train\.tsv:2: score"),
        ("kohate", "train.tsv", "comments\tcontain_gender_bias\tbias\thate\n가\tF\tnone\tbad\n",
         r"train\.tsv:2: unknown hate label"),
        ("question_pair", "train.tsv", "question1\tquestion2\tis_duplicate\n가\t나\tyes\n",
         r"train\.tsv:2: is_duplicate"),
        ("naver_ner", "train.tsv", "가 나\tO\n", r"train\.tsv:1: 2 words but 1 labels"),
        ("naver_ner", "train.tsv", "가 나\tO FOO-B\n", r"train\.tsv:1: unknown NER tag 'FOO-B'"),
        ("naver_ner", "train_data", "1\t가\tPER_B\n2\t나\n", r"train_data:2: expected 'index"),
        ("korquad", "train.json", "{not json", "not valid JSON"),
        ("korquad", "train.json", '{"data": [{"paragraphs": [{"qas": []}]}]}', "no 'context'"),
    ],
)
def test_bad_rows_raise_data_error(tmp_path: Path, task: str, name: str, text: str,
                                   match: str) -> None:
    write(tmp_path / name, text)
    with pytest.raises(DataError, match=match):
        get_task(task).load(tmp_path, "train")


def test_korquad_answer_not_in_context(tmp_path: Path) -> None:
    squad(tmp_path / "train.json", [{"id": "x", "question": "?",
                                     "answers": [{"text": "없는말", "answer_start": 0}]}])
    with pytest.raises(DataError, match="question x: answer '없는말' does not occur"):
        get_task("korquad").load(tmp_path, "train")


def test_token_tasks_need_fast_tokenizer_and_sane_length(tok) -> None:
    slow = SimpleNamespace(is_fast=False)
    with pytest.raises(ConfigError, match="fast tokenizer"):
        get_task("naver_ner").featurize([{"words": ["가"], "labels": ["O"]}], slow, 16)
    with pytest.raises(ConfigError, match="max_length"):
        get_task("nsmc").featurize([{"text": "가", "label": 0}], tok, 2)


# ---------------------------------------------------------------------------------------------
# featurization and evaluate round trips
# ---------------------------------------------------------------------------------------------


def test_sequence_pair_and_regression_features(tok) -> None:
    nsmc = get_task("nsmc")
    exs = [{"text": s, "label": i % 2} for i, s in enumerate(SENTENCES)]
    data = nsmc.featurize(exs, tok, 16)
    assert isinstance(data, TaskData) and len(data) == len(exs)
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert data.arrays[k].shape == (len(exs), 16) and data.arrays[k].dtype == np.int32
    assert data.arrays["labels"].dtype == np.int32 and data.arrays["token_type_ids"].max() == 0
    assert (data.arrays["input_ids"][:, 0] == tok.cls_token_id).all()
    labels = data.arrays["labels"]
    assert nsmc.evaluate(onehot(labels, 2), data) == {"accuracy": 100.0}
    assert nsmc.evaluate(onehot(1 - labels, 2), data) == {"accuracy": 0.0}

    sts = get_task("korsts")
    pairs = [{"text_a": a, "text_b": b, "label": float(i)}
             for i, (a, b) in enumerate(zip(SENTENCES, SENTENCES[1:]))]
    data = sts.featurize(pairs, tok, 24)
    assert data.arrays["labels"].dtype == np.float32
    assert (data.arrays["token_type_ids"].max(axis=1) == 1).all()  # second segment present
    scores = sts.evaluate(data.arrays["labels"][:, None] * 2 + 1, data)
    assert scores["spearman"] == pytest.approx(100.0) and scores["pearson"] == pytest.approx(100.0)
    assert sts.evaluate(-data.arrays["labels"], data)["spearman"] == pytest.approx(-100.0)


def test_kohate_metrics(tok) -> None:
    t = get_task("kohate")
    exs = [{"text": s, "label": lab} for s, lab in zip(SENTENCES[:6], [0, 0, 1, 1, 2, 2])]
    data = t.featurize(exs, tok, 16)
    pred = np.array([0, 1, 2, 1, 2, 0])
    s = t.evaluate(onehot(pred, 3), data)
    assert set(s) == {"macro_f1", "accuracy", "binary_f1", "binary_accuracy"}
    assert s["accuracy"] == pytest.approx(50.0)
    assert s["macro_f1"] == pytest.approx(100 * (0.5 + 0.5 + 0.5) / 3)
    # binary: gold [0 0 1 1 1 1], pred [0 1 1 1 1 0] -> none F1 1/2, toxic F1 3/4
    assert s["binary_accuracy"] == pytest.approx(400 / 6)
    assert s["binary_f1"] == pytest.approx(100 * (0.5 + 0.75) / 2)
    assert t.evaluate(onehot(data.arrays["labels"], 3), data)["macro_f1"] == 100.0


def test_ner_first_subword_labels_and_truncation(tmp_path: Path, tok) -> None:
    write(tmp_path / "train.tsv", NER_TSV + "이순신 장군은 임진왜란 때 거북선을 이끌고 싸웠다\t"
          "PER-B CVL-B EVT-B O TRM-B O O\n")
    t = get_task("naver_ner")
    exs = t.load(tmp_path, "train")
    data = t.featurize(exs, tok, 24)
    labels, wid = data.arrays["labels"], data.meta["word_index"]
    assert labels.shape == (3, 24) and labels.dtype == np.int32
    for i, ex in enumerate(exs):
        ids = data.arrays["input_ids"][i]
        pos = np.nonzero(labels[i] != IGNORE_INDEX)[0]
        assert len(pos) == len(ex["words"])  # one labelled position per word
        assert (np.nonzero(wid[i] >= 0)[0] == pos).all()
        tokens = tok.convert_ids_to_tokens(ids.tolist())
        for p in pos:  # labelled positions are first sub-words, never specials
            assert not tokens[p].startswith("##") and tokens[p] not in tok.all_special_tokens
        for p in range(24):  # every other real token is a continuation or special
            if p not in pos and data.arrays["attention_mask"][i, p]:
                assert tokens[p].startswith("##") or tokens[p] in tok.all_special_tokens
        assert [t.label_names[j] for j in labels[i, pos]] == ex["labels"]
    assert any(len(np.nonzero(labels[i] != IGNORE_INDEX)[0]) < len(
        tok.convert_ids_to_tokens(data.arrays["input_ids"][i].tolist())) for i in range(3))
    perfect = onehot(np.where(labels < 0, 0, labels), t.num_labels)
    assert t.evaluate(perfect, data) == {"f1": 100.0, "precision": 100.0, "recall": 100.0}
    # truncated words are predicted O: the lost entities cost recall only
    short = t.featurize(exs, tok, 8)
    lab = short.arrays["labels"]
    s = t.evaluate(onehot(np.where(lab < 0, 0, lab), t.num_labels), short)
    assert s["precision"] == 100.0 and s["recall"] < 100.0
    tags = t.predict_tags(onehot(np.where(lab < 0, 0, lab), t.num_labels), short)
    assert tags[2][-1] == "O" and len(tags[2]) == len(exs[2]["words"])


def test_korquad_windows_positions_and_round_trip(tmp_path: Path, tok) -> None:
    squad(tmp_path / "test.json", [qa("q1", "한글을 창제한 왕은?", "세종대왕", "세종대왕은"),
                                   qa("q2", "서울대학교에서 공부한 사람은?", "김철수는"),
                                   qa("q3", "거북선을 이끈 장군은?", "이순신 장군은")])
    t = get_task("korquad", doc_stride=8, max_query_length=8)
    exs = t.load(tmp_path, "test")
    data = t.featurize(exs, tok, 32)
    a, meta = data.arrays, data.meta
    n = len(data)
    assert n > 3 * 2  # several windows per question
    assert a["input_ids"].shape == (n, 32) and a["start_positions"].shape == (n,)
    assert meta["offsets"].shape == (n, 32, 2) and meta["max_context"].shape == (n, 32)
    assert sorted(set(meta["example_index"].tolist())) == [0, 1, 2]
    for i in range(n):
        ex = exs[meta["example_index"][i]]
        off = meta["offsets"][i]
        ctx = np.nonzero(off[:, 0] >= 0)[0]
        # [CLS] q [SEP] context [SEP]: the context is segment 1 and ends before the last [SEP]
        assert a["token_type_ids"][i, ctx].min() == 1
        assert a["input_ids"][i, ctx[-1] + 1] == tok.sep_token_id
        s, e = a["start_positions"][i], a["end_positions"][i]
        ans = ex["answers"][0]
        inside = off[ctx[0], 0] <= ans["answer_start"] and (
            ans["answer_start"] + len(ans["text"]) <= off[ctx[-1], 1])
        if inside:
            assert ex["context"][off[s, 0] : off[e, 1]] == ans["text"]
        else:
            assert s == e == 0
    # every answer lies wholly inside at least one window
    for ei in range(3):
        rows = np.nonzero(meta["example_index"] == ei)[0]
        assert (a["start_positions"][rows] > 0).any()
        # windows start doc_stride context tokens apart
        for r0, r1 in zip(rows, rows[1:]):
            ctx0 = np.nonzero(meta["offsets"][r0, :, 0] >= 0)[0]
            ctx1 = np.nonzero(meta["offsets"][r1, :, 0] >= 0)[0]
            assert meta["offsets"][r0, ctx0[8], 0] == meta["offsets"][r1, ctx1[0], 0]
    # perfect logits -> 100; a wrong span -> lower
    out = np.zeros((n, 32, 2), np.float32)
    out[np.arange(n), a["start_positions"], 0] = 10.0
    out[np.arange(n), a["end_positions"], 1] = 10.0
    assert t.evaluate(out, data) == {"exact_match": 100.0, "f1": 100.0}
    assert t.predict_answers(out, data) == ["세종대왕", "김철수는", "이순신 장군은"]
    # the answer of q3 spans several tokens: max_answer_length=1 rules it out
    t1 = get_task("korquad", doc_stride=8, max_query_length=8, max_answer_length=1)
    assert t1.evaluate(out, t1.featurize(exs, tok, 32))["exact_match"] < 100.0
    assert t.evaluate(np.zeros_like(out), data)["exact_match"] < 100.0


def test_evaluate_checks_output_shapes(tok) -> None:
    t = get_task("nsmc")
    data = t.featurize([{"text": "좋다", "label": 1}], tok, 16)
    with pytest.raises(ValueError, match="1 rows"):
        t.evaluate(np.zeros((2, 2)), data)
    with pytest.raises(ValueError, match=r"logits \[N, 2\]"):
        t.evaluate(np.zeros((1, 3)), data)


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------


def test_losses_are_jittable_and_weighted() -> None:
    import jax
    import jax.numpy as jnp

    seq = get_task("nsmc")
    labels = jnp.array([0, 1, 1], jnp.int32)
    good = jnp.asarray(onehot(np.array([0, 1, 1]), 2, 20.0))
    bad = jnp.asarray(onehot(np.array([0, 1, 0]), 2, 20.0))
    loss, aux = jax.jit(seq.loss)(good, {"labels": labels})
    assert float(loss) < 1e-6 and float(aux["accuracy"]) == 1.0
    loss, aux = jax.jit(seq.loss)(bad, {"labels": labels})
    assert float(loss) > 5 and float(aux["accuracy"]) == pytest.approx(2 / 3)
    w = jnp.array([1.0, 1.0, 0.0])  # the wrong row carries no hard-label loss
    loss, aux = jax.jit(seq.loss)(bad, {"labels": labels, "hard_weight": w})
    assert float(loss) < 1e-6 and float(aux["accuracy"]) == 1.0

    reg = get_task("korsts")
    loss, aux = reg.loss(jnp.array([[1.0], [3.0]]), {"labels": jnp.array([1.0, 2.0])})
    assert float(loss) == pytest.approx(0.5) and float(aux["mse"]) == pytest.approx(0.5)

    ner = get_task("naver_ner")
    tl = jnp.array([[IGNORE_INDEX, 3, IGNORE_INDEX, 0]])
    logits = jnp.asarray(onehot(np.array([[5, 3, 7, 0]]), ner.num_labels, 20.0))
    loss, aux = jax.jit(ner.loss)(logits, {"labels": tl})  # -100 positions are ignored
    assert float(loss) < 1e-6 and float(aux["accuracy"]) == 1.0

    span = get_task("korquad")
    logits = jnp.zeros((2, 6, 2)).at[0, 2, 0].set(20.0).at[0, 3, 1].set(20.0)
    logits = logits.at[1, 4, 0].set(1.0)  # row 1 (no answer: [CLS]) starts at 4: wrong
    batch = {"start_positions": jnp.array([2, 0]), "end_positions": jnp.array([3, 0])}
    loss, aux = jax.jit(span.loss)(logits, batch)
    assert float(aux["accuracy"]) == pytest.approx(0.5)
    expected = 0.5 * (np.log(5 + np.e) / 2 + np.log(6) / 2)  # row 0 ~ 0
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="span loss needs"):
        span.loss(jnp.zeros((2, 6)), batch)


def test_chunked_tokenizer_calls_give_the_same_arrays(tmp_path: Path, tok, monkeypatch) -> None:
    """`encode_chunks` (texts, pairs and NER word lists) splits the rows, not the result."""
    import kdjax.data.tasks.base as base

    write(tmp_path / "train.tsv", NER_TSV)
    ner, sts = get_task("naver_ner"), get_task("korsts")
    words = ner.load(tmp_path, "train")
    pairs = [{"text_a": a, "text_b": b, "label": 1.0} for a, b in zip(SENTENCES, SENTENCES[1:])]
    whole = [ner.featurize(words, tok, 16), sts.featurize(pairs, tok, 16)]
    monkeypatch.setattr(base, "_ENCODE_CHUNK", 1)
    for one, chunked in zip(whole, [ner.featurize(words, tok, 16), sts.featurize(pairs, tok, 16)]):
        assert one.arrays.keys() == chunked.arrays.keys()
        for k, v in one.arrays.items():
            np.testing.assert_array_equal(v, chunked.arrays[k], err_msg=k)
        for k, v in one.meta.items():
            np.testing.assert_array_equal(v, chunked.meta[k], err_msg=k)

"""The non-neural baselines (`kdjax.baseline`, `kdjax baseline`) on tiny Korean fixtures.

Every fixture is built so that the label is a function of character n-grams (sentiment words,
slurs, a negated hypothesis, shared words, name / place suffixes, the word after a matched
question word): a working baseline beats chance by a wide margin, a broken one does not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from kdjax.baseline import (
    BaselineSettings,
    MissingExtraError,
    fit_baseline,
    require_sklearn,
    run_baseline,
    settings_for,
)
from kdjax.cli import main
from kdjax.data.tasks import get_task

POS = ["정말 재미있다", "최고의 영화", "배우 연기 좋다", "감동적인 이야기", "또 보고 싶다",
       "명작이다"]
NEG = ["너무 지루하다", "최악의 영화", "시간 아깝다", "연기 별로다", "보다가 잤다", "돈 아깝다"]
FILLER = ["오늘", "주말에", "친구와", "극장에서", "어제", "혼자", "가족과", "집에서"]
NONE = ["좋은 기사 감사합니다", "응원합니다", "멋진 무대였어요", "건강하세요", "잘 봤습니다"]
OFFENSIVE = ["진짜 바보 같다", "멍청한 소리", "한심하다 정말", "꼴값 떤다"]
HATE = ["벌레 같은 족속", "싹 다 추방해라", "혐오스러운 종자", "박멸해야 한다"]
SUBJECTS = ["남자가", "여자가", "아이가", "학생이", "노인이", "선생님이", "가수가", "의사가"]
ACTIONS = ["밥을 먹었다", "노래를 불렀다", "책을 읽었다", "공원을 걸었다", "그림을 그렸다",
           "편지를 썼다", "차를 운전했다", "춤을 추었다"]
WORDS = ["사과", "기차", "바다", "하늘", "연필", "도시", "음악", "시계", "나무", "우유", "구름",
         "의자", "강물", "책상", "모자", "신발", "거울", "창문", "우산", "달빛"]
SURNAMES = ["김", "이", "박", "최", "정", "강"]
GIVEN = ["철수", "영희", "민준", "서연", "지훈", "하은"]
CITIES = ["부산", "대구", "광주", "대전", "울산", "수원"]
COUNTRIES = ["프랑스", "독일", "일본", "브라질", "캐나다", "이집트", "인도", "멕시코", "호주",
             "케냐"]
CAPITALS = ["파리", "베를린", "도쿄", "브라질리아", "오타와", "카이로", "뉴델리", "멕시코시티",
            "캔버라", "나이로비"]


def _tsv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _nsmc(rng, n):
    rows = []
    for i in range(n):
        words = POS if i % 2 else NEG
        rows.append(f"{i}\t{_pick(rng, FILLER)} {_pick(rng, words)} {_pick(rng, FILLER)}\t{i % 2}")
    return rows


def _kohate(rng, n):
    rows = []
    for i in range(n):
        label = ("none", "offensive", "hate")[i % 3]
        words = {"none": NONE, "offensive": OFFENSIVE, "hate": HATE}[label]
        rows.append(f"{_pick(rng, FILLER)} {_pick(rng, words)}\tFalse\tnone\t{label}")
    return rows


def _kornli(rng, n):
    rows = []
    for i in range(n):
        subj, act = _pick(rng, SUBJECTS), _pick(rng, ACTIONS)
        label = ("entailment", "neutral", "contradiction")[i % 3]
        hyp = {"entailment": f"{subj} 무언가를 했다",
               "neutral": f"{subj} 아마 {_pick(rng, FILLER)} 그랬을 것이다",
               "contradiction": f"{subj} 아무것도 하지 않았다"}[label]
        rows.append(f"{_pick(rng, FILLER)} {subj} {act}\t{hyp}\t{label}")
    return rows


def _korsts(rng, n):
    rows = []
    for i in range(n):
        a = list(rng.choice(WORDS, 5, replace=False))
        k = int(rng.integers(0, 6))  # shared words: the score
        others = [w for w in WORDS if w not in a]
        b = a[:k] + list(rng.choice(others, 5 - k, replace=False))
        rows.append(f"g\tf\t2017\t{i:04d}\t{k:.1f}\t{' '.join(a)}\t{' '.join(b)}")
    return rows


def _question_pair(rng, n):
    rows = []
    for i in range(n):
        a = " ".join(rng.choice(WORDS, 4, replace=False)) + " 어디서 사나요?"
        if i % 2 == 0:  # 0 = the same question, reworded slightly
            b = a.replace("어디서 사나요?", "어디에서 살 수 있나요?")
        else:
            b = " ".join(rng.choice(WORDS, 4, replace=False)) + " 언제 오나요?"
        rows.append(f"{a}\t{b}\t{i % 2}")
    return rows


def _ner(rng, n):
    rows = []
    for _ in range(n):
        name = _pick(rng, SURNAMES) + _pick(rng, GIVEN)
        city = _pick(rng, CITIES)
        words = [_pick(rng, FILLER), f"{name}씨는", f"{city}에서", _pick(rng, ACTIONS).split()[0],
                 "만났다"]
        tags = ["O", "PER-B", "LOC-B", "O", "O"]
        if rng.integers(2):
            words, tags = words[1:], tags[1:]
        rows.append(f"{' '.join(words)}\t{' '.join(tags)}")
    return rows


def _korquad(rng, countries, start):
    data = []
    for c, country in enumerate(countries):
        capital = CAPITALS[COUNTRIES.index(country)]
        filler = f"{country}에는 {_pick(rng, WORDS)}와 {_pick(rng, WORDS)}이 많다. "
        context = (f"{filler}{country}의 수도는 {capital}이다. "
                   f"{country}의 인구는 {int(rng.integers(2, 90))}백만 명이다.")
        qas = [{"id": f"q{start + c}", "question": f"{country}의 수도는 어디인가?",
                "answers": [{"text": capital, "answer_start": context.index(capital)}]}]
        data.append({"title": country, "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "test", "data": data}


def write_fixture(root: Path) -> Path:
    """Tiny versions of the seven tasks in the shared layout under root/data."""
    rng = np.random.default_rng(0)
    d = root / "data"
    _tsv(d / "nsmc" / "train.tsv", "id\tdocument\tlabel", _nsmc(rng, 80))
    _tsv(d / "nsmc" / "test.tsv", "id\tdocument\tlabel", _nsmc(rng, 30))
    head = "comments\tcontain_gender_bias\tbias\thate"
    _tsv(d / "kohate" / "train.tsv", head, _kohate(rng, 90))
    _tsv(d / "kohate" / "test.tsv", head, _kohate(rng, 30))
    _tsv(d / "kornli" / "train.tsv", "sentence1\tsentence2\tgold_label", _kornli(rng, 90))
    _tsv(d / "kornli" / "test.tsv", "sentence1\tsentence2\tgold_label", _kornli(rng, 30))
    head = "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2"
    for split, n in (("train", 90), ("dev", 30), ("test", 30)):
        _tsv(d / "korsts" / f"{split}.tsv", head, _korsts(rng, n))
        _tsv(d / "question_pair" / f"{split}.tsv", "question1\tquestion2\tis_duplicate",
             _question_pair(rng, n))
        ner = d / "naver_ner" / f"{split}.tsv"
        ner.parent.mkdir(parents=True, exist_ok=True)
        ner.write_text("\n".join(_ner(rng, n)) + "\n", encoding="utf-8")
    q = d / "korquad"
    q.mkdir(parents=True, exist_ok=True)
    # train: every country twice (two articles), test: unseen contexts of the same pattern
    train = _korquad(rng, COUNTRIES[:7] * 3, 0)
    (q / "train.json").write_text(json.dumps(train, ensure_ascii=False), encoding="utf-8")
    test = _korquad(rng, COUNTRIES[7:] + COUNTRIES[:3], 100)
    (q / "test.json").write_text(json.dumps(test, ensure_ascii=False), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return str(write_fixture(tmp_path_factory.mktemp("baseline")))


# chance level of each task's main metric on these fixtures, and the margin a baseline must beat
CHANCE = {"nsmc": 50.0, "kohate": 33.4, "kornli": 33.4, "korsts": 0.0, "question_pair": 50.0,
          "naver_ner": 0.0, "korquad": 0.0}
MARGIN = 30.0


@pytest.mark.parametrize("task", list(CHANCE))
def test_baseline_learns_and_is_deterministic(data, task):
    settings = BaselineSettings(task, data)
    r = fit_baseline(settings)
    t = get_task(task)
    assert r["task"] == task and r["main_metric"] == t.main_metric
    assert set(r["test"]) == set(t.metrics) and r["score"] == r["test"][t.main_metric]
    assert r["score"] >= CHANCE[task] + MARGIN, r
    assert r["chosen"] in [float(v) for v in r["grid"]]
    assert r["dev"][t.main_metric] == max(r["grid"].values())  # chosen = best on selection
    # the split rule of kdjax finetune: dev where the task has one, else 10% of train held out
    has_dev = task in ("korsts", "question_pair", "naver_ner")
    assert r["selected_on"] == ("dev" if has_dev else "heldout")
    n_train = len(t.load(data, "train"))
    assert r["train_examples"] == (n_train if has_dev else n_train - round(0.1 * n_train))
    assert r["test_examples"] == len(t.load(data, "test"))
    again = fit_baseline(settings)
    assert again["test"] == r["test"] and again["grid"] == r["grid"]


def test_scores_come_from_the_task_metric_code(data):
    """KOHATE: the task's own score adds the binary view; the binary option changes it."""
    r = fit_baseline(BaselineSettings("kohate", data))
    assert set(r["test"]) == {"macro_f1", "accuracy", "binary_f1", "binary_accuracy"}
    binary = fit_baseline(BaselineSettings("kohate", data, options={"binary": True}))
    assert set(binary["test"]) == {"binary_f1", "binary_accuracy"}
    assert binary["main_metric"] == "binary_f1"


def test_settings_follow_the_finetune_config(data):
    s = settings_for("nsmc", data, ["task.limit_train=40", "task.limit_eval=10",
                                    "korsts.task.limit_train=5"], ["nsmc", "korsts"])
    assert (s.limit_train, s.limit_eval, s.heldout_fraction, s.heldout_seed) == (40, 10, 0.1, 0)
    r = fit_baseline(s)
    assert (r["train_examples"], r["select_examples"], r["test_examples"]) == (36, 4, 10)
    assert settings_for("kohate", data, ["kohate.task.binary=true"]).options == {"binary": True}


def test_cache_is_reused_until_the_data_changes(tmp_path):
    data = write_fixture(tmp_path)
    work = tmp_path / "work"
    lines: list[str] = []
    first = run_baseline(BaselineSettings("nsmc", str(data)), work, progress=lines.append)
    cache = work / "nsmc" / "results.json"
    assert first["cached"] is False and cache.is_file() and lines
    stamp = cache.stat().st_mtime_ns
    second = run_baseline(BaselineSettings("nsmc", str(data)), work)
    assert second["cached"] is True and second["test"] == first["test"]
    assert cache.stat().st_mtime_ns == stamp
    # other data settings, or a changed data file, are a different baseline
    limited = run_baseline(BaselineSettings("nsmc", str(data), limit_train=60), work)
    assert limited["cached"] is False and limited["train_examples"] == 54
    with open(data / "nsmc" / "test.tsv", "a", encoding="utf-8") as f:
        f.write("999\t정말 재미있다 명작이다\t1\n")
    changed = run_baseline(BaselineSettings("nsmc", str(data)), work)
    assert changed["cached"] is False and changed["test_examples"] == 31
    assert run_baseline(BaselineSettings("nsmc", str(data)), work, refit=True)["cached"] is False


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_json_lines_and_errors(data, tmp_path, capsys):
    work = str(tmp_path / "bl")
    code, out, err = _run(capsys, "baseline", "--tasks", "nsmc,korsts", "--data_dir", data,
                          "--workdir", work, "--config.task.limit_eval=20")
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["task"] for r in rows] == ["nsmc", "korsts"]
    assert all(r["cached"] is False and r["score"] > 0 for r in rows)
    assert rows[0]["test_examples"] == 20 and "chosen on heldout" in err
    code, out, _ = _run(capsys, "baseline", "--tasks", "nsmc", "--data_dir", data, "--workdir",
                        work, "--config.task.limit_eval=20", "--quiet")
    assert code == 0 and json.loads(out)["cached"] is True

    for argv, expected in (
        (["--tasks", "nsmcc"], "unknown task 'nsmcc'"),
        (["--config.train.epochs=1"], "task settings only"),
        (["--config.task.limit_trian=1"], "task.limit_trian"),
        (["--config.kohate.task.binari=true", "--tasks", "kohate"], "binari"),
    ):
        code, _, err = _run(capsys, "baseline", "--data_dir", data, *argv)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], err
    code, _, err = _run(capsys, "baseline", "--data_dir", str(tmp_path / "none"))
    assert code == 2 and "data_dir" in err


def test_missing_scikit_learn_is_one_line(data, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'kdjax\[baseline\]'"):
        require_sklearn()
    code, out, err = _run(capsys, "baseline", "--tasks", "nsmc", "--data_dir", data)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1
    assert lines[0] == ("kdjax: error: the non-neural baselines need scikit-learn, which is not "
                        "installed: pip install 'kdjax[baseline]'")
    code, _, err = _run(capsys, "evaluate", "--models", data, "--tasks", "nsmc", "--data_dir",
                        data, "--workdir", str(tmp_path / "w"), "--no_progress")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--no_baseline" in lines[0]
    assert "kdjax[baseline]" in lines[0] and not (tmp_path / "w").exists()


def test_pyproject_declares_the_extra():
    import tomllib

    path = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(path.read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("scikit-learn") for d in extras["baseline"])
    assert any(d.startswith("scikit-learn") for d in extras["test"])


def test_relative_data_dir_shares_the_cache(tmp_path, monkeypatch):
    data = write_fixture(tmp_path)
    work = tmp_path / "work"
    first = run_baseline(BaselineSettings("korsts", str(data)), work)
    monkeypatch.chdir(tmp_path)
    again = run_baseline(BaselineSettings("korsts", "data"), "work")
    assert first["cached"] is False and again["cached"] is True

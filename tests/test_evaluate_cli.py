"""`kdjax evaluate` and `kdjax select` end to end on tiny local fixtures.

Two tiny random models (saved as kdjax model dirs with a WordPiece tokenizer trained in
tmp_path) and an NSMC-format data dir; 2 training steps per run, a small throughput block.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from kdjax.cli import main
from kdjax.data.tokenizer import train_wordpiece
from kdjax.eval.throughput import random_params
from kdjax.modeldir import save_model_dir
from kdjax.models.config import EncoderConfig

POS = ["정말 재미있다", "최고의 영화", "배우 연기 좋다", "감동적인 이야기", "또 보고 싶다"]
NEG = ["너무 지루하다", "최악의 영화", "시간 아깝다", "연기 별로다", "보다가 잤다"]
FAST = ["--config.train.steps=2", "--config.train.batch_size=8", "--config.task.max_length=32",
        "--config.train.save_every=2", "--config.train.log_every=1",
        "--config.eval.batch_size=16", "--config.train.async_checkpoints=false"]
SPEED = ["--throughput_batch", "4", "--throughput_length", "16", "--throughput_iters", "2"]


def _write_nsmc(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = ["id\tdocument\tlabel"]
    for i in range(n):
        words = POS if i % 2 else NEG
        text = f"{words[rng.integers(len(words))]} {words[rng.integers(len(words))]}"
        lines.append(f"{i}\t{text}\t{i % 2}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(POS + NEG) * 3 + "\n", encoding="utf-8")
    tok = train_wordpiece([corpus], root / "tok", vocab_size=200, min_frequency=1,
                          show_progress=False, limit_alphabet=200)
    data = root / "data"
    _write_nsmc(data / "nsmc" / "train.tsv", 40, 0)
    _write_nsmc(data / "nsmc" / "test.tsv", 12, 1)
    models = {}
    for name, hidden, layers, pos in (("big", 32, 2, 64), ("small", 16, 1, 64),
                                      ("short", 16, 1, 16)):
        cfg = EncoderConfig(vocab_size=len(tok), hidden_size=hidden, num_layers=layers,
                            num_heads=2, intermediate_size=2 * hidden,
                            max_position_embeddings=pos, head="discriminator")
        models[name] = str(save_model_dir(root / name / "model", cfg, random_params(cfg, 0), tok))
    return {"root": root, "data": str(data), "models": models}


@pytest.fixture(scope="module", autouse=True)
def _xla_cache(tmp_path_factory):
    """A compilation cache private to this module (the CLI enables one): identical programs
    (e.g. the evaluation forward on the held-out and the test split) compile once."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    mp = pytest.MonkeyPatch()
    mp.setenv("KDJAX_COMPILATION_CACHE", str(tmp_path_factory.mktemp("xla_cache")))
    compilation_cache.reset_cache()
    yield
    mp.undo()
    for n, v in saved.items():
        jax.config.update(n, v)
    compilation_cache.reset_cache()


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_evaluate_writes_report_and_select(setup, capsys, monkeypatch):
    m, work = setup["models"], str(setup["root"] / "work")
    # "short" cannot take length-32 inputs: its run fails and is recorded, the others go on
    code, out, err = _run(capsys, "evaluate", "--models", f"{m['big']},{m['small']},{m['short']}",
                          "--names", "big,small,short", "--tasks", "nsmc", "--data_dir",
                          setup["data"], "--workdir", work, "--no_progress", *SPEED, *FAST)
    assert code == 0, err
    for f in ("report.md", "report.json", "report.png"):
        assert (Path(work) / f).is_file()
    assert (Path(work) / "report.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((Path(work) / "report.json").read_text())
    assert report["teacher"] == "big" and report["tasks"] == ["nsmc"]
    big, small, short = report["models"]
    assert [big["name"], small["name"], short["name"]] == ["big", "small", "short"]
    assert 0 <= big["main"]["nsmc"] <= 100 and "accuracy" in small["scores"]["nsmc"]
    assert big["pct_of_teacher"] == pytest.approx(100.0)
    assert small["compression"] == pytest.approx(big["fp32_mb"] / small["fp32_mb"])
    assert small["params"] < big["params"] and small["sentences_per_s"] > 0
    assert small["speedup"] == pytest.approx(small["sentences_per_s"] / big["sentences_per_s"])
    assert "max_position_embeddings" in short["errors"]["nsmc"]
    assert (Path(work) / "runs" / "short" / "nsmc" / "error.txt").is_file()
    md = (Path(work) / "report.md").read_text()
    assert "| teacher (big) |" in md and "NSMC acc" in md and "speed-up" in md
    assert "| model | params |" in out and json.loads(out.strip().splitlines()[-1])["errors"] == 1
    # the non-neural baseline: fitted on the same examples, its row last, models marked
    base = report["baseline"]
    cache = Path(work) / "baseline" / "nsmc" / "results.json"
    assert cache.is_file() and base["main"]["nsmc"] >= 90.0  # the fixture is n-gram separable
    assert json.loads(cache.read_text())["result"]["test_examples"] == 12
    below = big["main"]["nsmc"] < base["main"]["nsmc"]
    assert big["below_baseline"] == (["nsmc"] if below else []) and big["baseline_tasks"] == 1
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[-1].startswith("| baseline") and table[2].startswith("| teacher (big) |")
    assert ("↓" in table[2]) == below
    assert json.loads(out.strip().splitlines()[-1])["baseline"]["main"] == base["main"]

    # resumable: finished runs (and the baseline) are read back, not retrained
    results = Path(work) / "runs" / "big" / "nsmc" / "results.json"
    stamp, base_stamp = results.stat().st_mtime_ns, cache.stat().st_mtime_ns
    code, _, err = _run(capsys, "evaluate", "--models", f"{m['big']},{m['small']}",
                        "--names", "big,small", "--tasks", "nsmc", "--data_dir", setup["data"],
                        "--workdir", work, "--teacher", m["big"], "--no_progress",
                        "--no_throughput", *FAST)
    assert code == 0, err
    assert results.stat().st_mtime_ns == stamp and cache.stat().st_mtime_ns == base_stamp
    # ... but not under other settings: one line naming the setting, and nothing retrained
    line = _error(capsys, "evaluate", "--models", m["big"], "--names", "big", "--tasks", "nsmc",
                  "--data_dir", setup["data"], "--workdir", work, "--no_progress",
                  "--no_throughput", *FAST, "--config.train.lr=0.000123")
    assert "fine-tuned with other settings" in line and "train.lr" in line, line
    assert results.stat().st_mtime_ns == stamp
    assert f"Data: `{os.path.relpath(setup['data'])}`." in md  # no absolute path in the doc
    monkeypatch.chdir(setup["root"])  # a relative --data_dir is printed as given
    code, _, err = _run(capsys, "evaluate", "--models", m["big"], "--names", "big", "--tasks",
                        "nsmc", "--data_dir", "data", "--workdir", work, "--no_progress",
                        "--no_throughput", "--no_baseline", *FAST)
    assert code == 0, err
    md = (Path(work) / "report.md").read_text()
    assert "baseline" not in md.split("\n\n")[1] and "Data: `data`." in md
    monkeypatch.undo()

    # select: "small" is reused from the same workdir; the fine-tuned best/ of "big" is only
    # evaluated on the held-out split (NSMC has no dev)
    best = str(Path(work) / "runs" / "big" / "nsmc" / "best")
    code, out, err = _run(capsys, "select", "--task", "nsmc", "--candidates",
                          f"{m['small']},{best}", "--names", "small,big_ft", "--data_dir",
                          setup["data"], "--workdir", work, "--no_progress", *FAST)
    assert code == 0, err
    sel = json.loads((Path(work) / "selection.json").read_text())
    assert sel["task"] == "nsmc" and sel["split"] == "heldout" and sel["metric"] == "accuracy"
    assert set(sel["scores"]) == {"small", "big_ft"}
    assert sel["chosen"] == max(sel["scores"], key=sel["scores"].get)
    assert sel["runs"]["big_ft"]["finetuned"] is False and sel["runs"]["small"]["finetuned"]
    assert all("test" not in r and "score" not in r for r in sel["runs"].values())
    assert json.loads(out.strip().splitlines()[-1])["chosen"] == sel["chosen"]


def _error(capsys, *argv: str) -> str:
    code, _, err = _run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kdjax: error: "), err
    return lines[0]


def test_error_lines(setup, capsys, tmp_path):
    m, data = setup["models"], setup["data"]
    base = ["--workdir", str(tmp_path / "w"), "--no_progress"]
    two = f"{m['big']},{m['small']}"
    assert "data_dir" in _error(capsys, "evaluate", "--models", two, "--tasks", "nsmc",
                                "--data_dir", str(tmp_path / "nodata"), *base)
    assert "unknown task 'nsmcc'" in _error(capsys, "evaluate", "--models", two, "--tasks",
                                            "nsmcc", "--data_dir", data, *base)
    missing = str(tmp_path / "no_model")
    assert "no_model" in _error(capsys, "evaluate", "--models", f"{m['big']},{missing}",
                                "--tasks", "nsmc", "--data_dir", data, *base)
    assert "--names has 1 name(s)" in _error(capsys, "evaluate", "--models", two, "--names",
                                             "one", "--tasks", "nsmc", "--data_dir", data, *base)
    assert "--teacher" in _error(capsys, "evaluate", "--models", two, "--teacher", "nobody",
                                 "--tasks", "nsmc", "--data_dir", data, *base)
    assert "train.stepz" in _error(capsys, "evaluate", "--models", two, "--tasks", "nsmc",
                                   "--data_dir", data, "--config.train.stepz=1", *base)
    assert "one task" in _error(capsys, "select", "--task", "nsmc,korsts", "--candidates", two,
                                "--data_dir", data, *base)
    assert "no_model" in _error(capsys, "select", "--task", "nsmc", "--candidates", missing,
                                "--data_dir", data, *base)
    assert not (tmp_path / "w").exists()  # nothing was trained or written


def test_each_model_config_is_parsed_once(setup, capsys, monkeypatch, tmp_path):
    """`kdjax evaluate` / `select` read a model where it enters and pass its EncoderConfig on:
    its size, throughput and fine-tuning run do not parse kdjax_model.json again."""
    small = setup["models"]["small"]
    saved = json.loads((Path(small) / "kdjax_model.json").read_text())["config"]
    parsed = []
    real = EncoderConfig.from_any.__func__

    def counting(cls, cfg):
        if not isinstance(cfg, EncoderConfig):
            parsed.append(dict(cfg))
        return real(cls, cfg)

    monkeypatch.setattr(EncoderConfig, "from_any", classmethod(counting))
    common = ["--data_dir", setup["data"], "--no_progress", *FAST]
    for argv in (["evaluate", "--models", small, "--tasks", "nsmc", "--no_baseline", *SPEED],
                 ["select", "--task", "nsmc", "--candidates", small]):
        parsed.clear()
        code, _, err = _run(capsys, *argv, "--workdir", str(tmp_path / argv[0]), *common)
        assert code == 0, err
        assert sum(c == saved for c in parsed) == 1, argv[0]

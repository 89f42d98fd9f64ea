"""The evaluation report: dict, markdown, json and PNG from synthetic per-model results."""

import json

import pytest

from kdjax.errors import ConfigError
from kdjax.eval.report import build_report, markdown_table, write_report

TASKS = ["nsmc", "kohate", "korquad"]
MAIN = {"nsmc": "accuracy", "kohate": "macro_f1", "korquad": "f1"}


def _results(nsmc, kohate, kohate_bin, em, f1):
    return {
        "nsmc": {"test": {"accuracy": nsmc}, "score": nsmc, "model_dir": "w/runs/x/nsmc/best"},
        "kohate": {"test": {"macro_f1": kohate, "binary_f1": kohate_bin, "accuracy": 60.0},
                   "score": kohate},
        "korquad": {"test": {"exact_match": em, "f1": f1}, "score": f1},
    }


def _entries():
    return [
        # the teacher is listed second on purpose: the report puts it first
        {"name": "small", "path": "runs/small", "params": 4_000_000, "fp32_mb": 16.0,
         "sentences_per_s": 900.0, "results": _results(88.0, 60.0, 70.0, 70.0, 85.0)},
        {"name": "base", "path": "runs/base", "params": 108_000_000, "fp32_mb": 432.0,
         "sentences_per_s": 100.0, "results": _results(90.0, 64.0, 72.0, 75.0, 89.0)},
        {"name": "broken", "path": "runs/broken", "params": 14_000_000, "fp32_mb": 54.0,
         "sentences_per_s": 300.0, "results": {"nsmc": _results(89.0, 0, 0, 0, 0)["nsmc"]},
         "errors": {"kohate": "DataError: boom", "korquad": "RuntimeError: oom"}},
    ]


def _report():
    return build_report(_entries(), TASKS, teacher="base", main_metrics=MAIN,
                        setup={"batch": 32, "length": 128, "device": "cpu x1"})


def test_report_dict_numbers():
    report = _report()
    models = {m["name"]: m for m in report["models"]}
    assert [m["name"] for m in report["models"]] == ["base", "small", "broken"]
    base, small, broken = models["base"], models["small"], models["broken"]
    assert base["average"] == pytest.approx((90 + 64 + 89) / 3)
    assert small["average"] == pytest.approx((88 + 60 + 85) / 3)
    assert small["pct_of_teacher"] == pytest.approx(100 * (88 + 60 + 85) / (90 + 64 + 89))
    assert base["pct_of_teacher"] == pytest.approx(100.0)
    assert small["compression"] == pytest.approx(432 / 16)
    assert base["compression"] == pytest.approx(1.0)
    assert small["speedup"] == pytest.approx(9.0)
    # a model with failed runs: compared with the teacher on the tasks both have
    assert broken["tasks_scored"] == 1 and broken["average"] == pytest.approx(89.0)
    assert broken["pct_of_teacher"] == pytest.approx(100 * 89 / 90)
    assert broken["errors"] == {"kohate": "DataError: boom", "korquad": "RuntimeError: oom"}
    assert small["scores"]["kohate"]["binary_f1"] == 70.0
    assert small["runs"]["nsmc"] == "w/runs/x/nsmc"
    labels = [c["label"] for c in report["columns"]]
    assert labels == ["NSMC acc", "KOHATE macro F1", "KOHATE binary F1", "KorQuAD EM", "KorQuAD F1"]
    claim = report["claim_97"]
    assert claim["below"] == ["small"] and claim["at_or_above"] == ["broken"]
    assert claim["holds"] is False and claim["complete"] is False


def test_markdown_has_every_column():
    table = markdown_table(_report())
    lines = table.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["model", "params", "fp32 MB", "compression", "NSMC acc", "KOHATE macro F1",
                      "KOHATE binary F1", "KorQuAD EM", "KorQuAD F1", "average", "% of teacher",
                      "sentences/s", "speed-up"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == 3 and all(len(r) == len(header) for r in rows)
    assert rows[0][0] == "base (teacher)"
    assert rows[1][:4] == ["small", "4.0M", "16.00", "27.00x"]
    assert rows[1][4:9] == ["88.00", "60.00", "70.00", "70.00", "85.00"]
    assert rows[1][10] == f"{100 * 233 / 243:.1f}%" and rows[1][12] == "9.00x"
    assert rows[2][5] == "error" and rows[2][9] == "89.00*"


def test_write_report_files(tmp_path):
    report = _report()
    files = write_report({**report, "files": {}}, tmp_path / "out")
    assert set(files) == {"md", "json", "png"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| base (teacher) |" in md and "## Errors" in md and "RuntimeError: oom" in md
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["teacher"] == "base" and "files" not in data
    assert data["models"][1]["compression"] == pytest.approx(27.0)
    png = (tmp_path / "out" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_report_errors():
    with pytest.raises(ConfigError, match="teacher 'nope'"):
        build_report(_entries(), TASKS, teacher="nope", main_metrics=MAIN)
    with pytest.raises(ConfigError, match="unique"):
        build_report(_entries()[:1] * 2, TASKS, main_metrics=MAIN)
    # no scores at all still gives a table and a plot
    empty = build_report([{**_entries()[0], "results": {}}], TASKS, main_metrics=MAIN)
    assert empty["models"][0]["average"] is None
    assert "–" in markdown_table(empty)

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
    assert rows[0][0] == "teacher (base)"
    assert rows[1][:4] == ["small", "4.0M", "16.00", "27.00x"]
    assert rows[1][4:9] == ["88.00", "60.00", "70.00", "70.00", "85.00"]
    assert rows[1][10] == f"{100 * 233 / 243:.1f}%" and rows[1][12] == "9.00x"
    assert rows[2][5] == "error" and rows[2][9] == "89.00*"


def test_write_report_files(tmp_path):
    report = _report()
    files = write_report({**report, "files": {}}, tmp_path / "out")
    assert set(files) == {"md", "json", "png"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| teacher (base) |" in md and "## Errors" in md and "RuntimeError: oom" in md
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


# -- the non-neural baseline row ---------------------------------------------------------------

def _baseline(errors=None):
    results = {
        # between the teacher (90) and small (88) on NSMC; above everyone on KOHATE macro F1
        "nsmc": {"test": {"accuracy": 89.0}, "score": 89.0, "method": "tf-idf + lr",
                 "fit_seconds": 12.5, "param": "C", "chosen": 1.0, "selected_on": "heldout"},
        "kohate": {"test": {"macro_f1": 65.0, "binary_f1": 71.0}, "score": 65.0,
                   "fit_seconds": 1.0, "param": "C", "chosen": 0.3, "selected_on": "heldout"},
    }
    return {"name": "baseline (n-gram + linear)", "results": results,
            "errors": errors or {"korquad": "DataError: no test split"}}


def _with_baseline():
    return build_report(_entries(), TASKS, teacher="base", main_metrics=MAIN,
                        baseline=_baseline())


def test_report_compares_every_model_with_the_baseline():
    report = _with_baseline()
    base = report["baseline"]
    assert base["main"] == {"nsmc": 89.0, "kohate": 65.0} and base["tasks_scored"] == 2
    assert base["average"] == pytest.approx(77.0)
    assert base["pct_of_teacher"] == pytest.approx(100 * 154 / 154)  # teacher: 90 + 64
    assert base["errors"] == {"korquad": "DataError: no test split"}
    assert base["fit_seconds"]["nsmc"] == 12.5 and base["chosen"]["kohate"] == {"C": 0.3}
    models = {m["name"]: m for m in report["models"]}
    base_m, small, broken = models["base"], models["small"], models["broken"]
    assert base_m["below_baseline"] == ["kohate"] and base_m["vs_baseline"]["nsmc"] == 1.0
    assert (base_m["at_or_above_baseline"], base_m["baseline_tasks"]) == (1, 2)
    assert small["below_baseline"] == ["nsmc", "kohate"] and small["at_or_above_baseline"] == 0
    assert small["average_below_baseline"] is True and base_m["average_below_baseline"] is False
    # a model is compared on the tasks both have: broken only has NSMC (89.0 = the baseline)
    assert broken["below_baseline"] == [] and broken["baseline_tasks"] == 1
    assert report["below_baseline"] == {"base": ["kohate"], "small": ["nsmc", "kohate"]}
    # no baseline: no comparison fields, no baseline row
    plain = _report()
    assert plain["baseline"] is None and "below_baseline" not in plain["models"][0]


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_markdown_follows_the_results_contract():
    """docs/results.md contract: the first table whose header names NSMC has one row per model
    (the teacher's first cell starts with "teacher"), a row whose first cell contains
    "baseline", and a "% of teacher" column; scores below the baseline are marked."""
    md = markdown_table(_with_baseline())
    lines = md.strip().splitlines()
    header = _cells(lines[0])
    assert "NSMC acc" in header and "% of teacher" in header and "≥ baseline" in header
    rows = {r[0]: dict(zip(header, r)) for r in map(_cells, lines[2:])}
    assert list(rows) == ["teacher (base)", "small", "broken", "baseline (n-gram + linear)"]
    small, teacher = rows["small"], rows["teacher (base)"]
    assert small["NSMC acc"] == "88.00 ↓" and small["KOHATE macro F1"] == "60.00 ↓"
    assert small["KOHATE binary F1"] == "70.00 ↓"  # baseline binary F1 is 71
    assert small["KorQuAD F1"] == "85.00"  # the baseline has no KorQuAD score: no mark
    assert teacher["NSMC acc"] == "90.00" and teacher["KOHATE macro F1"] == "64.00 ↓"
    assert teacher["≥ baseline"] == "1/2" and small["≥ baseline"] == "0/2"
    assert small["average"].endswith("↓") and not teacher["average"].endswith("↓")
    base = rows["baseline (n-gram + linear)"]
    assert base["NSMC acc"] == "89.00" and base["KorQuAD F1"] == "error"
    assert base["% of teacher"] == "100.0%" and base["average"] == "77.00*"
    assert base["params"] == "–" and base["≥ baseline"] == "–"
    # small: NSMC, both KOHATE F1s, average; the teacher: KOHATE macro F1; broken: none (its
    # one score equals the baseline's)
    assert md.count("↓") == 5


def test_report_files_with_baseline(tmp_path):
    files = write_report(_with_baseline(), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| baseline (n-gram + linear) |" in md
    assert "Below the non-neural baseline: base on 1 task (KOHATE); small on 2 tasks" in md
    assert "- baseline (n-gram + linear) / korquad: DataError" in md
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["baseline"]["main"]["nsmc"] == 89.0 and data["below_baseline"]["base"]
    from PIL import Image

    wide = Image.open(files["png"]).size
    write_report(_report(), tmp_path / "plain")
    plain = Image.open(tmp_path / "plain" / "report.png").size
    assert wide[0] > plain[0] * 1.5  # the per-task panel beside the size plot

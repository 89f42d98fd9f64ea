"""bench/korean_table.py's page helpers: the chance line that every accuracy column is read by."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table():
    path = REPO / "bench" / "korean_table.py"
    spec = importlib.util.spec_from_file_location("korean_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.PLAN.clear()
    mod.PLAN.update(mod.E5_PLAN)
    return mod


def _kornli(tmp_path: Path, labels: list[str]) -> Path:
    folder = tmp_path / "kornli"
    folder.mkdir()
    rows = ["sentence1\tsentence2\tgold_label"] + [
        f"남자가 길을 걷는다 {i}.\t사람이 밖에 있다.\t{lab}" for i, lab in enumerate(labels)]
    (folder / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return tmp_path


def test_majority_accuracy_is_the_most_frequent_test_label(table, tmp_path):
    data = _kornli(tmp_path, ["entailment"] * 5 + ["neutral"] * 3 + ["contradiction"] * 2)
    assert table.majority_accuracy(data, "kornli") == pytest.approx(50.0)
    # not an accuracy task: no floor
    assert table.majority_accuracy(data, "korsts") is None


def test_at_chance_names_the_models_near_the_floor(table, tmp_path):
    data = _kornli(tmp_path, ["entailment", "neutral", "contradiction"] * 4)
    report = {"tasks": ["kornli", "korsts"], "models": [
        {"name": "teacher", "main": {"kornli": 60.1, "korsts": 75.7}},
        {"name": "kd", "main": {"kornli": 34.0, "korsts": 70.0}},
        {"name": "kd_pruned", "main": {"kornli": 36.5}}]}
    lines = table.at_chance(report, data)
    assert lines == ["kornli 33.3 (within 3 points of it: kd)"]
    report["models"][1]["main"]["kornli"] = 50.0
    assert table.at_chance(report, data) == ["kornli 33.3"]


def _record(table) -> dict:
    models = [
        {"name": "teacher", "main": {"kornli": 60.1}, "average": 60.1, "pct_of_teacher": 100.0,
         "fp32_mb": 114.9},
        {"name": "kd", "main": {"kornli": 34.0}, "average": 34.0, "pct_of_teacher": 56.6,
         "fp32_mb": 43.9},
        {"name": "kd_pruned", "main": {"kornli": 36.5}, "average": 36.5,
         "pct_of_teacher": 60.7, "fp32_mb": 43.9}]
    return {"argv": ["bench/korean_table.py", "--data_dir", "DATA", "--doc", "docs/results.md"],
            "machine": "2 CPU cores (a test)", "plan": table.E5_PLAN,
            "projected": {"teacher": 1.7, "evaluate": 9.0},
            "stages": {"teacher": {"seconds": 120.0, "cpu_seconds": 200.0, "load_15min": 1.0},
                       "evaluate": {"seconds": 600.0, "cpu_seconds": 1100.0,
                                    "load_15min": 2.1}},
            "trim": {"kept": 18854, "pieces": 250002, "params_after": 28.7e6,
                     "params_before": 117.5e6},
            "report": {"tasks": ["kornli"], "models": models,
                       "baseline": {"main": {"kornli": 53.7}}},
            "report_md": "# report\n| model | kornli |\n|---|---:|\n| teacher | 60.10 |\n"}


def test_page_is_rewritten_from_its_record_alone(table, tmp_path):
    """--page_from: the page comes back from the JSON record with no run's workdir: the
    command and machine of the recorded run, its stage times, targets and chance line."""
    import json

    data = _kornli(tmp_path, ["entailment", "neutral", "contradiction"] * 4)
    record = tmp_path / "docs" / table.RECORD_NAME
    record.parent.mkdir()
    record.write_text(json.dumps(_record(table)))
    doc = tmp_path / "docs" / "results.md"
    table.page_from_record(record, doc, tmp_path / "none", data)
    page = doc.read_text()
    assert "python bench/korean_table.py --data_dir DATA --doc docs/results.md" in page
    assert "2 CPU cores (a test)" in page
    assert "teacher 1.7 / 2.0" in page and "evaluate 9.0 / 10.0" in page
    assert "kornli 33.3 (within 3 points of it: kd)" in page
    assert "| kd | 43.9 | 34.00 | 36.50 | -2.50 | kornli -2.50 |" in page
    assert "18,854 of 250,002" in page
    # no curve was run: the gaps line names the script, not a section that is not there
    assert "curve below" not in page and "`bench/nsmc_curve.py` measures" in page
    assert not (tmp_path / "none").exists()  # nothing was run or written there
    curve = tmp_path / "w" / "nsmc_curve"
    curve.mkdir(parents=True)
    (curve / "curve.json").write_text(json.dumps({
        "model": "runs/table/teacher", "test_rows": 500,
        "points": [{"rows": 1000}, {"rows": 2000}]}))
    (curve / "curve.md").write_text("| rows | teacher |\n|---:|---:|\n| 1000 | 70.0 |\n")
    table.page_from_record(record, doc, tmp_path / "w", data)
    page = doc.read_text()
    assert "the NSMC curve below measures" in page and "| 1000 | 70.0 |" in page


def test_page_from_a_missing_record_says_how_to_make_one(table, tmp_path):
    with pytest.raises(SystemExit, match="writes it beside the page"):
        table.page_from_record(tmp_path / "nope.json", tmp_path / "r.md", tmp_path, tmp_path)

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

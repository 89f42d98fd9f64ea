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
    assert "Students on the same rows" not in page  # no student curve was run
    (curve / "curve.json").write_text(json.dumps({  # an older curve: no "name"
        "model": "runs/table/teacher", "test_rows": 500,
        "points": [{"rows": 1000, "model": 70.0, "baseline": 68.0},
                   {"rows": 2000, "model": 80.0, "baseline": 75.0}]}))
    kd = tmp_path / "w" / "nsmc_curve_kd"
    kd.mkdir()
    (kd / "curve.json").write_text(json.dumps({
        "model": "runs/table/kd", "name": "kd", "test_rows": 500,
        "points": [{"rows": 1000, "model": 63.0, "baseline": 68.0},
                   {"rows": 4000, "model": 77.0, "baseline": 79.0}]}))
    table.page_from_record(record, doc, tmp_path / "w", data)
    page = doc.read_text()
    assert "| NSMC training rows | teacher | kd (% of teacher) | n-gram + logistic regression |" \
        in page
    assert "| 1,000 | 70.00 | 63.00 (90.0 %) | 68.00 |" in page
    assert "the NSMC curves below measure what more rows buy the teacher and the students" in page
    # a student's row counts only; the teacher's score where it has one
    assert "| 4,000 | - | 77.00 | 79.00 |" in page
    assert "| 2,000 |" not in page.split("Students on the same rows")[1]


def test_page_from_a_missing_record_says_how_to_make_one(table, tmp_path):
    with pytest.raises(SystemExit, match="writes it beside the page"):
        table.page_from_record(tmp_path / "nope.json", tmp_path / "r.md", tmp_path, tmp_path)


def _finished_run(root: Path, name: str, task: str, seconds: float) -> Path:
    import json

    run = root / "report" / "runs" / name / task
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"seconds": seconds, "score": 50.0}))
    return run


def test_rerun_deletes_every_models_runs_of_the_task_and_counts_their_time(table, tmp_path):
    """--rerun TASK: that task's runs go (every model), the other tasks' stay; the replaced
    seconds are the deleted runs' own."""
    names = ["teacher", "kd", "kd_pruned"]
    for n, s in zip(names, (60.0, 30.0, 20.0), strict=True):
        _finished_run(tmp_path, n, "kohate", s)
        _finished_run(tmp_path, n, "nsmc", 99.0)
    assert table.run_seconds(tmp_path, names, ["kohate"]) == (110.0, 3)
    assert table.discard_runs(tmp_path, names, ["kohate"]) == pytest.approx(110.0)
    for n in names:
        assert not (tmp_path / "report" / "runs" / n / "kohate").exists()
        assert (tmp_path / "report" / "runs" / n / "nsmc" / "results.json").is_file()
    assert table.run_seconds(tmp_path, names, ["kohate"]) == (0.0, 0)


def test_amended_stage_corrects_its_minutes_and_the_page_says_why(table, tmp_path):
    """A finished evaluate stage re-run for one task: its wall time moves by new - replaced,
    its CPU time adds the new invocation's, the note reaches the page, and it persists."""
    import json

    stages = table.Stages(tmp_path)
    stages.record("evaluate", 600.0, 1100.0, load_15min=2.1)
    stages.amend("evaluate", ["kohate"], replaced=110.0, seconds=80.0, cpu_seconds=150.0,
                  runs=3)
    entry = table.Stages(tmp_path).data["evaluate"]  # read back from stages.json
    assert entry["seconds"] == pytest.approx(570.0)
    assert entry["cpu_seconds"] == pytest.approx(1250.0)
    assert entry["reruns"][0]["runs"] == 3
    assert "kohate fine-tuned again" in entry["note"] and "1.3 min of fine-tuning replacing " \
        "1.8" in entry["note"]
    record = _record(table)
    record["stages"]["evaluate"] = entry
    path = tmp_path / table.RECORD_NAME
    path.write_text(json.dumps(record))
    data = _kornli(tmp_path, ["entailment", "neutral", "contradiction"] * 4)
    doc = tmp_path / "results.md"
    table.page_from_record(path, doc, tmp_path / "none", data)
    page = doc.read_text()
    assert "evaluate 9.0 / 9.5" in page
    assert "- evaluate: kohate fine-tuned again in a later invocation" in page


def test_page_command_leaves_out_rerun(table):
    argv = ["x/korean_table.py", "--data_dir", "D", "--rerun", "kohate", "--doc", "r.md",
            "--rerun=nsmc"]
    assert table.page_argv(argv) == ["bench/korean_table.py", "--data_dir", "D", "--doc", "r.md"]


def test_rerun_takes_the_init_study_runs_of_the_task_with_it(table, tmp_path):
    """The init_study stage links the table's runs and adds its own: a re-run task's links and
    runs go, its section and stage record too, other tasks' stay."""
    names = ["teacher", "lf_v3"]
    table_run = _finished_run(tmp_path, "lf_v3", "nsmc", 30.0)
    _finished_run(tmp_path, "teacher", "nsmc", 60.0)
    study = tmp_path / "init_study"
    link = study / "report" / "runs" / "lf_v3" / "nsmc"
    link.parent.mkdir(parents=True)
    link.symlink_to(table_run)
    own = _finished_run(study, "lf_v3_random", "nsmc", 25.0)
    other = _finished_run(study, "lf_v3_random", "kohate", 25.0)
    (study / "init_study.md").write_text("| student |\n")
    stages = table.Stages(tmp_path)
    stages.record("init_study", 300.0, 500.0)
    assert table.discard_runs(tmp_path, names, ["nsmc"], stages) == pytest.approx(90.0)
    assert not link.is_symlink() and not link.exists() and not own.exists()
    assert (other / "results.json").is_file()
    assert not (study / "init_study.md").exists()
    assert not table.Stages(tmp_path).done("init_study")


def test_missed_targets_name_the_uncapped_plans_budget_from_every_training_row(
        table, tmp_path, monkeypatch):
    """The gaps section's budget line projects `--full` on the task's whole training split (the
    capped plan's row limit does not apply), and leaves the capped plan in place afterwards."""
    import re

    data = _kornli(tmp_path, ["entailment", "neutral", "contradiction"] * 4)
    report = {"tasks": ["kornli"], "models": [
        {"name": "teacher", "main": {"kornli": 60.1}}, {"name": "kd", "main": {"kornli": 34.0}}],
        "baseline": {"main": {"kornli": 53.7}}}
    missed = [("kd (distilled) >= 97 % of the teacher's average", False, "56.6 %")]
    monkeypatch.setitem(table.PLAN["finetune"], "kornli",
                        {**table.PLAN["finetune"]["kornli"], "task.limit_train": 100})
    capped = dict(table.PLAN["finetune"]["kornli"])

    def budget(train_rows: int) -> tuple[float, float]:
        rows = ["sentence1\tsentence2\tgold_label"] + ["가\t나\tneutral"] * train_rows
        (data / "kornli" / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        line = [x for x in table.e5_gaps(report, missed, data) if "uncapped plan needs" in x]
        assert len(line) == 1 and "for the 2 models" in line[0]
        found = re.search(r"projected at ([\d,]+) min .* fine-tuning alone ([\d,]+) min", line[0])
        return tuple(float(g.replace(",", "")) for g in found.groups())

    small, large = budget(2_000), budget(200_000)
    assert large[0] > small[0] + 10 and large[1] > small[1] + 10  # every row counts, no cap
    assert table.PLAN["finetune"]["kornli"] == capped
    # nothing missed: no budget line
    assert not any("uncapped" in x for x in table.e5_gaps(report, [("t", True, "")], data))


def test_load_remark_names_the_stages_that_shared_the_cores(table, tmp_path):
    stages = table.Stages(tmp_path)
    stages.record("distill", 60.0, 100.0, load_15min=1.8)
    stages.record("evaluate", 600.0, 1100.0, load_15min=1.9)
    assert "none above 2" in table._load_remark(stages)
    stages.record("distill", 60.0, 100.0, load_15min=3.2)
    assert table._load_remark(stages) == " (above 2 at distill: other work shared the 2 cores)"

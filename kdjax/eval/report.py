"""The paper-style comparison table: build it from per-model results, write md / json / png.

`build_report` turns one entry per model (size, throughput, per-task fine-tuning results)
and the non-neural baseline's results into the report dict; `write_report` writes
`report.md` (a markdown table: teacher first, the baseline last, every model score below the
baseline's marked), `report.json` (the dict) and `report.png` (fp32 size in MB vs. average
score with the teacher, a dashed line at 97% of the teacher's average and the baseline's
average; beside it the main metric per task, the baseline as a bar per task).

Definitions (see docs/evaluation.md):
* size: parameters of the encoder (embeddings + layers, no head: every task adds its own),
  fp32 MB = 4 bytes x params / 10^6;
* compression = teacher fp32 MB / model fp32 MB;
* average = mean over tasks of each task's main metric (test split, x100); KorQuAD and
  KOHATE also show their second metric (EM; binary F1) but count once, by their main metric;
* % of teacher = 100 x the model's mean / the teacher's mean over the tasks both have a score
  for (so a failed run does not compare unlike sets);
* speed-up = model sentences/s / teacher sentences/s;
* the baseline (`kdjax.baseline`): same train / selection / test examples as the runs; a model
  score is "below baseline" when it is lower than the baseline's score of the same metric;
  ">= baseline" counts the tasks where the model's main metric is at least the baseline's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdjax.errors import ConfigError
from kdjax.storage import atomic_path, atomic_write_text

THRESHOLD = 97.0  # the paper's claim: every student keeps >= 97% of its teacher's average
BELOW = "↓"  # marks a model score below the non-neural baseline's in report.md

TASK_LABELS = {
    "nsmc": "NSMC",
    "kohate": "KOHATE",
    "kornli": "KorNLI",
    "korsts": "KorSTS",
    "question_pair": "Question Pair",
    "naver_ner": "Naver NER",
    "korquad": "KorQuAD",
}
METRIC_LABELS = {
    "accuracy": "acc",
    "macro_f1": "macro F1",
    "binary_f1": "binary F1",
    "binary_accuracy": "binary acc",
    "spearman": "Spearman",
    "pearson": "Pearson",
    "f1": "F1",
    "exact_match": "EM",
    "entity_f1": "F1",
}
# Metrics shown besides the main one (the paper reports KorQuAD as EM/F1; KOHATE 3-class
# macro F1 and the binary none vs. offensive+hate F1).
EXTRA_METRICS = {
    "korquad": ("exact_match", "f1"),
    "kohate": ("macro_f1", "binary_f1"),
}


def task_columns(task: str, main_metric: str) -> list[str]:
    """Metrics of `task` shown in the table, in order (the main metric always included)."""
    extra = EXTRA_METRICS.get(task, ())
    return list(extra) if main_metric in extra else [main_metric, *extra]


def column_label(task: str, metric: str) -> str:
    return f"{TASK_LABELS.get(task, task)} {METRIC_LABELS.get(metric, metric)}"


def main_metrics_of(tasks: Sequence[str]) -> dict[str, str]:
    """{task: main metric name} from the task registry."""
    from kdjax.data.tasks import get_task

    return {t: get_task(t).main_metric for t in tasks}


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _scores_of(results: Mapping[str, Any], errors: dict[str, str], tasks: Sequence[str],
               main_metrics: Mapping[str, str]) -> tuple[dict, dict, dict]:
    """(scores {task: {metric: v}}, main {task: v}, runs {task: dir}) of one entry's results;
    a result without its main metric adds an error."""
    scores: dict[str, dict[str, float]] = {}
    main: dict[str, float] = {}
    runs: dict[str, str] = {}
    for t in tasks:
        r = results.get(t)
        if not r:
            continue
        test = {k: v for k, v in (r.get("test") or {}).items() if _num(v) is not None}
        scores[t] = {k: float(v) for k, v in test.items()}
        value = _num(test.get(main_metrics[t], r.get("score")))
        if value is not None:
            main[t] = value
        elif t not in errors:
            errors[t] = f"no test {main_metrics[t]} in the results"
        if r.get("model_dir"):
            runs[t] = str(Path(r["model_dir"]).parent)
    return scores, main, runs


def _pct(main: Mapping[str, float], ref: Mapping[str, float], tasks: Sequence[str]
         ) -> tuple[float | None, int]:
    """(100 x mean of `main` / mean of `ref` over the tasks both have, how many tasks)."""
    common = [t for t in tasks if t in main and t in ref]
    ours, theirs = _mean([main[t] for t in common]), _mean([ref[t] for t in common])
    return (100.0 * ours / theirs if common and theirs else None), len(common)


def build_report(entries: Sequence[Mapping[str, Any]], tasks: Sequence[str], *,
                 teacher: str | None = None, main_metrics: Mapping[str, str] | None = None,
                 setup: Mapping[str, Any] | None = None,
                 baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report dict.

    Args:
      entries: one mapping per model: `name`, `path`, `params`, `fp32_mb`, `sentences_per_s`
        (None when not measured), `results` {task: a `run_task` results dict (its `test`
        metrics and `score` are read)}, `errors` {task: message} for runs that failed.
      tasks: task names, in column order.
      teacher: the name of the teacher entry (default: the first entry).
      main_metrics: {task: main metric}; default from the task registry.
      setup: extra facts recorded as `report["setup"]` (throughput batch/length/device...).
      baseline: the non-neural baseline: `name`, `results` {task: `kdjax.baseline` results
        (`test`, `score`, `method`, `fit_seconds` ...)}, `errors` {task: message}; None = no
        baseline row.
    Returns:
      {"teacher", "tasks", "main_metrics", "columns": [{task, metric, label}], "setup",
       "models": [per model: name, path, params, fp32_mb, compression, scores {task:
       {metric: v}}, main {task: v}, average, tasks_scored, pct_of_teacher, sentences_per_s,
       speedup, errors {task: msg}, runs {task: dir}, and against the baseline: vs_baseline
       {task: main - baseline main}, below_baseline [tasks], baseline_tasks (both scored),
       at_or_above_baseline (count), average_below_baseline], teacher first, "claim_97": {
       threshold_pct, holds, at_or_above, below, complete}, "baseline": None or {name,
       methods {task: description}, scores, main, average, tasks_scored, pct_of_teacher,
       pct_tasks, errors, fit_seconds {task: s}, chosen {task: {param: value}}, selected_on
       {task: split}}, "below_baseline": {model: [tasks]} (models below it on some task)}.
    """
    if not entries:
        raise ConfigError("the report needs at least one model")
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {', '.join(names)}")
    teacher = teacher or names[0]
    if teacher not in names:
        raise ConfigError(f"teacher {teacher!r} is not one of the models: {', '.join(names)}")
    tasks = list(tasks)
    main_metrics = dict(main_metrics) if main_metrics is not None else main_metrics_of(tasks)
    missing = [t for t in tasks if t not in main_metrics]
    if missing:
        raise ConfigError(f"no main metric given for task(s) {', '.join(missing)}")
    columns = [
        {"task": t, "metric": m, "label": column_label(t, m)}
        for t in tasks for m in task_columns(t, main_metrics[t])
    ]

    models = []
    for e in entries:
        errors = dict(e.get("errors") or {})
        scores, main, runs = _scores_of(e.get("results") or {}, errors, tasks, main_metrics)
        models.append({
            "name": e["name"],
            "path": str(e.get("path", "")),
            "params": int(e["params"]),
            "fp32_mb": float(e["fp32_mb"]),
            "scores": scores,
            "main": main,
            "average": _mean([main[t] for t in tasks if t in main]),
            "tasks_scored": len(main),
            "sentences_per_s": _num(e.get("sentences_per_s")),
            "errors": errors,
            "runs": runs,
        })

    models.sort(key=lambda m: m["name"] != teacher)  # stable: teacher first, others in order
    ref = models[0]
    for m in models:
        m["compression"] = ref["fp32_mb"] / m["fp32_mb"] if m["fp32_mb"] > 0 else None
        m["pct_of_teacher"], m["pct_tasks"] = _pct(m["main"], ref["main"], tasks)
        fast, base = m["sentences_per_s"], ref["sentences_per_s"]
        m["speedup"] = fast / base if fast and base else None

    base_row = _baseline_row(baseline, tasks, main_metrics, ref) if baseline else None
    below_any: dict[str, list[str]] = {}
    for m in models:
        if base_row is None:
            continue
        common = [t for t in tasks if t in m["main"] and t in base_row["main"]]
        m["vs_baseline"] = {t: m["main"][t] - base_row["main"][t] for t in common}
        m["below_baseline"] = [t for t in common if m["vs_baseline"][t] < 0]
        m["baseline_tasks"] = len(common)
        m["at_or_above_baseline"] = len(common) - len(m["below_baseline"])
        ours, theirs = (_mean([m["main"][t] for t in common]),
                        _mean([base_row["main"][t] for t in common]))
        m["average_below_baseline"] = bool(common) and ours < theirs
        if m["below_baseline"]:
            below_any[m["name"]] = m["below_baseline"]

    students = [m for m in models[1:] if m["pct_of_teacher"] is not None]
    complete = all(not m["errors"] and m["tasks_scored"] == len(tasks) for m in models)
    above = [m["name"] for m in students if m["pct_of_teacher"] >= THRESHOLD]
    below = [m["name"] for m in students if m["pct_of_teacher"] < THRESHOLD]
    claim = {
        "threshold_pct": THRESHOLD,
        # every student scored and at or above the threshold (None: nothing to compare)
        "holds": (not below and len(students) == len(models) - 1) if students else None,
        "at_or_above": above,
        "below": below,
        "complete": complete,
    }
    return {
        "teacher": teacher,
        "tasks": tasks,
        "main_metrics": main_metrics,
        "columns": columns,
        "setup": dict(setup or {}),
        "models": models,
        "claim_97": claim,
        "baseline": base_row,
        "below_baseline": below_any,
    }


def _baseline_row(baseline: Mapping[str, Any], tasks: Sequence[str],
                  main_metrics: Mapping[str, str], teacher: Mapping[str, Any]) -> dict[str, Any]:
    """The report's baseline entry (see `build_report`)."""
    results = baseline.get("results") or {}
    errors = dict(baseline.get("errors") or {})
    scores, main, _ = _scores_of(results, errors, tasks, main_metrics)
    pct, pct_tasks = _pct(main, teacher["main"], tasks)
    done = {t: r for t, r in results.items() if t in tasks and r}
    return {
        "name": str(baseline.get("name") or "baseline"),
        "methods": {t: r.get("method", "") for t, r in done.items()},
        "scores": scores,
        "main": main,
        "average": _mean([main[t] for t in tasks if t in main]),
        "tasks_scored": len(main),
        "pct_of_teacher": pct,
        "pct_tasks": pct_tasks,
        "errors": errors,
        "fit_seconds": {t: r.get("fit_seconds") for t, r in done.items()},
        "chosen": {t: {str(r.get("param", "")): r.get("chosen")} for t, r in done.items()},
        "selected_on": {t: r.get("selected_on") for t, r in done.items()},
    }


# -- writing ------------------------------------------------------------------------------------

def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def teacher_cell(name: str) -> str:
    """The teacher's first cell: its name, starting with "teacher" (docs/results.md contract)."""
    return name if name.lower().startswith("teacher") else f"teacher ({name})"


def markdown_table(report: Mapping[str, Any]) -> str:
    """The report as one markdown table: the teacher first (its cell starts with "teacher"),
    the non-neural baseline last (its cell contains "baseline"); failed runs show "error";
    a score below the baseline's score of the same metric ends in ↓."""
    cols = report["columns"]
    base = report.get("baseline")
    header = ["model", "params", "fp32 MB", "compression", *[c["label"] for c in cols],
              "average", "% of teacher"]
    if base:
        header.append("≥ baseline")
    header += ["sentences/s", "speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def score_cells(row: Mapping[str, Any], mark: bool) -> list[str]:
        cells = []
        for c in cols:
            value = row["scores"].get(c["task"], {}).get(c["metric"])
            if c["task"] in row["errors"] and c["task"] not in row["main"]:
                cells.append("error")
                continue
            ref = base["scores"].get(c["task"], {}).get(c["metric"]) if mark and base else None
            below = value is not None and ref is not None and value < ref
            cells.append(_fmt(value, ".2f") + (f" {BELOW}" if below else ""))
        return cells

    n_tasks = len(report["tasks"])
    for m in report["models"]:
        name = teacher_cell(m["name"]) if m["name"] == report["teacher"] else m["name"]
        cells = [name, _fmt_params(m["params"]), f"{m['fp32_mb']:.2f}",
                 _fmt(m["compression"], ".2f", "x"), *score_cells(m, True)]
        partial = "*" if m["tasks_scored"] < n_tasks else ""
        cells += [_fmt(m["average"], ".2f", partial)
                  + (f" {BELOW}" if m.get("average_below_baseline") else ""),
                  _fmt(m["pct_of_teacher"], ".1f", "%")]
        if base:
            cells.append(f"{m['at_or_above_baseline']}/{m['baseline_tasks']}"
                         if m.get("baseline_tasks") else "–")
        cells += [_fmt(m["sentences_per_s"], ".1f"), _fmt(m["speedup"], ".2f", "x")]
        lines.append("| " + " | ".join(cells) + " |")
    if base:
        partial = "*" if base["tasks_scored"] < n_tasks else ""
        cells = [base["name"], "–", "–", "–", *score_cells(base, False),
                 _fmt(base["average"], ".2f", partial), _fmt(base["pct_of_teacher"], ".1f", "%"),
                 "–", "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(report: Mapping[str, Any]) -> str:
    """report.md: a title, the table, how the columns are computed, the comparison with the
    baseline, and any errors."""
    setup = report.get("setup") or {}
    tp = (f"batch {setup.get('batch', 32)} x length {setup.get('length', 128)}"
          + (f" on {setup['device']}" if setup.get("device") else ""))
    base = report.get("baseline")
    parts = [
        "# kdjax evaluation report\n",
        markdown_table(report),
        "Scores are on each task's test split (x100), the main metric per task: "
        + ", ".join(f"{TASK_LABELS.get(t, t)} {METRIC_LABELS.get(m, m)}"
                    for t, m in report["main_metrics"].items())
        + ". average = mean of the main metrics (* = not every task has a score); % of teacher "
        "= the model's mean / the teacher's mean over the tasks both have; compression = "
        "teacher fp32 MB / model fp32 MB (encoder parameters, no task head); sentences/s = "
        f"jitted forward of encoder + classifier at {tp}; speed-up = vs. the teacher.\n",
    ]
    if base:
        parts.append(
            f"{base['name']}: a non-neural reference fitted on the same training examples, "
            "its one hyper-parameter chosen on the same dev / held-out split, scored on the "
            "same test examples with the same metric code (character / word n-gram TF-IDF + "
            "logistic regression; ridge regression for KorSTS; a per-word linear SVM for NER; "
            "a lexical-overlap span ranker for KorQuAD; see docs/evaluation.md). "
            f"{BELOW} = below the baseline's score of that metric (on average: below its mean "
            "over the same tasks); ≥ baseline = tasks where the model's main metric is at "
            "least the baseline's / tasks both have.\n")
        below = report.get("below_baseline") or {}
        if below:
            parts.append("Below the non-neural baseline: " + "; ".join(
                f"{n} on {len(ts)} task{'s' if len(ts) != 1 else ''} ("
                + ", ".join(TASK_LABELS.get(t, t) for t in ts) + ")"
                for n, ts in below.items()) + ".\n")
        else:
            parts.append("Every model is at or above the non-neural baseline on every task "
                         "both have.\n")
    if setup.get("data_dir"):
        parts.append(f"Data: `{setup['data_dir']}`.\n")
    s = report.get("claim_97") or {}
    if s.get("at_or_above") or s.get("below"):
        parts.append(
            f"At or above {s['threshold_pct']:g}% of the teacher's average: "
            f"{', '.join(s['at_or_above']) or 'none'}; below: "
            f"{', '.join(s['below']) or 'none'}.\n")
    errors = [(m["name"], t, e) for m in report["models"] for t, e in m["errors"].items()]
    if base:
        errors += [(base["name"], t, e) for t, e in base["errors"].items()]
    if errors:
        parts.append("## Errors\n")
        parts += [f"- {n} / {t}: {e.splitlines()[0] if e else 'error'}" for n, t, e in errors]
        parts[-1] += "\n"
    return "\n".join(parts)


def plot(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """report.png. Left: fp32 MB (x, log scale when sizes span > 10x) vs. average score (y),
    the teacher a red star, dashed: 97% of the teacher's average, dash-dotted: the baseline's
    average. Right (with a baseline): each task's main metric per model, the baseline's score
    as a grey bar per task."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    base = report.get("baseline")
    fig, axes = plt.subplots(1, 2 if base else 1, figsize=(13 if base else 7, 4.5), dpi=120,
                             squeeze=False)
    try:
        ax = axes[0][0]
        models = [m for m in report["models"] if m["average"] is not None]
        teacher = next((m for m in models if m["name"] == report["teacher"]), None)
        for m in models:
            is_teacher = m is teacher
            ax.scatter([m["fp32_mb"]], [m["average"]], s=120 if is_teacher else 50,
                       marker="*" if is_teacher else "o",
                       color="tab:red" if is_teacher else "tab:blue", zorder=3,
                       label="teacher" if is_teacher else None)
            partial = "*" if m["tasks_scored"] < len(report["tasks"]) else ""
            ax.annotate((teacher_cell(m["name"]) if is_teacher else m["name"]) + partial,
                        (m["fp32_mb"], m["average"]), textcoords="offset points",
                        xytext=(6, 4), fontsize=8)
        if teacher is not None:
            ax.axhline(teacher["average"] * THRESHOLD / 100.0, color="gray", linestyle="--",
                       linewidth=1, label=f"{THRESHOLD:g}% of teacher average")
        if base and base["average"] is not None:
            ax.axhline(base["average"], color="tab:green", linestyle="-.", linewidth=1.2,
                       label="non-neural baseline average")
        sizes = [m["fp32_mb"] for m in models if m["fp32_mb"] > 0]
        if sizes and max(sizes) / min(sizes) > 10:
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.15, y=0.12)
        ax.set_xlabel("model size (fp32 MB, encoder)")
        ax.set_ylabel("average score")
        ax.set_title("size vs. average score")
        ax.grid(True, alpha=0.3)
        if models:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
        if base:
            _plot_tasks(axes[0][1], report)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def _plot_tasks(ax: Any, report: Mapping[str, Any]) -> None:
    """Per task: the baseline's main metric as a grey bar, each model's as a marker."""
    import numpy as np

    tasks = report["tasks"]
    base = report["baseline"]
    x = np.arange(len(tasks))
    ax.bar(x, [base["main"].get(t, 0.0) for t in tasks], width=0.7, color="0.85",
           edgecolor="0.5", label=base["name"], zorder=1)
    models = report["models"]
    spread = np.linspace(-0.25, 0.25, len(models)) if len(models) > 1 else np.zeros(1)
    # red is the teacher's; the students take the other tab10 colours in turn
    palette = [f"tab:{n}" for n in ("blue", "orange", "green", "purple", "brown", "pink",
                                     "gray", "olive", "cyan")]
    students = iter(palette * (len(models) // len(palette) + 1))
    for dx, m in zip(spread, models):
        have = [i for i, t in enumerate(tasks) if t in m["main"]]
        is_teacher = m["name"] == report["teacher"]
        ax.scatter(x[have] + dx, [m["main"][tasks[i]] for i in have], zorder=3,
                   marker="*" if is_teacher else "o", s=80 if is_teacher else 28,
                   color="tab:red" if is_teacher else next(students),
                   label=teacher_cell(m["name"]) if is_teacher else m["name"])
    ax.set_xticks(x)
    ax.set_xticklabels([f"{TASK_LABELS.get(t, t)}\n{METRIC_LABELS.get(mm, mm)}"
                        for t, mm in ((t, report["main_metrics"][t]) for t in tasks)],
                       fontsize=7)
    ax.set_ylabel("test score (main metric)")
    ax.set_title("per task vs. the non-neural baseline (bars)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7,
              ncol=min(4, len(models) + 1), frameon=False)


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    """Write report.md, report.json and report.png into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json", "png": out / "report.png"}
    atomic_write_text(paths["md"], markdown(report))
    data = {k: v for k, v in report.items() if k != "files"}
    atomic_write_text(paths["json"], json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    with atomic_path(paths["png"]) as tmp:
        plot(report, tmp)
    return {k: str(v) for k, v in paths.items()}

"""The paper-style comparison table: build it from per-model results, write md / json / png.

`build_report` turns one entry per model (size, throughput, per-task fine-tuning results)
into the report dict; `write_report` writes `report.md` (a markdown table, teacher first),
`report.json` (the dict) and `report.png` (fp32 size in MB vs. average score, teacher
marked, a dashed line at 97% of the teacher's average).

Definitions (see docs/evaluation.md):
* size: parameters of the encoder (embeddings + layers, no head: every task adds its own),
  fp32 MB = 4 bytes x params / 10^6;
* compression = teacher fp32 MB / model fp32 MB;
* average = mean over tasks of each task's main metric (test split, x100); KorQuAD and
  KOHATE also show their second metric (EM; binary F1) but count once, by their main metric;
* % of teacher = 100 x the model's mean / the teacher's mean over the tasks both have a score
  for (so a failed run does not compare unlike sets);
* speed-up = model sentences/s / teacher sentences/s.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdjax.errors import ConfigError

THRESHOLD = 97.0  # the paper's claim: every student keeps >= 97% of its teacher's average

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


def build_report(entries: Sequence[Mapping[str, Any]], tasks: Sequence[str], *,
                 teacher: str | None = None, main_metrics: Mapping[str, str] | None = None,
                 setup: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report dict.

    Args:
      entries: one mapping per model: `name`, `path`, `params`, `fp32_mb`, `sentences_per_s`
        (None when not measured), `results` {task: a `run_task` results dict (its `test`
        metrics and `score` are read)}, `errors` {task: message} for runs that failed.
      tasks: task names, in column order.
      teacher: the name of the teacher entry (default: the first entry).
      main_metrics: {task: main metric}; default from the task registry.
      setup: extra facts recorded as `report["setup"]` (throughput batch/length/device...).
    Returns:
      {"teacher", "tasks", "main_metrics", "columns": [{task, metric, label}], "setup",
       "models": [per model: name, path, params, fp32_mb, compression, scores {task:
       {metric: v}}, main {task: v}, average, tasks_scored, pct_of_teacher, sentences_per_s,
       speedup, errors {task: msg}, runs {task: dir}], teacher first, "claim_97": {
       threshold_pct, holds, at_or_above, below, complete}}.
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
        results = e.get("results") or {}
        errors = dict(e.get("errors") or {})
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
        common = [t for t in tasks if t in m["main"] and t in ref["main"]]
        ours, theirs = _mean([m["main"][t] for t in common]), _mean(
            [ref["main"][t] for t in common])
        m["pct_of_teacher"] = 100.0 * ours / theirs if common and theirs else None
        m["pct_tasks"] = len(common)
        fast, base = m["sentences_per_s"], ref["sentences_per_s"]
        m["speedup"] = fast / base if fast and base else None

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
    }


# -- writing ------------------------------------------------------------------------------------

def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def markdown_table(report: Mapping[str, Any]) -> str:
    """The report as one markdown table (teacher first); failed runs show "error"."""
    cols = report["columns"]
    header = ["model", "params", "fp32 MB", "compression", *[c["label"] for c in cols],
              "average", "% of teacher", "sentences/s", "speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in report["models"]:
        name = m["name"] + (" (teacher)" if m["name"] == report["teacher"] else "")
        cells = [name, _fmt_params(m["params"]), f"{m['fp32_mb']:.2f}",
                 _fmt(m["compression"], ".2f", "x")]
        for c in cols:
            if c["task"] in m["errors"] and c["task"] not in m["main"]:
                cells.append("error")
            else:
                cells.append(_fmt(m["scores"].get(c["task"], {}).get(c["metric"]), ".2f"))
        partial = "*" if m["tasks_scored"] < len(report["tasks"]) else ""
        cells += [_fmt(m["average"], ".2f", partial), _fmt(m["pct_of_teacher"], ".1f", "%"),
                  _fmt(m["sentences_per_s"], ".1f"), _fmt(m["speedup"], ".2f", "x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(report: Mapping[str, Any]) -> str:
    """report.md: a title, the table, how the columns are computed, and any errors."""
    setup = report.get("setup") or {}
    tp = (f"batch {setup.get('batch', 32)} x length {setup.get('length', 128)}"
          + (f" on {setup['device']}" if setup.get("device") else ""))
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
    if setup.get("data_dir"):
        parts.append(f"Data: `{setup['data_dir']}`.\n")
    s = report.get("claim_97") or {}
    if s.get("at_or_above") or s.get("below"):
        parts.append(
            f"At or above {s['threshold_pct']:g}% of the teacher's average: "
            f"{', '.join(s['at_or_above']) or 'none'}; below: "
            f"{', '.join(s['below']) or 'none'}.\n")
    errors = [(m["name"], t, e) for m in report["models"] for t, e in m["errors"].items()]
    if errors:
        parts.append("## Errors\n")
        parts += [f"- {n} / {t}: {e.splitlines()[0] if e else 'error'}" for n, t, e in errors]
        parts[-1] += "\n"
    return "\n".join(parts)


def plot(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """report.png: fp32 MB (x, log scale when sizes span > 10x) vs. average score (y)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        models = [m for m in report["models"] if m["average"] is not None]
        teacher = next((m for m in models if m["name"] == report["teacher"]), None)
        for m in models:
            is_teacher = m is teacher
            ax.scatter([m["fp32_mb"]], [m["average"]], s=120 if is_teacher else 50,
                       marker="*" if is_teacher else "o",
                       color="tab:red" if is_teacher else "tab:blue", zorder=3,
                       label="teacher" if is_teacher else None)
            partial = "*" if m["tasks_scored"] < len(report["tasks"]) else ""
            ax.annotate(m["name"] + partial + (" (teacher)" if is_teacher else ""),
                        (m["fp32_mb"], m["average"]), textcoords="offset points",
                        xytext=(6, 4), fontsize=8)
        if teacher is not None:
            ax.axhline(teacher["average"] * THRESHOLD / 100.0, color="gray", linestyle="--",
                       linewidth=1, label=f"{THRESHOLD:g}% of teacher average")
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
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    """Write report.md, report.json and report.png into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json", "png": out / "report.png"}
    paths["md"].write_text(markdown(report), encoding="utf-8")
    data = {k: v for k, v in report.items() if k != "files"}
    paths["json"].write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n",
                             encoding="utf-8")
    plot(report, paths["png"])
    return {k: str(v) for k, v in paths.items()}

"""`kdjax evaluate` (the comparison report), `kdjax select` (choose a model for a task) and
`kdjax baseline` (the non-neural reference scores alone)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    import jax

    from kdjax.eval.evaluate import evaluate_models, split_list
    from kdjax.train.commands import init_distributed

    init_distributed(args)
    report = evaluate_models(
        split_list(args.models), args.tasks, args.data_dir, args.workdir,
        names=split_list(args.names) if args.names else None, teacher=args.teacher or None,
        overrides=overrides, progress=not args.no_progress, fail_fast=args.fail_fast,
        throughput_batch=args.throughput_batch, throughput_length=args.throughput_length,
        throughput_iters=args.throughput_iters, measure_throughput=not args.no_throughput,
        baseline=not args.no_baseline, refit_baseline=args.refit_baseline,
    )
    if jax.process_index() == 0:
        files = report["files"]
        print(Path(files["md"]).read_text(encoding="utf-8"), flush=True)
        brief = {m["name"]: {"average": m["average"], "pct_of_teacher": m["pct_of_teacher"],
                             **({"below_baseline": m["below_baseline"]}
                                if "below_baseline" in m else {})}
                 for m in report["models"]}
        errors = sum(len(m["errors"]) for m in report["models"])
        line = {"files": files, "teacher": report["teacher"], "models": brief}
        base = report.get("baseline")
        if base:
            errors += len(base["errors"])
            line["baseline"] = {"average": base["average"], "main": base["main"],
                                "pct_of_teacher": base["pct_of_teacher"]}
        line["errors"] = errors
        print(json.dumps(line, ensure_ascii=False))
    return 0


def _baseline(args: argparse.Namespace, overrides: list[str]) -> int:
    from kdjax.baseline import run_baselines

    def say(line: str) -> None:
        if not args.quiet:
            print(f"[baseline {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    for r in run_baselines(args.tasks, args.data_dir, args.workdir or None,
                           overrides=overrides, refit=args.refit, progress=say):
        keys = ("task", "main_metric", "score", "test", "dev", "selected_on", "param", "chosen",
                "train_examples", "select_examples", "test_examples", "fit_seconds", "seconds",
                "fit_cpu_seconds", "cpu_seconds", "cached", "method")
        print(json.dumps({k: r.get(k) for k in keys}, ensure_ascii=False), flush=True)
    return 0


def _select(args: argparse.Namespace, overrides: list[str]) -> int:
    import jax

    from kdjax.eval.evaluate import split_list
    from kdjax.eval.select import select_model
    from kdjax.train.commands import init_distributed

    init_distributed(args)
    selection = select_model(
        args.task, split_list(args.candidates), args.data_dir, args.workdir, overrides,
        names=split_list(args.names) if args.names else None, progress=not args.no_progress,
        fail_fast=args.fail_fast,
    )
    if jax.process_index() == 0:
        brief = {k: selection[k] for k in ("task", "split", "metric", "scores", "chosen",
                                           "chosen_path")}
        brief["file"] = str(Path(args.workdir) / "selection.json")
        print(json.dumps(brief, ensure_ascii=False))
    return 0


def add_eval_commands(sub: argparse._SubParsersAction) -> dict[str, Callable]:
    """Register `evaluate` and `select`; returns their handlers."""
    from kdjax.train.commands import add_distributed_flags

    p = sub.add_parser(
        "evaluate", help="fine-tune models on Korean tasks and write the comparison report",
        description="Fine-tune every model on every task (WORKDIR/runs/NAME/TASK, resumable) "
        "and write WORKDIR/report.md, report.json and report.png: size, compression, task "
        "scores, average, %% of the teacher's average, sentences/s and speed-up. "
        "--config.KEY=V overrides every run's fine-tuning config; --config.TASK.KEY=V only "
        "that task's (e.g. --config.kohate.task.binary=true).",
    )
    p.add_argument("--models", required=True,
                   help="comma-separated model paths: kdjax model dirs, run workdirs, HF dirs "
                   "or hub ids, or size configs (configs/kd_small.py = random init)")
    p.add_argument("--tasks", default="all", help="'all' or comma-separated task names")
    p.add_argument("--data_dir", required=True, help="folder with one subfolder per task")
    p.add_argument("--workdir", required=True, help="output folder")
    p.add_argument("--names", default="", help="comma-separated display names, one per model")
    p.add_argument("--teacher", default="",
                   help="the reference model, by name or path (default: the first model)")
    p.add_argument("--fail_fast", action="store_true",
                   help="stop at the first failed run (default: record it in the report)")
    p.add_argument("--throughput_batch", type=int, default=32)
    p.add_argument("--throughput_length", type=int, default=128)
    p.add_argument("--throughput_iters", type=int, default=10, help="timed calls (median)")
    p.add_argument("--no_throughput", action="store_true", help="skip the speed measurement")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--no_baseline", action="store_true",
                   help="no non-neural baseline row (default: fit one per task, cached in "
                   "WORKDIR/baseline, and mark every model score below it)")
    p.add_argument("--refit_baseline", action="store_true",
                   help="fit the baselines again even when WORKDIR/baseline has them")
    add_distributed_flags(p)

    s = sub.add_parser(
        "select", help="choose the best of several candidate models for a task (dev split)",
        description="Fine-tune (or, for models already fine-tuned on the task, only evaluate) "
        "each candidate, score it on the dev split (held-out train when the task has none; "
        "never test) and write WORKDIR/selection.json.",
    )
    s.add_argument("--task", required=True, help="one task name (e.g. nsmc)")
    s.add_argument("--candidates", required=True, help="comma-separated model paths")
    s.add_argument("--data_dir", required=True, help="folder with the task's data")
    s.add_argument("--workdir", required=True, help="output folder")
    s.add_argument("--names", default="", help="comma-separated names, one per candidate")
    s.add_argument("--fail_fast", action="store_true")
    s.add_argument("--no_progress", action="store_true")
    add_distributed_flags(s)

    b = sub.add_parser(
        "baseline", help="fit and score the non-neural baselines of Korean tasks (JSON lines)",
        description="Fit each task's non-neural reference (n-gram TF-IDF + linear models; a "
        "lexical-overlap span ranker for KorQuAD) on the train split kdjax finetune trains on, "
        "choose its hyper-parameter on the dev or held-out split, score it on test with the "
        "task's metric. One JSON line per task on stdout, progress on stderr. Needs "
        "scikit-learn (pip install 'kdjax[baseline]'). --config.task.KEY=V (e.g. "
        "task.limit_train) sets the data as it does for kdjax evaluate; "
        "--config.TASK.task.KEY=V for one task.",
    )
    b.add_argument("--tasks", default="all", help="'all' or comma-separated task names")
    b.add_argument("--data_dir", required=True, help="folder with one subfolder per task")
    b.add_argument("--workdir", default="",
                   help="cache folder (WORKDIR/TASK/results.json; kdjax evaluate keeps its "
                   "baselines in EVAL_WORKDIR/baseline); default: no cache")
    b.add_argument("--refit", action="store_true", help="ignore cached results")
    b.add_argument("--quiet", action="store_true", help="no progress lines")
    return {"evaluate": _evaluate, "select": _select, "baseline": _baseline}

"""NSMC accuracy against training rows: how much data the table's NSMC cap costs.

The Korean table (bench/korean_table.py) fine-tunes every model on a capped number of NSMC rows
(its PLAN: 3,500 for one epoch) to fit 150 minutes on 2 cores. This script measures, for one
model (the table's teacher, or a student with `--name kd --workdir WORKDIR/nsmc_curve_kd`: the
table's page then prints it as % of the teacher) and the n-gram + logistic-regression baseline
on the same rows, the test accuracy at several row counts with the table's other settings
unchanged, fits accuracy = a + b * log2(rows) to the model's points and reports where that line
would reach a target (an extrapolation, said as one). Resumable: a finished point is read back,
not trained again.

    python bench/nsmc_curve.py --data_dir ../shared/data/ko --model runs/table/teacher \
        --workdir runs/nsmc_curve --rows 2000,4000,8000,16000 --test_rows 5000

Writes WORKDIR/curve.json and WORKDIR/curve.md (the markdown table docs/training.md quotes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def main(argv: list[str] | None = None) -> None:
    import korean_table as kt

    from kdjax.eval.evaluate import evaluate_models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--model", required=True, help="model dir (the table's runs/table/teacher)")
    ap.add_argument("--name", default="teacher")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--rows", default="2000,4000,8000,16000")
    ap.add_argument("--test_rows", type=int, default=5000,
                    help="score on the first N test rows (0: all 50,000)")
    ap.add_argument("--target", type=float, default=87.0)
    args = ap.parse_args(argv)
    kt.PLAN.update(kt.E5_PLAN)
    rows = sorted({int(r) for r in args.rows.split(",") if r.strip()})
    root = Path(args.workdir)
    points = []
    for n in rows:
        t0 = time.perf_counter()
        extra = [f"nsmc.task.limit_train={n}"]
        if args.test_rows:
            extra.append(f"nsmc.task.limit_eval={args.test_rows}")
        report = evaluate_models([args.model], ["nsmc"], args.data_dir, str(root / f"rows_{n}"),
                                 names=[args.name], overrides=kt.finetune_overrides(["nsmc"])
                                 + extra, progress=True, measure_throughput=False,
                                 baseline=True, fail_fast=True)
        model = report["models"][0]["main"]["nsmc"]
        base = (report.get("baseline") or {}).get("main", {}).get("nsmc")
        run = root / f"rows_{n}" / "runs" / args.name / "nsmc" / "results.json"
        seconds = json.loads(run.read_text()).get("seconds") if run.is_file() else None
        points.append({"rows": n, "model": model, "baseline": base,  # the run's own time
                       "seconds": seconds or round(time.perf_counter() - t0, 1)})
        print(f"nsmc_curve: {n:,} rows -> {args.name} {model:.2f}, baseline "
              f"{base if base is None else round(base, 2)}", flush=True)
    fit = {}
    if len(points) >= 2:
        x = np.log2([p["rows"] for p in points])
        b, a = np.polyfit(x, [p["model"] for p in points], 1)
        fit = {"a": float(a), "per_doubling": float(b)}
        if b > 0:
            fit["rows_for_target"] = float(2 ** ((args.target - a) / b))
        # returns shrink with data: the slope of the last two points is the less hopeful line
        (r0, m0), (r1, m1) = [(p["rows"], p["model"]) for p in points[-2:]]
        last = (m1 - m0) / np.log2(r1 / r0)
        fit["last_per_doubling"] = float(last)
        if last > 0 and m1 < args.target:
            fit["rows_for_target_last"] = float(r1 * 2 ** ((args.target - m1) / last))
    out = {"model": args.model, "workdir": args.workdir, "name": args.name,
           "test_rows": args.test_rows or 50000,
           "target": args.target, "points": points, "fit": fit,
           "settings": kt.finetune_overrides(["nsmc"])}
    root.mkdir(parents=True, exist_ok=True)
    (root / "curve.json").write_text(json.dumps(out, indent=1) + "\n")
    md = ["| NSMC training rows (1 epoch) | " + args.name + " | n-gram + logistic regression "
          "| fine-tuning minutes (2 cores, shared) |", "|---:|---:|---:|---:|"]
    md += [f"| {p['rows']:,} | {p['model']:.2f} | "
           + ("-" if p["baseline"] is None else f"{p['baseline']:.2f}")
           + f" | {p['seconds'] / 60:.1f} |" for p in points]
    if fit:
        md.append("")
        md.append(f"Least-squares line over these points: {fit['a']:.2f} + "
                  f"{fit['per_doubling']:.2f} x log2(rows) (test accuracy on the first "
                  f"{out['test_rows']:,} test rows)"
                  + (f"; it reaches {args.target:g} at about {fit['rows_for_target']:,.0f} rows "
                     "(an extrapolation beyond the measured range)"
                     if "rows_for_target" in fit else "") + ".")
        if "rows_for_target_last" in fit:
            md.append(f"The last two points gain {fit['last_per_doubling']:.2f} per doubling; "
                      f"at that rate {args.target:g} needs about "
                      f"{fit['rows_for_target_last']:,.0f} rows.")
    (root / "curve.md").write_text("\n".join(md) + "\n")
    print("\n".join(md), flush=True)


if __name__ == "__main__":
    main()

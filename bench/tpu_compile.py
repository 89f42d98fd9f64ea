"""The paper's runs compiled for Cloud TPU slices on this CPU host (`kdjax compile`), into
docs/scale.md.

    python bench/tpu_compile.py                      # every job not yet in the results file
    python bench/tpu_compile.py --render-only        # rewrite the tables from the results
    python bench/tpu_compile.py --jobs 4             # the first 4 missing jobs, then render
    python bench/tpu_compile.py --parallel 2         # two compiles at once (one core each)
    python bench/tpu_compile.py --match '|v4-32|'    # only the cells on v4-32

Each job is one `python -m kdjax.cli compile --json` subprocess (recipe x slice x mesh x global
batch); its report is appended to the results file (JSON lines), so an interrupted sweep
resumes where it stopped. Jobs run most informative first (`FIRST`), then the rest of the grid.

Recipes (256 x 128 tokens a step, the launch recipes' batch):
  pretrain        ELECTRA pre-training of KR-ELECTRA-base (discriminator 12L/768 + generator
                  12L/256), launch/configs/kr_electra_pretrain.py
  kd_small        KR-ELECTRA-base -> kd_small, paper_kd  (configs/distill_paper.py:kd_small)
  lf_v3           KR-ELECTRA-base -> LF-V3, paper_kd     (configs/distill_paper.py:lf_v3)
  kominilm        KR-ELECTRA-base -> KoMiniLM-23M, minilm (configs/distill_paper.py:kominilm_23m)
  e5_kd_small, e5_lf_v3 (and *_trimmed)  multilingual-E5-small -> the paper's kd_small / LF-V3
                  shapes, hidden MSE through a projection + last-layer Q/K relations, the
                  teacher's whole 250,037-row vocabulary or the 18,839 Korean pieces
                  (configs/distill_e5.py:paper_kd_small,full ...); v5e-16, data-parallel
Meshes: data (N, 1, 1) replicated; fsdp (1, N, 1); data_fsdp (N/4, 4, 1): FSDP inside each
4-chip host, data parallel across hosts.

Largest global batch: per-device memory is affine in the per-device batch b (activations and
their temporaries grow with it, parameters and code do not). Two data-parallel compiles of a
recipe on one chip kind at different b (v4-8 at 64 and v4-32 at 16 sequences a chip, v5e-16 at
16 and v5e-256 at 1, v6e-16 at 16 and 64) give the bytes per sequence; a cell's largest batch is
its own compiled point plus its headroom over that slope, x the data-parallel devices.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "tpu_compile.jsonl"
DOC = REPO / "docs" / "scale.md"
BEGIN, END = "<!-- tpu_compile:begin -->", "<!-- tpu_compile:end -->"

RECIPES: dict[str, str] = {
    "pretrain": "launch/configs/kr_electra_pretrain.py",
    "kd_small": "configs/distill_paper.py:kd_small,paper_kd",
    "lf_v3": "configs/distill_paper.py:lf_v3,paper_kd",
    "kominilm": "configs/distill_paper.py:kominilm_23m,minilm",
    # the same ladder from the teacher you can have offline (multilingual-E5-small), with its
    # whole XLM-R vocabulary (250,037 rows) or trimmed to the Korean data (18,839)
    "e5_kd_small": "configs/distill_e5.py:paper_kd_small,full",
    "e5_kd_small_trimmed": "configs/distill_e5.py:paper_kd_small,trimmed",
    "e5_lf_v3": "configs/distill_e5.py:paper_lf_v3,full",
    "e5_lf_v3_trimmed": "configs/distill_e5.py:paper_lf_v3,trimmed",
}
PAPER_RECIPES = ("pretrain", "kd_small", "lf_v3", "kominilm")
E5_RECIPES = tuple(r for r in RECIPES if r.startswith("e5_"))
SLICES = ("v4-8", "v4-32", "v5e-16", "v5e-256", "v6e-16")
MESHES = ("data", "fsdp", "data_fsdp")
BATCH = 256
GiB = 2**30
REPORT_VERSION = 3  # kdjax.tpu_compile.REPORT_VERSION (this script runs without jax)


FIRST = [  # the most informative cells first: a sweep on 2 CPU cores takes hours
    ("lf_v3", "v4-32", "data"), ("lf_v3", "v4-32", "fsdp"), ("lf_v3", "v4-32", "data_fsdp"),
    ("pretrain", "v4-32", "data"), ("pretrain", "v4-32", "fsdp"),
    ("pretrain", "v4-32", "data_fsdp"), ("lf_v3", "v5e-16", "data"),
    ("pretrain", "v5e-16", "data"), ("lf_v3", "v4-8", "data"), ("pretrain", "v4-8", "data"),
    ("kd_small", "v4-32", "data"), ("kominilm", "v4-32", "data"), ("lf_v3", "v5e-256", "data"),
    ("lf_v3", "v5e-256", "fsdp"), ("lf_v3", "v6e-16", "data"), ("kd_small", "v4-32", "fsdp"),
    ("kominilm", "v4-32", "fsdp"), ("kd_small", "v4-32", "data_fsdp"),
    ("kominilm", "v4-32", "data_fsdp"), ("pretrain", "v5e-16", "fsdp"),
    ("pretrain", "v5e-16", "data_fsdp"), ("kd_small", "v5e-16", "data"),
    ("kominilm", "v5e-16", "data"), ("pretrain", "v6e-16", "data"),
    ("pretrain", "v5e-256", "fsdp"),
]


def jobs() -> list[dict[str, Any]]:
    """Every (recipe, slice, mesh, batch), in the order they run: `FIRST`, then every recipe
    data-parallel on every slice (and v6e's second slope point), then fsdp and data x fsdp on
    the 16- and 256-chip slices, then fsdp on the 4-chip one."""
    grid = [(r, s, "data") for s in ("v4-32", "v5e-16", "v4-8", "v5e-256", "v6e-16")
            for r in PAPER_RECIPES]
    grid += [(r, s, m) for m in ("fsdp", "data_fsdp") for s in ("v4-32", "v5e-256", "v5e-16",
                                                                  "v6e-16") for r in PAPER_RECIPES]
    grid += [(r, "v4-8", "fsdp") for r in PAPER_RECIPES]  # on one host data_fsdp is fsdp
    grid += [(r, "v5e-16", "data") for r in E5_RECIPES]  # the E5 ladder: one slice
    out, seen = [], set()
    for r, s, m in FIRST + grid:
        if (r, s, m) not in seen:
            seen.add((r, s, m))
            out.append({"recipe": r, "slice": s, "mesh": m, "batch": BATCH})
    # v6e's second point for the per-sequence slope
    out += [{"recipe": r, "slice": "v6e-16", "mesh": "data", "batch": 4 * BATCH}
            for r in PAPER_RECIPES]
    return out


def key(job: dict[str, Any]) -> str:
    return f"{job['recipe']}|{job['slice']}|{job['mesh']}|{job['batch']}"


def run_job(job: dict[str, Any], python: str) -> dict[str, Any]:
    """One `kdjax compile --json` in a subprocess; the report, or the error line."""
    cmd = [python, "-m", "kdjax.cli", "compile", "--config", RECIPES[job["recipe"]],
           "--topology", job["slice"], "--json", f"--config.mesh.preset={job['mesh']}",
           f"--config.train.batch_size={job['batch']}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode == 0:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
        report = {"error": (errors or proc.stderr.strip().splitlines() or ["?"])[-1][:400]}
    return {**job, "key": key(job), "wall_s": round(wall, 1), "report": report,
            "command": " ".join(cmd[1:])}


def stale(row: dict[str, Any]) -> bool:
    """A fitting cell compiled by an older `kdjax compile` (`REPORT_VERSION`): before it
    counted HBM traffic itself (the roofline used XLA's bytes accessed, which include on-chip
    VMEM operands), or before it found the trip count of the windowed-einsum loops of fsdp
    (their FLOPs and collective-permutes counted once, not per iteration). Its memory stands;
    the roofline and collectives are recompiled."""
    rep = row["report"]
    return not ("error" in rep or rep.get("compile_error")
                or rep.get("report_version", 1) >= REPORT_VERSION)


def load(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in rows}


# -- rendering --------------------------------------------------------------------------------
def slopes(done: dict[str, dict[str, Any]]) -> dict[tuple[str, str], float]:
    """(recipe, chip) -> bytes per extra sequence on a chip, from data-parallel compiles."""
    points: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for r in done.values():
        rep = r["report"]
        if "error" in rep or rep.get("compile_error") or r["mesh"] != "data":
            continue
        per_dev = rep["global_batch"] // rep["devices"]
        points.setdefault((r["recipe"], rep["chip"]["name"]), []).append(
            (per_dev, rep["total_bytes"]))
    out = {}
    for k, pts in points.items():
        pts = sorted(set(pts))
        if len(pts) >= 2 and pts[-1][0] != pts[0][0]:
            out[k] = (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
    return out


def largest_batch(rep: dict[str, Any], slope: float | None) -> int | None:
    """The largest global batch of a cell: its per-device batch plus headroom / slope."""
    if slope is None or slope <= 0:
        return None
    dp = rep["mesh"]["data"] * rep["mesh"]["fsdp"]
    per_dev = rep["global_batch"] // dp + math.floor(rep["headroom_bytes"] / slope)
    return max(per_dev, 0) * dp


def _g(n: float) -> str:
    return f"{n / GiB:.2f}"


def _coll(c: dict[str, Any]) -> str:
    short = {"all-reduce": "AR", "all-gather": "AG", "reduce-scatter": "RS",
             "all-to-all": "A2A", "collective-permute": "CP"}
    parts = [f"{short[k]} {v['count']}x {v['bytes'] / 2**20:.0f}M" for k, v in c.items()
             if v["count"]]
    return ", ".join(parts) or "-"


def render(done: dict[str, dict[str, Any]]) -> str:
    """The markdown tables: one per recipe, rows slice x mesh."""
    sl = slopes(done)
    lines = []
    for recipe, config in RECIPES.items():
        rows = [r for r in done.values() if r["recipe"] == recipe and r["batch"] == BATCH]
        if not rows:
            continue
        lines += [f"### {recipe} (`{config}`), global batch {BATCH} x 128", "",
                  "| slice | mesh | HBM/chip GiB (of) | params / opt / teacher GiB | temp GiB "
                  "| largest batch | collectives per step (count x MiB/chip) | roofline ms "
                  "(bound) | tokens/s <= | MFU <= | compile s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
        order = {(s, m): i for i, (s, m) in enumerate((s, m) for s in SLICES for m in MESHES)}
        for r in sorted(rows, key=lambda r: order.get((r["slice"], r["mesh"]), 99)):
            rep = r["report"]
            if "error" in rep:
                lines.append(f"| {r['slice']} | {r['mesh']} | error: {rep['error']} "
                             "| | | | | | | | |")
                continue
            mesh = "x".join(str(v) for v in rep["mesh"].values())
            roof = rep["roofline"]
            big = largest_batch(rep, sl.get((recipe, rep["chip"]["name"])))
            if rep.get("compile_error"):  # XLA refused it: out of HBM
                lines.append(
                    f"| {r['slice']} | {r['mesh']} ({mesh}) | **does not fit**: needs "
                    f"{_g(rep['total_bytes'])} of {_g(rep['usable_hbm_bytes'] or 0)} usable | "
                    f"{_g(rep['params_bytes'])} / {_g(rep['optimizer_bytes'])} / "
                    f"{_g(rep['teacher_bytes'])} (unpadded) | | "
                    f"{'?' if big is None else f'{big:,}'} | | | | | |")
                continue
            lines.append(
                f"| {r['slice']} | {r['mesh']} ({mesh}) | {_g(rep['total_bytes'])} "
                f"({_g(rep['hbm_bytes']):.5}){'' if rep['fits'] else ' **over**'} | "
                f"{_g(rep['params_bytes'])} / {_g(rep['optimizer_bytes'])} / "
                f"{_g(rep['teacher_bytes'])} | {_g(rep['temp_bytes'])} | "
                f"{'?' if big is None else f'{big:,}'} | {_coll(rep['collectives'])} | "
                + ("- | - | - | " if stale(r) else
                   f"{roof['step_s'] * 1e3:.1f} ({roof['bound']}) | "
                   f"{roof['tokens_per_s']:,.0f} | {roof['mfu_ceiling']:.0%} | ")
                + ("-" if rep.get("compile_s") is None else f"{rep['compile_s']:.0f}") + " |")
        lines.append("")
    old = [k for k, r in done.items() if stale(r)]
    if old:
        lines.append(f"Roofline \"-\" ({len(old)} cells): compiled by an older `kdjax "
                     "compile` (before it counted HBM traffic itself - XLA's bytes accessed "
                     "include operands in on-chip VMEM - and the windowed-einsum loops of fsdp "
                     "per iteration); their memory stands, their collectives undercount "
                     "fsdp's collective-permutes. `python bench/tpu_compile.py` recompiles "
                     "them after the missing cells.")
        lines.append("")
    missing = [key(j) for j in jobs() if key(j) not in done]
    if missing:
        lines.append(f"Not compiled yet ({len(missing)} jobs): "
                     + ", ".join(f"`{m}`" for m in missing) + ". `python bench/tpu_compile.py` "
                     "resumes.")
        lines.append("")
    return "\n".join(lines)


def write_doc(doc: Path, tables: str) -> None:
    text = doc.read_text() if doc.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{tables}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--doc", default=str(DOC))
    p.add_argument("--jobs", type=int, default=0, help="run at most N missing jobs (0 = all)")
    p.add_argument("--parallel", type=int, default=1,
                   help="compile N jobs at once (libtpu uses one core per compile)")
    p.add_argument("--match", default="", help="only cells whose key contains this "
                   "(keys are recipe|slice|mesh|batch, e.g. '|v4-32|')")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args(argv)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        done = load(results)
        # missing cells first, then those compiled before the HBM-only roofline (`stale`)
        todo = [j for j in jobs() if key(j) not in done]
        todo += [j for j in jobs() if key(j) in done and stale(done[key(j)])]
        if args.match:
            todo = [j for j in todo if args.match in key(j)]
        if args.jobs:
            todo = todo[:args.jobs]
        env_note = os.environ.get("KDJAX_COMPILATION_CACHE", "")
        lock = threading.Lock()

        def one(i: int, job: dict[str, Any]) -> None:
            print(f"[{i + 1}/{len(todo)}] {key(job)} ...", flush=True, file=sys.stderr)
            row = run_job(job, args.python)
            row["cache"], row["parallel"] = env_note, args.parallel
            rep = row["report"]
            with lock:  # rows land whole, in finishing order; load() keys them
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"    [{i + 1}] {key(job)} {row['wall_s']} s: " + (
                    rep["error"] if "error" in rep else
                    f"{_g(rep['total_bytes'])} GiB, fits={rep['fits']}"), flush=True,
                    file=sys.stderr)

        # libtpu compiles on one core: N jobs at once use N cores (compile seconds are then
        # each job's wall time beside N-1 others).
        with ThreadPoolExecutor(max(1, args.parallel)) as pool:
            for fut in [pool.submit(one, i, job) for i, job in enumerate(todo)]:
                fut.result()
    write_doc(Path(args.doc), render(load(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

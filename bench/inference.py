"""CPU inference benchmark: the teacher and the four students in kdjax, PyTorch, ONNX Runtime.

    python bench/inference.py                # everything, 2 rounds -> bench/results/inference.jsonl
    python bench/inference.py --out /tmp/q.jsonl --models lf_v3 kd_small \\
        --runtimes ort_fp32 ort_int8 --rounds 1                             # a short run
    python bench/inference.py --table        # the markdown table of the results file
    python bench/inference.py --models teacher --runtimes ort_fp32 ort_int8 --profile 32x64

Models (random weights: speed and size do not depend on the values), each with a 2-label
sequence-classification head (the NSMC deployment shape):

  teacher    configs/kr_electra_base.py   12 x 768, FFN 3072, E 768 (109M params)
  kd_small   configs/kd_small.py          12 x 256, FFN 1024, E 128 (13.5M)
  lf_v1      configs/lf_v1.py             + low-rank FFN (r 56)
  lf_v2      configs/lf_v2.py             + low-rank Q/K/V/O (r 64)
  lf_v3      configs/lf_v3.py             + low-rank word embedding (r 32) (4.5M)

Runtimes:

  kdjax      the Flax model, `jax.jit` per input shape, CPU (XLA's thread pool: every core)
  torch      PyTorch eager (`torch.inference_mode`, transformers' default SDPA attention,
             `torch.set_num_threads(cores)`) on the Hugging Face export: `electra` for the dense
             models, `factorized` (kdjax/hf_remote) for the LF students, as they would be shipped
  ort_fp32   ONNX Runtime (CPU provider, all graph optimizations, intra-op threads = cores) on
             `kdjax export --format onnx` (factorized graph for the LF students)
  ort_int8   the same with `--quantize int8` (dynamic quantization, model_int8.onnx)

Measurements (one JSON line each, appended to --out):

  latency     batch 1 x 32 and 1 x 64 tokens: p50 / p95 / mean ms over >= --min-iters calls
              (and at least --seconds of calls) after --warmup untimed calls
  throughput  batch 32 x 64 tokens: tokens/s and rows/s, best and mean over >= 3 calls
  memory      the worker process's peak RSS (MB) after all of the above (interpreter, the
              runtime's libraries, the model, activations)
  size        the model file the runtime loads (MB = 10^6 bytes)

Threads: PyTorch and ONNX Runtime use --threads intra-op threads (default: every core); their
idle threads do not spin-wait unless --spin (ORT `session.intra_op.allow_spinning=0`,
`OMP_WAIT_POLICY=PASSIVE` for PyTorch): on a shared VM whose load is above its core count,
spinning halved ONNX Runtime's throughput. `--profile` replaces the timing by per-operator
profiles (ONNX Runtime's profiler, torch.profiler) of the selected models and runtimes.

Every (model, runtime, round) runs in a fresh interpreter, so peak RSS is per runtime and
libraries never share a thread pool. Rounds interleave runtimes the way bench/distill_step.py
does: in each round every model is measured in every runtime, the runtime order rotating per
model and round, because a shared 2-core VM has slow spells that would otherwise land on one
runtime only; the table keeps each figure's best round. The run is resumable: a (model, runtime,
round) already in --out is skipped, so an interrupted run continues where it stopped. Exports
are cached in --cache (default /tmp/kdjax-bench-inference).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/workers.py
from workers import Interrupted, cpu_model, peak_rss_mb  # noqa: E402
from workers import spawn as _spawn  # noqa: E402

MODELS = {
    "teacher": "configs/kr_electra_base.py",
    "kd_small": "configs/kd_small.py",
    "lf_v1": "configs/lf_v1.py",
    "lf_v2": "configs/lf_v2.py",
    "lf_v3": "configs/lf_v3.py",
}
RUNTIMES = ("kdjax", "torch", "ort_fp32", "ort_int8")
LATENCY_SHAPES = ((1, 32), (1, 64))
THROUGHPUT_SHAPE = (32, 64)
NUM_LABELS = 2


# ---------------------------------------------------------------------------------------------
# helpers shared by driver and workers (no jax / torch / kdjax imports at module level: the
# ONNX Runtime worker must not load them, or its peak RSS would not be a deployment's)
# ---------------------------------------------------------------------------------------------
def load_avg() -> float:
    with contextlib.suppress(OSError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return float("nan")


def inputs(batch: int, length: int, vocab: int, seed: int = 0) -> dict[str, Any]:
    """int64 numpy inputs [batch, length]: random ids, no padding, one segment."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(5, vocab, size=(batch, length), dtype=np.int64),
            "attention_mask": np.ones((batch, length), np.int64),
            "token_type_ids": np.zeros((batch, length), np.int64)}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation, like numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def timed_calls(call: Any, warmup: int, min_iters: int, seconds: float,
                max_iters: int) -> list[float]:
    """Seconds of each timed `call()` (each call returns only when its outputs are ready):
    `warmup` untimed calls, then at least `min_iters` and at least `seconds` of calls."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters
                                      or time.perf_counter() - start < seconds):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return times


# ---------------------------------------------------------------------------------------------
# workers: prepare (exports) and measure (one runtime)
# ---------------------------------------------------------------------------------------------
def worker_prepare(job: dict[str, Any]) -> dict[str, Any]:
    """Random weights for a model -> kdjax model dir, HF export, ONNX fp32 + int8 (cached)."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    from flax.traverse_util import flatten_dict, unflatten_dict

    from kdjax.config_lib import load_config
    from kdjax.deploy import MANIFEST, to_onnx
    from kdjax.export import to_hf
    from kdjax.modeldir import save_model_dir
    from kdjax.models.config import EncoderConfig
    from kdjax.models.model import abstract_params

    root = Path(job["dir"])
    cfg = EncoderConfig.from_any({**load_config(str(REPO / MODELS[job["model"]])).model.to_dict(),
                                  "head": "classification", "num_labels": NUM_LABELS})
    rng = np.random.default_rng(0)
    flat = {}
    for path, spec in flatten_dict(abstract_params(cfg)).items():
        if path[-1] == "scale":  # LayerNorm
            value = 1.0 + 0.02 * rng.standard_normal(spec.shape)
        else:  # like the initializer (biases too, so that no two tensors are identical)
            value = cfg.initializer_range * rng.standard_normal(spec.shape)
        flat[path] = value.astype(np.float32)
    params = unflatten_dict(flat)
    save_model_dir(root / "kdjax", cfg, params, name=job["model"])
    hf_format = "factorized" if cfg.is_factorized else "electra"
    # the bench's own scratch directories (a crashed earlier prepare may have left files)
    to_hf(cfg, params, root / "hf", format=hf_format, overwrite=True)
    manifest = to_onnx(cfg, params, root / "onnx", quantize="int8", overwrite=True)
    n_params = int(sum(v.size for v in flat.values()))
    info = {"model": job["model"], "params": n_params, "hf_format": hf_format,
            "vocab_size": cfg.vocab_size, "architecture": manifest["architecture"],
            "onnx_weights": manifest["weights"], "parity_max_abs": manifest["parity_max_abs"],
            "parity_kdjax_max_abs": manifest["parity_kdjax_max_abs"],
            "int8_max_abs": manifest.get("int8_max_abs"),
            "files": {"kdjax": str(root / "kdjax" / "params.safetensors"),
                      "torch": str(root / "hf" / "model.safetensors"),
                      "ort_fp32": str(root / "onnx" / manifest["fp32"]),
                      "ort_int8": str(root / "onnx" / manifest["int8"])}}
    (root / "prepared.json").write_text(json.dumps(info, indent=2))
    assert (root / "onnx" / MANIFEST).is_file()
    return info


def _runner(job: dict[str, Any]) -> Any:
    """(`run(batch)` that returns when the outputs are computed, seconds to load)."""
    t0 = time.perf_counter()
    runtime, prep = job["runtime"], job["prepared"]
    threads = job["threads"]
    if runtime.startswith("ort_"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        if not job["spin"]:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(prep["files"][runtime], opts,
                                    providers=["CPUExecutionProvider"])

        def run(batch: dict[str, Any]) -> Any:
            return sess.run(None, batch)

    elif runtime == "torch":
        import torch

        torch.set_num_threads(threads)
        hf_dir = str(Path(prep["files"]["torch"]).parent)
        if prep["hf_format"] == "factorized":
            sys.path.insert(0, str(REPO))
            from kdjax.hf_remote import modeling_kdjax_electra as remote

            cls = getattr(remote, prep["architecture"])
        else:
            import transformers

            cls = getattr(transformers, prep["architecture"])
        model = cls.from_pretrained(hf_dir).eval()

        def run(batch: dict[str, Any]) -> Any:
            with torch.inference_mode():
                return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits

    elif runtime == "kdjax":
        sys.path.insert(0, str(REPO))
        import jax
        import jax.numpy as jnp

        import kdjax
        from kdjax.modeldir import load_model_dir

        cfg, params = load_model_dir(Path(prep["files"]["kdjax"]).parent)
        net = kdjax.build_model(cfg)
        params = jax.device_put(params)
        forward = jax.jit(lambda p, ids, mask, types: net.apply(
            {"params": p}, ids, attention_mask=mask, token_type_ids=types,
            deterministic=True).logits)

        def run(batch: dict[str, Any]) -> Any:
            args = (jnp.asarray(batch[k], jnp.int32) for k in
                    ("input_ids", "attention_mask", "token_type_ids"))
            return forward(params, *args).block_until_ready()

    else:
        raise ValueError(runtime)
    return run, time.perf_counter() - t0


def worker_measure(job: dict[str, Any]) -> dict[str, Any]:
    """Every measurement of one (model, runtime) in this process; peak RSS at the end."""
    run, load_s = _runner(job)
    vocab = job["prepared"]["vocab_size"]
    lines: list[dict[str, Any]] = []
    base = {"model": job["model"], "runtime": job["runtime"], "round": job["round"]}
    for batch, length in LATENCY_SHAPES:
        x = inputs(batch, length, vocab)
        t = time.perf_counter()
        run(x)  # the first call compiles (kdjax) or plans (ORT): reported, not timed
        first = time.perf_counter() - t
        times = timed_calls(lambda x=x: run(x), job["warmup"], job["min_iters"],
                            job["seconds"], 2000)
        ms = [1000 * s for s in times]
        lines.append({"kind": "latency", **base, "batch": batch, "length": length,
                      "p50_ms": round(percentile(ms, 50), 3),
                      "p95_ms": round(percentile(ms, 95), 3),
                      "mean_ms": round(sum(ms) / len(ms), 3), "iters": len(ms),
                      "first_call_s": round(first, 3), "load_avg": load_avg()})
    batch, length = THROUGHPUT_SHAPE
    x = inputs(batch, length, vocab)
    run(x)
    times = timed_calls(lambda: run(x), 1, 3, job["seconds"], 200)
    tokens = batch * length
    lines.append({"kind": "throughput", **base, "batch": batch, "length": length,
                  "tokens_per_s": round(tokens / min(times), 1),
                  "tokens_per_s_mean": round(tokens * len(times) / sum(times), 1),
                  "rows_per_s": round(batch / min(times), 2), "iters": len(times),
                  "load_avg": load_avg()})
    size = os.path.getsize(job["prepared"]["files"][job["runtime"]])
    lines.append({"kind": "size", **base, "file_mb": round(size / 1e6, 3),
                  "file": os.path.basename(job["prepared"]["files"][job["runtime"]])})
    lines.append({"kind": "memory", **base, "peak_rss_mb": round(peak_rss_mb(), 1),
                  "load_s": round(load_s, 2)})
    return {"lines": lines}


def worker_profile(job: dict[str, Any]) -> dict[str, Any]:
    """Time per operator of one (model, runtime) at one shape: ONNX Runtime's profiler (per op
    type, after ORT's fusions) or torch.profiler (per aten op, self CPU time)."""
    runtime, prep = job["runtime"], job["prepared"]
    batch, length = job["shape"]
    x = inputs(batch, length, prep["vocab_size"])
    calls = job["calls"]
    totals: dict[str, float] = {}
    if runtime.startswith("ort_"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = job["threads"]
        opts.inter_op_num_threads = 1
        if not job["spin"]:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(job["dir"]) / f"ort-{job['model']}-{runtime}")
        sess = ort.InferenceSession(prep["files"][runtime], opts,
                                    providers=["CPUExecutionProvider"])
        sess.run(None, x)  # warm-up (also profiled: dropped below by counting runs)
        t = time.perf_counter()
        for _ in range(calls):
            sess.run(None, x)
        wall = (time.perf_counter() - t) / calls
        events = json.loads(Path(sess.end_profiling()).read_text())
        runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
        first_end = runs[0]["ts"] + runs[0]["dur"] if runs else 0
        for e in events:
            if (e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                    and e["ts"] >= first_end):
                op = e["args"]["op_name"]
                totals[op] = totals.get(op, 0.0) + e["dur"] / 1000 / calls
    elif runtime == "torch":
        run, _ = _runner(job)
        import torch

        run(x)
        t = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                run(x)
        wall = (time.perf_counter() - t) / calls
        for ev in prof.key_averages():
            if ev.self_cpu_time_total > 0:
                totals[ev.key] = ev.self_cpu_time_total / 1000 / calls
    else:
        raise ValueError(f"--profile supports ort_fp32, ort_int8 and torch, not {runtime}")
    total = sum(totals.values())
    ops = sorted(totals.items(), key=lambda kv: -kv[1])[: job["top"]]
    return {"lines": [{"kind": "profile", "model": job["model"], "runtime": runtime,
                       "batch": batch, "length": length, "calls": calls,
                       "wall_ms": round(1000 * wall, 2), "op_ms_total": round(total, 2),
                       "ops": [[k, round(v, 3), round(100 * v / total, 1)] for k, v in ops],
                       "load_avg": load_avg()}]}


WORKERS = {"prepare": worker_prepare, "measure": worker_measure, "profile": worker_profile}


def run_worker(payload: str) -> int:
    job = json.loads(payload)
    if job["kind"] == "measure" and job["runtime"] == "kdjax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        result = WORKERS[job["kind"]](job)
    except KeyboardInterrupt:
        return 130
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def spawn(job: dict[str, Any], timeout: float,
          env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    """One measurement in a fresh worker interpreter (bench/workers.py)."""
    return _spawn(__file__, job, timeout, env_extra, cwd=REPO)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a results file (a line cut off by a crash is skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("jax", "jaxlib", "flax", "torch", "transformers", "onnx", "onnxruntime"):
        with contextlib.suppress(PackageNotFoundError):
            out[p] = version(p)
    return out


def order_for(runtimes: list[str], model_index: int, round_index: int) -> list[str]:
    """Runtime order of one (model, round): rotated by model and round, reversed every other
    round, so that each runtime takes each position and slow spells spread over all."""
    k = (model_index + round_index) % len(runtimes)
    order = runtimes[k:] + runtimes[:k]
    return order[::-1] if round_index % 2 else order


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
def best_of_rounds(lines: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """{(model, runtime): figures}: each figure's best round (lowest latency, highest
    throughput, largest peak RSS, i.e. the most conservative memory figure)."""
    out: dict[tuple, dict[str, Any]] = {}
    for r in lines:
        if r.get("kind") not in ("latency", "throughput", "size", "memory"):
            continue
        key = (r["model"], r["runtime"])
        row = out.setdefault(key, {"rounds": set()})
        row["rounds"].add(r["round"])
        if r["kind"] == "latency":
            tag = f"{r['batch']}x{r['length']}"
            for stat in ("p50_ms", "p95_ms"):
                name = f"{stat}_{tag}"
                row[name] = min(row.get(name, float("inf")), r[stat])
        elif r["kind"] == "throughput":
            row["tokens_per_s"] = max(row.get("tokens_per_s", 0.0), r["tokens_per_s"])
            row.setdefault("tokens_per_s_rounds", []).append(r["tokens_per_s"])
        elif r["kind"] == "size":
            row["file_mb"] = r["file_mb"]
        else:
            row["peak_rss_mb"] = max(row.get("peak_rss_mb", 0.0), r["peak_rss_mb"])
    return out


def table(lines: list[dict[str, Any]]) -> str:
    """Markdown: one row per (model, runtime); throughput speed-up vs the teacher in the same
    runtime and int8 vs fp32 of the same model, as best / best (median / median) over rounds."""
    best = best_of_rounds(lines)
    models = [m for m in MODELS if any(k[0] == m for k in best)]
    runtimes = [r for r in RUNTIMES if any(k[1] == r for k in best)]
    head = ("| model | runtime | file MB | 1x32 p50 / p95 ms | 1x64 p50 / p95 ms | "
            "32x64 tokens/s best / median | x teacher | int8 / fp32 | peak RSS MB | rounds |")
    rows = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in models:
        for rt in runtimes:
            f = best.get((m, rt))
            if not f or "tokens_per_s" not in f:
                continue
            def med(key: tuple) -> float | None:
                values = best.get(key, {}).get("tokens_per_s_rounds")
                return percentile(values, 50) if values else None

            def ratio_text(a: tuple, b: tuple) -> str:
                """best / best (median / median)"""
                fa, fb = best.get(a, {}), best.get(b, {})
                if "tokens_per_s" not in fa or "tokens_per_s" not in fb:
                    return "-"
                return (f"{fa['tokens_per_s'] / fb['tokens_per_s']:.1f}x "
                        f"({med(a) / med(b):.1f}x)")

            speed = ratio_text((m, rt), ("teacher", rt))
            ratio = ratio_text((m, rt), (m, "ort_fp32")) if rt == "ort_int8" else ""

            def lat(tag: str, f: dict[str, Any] = f) -> str:
                p50, p95 = f.get(f"p50_ms_{tag}"), f.get(f"p95_ms_{tag}")
                return "-" if p50 is None else f"{p50:.1f} / {p95:.1f}"

            rows.append(f"| {m} | {rt} | {f.get('file_mb', float('nan')):.1f} | {lat('1x32')} | "
                        f"{lat('1x64')} | {f['tokens_per_s']:,.0f} / {med((m, rt)):,.0f} | "
                        f"{speed} | {ratio} | "
                        f"{f.get('peak_rss_mb', float('nan')):,.0f} | {len(f['rounds'])} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "inference.jsonl"),
                   help="results file (JSON lines, appended; existing measurements are kept "
                   "and skipped)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--runtimes", nargs="+", choices=list(RUNTIMES), default=list(RUNTIMES))
    p.add_argument("--rounds", type=int, default=2, help="rounds (runtimes interleaved)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    p.add_argument("--min-iters", type=int, default=20, help="timed latency calls, at least")
    p.add_argument("--seconds", type=float, default=4.0,
                   help="time each latency / throughput figure for at least this long")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="intra-op threads for PyTorch and ONNX Runtime (default: all cores)")
    p.add_argument("--spin", action="store_true",
                   help="let idle ONNX Runtime / OpenMP (PyTorch) threads spin-wait (their "
                   "defaults). Off by default: on a shared VM whose load exceeds its cores, "
                   "spinning threads halved ONNX Runtime's throughput (docs/deploy.md)")
    p.add_argument("--cache", default="/tmp/kdjax-bench-inference",
                   help="exports of the random-weight models (reused across runs)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    p.add_argument("--table", action="store_true",
                   help="only print the markdown table of --out")
    p.add_argument("--profile", nargs="*", metavar="BxL", default=None,
                   help="instead of timing: per-operator profiles of --models x --runtimes "
                   "(ort_fp32, ort_int8, torch) at these shapes (default 32x64), appended to "
                   "--out as kind 'profile' lines and printed")
    p.add_argument("--top", type=int, default=10, help="operators per profile")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return run_worker(args.worker)
    out = Path(args.out)
    if args.table:
        print(table(read_lines(out)))
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)

    def emit(obj: dict[str, Any]) -> None:
        line = json.dumps(obj)
        with out.open("a") as f:
            f.write(line + "\n")
        print(line, flush=True)

    emit({"kind": "machine", "cpu": cpu_model(), "cores": os.cpu_count(),
          "threads": args.threads, "spin": args.spin, "python": platform.python_version(),
          "versions": versions(), "load_avg": load_avg(), "time": time.strftime("%F %T"),
          "command": " ".join(["python bench/inference.py", *(argv or sys.argv[1:])])})
    done = {(r["model"], r["runtime"], r["round"]) for r in read_lines(out)
            if r.get("kind") == "memory"}  # the last line a measurement writes
    cache = Path(args.cache)
    prepared: dict[str, dict[str, Any]] = {}
    try:
        for m in args.models:
            todo = [(rt, r) for r in range(args.rounds) for rt in args.runtimes
                    if (m, rt, r) not in done]
            if not todo and args.profile is None:
                continue
            info = cache / m / "prepared.json"
            if not info.is_file():
                print(f"[prepare] {m}: random weights -> kdjax dir, HF, ONNX fp32 + int8",
                      file=sys.stderr, flush=True)
                res = spawn({"kind": "prepare", "model": m, "dir": str(cache / m)},
                            args.timeout)
                if "error" in res:
                    emit({"kind": "error", "model": m, "stage": "prepare", **res})
                    continue
                emit({"kind": "prepared", **res})
            prepared[m] = json.loads(info.read_text())
        for r in range(0 if args.profile is not None else args.rounds):
            for i, m in enumerate(args.models):
                if m not in prepared:
                    continue
                for rt in order_for(list(args.runtimes), i, r):
                    if (m, rt, r) in done:
                        continue
                    print(f"[round {r + 1}/{args.rounds}] {m} / {rt}", file=sys.stderr,
                          flush=True)
                    job = {"kind": "measure", "model": m, "runtime": rt, "round": r,
                           "prepared": prepared[m], "threads": args.threads,
                           "warmup": args.warmup, "min_iters": args.min_iters,
                           "seconds": args.seconds, "spin": args.spin}
                    env = {} if args.spin or rt != "torch" else {"OMP_WAIT_POLICY": "PASSIVE"}
                    res = spawn(job, args.timeout, env)
                    if "error" in res:
                        emit({"kind": "error", "model": m, "runtime": rt, "round": r, **res})
                        continue
                    for line in res["lines"]:
                        emit(line)
        if args.profile is not None:
            shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.profile] or [
                THROUGHPUT_SHAPE]
            for m in args.models:
                for rt in args.runtimes:
                    if m not in prepared or rt == "kdjax":
                        continue
                    for shape in shapes:
                        job = {"kind": "profile", "model": m, "runtime": rt, "shape": shape,
                               "prepared": prepared[m], "threads": args.threads,
                               "spin": args.spin, "calls": 3, "top": args.top,
                               "dir": str(cache / m)}
                        env = ({} if args.spin or rt != "torch"
                               else {"OMP_WAIT_POLICY": "PASSIVE"})
                        res = spawn(job, args.timeout, env)
                        for line in res.get("lines", [{"kind": "error", "model": m,
                                                       "runtime": rt, **res}]):
                            emit(line)
                            print(profile_text(line), file=sys.stderr)
            return 0
    except Interrupted:
        print("\ninterrupted: rerun the same command to continue", file=sys.stderr)
        return 130
    print()
    print(table(read_lines(out)))
    return 0


def profile_text(line: dict[str, Any]) -> str:
    """A profile line as readable text: the top operators, ms per call and share."""
    if line.get("kind") != "profile":
        return json.dumps(line)
    head = (f"{line['model']} / {line['runtime']} {line['batch']}x{line['length']}: "
            f"{line['wall_ms']:.1f} ms per call, operators {line['op_ms_total']:.1f} ms")
    return "\n".join([head] + [f"  {op:32s} {ms:9.2f} ms {pct:5.1f}%"
                               for op, ms, pct in line["ops"]])


if __name__ == "__main__":
    sys.exit(main())

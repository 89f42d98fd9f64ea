"""Length buckets on NSMC fine-tuning: padding share, real tokens/s and examples/s, one length
(every batch padded to `--max_length`, 64) against buckets (16 / 32 / 64) with `--batch` rows
per batch, and against buckets whose batches hold equal tokens (`task.bucket_equal_tokens`:
4x the rows at length 16, 2x at 32).

    python bench/buckets.py --data_dir ../shared/data/ko --rows 20000 --steps 300

All runs fine-tune the same random-init model (`--model`, a size config) on the same first
`--rows` NSMC training rows with the same seed for `--steps` steps; throughput comes from the
trainer's own log (metrics.jsonl: compile excluded, averaged over each log interval; the first
interval is skipped). Interleaved rounds (`--rounds`) cancel the shared VM's slow spells. One
JSON line per run, then a summary line; `--out FILE` appends them (a finished run is skipped on
a re-run, so the benchmark resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_one(args: argparse.Namespace, buckets: tuple[int, ...], equal_tokens: bool,
            tokenizer: str, workdir: Path) -> dict:
    from kdjax.config_lib import finetune_config
    from kdjax.train.finetune import run_task

    config = finetune_config("nsmc", **{
        "model": args.model, "tokenizer": tokenizer, "task.data_dir": args.data_dir,
        "task.max_length": args.max_length, "task.buckets": buckets,
        "task.bucket_equal_tokens": equal_tokens,
        "task.limit_train": args.rows, "task.limit_eval": 64, "train.steps": args.steps,
        "train.batch_size": args.batch, "train.lr": 5e-4, "train.log_every": args.log_every,
        "train.save_every": 10 * args.steps, "eval.every": 10 * args.steps,
    })
    t0 = time.perf_counter()
    run_task(config, workdir, progress=False)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (workdir / "stages" / "1_finetune" / "metrics.jsonl")
            .read_text().splitlines()]
    timed = [r for r in rows[1:] if "examples_per_s" in r]

    def mean(key: str) -> float:
        return sum(r[key] for r in timed) / max(len(timed), 1)

    return {"buckets": list(buckets) or None, "equal_tokens": equal_tokens, "rows": args.rows,
            "steps": args.steps, "dev_accuracy": rows[-1].get("heldout_accuracy"),
            "batch": args.batch, "max_length": args.max_length,
            # over the steps run: 1 - real / padded tokens
            "padding_share": 1.0 - mean("real_tokens_per_s") / mean("tokens_per_s"),
            "examples_per_s": mean("examples_per_s"), "real_tokens_per_s": mean(
                "real_tokens_per_s"), "tokens_per_s": mean("tokens_per_s"),
            "wall_s": wall, "final_loss": rows[-1]["loss"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="the Korean data folder (with nsmc/)")
    p.add_argument("--model", default=str(REPO / "configs" / "korean_table.py") + ":teacher",
                   help="a size config (random init)")
    p.add_argument("--tokenizer", default="", help="tokenizer dir (default: one trained on "
                   "the NSMC rows, 8000 tokens)")
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--log_every", type=int, default=25)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default="", help="append the JSON lines here (and resume)")
    args = p.parse_args(argv)
    args.data_dir = str(Path(args.data_dir).resolve() / "nsmc")

    from kdjax.cli import enable_compilation_cache

    enable_compilation_cache()
    done = []
    if args.out and Path(args.out).exists():
        done = [json.loads(x) for x in Path(args.out).read_text().splitlines() if x.strip()]
    with tempfile.TemporaryDirectory(prefix="kdjax-buckets-") as tmp:
        tokenizer = args.tokenizer
        if not tokenizer:
            from kdjax.data.tasks import get_task
            from kdjax.data.tokenizer import train_wordpiece

            texts = Path(tmp) / "nsmc.txt"
            rows = get_task("nsmc").load(args.data_dir, "train", limit=args.rows)
            texts.write_text("\n".join(r["text"] for r in rows) + "\n", encoding="utf-8")
            train_wordpiece([texts], Path(tmp) / "tok", vocab_size=8000, min_frequency=2,
                            show_progress=False)
            tokenizer = str(Path(tmp) / "tok")
        results = []
        variants = [((), False), ((16, 32), False), ((16, 32), True)]
        for r in range(args.rounds):
            for buckets, equal in (variants if r % 2 == 0 else variants[::-1]):
                key = {"round": r, "buckets": list(buckets) or None, "equal_tokens": equal}
                old = [d for d in done if all(d.get(k) == v for k, v in key.items())]
                if old:
                    results.append(old[0])
                    continue
                out = {"round": r, **run_one(args, buckets, equal, tokenizer,
                                             Path(tmp) / f"r{r}_{len(buckets)}_{int(equal)}")}
                print(json.dumps(out), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(out) + "\n")
                results.append(out)
    def avg(xs: list[dict], key: str) -> float:
        return sum(x[key] for x in xs) / len(xs)

    groups = {"one_length": [x for x in results if not x["buckets"]],
              "buckets": [x for x in results if x["buckets"] and not x.get("equal_tokens")],
              "buckets_equal_tokens": [x for x in results if x.get("equal_tokens")]}
    summary = {key: {m: avg(xs, m) for m in ("padding_share", "examples_per_s",
                                              "real_tokens_per_s")}
               for key, xs in groups.items() if xs}
    for key in ("buckets", "buckets_equal_tokens"):
        if key in summary:
            summary[key]["speedup_examples_per_s"] = (summary[key]["examples_per_s"] /
                                                      summary["one_length"]["examples_per_s"])
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

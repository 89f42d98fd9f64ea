"""`evaluate_models`: fine-tune every model on every task, measure sizes and throughput, and
write the comparison report.

Layout of WORKDIR:
  runs/NAME/TASK/       one `run_task` workdir per model x task (its results.json, best/ ...)
  runs/NAME/throughput.json   the measured sentences/s (reused when batch/length/device match)
  baseline/TASK/results.json  the non-neural baseline of each task (`kdjax.baseline`), fitted
                              on the runs' train split and scored on their test split
  report.md, report.json, report.png

Re-running the same command resumes: a run with a results.json is read back, not retrained,
a baseline whose data and settings are unchanged too; a failed run (its error is in the report
and in runs/NAME/TASK/error.txt) is tried again.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kdjax.config_lib import apply_overrides, finetune_config, overrides_for
from kdjax.data.tasks import check_data_dir, get_task, resolve_tasks
from kdjax.errors import ConfigError, KdjaxError
from kdjax.modeldir import ModelSpec, resolve_model
from kdjax.paths import absolute, model_ref, shown
from kdjax.storage import atomic_write_text, read_json, workdir_lock

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
BASELINE_DIR = "baseline"
_DIR_NAMES = ("best", "model", "discriminator", "generator")


# -- arguments ------------------------------------------------------------------------------------

def split_list(spec: str | Sequence[str] | None) -> list[str]:
    """ "a,b , c" -> ["a", "b", "c"] (a list passes through, stripped)."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [s.strip() for s in items if s and s.strip()]


def _is_config_spec(path: str) -> bool:
    return path.partition(":")[0].endswith(".py")


def default_names(paths: Sequence[str]) -> list[str]:
    """Short unique names from model paths: the folder name (its parent for best/ or model/),
    a config file's stem; duplicates get -2, -3 ..."""
    names: list[str] = []
    for p in paths:
        if _is_config_spec(p):
            path, _, arg = p.partition(":")
            name = Path(path).stem + (f"_{arg}" if arg else "")
        else:
            q = Path(p.rstrip("/"))
            while q.name in _DIR_NAMES and q.parent.name:
                q = q.parent
            name = q.name or p
        base, i = name, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def check_names(names: Sequence[str] | None, paths: Sequence[str], what: str = "models"
                ) -> list[str]:
    """The given names (validated) or default ones."""
    if not names:
        return default_names(paths)
    names = list(names)
    if len(names) != len(paths):
        raise ConfigError(
            f"--names has {len(names)} name(s) but --{what} has {len(paths)}; give one name "
            f"per model, in the same order"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"--names must be unique, got {', '.join(names)}")
    for n in names:
        if not n or "/" in n or n in (".", ".."):
            raise ConfigError(f"--names: {n!r} is not usable as a folder name")
    return names


def resolve_teacher(teacher: str | None, names: Sequence[str], paths: Sequence[str]) -> str:
    """The teacher's name: given by name or by path; default the first model."""
    if not teacher:
        return names[0]
    if teacher in names:
        return teacher
    want = os.path.normpath(os.path.abspath(teacher))
    for name, path in zip(names, paths):
        if os.path.normpath(os.path.abspath(path)) == want or path == teacher:
            return name
    raise ConfigError(
        f"--teacher {teacher!r} is neither a name ({', '.join(names)}) nor a path of --models; "
        "add the teacher to --models"
    )


def task_config(task: str, model: str, data_dir: str, overrides: Sequence[str] = (),
                name: str = "") -> Any:
    """finetune_config(task) + overrides, with the model path and data_dir set."""
    config = apply_overrides(finetune_config(task), list(overrides))
    config.model = str(model)
    config.task.data_dir = str(data_dir)
    if name:
        config.name = f"{name}_{task}"
    return config


# -- sizes and throughput -------------------------------------------------------------------------

def measure_model(name: str, model: ModelSpec, run_dir: Path, *, batch: int = 32,
                  length: int = 128, iters: int = 10, measure: bool = True) -> dict[str, Any]:
    """{"params", "fp32_mb", "sentences_per_s"} of one model (encoder only, no head);
    sentences/s is cached in run_dir/throughput.json."""
    import jax

    from kdjax.eval.throughput import device_description, throughput
    from kdjax.models.size import param_report

    cfg, params = model.config, model.params
    size = param_report(cfg.replace(head="none"))
    out: dict[str, Any] = {"params": size["params"], "fp32_mb": size["fp32_mb"],
                           "sentences_per_s": None}
    if not measure:
        return out
    device = device_description()
    key = {"path": model.source, "batch": batch, "length": length, "device": device}
    cache = run_dir / "throughput.json"
    if cache.is_file():
        try:
            saved = json.loads(cache.read_text())
        except (OSError, ValueError):  # a cache: measure again
            saved = {}
        if all(saved.get(k) == v for k, v in key.items()):
            out["sentences_per_s"] = saved["sentences_per_s"]
            return out
    out["sentences_per_s"] = throughput(cfg, params, batch=batch, length=length, iters=iters)
    if jax.process_index() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps({**key, "sentences_per_s": out["sentences_per_s"]})
                          + "\n")
    log.info("%s: %.1f sentences/s (batch %d x %d, %s)", name, out["sentences_per_s"], batch,
             length, device)
    return out


# -- runs -----------------------------------------------------------------------------------------

class RunInterrupted(KdjaxError):
    """A run stopped on a signal (preemption); its checkpoints are saved. The CLI exits with
    `exit_status` (128 + the signal), not 2: the command should be run again."""

    def __init__(self, message: str, exit_status: int = 143):
        super().__init__(message)
        self.exit_status = exit_status


class SettingsChanged(ConfigError):
    """A finished run's settings differ from the ones asked for: the command stops (reusing
    its results would mislabel them; retraining silently would discard them)."""


# Settings that change what a fine-tuning run learns; the rest (logging, checkpointing, paths,
# evaluation batch, mesh) may differ between a run and its resumption.
RESULT_SECTIONS = ("train", "task", "distill", "augment", "stages")
OPERATIONAL = {"train.log_every", "train.save_every", "train.eval_every", "train.keep",
               "train.keep_period", "train.async_checkpoints", "train.restart", "task.data_dir"}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changed_settings(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """'KEY: saved -> wanted' for each result-changing setting (`RESULT_SECTIONS`, less
    `OPERATIONAL`) where a finished run's config.json differs from the config asked for now.
    A key absent from the saved config (written by an older kdjax) is not a difference."""
    old = _flat({k: saved.get(k) for k in RESULT_SECTIONS if k in saved})
    new = _flat({k: wanted.get(k) for k in RESULT_SECTIONS if k in wanted})
    out = []
    for key in sorted(set(old) & set(new)):
        if key in OPERATIONAL:
            continue
        a, b = old[key], new[key]
        if isinstance(a, list | tuple) or isinstance(b, list | tuple):
            a, b = list(a or []), list(b or [])
        if a != b and not (isinstance(a, int | float) and isinstance(b, int | float)
                           and float(a) == float(b)):
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def run_one(config: Any, run_dir: Path, model: ModelSpec | None = None) -> dict[str, Any]:
    """A finished run's saved results, or run_task now (resumes a partial run); `model` is
    `config.model` already resolved (`kdjax.modeldir.resolve_model`) by the caller."""
    saved = read_json(run_dir / RESULTS_FILE, f"delete it (or {run_dir}) to run that "
                      "fine-tuning again")
    if saved is not None:
        changed = changed_settings(read_json(run_dir / "config.json", "delete the run") or {},
                                   config.to_dict())
        if changed:
            raise SettingsChanged(f"{run_dir} was fine-tuned with other settings ("
                              + "; ".join(changed[:3]) + (" ..." if len(changed) > 3 else "")
                              + "); delete it to fine-tune again with these, or choose another "
                              "--workdir")
        return saved
    from kdjax.train.finetune import run_task
    from kdjax.train.preemption import exit_status

    results = run_task(config, str(run_dir), progress=False, model=model)
    if results.get("interrupted"):
        raise RunInterrupted(f"interrupted in {run_dir} (checkpoint saved); run the same "
                             "command again to resume",
                             exit_status=exit_status(results.get("signal")))
    return results


def attempt(what: str, run_dir: Path, fail_fast: bool, fn: Callable[..., dict[str, Any]],
            *args: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(fn(*args), None), or (None, its error in one line) when it raised: the traceback goes
    to run_dir/error.txt and the caller records the line. `fail_fast` re-raises, and so does
    an interrupt (Ctrl-C, SIGTERM, `RunInterrupted`) or a finished run whose settings differ
    (`SettingsChanged`): the command stops there."""
    try:
        return fn(*args), None
    except (KeyboardInterrupt, SystemExit, RunInterrupted, SettingsChanged):
        raise
    except Exception as e:
        if fail_fast:
            raise
        text = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
        log.warning("%s failed: %s (details in %s)", what, text, run_dir / "error.txt")
        import jax

        if jax.process_index() == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "error.txt", "".join(traceback.format_exception(e)))
        return None, text


def fit_baselines(task_configs: dict[str, Any], workdir: Path, *, progress: bool = True,
                  fail_fast: bool = False, refit: bool = False) -> dict[str, Any] | None:
    """The non-neural baseline of each task (`kdjax.baseline.run_baseline`, cached in
    `workdir`), from each task's fine-tuning config section, so it sees the runs' examples.

    Returns {"name", "results" {task: results}, "errors" {task: message}} on process 0 (the one
    that writes the report), None on the others. A failed fit is recorded, not raised (unless
    `fail_fast`).
    """
    import jax
    from tqdm.auto import tqdm

    from kdjax.baseline import BASELINE_NAME, BaselineSettings, run_baseline
    from kdjax.eval.report import TASK_LABELS

    if jax.process_index() != 0:
        return None
    def fit(task: str) -> dict[str, Any]:
        return run_baseline(BaselineSettings.from_task_config(task_configs[task]), workdir,
                            refit=refit, progress=lambda line: log.info("baseline %s", line))

    out: dict[str, Any] = {"name": BASELINE_NAME, "results": {}, "errors": {}}
    bar = tqdm(list(task_configs), desc="baseline", disable=not progress, dynamic_ncols=True,
               unit="task")
    for task in bar:
        bar.set_postfix_str(TASK_LABELS.get(task, task))
        result, error = attempt(f"baseline on {task}", workdir / task, fail_fast, fit, task)
        if result is None:
            out["errors"][task] = error
            continue
        out["results"][task] = result
        log.info("baseline on %s: %s %.2f", task, result["main_metric"], result["score"])
    bar.close()
    return out


def evaluate_models(models: Sequence[str], tasks: str | Sequence[str], data_dir: str,
                    workdir: str, *, names: Sequence[str] | None = None,
                    teacher: str | None = None, overrides: Sequence[str] = (),
                    progress: bool = True, fail_fast: bool = False, throughput_batch: int = 32,
                    throughput_length: int = 128, throughput_iters: int = 10,
                    measure_throughput: bool = True, baseline: bool = True,
                    refit_baseline: bool = False) -> dict[str, Any]:
    """Fine-tune each model on each task and write WORKDIR/report.{md,json,png}.

    Args:
      models: model paths (kdjax model dir / run workdir / HF dir or hub id / size config).
      tasks: task names or a spec ("all", "nsmc,korsts").
      data_dir: folder with one subfolder per task.
      workdir: output folder (runs/NAME/TASK per run, the report files at the top).
      names: display names, one per model (default: from the paths).
      teacher: the reference model, by name or path (default: the first model).
      overrides: `key=value` fine-tuning config overrides for every run; `TASK.key=value`
        applies to that task only (e.g. `kohate.task.binary=true`).
      progress: a tqdm bar per task (over the models).
      fail_fast: re-raise the first failed run instead of recording it in the report.
      throughput_*: the throughput measurement (batch x length, timed calls).
      baseline: fit the non-neural baseline of every task (on the runs' train / selection /
        test examples; cached in WORKDIR/baseline) and compare every model with it.
      refit_baseline: fit the baselines again even when cached.
    Returns:
      the report dict (see `kdjax.eval.report.build_report`) plus "files": {md, json, png}.
    """
    import jax
    from tqdm.auto import tqdm

    from kdjax.eval.report import TASK_LABELS, build_report, write_report
    from kdjax.eval.throughput import device_description

    models = [model_ref(m) for m in split_list(models)]
    shown_data, data_dir, workdir = shown(data_dir), absolute(data_dir), absolute(workdir)
    if not models:
        raise ConfigError("--models is empty; pass comma-separated model paths")
    check_data_dir(data_dir)
    task_list = resolve_tasks(tasks)
    if baseline:
        from kdjax.baseline import MissingExtraError, require_sklearn

        try:
            require_sklearn()
        except MissingExtraError as e:
            raise MissingExtraError(f"{e} (or pass --no_baseline)") from None
    names = check_names(split_list(names) if names is not None else None, models)
    teacher_name = resolve_teacher(teacher, names, models)
    overrides = list(overrides)
    # Build every config now: a bad override fails here, in one line, before any training.
    configs = {
        (name, task): task_config(task, path, data_dir, overrides_for(task, overrides,
                                                                      task_list), name)
        for task in task_list for name, path in zip(names, models)
    }
    # Each model is read once, here where it enters; its size, throughput and every run use it.
    specs = [resolve_model(path, "--models") for path in models]
    # the lock first: nothing below is written while another kdjax run uses WORKDIR
    with workdir_lock(workdir):
        runs_dir = Path(workdir) / "runs"
        base = None
        if baseline:
            base = fit_baselines({t: configs[names[0], t].task for t in task_list},
                                 Path(workdir) / BASELINE_DIR, progress=progress,
                                 fail_fast=fail_fast, refit=refit_baseline)

        entries = []
        for name, spec in zip(names, specs):
            size = measure_model(name, spec, runs_dir / name, batch=throughput_batch,
                                 length=throughput_length, iters=throughput_iters,
                                 measure=measure_throughput)
            entries.append({"name": name, "path": spec.source, **size, "results": {},
                            "errors": {}})

        for task in task_list:
            bar = tqdm(list(zip(names, specs)), desc=TASK_LABELS.get(task, task),
                       disable=not progress or jax.process_index() != 0, dynamic_ncols=True,
                       unit="model")
            for (name, spec), entry in zip(bar, entries):
                bar.set_postfix_str(name)
                run_dir = runs_dir / name / task
                results, error = attempt(f"{name} on {task}", run_dir, fail_fast, run_one,
                                         configs[name, task], run_dir, spec)
                if results is None:
                    entry["errors"][task] = error
                    continue
                entry["results"][task] = results
                log.info("%s on %s: %s", name, task, results.get("score"))
            bar.close()

        setup = {"batch": throughput_batch, "length": throughput_length,
                 "device": device_description(), "data_dir": shown_data,
                 "overrides": overrides}
        report = build_report(entries, task_list, teacher=teacher_name,
                              main_metrics={t: get_task(t).main_metric for t in task_list},
                              setup=setup, baseline=base)
        files = write_report(report, workdir) if jax.process_index() == 0 else {}
        return {**report, "files": files}

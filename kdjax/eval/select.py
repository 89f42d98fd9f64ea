"""`select_model`: pick the best of several candidate teachers or students for one task.

Each candidate is fine-tuned on the task (or, when it already is a model fine-tuned for this
task, only evaluated) with the task's fine-tuning config, and scored on the dev split, or on
the held-out part of train when the task has no dev split. The test split is never looked at:
selection on test would leak it into the reported scores. The choice is written to
WORKDIR/selection.json and returned.

Runs go to WORKDIR/runs/NAME/TASK, the layout `kdjax evaluate` uses, so evaluating the chosen
model in the same WORKDIR reuses its run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdjax.data.tasks import check_data_dir, get_task, resolve_tasks
from kdjax.errors import ConfigError, KdjaxError
from kdjax.modeldir import ModelSpec, is_model_dir, resolve_model
from kdjax.paths import absolute, model_ref
from kdjax.storage import atomic_write_json, read_json, workdir_lock

log = logging.getLogger(__name__)

SELECTION_FILE = "selection.json"
EVAL_FILE = "selection_eval.json"  # not results.json: that one is a full run_task's (with test)


class SelectionError(KdjaxError):
    """No candidate could be fine-tuned / evaluated on the task."""


def finetuned_for(model: ModelSpec, task: str) -> bool:
    """True when `model` was read from a kdjax model dir (or a run workdir's best/ or model/)
    whose head and labels are those of `task`, e.g. the best/ of an earlier `kdjax finetune`."""
    if model.tok_dir is None or not is_model_dir(model.tok_dir):
        return False
    recorded = model.task.get("name") if isinstance(model.task, dict) else model.task
    if recorded and recorded != task:
        return False
    spec, cfg = get_task(task), model.config
    return cfg.head == spec.head and (spec.head not in (
        "classification", "token_classification") or cfg.num_labels == spec.num_labels)


def score_finetuned(config: Any, run_dir: Path, model: ModelSpec | None = None
                    ) -> dict[str, Any]:
    """Score an already fine-tuned model (`config.model`; `model` when the caller has resolved
    it) on the task's selection split (dev, or the held-out part of train, split exactly as
    `run_task` does) without training.

    Returns (and caches in run_dir/selection_eval.json) {"task", "model", "main_metric",
    "dev": {metric: v}, "dev_score", "selected_on", "model_dir", "evaluated_only": True}.
    """
    import jax

    from kdjax.data.tokenizer import load_tokenizer
    from kdjax.train.finetune import (
        TASK_SETTINGS,
        load_selection,
        score_params,
        task_model_config,
    )
    from kdjax.train.trainer import make_mesh

    cache = run_dir / EVAL_FILE
    saved = read_json(cache, "delete it to score the model again")
    if saved is not None:
        return saved
    tcfg = config.task
    task = get_task(str(tcfg.name), **{k: v for k, v in tcfg.items() if k not in TASK_SETTINGS})
    spec = model or resolve_model(str(config.model), "model")
    tok_path = config.tokenizer or spec.tok_dir
    if not tok_path:
        raise ConfigError(f"model {config.model!r} has no tokenizer; set --config.tokenizer")
    data, where = load_selection(task, tcfg, load_tokenizer(str(tok_path)))
    mesh, rules = make_mesh(config.mesh, config.train)
    metrics = score_params(task, data, task_model_config(spec.config, task), spec.params, mesh,
                           rules, int(config.eval.batch_size), tuple(tcfg.buckets) or None)
    results = {"task": task.name, "model": str(config.model), "main_metric": task.main_metric,
               "dev": metrics, "dev_score": metrics.get(task.main_metric),
               "selected_on": where, "model_dir": str(spec.tok_dir or config.model),
               "evaluated_only": True}
    if jax.process_index() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, results)
    return results


def select_model(task: str, candidates: Sequence[str], data_dir: str, workdir: str,
                 overrides: Sequence[str] = (), *, names: Sequence[str] | None = None,
                 progress: bool = True, fail_fast: bool = False) -> dict[str, Any]:
    """Fine-tune (or evaluate) every candidate on `task`, choose the best dev score.

    Args:
      task: one task name.
      candidates: model paths (as for `kdjax evaluate --models`).
      data_dir: folder with the task's data.
      workdir: output folder: runs/NAME/TASK per candidate, selection.json.
      overrides: `key=value` fine-tuning config overrides (e.g. `train.epochs=1`).
      names: one name per candidate (default: from the paths).
      progress: a tqdm bar over the candidates.
      fail_fast: re-raise the first failed candidate instead of recording its error.
    Returns (and writes to WORKDIR/selection.json):
      {"task", "split": "dev" | "heldout", "metric", "scores": {name: dev score},
       "chosen": name, "chosen_path", "runs": {name: {"path", "run_dir", "model_dir",
       "dev", "finetuned": bool (False = only evaluated), "error"?}}}
    """
    import jax
    from tqdm.auto import tqdm

    from kdjax.eval.evaluate import attempt, check_names, run_one, split_list, task_config

    data_dir, workdir = absolute(data_dir), absolute(workdir)
    check_data_dir(data_dir)
    resolved = resolve_tasks(task)
    if len(resolved) != 1:
        raise ConfigError(f"--task takes one task, got {task!r}; select runs per task")
    task = resolved[0]
    candidates = [model_ref(c) for c in split_list(candidates)]
    if not candidates:
        raise ConfigError("--candidates is empty; pass comma-separated model paths")
    names = check_names(split_list(names) if names is not None else None, candidates,
                        what="candidates")
    metric = get_task(task).main_metric
    overrides = list(overrides)
    configs = {name: task_config(task, path, data_dir, overrides, name)
               for name, path in zip(names, candidates)}
    # Each candidate is read once, here where it enters; its check and its run use it.
    specs = dict(zip(names, (resolve_model(path, "--candidates") for path in candidates)))
    finetuned = {name: finetuned_for(spec, task) for name, spec in specs.items()}

    # the lock first: nothing below is written while another kdjax run uses WORKDIR
    with workdir_lock(workdir):
        runs: dict[str, dict[str, Any]] = {}
        scores: dict[str, float] = {}
        split = None
        bar = tqdm(list(zip(names, candidates)), desc=f"select {task}", unit="model",
                   disable=not progress or jax.process_index() != 0, dynamic_ncols=True)
        for name, path in bar:
            bar.set_postfix_str(name)
            run_dir = Path(workdir) / "runs" / name / task
            run = {"path": path, "run_dir": str(run_dir), "finetuned": not finetuned[name]}
            runs[name] = run
            results, error = attempt(f"{name} on {task}", run_dir, fail_fast,
                                     score_finetuned if finetuned[name] else run_one,
                                     configs[name], run_dir, specs[name])
            if results is None:
                run["error"] = error
                continue
            run["dev"] = results.get("dev", {})
            run["model_dir"] = results.get("model_dir", "")
            run["selected_on"] = results.get("selected_on", "dev")
            split = split or run["selected_on"]
            score = results.get("dev_score", run["dev"].get(metric))
            if score is not None:
                scores[name] = float(score)
        bar.close()

        chosen = max(scores, key=lambda n: scores[n]) if scores else None  # ties: first listed
        selection = {
            "task": task,
            "split": split or "dev",
            "metric": metric,
            "scores": scores,
            "chosen": chosen,
            "chosen_path": dict(zip(names, candidates)).get(chosen) if chosen else None,
            "runs": runs,
        }
        if jax.process_index() == 0:
            out = Path(workdir)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / SELECTION_FILE, selection)
        if chosen is None:
            first = next((r["error"] for r in runs.values() if "error" in r), "no scores")
            raise SelectionError(f"no candidate could be scored on {task} (first error: {first}); "
                                 f"see {Path(workdir) / 'runs'}/*/{task}/error.txt")
        return selection

"""Non-neural reference baselines of the Korean tasks (needs the ``baseline`` extra).

A baseline is fitted on the same training examples a `kdjax finetune` run trains on, its one
hyper-parameter is chosen on the same selection split (dev, or the seeded held-out part of
train: `kdjax.train.finetune.selection_split` / `split_heldout`), and it is scored once on the
same test examples with the task's own metric code. The methods (`kdjax.baseline.methods`):
character / word n-gram TF-IDF + logistic regression (NSMC, KOHATE; KorNLI and Question Pair
with pair features), ridge regression on pair similarity features (KorSTS), a per-word linear
SVM on character n-gram features (Naver NER) and a lexical-overlap span extractor with a
logistic-regression ranker (KorQuAD).

>>> from kdjax.baseline import BaselineSettings, run_baseline
>>> run_baseline(BaselineSettings("nsmc", "../shared/data/ko"), "runs/baseline")["score"]

`run_baseline` caches its result in ``WORKDIR/TASK/results.json`` and reads it back while the
data files, the settings and the method version are unchanged. ``kdjax evaluate`` keeps its
baselines in ``WORKDIR/baseline``; ``kdjax baseline`` fits them alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdjax.errors import ConfigError, KdjaxError

__all__ = ["BASELINE_NAME", "BaselineSettings", "MissingExtraError", "fit_baseline",
           "require_sklearn", "run_baseline", "run_baselines", "settings_for"]

# Bump when a method changes what it computes: cached results of another version are refitted.
BASELINE_VERSION = 1
BASELINE_NAME = "baseline (n-gram + linear)"  # the report's row name
RESULTS_FILE = "results.json"
INSTALL = "pip install 'kdjax[baseline]'"
# Task-section keys that decide the data (the rest are task options or model settings).
DATA_SETTINGS = ("limit_train", "limit_eval", "heldout_fraction", "heldout_seed")

Progress = Callable[[str], None]


class MissingExtraError(KdjaxError):
    """An optional dependency (an extra of the kdjax package) is not installed."""


def require_sklearn() -> None:
    """MissingExtraError (one line, with the install command) unless scikit-learn imports."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            f"the non-neural baselines need scikit-learn, which is not installed: {INSTALL}"
        ) from None


@dataclasses.dataclass(frozen=True)
class BaselineSettings:
    """What a baseline is fitted on: the task (and its options), the data, and the split
    settings of the fine-tuning config's task section (same meaning, same defaults)."""

    task: str
    data_dir: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    limit_train: int = 0  # first N training examples (0 = all)
    limit_eval: int = 0  # first N dev / held-out and test examples (0 = all)
    heldout_fraction: float = 0.1  # held out of train when the task has no dev split
    heldout_seed: int = 0

    @classmethod
    def from_task_config(cls, tcfg: Mapping[str, Any]) -> BaselineSettings:
        """From a `kdjax.config_lib.finetune_config` task section (after overrides)."""
        from kdjax.train.finetune import TASK_SETTINGS

        options = {k: v for k, v in tcfg.items() if k not in TASK_SETTINGS}
        return cls(task=str(tcfg["name"]), data_dir=str(tcfg["data_dir"]), options=options,
                   limit_train=int(tcfg["limit_train"]), limit_eval=int(tcfg["limit_eval"]),
                   heldout_fraction=float(tcfg["heldout_fraction"]),
                   heldout_seed=int(tcfg["heldout_seed"]))

    def make_task(self) -> Any:
        from kdjax.data.tasks import get_task

        return get_task(self.task, **dict(self.options))


def settings_for(task: str, data_dir: str, overrides: Sequence[str] = (),
                 tasks: Sequence[str] = ()) -> BaselineSettings:
    """The settings of `task` from the fine-tuning config and `--config` overrides, read the way
    `kdjax evaluate` reads them (``task.KEY=V`` for every task, ``TASK.task.KEY=V`` for one).

    Raises ConfigError for an unknown key, and for keys outside the task section: a baseline
    has no training schedule, so a ``train.*`` override would silently do nothing.
    """
    from kdjax.config_lib import apply_overrides, finetune_config, overrides_for

    mine = overrides_for(task, list(overrides), list(tasks) or [task])
    for item in mine:
        if not item.split("=", 1)[0].startswith("task."):
            raise ConfigError(
                f"override {item!r}: the baselines take task settings only (--config.task.KEY=V"
                ", e.g. task.limit_train, or --config.TASK.task.KEY=V)"
            )
    config = apply_overrides(finetune_config(task), mine)
    config.task.data_dir = str(data_dir)
    return BaselineSettings.from_task_config(config.task)


# -- data ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Splits:
    """The examples a baseline sees: the same as a `kdjax finetune` run of the settings."""

    train: list[dict[str, Any]]
    select: list[dict[str, Any]]
    selected_on: str  # "dev" | "heldout"
    test: list[dict[str, Any]]


def load_splits(task: Any, s: BaselineSettings) -> Splits:
    """Train / selection / test examples, split by `kdjax.train.finetune.split_examples`, the
    function every fine-tuning run splits with (limit_train first, then dev or the seeded
    held-out fraction, limit_eval on the selection and test splits)."""
    from kdjax.errors import DataError
    from kdjax.train.finetune import split_examples

    train, select, where = split_examples(task, s)
    if not task.has_split(s.data_dir, "test"):
        raise DataError(f"task {task.name}: no test split under {s.data_dir}; the baseline is "
                        "scored on test")
    test = task.load(s.data_dir, "test", limit=s.limit_eval or None)
    return Splits(train, select, where, test)


# -- fitting -------------------------------------------------------------------------------------

def _silent(_: str) -> None:
    pass


def fit_baseline(settings: BaselineSettings, progress: Progress | None = None
                 ) -> dict[str, Any]:
    """Fit the baseline of one task and score it; see the module docstring.

    Args:
      settings: the task, data and split settings.
      progress: called with one line per step (loading, features, each grid value, test).
    Returns:
      {"task", "method", "main_metric", "selected_on", "param", "grid" {value: selection
       score}, "chosen", "dev" {metric: v} (of the chosen value on the selection split),
       "test" {metric: v}, "score" (main metric on test), "settings", "train_examples",
       "select_examples", "test_examples", "fit_seconds" (features + grid fits),
       "seconds" (everything), "fit_cpu_seconds", "cpu_seconds" (process CPU time, all
       threads: the cost on a busy machine)}; scores x100.
    """
    require_sklearn()
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import Pipeline

    from kdjax.baseline.methods import method_for

    say = progress or _silent
    t0, cpu0 = time.perf_counter(), time.process_time()
    task = settings.make_task()
    splits = load_splits(task, settings)
    name = task.name
    say(f"{name}: {len(splits.train):,} train / {len(splits.select):,} {splits.selected_on} / "
        f"{len(splits.test):,} test examples ({time.perf_counter() - t0:.1f} s)")
    method = method_for(task)
    metric = task.main_metric

    t_fit, cpu_fit = time.perf_counter(), time.process_time()
    method.prepare(splits.train)
    features = Pipeline(method.feature_steps())
    x_in, extra = method.inputs(splits.train)
    x = features.fit_transform(x_in)
    y = method.targets(splits.train, extra)
    s_in, s_extra = method.inputs(splits.select)
    x_select = features.transform(s_in)
    say(f"{name}: {x.shape[1]:,} features x {x.shape[0]:,} rows "
        f"({time.perf_counter() - t_fit:.1f} s)")
    grid: dict[str, float] = {}
    best: tuple[float, float, Any, dict[str, float]] | None = None
    for value in method.grid:
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            # an unconverged liblinear / lbfgs fit is still a valid (regularised) fit
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = method.estimator(value).fit(x, y)
        dev = method.score(splits.select, method.decode(model, x_select, s_extra,
                                                        splits.select))
        grid[f"{value:g}"] = dev[metric]
        say(f"{name}: {method.param}={value:g}: {splits.selected_on} {metric} "
            f"{dev[metric]:.2f} ({time.perf_counter() - t1:.1f} s)")
        if best is None or dev[metric] > best[1]:  # ties keep the smaller value (stronger prior)
            best = (value, dev[metric], model, dev)
    assert best is not None
    fit_seconds = time.perf_counter() - t_fit
    fit_cpu = time.process_time() - cpu_fit
    chosen, _, model, dev = best

    pipeline = Pipeline([*features.steps, ("model", model)])
    t_in, t_extra = method.inputs(splits.test)
    test = method.score(splits.test, method.decode(pipeline, t_in, t_extra, splits.test))
    seconds = time.perf_counter() - t0
    say(f"{name}: {method.param}={chosen:g} chosen on {splits.selected_on}; test {metric} "
        f"{test[metric]:.2f} (fit {fit_seconds:.1f} s, total {seconds:.1f} s, CPU "
        f"{time.process_time() - cpu0:.1f} s)")
    return {
        "task": name, "method": method.description, "main_metric": metric,
        "selected_on": splits.selected_on, "param": method.param, "grid": grid,
        "chosen": chosen, "dev": dev, "test": test, "score": test[metric],
        "settings": method.settings(),
        "train_examples": len(splits.train), "select_examples": len(splits.select),
        "test_examples": len(splits.test),
        "fit_seconds": round(fit_seconds, 2), "seconds": round(seconds, 2),
        "fit_cpu_seconds": round(fit_cpu, 2),
        "cpu_seconds": round(time.process_time() - cpu0, 2),
    }


# -- cache ---------------------------------------------------------------------------------------

def cache_key(settings: BaselineSettings) -> dict[str, Any]:
    """What a cached result must match: settings, method version, and the size and
    modification time of every file in the task's data folder."""
    task = settings.make_task()
    folder = task.resolve_dir(settings.data_dir)
    files = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file():
                st = p.stat()
                files[p.name] = [st.st_size, st.st_mtime_ns]
    return {"version": BASELINE_VERSION, "task": task.name,
            "options": {k: settings.options[k] for k in sorted(settings.options)},
            "data": os.path.abspath(folder), "files": files,
            **{k: getattr(settings, k) for k in DATA_SETTINGS}}


def run_baseline(settings: BaselineSettings, workdir: str | os.PathLike | None = None, *,
                 refit: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """`fit_baseline`, cached in ``workdir/TASK/results.json`` (no cache without a workdir).

    A cached result is returned (with ``"cached": True``) when its key (`cache_key`) matches;
    `refit` ignores it.
    """
    key = cache_key(settings)
    path = Path(workdir) / key["task"] / RESULTS_FILE if workdir is not None else None
    if path is not None and path.is_file() and not refit:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            saved = {}
        if saved.get("key") == key:
            (progress or _silent)(f"{key['task']}: cached result in {path}")
            return {**saved["result"], "cached": True}
    result = fit_baseline(settings, progress)
    if path is not None:
        from kdjax.storage import atomic_write_json

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"key": key, "result": result})
    return {**result, "cached": False}


def run_baselines(tasks: str | Sequence[str], data_dir: str, workdir: str | None = None, *,
                  overrides: Sequence[str] = (), refit: bool = False,
                  progress: Progress | None = None) -> Iterator[dict[str, Any]]:
    """`run_baseline` for each task of a spec ("all", "nsmc,korsts"), in order. Every setting
    is validated (one-line errors) before the first fit."""
    from kdjax.data.tasks import check_data_dir, resolve_tasks

    require_sklearn()
    check_data_dir(data_dir)
    names = resolve_tasks(tasks)
    all_settings = [settings_for(t, data_dir, overrides, names) for t in names]
    for s in all_settings:
        s.make_task()  # unknown task options fail here, before any fitting
    for s in all_settings:
        yield run_baseline(s, workdir, refit=refit, progress=progress)

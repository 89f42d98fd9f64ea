"""`kdjax finetune`: fine-tuning, task-specific distillation and two-stage fine-tuning.

A run is one task and up to three stages, each switchable (`stages.*`):

1. `pre_finetune` - fine-tune the student on the gold labels (needs distill.teacher);
2. `distill`      - task KD from a fine-tuned, frozen teacher (`distill.teacher`); with no
                    teacher this stage is plain fine-tuning and is named `finetune`;
3. `post_finetune` - fine-tune the distilled student on the gold labels again.

Stage k starts from stage k-1's best model (stage 1 from `model`). Each stage writes
WORKDIR/stages/K_NAME/ (checkpoints/, metrics.jsonl, best/ model dir, best.json, stage.json)
through the one trainer (`kdjax.train.trainer.train_and_evaluate`: the stage is a `Plan` with
a `FinetuneWorkload` or `TaskDistillWorkload` and an evaluate-and-keep-best hook), and resumes
from its checkpoints. Every `eval.every` steps (0 = once per epoch) and at the end of a stage
the model is evaluated on the task's dev split, or - for tasks without one - on a seeded held-out
fraction of train (`task.heldout_fraction`), and the best is kept. The test split is read
once, at the very end, to score the final best model (WORKDIR/best): it never selects.
WORKDIR/results.json holds the result; calling `run_task` on a finished WORKDIR returns it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax.traverse_util import flatten_dict, unflatten_dict

from kdjax import sharding as shd
from kdjax.config_lib import check_float
from kdjax.data.task_batches import ArrayBatches
from kdjax.errors import ConfigError, DataError, KdjaxError
from kdjax.modeldir import ModelSpec, resolve_model, save_model_dir
from kdjax.models.config import EncoderConfig
from kdjax.paths import absolute, resolve_config_paths
from kdjax.storage import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
    workdir_lock,
)
from kdjax.train.checkpoint import set_aside
from kdjax.train.placement import cast_tree, gather, mesh_context, place, sync_processes
from kdjax.train.predict import Predictor
from kdjax.train.trainer import (
    F32_MAX,
    Plan,
    TrainingError,
    check_train_section,
    make_mesh,
    train_and_evaluate,
)
from kdjax.train.workloads import FinetuneWorkload, TaskDistillWorkload, intermediate_objective

log = logging.getLogger(__name__)

SECTIONS = ("name", "task", "model", "tokenizer", "distill", "stages", "augment", "train",
            "eval", "mesh")
# task-section keys that are run settings, not options of the Task class
TASK_SETTINGS = ("name", "data_dir", "max_length", "buckets", "bucket_equal_tokens",
                 "limit_train", "limit_eval", "heldout_fraction", "heldout_seed")
HEAD_KEYS = ("discriminator_head", "generator_head", "generator_bias", "classifier", "qa_head")
STAGES = ("pre_finetune", "distill", "post_finetune")
RESULTS = "results.json"


# -- config -----------------------------------------------------------------------------------
def check_config(config: Any, data: bool = True) -> None:
    """Sections and stage switches; one clear line per mistake. `data=False` (`kdjax
    compile`: shapes only) does not ask for task.data_dir."""
    unknown = sorted(set(config.keys()) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown} for `kdjax finetune`; "
                          f"expected {list(SECTIONS)}")
    for key in ("task", "model", "distill", "stages", "train", "eval", "mesh"):
        if key not in config:
            raise ConfigError(f"config has no {key!r} section (needed by `kdjax finetune`); "
                              "start from kdjax.config_lib.finetune_config(TASK)")
    bad = sorted(set(config.stages.keys()) - set(STAGES))
    if bad:
        raise ConfigError(f"unknown stage(s) {bad}; stages are {', '.join(STAGES)}")
    if not config.model:
        raise ConfigError("config.model is empty; set --config.model=PATH (a pretrained model "
                          "directory) or a size config such as configs/debug.py")
    if data and not config.task.data_dir:
        raise ConfigError("task.data_dir is empty; set --config.task.data_dir=DIR (the folder "
                          "with the task's files, e.g. ../shared/data/ko/nsmc)")
    check_train_section(config.train)
    if int(config.train.steps) < 0 or (int(config.train.steps) == 0 and
                                       float(config.train.epochs) <= 0):
        raise ConfigError("set train.steps > 0, or train.steps=0 and train.epochs > 0")
    frac = float(config.task.heldout_fraction)
    if not 0.0 < frac < 1.0:
        raise ConfigError(f"task.heldout_fraction must be in (0, 1), got {frac}")
    check_float("distill.alpha", config.distill.alpha, 0.0, 1.0)
    check_float("distill.temperature", config.distill.temperature, 0.0, F32_MAX, False)
    if "augment" in config:
        check_float("augment.prob", config.augment.prob, 0.0, 1.0)


def plan_stages(config: Any) -> list[str]:
    """The stage names that will run, in order (see the module doc)."""
    teacher = bool(config.distill.teacher)
    st = config.stages
    if not teacher and (st.pre_finetune or st.post_finetune):
        raise ConfigError("stages.pre_finetune / stages.post_finetune surround the task-KD stage "
                          "and need distill.teacher (a fine-tuned teacher); set it or turn them "
                          "off")
    names = []
    if st.pre_finetune:
        names.append("pre_finetune")
    if st.distill:
        names.append("distill" if teacher else "finetune")
    if st.post_finetune:
        names.append("post_finetune")
    if not names:
        raise ConfigError("every stage is switched off (stages.*); enable at least one")
    if int(config.augment.copies) > 0 and "distill" not in names:
        raise ConfigError("augment.copies > 0 augments the task-KD stage: it needs "
                          "distill.teacher and stages.distill=True")
    return names


# -- models -----------------------------------------------------------------------------------
def _task_labels(task: Any) -> int:
    """Outputs per row (per token for NER): 1 for regression, 2 for QA, else the classes."""
    return 1 if task.kind == "regression" else (2 if task.head == "qa" else int(task.num_labels))


def task_model_config(cfg: EncoderConfig, task: Any) -> EncoderConfig:
    """`cfg` with the task's head and label count."""
    return cfg.replace(head=task.head, num_labels=_task_labels(task))


def keeps_head(spec: ModelSpec, task: Any) -> bool:
    """Whether `spec`'s head is already the task's (a model fine-tuned for this task)."""
    if spec.params is None or spec.config.head != task.head:
        return False
    if spec.task is not None and spec.task != task.name:
        return False
    return task.head == "qa" or spec.config.num_labels == _task_labels(task)


def check_teacher(spec: ModelSpec, task: Any) -> None:
    """The teacher must be fine-tuned for this task: same head, labels (and recorded task)."""
    want = f"a {task.head!r} head" + ("" if task.head == "qa" else
                                     f" with {_task_labels(task)} label(s)")
    fix = (f"fine-tune it first (kdjax finetune --config configs/finetune/{task.name}.py "
           f"--config.model={spec.source} ...) and pass that WORKDIR")
    if spec.params is None:
        raise ConfigError(f"distill.teacher={spec.source!r} is a size config; the teacher must "
                          "be a fine-tuned model directory")
    if spec.config.head != task.head or (task.head != "qa" and
                                         spec.config.num_labels != _task_labels(task)):
        raise ConfigError(
            f"distill.teacher={spec.source!r} has head {spec.config.head!r} with "
            f"{spec.config.num_labels} label(s) but task {task.name!r} needs {want}; {fix}")
    if spec.task is not None and spec.task != task.name:
        raise ConfigError(f"distill.teacher={spec.source!r} was fine-tuned for task "
                          f"{spec.task!r}, not {task.name!r}; {fix}")


def encoder_params(abstract: Any, loaded: Any, keep_head: bool, what: str = "model") -> Any:
    """The leaves of `loaded` (host numpy) for a task model whose params look like `abstract`
    (ShapeDtypeStructs): the encoder, and the head too when `keep_head` (a fresh head is
    initialised otherwise). Every leaf must exist with the same shape."""
    out = {}
    src = flatten_dict(dict(loaded))
    for key, leaf in flatten_dict(dict(abstract)).items():
        if key[0] in HEAD_KEYS and not keep_head:
            continue
        if key not in src:
            raise ConfigError(f"{what} has no parameter {'/'.join(key)}; it does not fit the "
                              "task model (different architecture?)")
        if tuple(np.shape(src[key])) != tuple(leaf.shape):
            raise ConfigError(f"{what} parameter {'/'.join(key)} has shape "
                              f"{tuple(np.shape(src[key]))}, the task model expects "
                              f"{tuple(leaf.shape)}")
        out[key] = np.asarray(src[key])
    return unflatten_dict(out)


def head_start(abstract: Any, kind: str, labels: np.ndarray) -> dict[str, Any]:
    """A fresh task head's output bias at what the training labels say before any input is
    read, as a partial host tree over `abstract` (the model's params): the labels' mean for
    regression, the log of the class frequencies (add-one smoothed, centred) for sequence and
    token classification; nothing for span heads.

    Adam moves a bias by about lr a step, so a head that starts at 0 reaches the labels' offset
    only through its kernel, and the encoder is pushed to carry it: at lr 1e-4 the E5 teacher's
    KorSTS run (labels 0-5, mean ~2.7) collapsed to predicting the mean (test Spearman 12),
    and NER (29 tags, 70 % of them O) spent its first hundreds of steps learning the prior.
    """
    key = {"regression": ("classifier", "out_proj", "bias"),
           "sequence": ("classifier", "out_proj", "bias"),
           "token": ("classifier", "classifier", "bias")}.get(kind)
    flat = flatten_dict(dict(abstract))
    if key is None or key not in flat:
        return {}
    leaf = flat[key]
    y = np.asarray(labels).reshape(-1)
    if kind == "regression":
        if y.size == 0:
            return {}
        value = np.full(leaf.shape, float(np.mean(y)))
    else:
        y = y[y >= 0].astype(np.int64)  # -100: not a labelled position
        counts = np.bincount(y[y < leaf.shape[0]], minlength=leaf.shape[0]) + 1.0
        value = np.log(counts / counts.sum())
        value -= value.mean()
    return unflatten_dict({key: value.astype(leaf.dtype)})


# -- data -------------------------------------------------------------------------------------
def selection_split(task: Any, data_dir: str) -> str:
    """Where the best checkpoint is chosen: "dev" when the task has a dev split, else
    "heldout" (a seeded fraction of train). Never "test"."""
    return "dev" if task.has_split(data_dir, "dev") else "heldout"


def split_heldout(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, heldout): a seeded random `fraction` of the examples (at least one) is held out
    for model selection; the rest trains."""
    n = len(examples)
    if n < 2:
        raise DataError(f"the training split has {n} example(s); cannot hold out a part for "
                        "model selection")
    k = min(n - 1, max(1, int(round(n * fraction))))
    perm = np.random.default_rng([int(seed), 7919]).permutation(n)
    held = set(perm[:k].tolist())
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


@dataclasses.dataclass
class TaskSplits:
    train: Any  # TaskData
    select: Any  # TaskData: dev, or the held-out part of train
    selected_on: str  # "dev" | "heldout"
    test: Any | None  # TaskData, or None when the task folder has no test split


def split_examples(task: Any, tcfg: Any) -> tuple[list, list, str]:
    """(train examples, selection examples, "dev" | "heldout") as every run splits them."""
    data_dir = str(tcfg.data_dir)
    lim_train = int(tcfg.limit_train) or None
    lim_eval = int(tcfg.limit_eval) or None
    train_ex = task.load(data_dir, "train", limit=lim_train)
    where = selection_split(task, data_dir)
    if where == "dev":
        select_ex = task.load(data_dir, "dev", limit=lim_eval)
    else:
        train_ex, select_ex = split_heldout(train_ex, float(tcfg.heldout_fraction),
                                            int(tcfg.heldout_seed))
        if lim_eval:
            select_ex = select_ex[:lim_eval]
    return train_ex, select_ex, where


def load_selection(task: Any, tcfg: Any, tokenizer: Any) -> tuple[Any, str]:
    """(featurized selection split, "dev" | "heldout"): what `kdjax select` scores on."""
    _, select_ex, where = split_examples(task, tcfg)
    return task.featurize(select_ex, tokenizer, int(tcfg.max_length)), where


def load_splits(task: Any, tcfg: Any, tokenizer: Any) -> TaskSplits:
    max_len = int(tcfg.max_length)
    train_ex, select_ex, where = split_examples(task, tcfg)
    test = None
    if task.has_split(str(tcfg.data_dir), "test"):
        test = task.featurize(task.load(str(tcfg.data_dir), "test",
                                        limit=int(tcfg.limit_eval) or None), tokenizer, max_len)
    return TaskSplits(task.featurize(train_ex, tokenizer, max_len),
                      task.featurize(select_ex, tokenizer, max_len), where, test)


def score_params(task: Any, data: Any, cfg: EncoderConfig, params: Any, mesh: Any, rules: Any,
                 batch_size: int, buckets: Any = None) -> dict[str, float]:
    """The task's metrics of a model (host params, `cfg` with the task head) on `data`
    (batches padded to length `buckets` when given)."""
    from kdjax.models.model import abstract_params

    with mesh_context(mesh, rules):
        sh = shd.logical_shardings(abstract_params(cfg, boxed=True), mesh, rules)
        placed = place(cast_tree(params, cfg.weight_dtype), sh)
        outputs = Predictor(cfg, mesh, sh, batch_size, buckets)(placed, data.arrays)
    return {k: float(v) for k, v in task.evaluate(outputs, data).items()}


class BestTracker:
    """Keeps the best evaluation by `metric` (higher is better; ties keep the earlier)."""

    def __init__(self, metric: str, best: dict | None = None):
        self.metric = metric
        self.best = best  # {"step", "score", "metrics"} or None

    @property
    def score(self) -> float:
        return -math.inf if self.best is None else float(self.best["score"])

    def update(self, step: int, metrics: Mapping[str, float]) -> bool:
        """Record an evaluation; True when it is the new best."""
        if self.metric not in metrics:
            raise KdjaxError(f"evaluation returned no {self.metric!r} (got {sorted(metrics)})")
        score = float(metrics[self.metric])
        if not math.isfinite(score) or score <= self.score:
            return False
        self.best = {"step": int(step), "score": score,
                     "metrics": {k: float(v) for k, v in metrics.items()}}
        return True


# -- the run ----------------------------------------------------------------------------------
@dataclasses.dataclass
class _Run:
    config: Any
    workdir: epath.Path
    task: Any
    tokenizer: Any
    splits: TaskSplits
    mesh: Any
    rules: Any
    model: ModelSpec
    teacher: ModelSpec | None
    progress: bool
    is_main: bool


def _prepare(config: Any, workdir: epath.Path, progress: bool, model: ModelSpec | None) -> _Run:
    from kdjax.data.tasks import get_task
    from kdjax.data.tokenizer import load_tokenizer

    check_config(config)
    tcfg = config.task
    options = {k: v for k, v in tcfg.items() if k not in TASK_SETTINGS}
    task = get_task(str(tcfg.name), **options)
    data_dir = Path(str(tcfg.data_dir)).expanduser()
    if not data_dir.is_dir():
        raise ConfigError(f"task.data_dir={str(tcfg.data_dir)!r} is not a directory")
    plan_stages(config)
    model = model or resolve_model(str(config.model), "model")
    teacher = None
    if config.distill.teacher:
        teacher = resolve_model(str(config.distill.teacher), "distill.teacher")
        check_teacher(teacher, task)
    mesh, rules = make_mesh(config.mesh, config.train)

    tok_path = config.tokenizer or model.tok_dir or (teacher.tok_dir if teacher else None)
    if not tok_path:
        raise ConfigError(f"model={config.model!r} has no tokenizer (a size config); set "
                          "--config.tokenizer=PATH")
    tokenizer = load_tokenizer(str(tok_path))
    vocab = len(tokenizer)
    if model.params is None:  # random init: the teacher's vocabulary, else the tokenizer's
        model = dataclasses.replace(model, config=model.config.replace(
            vocab_size=teacher.config.vocab_size if teacher else vocab))
    for name, spec in (("model", model), ("distill.teacher", teacher)):
        if spec is None:
            continue
        if vocab > spec.config.vocab_size:
            raise ConfigError(f"the tokenizer has {vocab} tokens but {name} has "
                              f"{spec.config.vocab_size} embeddings; use the model's tokenizer")
        if int(tcfg.max_length) > spec.config.max_position_embeddings:
            raise ConfigError(f"task.max_length={tcfg.max_length} exceeds {name}'s "
                              f"max_position_embeddings={spec.config.max_position_embeddings}")
    if teacher is not None and teacher.config.vocab_size != model.config.vocab_size:
        raise ConfigError(f"the student (model) has {model.config.vocab_size} embeddings and the "
                          f"teacher {teacher.config.vocab_size}; task KD needs one vocabulary")
    _check_augment(config, task, workdir)
    splits = load_splits(task, tcfg, tokenizer)
    return _Run(config, workdir, task, tokenizer, splits, mesh, rules, model, teacher,
                progress, jax.process_index() == 0)


def _check_augment(config: Any, task: Any, workdir: epath.Path) -> None:
    """Fail early on augmentation settings that could only fail after the first stages."""
    aug = config.augment
    if int(aug.copies) <= 0 or (workdir / "augmented.npz").exists():
        return
    from kdjax.data.augment import AUGMENTABLE_KINDS, load_mlm

    if task.kind not in AUGMENTABLE_KINDS:
        raise ConfigError(f"augment.copies > 0 but task {task.name!r} ({task.kind}) cannot be "
                          f"augmented: its labels are tied to token positions; set "
                          "augment.copies=0")
    source = aug.mlm_model or str(config.distill.teacher)
    load_mlm(source)  # ConfigError / CheckpointError naming augment.mlm_model


def _augmented(run: _Run, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Train rows + (cached) MLM-augmented copies; `hard_weight` 1 for real rows, 0 for copies."""
    n = len(arrays["input_ids"])
    out = {**arrays, "hard_weight": np.ones((n,), np.float32)}
    aug = run.config.augment
    copies = int(aug.copies)
    if copies <= 0:
        return out
    cache = run.workdir / "augmented.npz"
    if cache.exists():
        with cache.open("rb") as f:
            new = dict(np.load(f))
    else:
        from kdjax.data.augment import load_mlm, mlm_augment

        source = aug.mlm_model or str(run.config.distill.teacher)
        mlm_cfg, mlm_params = load_mlm(source)
        new = mlm_augment(arrays, mlm_cfg, mlm_params, run.tokenizer,
                          prob=float(aug.prob), copies=copies, top_k=int(aug.top_k),
                          seed=int(aug.seed), batch_size=int(aug.batch_size),
                          progress=run.progress and run.is_main, task_kind=run.task.kind)
        if run.is_main:
            import io

            buf = io.BytesIO()
            np.savez(buf, **new)
            atomic_write_bytes(cache, buf.getvalue())
    m = len(new["input_ids"])
    new = {k: np.asarray(v) for k, v in new.items() if k in arrays}
    new["hard_weight"] = np.zeros((m,), np.float32)
    return {k: np.concatenate([out[k], new[k].astype(out[k].dtype)]) for k in out}


def _read_json(path: epath.Path) -> dict | None:
    """A JSON file a run wrote (None when absent); a broken one is one `StorageError` line
    saying how to recover."""
    return read_json(path, "run again with --config.train.restart=True to start the "
                     "fine-tuning over (the old files are moved aside), or delete the file")


def _write_json(path: epath.Path, obj: Any) -> None:
    atomic_write_json(path, obj)


class EvaluateAndKeepBest:
    """The stage's hook: every `every` steps and at the end, score the model on the selection
    split (dev, or held-out train) and keep the best as STAGE/best (a model dir) + best.json."""

    at_end = True

    def __init__(self, run: _Run, stage: str, stage_dir: epath.Path, model_cfg: EncoderConfig,
                 every: int):
        self.run, self.stage, self.stage_dir = run, stage, stage_dir
        self.model_cfg, self.every = model_cfg, every
        self.best_file = stage_dir / "best.json"
        self.tracker = BestTracker(run.task.main_metric, _read_json(self.best_file))
        self.last_step = int((self.tracker.best or {}).get("evaluated_at", -1))
        self._predictor: Predictor | None = None

    def due(self, step: int, steps: int) -> bool:
        return step % self.every == 0 or step == steps

    def __call__(self, step: int, state: Any, frozen: Any = None) -> dict[str, float]:
        run = self.run
        params = state.params["model"]
        if self._predictor is None:
            shardings = jax.tree_util.tree_map(lambda x: x.sharding, params)
            self._predictor = Predictor(self.model_cfg, run.mesh, shardings,
                                        int(run.config.eval.batch_size),
                                        tuple(run.config.task.buckets) or None)
        outputs = self._predictor(params, run.splits.select.arrays)
        metrics = {k: float(v) for k, v in run.task.evaluate(outputs, run.splits.select).items()}
        if self.tracker.update(step, metrics):
            host = gather(params)
            if run.is_main:
                save_model_dir(self.stage_dir / "best", self.model_cfg, host, run.tokenizer,
                               trained_by=f"finetune:{self.stage}", task=run.task.name,
                               label_names=list(getattr(run.task, "label_names", ())),
                               step=step, selected_on=run.splits.selected_on, dev=metrics)
        if self.tracker.best is not None and run.is_main:
            _write_json(self.best_file, {**self.tracker.best, "evaluated_at": step})
        self.last_step = step
        return {f"{run.splits.selected_on}_{k}": v for k, v in metrics.items()}


def stage_workload(config: Any, task: Any, stage: str, model_cfg: EncoderConfig,
                   teacher_cfg: EncoderConfig | None) -> Any:
    """The workload of one stage: task KD from the frozen teacher (`stage` "distill"), else
    the task's own loss. `model_cfg` already has the task's head (`task_model_config`)."""
    if stage != "distill":
        return FinetuneWorkload(model_cfg, task)
    assert teacher_cfg is not None
    objective = intermediate_objective(config.distill.objective, model_cfg, teacher_cfg)
    return TaskDistillWorkload(model_cfg, teacher_cfg, task, alpha=float(config.distill.alpha),
                               temperature=float(config.distill.temperature),
                               objective=objective)


def _train_stage(run: _Run, index: int, name: str, init: ModelSpec, stage_dir: epath.Path,
                 ) -> dict[str, Any]:
    """Train one stage (resuming from its checkpoints); returns its stage.json record."""
    config, task = run.config, run.task
    done = _read_json(stage_dir / "stage.json")
    if done is not None:
        log.info("stage %s already finished (%s)", name, stage_dir)
        return done
    s_cfg = task_model_config(init.config, task)
    keep_head = keeps_head(init, task)
    arrays = dict(run.splits.train.arrays)
    teacher = None
    workload = stage_workload(config, task, name, s_cfg,
                              run.teacher.config if run.teacher is not None else None)
    if name == "distill":
        assert run.teacher is not None
        arrays = _augmented(run, arrays)
        teacher = run.teacher.params
    train_cfg = copy.deepcopy(config.train)
    dp = math.prod(run.mesh.shape[a] for a in ("data", "fsdp") if a in run.mesh.shape)
    batches = ArrayBatches(arrays, int(train_cfg.batch_size), int(train_cfg.seed),
                           buckets=tuple(config.task.buckets) or None,
                           equal_tokens=bool(config.task.bucket_equal_tokens),
                           multiple=dp * int(train_cfg.grad_accum))
    per_epoch = batches.steps_per_epoch()
    steps = int(train_cfg.steps) or max(1, math.ceil(float(train_cfg.epochs) * per_epoch))
    train_cfg.steps = steps
    every = int(config.eval.every) or per_epoch
    hook = EvaluateAndKeepBest(run, name, stage_dir, s_cfg, every)
    start_bias = not keep_head and "labels" in arrays

    def initial(abstract: Any) -> Any:
        tree = {} if init.params is None else encoder_params(
            abstract["model"], init.params, keep_head, init.source)
        if start_bias:
            tree = unflatten_dict({**flatten_dict(tree), **flatten_dict(
                head_start(abstract["model"], task.kind, arrays["labels"]))})
        return {"model": tree}
    plan = Plan(
        workload=workload, batches=batches, train=train_cfg, hooks=(hook,),
        meta={"kind": "finetune", "stage": name, "task": task.name,
              "config": json.loads(config.to_json_best_effort()),
              "models": {"model": s_cfg.to_dict()}, "main_model": "model",
              "num_examples": batches.num_examples},
        teacher=teacher, teacher_dtype=run.teacher.config.weight_dtype if teacher else None,
        initial_params=initial,
    )
    if run.is_main and run.progress:
        print(f"kdjax finetune: {task.name} stage {index + 1} {name}: "
              f"{batches.num_examples} train rows, {steps} steps ({per_epoch}/epoch), "
              f"eval on {run.splits.selected_on} every {every} steps, from "
              f"{init.source}{' (keeping its head)' if keep_head else ''}", flush=True)
    summary = train_and_evaluate(plan, run.mesh, run.rules, stage_dir,
                                 progress=run.progress)
    if summary["interrupted"]:
        return {"name": name, "interrupted": True, "signal": summary.get("signal"),
                "dir": str(stage_dir)}
    best = hook.tracker.best or {}
    record = {"name": name, "dir": str(stage_dir), "init": init.source,
              "model_dir": str(stage_dir / "best"),
              "best_step": best.get("step"), "dev_score": best.get("score"),
              "dev": best.get("metrics", {}), "steps": steps,
              "train_examples": batches.num_examples,
              "last_metrics": summary["last_metrics"]}
    if run.is_main:
        _write_json(stage_dir / "stage.json", record)
    return record


def _test_scores(run: _Run, best: ModelSpec) -> dict[str, float]:
    """The final best model on the test split (evaluated once, never used to select)."""
    if run.splits.test is None:
        return {}
    return score_params(run.task, run.splits.test, best.config, best.params, run.mesh,
                        run.rules, int(run.config.eval.batch_size),
                        tuple(run.config.task.buckets) or None)


def run_task(config: ml_collections.ConfigDict, workdir: str | epath.Path,
             progress: bool = True, model: ModelSpec | None = None) -> dict[str, Any]:
    """Run the enabled stages of `config` in `workdir`; see the module doc. `model` is
    `config.model` already resolved (`resolve_model`) by a caller that runs it on many tasks.

    Returns (and writes to WORKDIR/results.json):
    {"task", "model", "teacher", "main_metric", "dev": {metric: v}, "test": {metric: v},
     "dev_score", "score" (main metric on test; None without a test split), "best_step",
     "model_dir" (WORKDIR/best), "selected_on": "dev" | "heldout", "stages": [...],
     "train_examples", "seconds"}.
    A finished WORKDIR returns its results.json without training; an interrupted run returns
    {"interrupted": True, "signal", ...} and resumes from its checkpoints when called again.
    The workdir lock is held throughout (`kdjax.storage.workdir_lock`): a second run in the
    same WORKDIR - or `train.restart` while one runs - stops with one line, moving nothing.
    """
    workdir = epath.Path(absolute(workdir))
    resolve_config_paths(config)
    with workdir_lock(workdir):  # before anything is moved or written
        return _run_task(config, workdir, progress, model)


def _run_task(config: ml_collections.ConfigDict, workdir: epath.Path, progress: bool,
              model: ModelSpec | None) -> dict[str, Any]:
    results_file = workdir / RESULTS
    if bool(config.train.restart):  # the stages' own checkpoints are then absent
        if jax.process_index() == 0:
            set_aside(workdir, ("stages", "best", RESULTS))
        sync_processes("kdjax_restart")
        config.train.restart = False
    done = _read_json(results_file)
    if done is not None:
        return done
    t0 = time.perf_counter()
    run = _prepare(config, workdir, progress, model)
    if run.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
    names = plan_stages(config)
    records = []
    init = run.model
    for i, name in enumerate(names):
        stage_dir = workdir / "stages" / f"{i + 1}_{name}"
        record = _train_stage(run, i, name, init, stage_dir)
        records.append(record)
        if record.get("interrupted"):
            return {"interrupted": True, "signal": record.get("signal"),
                    "workdir": str(workdir), "stages": records}
        if record.get("best_step") is None:
            raise TrainingError(f"stage {name} produced no evaluation on "
                                f"{run.splits.selected_on}")
        init = resolve_model(str(stage_dir / "best"), f"stage {name} best")
    final = records[-1]
    best_dir = workdir / "best"
    if run.is_main:
        save_model_dir(best_dir, init.config, init.params, run.tokenizer,
                        trained_by="finetune", task=run.task.name,
                        label_names=list(getattr(run.task, "label_names", ())),
                        step=final["best_step"], stage=final["name"],
                        selected_on=run.splits.selected_on, dev=final["dev"])
    test = _test_scores(run, init)
    metric = run.task.main_metric
    results = {
        "task": run.task.name, "model": str(config.model),
        "teacher": str(config.distill.teacher) or None, "main_metric": metric,
        "dev": final["dev"], "test": test, "dev_score": final["dev_score"],
        "score": test.get(metric), "best_step": final["best_step"],
        "model_dir": str(best_dir), "selected_on": run.splits.selected_on,
        "stages": [{k: v for k, v in r.items() if k != "last_metrics"} for r in records],
        "train_examples": len(run.splits.train.arrays["input_ids"]),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if run.is_main:
        _write_json(results_file, results)
    return results


def print_results(results: dict[str, Any]) -> None:
    """One JSON line (process 0)."""
    if jax.process_index() == 0:
        brief = {k: v for k, v in results.items() if k != "stages"}
        brief["stages"] = [s.get("name") for s in results.get("stages", [])]
        print(json.dumps(brief, ensure_ascii=False))


__all__ = ["BestTracker", "EvaluateAndKeepBest", "encoder_params", "load_selection",
           "plan_stages", "print_results", "run_task", "score_params", "selection_split",
           "split_heldout"]

"""`kdjax finetune`: fine-tuning, task-specific distillation and two-stage fine-tuning.

A run is one task and up to three stages, each switchable (`stages.*`):

1. `pre_finetune` - fine-tune the student on the gold labels (needs distill.teacher);
2. `distill`      - task KD from a fine-tuned, frozen teacher (`distill.teacher`); with no
                    teacher this stage is plain fine-tuning and is named `finetune`;
3. `post_finetune` - fine-tune the distilled student on the gold labels again.

Stage k starts from stage k-1's best model (stage 1 from `model`). Each stage writes
WORKDIR/stages/K_NAME/ (checkpoints/, metrics.jsonl, best/ model dir, best.json, stage.json)
on the same sharded trainer pieces as `kdjax.train.loop` (state_shardings, create_state,
make_train_step, Checkpointer, MetricsWriter, Prefetcher, Preemption), and resumes from its
checkpoints. Every `eval.every` steps (0 = once per epoch) and at the end of a stage the model
is evaluated on the task's dev split, or - for tasks without one - on a seeded held-out
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
from tqdm.auto import tqdm

from kdjax import sharding as shd
from kdjax.config_lib import mesh_config, train_config
from kdjax.data.corpus import Prefetcher
from kdjax.data.task_batches import ArrayBatches
from kdjax.errors import ConfigError, DataError, KdjaxError
from kdjax.models.config import EncoderConfig
from kdjax.paths import absolute, resolve_config_paths
from kdjax.train.checkpoint import Checkpointer, set_aside
from kdjax.train.loop import (
    Preemption,
    TrainingError,
    _cast_tree,
    _mesh_context,
    _save_model_dir,
    check_skips,
    compile_step,
    gather,
    place,
    save_or_stop,
    sync_processes,
)
from kdjax.train.metrics import MetricsWriter
from kdjax.train.optimizer import make_optimizer
from kdjax.train.predict import Predictor
from kdjax.train.state import create_state, state_shardings, with_shardings
from kdjax.train.step import make_train_step
from kdjax.train.task_objectives import FinetuneTask, TaskDistillTask, intermediate_objective

log = logging.getLogger(__name__)

SECTIONS = ("name", "task", "model", "tokenizer", "distill", "stages", "augment", "train",
            "eval", "mesh")
# task-section keys that are run settings, not options of the Task class
TASK_SETTINGS = ("name", "data_dir", "max_length", "limit_train", "limit_eval",
                 "heldout_fraction", "heldout_seed")
# Task.defaults keys that configure training rather than the Task
TRAIN_DEFAULTS = ("max_length", "epochs", "batch_size", "lr", "warmup", "weight_decay")
HEAD_KEYS = ("discriminator_head", "generator_head", "generator_bias", "classifier", "qa_head")
STAGES = ("pre_finetune", "distill", "post_finetune")
RESULTS = "results.json"


# -- config -----------------------------------------------------------------------------------
def finetune_config(task: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The default config of fine-tuning `task` (a name in `kdjax.data.tasks.task_names()`).

    Training defaults (max_length, epochs, batch_size, lr, warmup, weight_decay) come from the
    Task's `defaults`; its other defaults (e.g. KorQuAD doc_stride) become `task.*` options.
    `overrides`: `section={key: value}` (merged), `"a.b"=value` (dotted) or `key=value` for a
    top-level key (model, tokenizer, name); an unknown key is a ConfigError naming it.
    """
    from kdjax.data.tasks import get_task

    t = get_task(task)
    d = dict(getattr(t, "defaults", {}) or {})
    options = dict(getattr(t, "option_defaults", {}) or {})
    options.update({k: v for k, v in d.items() if k in options and k not in TRAIN_DEFAULTS})
    batch = int(d.get("batch_size", 32))
    train = train_config(
        steps=0, batch_size=batch, lr=float(d.get("lr", 5e-5)),
        warmup_steps=float(d.get("warmup", 0.1)), weight_decay=float(d.get("weight_decay", 0.01)),
        log_every=50, save_every=500, keep=1,
    )
    train.epochs = float(d.get("epochs", 3))
    cfg = ml_collections.ConfigDict({
        "name": f"finetune_{task}",
        "task": {"name": task, "data_dir": "", "max_length": int(d.get("max_length", 128)),
                 "limit_train": 0, "limit_eval": 0, "heldout_fraction": 0.1,
                 "heldout_seed": 0, **options},
        # a model path (HF dir / hub id, kdjax model dir, kdjax workdir) or a size config
        # file such as "configs/debug.py" (= random init; then set tokenizer)
        "model": "",
        "tokenizer": "",  # "" = the model's (or the teacher's) own tokenizer
        "distill": {"teacher": "", "alpha": 0.5, "temperature": 1.0, "objective": ""},
        "stages": {"pre_finetune": False, "distill": True, "post_finetune": False},
        "augment": {"copies": 0, "prob": 0.3, "top_k": 8, "mlm_model": "", "seed": 0,
                    "batch_size": 64},
        "train": train,
        "eval": {"every": 0, "batch_size": 64},
        "mesh": mesh_config(),
    })
    for key, value in overrides.items():
        _override(cfg, key, value)
    return cfg


def _override(cfg: ml_collections.ConfigDict, key: str, value: Any, where: str = "") -> None:
    *parents, leaf = key.split(".")
    node = cfg
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(f"unknown config key {where + '.'.join(parents[:i + 1])!r}")
        node = node[part]
    if leaf not in node:
        raise ConfigError(f"unknown config key {where + key!r}; keys here: "
                          f"{', '.join(sorted(node.keys()))}")
    if isinstance(node[leaf], ml_collections.ConfigDict) and isinstance(value, Mapping):
        for k, v in value.items():
            _override(node[leaf], k, v, where=f"{where}{key}.")
        return
    with node.ignore_type():
        node[leaf] = value


def check_config(config: Any) -> None:
    """Sections and stage switches; one clear line per mistake."""
    unknown = sorted(set(config.keys()) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown} for `kdjax finetune`; "
                          f"expected {list(SECTIONS)}")
    for key in ("task", "model", "distill", "stages", "train", "eval", "mesh"):
        if key not in config:
            raise ConfigError(f"config has no {key!r} section (needed by `kdjax finetune`); "
                              "start from kdjax.train.finetune.finetune_config(TASK)")
    bad = sorted(set(config.stages.keys()) - set(STAGES))
    if bad:
        raise ConfigError(f"unknown stage(s) {bad}; stages are {', '.join(STAGES)}")
    if not config.model:
        raise ConfigError("config.model is empty; set --config.model=PATH (a pretrained model "
                          "directory) or a size config such as configs/debug.py")
    if not config.task.get("data_dir", ""):
        raise ConfigError("task.data_dir is empty; set --config.task.data_dir=DIR (the folder "
                          "with the task's files, e.g. ../shared/data/ko/nsmc)")
    for key in ("batch_size", "log_every", "save_every"):
        if int(config.train.get(key, 0)) <= 0:
            raise ConfigError(f"train.{key} must be a positive integer, got "
                              f"{config.train.get(key)}")
    if int(config.train.steps) < 0 or (int(config.train.steps) == 0 and
                                       float(config.train.get("epochs", 0)) <= 0):
        raise ConfigError("set train.steps > 0, or train.steps=0 and train.epochs > 0")
    frac = float(config.task.get("heldout_fraction", 0.1))
    if not 0.0 < frac < 1.0:
        raise ConfigError(f"task.heldout_fraction must be in (0, 1), got {frac}")


def plan_stages(config: Any) -> list[str]:
    """The stage names that will run, in order (see the module doc)."""
    teacher = bool(config.distill.get("teacher", ""))
    st = config.stages
    if not teacher and (st.get("pre_finetune") or st.get("post_finetune")):
        raise ConfigError("stages.pre_finetune / stages.post_finetune surround the task-KD stage "
                          "and need distill.teacher (a fine-tuned teacher); set it or turn them "
                          "off")
    names = []
    if st.get("pre_finetune"):
        names.append("pre_finetune")
    if st.get("distill", True):
        names.append("distill" if teacher else "finetune")
    if st.get("post_finetune"):
        names.append("post_finetune")
    if not names:
        raise ConfigError("every stage is switched off (stages.*); enable at least one")
    if int(config.get("augment", {}).get("copies", 0)) > 0 and "distill" not in names:
        raise ConfigError("augment.copies > 0 augments the task-KD stage: it needs "
                          "distill.teacher and stages.distill=True")
    return names


# -- models -----------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelSpec:
    """A resolved `model` / `distill.teacher`: config, host params (None = random init), where
    its tokenizer lives, the task it was fine-tuned for (when recorded)."""

    config: EncoderConfig
    params: Any
    source: str
    tok_dir: Path | None = None
    task: str | None = None


def _model_dir_of(p: Path) -> Path | None:
    from kdjax.modeldir import find_model_dir, is_model_dir

    if is_model_dir(p / "best"):  # a `kdjax finetune` WORKDIR
        return p / "best"
    return find_model_dir(p)


def resolve_model(spec: str, what: str = "model") -> ModelSpec:
    """Load `spec`: a model directory / workdir / hub id, or a size config `*.py[:arg]`."""
    from kdjax.modeldir import MODEL_FILE, load_model

    spec = str(spec)
    if spec.partition(":")[0].endswith(".py"):
        from kdjax.config_lib import load_config

        section = load_config(spec)
        model = section.get("model", None)
        if model is None:
            for key in ("student", "discriminator"):
                if key in section:
                    model = section[key].model
                    break
        if model is None:
            raise ConfigError(f"{what}={spec!r} has no model section (a size config such as "
                              "configs/debug.py is expected)")
        return ModelSpec(EncoderConfig.from_any(model.to_dict()), None, spec)
    p = Path(spec).expanduser()
    hub_like = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if not p.exists() and not hub_like:
        raise ConfigError(f"{what}={spec!r} does not exist; give a model directory (HF, kdjax "
                          "model dir or workdir) or a size config such as configs/debug.py")
    model_dir = _model_dir_of(p) if p.exists() else None
    try:
        cfg, params = load_model(model_dir or (p if p.exists() else spec))
    except KdjaxError as e:
        raise type(e)(f"{what}={spec!r}: {e}") from e
    except Exception as e:
        raise ConfigError(f"{what}={spec!r} is not a model ({type(e).__name__}: "
                          f"{str(e)[:120]})") from e
    task = None
    if model_dir is not None:
        task = json.loads((model_dir / MODEL_FILE).read_text()).get("task")
    tok_dir = model_dir or (p if p.is_dir() else None)
    return ModelSpec(cfg, params, spec, tok_dir, task)


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


def merge_params(init: Any, loaded: Any, keep_head: bool, what: str = "model") -> Any:
    """The encoder of `loaded` in the freshly initialised task model `init` (numpy trees);
    its head too when `keep_head`. Shapes must match."""
    out = flatten_dict(dict(init))
    src = flatten_dict(dict(loaded))
    for key in list(out):
        if key[0] in HEAD_KEYS and not keep_head:
            continue
        if key not in src:
            raise ConfigError(f"{what} has no parameter {'/'.join(key)}; it does not fit the "
                              "task model (different architecture?)")
        if tuple(np.shape(src[key])) != tuple(np.shape(out[key])):
            raise ConfigError(f"{what} parameter {'/'.join(key)} has shape "
                              f"{tuple(np.shape(src[key]))}, the task model expects "
                              f"{tuple(np.shape(out[key]))}")
        out[key] = np.asarray(src[key])
    return unflatten_dict(out)


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


def load_splits(task: Any, tcfg: Any, tokenizer: Any) -> TaskSplits:
    data_dir = str(tcfg.data_dir)
    max_len = int(tcfg.max_length)
    lim_train = int(tcfg.get("limit_train", 0)) or None
    lim_eval = int(tcfg.get("limit_eval", 0)) or None
    train_ex = task.load(data_dir, "train", limit=lim_train)
    where = selection_split(task, data_dir)
    if where == "dev":
        select_ex = task.load(data_dir, "dev", limit=lim_eval)
    else:
        train_ex, select_ex = split_heldout(train_ex, float(tcfg.heldout_fraction),
                                            int(tcfg.get("heldout_seed", 0)))
        if lim_eval:
            select_ex = select_ex[:lim_eval]
    test = None
    if task.has_split(data_dir, "test"):
        test = task.featurize(task.load(data_dir, "test", limit=lim_eval), tokenizer, max_len)
    return TaskSplits(task.featurize(train_ex, tokenizer, max_len),
                      task.featurize(select_ex, tokenizer, max_len), where, test)


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


def _build_mesh(config: Any) -> tuple[Any, Any]:
    n_dev = int(config.mesh.get("num_devices", 0))
    if n_dev < 0 or n_dev > jax.device_count():
        raise ConfigError(f"mesh.num_devices={n_dev} but {jax.device_count()} devices exist")
    if config.mesh.get("preset", ""):
        from kdjax.presets import apply_preset

        apply_preset(config.mesh, n_dev or jax.device_count(),
                     local_devices=min(jax.local_device_count(), n_dev or jax.device_count()))
    mesh = shd.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axes),
                         devices=jax.devices()[:n_dev] if n_dev else None)
    rules = shd.get_rules(config.mesh.get("rules", "replicated"))
    dp = math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape)
    accum = int(config.train.get("grad_accum", 1))
    if int(config.train.batch_size) % (dp * accum):
        raise ConfigError(f"train.batch_size={config.train.batch_size} must be divisible by "
                          f"data-parallel devices ({dp}) x train.grad_accum ({accum})")
    return mesh, rules


def _prepare(config: Any, workdir: epath.Path, progress: bool) -> _Run:
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
    model = resolve_model(str(config.model), "model")
    teacher = None
    if config.distill.get("teacher", ""):
        teacher = resolve_model(str(config.distill.teacher), "distill.teacher")
        check_teacher(teacher, task)
    mesh, rules = _build_mesh(config)

    tok_path = config.get("tokenizer", "") or model.tok_dir or (teacher.tok_dir if teacher
                                                                 else None)
    if not tok_path:
        raise ConfigError(f"model={config.model!r} has no tokenizer (a size config); set "
                          "--config.tokenizer=PATH")
    tokenizer = load_tokenizer(str(tok_path))
    vocab = len(tokenizer)
    if model.params is None:  # random init: the teacher's vocabulary, else the tokenizer's
        model.config = model.config.replace(
            vocab_size=teacher.config.vocab_size if teacher else vocab)
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
    aug = config.get("augment", {})
    if int(aug.get("copies", 0)) <= 0 or (workdir / "augmented.npz").exists():
        return
    from kdjax.data.augment import AUGMENTABLE_KINDS, load_mlm

    if task.kind not in AUGMENTABLE_KINDS:
        raise ConfigError(f"augment.copies > 0 but task {task.name!r} ({task.kind}) cannot be "
                          f"augmented: its labels are tied to token positions; set "
                          "augment.copies=0")
    source = aug.get("mlm_model", "") or str(config.distill.teacher)
    load_mlm(source)  # ConfigError / CheckpointError naming augment.mlm_model


def _augmented(run: _Run, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Train rows + (cached) MLM-augmented copies; `hard_weight` 1 for real rows, 0 for copies."""
    n = len(arrays["input_ids"])
    out = {**arrays, "hard_weight": np.ones((n,), np.float32)}
    aug = run.config.get("augment", {})
    copies = int(aug.get("copies", 0))
    if copies <= 0:
        return out
    cache = run.workdir / "augmented.npz"
    if cache.exists():
        with cache.open("rb") as f:
            new = dict(np.load(f))
    else:
        from kdjax.data.augment import load_mlm, mlm_augment

        source = aug.get("mlm_model", "") or str(run.config.distill.teacher)
        mlm_cfg, mlm_params = load_mlm(source)
        new = mlm_augment(arrays, mlm_cfg, mlm_params, run.tokenizer,
                          prob=float(aug.prob), copies=copies, top_k=int(aug.top_k),
                          seed=int(aug.get("seed", 0)), batch_size=int(aug.get("batch_size", 64)),
                          progress=run.progress and run.is_main, task_kind=run.task.kind)
        if run.is_main:
            import io

            buf = io.BytesIO()
            np.savez(buf, **new)
            cache.write_bytes(buf.getvalue())
    m = len(new["input_ids"])
    new = {k: np.asarray(v) for k, v in new.items() if k in arrays}
    new["hard_weight"] = np.zeros((m,), np.float32)
    return {k: np.concatenate([out[k], new[k].astype(out[k].dtype)]) for k in out}


def _read_json(path: epath.Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _write_json(path: epath.Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False))


def _train_stage(run: _Run, index: int, name: str, init: ModelSpec, stage_dir: epath.Path,
                 ) -> dict[str, Any]:
    """Train one stage (resuming from its checkpoints); returns its stage.json record."""
    config, task = run.config, run.task
    done = _read_json(stage_dir / "stage.json")
    if done is not None:
        log.info("stage %s already finished (%s)", name, stage_dir)
        return done
    if run.is_main:
        stage_dir.mkdir(parents=True, exist_ok=True)
    s_cfg = task_model_config(init.config, task)
    keep_head = keeps_head(init, task)
    arrays = dict(run.splits.train.arrays)
    if name == "distill":
        assert run.teacher is not None
        t_cfg = run.teacher.config
        objective = intermediate_objective(config.distill.get("objective", ""), s_cfg, t_cfg)
        obj: Any = TaskDistillTask(s_cfg, t_cfg, task, alpha=float(config.distill.alpha),
                                   temperature=float(config.distill.temperature),
                                   objective=objective)
        arrays = _augmented(run, arrays)
    else:
        obj = FinetuneTask(s_cfg, task)
    train_cfg = copy.deepcopy(config.train)
    gb = int(train_cfg.batch_size)
    batches = ArrayBatches(arrays, gb, int(train_cfg.seed))
    per_epoch = batches.steps_per_epoch()
    steps = int(train_cfg.steps) or max(1, math.ceil(float(train_cfg.epochs) * per_epoch))
    train_cfg.steps = steps
    every = int(config.eval.get("every", 0)) or per_epoch
    tx, schedule = make_optimizer(train_cfg)
    mesh, rules = run.mesh, run.rules
    abstract, shardings = state_shardings(obj.init, tx, mesh, rules)
    batch_sh = shd.batch_sharding(mesh, 1)  # [B, ...] arrays of any rank: rows on data axes
    ckpt = Checkpointer(stage_dir / "checkpoints", keep=int(train_cfg.get("keep", 1)),
                        async_save=bool(train_cfg.get("async_checkpoints", True)))
    writer: MetricsWriter | None = None
    best_file = stage_dir / "best.json"
    tracker = BestTracker(task.main_metric, _read_json(best_file))
    last_eval = int((tracker.best or {}).get("evaluated_at", -1))
    meta = {"kind": "finetune", "stage": name, "task": task.name,
            "config": json.loads(config.to_json_best_effort()),
            "models": {"model": s_cfg.to_dict()}, "main_model": "model",
            "num_examples": batches.num_examples}
    try:
        with _mesh_context(mesh, rules):
            restored = ckpt.restore(with_shardings(abstract, shardings)) if ckpt.all_steps() \
                else None
            if restored is not None:
                state, _, start = restored
                log.info("stage %s: resumed from step %d", name, start)
            else:
                state = create_state(obj.init, tx, int(train_cfg.seed), shardings)
                if init.params is not None:
                    params = dict(gather(state.params))
                    params["model"] = _cast_tree(
                        merge_params(params["model"], init.params, keep_head, init.source),
                        s_cfg.weight_dtype)
                    state = state.replace(params=place(params, shardings.params))
                start = 0
            writer = MetricsWriter(stage_dir, enabled=run.is_main, start_step=start)
            frozen, frozen_sh = None, None
            if name == "distill":
                boxed = jax.eval_shape(obj.init_teacher, jax.random.key(0))
                frozen_sh = shd.logical_shardings(boxed, mesh, rules)
                frozen = place(_cast_tree(run.teacher.params, run.teacher.config.weight_dtype),
                               frozen_sh)
            batch_tree = {k: batch_sh for k in arrays}
            step_fn = jax.jit(make_train_step(obj, tx, schedule,
                                              int(train_cfg.get("grad_accum", 1))),
                              in_shardings=(shardings, frozen_sh, batch_tree),
                              out_shardings=(shardings, shd.replicated(mesh)),
                              donate_argnums=(0,))
            predictor = Predictor(s_cfg, mesh, shardings.params["model"],
                                  int(config.eval.get("batch_size", 64)))
            if run.is_main and run.progress:
                print(f"kdjax finetune: {task.name} stage {index + 1} {name}: "
                      f"{batches.num_examples} train rows, {steps} steps ({per_epoch}/epoch), "
                      f"eval on {run.splits.selected_on} every {every} steps, from "
                      f"{init.source}{' (keeping its head)' if keep_head else ''}", flush=True)

            def evaluate(step: int, state: Any) -> dict[str, float]:
                outputs = predictor(state.params["model"], run.splits.select.arrays)
                metrics = {k: float(v) for k, v in
                           task.evaluate(outputs, run.splits.select).items()}
                if tracker.update(step, metrics):
                    params = gather(state.params["model"])
                    if run.is_main:
                        _save_model_dir(stage_dir / "best", s_cfg, params, run.tokenizer,
                                        trained_by=f"finetune:{name}", task=task.name,
                                        label_names=list(getattr(task, "label_names", ())),
                                        step=step, selected_on=run.splits.selected_on,
                                        dev=metrics)
                if tracker.best is not None and run.is_main:
                    _write_json(best_file, {**tracker.best, "evaluated_at": step})
                return metrics

            summary = _stage_loop(run, step_fn, state, frozen, batches, batch_sh, ckpt, writer,
                                  meta, start, steps, every, evaluate, last_eval)
    finally:
        ckpt.close()
        if writer is not None:
            writer.close()
    if summary["interrupted"]:
        return {"name": name, "interrupted": True, "dir": str(stage_dir)}
    best = tracker.best or {}
    record = {"name": name, "dir": str(stage_dir), "init": init.source,
              "model_dir": str(stage_dir / "best"),
              "best_step": best.get("step"), "dev_score": best.get("score"),
              "dev": best.get("metrics", {}), "steps": steps,
              "train_examples": batches.num_examples, "last_metrics": summary["last"]}
    if run.is_main:
        _write_json(stage_dir / "stage.json", record)
    return record


def _stage_loop(run: _Run, step_fn: Any, state: Any, frozen: Any, batches: ArrayBatches,
                batch_sh: Any, ckpt: Checkpointer, writer: MetricsWriter, meta: dict,
                start: int, steps: int, every: int, evaluate: Any, last_eval: int,
                ) -> dict[str, Any]:
    train_cfg = run.config.train
    log_every, save_every = int(train_cfg.log_every), int(train_cfg.save_every)
    max_skips = int(train_cfg.get("max_consecutive_skips", 10))
    split = run.splits.selected_on
    show = run.progress and run.is_main
    preempt = Preemption()
    last: dict[str, float] = {}
    interrupted = False
    if start >= steps:  # finished training but the final evaluation may be missing
        if last_eval < steps:
            evaluate(steps, state)
        return {"interrupted": False, "last": last}
    prefetch = Prefetcher(batches, batch_sh, start)
    bar = tqdm(total=steps, initial=start, disable=not show, desc="train", dynamic_ncols=True)
    try:
        with preempt.installed():
            for step in range(start, steps):
                batch = prefetch.next(step)
                if step == start:
                    step_fn = compile_step(step_fn, state, frozen, batch)
                state, metrics = step_fn(state, frozen, batch)
                ckpt.check()  # a failed background save stops the run here
                done = step + 1
                eval_now = done % every == 0 or done == steps
                if eval_now or done % log_every == 0:
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    values["epoch"] = batches.epoch_of(done)
                    check_skips(values, max_skips, done, ckpt.directory)
                    if eval_now:
                        scores = evaluate(done, state)
                        values.update({f"{split}_{k}": v for k, v in scores.items()})
                        bar.set_postfix(loss=f"{values['loss']:.4f}",
                                        **{split: f"{scores[run.task.main_metric]:.2f}"})
                    writer.write(done, values)
                    last = values
                bar.update(1)
                if save_or_stop(done, steps, state, preempt, log_every, save_every, ckpt, meta):
                    interrupted = True
                    break
        ckpt.wait()
    finally:
        bar.close()
        prefetch.close()
    return {"interrupted": interrupted, "last": last}


def _test_scores(run: _Run, best: ModelSpec) -> dict[str, float]:
    """The final best model on the test split (evaluated once, never used to select)."""
    from kdjax.models.model import abstract_params

    if run.splits.test is None:
        return {}
    cfg, params = best.config, best.params
    with _mesh_context(run.mesh, run.rules):
        sh = shd.logical_shardings(abstract_params(cfg, boxed=True), run.mesh, run.rules)
        placed = place(_cast_tree(params, cfg.weight_dtype), sh)
        predictor = Predictor(cfg, run.mesh, sh, int(run.config.eval.get("batch_size", 64)))
        outputs = predictor(placed, run.splits.test.arrays)
    return {k: float(v) for k, v in run.task.evaluate(outputs, run.splits.test).items()}


def run_task(config: ml_collections.ConfigDict, workdir: str | epath.Path,
             progress: bool = True) -> dict[str, Any]:
    """Run the enabled stages of `config` in `workdir`; see the module doc.

    Returns (and writes to WORKDIR/results.json):
    {"task", "model", "teacher", "main_metric", "dev": {metric: v}, "test": {metric: v},
     "dev_score", "score" (main metric on test; None without a test split), "best_step",
     "model_dir" (WORKDIR/best), "selected_on": "dev" | "heldout", "stages": [...],
     "train_examples", "seconds"}.
    A finished WORKDIR returns its results.json without training; an interrupted run returns
    {"interrupted": True, ...} and resumes from its checkpoints when called again.
    """
    workdir = epath.Path(absolute(workdir))
    resolve_config_paths(config)
    results_file = workdir / RESULTS
    if bool(config.train.restart):
        if jax.process_index() == 0:
            set_aside(workdir, ("stages", "best", RESULTS))
        sync_processes("kdjax_restart")
    if results_file.exists():
        return json.loads(results_file.read_text())
    t0 = time.perf_counter()
    run = _prepare(config, workdir, progress)
    if run.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    names = plan_stages(config)
    records = []
    init = run.model
    for i, name in enumerate(names):
        stage_dir = workdir / "stages" / f"{i + 1}_{name}"
        record = _train_stage(run, i, name, init, stage_dir)
        records.append(record)
        if record.get("interrupted"):
            return {"interrupted": True, "workdir": str(workdir), "stages": records}
        if record.get("best_step") is None:
            raise TrainingError(f"stage {name} produced no evaluation on "
                                f"{run.splits.selected_on}")
        init = resolve_model(str(stage_dir / "best"), f"stage {name} best")
    final = records[-1]
    best_dir = workdir / "best"
    if run.is_main:
        _save_model_dir(best_dir, init.config, init.params, run.tokenizer,
                        trained_by="finetune", task=run.task.name,
                        label_names=list(getattr(run.task, "label_names", ())),
                        step=final["best_step"], stage=final["name"],
                        selected_on=run.splits.selected_on, dev=final["dev"])
    test = _test_scores(run, init)
    metric = run.task.main_metric
    results = {
        "task": run.task.name, "model": str(config.model),
        "teacher": str(config.distill.get("teacher", "")) or None, "main_metric": metric,
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


__all__ = ["BestTracker", "finetune_config", "plan_stages", "print_results", "resolve_model",
           "run_task", "selection_split", "split_heldout"]

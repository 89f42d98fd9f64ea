"""The training loop shared by `kdjax distill` and `kdjax pretrain`.

Order of work: validate the config and inputs (cheap, one clear line per mistake) -> mesh ->
tokenizer and data -> teacher -> abstract state and shardings -> restore or init -> jit the
step with explicit shardings under `jax.set_mesh` + logical rules -> loop (metrics fetched
every `log_every` steps only; async checkpoints every `save_every` and on SIGTERM/SIGINT) ->
final checkpoint, model directory, summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from etils import epath
from tqdm.auto import tqdm

from kdjax import sharding as shd
from kdjax.data.corpus import Prefetcher, StepBatches, resolve_sources, tokenize_corpus
from kdjax.distill.objective import build_objective
from kdjax.errors import ConfigError, DataError, KdjaxError
from kdjax.models.config import EncoderConfig
from kdjax.models.size import count_params
from kdjax.paths import absolute, resolve_config_paths
from kdjax.train.checkpoint import Checkpointer, set_aside
from kdjax.train.host_memory import advise_on_compiled
from kdjax.train.metrics import MetricsWriter
from kdjax.train.optimizer import make_optimizer
from kdjax.train.state import create_state, state_shardings, with_shardings
from kdjax.train.step import make_train_step
from kdjax.train.tasks import DistillTask, MaskingSpec, PretrainTask

log = logging.getLogger(__name__)

SECTIONS = {
    "distill": {"name", "teacher", "student", "objective", "data", "train", "mesh"},
    "pretrain": {"name", "discriminator", "generator", "pretrain", "data", "train", "mesh"},
}


class TrainingError(KdjaxError):
    """The run cannot continue (e.g. the loss stayed non-finite)."""


# -- config checks ---------------------------------------------------------------------------
def check_sections(config: ml_collections.ConfigDict, kind: str) -> None:
    unknown = sorted(set(config.keys()) - SECTIONS[kind])
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown} for `kdjax {kind}`; "
                          f"expected {sorted(SECTIONS[kind])}")
    for required in SECTIONS[kind] - {"name"}:
        if required not in config:
            raise ConfigError(f"config has no {required!r} section (needed by `kdjax {kind}`)")


# -- tokenizer -------------------------------------------------------------------------------
def resolve_tokenizer(config: Any, workdir: epath.Path, teacher_dir: Path | None,
                      sources: list[str]) -> Any:
    """The teacher's tokenizer; or an explicit data.tokenizer; or one trained (once) on the
    corpus into WORKDIR/tokenizer (for a teacher trained from scratch)."""
    from kdjax.data.tokenizer import load_tokenizer, train_wordpiece

    spec = config.data.get("tokenizer", "auto")
    if spec and spec != "auto":
        return load_tokenizer(spec)
    if teacher_dir is not None:
        try:
            return load_tokenizer(teacher_dir)
        except DataError:
            log.info("no tokenizer in %s; training one on the corpus", teacher_dir)
    local = workdir / "tokenizer"
    if (local / "tokenizer.json").exists():
        return load_tokenizer(str(local))
    if jax.process_count() > 1:
        raise ConfigError("multi-host runs need data.tokenizer (train one first with "
                          "`kdjax tokenizer train`)")
    size = int(config.data.get("vocab_size", 8000))
    return train_wordpiece(
        [s for s in sources if not s.startswith("hf:")], str(local), vocab_size=size,
        min_frequency=1, show_progress=False,
        limit_lines=config.data.get("tokenizer_lines", None) or None,
    )


# -- teacher ---------------------------------------------------------------------------------
def load_teacher(tcfg: Any) -> tuple[EncoderConfig, Any, Path | None, str]:
    """(config, numpy params, directory with its tokenizer or None, provenance string)."""
    from kdjax.modeldir import find_model_dir, load_model

    path = tcfg.get("path", "")
    overrides = {}
    if tcfg.get("dtype"):
        # The teacher is frozen: keep its weights in the compute dtype too (half the memory
        # and bandwidth in bf16); there are no updates to lose precision on.
        overrides["dtype"] = overrides["param_dtype"] = tcfg.dtype
    if path:
        p = Path(path).expanduser()
        if not p.exists() and "/" not in str(path).strip("/"):
            raise ConfigError(f"teacher.path {path!r} does not exist")
        try:
            cfg, params = load_model(p if p.exists() else path, **overrides)
        except KdjaxError as e:
            raise type(e)(f"teacher.path={path!r}: {e}") from e
        except Exception as e:
            raise ConfigError(f"teacher.path {path!r} is not a model ({type(e).__name__}: "
                              f"{str(e)[:120]})") from e
        tok_dir = find_model_dir(p) or (p if p.is_dir() else None)
        return cfg, params, tok_dir, str(path)
    if tcfg.get("init", "") != "random":
        raise ConfigError("teacher.path is empty; set it to an HF/kdjax model directory "
                          "(or teacher.init='random' for a smoke test)")
    return EncoderConfig.from_any({**tcfg.model.to_dict(), **overrides}), None, None, "random"


def _cast_tree(tree: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x).astype(dtype), tree)


def place(host_tree: Any, shardings: Any) -> Any:
    """Host numpy (identical on every process) -> global arrays with `shardings`."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: np.asarray(x)[idx]),
        host_tree, shardings,
    )


def sync_processes(name: str, timeout_s: int = 1800) -> None:
    """Barrier over all processes through the coordination service (no collectives).

    Processes finish compiling at different times (a loaded host can be minutes behind); the
    first collective's transport setup (gloo on CPU) only waits 30 s, so the step is compiled
    ahead of time and processes meet here before running it.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if client is not None:
        client.wait_at_barrier(name, timeout_s * 1000)


def compile_step(step_fn: Any, state: Any, frozen: Any, batch: Any) -> Any:
    """The step compiled ahead of time (then all processes sync), callable like `step_fn`."""
    compiled = step_fn.lower(state, frozen, batch).compile()
    advise_on_compiled(compiled, jax.default_backend())
    sync_processes("kdjax_step_compiled")
    return compiled


def gather(tree: Any) -> Any:
    """Global arrays -> full numpy on every process (for writing model dirs)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


# -- preemption ------------------------------------------------------------------------------
def stop_requested_everywhere(requested: bool) -> bool:
    """Whether any process got SIGTERM/SIGINT, on every process (a collective: call it at
    the same step everywhere). Multi-host runs must stop at one common step: a process that
    stops alone leaves the others waiting in the next step's collectives, and its checkpoint
    save waits for them - the run hangs and no checkpoint is written."""
    if jax.process_count() == 1:
        return requested
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([int(requested)], np.int32))
    return bool(np.asarray(flags).any())


class Preemption:
    """SIGTERM/SIGINT -> finish the current step, checkpoint it, stop (with several
    processes: at the next `log_every` step, the same on all of them)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.requested = True
        log.warning("signal %d: saving a checkpoint after the current step", signum)

    @contextmanager
    def installed(self) -> Iterator[Preemption]:
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no handlers
            pass
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)


# -- the run ---------------------------------------------------------------------------------
def build_run(config: Any, workdir: epath.Path, kind: str) -> dict[str, Any]:
    """Everything a run needs, validated before any compute (see module doc)."""
    check_sections(config, kind)
    train_cfg, data_cfg = config.train, config.data
    for key in ("steps", "batch_size", "log_every", "save_every"):
        if int(train_cfg.get(key, 0)) <= 0:
            raise ConfigError(f"train.{key} must be a positive integer, got {train_cfg.get(key)}")
    n_dev = int(config.mesh.get("num_devices", 0))
    if n_dev < 0 or n_dev > jax.device_count():
        raise ConfigError(f"mesh.num_devices={n_dev} but {jax.device_count()} devices exist")
    if config.mesh.get("preset", ""):  # e.g. mesh.preset=fsdp: shape and rules from it
        from kdjax.presets import apply_preset

        apply_preset(config.mesh, n_dev or jax.device_count(),
                     local_devices=min(jax.local_device_count(), n_dev or jax.device_count()))
    mesh = shd.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axes),
                         devices=jax.devices()[:n_dev] if n_dev else None)
    rules = shd.get_rules(config.mesh.get("rules", "replicated"))
    dp = math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape)
    accum = int(train_cfg.get("grad_accum", 1))
    gb = int(train_cfg.batch_size)
    if gb % (dp * accum):
        raise ConfigError(f"train.batch_size={gb} must be divisible by data-parallel devices "
                          f"({dp}) x train.grad_accum ({accum})")
    sources = resolve_sources(list(data_cfg.files) if not isinstance(data_cfg.files, str)
                              else data_cfg.files)

    teacher = None
    if kind == "distill":
        t_cfg, t_params, t_dir, t_source = load_teacher(config.teacher)
        teacher = {"config": t_cfg, "params": t_params, "source": t_source}
        # Check the objective against both models now: training a tokenizer (below) can take
        # minutes, and a head-count or feature mismatch must not wait for it.
        early_student = EncoderConfig.from_any(config.student.model.to_dict())
        build_objective(config.objective,
                        early_student.replace(vocab_size=t_cfg.vocab_size), t_cfg)
        tokenizer = resolve_tokenizer(config, workdir, t_dir, sources)
    else:
        tokenizer = resolve_tokenizer(config, workdir, None, sources)
    vocab = len(tokenizer)

    def sized(section: Any, name: str) -> EncoderConfig:
        cfg = EncoderConfig.from_any(section.model.to_dict())
        if cfg.vocab_size != vocab:
            log.info("%s: vocab_size %d -> %d (the tokenizer's)", name, cfg.vocab_size, vocab)
            cfg = cfg.replace(vocab_size=vocab)
        return cfg

    max_len = int(data_cfg.max_length)
    masking_prob = float(data_cfg.get("mlm_probability", 0.15))
    if kind == "distill":
        t_cfg = teacher["config"]
        if teacher["params"] is None:
            t_cfg = sized(config.teacher, "teacher")
        elif t_cfg.vocab_size != vocab:
            raise ConfigError(
                f"the tokenizer has {vocab} tokens but the teacher's embedding has "
                f"{t_cfg.vocab_size} rows; use the teacher's own tokenizer (data.tokenizer)"
            )
        s_cfg = sized(config.student, "student")
        if s_cfg.vocab_size != t_cfg.vocab_size:
            s_cfg = s_cfg.replace(vocab_size=t_cfg.vocab_size)
        for name, c in (("teacher", t_cfg), ("student", s_cfg)):
            if max_len > c.max_position_embeddings:
                raise ConfigError(f"data.max_length={max_len} exceeds the {name}'s "
                                  f"max_position_embeddings={c.max_position_embeddings}")
        objective = build_objective(config.objective, s_cfg, t_cfg)
        masking = MaskingSpec(tokenizer, vocab, masking_prob) if objective.needs_mlm_positions \
            else None
        task: Any = DistillTask(s_cfg, t_cfg, objective, masking)
        models = {"student": s_cfg.to_dict()}
        main_model, extra_meta = "student", {"teacher": teacher["source"],
                                             "teacher_config": t_cfg.to_dict()}
        teacher["config"] = t_cfg
    else:
        d_cfg = sized(config.discriminator, "discriminator")
        g_cfg = sized(config.generator, "generator")
        task = PretrainTask(d_cfg, g_cfg, MaskingSpec(tokenizer, vocab, masking_prob),
                            disc_weight=float(config.pretrain.get("disc_weight", 50.0)),
                            temperature=float(config.pretrain.get("temperature", 1.0)))
        models = {"disc": d_cfg.to_dict(), "gen": g_cfg.to_dict()}
        main_model, extra_meta = "disc", {"tied": {"gen": {"embeddings": "disc"}}}
    return {
        "mesh": mesh, "rules": rules, "sources": sources, "tokenizer": tokenizer, "task": task,
        "teacher": teacher, "models": models, "main_model": main_model, "meta": extra_meta,
        "global_batch": gb, "max_length": max_len, "grad_accum": accum,
    }


@dataclasses.dataclass
class Session:
    """A prepared run: data, sharded state, frozen teacher and the jitted step.

    Use inside `with session.context():` (mesh + logical-axis rules), as `train` does.
    """

    config: Any
    workdir: epath.Path
    kind: str
    run: dict[str, Any]
    batches: StepBatches
    shardings: Any
    batch_sharding: Any
    step_fn: Any
    state: Any
    frozen: Any
    start: int
    ckpt: Checkpointer

    def context(self) -> Any:
        return _mesh_context(self.run["mesh"], self.run["rules"])


@contextmanager
def _mesh_context(mesh: Any, rules: Any) -> Iterator[None]:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def prepare(config: ml_collections.ConfigDict, workdir: str | epath.Path, kind: str,
            progress: bool = True) -> Session:
    """Validate, load data and teacher, restore or initialise the sharded state, jit the step.

    Relative paths (`workdir`, and the path-valued config keys) mean relative to the current
    directory; they are made absolute here, once (see `kdjax.paths`).
    """
    workdir = epath.Path(absolute(workdir))
    resolve_config_paths(config)
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    run = build_run(config, workdir, kind)
    mesh, rules, task = run["mesh"], run["rules"], run["task"]
    train_cfg = config.train
    gb, max_len = run["global_batch"], run["max_length"]
    cache = workdir / "cache" if not str(workdir).startswith("gs://") else \
        Path.home() / ".cache" / "kdjax"
    examples = tokenize_corpus(
        run["sources"], run["tokenizer"], max_len, pack=bool(config.data.get("pack", True)),
        cache_dir=str(cache), text_field=config.data.get("text_field", "text"),
        limit_lines=config.data.get("limit_lines", None) or None,
        show_progress=progress and is_main,
    )
    batches = StepBatches(examples, gb, int(train_cfg.seed), run["tokenizer"].pad_token_id)
    tx, schedule = make_optimizer(train_cfg)
    abstract, shardings = state_shardings(task.init, tx, mesh, rules)
    batch_sh = shd.batch_sharding(mesh, 2)
    if bool(train_cfg.restart):
        if is_main:
            set_aside(workdir, ("checkpoints", "metrics.jsonl", "tensorboard"))
        sync_processes("kdjax_restart")
    ckpt = Checkpointer(workdir / "checkpoints", keep=int(train_cfg.get("keep", 3)),
                        keep_period=int(train_cfg.get("keep_period", 0)) or None,
                        async_save=bool(train_cfg.get("async_checkpoints", True)))
    # Outside the mesh context: SVD/loading is host work, and tracing init shapes under the
    # logical-axis rules would ask for shardings of a mesh-less computation.
    student_init = None if ckpt.all_steps() else _student_init(config, run)
    with _mesh_context(mesh, rules):
        restored = ckpt.restore(with_shardings(abstract, shardings)) if ckpt.all_steps() else None
        if restored is not None:
            state, _, start = restored
            log.info("resumed from step %d (%s)", start, ckpt.directory)
        else:
            state = create_state(task.init, tx, int(train_cfg.seed), shardings)
            if student_init is not None:
                params = dict(jax.device_get(state.params))
                params["student"] = student_init
                state = state.replace(params=place(params, shardings.params))
            start = 0
        frozen, frozen_sh = None, None
        teacher = run["teacher"]
        if teacher is not None:
            boxed = jax.eval_shape(task.init_teacher, jax.random.key(0))
            frozen_sh = shd.logical_shardings(boxed, mesh, rules)
            if teacher["params"] is None:  # random teacher (smoke tests only)
                frozen = jax.jit(lambda k: nn.meta.unbox(task.init_teacher(k)),
                                 out_shardings=frozen_sh)(jax.random.key(int(train_cfg.seed) + 1))
            else:
                frozen = place(_cast_tree(teacher["params"], teacher["config"].weight_dtype),
                               frozen_sh)
        batch_tree = {k: batch_sh for k in ("input_ids", "attention_mask", "token_type_ids")}
        step_fn = jax.jit(
            make_train_step(task, tx, schedule, run["grad_accum"]),
            in_shardings=(shardings, frozen_sh, batch_tree),
            out_shardings=(shardings, shd.replicated(mesh)),
            donate_argnums=(0,),
        )
    return Session(config, workdir, kind, run, batches, shardings, batch_sh, step_fn, state,
                   frozen, start, ckpt)


def train(config: ml_collections.ConfigDict, workdir: str | epath.Path, kind: str,
          progress: bool = True) -> dict[str, Any]:
    """Run `kind` ("distill" or "pretrain") in `workdir`; resume if it has checkpoints."""
    session = prepare(config, workdir, kind, progress=progress)
    run, workdir = session.run, session.workdir
    is_main = jax.process_index() == 0
    steps, tokens = int(config.train.steps), run["global_batch"] * run["max_length"]
    meta_base = {
        "kind": kind, "config": json.loads(config.to_json_best_effort()),
        "models": run["models"], "main_model": run["main_model"], **run["meta"],
        "tokens_per_step": tokens, "num_examples": session.batches.num_examples,
    }
    writer = MetricsWriter(workdir, enabled=is_main, start_step=session.start)
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        print(_start_line(kind, run["mesh"], run, session.state, session.frozen, steps,
                          session.start), flush=True)
    try:
        with session.context():
            summary = _loop(session, writer, meta_base, steps, tokens, progress and is_main)
    finally:  # also on TrainingError / Ctrl-C: finish pending saves, flush TensorBoard
        session.ckpt.close()
        writer.close()
    state = summary.pop("state")
    summary.update(_finish(workdir, run, state, is_main, summary))
    return summary


def _student_init(config: Any, run: dict) -> Any:
    """The student's initial params (host numpy) for student.init: random (None) |
    teacher_svd | PATH (a trained model, SVD-factorized to the student's ranks: e.g. LF-V1..V3
    students started from a distilled KD student)."""
    init = config.get("student", {}).get("init", "random") if run["teacher"] else "random"
    if init in ("random", ""):
        return None
    s_cfg = run["task"].student_cfg
    if init == "teacher_svd":
        teacher = run["teacher"]
        if teacher["params"] is None:
            raise ConfigError("student.init=teacher_svd needs a pretrained teacher "
                              "(teacher.path)")
        from kdjax.factorize import init_student_from_teacher

        student = init_student_from_teacher(teacher["params"], teacher["config"], s_cfg)
    else:
        if not Path(str(init)).expanduser().exists():
            raise ConfigError(f"student.init={init!r} is not one of random, teacher_svd, or an "
                              "existing model directory")
        from kdjax.factorize import factorize_params
        from kdjax.modeldir import load_model

        try:
            src_cfg, src_params = load_model(Path(str(init)).expanduser())
            student = factorize_params(src_params, src_cfg, s_cfg)
        except KdjaxError as e:
            raise type(e)(f"student.init={init!r}: {e}") from e
    return _cast_tree(student, s_cfg.weight_dtype)


def _start_line(kind: str, mesh: Any, run: dict, state: Any, frozen: Any, steps: int,
                start: int) -> str:
    trainable = count_params(state.params)
    parts = [f"kdjax {kind}: {jax.device_count()} {jax.devices()[0].platform} device(s) on "
             f"{jax.process_count()} process(es), mesh {dict(mesh.shape)}",
             f"trainable {trainable / 1e6:.2f}M params"]
    if frozen is not None:
        source = run["teacher"]["source"]
        parts.append(f"teacher {count_params(frozen) / 1e6:.2f}M params ({source})")
    parts.append(f"{run['global_batch']} x {run['max_length']} = "
                 f"{run['global_batch'] * run['max_length']} tokens/step")
    parts.append(f"steps {start}->{steps}")
    if kind == "distill":
        parts.append("objective " + "; ".join(run["task"].objective.describe()))
    return " | ".join(parts)


def _loop(session: Session, writer: MetricsWriter, meta: dict, steps: int,
          tokens_per_step: int, show: bool) -> dict[str, Any]:
    step_fn, state, frozen = session.step_fn, session.state, session.frozen
    batches, ckpt, start = session.batches, session.ckpt, session.start
    train_cfg = session.config.train
    log_every, save_every = int(train_cfg.log_every), int(train_cfg.save_every)
    max_skips = int(train_cfg.get("max_consecutive_skips", 10))
    preempt = Preemption()
    last: dict[str, Any] = {}
    prefetch = Prefetcher(batches, session.batch_sharding, start)
    bar = tqdm(total=steps, initial=start, disable=not show, desc="train", dynamic_ncols=True)
    t_mark, step_mark = None, start
    interrupted = False
    try:
        with preempt.installed():
            for step in range(start, steps):
                batch = prefetch.next(step)
                if step == start:
                    step_fn = compile_step(step_fn, state, frozen, batch)
                state, metrics = step_fn(state, frozen, batch)
                ckpt.check()  # a failed background save stops the run here
                done = step + 1
                if t_mark is None:  # exclude compilation from throughput
                    jax.block_until_ready(metrics["loss"])
                    t_mark, step_mark = time.perf_counter(), done
                if done % log_every == 0 or done == steps:
                    values = jax.device_get(metrics)  # the only host sync of the loop
                    now = time.perf_counter()
                    if done > step_mark:
                        values["tokens_per_s"] = (done - step_mark) * tokens_per_step / (
                            now - t_mark)
                    t_mark, step_mark = now, done
                    values["epoch"] = batches.epoch_of(done)
                    writer.write(done, values)
                    last = {k: float(v) for k, v in values.items()}
                    bar.set_postfix(loss=f"{last['loss']:.4f}",
                                    tok_s=f"{last.get('tokens_per_s', 0):.0f}")
                    check_skips(values, max_skips, done, ckpt.directory)
                bar.update(1)
                if save_or_stop(done, steps, state, preempt, log_every, save_every, ckpt, meta):
                    interrupted = True
                    break
        ckpt.wait()
    finally:
        bar.close()
        prefetch.close()
    return {"state": state, "last_metrics": last, "interrupted": interrupted,
            "final_step": int(jax.device_get(state.step))}


def check_skips(values: dict[str, Any], max_skips: int, done: int, ckpt_dir: Any) -> None:
    """Raise `TrainingError` once `max_skips` updates in a row were non-finite (and skipped)."""
    if values["consecutive_skips"] < max_skips:
        return
    bad = [k for k, v in values.items()
           if isinstance(v, np.ndarray | float) and not np.isfinite(v)]
    raise TrainingError(
        f"stopped at step {done}: {int(values['consecutive_skips'])} consecutive non-finite "
        f"updates (non-finite: {', '.join(bad) or 'none now'}); the last good checkpoint in "
        f"{ckpt_dir} is intact - lower train.lr or check the data"
    )


def save_or_stop(done: int, steps: int, state: Any, preempt: Preemption, log_every: int,
                 save_every: int, ckpt: Checkpointer, meta: dict) -> bool:
    """After step `done`: save when due, and whether to stop on a signal (saved first).

    Multi-host: processes agree on stopping only at steps every one of them reaches (log steps
    and the last), with one small all-gather, so that all stop at the same step.
    """
    if jax.process_count() > 1:
        stop = (done % log_every == 0 or done == steps) and \
            stop_requested_everywhere(preempt.requested)
    else:
        stop = preempt.requested
    if done % save_every == 0 or done == steps or stop:
        ckpt.save(done, state, {**meta, "step": done, "data_position": done})
    if stop:
        log.warning("stopped at step %d on signal; checkpoint saved", done)
    return stop


def _save_model_dir(target: epath.Path, cfg: EncoderConfig, params: Any, tokenizer: Any,
                    **info: Any) -> Any:
    """`save_model_dir` into a local or a remote (gs://) directory."""
    from kdjax.modeldir import save_model_dir

    if "://" not in str(target):
        return save_model_dir(Path(str(target)), cfg, params, tokenizer, **info)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = save_model_dir(Path(tmp) / target.name, cfg, params, tokenizer, **info)
        target.mkdir(parents=True, exist_ok=True)
        for f in sorted(local.rglob("*")):
            if f.is_file():
                dst = target / str(f.relative_to(local))
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(f.read_bytes())
    return target


def _finish(workdir: epath.Path, run: dict, state: Any, is_main: bool,
            summary: dict) -> dict[str, Any]:
    """Write WORKDIR/model (and generator/ for pretrain) and return the summary fields."""
    from kdjax.models.size import param_report

    params = gather(state.params)
    out: dict[str, Any] = {"workdir": str(workdir), "checkpoints": str(workdir / "checkpoints")}
    if summary.get("interrupted") or not is_main:
        return out
    main = run["main_model"]
    cfg = EncoderConfig.from_any(run["models"][main])
    provenance = {"trained_by": run["task"].kind, "step": summary["final_step"]}
    if run["teacher"] is not None:
        provenance["teacher"] = run["teacher"]["source"]
    model_dir = _save_model_dir(workdir / "model", cfg, params[main], run["tokenizer"],
                                **provenance)
    out["model_dir"] = str(model_dir)
    out["model"] = {k: v for k, v in param_report(cfg).items() if k in ("params", "fp32_mb")}
    if main == "disc":
        g_cfg = EncoderConfig.from_any(run["models"]["gen"])
        gen = {**params["gen"], "embeddings": params["disc"]["embeddings"]}
        out["generator_dir"] = str(_save_model_dir(workdir / "generator", g_cfg, gen,
                                                   run["tokenizer"], **provenance))
    if run["teacher"] is not None:
        t_report = param_report(run["teacher"]["config"])
        out["teacher"] = {"params": t_report["params"], "fp32_mb": t_report["fp32_mb"]}
        if out["model"]["params"]:
            out["compression"] = round(t_report["params"] / out["model"]["params"], 2)
    return out


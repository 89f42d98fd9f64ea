"""The one trainer: pretrain, distill, fine-tune and task KD all run through `train_and_evaluate`.

What differs between them is a `Plan` (the workload - loss bundle - of `kdjax.train.workloads`,
its batches, the frozen teacher, how the trainable params start, what to evaluate); the rest is
this module, top to bottom:

    config -> mesh (`make_mesh`) -> models (the plan's workload)
      -> state: restore the newest readable checkpoint, or init (+ the plan's initial params)
      -> jitted step (explicit shardings, state donated, frozen teacher as its own input)
      -> loop: prefetched batches, metrics averaged over each log interval, hooks
         (evaluate-and-keep-best), checkpoints, preemption
      -> the final state (callers write their model directories from it)

`prepare` does everything up to the loop and returns a `Session` (benchmarks and tests drive
its step themselves); `run` is the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from tqdm.auto import tqdm

from kdjax import sharding as shd
from kdjax.data.corpus import Prefetcher
from kdjax.errors import ConfigError, KdjaxError
from kdjax.paths import absolute
from kdjax.storage import workdir_lock
from kdjax.train.checkpoint import Checkpointer, set_aside
from kdjax.train.host_memory import advise_on_compiled, sync_each_step
from kdjax.train.metrics import MetricsWriter
from kdjax.train.optimizer import make_optimizer
from kdjax.train.placement import cast_tree, mesh_context, overlay, place, sync_processes
from kdjax.train.preemption import Preemption
from kdjax.train.state import create_state, random_params, state_shardings, with_shardings
from kdjax.train.step import make_train_step

log = logging.getLogger(__name__)

# Counters that are read at the log step, not averaged over the interval.
LAST_VALUE_METRICS = ("skipped_steps", "consecutive_skips")


class TrainingError(KdjaxError):
    """The run cannot continue (e.g. the loss stayed non-finite)."""


class Hook(Protocol):
    """Work at some steps of the loop, e.g. evaluate and keep the best model.

    `due(step, steps)` says whether to run after `step`; calling it returns metrics to log
    (prefixed by the hook). `last_step` is the step it last ran at (restored by the hook from
    its own files on resume): the trainer runs a hook with `at_end` once more after the final
    step if it has not run there, which also finishes a run that stopped between its last
    training step and that evaluation.
    """

    at_end: bool
    last_step: int

    def due(self, step: int, steps: int) -> bool: ...

    def __call__(self, step: int, state: Any, frozen: Any) -> dict[str, float]: ...


@dataclasses.dataclass
class Plan:
    """What to train (everything that differs between the commands).

    Attributes:
      workload: see `kdjax.train.workloads`.
      batches: the step-indexed global batches: `rows(step, rows)`, `global_batch`,
        `batch_rows(step)` (rows of that step's batch), `num_examples`, `epoch_of(step)`,
        `tokens(step) -> (padded, real)`, `keys` and `shapes()` (the batch shapes a run will
        see; several with length buckets).
      train: the `train` config section, with `steps` resolved.
      meta: JSON saved beside every checkpoint.
      teacher: frozen teacher params (host numpy), "random" (smoke tests) or None.
      teacher_dtype: the dtype the teacher's weights are kept in.
      initial_params: `(abstract params) -> partial host tree` laid over the fresh init of a
        new run (student.init, a pretrained encoder under a new task head); None = random.
      hooks: run in the loop (see `Hook`).
    """

    workload: Any
    batches: Any
    train: Any
    meta: dict[str, Any]
    teacher: Any = None
    teacher_dtype: Any = None
    initial_params: Callable[[Any], Any] | None = None
    hooks: Sequence[Hook] = ()


@dataclasses.dataclass
class Program:
    """The jitted step and everything its shardings are made of (no data, no weights)."""

    step_fn: Any
    abstract: Any  # TrainState of ShapeDtypeStructs
    shardings: Any  # TrainState of NamedShardings
    frozen_shardings: Any  # the teacher's, or None
    batch_sharding: Any
    tx: Any
    schedule: Any
    frozen_abstract: Any = None  # the teacher's ShapeDtypeStructs (its weight dtype), or None
    # eval_shape of the workload's inits with their logical-axis boxes (traced once, reused by
    # the host-side random init)
    boxed_params: Any = None
    boxed_teacher: Any = None

    def abstract_args(self, shape: dict[str, tuple[tuple[int, ...], str]]) -> tuple:
        """(state, teacher, batch) as ShapeDtypeStructs carrying their shardings, for
        `step_fn.lower(*args)`: `shape` is one of `Plan.batches.shapes()`. What `kdjax compile`
        compiles for a TPU topology without any weights or data."""
        state = with_shardings(self.abstract, self.shardings)
        frozen = None if self.frozen_abstract is None else \
            with_shardings(self.frozen_abstract, self.frozen_shardings)
        return state, frozen, batch_specs(shape, self.batch_sharding)


def batch_specs(shape: dict[str, tuple[tuple[int, ...], str]], sharding: Any) -> dict[str, Any]:
    """{name: ((B, ...), dtype)} -> {name: ShapeDtypeStruct with the batch sharding}."""
    return {k: jax.ShapeDtypeStruct(s, np.dtype(d), sharding=sharding)
            for k, (s, d) in shape.items()}


@dataclasses.dataclass
class Session:
    """A prepared run: data, sharded state, frozen teacher and the jitted step. Use inside
    `with session.context():` (mesh + logical-axis rules), as `run` does."""

    plan: Plan
    mesh: Any
    rules: Any
    workdir: epath.Path
    program: Program
    state: Any
    frozen: Any
    start: int
    ckpt: Checkpointer

    @property
    def step_fn(self) -> Any:
        return self.program.step_fn

    @property
    def batches(self) -> Any:
        return self.plan.batches

    @property
    def batch_sharding(self) -> Any:
        return self.program.batch_sharding

    def context(self) -> Any:
        return mesh_context(self.mesh, self.rules)


# -- mesh ---------------------------------------------------------------------------------------
def make_mesh(mesh_cfg: Any, train_cfg: Any, devices: Sequence[Any] | None = None
              ) -> tuple[Any, Any]:
    """(mesh, logical-axis rules) from the `mesh` section; checks that the global batch splits
    over the data-parallel devices and `train.grad_accum`.

    `devices`: the devices to lay the mesh over (default `jax.devices()`); `kdjax compile`
    passes a TPU topology's compile-only devices, so a run and its compile share this code.
    """
    pool = list(jax.devices() if devices is None else devices)
    n_dev = int(mesh_cfg.num_devices)
    if n_dev < 0 or n_dev > len(pool):
        raise ConfigError(f"mesh.num_devices={n_dev} but {len(pool)} devices exist")
    chosen = pool[:n_dev] if n_dev else pool
    if mesh_cfg.preset:  # e.g. mesh.preset=fsdp: shape and rules from it
        from kdjax.presets import apply_preset

        if devices is None:
            local = min(jax.local_device_count(), len(chosen))
        else:  # a topology: the devices of the first host
            local = sum(d.process_index == chosen[0].process_index for d in chosen)
        apply_preset(mesh_cfg, len(chosen), local_devices=local)
    mesh = shd.make_mesh(tuple(mesh_cfg.shape), tuple(mesh_cfg.axes), devices=chosen,
                         whole=len(chosen) == len(pool))
    rules = shd.get_rules(mesh_cfg.rules)
    dp = math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape)
    accum, gb = int(train_cfg.grad_accum), int(train_cfg.batch_size)
    if gb <= 0 or gb % (dp * accum):
        raise ConfigError(f"train.batch_size={gb} must be divisible by data-parallel devices "
                          f"({dp}) x train.grad_accum ({accum})")
    return mesh, rules


# train keys that are floats: (low, high, low included, high included); F32_MAX bounds what
# the step computes in float32 (lr=1e39 would be inf there).
F32_MAX = float(np.finfo(np.float32).max)
TRAIN_FLOATS = {
    "lr": (0.0, F32_MAX, False, True),
    "end_lr_factor": (0.0, F32_MAX, True, True),
    "weight_decay": (0.0, F32_MAX, True, True),
    "b1": (0.0, 1.0, True, False),
    "b2": (0.0, 1.0, True, False),
    "eps": (0.0, F32_MAX, False, True),
    "clip_norm": (0.0, F32_MAX, True, True),
    "warmup_steps": (0.0, F32_MAX, True, True),
}


def check_train_section(train_cfg: Any) -> None:
    """One line per mistake in the cadence keys and the optimizer's floats (before any data
    is read)."""
    from kdjax.config_lib import check_float

    for key in ("batch_size", "log_every", "save_every", "grad_accum"):
        if int(train_cfg[key]) <= 0:
            raise ConfigError(f"train.{key} must be a positive integer, got {train_cfg[key]}")
    for key, bounds in TRAIN_FLOATS.items():
        if key in train_cfg:
            check_float(f"train.{key}", train_cfg[key], *bounds)
    if int(train_cfg.max_consecutive_skips) <= 0:
        raise ConfigError("train.max_consecutive_skips must be a positive integer, got "
                          f"{train_cfg.max_consecutive_skips}")
    if float(train_cfg.lr) > 1.0:
        log.warning("train.lr=%g is far above any learning rate that trains a transformer "
                    "(1e-5 .. 1e-2); expect the run to diverge", float(train_cfg.lr))


# -- the step -----------------------------------------------------------------------------------
def build_program(workload: Any, train_cfg: Any, mesh: Any, rules: Any,
                  batch_keys: Sequence[str]) -> Program:
    """The sharded, jitted train step of `workload`, from shapes only (call it under
    `mesh_context`). The state is donated; the frozen teacher is a separate, non-donated input
    with its own shardings; batch arrays are split along the data-parallel mesh axes."""
    tx, schedule = make_optimizer(train_cfg)
    boxed = jax.eval_shape(workload.init, jax.random.key(0))
    abstract, shardings = state_shardings(workload.init, tx, mesh, rules, boxed=boxed)
    boxed_teacher = jax.eval_shape(workload.init_teacher, jax.random.key(0))
    frozen_sh = None if boxed_teacher is None else \
        shd.logical_shardings(boxed_teacher, mesh, rules)
    frozen_abstract = None if boxed_teacher is None else shd.unbox(boxed_teacher)
    batch_sh = shd.batch_sharding(mesh, 1)  # [B, ...] arrays of any rank: rows split
    step_fn = jax.jit(
        make_train_step(workload, tx, schedule, int(train_cfg.grad_accum)),
        in_shardings=(shardings, frozen_sh, {k: batch_sh for k in batch_keys}),
        out_shardings=(shardings, shd.replicated(mesh)),
        donate_argnums=(0,),
    )
    return Program(step_fn, abstract, shardings, frozen_sh, batch_sh, tx, schedule,
                   frozen_abstract, boxed, boxed_teacher)


class CompiledSteps:
    """The step compiled ahead of time, once per batch shape (one per length bucket).

    Compiling ahead of time lets processes meet at a barrier before the first collective (a
    loaded host can be minutes behind; gloo's transport setup waits 30 s): with several
    processes every shape of `batches.shapes()` is compiled before the first step.
    """

    def __init__(self, step_fn: Any, state: Any, frozen: Any, shapes: Sequence[dict],
                 batch_sharding: Any, precompile: bool):
        self._step_fn, self._frozen = step_fn, frozen
        self._compiled: dict[tuple, Any] = {}
        self._sync: dict[tuple, bool] = {}  # wait for the step before the next (XLA:CPU)
        self._state_spec = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        self._batch_sharding = batch_sharding
        if precompile:
            for shape in shapes:
                self._compile(batch_specs(shape, batch_sharding))
            sync_processes("kdjax_step_compiled")

    @staticmethod
    def _key(batch: dict) -> tuple:
        return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))

    def _compile(self, batch: dict) -> Any:
        key = self._key(batch)
        if key not in self._compiled:
            lowered = self._step_fn.lower(self._state_spec, self._frozen, batch)
            compiled = lowered.compile()
            backend = jax.default_backend()
            advise_on_compiled(compiled, backend)
            self._compiled[key] = compiled
            self._sync[key] = sync_each_step(compiled, backend)
        return self._compiled[key]

    def compiled(self, batch: dict) -> Any:
        """The compiled step for `batch`'s shapes (compiling it on first use)."""
        return self._compile(batch)

    def syncs(self, batch: dict) -> bool:
        """Whether a call with `batch`'s shapes waits for the step (`sync_each_step`)."""
        self._compile(batch)
        return self._sync[self._key(batch)]

    def __call__(self, state: Any, frozen: Any, batch: dict) -> Any:
        """(state, frozen, batch) -> the step's outputs; on XLA:CPU with large temporaries,
        returns once the step has run (see `kdjax.train.host_memory.sync_each_step`)."""
        out = self._compile(batch)(state, frozen, batch)
        if self._sync[self._key(batch)]:
            jax.block_until_ready(out)
        return out


# -- state --------------------------------------------------------------------------------------
def open_checkpoints(workdir: epath.Path, train_cfg: Any) -> Checkpointer:
    """WORKDIR/checkpoints; with `train.restart`, earlier checkpoints and metrics are moved
    aside first (`set_aside`)."""
    if bool(train_cfg.restart):
        if jax.process_index() == 0:
            set_aside(workdir, ("checkpoints", "metrics.jsonl", "tensorboard"))
        sync_processes("kdjax_restart")
    return Checkpointer(workdir / "checkpoints", keep=int(train_cfg.keep),
                        keep_period=int(train_cfg.keep_period) or None,
                        async_save=bool(train_cfg.async_checkpoints))


def restore_or_init(plan: Plan, program: Program, ckpt: Checkpointer) -> tuple[Any, int]:
    """(state, start step): the newest readable checkpoint, else a fresh state - created
    directly into its shardings - with the plan's initial params laid over it."""
    restored = ckpt.restore(with_shardings(program.abstract, program.shardings))
    if restored is not None:
        state, _, start = restored
        log.info("resumed from step %d (%s)", start, ckpt.directory)
        return state, start
    state = create_state(plan.workload.init, program.tx, int(plan.train.seed), program.shardings,
                         boxed=program.boxed_params)
    if plan.initial_params is not None:
        partial = plan.initial_params(program.abstract.params)
        if partial:
            state = state.replace(params=overlay(state.params, program.shardings.params,
                                                 partial, "initial params"))
    return state, 0


def place_teacher(plan: Plan, program: Program) -> Any:
    """The frozen teacher on the mesh (None without one)."""
    if plan.teacher is None or program.frozen_shardings is None:
        return None
    if isinstance(plan.teacher, str) and plan.teacher == "random":  # smoke tests only
        return random_params(plan.workload.init_teacher, int(plan.train.seed) + 1,
                             program.frozen_shardings, boxed=program.boxed_teacher)
    return place(cast_tree(plan.teacher, plan.teacher_dtype), program.frozen_shardings)


def prepare(plan: Plan, mesh: Any, rules: Any, workdir: str | epath.Path) -> Session:
    """Checkpoints, state (restored or initialised), teacher, jitted step: ready to `run`.
    Holds the workdir lock while it opens (with `train.restart`: moves aside) checkpoints."""
    workdir = epath.Path(absolute(workdir))
    with workdir_lock(workdir):
        return _prepare(plan, mesh, rules, workdir)


def _prepare(plan: Plan, mesh: Any, rules: Any, workdir: epath.Path) -> Session:
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
    ckpt = open_checkpoints(workdir, plan.train)
    with mesh_context(mesh, rules):
        program = build_program(plan.workload, plan.train, mesh, rules, plan.batches.keys)
        state, start = restore_or_init(plan, program, ckpt)
        frozen = place_teacher(plan, program)
    return Session(plan, mesh, rules, workdir, program, state, frozen, start, ckpt)


# -- the loop -----------------------------------------------------------------------------------
@jax.jit
def _add(total: Any, metrics: Any) -> Any:
    return jax.tree_util.tree_map(jnp.add, total, metrics)


class IntervalMean:
    """Training metrics summed on device every step, fetched and averaged at log steps (the
    logged value describes the whole interval, not its last step); counters keep their last
    value. The only host sync of the loop is `result()`."""

    def __init__(self) -> None:
        self._sum: Any = None
        self._last: Any = None
        self._n = 0

    def add(self, metrics: dict[str, Any]) -> None:
        self._sum = metrics if self._sum is None else _add(self._sum, metrics)
        self._last = metrics
        self._n += 1

    def result(self) -> dict[str, float]:
        if self._n == 0:
            return {}
        total, last = jax.device_get((self._sum, self._last))
        out = {k: float(v) / self._n for k, v in total.items()}
        out.update({k: float(last[k]) for k in LAST_VALUE_METRICS if k in last})
        self._sum, self._last, self._n = None, None, 0
        return out


def check_skips(values: dict[str, Any], max_skips: int, done: int, where: Any) -> None:
    """Raise `TrainingError` once `max_skips` updates in a row were non-finite (and skipped).
    `values`: the step's metrics (host); `where`: the `Checkpointer` (its last finite
    checkpoint is named) or a directory."""
    if values["consecutive_skips"] < max_skips:
        return
    bad = [k for k, v in values.items()
           if isinstance(v, np.ndarray | float | np.floating) and not np.isfinite(v)]
    last = where.describe_last_finite() if hasattr(where, "describe_last_finite") else \
        f"the last good checkpoint in {where} is intact: lower train.lr and run again"
    raise TrainingError(
        f"stopped at step {done}: {int(values['consecutive_skips'])} consecutive non-finite "
        f"updates (non-finite: {', '.join(bad) or 'none now'}); {last}, or check the data"
    )


class SkipWatch:
    """The consecutive-skip limit, counted at every step without a device sync per step: the
    count of step k is read after step k+1 was dispatched (step k has finished or is about to;
    the device keeps working on k+1). `flush` checks the last step read so far."""

    def __init__(self, max_skips: int, ckpt: Any):
        self.max_skips, self.ckpt = max_skips, ckpt
        self._pending: tuple[int, dict] | None = None

    def push(self, done: int, metrics: dict[str, Any]) -> None:
        """Record step `done`'s (device) metrics; checks the step before it."""
        self.flush()
        self._pending = (done, metrics)

    def flush(self) -> None:
        if self._pending is None:
            return
        done, metrics = self._pending
        self._pending = None
        if int(jax.device_get(metrics["consecutive_skips"])) >= self.max_skips:
            values = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
            check_skips(values, self.max_skips, done, self.ckpt)


def save_or_stop(done: int, steps: int, state: Any, preempt: Preemption, save_every: int,
                 ckpt: Any, meta: dict, skips: Any = None) -> bool:
    """After step `done`: save when due (every `save_every`, the last step, before a stop);
    returns whether to stop on a signal (every process gets the same answer).

    `skips`: the step's consecutive-skip count (device scalar): while updates are being
    skipped, a scheduled save waits for the next due one (the state of a diverging run is not
    worth a checkpoint slot); a stop and the last step still save. The checkpointer refuses
    non-finite values.
    """
    stop = preempt.should_stop(done)
    if done % save_every == 0 or done == steps or stop:
        skipping = 0 if skips is None else int(jax.device_get(skips))
        if skipping and not stop and done != steps:
            log.warning("step %d: not saving a checkpoint during %d consecutive skipped "
                        "(non-finite) updates", done, skipping)
        else:
            ckpt.save(done, state, {**meta, "step": done, "data_position": done})
    if stop:
        log.warning("stopped at step %d on signal; checkpoint saved", done)
    return stop


def run(session: Session, progress: bool = True) -> dict[str, Any]:
    """Train from `session.start` to `plan.train.steps`. Returns {"state", "last_metrics",
    "interrupted", "signal" (the signal number that stopped an interrupted run, else None),
    "final_step"}; writes metrics.jsonl / TensorBoard and checkpoints."""
    with workdir_lock(session.workdir):
        return _run(session, progress)


def _run(session: Session, progress: bool) -> dict[str, Any]:
    plan, ckpt = session.plan, session.ckpt
    cfg, batches = plan.train, plan.batches
    steps, log_every, save_every = int(cfg.steps), int(cfg.log_every), int(cfg.save_every)
    max_skips = int(cfg.max_consecutive_skips)
    is_main = jax.process_index() == 0
    writer = MetricsWriter(session.workdir, enabled=is_main, start_step=session.start)
    state, frozen = session.state, session.frozen
    preempt, mean = Preemption(), IntervalMean()
    watch = SkipWatch(max_skips, ckpt)
    last: dict[str, float] = {}
    interrupted = False
    bar = tqdm(total=steps, initial=session.start, disable=not (progress and is_main),
               desc="train", dynamic_ncols=True)
    prefetch = None
    try:
        with session.context(), preempt.installed():
            step_fn = CompiledSteps(session.step_fn, state, frozen, batches.shapes(),
                                    session.batch_sharding, precompile=jax.process_count() > 1)
            prefetch = Prefetcher(batches, session.batch_sharding, session.start)
            t_mark, tokens, rows = None, np.zeros(2), 0
            for step in range(session.start, steps):
                batch = prefetch.next(step)
                state, metrics = step_fn(state, frozen, batch)
                ckpt.check()  # a failed background save stops the run here
                done = step + 1
                watch.push(done, metrics)  # stops at the step the skip limit is reached
                mean.add(metrics)
                if t_mark is None:  # throughput excludes compilation
                    jax.block_until_ready(metrics["loss"])
                    t_mark = time.perf_counter()
                else:
                    tokens += batches.tokens(step)
                    rows += batches.batch_rows(step)
                hooked: dict[str, float] = {}
                for hook in plan.hooks:
                    if hook.due(done, steps):
                        hooked.update(hook(done, state, frozen))
                if done % log_every == 0 or done == steps or hooked:
                    values = mean.result()
                    now = time.perf_counter()
                    if tokens[0] > 0:
                        values["tokens_per_s"] = tokens[0] / (now - t_mark)
                        values["real_tokens_per_s"] = tokens[1] / (now - t_mark)
                        values["examples_per_s"] = rows / (now - t_mark)
                    t_mark, tokens, rows = now, np.zeros(2), 0
                    values["epoch"] = batches.epoch_of(done)
                    values.update(hooked)
                    writer.write(done, values)
                    last = values
                    bar.set_postfix(loss=f"{values['loss']:.4f}",
                                    tok_s=f"{values.get('tokens_per_s', 0):.0f}")
                bar.update(1)
                if save_or_stop(done, steps, state, preempt, save_every, ckpt, plan.meta,
                                metrics["consecutive_skips"]):
                    interrupted = True
                    break
            if not interrupted:
                watch.flush()
                for hook in plan.hooks:  # e.g. the final evaluation after a resume
                    if hook.at_end and hook.last_step < steps:
                        last.update(hook(steps, state, frozen))  # summary only: the step's
                        # metrics row is already written
            ckpt.wait()
    finally:  # also on TrainingError / Ctrl-C: finish pending saves, flush TensorBoard
        bar.close()
        if prefetch is not None:
            prefetch.close()
        ckpt.close()
        writer.close()
    return {"state": state, "last_metrics": last, "interrupted": interrupted,
            "signal": preempt.signum if interrupted else None,
            "final_step": int(jax.device_get(state.step))}


def train_and_evaluate(plan: Plan, mesh: Any, rules: Any, workdir: str | epath.Path,
                       progress: bool = True) -> dict[str, Any]:
    """`prepare` + `run`: see the module doc."""
    return run(prepare(plan, mesh, rules, workdir), progress=progress)

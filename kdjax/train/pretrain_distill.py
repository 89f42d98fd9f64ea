"""`kdjax pretrain` and `kdjax distill`: training on an unlabeled corpus.

Both are `Plan`s for the one trainer (`kdjax.train.trainer`): a `PretrainWorkload` (ELECTRA
generator + discriminator) or a `DistillWorkload` (frozen teacher -> student, a configurable
objective) over the step-indexed corpus batches. This module validates the config and inputs
first (cheap, one clear line per mistake: sections, teacher, objective against both models,
tokenizer, lengths), then builds the plan, runs it, and writes WORKDIR/model (and
WORKDIR/generator for pre-training) from the final state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from kdjax.config_lib import check_float, pretrain_config
from kdjax.data.corpus import StepBatches, group_permutation, resolve_sources, tokenize_corpus
from kdjax.distill.objective import build_objective
from kdjax.errors import ConfigError, DataError, KdjaxError, StorageError
from kdjax.modeldir import resolve_model, save_model_dir
from kdjax.models.config import EncoderConfig
from kdjax.models.size import count_params, param_report
from kdjax.paths import absolute, resolve_config_paths
from kdjax.storage import atomic_write_text, describe, workdir_lock
from kdjax.train import trainer
from kdjax.train.checkpoint import set_aside
from kdjax.train.placement import cast_tree, gather
from kdjax.train.workloads import DistillWorkload, MaskingSpec, PretrainWorkload

log = logging.getLogger(__name__)

SECTIONS = {
    "distill": {"name", "teacher", "student", "objective", "data", "train", "mesh"},
    "pretrain": {"name", "discriminator", "generator", "pretrain", "data", "train", "mesh"},
}


def check_sections(config: ml_collections.ConfigDict, kind: str) -> None:
    unknown = sorted(set(config.keys()) - SECTIONS[kind])
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown} for `kdjax {kind}`; "
                          f"expected {sorted(SECTIONS[kind])}")
    for required in SECTIONS[kind] - {"name"}:
        if required not in config:
            raise ConfigError(f"config has no {required!r} section (needed by `kdjax {kind}`)")


def resolve_tokenizer(config: Any, workdir: epath.Path, teacher_dir: Path | None,
                      sources: list[str]) -> Any:
    """The teacher's tokenizer; or an explicit data.tokenizer; or one trained (once) on the
    corpus into WORKDIR/tokenizer (for a teacher trained from scratch)."""
    from kdjax.data.tokenizer import load_tokenizer, train_wordpiece

    spec = config.data.tokenizer
    if spec and spec != "auto":
        return load_tokenizer(spec)
    if teacher_dir is not None:
        try:
            return load_tokenizer(teacher_dir)
        except DataError:
            log.info("no tokenizer in %s; training one on the corpus", teacher_dir)
    local = workdir / "tokenizer"
    if (local / "tokenizer.json").exists():
        tokenizer, broken = _own_tokenizer(local)
        if broken is None:
            return tokenizer
        if not bool(config.train.restart):
            raise StorageError(f"{local} (trained by an earlier run in this workdir) is "
                               f"unreadable ({broken}); run again with "
                               "--config.train.restart=True to train it again (the old one is "
                               f"moved aside), or delete {local}")
        if jax.process_index() == 0:
            set_aside(workdir, ("tokenizer",))
    if jax.process_count() > 1:
        raise ConfigError("multi-host runs need data.tokenizer (train one first with "
                          "`kdjax tokenizer train`)")
    return train_wordpiece(
        [s for s in sources if not s.startswith("hf:")], str(local),
        vocab_size=int(config.data.vocab_size), min_frequency=1, show_progress=False,
        limit_lines=int(config.data.tokenizer_lines) or None,
    )


def _own_tokenizer(directory: epath.Path) -> tuple[Any, str | None]:
    """(tokenizer, None) from the tokenizer a run trained into `directory`, or (None, why it
    cannot be used). A cut-short tokenizer.json must not fall back silently to vocab.txt
    (another tokenizer), so the JSON is parsed first."""
    from kdjax.data.tokenizer import load_tokenizer

    try:
        json.loads((directory / "tokenizer.json").read_text())
        return load_tokenizer(str(directory)), None
    except KdjaxError as e:
        return None, str(e)
    except (OSError, ValueError) as e:
        return None, describe(e)


def teacher_overrides(tcfg: Any) -> dict[str, str]:
    """EncoderConfig fields the `teacher` section sets on whatever teacher is loaded."""
    if not tcfg.dtype:
        return {}
    # The teacher is frozen: keep its weights in the compute dtype too (half the memory and
    # bandwidth in bf16); there are no updates to lose precision on.
    return {"dtype": tcfg.dtype, "param_dtype": tcfg.dtype}


def load_teacher(tcfg: Any) -> dict[str, Any]:
    """{"config", "params" (host numpy, or None for teacher.init=random), "dir" (its
    tokenizer's), "source"}."""
    overrides = teacher_overrides(tcfg)
    if tcfg.path:
        spec = resolve_model(str(tcfg.path), "teacher.path", **overrides)
        if spec.params is None:
            raise ConfigError(f"teacher.path={tcfg.path!r} is a size config; give a trained "
                              "model (or teacher.init='random' with teacher.model for a smoke "
                              "test)")
        return {"config": spec.config, "params": spec.params, "dir": spec.tok_dir,
                "source": str(tcfg.path)}
    if tcfg.init != "random":
        raise ConfigError("teacher.path is empty; set it to an HF/kdjax model directory "
                          "(or teacher.init='random' for a smoke test)")
    return {"config": EncoderConfig.from_any({**tcfg.model.to_dict(), **overrides}),
            "params": None, "dir": None, "source": "random"}


@dataclasses.dataclass
class CorpusRun:
    """A validated pretrain/distill run: the plan's pieces plus what the summary needs."""

    kind: str
    mesh: Any
    rules: Any
    sources: list[str]
    tokenizer: Any
    workload: Any
    teacher: dict[str, Any] | None
    models: dict[str, dict]
    main_model: str
    meta: dict[str, Any]
    global_batch: int
    max_length: int


def check_run_config(config: Any, kind: str) -> None:
    """Sections and the `train` keys of a pretrain/distill config (one line per mistake)."""
    check_sections(config, kind)
    trainer.check_train_section(config.train)
    if int(config.train.steps) <= 0:
        raise ConfigError(f"train.steps must be a positive integer, got {config.train.steps}")
    big = trainer.F32_MAX
    if "mlm_probability" in config.data:
        check_float("data.mlm_probability", config.data.mlm_probability, 0.0, 1.0, False, False)
    if kind == "pretrain":
        for key, bounds in (("disc_weight", (0.0, big)), ("temperature", (0.0, big, False)),
                            ("temperature_start", (0.0, big, False)),
                            ("temperature_anneal", (0.0, 1.0))):
            if key in config.pretrain:
                check_float(f"pretrain.{key}", config.pretrain[key], *bounds)


def _sized(section: Any, name: str, vocab: int) -> EncoderConfig:
    """The section's model with the tokenizer's vocabulary size."""
    cfg = EncoderConfig.from_any(section.model.to_dict())
    if cfg.vocab_size != vocab:
        log.info("%s: vocab_size %d -> %d (the tokenizer's)", name, cfg.vocab_size, vocab)
        cfg = cfg.replace(vocab_size=vocab)
    return cfg


def make_workload(config: Any, kind: str, tokenizer: Any, vocab: int,
                  teacher_cfg: EncoderConfig | None = None
                  ) -> tuple[Any, dict[str, dict], str, dict[str, Any]]:
    """(workload, model configs, main model, checkpoint meta) of a validated config.

    Shapes only: `tokenizer` supplies the [MASK] / special ids masking bakes into the step
    (`MaskingSpec`), `vocab` the embedding rows, `teacher_cfg` (distill) the resolved
    teacher. `build_run` passes the real ones; `kdjax compile` passes the configs' own.
    """
    max_len = int(config.data.max_length)
    masking_prob = float(config.data.mlm_probability)
    if kind == "distill":
        t_cfg = teacher_cfg
        assert t_cfg is not None
        s_cfg = _sized(config.student, "student", vocab)
        if s_cfg.vocab_size != t_cfg.vocab_size:
            s_cfg = s_cfg.replace(vocab_size=t_cfg.vocab_size)
        for name, c in (("teacher", t_cfg), ("student", s_cfg)):
            if max_len > c.max_position_embeddings:
                raise ConfigError(f"data.max_length={max_len} exceeds the {name}'s "
                                  f"max_position_embeddings={c.max_position_embeddings}")
        objective = build_objective(config.objective, s_cfg, t_cfg)
        masking = MaskingSpec(tokenizer, vocab, masking_prob) if objective.needs_mlm_positions \
            else None
        workload: Any = DistillWorkload(s_cfg, t_cfg, objective, masking)
        return workload, {"student": s_cfg.to_dict()}, "student", \
            {"teacher_config": t_cfg.to_dict()}
    d_cfg = _sized(config.discriminator, "discriminator", vocab)
    g_cfg = _sized(config.generator, "generator", vocab)
    # Through `pretrain_config`: a hand-written section that predates the annealing keys gets
    # their defaults (no annealing), and a misspelt key is an error naming it.
    pre = pretrain_config(**config.pretrain.to_dict())
    workload = PretrainWorkload(
        d_cfg, g_cfg, MaskingSpec(tokenizer, vocab, masking_prob),
        disc_weight=float(pre["disc_weight"]), temperature=float(pre["temperature"]),
        temperature_start=float(pre["temperature_start"]),
        anneal_steps=int(float(pre["temperature_anneal"]) * int(config.train.steps)))
    return workload, {"disc": d_cfg.to_dict(), "gen": g_cfg.to_dict()}, "disc", \
        {"tied": {"gen": {"embeddings": "disc"}}}


def build_run(config: Any, workdir: epath.Path, kind: str) -> CorpusRun:
    """Everything a run needs, validated before any compute (see module doc)."""
    check_run_config(config, kind)
    mesh, rules = trainer.make_mesh(config.mesh, config.train)
    data_cfg = config.data
    sources = resolve_sources(list(data_cfg.files) if not isinstance(data_cfg.files, str)
                              else data_cfg.files)

    teacher = None
    if kind == "distill":
        teacher = load_teacher(config.teacher)
        # Check the objective against both models now: training a tokenizer (below) can take
        # minutes, and a head-count or feature mismatch must not wait for it.
        early_student = EncoderConfig.from_any(config.student.model.to_dict())
        build_objective(config.objective, early_student.replace(
            vocab_size=teacher["config"].vocab_size), teacher["config"])
        tokenizer = resolve_tokenizer(config, workdir, teacher["dir"], sources)
    else:
        tokenizer = resolve_tokenizer(config, workdir, None, sources)
    vocab = len(tokenizer)

    t_cfg = None
    if teacher is not None:
        t_cfg = teacher["config"]
        if teacher["params"] is None:
            t_cfg = _sized(config.teacher, "teacher", vocab)
            t_cfg = t_cfg.replace(**teacher_overrides(config.teacher))
        elif vocab > t_cfg.vocab_size:  # fewer is fine: multilingual-E5 has 250,037 rows for
            raise ConfigError(          # its 250,002 pieces
                f"the tokenizer has {vocab} tokens but the teacher's embedding has "
                f"{t_cfg.vocab_size} rows; use the teacher's own tokenizer (data.tokenizer)"
            )
        teacher["config"] = t_cfg
    workload, models, main, meta = make_workload(config, kind, tokenizer, vocab, t_cfg)
    if teacher is not None:
        meta = {"teacher": teacher["source"], **meta}
    return CorpusRun(kind, mesh, rules, sources, tokenizer, workload, teacher, models, main,
                     meta, int(config.train.batch_size), int(data_cfg.max_length))


def init_layers(config: Any) -> list[int] | None:
    """`student.layers`: the teacher layers (1-based) a teacher_svd student starts from; unset or
    empty = every k-th (`kdjax.factorize.every_kth`)."""
    layers = config.student.get("layers") or ()
    if isinstance(layers, str) or not all(isinstance(x, int) and not isinstance(x, bool)
                                          for x in layers):
        raise ConfigError(f"student.layers must be teacher layer numbers such as (1, 5, 8, 12), "
                          f"got {layers!r}")
    return list(layers) or None


def student_init(config: Any, run: CorpusRun) -> Any:
    """The student's initial params (host numpy) for student.init: random (None) |
    teacher_svd | PATH (a trained model, SVD-factorized to the student's ranks: e.g. LF-V1..V3
    students started from a distilled KD student)."""
    init = config.student.init if run.teacher else "random"
    if init in ("random", ""):
        return None
    s_cfg = run.workload.student_cfg
    if init == "teacher_svd":
        if run.teacher["params"] is None:
            raise ConfigError("student.init=teacher_svd needs a pretrained teacher "
                              "(teacher.path)")
        from kdjax.factorize import init_student_from_teacher

        student = init_student_from_teacher(run.teacher["params"], run.teacher["config"], s_cfg,
                                            init_layers(config))
    else:
        if not Path(str(init)).expanduser().exists():
            raise ConfigError(f"student.init={init!r} is not one of random, teacher_svd, or an "
                              "existing model directory")
        from kdjax.factorize import factorize_params

        source = resolve_model(str(init), "student.init")
        try:
            student = factorize_params(source.params, source.config, s_cfg)
        except KdjaxError as e:
            raise type(e)(f"student.init={init!r}: {e}") from e
    return cast_tree(student, s_cfg.weight_dtype)


def split_heldout_rows(examples: np.ndarray, rows: int, seed: int,
                       group: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) rows [N, L] of the tokenized corpus: a seeded `rows` (at most a tenth
    of the corpus) are kept out of training for the held-out evaluation, whole groups of
    `group` consecutive rows (`data.group_rows`) at a time so that groups stay intact."""
    k = min(int(rows), len(examples) // 10)
    if k <= 0:
        return examples, examples[:0]
    k = -(-k // group) * group
    held = np.zeros(len(examples), bool)
    rng = np.random.default_rng([int(seed), 104729])
    held[group_permutation(rng, len(examples), group)[:k]] = True
    return examples[~held], examples[held]


class HeldOutEvaluation:
    """Hook: the workload's metrics on held-out corpus rows, dropout off and the masking RNG
    fixed, so that successive evaluations see the same inputs and are comparable (pre-training:
    generator MLM accuracy, discriminator precision / recall / AUC on replaced tokens;
    distillation: every loss term). Logged as `heldout_<metric>`, weighted by real tokens."""

    at_end = True

    def __init__(self, workload: Any, rows: np.ndarray, pad_id: int, every: int, batch: int,
                 mesh: Any, seed: int):
        self.workload, self.rows, self.pad_id = workload, rows, pad_id
        self.every, self.batch, self.mesh, self.seed = every, batch, mesh, seed
        self.last_step = -1
        self._fn: Any = None

    def due(self, step: int, steps: int) -> bool:
        return step % self.every == 0

    def _batches(self) -> list[dict[str, np.ndarray]]:
        out = []
        for start in range(0, len(self.rows), self.batch):
            ids = self.rows[start:start + self.batch]
            if len(ids) < self.batch:  # pad rows: all padding, zero weight
                ids = np.concatenate([ids, np.full((self.batch - len(ids), ids.shape[1]),
                                                   self.pad_id, ids.dtype)])
            out.append({"input_ids": ids, "attention_mask": (ids != self.pad_id).astype(
                np.int32), "token_type_ids": np.zeros_like(ids)})
        return out

    def __call__(self, step: int, state: Any, frozen: Any) -> dict[str, float]:
        import jax.numpy as jnp

        from kdjax import sharding as shd
        from kdjax.train.placement import place

        if self._fn is None:
            key = jax.random.key(self.seed)

            def metrics(params: Any, frozen: Any, batch: dict, step: Any) -> tuple[Any, Any]:
                loss, aux = self.workload.loss(params, frozen, batch, key, step,
                                               deterministic=True)
                return {"loss": loss, **aux}, self.workload.loss_weight(batch)

            self._fn = jax.jit(metrics)
        sharding = shd.batch_sharding(self.mesh, 2)
        total: dict[str, float] = {}
        weight = 0.0
        for host in self._batches():
            batch = place(host, {k: sharding for k in host})
            values, w = jax.device_get(self._fn(state.params, frozen, batch,
                                                jnp.asarray(step, jnp.int32)))
            w = float(w)
            for k, v in values.items():
                total[k] = total.get(k, 0.0) + float(v) * w
            weight += w
        self.last_step = step
        return {f"heldout_{k}": v / max(weight, 1e-9) for k, v in total.items()}


def make_plan(config: Any, workdir: epath.Path, run: CorpusRun, progress: bool) -> trainer.Plan:
    """The run's plan: tokenized corpus batches, the workload, the teacher, student.init."""
    is_main = jax.process_index() == 0
    cache = workdir / "cache" if not str(workdir).startswith("gs://") else \
        Path.home() / ".cache" / "kdjax"
    examples = tokenize_corpus(
        run.sources, run.tokenizer, run.max_length, pack=bool(config.data.pack),
        cache_dir=str(cache), text_field=config.data.text_field,
        limit_lines=int(config.data.limit_lines) or None, show_progress=progress and is_main,
    )
    pad_id = run.tokenizer.pad_token_id
    group = int(config.data.get("group_rows", 1))
    examples, heldout = split_heldout_rows(examples, int(config.data.heldout_rows),
                                           int(config.train.seed), group)
    batches = StepBatches(examples, run.global_batch, int(config.train.seed), pad_id, group)
    hooks = []
    if len(heldout):
        every = int(config.train.eval_every) or int(config.train.save_every)
        hooks.append(HeldOutEvaluation(run.workload, heldout, pad_id, every, run.global_batch,
                                       run.mesh, int(config.train.seed) + 7))
    # Outside the mesh context: SVD/loading is host work. Only a fresh run reads it.
    initial = None
    if run.kind == "distill" and config.student.init not in ("random", ""):
        host = student_init(config, run)

        def initial(abstract: Any) -> Any:
            return {"student": host}
    teacher = None
    if run.teacher is not None:
        teacher = run.teacher["params"] if run.teacher["params"] is not None else "random"
    return trainer.Plan(
        workload=run.workload, batches=batches, train=config.train,
        meta={"kind": run.kind, "config": json.loads(config.to_json_best_effort()),
              "models": run.models, "main_model": run.main_model, **run.meta,
              "tokens_per_step": run.global_batch * run.max_length,
              "num_examples": batches.num_examples},
        teacher=teacher,
        teacher_dtype=run.teacher["config"].weight_dtype if run.teacher else None,
        initial_params=initial, hooks=tuple(hooks),
    )


def prepare(config: ml_collections.ConfigDict, workdir: str | epath.Path, kind: str,
            progress: bool = True) -> tuple[trainer.Session, CorpusRun]:
    """Validate, load data and teacher, restore or initialise the sharded state, jit the step.

    Relative paths (`workdir`, and the path-valued config keys) mean relative to the current
    directory; they are made absolute here, once (see `kdjax.paths`). Holds the workdir lock
    (`kdjax.storage.workdir_lock`) while it writes (tokenizer, corpus cache, `train.restart`'s
    moves); `train` holds it from before this until the model is written.
    """
    workdir = epath.Path(absolute(workdir))
    resolve_config_paths(config)
    with workdir_lock(workdir):
        run = build_run(config, workdir, kind)
        plan = make_plan(config, workdir, run, progress)
        return trainer.prepare(plan, run.mesh, run.rules, workdir), run


def train(config: ml_collections.ConfigDict, workdir: str | epath.Path, kind: str,
          progress: bool = True) -> dict[str, Any]:
    """Run `kind` ("distill" or "pretrain") in `workdir`; resume if it has checkpoints.

    The workdir lock is taken first: a second run in the same workdir (even with
    `train.restart`) stops with one line before it creates or moves any file."""
    workdir = epath.Path(absolute(workdir))
    with workdir_lock(workdir):
        session, run = prepare(config, workdir, kind, progress=progress)
        is_main = jax.process_index() == 0
        if is_main:
            atomic_write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
            print(_start_line(run, session), flush=True)
        summary = trainer.run(session, progress=progress)
        state = summary.pop("state")
        summary.update(_finish(workdir, run, state, is_main, summary))
    return summary


def _start_line(run: CorpusRun, session: trainer.Session) -> str:
    steps = int(session.plan.train.steps)
    parts = [f"kdjax {run.kind}: {jax.device_count()} {jax.devices()[0].platform} device(s) on "
             f"{jax.process_count()} process(es), mesh {dict(run.mesh.shape)}",
             f"trainable {count_params(session.state.params) / 1e6:.2f}M params"]
    if session.frozen is not None:
        parts.append(f"teacher {count_params(session.frozen) / 1e6:.2f}M params "
                     f"({run.teacher['source']})")
    parts.append(f"{run.global_batch} x {run.max_length} = "
                 f"{run.global_batch * run.max_length} tokens/step")
    parts.append(f"steps {session.start}->{steps}")
    if run.kind == "distill":
        parts.append("objective " + "; ".join(run.workload.objective.describe()))
    return " | ".join(parts)


def _finish(workdir: epath.Path, run: CorpusRun, state: Any, is_main: bool,
            summary: dict) -> dict[str, Any]:
    """Write WORKDIR/model (and generator/ for pretrain) and return the summary fields."""
    out: dict[str, Any] = {"workdir": str(workdir), "checkpoints": str(workdir / "checkpoints")}
    if summary.get("interrupted"):
        return out
    params = gather(state.params)
    if not is_main:
        return out
    main = run.main_model
    cfg = EncoderConfig.from_any(run.models[main])
    provenance = {"trained_by": run.workload.kind, "step": summary["final_step"]}
    if run.teacher is not None:
        provenance["teacher"] = run.teacher["source"]
    model_dir = save_model_dir(workdir / "model", cfg, params[main], run.tokenizer, **provenance)
    out["model_dir"] = str(model_dir)
    out["model"] = {k: v for k, v in param_report(cfg).items() if k in ("params", "fp32_mb")}
    if main == "disc":
        g_cfg = EncoderConfig.from_any(run.models["gen"])
        gen = {**params["gen"], "embeddings": params["disc"]["embeddings"]}
        out["generator_dir"] = str(save_model_dir(workdir / "generator", g_cfg, gen,
                                                  run.tokenizer, **provenance))
    if run.teacher is not None:
        t_report = param_report(run.teacher["config"])
        out["teacher"] = {"params": t_report["params"], "fp32_mb": t_report["fp32_mb"]}
        if out["model"]["params"]:
            out["compression"] = round(t_report["params"] / out["model"]["params"], 2)
    return out

"""Workloads: what one training step optimises. The trainer (`kdjax.train.trainer`) runs any
of them unchanged.

"Task" in kdjax means a Korean dataset (`kdjax.data.tasks`); a workload is the loss bundle that
trains on it (or on a corpus). Each provides

* `init(rng)` - the boxed trainable params (with logical axes);
* `init_teacher(rng)` - the frozen teacher's params (shapes only matter), or None;
* `loss(params, frozen, batch, rng, step, deterministic=False) -> (loss, metrics)` - a pure
  function traced inside the jitted step; `frozen` is the teacher's params or None;
  `deterministic=True` turns dropout off (held-out evaluation);
* `loss_weight(batch)` - how much a micro-batch counts when gradients are accumulated over
  several (`train.grad_accum`): its real tokens (or labelled tokens / rows), so that the
  accumulated loss is the full batch's token-weighted mean, not the mean of micro-batch means.

Corpus workloads: `PretrainWorkload` (ELECTRA generator + discriminator) and `DistillWorkload`
(teacher -> student with a configurable `kdjax.distill.objective.Objective`). Task workloads:
`FinetuneWorkload` (the task's own loss) and `TaskDistillWorkload` (a fine-tuned, frozen teacher
of the same head and labels):

    loss = alpha * KD(student logits, teacher logits; T) + (1 - alpha) * hard + intermediate

KD per task kind: sequence - KL(softmax(t/T) || softmax(s/T)) x T^2 over [B, C];
regression - MSE of the predictions; token - the KL over the labelled tokens (labels >= 0);
span - the KL over positions (padding excluded) of the start and of the end logits, averaged.
`hard` is the task's own supervised loss (`Task.loss`), weighted per row by `hard_weight`
(augmented rows carry teacher labels only: hard_weight 0). `intermediate` is an optional
`kdjax.distill.objective` of hidden/attention terms only (logit terms come from alpha and T).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kdjax.data.masking import mask_tokens
from kdjax.distill.losses import hard_label_loss, kd_loss, mse_logits_loss
from kdjax.distill.objective import Objective
from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.model import build_model

Array = jax.Array
TASK_KINDS = ("sequence", "regression", "token", "span")
_NEG = -1e9


class MaskingSpec:
    """Static masking settings derived from the tokenizer and the `data` config."""

    def __init__(self, tokenizer: Any, vocab_size: int, prob: float = 0.15):
        if tokenizer.mask_token_id is None:
            raise ConfigError("the tokenizer has no [MASK] token; masking needs one")
        self.mask_id = int(tokenizer.mask_token_id)
        self.vocab_size = vocab_size
        self.special_ids = tuple(sorted({int(i) for i in tokenizer.all_special_ids}))
        self.prob = prob

    def __call__(self, rng: Array, batch: dict[str, Array]) -> dict[str, Array]:
        return mask_tokens(
            rng, batch["input_ids"], batch["attention_mask"], mask_id=self.mask_id,
            vocab_size=self.vocab_size, special_ids=self.special_ids, prob=self.prob,
        )


def _inputs(batch: dict[str, Array]) -> dict[str, Array]:
    return {"attention_mask": batch["attention_mask"], "token_type_ids": batch["token_type_ids"]}


def real_tokens(batch: dict[str, Array]) -> Array:
    """The number of real (non-padding) tokens of a batch: a corpus micro-batch's weight."""
    return jnp.sum(batch["attention_mask"].astype(jnp.float32))


def task_rows_weight(task: Any, batch: dict[str, Array]) -> Array:
    """A task micro-batch's weight: its labelled tokens for token tasks (NER), else its rows."""
    if task.kind == "token":
        return jnp.sum((batch["labels"] >= 0).astype(jnp.float32))
    return jnp.asarray(batch["input_ids"].shape[0], jnp.float32)


class DistillWorkload:
    """Teacher (frozen) -> student with a configurable `Objective`."""

    kind = "distill"

    def __init__(self, student: EncoderConfig, teacher: EncoderConfig, objective: Objective,
                 masking: MaskingSpec | None):
        self.student_cfg, self.teacher_cfg = student, teacher
        self.student, self.teacher = build_model(student), build_model(teacher)
        self.objective = objective
        self.masking = masking
        if objective.needs_mlm_positions and masking is None:
            raise ConfigError("the objective reads mlm_logits but masking is off (data.mlm)")

    def init(self, rng: Array) -> dict[str, Any]:
        k_student, k_proj = jax.random.split(rng)
        ids = jnp.zeros((1, 8), jnp.int32)
        student = self.student.init(k_student, ids)["params"]
        return {"student": student, "proj": self.objective.init_projections(k_proj)}

    def init_teacher(self, rng: Array) -> dict[str, Any]:
        return self.teacher.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]

    def loss_weight(self, batch: dict[str, Array]) -> Array:
        return real_tokens(batch)

    def loss(self, params: dict[str, Any], frozen: Any, batch: dict[str, Array], rng: Array,
             step: Array, deterministic: bool = False) -> tuple[Array, dict[str, Array]]:
        k_mask, k_drop = jax.random.split(rng)
        batch = dict(batch)
        extra: dict[str, Any] = {}
        if self.objective.needs_mlm_positions:
            m = self.masking(k_mask, batch)
            batch.update(input_ids=m["input_ids"], mlm_mask=m["mlm_mask"],
                         labels=m["mlm_targets"], label_mask=m["mlm_mask"])
            extra["mlm_positions"] = m["mlm_positions"]
        t_out = None
        if self.objective.needs_teacher:
            t_out = self.teacher.apply(
                {"params": frozen}, batch["input_ids"], **_inputs(batch), deterministic=True,
                **self.objective.model_kwargs("teacher"), **extra,
            )
            t_out = jax.lax.stop_gradient(t_out)
        s_out = self.student.apply(
            {"params": params["student"]}, batch["input_ids"], **_inputs(batch),
            deterministic=deterministic, rngs={"dropout": k_drop},
            **self.objective.model_kwargs("student"), **extra,
        )
        return self.objective(params["proj"], s_out, t_out, batch, step)


class PretrainWorkload:
    """ELECTRA: generator (MLM, tied to the discriminator's embeddings) + discriminator (RTD).

    The generator's masked positions are replaced by samples from its own output distribution
    (stop-gradient); the discriminator labels every real token as original / replaced. The
    loss is `mlm + disc_weight * rtd` (disc_weight 50 as in ELECTRA).
    """

    kind = "pretrain"

    def __init__(self, disc: EncoderConfig, gen: EncoderConfig, masking: MaskingSpec,
                 disc_weight: float = 50.0, temperature: float = 1.0,
                 temperature_start: float | None = None, anneal_steps: int = 0):
        if disc.head != "discriminator":
            raise ConfigError(f"pretrain: discriminator.model.head must be 'discriminator', "
                              f"got {disc.head!r}")
        if gen.head != "generator":
            raise ConfigError(
                f"pretrain: generator.model.head must be 'generator', got {gen.head!r}"
            )
        for key in ("vocab_size", "emb_size", "max_position_embeddings", "type_vocab_size",
                    "embedding_rank"):
            if getattr(disc, key) != getattr(gen, key):
                raise ConfigError(
                    f"pretrain: generator and discriminator share embeddings, so {key} must match "
                    f"(generator {getattr(gen, key)}, discriminator {getattr(disc, key)})"
                )
        self.disc_cfg, self.gen_cfg = disc, gen
        self.disc, self.gen = build_model(disc), build_model(gen)
        self.masking = masking
        self.disc_weight = disc_weight
        if temperature <= 0 or (temperature_start is not None and temperature_start <= 0):
            raise ConfigError(f"pretrain.temperature and pretrain.temperature_start must be > 0, "
                              f"got {temperature} and {temperature_start}")
        self.temperature = temperature
        self.temperature_start = temperature_start if anneal_steps > 0 else None
        self.anneal_steps = int(anneal_steps)

    def sampling_temperature(self, step: Array) -> Array:
        """The generator's sampling temperature at `step`: annealed geometrically from
        `temperature_start` to `temperature` over `anneal_steps`, then constant.

        Why: at T = 1 an untrained generator replaces masked tokens with frequent, plausible
        ones, and a young discriminator finds none of them (it learns to say "original"
        everywhere: precision and recall 0, AUC ~0.55 after 300 demo steps). Near-uniform
        replacements first (T ~ 100) are easy to spot (AUC 0.85 by step 100); as T falls
        the replacements become the generator's own, ELECTRA's hard negatives.
        """
        if self.temperature_start is None:
            return jnp.asarray(self.temperature, jnp.float32)
        frac = jnp.clip(step.astype(jnp.float32) / self.anneal_steps, 0.0, 1.0)
        return self.temperature_start * (self.temperature / self.temperature_start) ** frac

    def init(self, rng: Array) -> dict[str, Any]:
        k_d, k_g = jax.random.split(rng)
        ids = jnp.zeros((1, 8), jnp.int32)
        gen = dict(self.gen.init(k_g, ids)["params"])
        gen.pop("embeddings")  # tied: the generator reads the discriminator's embeddings
        return {"disc": self.disc.init(k_d, ids)["params"], "gen": gen}

    def init_teacher(self, rng: Array) -> None:
        return None

    def loss_weight(self, batch: dict[str, Array]) -> Array:
        return real_tokens(batch)

    def loss(self, params: dict[str, Any], frozen: Any, batch: dict[str, Array], rng: Array,
             step: Array, deterministic: bool = False) -> tuple[Array, dict[str, Array]]:
        k_mask, k_gdrop, k_sample, k_ddrop = jax.random.split(rng, 4)
        original = batch["input_ids"]
        m = self.masking(k_mask, batch)
        gen_params = {**params["gen"], "embeddings": params["disc"]["embeddings"]}
        g_out = self.gen.apply(
            {"params": gen_params}, m["input_ids"], **_inputs(batch), deterministic=deterministic,
            rngs={"dropout": k_gdrop}, mlm_positions=m["mlm_positions"],
        )
        mlm = hard_label_loss(g_out.logits, m["mlm_targets"], mask=m["mlm_mask"])
        # evaluation (deterministic) always samples at the final temperature, so that held-out
        # figures stay comparable while training anneals it
        temperature = jnp.asarray(self.temperature, jnp.float32) if deterministic else \
            self.sampling_temperature(step)
        logits = jax.lax.stop_gradient(g_out.logits.astype(jnp.float32)) / temperature
        sampled = jax.random.categorical(k_sample, logits).astype(original.dtype)
        valid = m["mlm_mask"].astype(bool)
        rows = jnp.arange(original.shape[0])[:, None]
        current = jnp.take_along_axis(m["input_ids"], m["mlm_positions"], axis=1)
        corrupted = m["input_ids"].at[rows, m["mlm_positions"]].set(
            jnp.where(valid, sampled, current)
        )
        real = batch["attention_mask"].astype(bool)
        labels = ((corrupted != original) & real).astype(jnp.float32)
        d_out = self.disc.apply(
            {"params": params["disc"]}, corrupted, **_inputs(batch), deterministic=deterministic,
            rngs={"dropout": k_ddrop},
        )
        rtd = hard_label_loss(d_out.logits, labels, mask=real, kind="bce")
        total = mlm + self.disc_weight * rtd
        gen_acc = _masked_mean(jnp.argmax(g_out.logits, -1) == m["mlm_targets"], valid)
        return total, {
            "gen_loss": mlm, "disc_loss": rtd, "gen_accuracy": gen_acc,
            "sampling_temperature": temperature,
            **detection_metrics(d_out.logits.astype(jnp.float32), labels > 0, real),
        }


def _masked_mean(x: Array, mask: Array) -> Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(x.astype(jnp.float32) * mask) / jnp.maximum(mask.sum(), 1.0)


def detection_metrics(logits: Array, replaced: Array, real: Array) -> dict[str, Array]:
    """How well the discriminator finds replaced tokens, over the real tokens of a batch.

    Overall accuracy is not enough: with ~15 % x (share the generator gets wrong) replaced,
    a discriminator that says "original" everywhere scores ~90 % and has learned nothing.
    Precision and recall of "replaced" at logit 0, and the ROC AUC of the logits (Mann-Whitney:
    the chance that a replaced token scores above an original one; 0.5 = no signal) do not
    have that blind spot. (Exactly tied logits are ranked in sort order, not averaged: real
    logits do not tie.)

    Args:
      logits: [B, L] discriminator logits; replaced: [B, L] bool labels; real: [B, L] mask.
    Returns:
      disc_accuracy, disc_precision, disc_recall, disc_auc, replaced_fraction (scalars).
    """
    real = real.astype(bool)
    pos = replaced & real
    neg = ~replaced & real
    pred = (logits > 0) & real
    n_pos, n_neg = jnp.sum(pos), jnp.sum(neg)
    true_pos = jnp.sum(pred & pos).astype(jnp.float32)
    # Ranks of the real tokens' logits (padding sorted below everything, then discounted).
    flat = jnp.where(real, logits, -jnp.inf).reshape(-1)
    ranks = jnp.zeros_like(flat).at[jnp.argsort(flat)].set(
        jnp.arange(1, flat.size + 1, dtype=flat.dtype))
    ranks = ranks - jnp.sum(~real)
    rank_sum = jnp.sum(jnp.where(pos.reshape(-1), ranks, 0.0))
    n_pos_f, n_neg_f = n_pos.astype(jnp.float32), n_neg.astype(jnp.float32)
    auc = (rank_sum - n_pos_f * (n_pos_f + 1) / 2) / jnp.maximum(n_pos_f * n_neg_f, 1.0)
    return {
        "disc_accuracy": _masked_mean(pred == pos, real),
        "disc_precision": true_pos / jnp.maximum(jnp.sum(pred).astype(jnp.float32), 1.0),
        "disc_recall": true_pos / jnp.maximum(n_pos_f, 1.0),
        "disc_auc": jnp.where((n_pos > 0) & (n_neg > 0), auc, 0.5),
        "replaced_fraction": _masked_mean(pos, real),
    }


def _init_model(model: Any, rng: Array) -> Any:
    return model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]


class FinetuneWorkload:
    """Supervised fine-tuning with the task's own loss (`Task.loss(logits, batch)`)."""

    kind = "finetune"

    def __init__(self, model_cfg: EncoderConfig, task: Any):
        self.model_cfg = model_cfg
        self.model = build_model(model_cfg)
        self.task = task

    def init(self, rng: Array) -> dict[str, Any]:
        return {"model": _init_model(self.model, rng)}

    def init_teacher(self, rng: Array) -> None:
        return None

    def loss_weight(self, batch: dict[str, Array]) -> Array:
        return task_rows_weight(self.task, batch)

    def loss(self, params: dict[str, Any], frozen: Any, batch: dict[str, Array], rng: Array,
             step: Array, deterministic: bool = False) -> tuple[Array, dict[str, Array]]:
        out = self.model.apply({"params": params["model"]}, batch["input_ids"], **_inputs(batch),
                               deterministic=deterministic, rngs={"dropout": rng})
        loss, metrics = self.task.loss(out.logits.astype(jnp.float32), batch)
        return loss, dict(metrics)


def kd_term(kind: str, student: Array, teacher: Array, batch: dict[str, Array],
            temperature: float) -> Array:
    """Soft-target loss between student and teacher logits of the same shape (see module doc)."""
    if kind == "sequence":
        return kd_loss(student, teacher, temperature)
    if kind == "regression":
        return mse_logits_loss(student, teacher)
    if kind == "token":
        return kd_loss(student, teacher, temperature, mask=batch["labels"] >= 0)
    real = batch["attention_mask"].astype(bool)  # [B, L]: softmax over real positions only
    total = jnp.zeros((), jnp.float32)
    for i in (0, 1):
        s = jnp.where(real, student[..., i], _NEG)
        t = jnp.where(real, teacher[..., i], _NEG)
        total = total + kd_loss(s, t, temperature)
    return 0.5 * total


class TaskDistillWorkload:
    """Fine-tuned teacher (frozen) -> student on a task (see module doc)."""

    kind = "task_distill"

    def __init__(self, student: EncoderConfig, teacher: EncoderConfig, task: Any, *,
                 alpha: float = 0.5, temperature: float = 1.0,
                 objective: Objective | None = None):
        if task.kind not in TASK_KINDS:
            raise ConfigError(f"task {task.name!r} has kind {task.kind!r}; expected one of "
                              f"{', '.join(TASK_KINDS)}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"distill.alpha must be in [0, 1], got {alpha}")
        if float(temperature) <= 0:
            raise ConfigError(f"distill.temperature must be > 0, got {temperature}")
        self.student_cfg, self.teacher_cfg = student, teacher
        self.student, self.teacher = build_model(student), build_model(teacher)
        self.task = task
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.objective = objective

    def init(self, rng: Array) -> dict[str, Any]:
        k_model, k_proj = jax.random.split(rng)
        params = {"model": _init_model(self.student, k_model)}
        if self.objective is not None:
            proj = self.objective.init_projections(k_proj)
            if proj:
                params["proj"] = proj
        return params

    def init_teacher(self, rng: Array) -> dict[str, Any]:
        return _init_model(self.teacher, rng)

    def loss_weight(self, batch: dict[str, Array]) -> Array:
        return task_rows_weight(self.task, batch)

    def _kwargs(self, who: str) -> dict[str, bool]:
        if self.objective is None:
            return {}
        return {**self.objective.model_kwargs(who), "compute_logits": True}

    def loss(self, params: dict[str, Any], frozen: Any, batch: dict[str, Array], rng: Array,
             step: Array, deterministic: bool = False) -> tuple[Array, dict[str, Array]]:
        t_out = self.teacher.apply({"params": frozen}, batch["input_ids"], **_inputs(batch),
                                   deterministic=True, **self._kwargs("teacher"))
        t_out = jax.lax.stop_gradient(t_out)
        s_out = self.student.apply({"params": params["model"]}, batch["input_ids"],
                                   **_inputs(batch), deterministic=deterministic,
                                   rngs={"dropout": rng}, **self._kwargs("student"))
        kind = self.task.kind
        s_logits = s_out.logits.astype(jnp.float32)
        t_logits = t_out.logits.astype(jnp.float32)
        kd = kd_term(kind, s_logits, t_logits, batch, self.temperature)
        hard, task_metrics = self.task.loss(s_logits, batch)  # weighted by hard_weight
        total = self.alpha * kd + (1.0 - self.alpha) * hard
        metrics: dict[str, Array] = {**task_metrics, "kd_loss": kd, "hard_loss": hard}
        if self.objective is not None:
            extra, terms = self.objective(params.get("proj", {}), s_out, t_out, batch, step)
            total = total + extra
            metrics.update(terms)
        return total, metrics


def intermediate_objective(spec: Any, student: EncoderConfig,
                           teacher: EncoderConfig) -> Objective | None:
    """The hidden/attention terms of an objective config (logit and label terms dropped: those
    come from distill.alpha / distill.temperature); None when no term is left."""
    from kdjax.distill.objective import FEATURES, build_objective

    if spec is None or (isinstance(spec, str) and not spec):
        return None
    if isinstance(spec, str):
        from kdjax.config_lib import load_config

        spec = load_config(spec)
    cfg = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    terms = {name: t for name, t in dict(cfg.get("terms") or {}).items()
             if FEATURES.get(dict(t).get("feature", "hidden"), ("", ""))[1]
             not in ("head", "mlm", "labels")}
    if not terms:
        return None
    return build_objective({**cfg, "terms": terms}, student, teacher)

"""What a fine-tuning step optimises: plain fine-tuning, and task-specific distillation.

Both follow the protocol of `kdjax.train.tasks` (`init`, `init_teacher`, `loss`), so
`make_train_step` and the sharded state machinery of `kdjax.train.loop` run them unchanged.
Trainable params are `{"model": ...}` (+ `"proj"`: learned projections of intermediate terms).

Task KD (`TaskDistillTask`), for a fine-tuned, frozen teacher of the same head and labels:

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

from kdjax.distill.losses import kd_loss, mse_logits_loss
from kdjax.distill.objective import Objective
from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.model import build_model

Array = jax.Array
KINDS = ("sequence", "regression", "token", "span")
_NEG = -1e9


def _inputs(batch: dict[str, Array]) -> dict[str, Array]:
    return {"attention_mask": batch["attention_mask"], "token_type_ids": batch["token_type_ids"]}


def _init_model(model: Any, rng: Array) -> Any:
    return model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]


class FinetuneTask:
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

    def loss(self, params: dict[str, Any], frozen: Any, batch: dict[str, Array], rng: Array,
             step: Array) -> tuple[Array, dict[str, Array]]:
        out = self.model.apply({"params": params["model"]}, batch["input_ids"], **_inputs(batch),
                               deterministic=False, rngs={"dropout": rng})
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


class TaskDistillTask:
    """Fine-tuned teacher (frozen) -> student on a task (see module doc)."""

    kind = "task_distill"

    def __init__(self, student: EncoderConfig, teacher: EncoderConfig, task: Any, *,
                 alpha: float = 0.5, temperature: float = 1.0,
                 objective: Objective | None = None):
        if task.kind not in KINDS:
            raise ConfigError(f"task {task.name!r} has kind {task.kind!r}; expected one of "
                              f"{', '.join(KINDS)}")
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

    def _kwargs(self, who: str) -> dict[str, bool]:
        if self.objective is None:
            return {}
        return {**self.objective.model_kwargs(who), "compute_logits": True}

    def loss(self, params: dict[str, Any], frozen: Any, batch: dict[str, Array], rng: Array,
             step: Array) -> tuple[Array, dict[str, Array]]:
        t_out = self.teacher.apply({"params": frozen}, batch["input_ids"], **_inputs(batch),
                                   deterministic=True, **self._kwargs("teacher"))
        t_out = jax.lax.stop_gradient(t_out)
        s_out = self.student.apply({"params": params["model"]}, batch["input_ids"],
                                   **_inputs(batch), deterministic=False,
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

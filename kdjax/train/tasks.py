"""What a step optimises: task-agnostic distillation, and ELECTRA pre-training.

A task provides `init(rng)` (boxed trainable params, with logical axes) and
`loss(params, frozen, batch, rng, step) -> (loss, metrics)`, a pure function traced inside
the jitted step. `frozen` is the teacher's params (distillation) or None.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kdjax.data.masking import mask_tokens
from kdjax.distill.losses import hard_label_loss
from kdjax.distill.objective import Objective
from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.model import build_model

Array = jax.Array


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


class DistillTask:
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

    def loss(self, params: dict[str, Any], frozen: Any, batch: dict[str, Array], rng: Array,
             step: Array) -> tuple[Array, dict[str, Array]]:
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
            deterministic=False, rngs={"dropout": k_drop},
            **self.objective.model_kwargs("student"), **extra,
        )
        return self.objective(params["proj"], s_out, t_out, batch, step)


class PretrainTask:
    """ELECTRA: generator (MLM, tied to the discriminator's embeddings) + discriminator (RTD).

    The generator's masked positions are replaced by samples from its own output distribution
    (stop-gradient); the discriminator labels every real token as original / replaced. The
    loss is `mlm + disc_weight * rtd` (disc_weight 50 as in ELECTRA).
    """

    kind = "pretrain"

    def __init__(self, disc: EncoderConfig, gen: EncoderConfig, masking: MaskingSpec,
                 disc_weight: float = 50.0, temperature: float = 1.0):
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
        self.temperature = temperature

    def init(self, rng: Array) -> dict[str, Any]:
        k_d, k_g = jax.random.split(rng)
        ids = jnp.zeros((1, 8), jnp.int32)
        gen = dict(self.gen.init(k_g, ids)["params"])
        gen.pop("embeddings")  # tied: the generator reads the discriminator's embeddings
        return {"disc": self.disc.init(k_d, ids)["params"], "gen": gen}

    def loss(self, params: dict[str, Any], frozen: Any, batch: dict[str, Array], rng: Array,
             step: Array) -> tuple[Array, dict[str, Array]]:
        k_mask, k_gdrop, k_sample, k_ddrop = jax.random.split(rng, 4)
        original = batch["input_ids"]
        m = self.masking(k_mask, batch)
        gen_params = {**params["gen"], "embeddings": params["disc"]["embeddings"]}
        g_out = self.gen.apply(
            {"params": gen_params}, m["input_ids"], **_inputs(batch), deterministic=False,
            rngs={"dropout": k_gdrop}, mlm_positions=m["mlm_positions"],
        )
        mlm = hard_label_loss(g_out.logits, m["mlm_targets"], mask=m["mlm_mask"])
        logits = jax.lax.stop_gradient(g_out.logits.astype(jnp.float32)) / self.temperature
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
            {"params": params["disc"]}, corrupted, **_inputs(batch), deterministic=False,
            rngs={"dropout": k_ddrop},
        )
        rtd = hard_label_loss(d_out.logits, labels, mask=real, kind="bce")
        total = mlm + self.disc_weight * rtd
        gen_acc = _masked_mean(jnp.argmax(g_out.logits, -1) == m["mlm_targets"], valid)
        disc_acc = _masked_mean((d_out.logits > 0) == labels.astype(bool), real)
        return total, {
            "gen_loss": mlm, "disc_loss": rtd, "gen_accuracy": gen_acc,
            "disc_accuracy": disc_acc, "replaced_fraction": _masked_mean(labels > 0, real),
        }


def _masked_mean(x: Array, mask: Array) -> Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(x.astype(jnp.float32) * mask) / jnp.maximum(mask.sum(), 1.0)

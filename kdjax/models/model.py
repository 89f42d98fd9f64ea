"""The encoder model: embeddings, optional embeddings_project, layer stack, optional head.

`build_model(config)` returns an `EncoderModel` (a Flax linen module). Its outputs mirror
transformers': `hidden_states` starts with the embedding output (after embeddings_project)
and has num_layers + 1 entries; `attentions` are the softmax probabilities.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from kdjax.errors import ShapeError
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import EncoderStack, Outputs
from kdjax.models.heads import (
    DiscriminatorHead,
    MaskedLMTransform,
    QuestionAnsweringHead,
    SequenceClassificationHead,
    TokenClassificationHead,
)
from kdjax.models.layers import Dense, Embeddings, partitioned_zeros

Array = jax.Array


@flax.struct.dataclass
class EncoderOutput:
    """What `EncoderModel.__call__` returns; optional fields are None unless requested.

    last_hidden_state: [B, L, H].
    hidden_states: (num_layers + 1) x [B, L, H], embeddings output first.
    attentions / attention_scores: num_layers x [B, heads, L, L] (probabilities / raw scores
      q.k/sqrt(d) before the mask is added).
    queries / keys / values: num_layers x [B, heads, L, head_dim].
    logits: discriminator [B, L]; generator [B, L, V] (or [B, P, V] at `mlm_positions`);
      classification [B, num_labels]; token classification [B, L, num_labels]; qa [B, L, 2].
    mlm_hidden: generator / MLM transform output [B, L, E] before the vocab projection.
    """

    last_hidden_state: Array
    hidden_states: tuple[Array, ...] | None = None
    attentions: tuple[Array, ...] | None = None
    attention_scores: tuple[Array, ...] | None = None
    queries: tuple[Array, ...] | None = None
    keys: tuple[Array, ...] | None = None
    values: tuple[Array, ...] | None = None
    logits: Array | None = None
    mlm_hidden: Array | None = None


class EncoderModel(nn.Module):
    """ELECTRA / BERT encoder, dense or low-rank factorized, with an optional head."""

    config: EncoderConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        output_attention_scores: bool = False,
        output_qkv: bool = False,
        compute_logits: bool = True,
        mlm_positions: Array | None = None,
    ) -> EncoderOutput:
        """Run the model.

        Args:
          input_ids: [B, L] int token ids.
          attention_mask: [B, L], 1 for real tokens, 0 for padding (default all ones).
          token_type_ids: [B, L] segment ids (default zeros).
          position_ids: [B, L] or [L] (default arange(L)).
          deterministic: disable dropout (True for evaluation and for a frozen teacher).
          output_*: which optional per-layer outputs to return (static).
          compute_logits: False skips the head (e.g. a teacher whose logits no loss reads).
          mlm_positions: [B, P] int; the generator head then scores only these positions
            ([B, P, V]), so a [B, L, V] tensor is never built.
        Returns:
          `EncoderOutput`.
        """
        cfg = self.config
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2:
            raise ShapeError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        batch, length = input_ids.shape
        if length > cfg.max_position_embeddings:
            raise ShapeError(
                f"input length {length} exceeds model.max_position_embeddings="
                f"{cfg.max_position_embeddings}; truncate the inputs (e.g. max_length)"
            )
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((batch, length), jnp.int32)
        if position_ids is None:
            position_ids = jnp.arange(length, dtype=jnp.int32)[None, :]
        for name, arr in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if tuple(arr.shape) != (batch, length):
                raise ShapeError(
                    f"{name} has shape {tuple(arr.shape)} but input_ids has {(batch, length)}"
                )
        if tuple(jnp.shape(position_ids)) not in ((batch, length), (1, length), (length,)):
            raise ShapeError(
                f"position_ids has shape {tuple(jnp.shape(position_ids))} but input_ids has "
                f"{(batch, length)}; pass [batch, length] or [length]"
            )
        outputs = Outputs(
            hidden_states=output_hidden_states,
            attentions=output_attentions,
            attention_scores=output_attention_scores,
            qkv=output_qkv,
        )
        key_mask = jnp.asarray(attention_mask).astype(bool)
        # Additive mask as in transformers: finfo.min on padded keys, in fp32 scores.
        mask_bias = jnp.where(key_mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]

        embeddings = Embeddings(cfg, deterministic, name="embeddings")
        x = embeddings(input_ids, token_type_ids, position_ids)
        if cfg.emb_size != cfg.hidden_size:
            x = Dense(cfg.hidden_size, ("embed2", "embed"), cfg, name="embeddings_project")(x)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        emb_out = x
        x, extras = EncoderStack(cfg, outputs, deterministic, name="encoder")(
            x, mask_bias, key_mask
        )
        result: dict[str, Any] = {"last_hidden_state": x}
        if output_hidden_states:
            result["hidden_states"] = (emb_out, *extras["hidden_states"])
        for key in ("attentions", "attention_scores"):
            if key in extras:
                result[key] = extras[key]
        if output_qkv:
            result.update(queries=extras["queries"], keys=extras["keys"], values=extras["values"])

        if cfg.head != "none" and (compute_logits or self.is_initializing()):
            result.update(self._head(x, embeddings, deterministic, mlm_positions))
        return EncoderOutput(**result)

    def _head(
        self, x: Array, embeddings: Embeddings, deterministic: bool, mlm_positions: Array | None
    ) -> dict[str, Array]:
        cfg = self.config
        if cfg.head == "discriminator":
            return {"logits": DiscriminatorHead(cfg, name="discriminator_head")(x)}
        if cfg.head == "generator":
            if mlm_positions is not None:
                x = jnp.take_along_axis(x, mlm_positions[..., None].astype(jnp.int32), axis=1)
            h = MaskedLMTransform(cfg, name="generator_head")(x)
            bias = self.param(
                "generator_bias",
                partitioned_zeros(("vocab",)),
                (cfg.vocab_size,),
                cfg.weight_dtype,
            )
            logits = embeddings.attend(h) + bias.astype(cfg.compute_dtype)
            return {"logits": logits, "mlm_hidden": h}
        if cfg.head == "classification":
            return {"logits": SequenceClassificationHead(cfg, name="classifier")(x, deterministic)}
        if cfg.head == "token_classification":
            return {"logits": TokenClassificationHead(cfg, name="classifier")(x, deterministic)}
        return {"logits": QuestionAnsweringHead(cfg, name="qa_head")(x, deterministic)}


def build_model(config: Any) -> EncoderModel:
    """The Flax module for `config` (an `EncoderConfig`, a dict or an ml-collections dict)."""
    return EncoderModel(EncoderConfig.from_any(config))


def init_params(config: Any, rng: jax.Array | int = 0, length: int = 8) -> dict:
    """Randomly initialised (unboxed) parameters for `config`; see `abstract_params` for shapes."""
    model = build_model(config)
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    ids = jnp.zeros((1, min(length, model.config.max_position_embeddings)), jnp.int32)
    variables = jax.jit(model.init)(rng, ids)
    return nn.meta.unbox(variables["params"])


def abstract_params(config: Any, boxed: bool = False) -> Any:
    """Shapes/dtypes of the parameters (no compute, no memory); `boxed` keeps logical axes."""
    model = build_model(config)
    ids = jax.ShapeDtypeStruct((1, min(8, model.config.max_position_embeddings)), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), ids)
    params = variables["params"]
    return params if boxed else nn.meta.unbox(params)

"""The post-LN transformer layer (BERT/ELECTRA) and the layer stack (loop, remat or scan).

Optional per-layer outputs are requested with `Outputs`, a static (hashable) set of flags, so
that XLA neither computes nor keeps what nobody reads: with no attention maps requested the
attention may run as one fused `jax.nn.dot_product_attention`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.dropout import dropout
from kdjax.models.layers import LayerNorm, activation, projection

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Which optional per-layer outputs to return (static)."""

    hidden_states: bool = False
    attentions: bool = False  # softmax probabilities [B, H, L, L]
    attention_scores: bool = False  # pre-softmax, pre-mask scores [B, H, L, L]
    qkv: bool = False  # per-head queries, keys, values [B, H, L, d]

    @property
    def needs_maps(self) -> bool:
        return self.attentions or self.attention_scores


class SelfAttention(nn.Module):
    """Multi-head self-attention with optional low-rank Q/K/V/O: [B, L, H] -> [B, L, H]."""

    config: EncoderConfig
    outputs: Outputs = Outputs()
    deterministic: bool = True

    def use_fused(self) -> bool:
        cfg = self.config
        dropout_active = not self.deterministic and cfg.attention_dropout > 0
        if cfg.attention_impl == "fused" and dropout_active:
            raise ConfigError(
                "model.attention_impl='fused' has no attention dropout; set "
                "model.attention_dropout=0.0 or attention_impl='auto' for training"
            )
        if cfg.attention_impl != "auto":
            return cfg.attention_impl == "fused"
        return not self.outputs.needs_maps and not dropout_active

    @nn.compact
    def __call__(
        self, x: Array, mask_bias: Array, key_mask: Array, dropout_key: Array | None = None
    ) -> tuple[Array, dict]:
        """x [B, L, H]; mask_bias [B, 1, 1, L] additive fp32; key_mask [B, L] bool.

        `dropout_key`: the layer's key (the attention probabilities use its stream 0); without
        it, training mode makes one with `make_rng("dropout")`.
        """
        cfg = self.config
        batch, length, _ = x.shape
        heads, head_dim = cfg.num_heads, cfg.head_dim
        rank = cfg.attention_rank

        def split(t: Array) -> Array:  # [B, L, H] -> [B, L, heads, d]
            return t.reshape(batch, length, heads, head_dim)

        q = split(projection(cfg.hidden_size, rank, ("embed", "heads"), cfg, "query")(x))
        k = split(projection(cfg.hidden_size, rank, ("embed", "heads"), cfg, "key")(x))
        v = split(projection(cfg.hidden_size, rank, ("embed", "heads"), cfg, "value")(x))
        extras: dict[str, Array] = {}
        scale = head_dim**-0.5
        if self.use_fused():
            if self.outputs.needs_maps:
                raise ConfigError(
                    "model.attention_impl='fused' cannot return attention maps "
                    "(output_attentions / output_attention_scores); use 'auto' or 'einsum'"
                )
            context = jax.nn.dot_product_attention(
                q, k, v, mask=key_mask[:, None, None, :], scale=scale
            )
        else:
            # Scores and softmax in fp32 whatever the compute dtype (bf16 softmax loses mass).
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
            scores = scores * scale
            scores = nn.with_logical_constraint(
                scores, ("batch", "act_heads", "length", "kv_length")
            )
            probs = jax.nn.softmax(scores + mask_bias, axis=-1)
            if self.outputs.attention_scores:
                extras["attention_scores"] = scores
            if self.outputs.attentions:
                extras["attentions"] = probs
            if not self.deterministic and cfg.attention_dropout > 0:
                if dropout_key is None:
                    dropout_key = self.make_rng("dropout")
                probs = dropout(probs, cfg.attention_dropout, dropout_key, stream=0)
            context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
        if self.outputs.qkv:
            to_heads = lambda t: jnp.swapaxes(t, 1, 2)  # [B, heads, L, d] like transformers
            extras.update(queries=to_heads(q), keys=to_heads(k), values=to_heads(v))
        context = context.reshape(batch, length, cfg.hidden_size)
        out = projection(cfg.hidden_size, rank, ("heads", "embed"), cfg, "output")(context)
        return out, extras


class EncoderLayer(nn.Module):
    """Post-LN block: LN(x + Attn(x)) then LN(h + W2 act(W1 h)); returns (h, extras)."""

    config: EncoderConfig
    outputs: Outputs = Outputs()
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask_bias: Array, key_mask: Array) -> tuple[Array, dict]:
        cfg = self.config
        # One key per layer (one key derivation), an independent mask stream per dropout site.
        active = not self.deterministic and (cfg.hidden_dropout > 0 or cfg.attention_dropout > 0)
        key = self.make_rng("dropout") if active else None

        def drop(t: Array, stream: int) -> Array:
            if key is None:  # deterministic, or no dropout in this layer
                return t
            return dropout(t, cfg.hidden_dropout, key, stream)

        attn, extras = SelfAttention(cfg, self.outputs, self.deterministic, name="attention")(
            x, mask_bias, key_mask, key
        )
        h = LayerNorm(cfg, name="attention_norm")(x + drop(attn, 1))
        rank = cfg.ffn_rank
        f = projection(cfg.intermediate_size, rank, ("embed", "mlp"), cfg, "intermediate")(h)
        f = activation(cfg.hidden_act)(f)
        f = nn.with_logical_constraint(f, ("batch", "length", "act_mlp"))
        f = projection(cfg.hidden_size, rank, ("mlp", "embed"), cfg, "output")(f)
        h = LayerNorm(cfg, name="output_norm")(h + drop(f, 2))
        h = nn.with_logical_constraint(h, ("batch", "length", "act_embed"))
        if self.outputs.hidden_states:
            extras["hidden_states"] = h
        return h, extras


class EncoderStack(nn.Module):
    """`num_layers` layers; returns the last hidden state and per-layer extras (tuples).

    With `scan_layers` the parameters are stacked under `layers` with a leading `layers` axis
    (one compiled layer body; faster compiles for deep models; `scan_unroll` layer bodies per
    loop iteration), else `layer_0 ... layer_{N-1}`.
    `remat` recomputes each layer's activations in the backward pass (memory for FLOPs).
    """

    config: EncoderConfig
    outputs: Outputs = Outputs()
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask_bias: Array, key_mask: Array) -> tuple[Array, dict]:
        cfg = self.config
        layer_cls = EncoderLayer
        if cfg.remat:
            layer_cls = nn.remat(layer_cls, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            scanned = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                unroll=min(cfg.scan_unroll, cfg.num_layers),
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, stacked = scanned(cfg, self.outputs, self.deterministic, name="layers")(
                x, mask_bias, key_mask
            )
            extras = {k: tuple(v[i] for i in range(cfg.num_layers)) for k, v in stacked.items()}
            return x, extras
        per_layer: dict[str, list[Array]] = {}
        for i in range(cfg.num_layers):
            x, ex = layer_cls(cfg, self.outputs, self.deterministic, name=f"layer_{i}")(
                x, mask_bias, key_mask
            )
            for k, v in ex.items():
                per_layer.setdefault(k, []).append(v)
        return x, {k: tuple(v) for k, v in per_layer.items()}

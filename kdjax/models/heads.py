"""Task and pre-training heads on top of the encoder's last hidden state [B, L, H]."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.config import EncoderConfig
from kdjax.models.dropout import Dropout
from kdjax.models.layers import Dense, LayerNorm, activation

Array = jax.Array


class DiscriminatorHead(nn.Module):
    """ELECTRA replaced-token detection: dense, act, dense -> [B, L] logits."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, h: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        x = Dense(cfg.hidden_size, ("embed", "embed2"), cfg, name="dense")(h)
        x = activation(cfg.hidden_act)(x)
        return Dense(1, ("embed", None), cfg, name="prediction")(x)[..., 0]


class MaskedLMTransform(nn.Module):
    """ELECTRA generator / BERT MLM transform: dense to E, exact GELU, LayerNorm -> [B, L, E].

    The vocab projection is tied to the word embeddings (`Embeddings.attend`), plus a bias.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, h: Array) -> Array:
        cfg = self.config
        x = Dense(cfg.emb_size, ("embed", "embed2"), cfg, name="dense")(h)
        return LayerNorm(cfg, name="norm")(activation("gelu")(x))


class SequenceClassificationHead(nn.Module):
    """[CLS] -> labels. ELECTRA: dropout, dense, GELU, dropout, out_proj. BERT: pooler (dense,
    tanh), dropout, classifier. Returns [B, num_labels] (num_labels=1: regression)."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, h: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        drop = lambda t: Dropout(cfg.cls_dropout)(t, deterministic=deterministic)
        x = h[:, 0]
        if cfg.family == "bert":
            x = jnp.tanh(Dense(cfg.hidden_size, ("embed", "embed2"), cfg, name="pooler")(x))
            return Dense(cfg.num_labels, ("embed", "labels"), cfg, name="out_proj")(drop(x))
        x = Dense(cfg.hidden_size, ("embed", "embed2"), cfg, name="dense")(drop(x))
        x = drop(activation("gelu")(x))
        return Dense(cfg.num_labels, ("embed", "labels"), cfg, name="out_proj")(x)


class TokenClassificationHead(nn.Module):
    """Per-token labels (NER): dropout, dense -> [B, L, num_labels]."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, h: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        h = Dropout(cfg.cls_dropout)(h, deterministic=deterministic)
        return Dense(cfg.num_labels, ("embed", "labels"), cfg, name="classifier")(h)


class QuestionAnsweringHead(nn.Module):
    """Span extraction: dense to 2 -> [B, L, 2] (start, end logits on the last axis)."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, h: Array, deterministic: bool = True) -> Array:
        return Dense(2, ("embed", "labels"), self.config, name="qa_outputs")(h)

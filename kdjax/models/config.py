"""The one configuration type of the encoder family (teacher and every student).

`EncoderConfig` is a frozen dataclass so it can be a static attribute of a Flax module and a
jit-static argument. Config files are ml-collections (`configs/*.py`, `get_config().model`);
`EncoderConfig.from_any` converts them and validates every field with an error naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from kdjax.errors import ConfigError

HEADS = ("none", "discriminator", "generator", "classification", "token_classification", "qa")
FAMILIES = ("electra", "bert")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "tanh")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("auto", "einsum", "fused")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Shape and numerics of an ELECTRA/BERT encoder, dense or low-rank factorized.

    Ranks of 0 mean "dense". The factorized students of the paper set `ffn_rank` (LF-V1),
    additionally `attention_rank` (LF-V2), and additionally `embedding_rank` (LF-V3).
    """

    vocab_size: int = 30000
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    # 0 = hidden_size. E != H adds `embeddings_project` (E < H: ELECTRA-Small; E > H: the
    # ELECTRA generator, which shares the discriminator's E-wide embeddings).
    embedding_size: int = 0
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float = -1.0  # < 0: use hidden_dropout (as transformers does)
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    pad_token_id: int = 0
    # Low-rank factorization (0 = dense).
    embedding_rank: int = 0
    attention_rank: int = 0
    ffn_rank: int = 0
    # Head on top of the encoder.
    head: str = "none"
    num_labels: int = 2
    # Naming/behaviour family: "bert" adds the pooler to classification heads and exports as BERT.
    family: str = "electra"
    # Numerics and memory.
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    remat: bool = False
    scan_layers: bool = False
    # With scan_layers: layer bodies per loop iteration (a compile / step-time trade-off on
    # XLA:CPU, docs/performance.md); need not divide num_layers.
    scan_unroll: int = 1

    def __post_init__(self) -> None:
        self.validate()

    # -- derived -----------------------------------------------------------------------------
    @property
    def emb_size(self) -> int:
        """Width of the embedding layer (E); equals hidden_size unless ELECTRA-Small style."""
        return self.embedding_size or self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def is_factorized(self) -> bool:
        return bool(self.embedding_rank or self.attention_rank or self.ffn_rank)

    @property
    def cls_dropout(self) -> float:
        return self.hidden_dropout if self.classifier_dropout < 0 else self.classifier_dropout

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise `ConfigError` naming the offending key for any inconsistent value."""
        positive = (
            "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "scan_unroll",
        )
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{key} must be a positive integer, got {value!r}")
        for key in ("embedding_size", "embedding_rank", "attention_rank", "ffn_rank"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"model.{key} must be an integer >= 0 (0 = off), got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_heads={self.num_heads}; pick a head count that divides it"
            )
        for key, limit, what in (
            ("embedding_rank", min(self.vocab_size, self.emb_size), "[vocab, embedding] matrix"),
            ("attention_rank", self.hidden_size, "[hidden, hidden] Q/K/V/O projection"),
            ("ffn_rank", min(self.hidden_size, self.intermediate_size), "[hidden, ffn] matrix"),
        ):
            rank = getattr(self, key)
            if rank > limit:
                raise ConfigError(
                    f"model.{key}={rank} is larger than the {what} it factors allows "
                    f"(max {limit}); use a rank <= {limit}, or 0 for dense"
                )
        for key in ("hidden_dropout", "attention_dropout", "classifier_dropout",
                    "layer_norm_eps", "initializer_range"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"model.{key} must be a number, got {value!r}")
        for key in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"model.{key} must be in [0, 1), got {value!r}")
        if not self.classifier_dropout < 1.0:
            raise ConfigError(
                f"model.classifier_dropout must be < 0 (= hidden_dropout) or in [0, 1), "
                f"got {self.classifier_dropout!r}"
            )
        for key in ("remat", "scan_layers"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"model.{key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.num_labels, int) or isinstance(self.num_labels, bool):
            raise ConfigError(f"model.num_labels must be an integer, got {self.num_labels!r}")
        choices = (
            ("head", HEADS), ("family", FAMILIES), ("hidden_act", ACTIVATIONS),
            ("dtype", DTYPES), ("param_dtype", DTYPES), ("attention_impl", ATTENTION_IMPLS),
        )
        for key, allowed in choices:
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"model.{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}"
                )
        if self.head in ("classification", "token_classification") and self.num_labels < 1:
            raise ConfigError(f"model.num_labels must be >= 1 for head {self.head!r}")
        if self.layer_norm_eps <= 0:
            raise ConfigError(f"model.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

    # -- conversion ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> EncoderConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_any(cls, cfg: Any) -> EncoderConfig:
        """Build from an `EncoderConfig`, a dict, or an ml-collections `ConfigDict`.

        Unknown keys are an error naming the key (a typo must not silently become a default).
        """
        if isinstance(cfg, EncoderConfig):
            return cfg
        if hasattr(cfg, "to_dict"):
            cfg = cfg.to_dict()
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"model config must be a mapping or EncoderConfig, got {type(cfg)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(
                f"unknown model config key(s) {', '.join('model.' + k for k in unknown)}; "
                f"valid keys: {', '.join(sorted(known))}"
            )
        return cls(**dict(cfg))

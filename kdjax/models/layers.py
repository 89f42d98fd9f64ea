"""Building blocks shared by the encoder: dense / low-rank projections, embeddings, LayerNorm.

Every parameter carries logical axis names (`host_init.Recorded` boxes) so that a sharding is
just a rules table (`kdjax.sharding`). Logical names used here:
  vocab, embed (hidden or embedding width), heads (the joined heads x head_dim width), mlp,
  rank (the inner dimension of a low-rank factorization), norm, labels, layers (scan axis).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.config import EncoderConfig
from kdjax.models.dense_dot import dense_dot_general
from kdjax.models.dropout import Dropout
from kdjax.models.host_init import Init, recorded

Array = jax.Array


# Every kdjax parameter is created through these: logical axes for sharding, and the recorded
# initialiser that lets the state be drawn on the host without an init program (host_init).
def partitioned_normal(std: float, axes: tuple[str | None, ...]) -> Callable:
    return recorded(Init("normal", float(std)), axes)


def partitioned_zeros(axes: tuple[str | None, ...]) -> Callable:
    return recorded(Init("zeros"), axes)


def partitioned_ones(axes: tuple[str | None, ...]) -> Callable:
    return recorded(Init("ones"), axes)


def factor_std(std: float, rank: int) -> float:
    """Std of each factor so that the product A @ B has entries of std `std` at init.

    (A @ B)_ij = sum_r A_ir B_rj has variance rank * s^4, so s = sqrt(std / sqrt(rank)).
    """
    return math.sqrt(std / math.sqrt(rank))


def gelu_exact(x: Array) -> Array:
    """Exact GELU, `x * Phi(x)`, in torch's form `0.5 x (1 + erf(x / sqrt 2))`.

    `jax.nn.gelu(approximate=False)` uses `erfc`, which XLA:CPU evaluates about 2.4x slower
    (forward) than `erf`; the two agree to 1 ulp over the range activations take.
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))).astype(x.dtype))


def activation(name: str) -> Callable[[Array], Array]:
    """The activation called `name` in HF configs. ELECTRA/BERT use exact (erf) GELU."""
    if name == "gelu":
        return gelu_exact
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: nn.gelu(x, approximate=True)
    return {"relu": nn.relu, "silu": nn.silu, "tanh": jnp.tanh}[name]


def LayerNorm(config: EncoderConfig, name: str | None = None) -> nn.LayerNorm:  # noqa: N802
    """LayerNorm with two-pass variance (like torch) and logical axes on its parameters."""
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.compute_dtype,
        param_dtype=config.weight_dtype,
        use_fast_variance=False,  # E[x^2]-E[x]^2 loses digits vs torch's two-pass variance
        scale_init=partitioned_ones(("norm",)),
        bias_init=partitioned_zeros(("norm",)),
        name=name,
    )


def Dense(  # noqa: N802
    features: int,
    axes: tuple[str | None, str | None],
    config: EncoderConfig,
    name: str | None = None,
    use_bias: bool = True,
) -> nn.Dense:
    """`x @ kernel + bias`, kernel [in, out] with logical axes `axes`."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=config.compute_dtype,
        param_dtype=config.weight_dtype,
        kernel_init=partitioned_normal(config.initializer_range, axes),
        bias_init=partitioned_zeros((axes[1],)),
        dot_general=dense_dot_general,
        name=name,
    )


class LowRankDense(nn.Module):
    """A dense layer factored as `(x @ down) @ up + bias`: down [in, rank], up [rank, out].

    Parameters: in*rank + rank*out + out instead of in*out + out. The bias sits on the second
    factor so that merging the factors gives exactly a dense layer with the same bias.
    """

    features: int
    rank: int
    axes: tuple[str | None, str | None]
    config: EncoderConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        std = factor_std(cfg.initializer_range, self.rank)
        common = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                      dot_general=dense_dot_general)
        h = nn.Dense(
            self.rank, use_bias=False, name="down",
            kernel_init=partitioned_normal(std, (self.axes[0], "rank")), **common,
        )(x)
        return nn.Dense(
            self.features, name="up",
            kernel_init=partitioned_normal(std, ("rank", self.axes[1])),
            bias_init=partitioned_zeros((self.axes[1],)), **common,
        )(h)


def projection(
    features: int, rank: int, axes: tuple[str | None, str | None], config: EncoderConfig, name: str
) -> nn.Module:
    """A `Dense` when rank == 0, else a `LowRankDense` of that rank."""
    if rank:
        return LowRankDense(features, rank, axes, config, name=name)
    return Dense(features, axes, config, name=name)


class WordEmbeddings(nn.Module):
    """Word embedding table [vocab, E], or its low-rank form [vocab, r] @ [r, E] (LF-V3).

    `attend` is the transposed map used by tied MLM heads: [..., E] -> [..., vocab].
    """

    config: EncoderConfig

    def setup(self) -> None:
        cfg = self.config
        e, r = cfg.emb_size, cfg.embedding_rank
        if r:
            std = factor_std(cfg.initializer_range, r)
            self.embedding = self.param(
                "embedding", partitioned_normal(std, ("vocab", "rank")),
                (cfg.vocab_size, r), cfg.weight_dtype,
            )
            self.projection = self.param(
                "projection", partitioned_normal(std, ("rank", "embed")), (r, e), cfg.weight_dtype
            )
        else:
            self.embedding = self.param(
                "embedding", partitioned_normal(cfg.initializer_range, ("vocab", "embed")),
                (cfg.vocab_size, e), cfg.weight_dtype,
            )

    def __call__(self, input_ids: Array) -> Array:
        """[batch, length] int -> [batch, length, E]."""
        dtype = self.config.compute_dtype
        x = jnp.take(jnp.asarray(self.embedding, dtype), input_ids, axis=0)
        if self.config.embedding_rank:
            x = x @ jnp.asarray(self.projection, dtype)
        return x

    def attend(self, x: Array) -> Array:
        """[..., E] -> [..., vocab] logits against the (tied) embedding matrix."""
        dtype = self.config.compute_dtype
        x = x.astype(dtype)
        if self.config.embedding_rank:
            # (x @ B^T) @ A^T: never forms the [vocab, E] product.
            x = x @ jnp.asarray(self.projection, dtype).T
        return x @ jnp.asarray(self.embedding, dtype).T


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout: [B, L] -> [B, L, E]."""

    config: EncoderConfig
    deterministic: bool = True

    def setup(self) -> None:
        cfg = self.config
        self.word_embeddings = WordEmbeddings(cfg)
        self.position_embeddings = nn.Embed(
            cfg.max_position_embeddings, cfg.emb_size, dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            embedding_init=partitioned_normal(cfg.initializer_range, (None, "embed")),
        )
        self.token_type_embeddings = nn.Embed(
            cfg.type_vocab_size, cfg.emb_size, dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            embedding_init=partitioned_normal(cfg.initializer_range, (None, "embed")),
        )
        self.LayerNorm = LayerNorm(cfg)
        self.dropout = Dropout(cfg.hidden_dropout)

    def __call__(self, input_ids: Array, token_type_ids: Array, position_ids: Array) -> Array:
        x = self.word_embeddings(input_ids)
        x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        x = self.LayerNorm(x)
        return self.dropout(x, deterministic=self.deterministic)

    def attend(self, x: Array) -> Array:
        return self.word_embeddings.attend(x)

"""Parameter counts and fp32 sizes of a model config, with a breakdown by part."""

from __future__ import annotations

import math
from typing import Any

import jax
from flax.traverse_util import flatten_dict

from kdjax.models.config import EncoderConfig
from kdjax.models.model import abstract_params

MB = 1e6  # the paper's sizes (432 MB teacher, 53 MB ELECTRA-Small) are in 10^6 bytes


def _part(path: tuple[str, ...]) -> str:
    if path[0] in ("embeddings", "embeddings_project"):
        return "embeddings"
    if path[0] == "encoder":
        # encoder/layer_i/<part>/... or encoder/layers/<part>/... (scan): part is path[2]
        return "attention" if path[2] in ("attention", "attention_norm") else "ffn"
    return "heads"


def param_report(config: Any) -> dict[str, Any]:
    """{"params": N, "fp32_mb": X, "breakdown": {embeddings, attention, ffn, heads}, ...}.

    Computed from `jax.eval_shape` of the model's init: no memory is allocated, so this is
    instant even for the base teacher.
    """
    cfg = EncoderConfig.from_any(config)
    flat = flatten_dict(abstract_params(cfg))
    breakdown = {"embeddings": 0, "attention": 0, "ffn": 0, "heads": 0}
    for path, leaf in flat.items():
        breakdown[_part(path)] += math.prod(leaf.shape)
    total = sum(breakdown.values())
    return {
        "params": total,
        "fp32_mb": round(total * 4 / MB, 2),
        "bf16_mb": round(total * 2 / MB, 2),
        "breakdown": breakdown,
        "layers": cfg.num_layers,
        "hidden": cfg.hidden_size,
        "ranks": {
            "embedding": cfg.embedding_rank,
            "attention": cfg.attention_rank,
            "ffn": cfg.ffn_rank,
        },
        "head": cfg.head,
    }


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))

"""Input statistics of a model's linear layers, for activation-aware SVD (`kdjax.factorize`).

`input_grams` runs the model on a few batches and sums, for every encoder projection
(attention query / key / value / output, FFN intermediate / output), X^T X over the real
(unpadded) tokens of its input X [tokens, in]. A truncated SVD whitened by that Gram matrix
keeps what the layer does to the inputs it actually sees, not to every direction equally:
the student started from it is closer to the teacher on real text (SVD-LLM, Wang et al. 2024;
ASVD, Yuan et al. 2023 use the same idea with a diagonal scaling).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from kdjax.models.config import EncoderConfig

PROJECTION_NAMES = ("query", "key", "value", "output", "intermediate")


def _projection_key(path: tuple[str, ...]) -> str | None:
    """'encoder/layer_3/attention/query/' for a Dense at that path, else None."""
    if len(path) < 3 or path[0] != "encoder" or not path[1].startswith("layer_"):
        return None
    if path[-1] not in PROJECTION_NAMES:
        return None
    return "/".join(path) + "/"


def input_grams(params: Mapping, cfg: EncoderConfig,
                batches: Iterable[Mapping[str, np.ndarray]],
                layers: Iterable[int] | None = None) -> dict[str, np.ndarray]:
    """Per projection: (sum of x^T x [in, in] over real tokens) / token count, float64.

    Args:
      params: the model's parameters (either layer layout).
      cfg: its config.
      batches: dicts with ``input_ids`` and ``attention_mask`` [batch, length].
      layers: only these layers (1-based, as `kdjax.factorize.select_layers` numbers them);
        default all.
    Returns:
      {'encoder/layer_{i}/attention/{query,key,value,output}/' and
       'encoder/layer_{i}/{intermediate,output}/': Gram [in, in]} (0-based layers, the loop
      layout's names), the mean over tokens of x x^T.
    """
    import jax
    import jax.numpy as jnp
    from flax.traverse_util import flatten_dict

    from kdjax.factorize import unstack_layers
    from kdjax.models.model import build_model

    loop_cfg = cfg.replace(scan_layers=False, head="none")
    loop = unstack_layers(params, cfg)
    loop = {k: v for k, v in loop.items() if k in ("embeddings", "encoder")}
    model = build_model(loop_cfg)
    wanted = None if layers is None else {f"layer_{t - 1}" for t in layers}

    @jax.jit
    def batch_grams(p: Any, ids: Any, mask: Any) -> Any:
        m = mask.astype(jnp.float32)[..., None]

        def record(next_fun: Any, args: tuple, kwargs: dict, context: Any) -> Any:
            path = tuple(context.module.path)
            if isinstance(context.module, nn.Dense) and context.method_name == "__call__" \
                    and _projection_key(path) and (wanted is None or path[1] in wanted):
                x = args[0].astype(jnp.float32)  # [B, L, in]; padding rows weigh 0
                context.module.sow("grams", "sum", jnp.einsum("bli,blj->ij", x * m, x))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            _, state = model.apply({"params": p}, ids, attention_mask=mask, deterministic=True,
                                   mutable=["grams"])
        return state["grams"]

    sums: dict[str, np.ndarray] = {}
    tokens = 0
    rows = 0
    for batch in batches:
        ids = np.asarray(batch["input_ids"])
        mask = np.asarray(batch["attention_mask"]).astype(np.int32)
        rows = rows or len(ids)
        if len(ids) < rows:  # a short last batch: padding rows (mask 0), not a second compile
            ids = np.concatenate([ids, np.zeros((rows - len(ids), ids.shape[1]), ids.dtype)])
            mask = np.concatenate([mask, np.zeros((rows - len(mask), mask.shape[1]),
                                                  mask.dtype)])
        got = flatten_dict(jax.device_get(batch_grams(loop, ids, mask)))
        tokens += int(mask.sum())
        for path, value in got.items():  # path: (..module path.., "sum"); value: (gram,)
            key = _projection_key(tuple(path[:-1]))
            assert key is not None
            sums[key] = sums.get(key, 0.0) + np.asarray(value[0], np.float64)
    return {k: v / max(1, tokens) for k, v in sums.items()}

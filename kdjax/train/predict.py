"""Deterministic forward passes over a featurized split -> numpy logits for every row.

`Predictor` jits `model.apply(..., deterministic=True).logits` once with explicit shardings
(params as the trainer shards them, inputs along the data-parallel mesh axes, logits
replicated) and runs it over `TaskData.arrays` in fixed-size, zero-padded batches, so one
program serves every evaluation of a run (one per length bucket with `buckets`). Every
process feeds the full (identical) host arrays and reads the full logits back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import sharding as shd
from kdjax.models.config import EncoderConfig
from kdjax.models.model import build_model

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _data_parallel(mesh: Any) -> int:
    return math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape)


def _host(x: jax.Array) -> np.ndarray:
    """A replicated global array -> numpy (works when it spans several processes)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(x.addressable_shards[0].data)


class Predictor:
    """`predictor(params, arrays) -> np.ndarray` logits [N, ...] (float32).

    Call it inside the run's mesh context (`jax.set_mesh` + logical rules), as the trainer does.
    With `buckets`, rows are grouped by length and each group is padded only to its bucket
    (one compiled program per bucket length, cached by jit); token-level outputs (NER, QA) are
    padded back to the arrays' full length with zeros, so callers see [N, L, ...] either way.

    Args:
      config: the model's EncoderConfig (with its task head).
      mesh: the device mesh.
      param_shardings: NamedShardings of the params tree the predictor will be given.
      batch_size: rows per forward (rounded up to a multiple of the data-parallel size).
      buckets: lengths to pad to (e.g. (16, 32, 64, 128)); None = every row to the full length.
    """

    def __init__(self, config: EncoderConfig, mesh: Any, param_shardings: Any,
                 batch_size: int = 64, buckets: Sequence[int] | None = None):
        self.config = config
        self.mesh = mesh
        dp = _data_parallel(mesh)
        self.batch_size = max(dp, -(-int(batch_size) // dp) * dp)
        self.buckets = tuple(buckets) if buckets else None
        self.input_sharding = shd.batch_sharding(mesh, 2)
        self.token_level = config.head in ("token_classification", "qa")
        model = build_model(config)

        def forward(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
            out = model.apply({"params": params}, batch["input_ids"],
                              attention_mask=batch["attention_mask"],
                              token_type_ids=batch["token_type_ids"], deterministic=True)
            return out.logits.astype(jnp.float32)

        self._fn = jax.jit(
            forward,
            in_shardings=(param_shardings, {k: self.input_sharding for k in INPUT_KEYS}),
            out_shardings=shd.replicated(mesh),
        )

    def _place(self, host: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(host.shape, self.input_sharding,
                                            lambda idx: host[idx])

    def _groups(self, arrays: dict[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
        """[(padded length, row indices)], rows in their original order within a group."""
        full = int(arrays["input_ids"].shape[1])
        if self.buckets is None:
            return [(full, np.arange(len(arrays["input_ids"])))]
        from kdjax.data.task_batches import bucket_lengths

        lengths = np.asarray(arrays["attention_mask"]).sum(axis=1)
        sizes = np.asarray(bucket_lengths(self.buckets, full))
        which = np.minimum(np.searchsorted(sizes, lengths, side="left"), len(sizes) - 1)
        return [(int(sizes[b]), np.nonzero(which == b)[0]) for b in range(len(sizes))
                if np.any(which == b)]

    def __call__(self, params: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
        n = len(arrays["input_ids"])
        full = int(arrays["input_ids"].shape[1])
        b = self.batch_size
        out: np.ndarray | None = None
        for length, rows in self._groups(arrays):
            for start in range(0, len(rows), b):
                idx = rows[start:start + b]
                chunk = {}
                for k in INPUT_KEYS:
                    part = np.asarray(arrays[k][idx, :length], np.int32)
                    if len(part) < b:  # pad to the compiled shape; padded rows are dropped
                        pad = np.zeros((b - len(part), *part.shape[1:]), np.int32)
                        part = np.concatenate([part, pad])
                    chunk[k] = self._place(part)
                logits = _host(self._fn(params, chunk))[: len(idx)]
                if self.token_level and length < full:  # back to [rows, L, ...]
                    widths = [(0, 0), (0, full - length)] + [(0, 0)] * (logits.ndim - 2)
                    logits = np.pad(logits, widths)
                if out is None:
                    out = np.zeros((n, *logits.shape[1:]), np.float32)
                out[idx] = logits
        return out if out is not None else np.zeros((0,), np.float32)


def predict(config: EncoderConfig, params: Any, arrays: dict[str, np.ndarray], *,
            batch_size: int = 64, mesh: Any = None) -> np.ndarray:
    """One-off convenience: logits for every row of `arrays` with host `params` (numpy).

    Builds a data-parallel mesh over all devices when none is given; params are replicated.
    """
    import flax.linen as nn

    mesh = mesh or shd.make_mesh((-1, 1, 1))
    rules = shd.get_rules("replicated")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        rep = jax.tree_util.tree_map(lambda _: shd.replicated(mesh), params)
        placed = jax.tree_util.tree_map(
            lambda x, s: jax.make_array_from_callback(np.shape(x), s,
                                                      lambda idx: np.asarray(x)[idx]),
            params, rep)
        return Predictor(config, mesh, rep, batch_size)(placed, arrays)

"""Moving trees between the host and the mesh, and meeting points of several processes.

Host trees are numpy (identical on every process); device trees are global `jax.Array`s
with `NamedSharding`s. Nothing here gathers a whole sharded tree onto one process unless its
name says so (`gather`, for writing model directories).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from kdjax.errors import ConfigError


@contextmanager
def mesh_context(mesh: Any, rules: Any) -> Iterator[None]:
    """Trace and run under the mesh and the logical-axis rules (both are needed: the legacy
    `with mesh:` silently drops `nn.with_logical_constraint` in flax >= 0.12.2)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def cast_tree(tree: Any, dtype: Any) -> Any:
    """Host numpy tree with every leaf cast to `dtype`."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x).astype(dtype), tree)


def place(host_tree: Any, shardings: Any) -> Any:
    """Host numpy (identical on every process) -> global arrays with `shardings`; each
    process only materialises the shards its own devices hold."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s,
                                                  lambda idx: np.asarray(x)[idx]),
        host_tree, shardings,
    )


def overlay(params: Any, shardings: Any, host_partial: Any, what: str) -> Any:
    """`params` (global arrays) with the leaves present in `host_partial` (a nested dict of
    numpy arrays, a subset of the tree) replaced, placed directly into their shardings.

    No leaf is gathered, so this works when the params are sharded across processes (fsdp
    over several hosts). Leaves keep their dtype; a missing key or a shape that differs is a
    `ConfigError` naming `what` (e.g. "student.init=PATH").
    """
    # keep_empty_nodes: an empty subtree (a distill objective with no projections has
    # params["proj"] == {}) must survive, or the state no longer matches its shardings
    flat = flatten_dict(dict(params), keep_empty_nodes=True)
    flat_sh = flatten_dict(dict(shardings))
    for key, value in flatten_dict(dict(host_partial)).items():
        name = "/".join(key)
        if key not in flat:
            raise ConfigError(f"{what}: parameter {name} does not exist in this model")
        want = tuple(flat[key].shape)
        if tuple(np.shape(value)) != want:
            raise ConfigError(f"{what}: parameter {name} has shape {tuple(np.shape(value))}, "
                              f"the model expects {want}")
        host = np.asarray(value).astype(flat[key].dtype)
        flat[key] = jax.make_array_from_callback(want, flat_sh[key], lambda idx, h=host: h[idx])
    return unflatten_dict(flat)


def gather(tree: Any) -> Any:
    """Global arrays -> full numpy on every process (for writing model directories)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def sync_processes(name: str, timeout_s: int = 1800) -> None:
    """Barrier over all processes through the coordination service (no collectives).

    Processes finish compiling at different times (a loaded host can be minutes behind); the
    first collective's transport setup (gloo on CPU) only waits 30 s, so steps are compiled
    ahead of time and processes meet here before running one. `multihost_utils`'
    `sync_global_devices` is itself a collective, hence the coordination-service barrier.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if client is not None:
        client.wait_at_barrier(name, timeout_s * 1000)

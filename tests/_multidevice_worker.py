"""Run by tests/test_multidevice.py in a subprocess with simulated CPU devices.

usage: _multidevice_worker.py MODE WORKDIR [PROCESS_ID PORT]
  compare  -- 8 devices, one process: the sharded step on several meshes vs one device
  restore  -- 8 devices: checkpoint on (data=8), restore on (fsdp=4, tensor=2)
  multi    -- one of two processes x 4 devices (jax.distributed on localhost)
  single8  -- the same steps on one process x 8 devices
  multi_fsdp_svd / single_fsdp_svd -- as multi / single8, on an fsdp mesh, the student
              initialised from the teacher's SVD factors (student.init=teacher_svd)
Prints one JSON line (prefixed RESULT) with what the test asserts on.
"""

import json
import os
import sys

MODE, WORKDIR = sys.argv[1], sys.argv[2]
MULTI = MODE.startswith("multi")
N_LOCAL = 4 if MULTI else 8
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={N_LOCAL}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
if os.environ.get("KDJAX_COMPILATION_CACHE"):
    from kdjax.cli import enable_compilation_cache

    enable_compilation_cache()
if MULTI:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{sys.argv[4]}",
                               num_processes=2, process_id=int(sys.argv[3]))

import numpy as np  # noqa: E402

from kdjax.config_lib import load_config  # noqa: E402
from kdjax.data.corpus import local_rows, to_global  # noqa: E402
from kdjax.train.pretrain_distill import prepare, train  # noqa: E402
from kdjax.train.trainer import CompiledSteps  # noqa: E402

BASE = ["data.max_length=32", "train.batch_size=8", "train.steps=2", "train.log_every=1",
        "train.save_every=2", "train.warmup_steps=0", "train.async_checkpoints=False",
        "student.model.hidden_dropout=0.0", "student.model.attention_dropout=0.0"]
TOKENIZER = os.path.join(WORKDIR, "tokenizer")
TEACHER = os.path.join(WORKDIR, "teacher")  # a kdjax model dir the test writes


def config(shape, rules, n_devices=0, extra=()):
    overrides = [*BASE, f"mesh.shape={tuple(shape)}", f"mesh.rules={rules}",
                 f"mesh.num_devices={n_devices}", f"data.tokenizer={TOKENIZER}", *extra]
    return load_config("debug_distill", overrides)


def run_steps(name, shape, rules, n_devices=0, steps=2, extra=()):
    session, _ = prepare(config(shape, rules, n_devices, extra), os.path.join(WORKDIR, name),
                         "distill")
    losses = []
    with session.context():
        state = session.state
        rows = local_rows(session.batch_sharding, session.batches.global_batch)
        step_fn = CompiledSteps(session.step_fn, state, session.frozen,
                                session.batches.shapes(), session.batch_sharding,
                                precompile=jax.process_count() > 1)
        for step in range(steps):
            host = session.batches.rows(step, rows)
            batch = to_global(host, session.batch_sharding, session.batches.global_batch)
            if step == 0:
                lowered = session.step_fn.lower(state, session.frozen, batch).as_text()
            state, metrics = step_fn(state, session.frozen, batch)
            losses.append(float(metrics["loss"]))
    return session, state, losses, lowered


def flat(tree):
    from jax.experimental import multihost_utils

    tree = multihost_utils.process_allgather(tree, tiled=True) if jax.process_count() > 1 \
        else jax.device_get(tree)
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def max_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def spec_of(arr):
    return [list(x) if isinstance(x, tuple) else x for x in arr.sharding.spec]


result = {}
if MODE == "compare":
    base, base_state, base_losses, _ = run_steps("one", (1, 1, 1), "replicated", n_devices=1)
    base_params = flat(base_state.params)
    result["base_losses"] = base_losses
    for name, shape, rules in (("data8", (8, 1, 1), "replicated"), ("fsdp8", (1, 8, 1), "fsdp"),
                               ("mixed", (2, 2, 2), "tensor")):
        session, state, losses, lowered = run_steps(name, shape, rules)
        result[name] = {
            "losses": losses,
            "param_diff": max_diff(flat(state.params), base_params),
            "constraints": lowered.count("@Sharding") + lowered.count("sharding_constraint"),
            "teacher_embedding_spec": spec_of(session.frozen["embeddings"]["word_embeddings"]
                                              ["embedding"]),
            "student_ffn_spec": spec_of(state.params["student"]["encoder"]["layer_0"]
                                        ["intermediate"]["down"]["kernel"]),
            "teacher_query_spec": spec_of(session.frozen["encoder"]["layer_0"]["attention"]
                                          ["query"]["kernel"]),
            "opt_keys": sorted(state.opt_state[1][0].mu.keys()),
        }
elif MODE == "restore":
    summary = train(config((8, 1, 1), "replicated"), os.path.join(WORKDIR, "ck"), "distill",
                    progress=False)
    from kdjax.train.checkpoint import read_state_numpy

    saved, _ = read_state_numpy(os.path.join(WORKDIR, "ck", "checkpoints"))
    session, _ = prepare(config((1, 4, 2), "tensor", extra=["train.steps=4"]),
                         os.path.join(WORKDIR, "ck"), "distill")
    restored = flat(session.state.params)
    saved_flat = {k: np.asarray(v) for k, v in
                  ((jax.tree_util.keystr(p), x) for p, x in
                   jax.tree_util.tree_flatten_with_path(saved["params"])[0])}
    result = {
        "start": session.start,
        "diff": max_diff(restored, saved_flat),
        "ffn_spec": spec_of(session.state.params["student"]["encoder"]["layer_0"]
                            ["intermediate"]["down"]["kernel"]),
        "mesh": dict(session.mesh.shape),
    }
    with session.context():
        rows = local_rows(session.batch_sharding, 8)
        batch = to_global(session.batches.rows(2, rows), session.batch_sharding, 8)
        state, metrics = session.step_fn(session.state, session.frozen, batch)
        result["next_loss"] = float(metrics["loss"])
elif MODE in ("multi", "single8"):
    _, state, losses, _ = run_steps(MODE, (8, 1, 1), "replicated", steps=3)
    result = {"losses": losses, "processes": jax.process_count(),
              "devices": jax.device_count(), "process": jax.process_index()}
elif MODE in ("multi_fsdp_svd", "single_fsdp_svd"):
    svd = [f"teacher.path={TEACHER}", "teacher.init=", "student.init=teacher_svd"]
    session, state, losses, _ = run_steps(MODE, (1, 8, 1), "fsdp", steps=3, extra=svd)
    kernel = state.params["student"]["encoder"]["layer_0"]["intermediate"]["down"]["kernel"]
    result = {"losses": losses, "processes": jax.process_count(),
              "devices": jax.device_count(), "process": jax.process_index(),
              "ffn_spec": spec_of(kernel),
              "addressable_rows": int(sum(s.data.shape[0] for s in kernel.addressable_shards))}
print("RESULT " + json.dumps(result), flush=True)

"""`kdjax compile`: the run's own step compiled for a TPU topology on this CPU host.

The HLO parsers and the topology table are checked on text; the compiles need libtpu (the
`tpu` extra, or `pip install libtpu`). Without it those tests skip with the reason - except
under CI (`KDJAX_REQUIRE_LIBTPU=1`, set by .ci/run), where a missing libtpu fails them, so
they cannot silently never run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdjax.errors import ConfigError
from kdjax.tpu_compile import (
    array_bytes,
    collectives,
    hlo_costs,
    resolve_topology,
    task_arrays,
)

REPO = Path(__file__).resolve().parents[1]
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
REQUIRED = os.environ.get("KDJAX_REQUIRE_LIBTPU", "") not in ("", "0")


@pytest.fixture(scope="module")
def libtpu():
    """Skip (locally) or fail (CI) without libtpu."""
    if not HAVE_LIBTPU:
        message = "libtpu is not installed (pip install -e '.[tpu]' or pip install libtpu)"
        if REQUIRED:
            pytest.fail(f"KDJAX_REQUIRE_LIBTPU is set but {message}")
        pytest.skip(message)


# -- topology names (no libtpu needed) ----------------------------------------------------------
@pytest.mark.parametrize("name, libtpu_name, chips, accelerator, chip_config", [
    ("v4:2x2x2", "v4:2x2x2", 8, "v4-16", "megacore"),  # one JAX device per v4 chip
    ("v4-32", "v4:2x2x4", 16, "v4-32", "megacore"),
    ("v4-8", "v4:2x2x1", 4, "v4-8", "megacore"),
    ("v5e:16x16", "v5e:16x16", 256, "v5litepod-256", "default"),
    ("v5e-256", "v5e:16x16", 256, "v5litepod-256", "default"),
    ("v5litepod-16", "v5e:4x4", 16, "v5litepod-16", "default"),
    ("v5p:2x2x1", "v5:2x2x1", 4, "v5p-8", "megacore"),
    ("v6e:4x4", "v6e:4x4", 16, "v6e-16", "default"),
])
def test_topology_names(name, libtpu_name, chips, accelerator, chip_config):
    topo = resolve_topology(name)
    assert (topo.topology_name, topo.chips, topo.accelerator_type, topo.chip_config) == (
        libtpu_name, chips, accelerator, chip_config)


@pytest.mark.parametrize("name, message", [
    ("v7x:2x2x1", "unknown TPU family 'v7x'"),
    ("v4:2x2", "a v4 topology has 3 dimensions"),
    ("v5e:2x2x1", "a v5e topology has 2 dimensions"),
    ("tpu", "neither a TPU topology"),
    ("v3-8", "kdjax compile knows v4, v5p, v5e, v6e"),
])
def test_bad_topology_names(name, message):
    with pytest.raises(ConfigError, match=message):
        resolve_topology(name)


# -- the HLO readers (no libtpu needed) ---------------------------------------------------------
def test_array_bytes_with_tpu_tiles():
    assert array_bytes("f32[30000,32]{1,0:T(8,128)}") == 30000 * 32 * 4
    # padded: the 32-wide minor dimension fills a 128-lane tile
    assert array_bytes("f32[30000,32]{1,0:T(8,128)}", padded=True) == 30000 * 128 * 4
    assert array_bytes("f32[30000,32]{0,1:T(8,128)}", padded=True) == 32 * 30080 * 4
    assert array_bytes("bf16[5,300]{1,0:T(8,128)(2,1)}", padded=True) == 8 * 384 * 2
    assert array_bytes("s32[]{:T(128)}", padded=True) == 128 * 4
    assert array_bytes("(f32[2,3]{1,0}, bf16[4]{0})") == 24 + 8


HLO = """\
HloModule jit_train_step, is_scheduled=true

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[]{:T(128)} parameter(0)
  %b = f32[]{:T(128)} parameter(1)
  ROOT %s = f32[]{:T(128)} add(%a, %b)
}

%cond (p: (s32[], f32[64,256])) -> pred[] {
  %p = (s32[]{:T(128)}, f32[64,256]{1,0:T(8,128)}) parameter(0)
  %c = s32[]{:T(128)} constant(4)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %c), direction=LT
}

%fused_dot (x: f32[64,128], w: f32[128,256]) -> f32[64,256] {
  %x = f32[64,128]{1,0:T(8,128)} parameter(0)
  %w = f32[128,256]{1,0:T(8,128)} parameter(1)
  ROOT %conv = f32[64,256]{1,0:T(8,128)} convolution(%x, %w), window={size=1}, dim_labels=bf_io->bf
}

%body (q: (s32[], f32[64,256])) -> (s32[], f32[64,256]) {
  %q = (s32[]{:T(128)}, f32[64,256]{1,0:T(8,128)}) parameter(0)
  %g = f32[64,256]{1,0:T(8,128)} get-tuple-element(%q), index=1
  %ar = f32[64,256]{1,0} all-reduce(%g), replica_groups=mesh['x'=4,'y'=2] {'x'}, to_apply=%add
  %j = s32[]{:T(128)} get-tuple-element(%q), index=0
  ROOT %t = (s32[]{:T(128)}, f32[64,256]{1,0:T(8,128)}) tuple(%j, %ar)
}

ENTRY %main (x0: f32[64,128], w0: f32[128,256]) -> f32[64,256] {
  %x0 = f32[64,128]{1,0:T(8,128)} parameter(0), metadata={op_name="batch['x']"}
  %w0 = f32[128,256]{1,0:T(8,128)} parameter(1), metadata={op_name="state.params['w']"}
  %f = f32[64,256]{1,0:T(8,128)} fusion(%x0, %w0), kind=kOutput, calls=%fused_dot
  %ags = (f32[32,256]{1,0}, f32[64,256]{1,0}) all-gather-start(%f), replica_groups=[4,2]<=[8]
  %agd = f32[64,256]{1,0:T(8,128)} all-gather-done(%ags)
  %rs = f32[8,256]{1,0} reduce-scatter(%agd), replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %z = s32[]{:T(128)} constant(0)
  %init = (s32[]{:T(128)}, f32[64,256]{1,0:T(8,128)}) tuple(%z, %f)
  %loop = (s32[]{:T(128)}, f32[64,256]{1,0:T(8,128)}) while(%init), condition=%cond, body=%body
  ROOT %out = f32[64,256]{1,0:T(8,128)} get-tuple-element(%loop), index=1
}
"""


def test_collectives_by_kind_with_loops_and_groups():
    c = collectives(HLO, num_devices=8)
    buf = 64 * 256 * 4
    # the all-reduce sits in a 4-iteration loop over groups of 4 (axis_0 of the mesh)
    assert c["all-reduce"] == {"count": 4, "bytes": 4 * buf, "wire_bytes": int(4 * 2 * 3 / 4 *
                                                                               buf)}
    # async all-gather: the gathered result, groups of 2 ([4,2]<=[8])
    assert c["all-gather"] == {"count": 1, "bytes": buf, "wire_bytes": buf // 2}
    # reduce-scatter: the full reduced buffer = 8 devices x the 8-row shard
    assert c["reduce-scatter"]["bytes"] == 8 * 8 * 256 * 4
    assert c["all-to-all"]["count"] == c["collective-permute"]["count"] == 0


def test_own_costs_scale_loop_bodies():
    costs = hlo_costs(HLO)
    assert costs["flops_once"] == costs["flops_per_step"] == 2 * 64 * 128 * 256
    assert costs["bytes_per_step"] > costs["bytes_once"]  # the all-reduce runs 4 times


def test_task_arrays_match_featurized_tasks():
    """The batch `kdjax compile` builds for a task has the keys, shapes and dtypes of
    `Task.featurize` (checked on the sequence kind, the one featurize of the base class)."""
    from kdjax.data.tasks import get_task

    class Tok:  # the slice of a tokenizer encode_texts uses
        def __call__(self, texts, *rest, max_length, **_):
            n = len(texts)
            return {"input_ids": [[2] * max_length] * n, "attention_mask": [[1] * max_length] * n,
                    "token_type_ids": [[0] * max_length] * n}

    for name in ("nsmc", "korsts"):
        task = get_task(name)
        examples = [{"text": "a", "text_a": "a", "text_b": "b", "label": 1}] * 3
        real = task.featurize(examples, Tok(), 16).arrays
        ours = task_arrays(task.kind, 16, rows=3)
        assert {k: (v.shape, v.dtype) for k, v in real.items()} == \
            {k: (v.shape, v.dtype) for k, v in ours.items()}
    assert task_arrays("span", 16)["start_positions"].dtype == np.int32
    assert task_arrays("token", 16)["labels"].shape == (1, 16)


# -- compiles (libtpu) --------------------------------------------------------------------------
_CACHE: dict[tuple, dict] = {}


def compiled(config: str, topology: str, *overrides: str) -> dict:
    """The report of one compile, cached for the module (each takes ~15 s on 2 cores)."""
    from kdjax.config_lib import load_config
    from kdjax.tpu_compile import compile_run

    key = (config, topology, overrides)
    if key not in _CACHE:
        _CACHE[key] = compile_run(load_config(config, list(overrides)), topology,
                                  config_name=config)
    return _CACHE[key]


DEBUG_RECIPES = ["configs/debug_distill.py", "configs/debug_pretrain.py",
                 "configs/finetune/debug.py"]


@pytest.mark.parametrize("topology", ["v5e:2x2", "v4:2x2x1"])
@pytest.mark.parametrize("config", DEBUG_RECIPES)
def test_debug_recipes_compile(libtpu, config, topology):
    r = compiled(config, topology)
    kind = {"v5e:2x2": "TPU v5 lite", "v4:2x2x1": "TPU v4"}[topology]
    assert (r["device_kind"], r["devices"], r["mesh"]) == (kind, 4, {"data": 4, "fsdp": 1,
                                                                     "tensor": 1})
    assert r["kind"] == {"configs/debug_distill.py": "distill", "configs/debug_pretrain.py":
                         "pretrain", "configs/finetune/debug.py": "finetune"}[config]
    parts = ("params_bytes", "optimizer_bytes", "teacher_bytes", "batch_bytes")
    assert sum(r[k] for k in parts) == r["arguments_bytes"]  # every input has its role
    assert r["params_bytes"] > 0 and r["optimizer_bytes"] > 2 * r["params_bytes"] * 0.9
    assert (r["teacher_bytes"] > 0) == (r["kind"] == "distill")
    assert r["total_bytes"] == (r["arguments_bytes"] + r["outputs_bytes"] - r["aliased_bytes"]
                                + r["temp_bytes"] + r["code_bytes"])
    assert r["fits"] and r["hbm_bytes"] == {"TPU v5 lite": 16, "TPU v4": 32}[kind] * 2**30
    # XLA's FLOPs beside kdjax's matmul model: the same order (XLA adds the elementwise work)
    assert 0.7 < r["xla_flops_per_step"] / r["analytic_flops_per_step"] < 3.0
    roof = r["roofline"]
    assert roof["step_s"] == max(roof["compute_s"], roof["hbm_s"], roof["ici_s"]) > 0
    assert 0 < roof["mfu_ceiling"] < 1 and roof["tokens_per_s"] > 0
    assert r["compile_s"] > 0


def test_data_parallel_step_all_reduces_the_gradient(libtpu):
    """Replicated parameters, batch split 4 ways: all-reduces carrying the gradient of the
    trainable parameters (XLA leaves out what is provably zero: the position embeddings past
    the 64 positions used), and no parameter gathering."""
    r = compiled("configs/debug_distill.py", "v5e:2x2")
    c = r["collectives"]
    assert c["all-reduce"]["count"] >= 1
    assert 0.9 * r["unpadded_bytes"]["params"] <= c["all-reduce"]["bytes"]
    assert c["all-gather"]["count"] == c["reduce-scatter"]["count"] == 0


def test_fsdp_splits_the_parameters(libtpu):
    """fsdp over the 4 devices: ~1/4 of the replicated per-device parameter (and teacher)
    bytes - every large parameter, the low-rank factors and word embedding included."""
    rep = compiled("configs/debug_distill.py", "v5e:2x2")
    fsdp = compiled("configs/debug_distill.py", "v5e:2x2", "mesh.preset=fsdp")
    assert fsdp["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and fsdp["rules"] == "fsdp"
    for part in ("params", "teacher"):
        ratio = fsdp["unpadded_bytes"][part] / rep["unpadded_bytes"][part]
        assert 0.25 <= ratio < 0.3, (part, ratio)  # LayerNorm vectors stay whole
    assert fsdp["collectives"]["all-gather"]["count"] > 0  # the weights, gathered per use


def test_grad_accum_keeps_micro_batches_on_their_devices(libtpu):
    """grad_accum=2: the same per-step FLOPs (XLA's count of the loop body scaled by its trip
    count) and still no collective but the all-reduces: every device holds its share of each
    micro-batch."""
    one = compiled("configs/debug_distill.py", "v5e:2x2")
    two = compiled("configs/debug_distill.py", "v5e:2x2", "train.grad_accum=2")
    assert two["loop_scale"]["flops"] == pytest.approx(2.0, rel=0.05)
    assert two["xla_flops_per_step"] == pytest.approx(one["xla_flops_per_step"], rel=0.1)
    others = {k: v["count"] for k, v in two["collectives"].items() if k != "all-reduce"}
    assert others == {"all-gather": 0, "reduce-scatter": 0, "all-to-all": 0,
                      "collective-permute": 0}


# -- the command line ---------------------------------------------------------------------------
def kdjax(*args: str, env: dict | None = None, drop: tuple[str, ...] = ()
          ) -> subprocess.CompletedProcess:
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop}
    return subprocess.run([sys.executable, "-m", "kdjax.cli", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=900, env=full)


def test_cli_json_contract(libtpu):
    """DESIGN.md: one JSON line with the topology, per-device bytes (total, hbm), FLOPs and
    the collectives by kind."""
    proc = kdjax("compile", "--config", "configs/debug_distill.py", "--topology", "v5e:2x2",
                 "--json", "--config.train.batch_size=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert r["topology"] == "v5e:2x2" and r["global_batch"] == 16
    assert r["total_bytes"] > 0 and r["hbm_bytes"] == 16 * 2**30
    assert r["xla_flops_per_step"] > 0 and "all-reduce" in r["collectives"]


def _one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("kdjax: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("overrides, message", [
    (["--config.mesh.shape=(3,1,1)"], "mesh.shape (3, 1, 1) needs 3 devices but 4 are available"),
    (["--config.train.batch_size=6"], "train.batch_size=6 must be divisible by data-parallel "
                                      "devices (4)"),
])
def test_cli_mesh_and_batch_errors(libtpu, overrides, message):
    line = _one_error(kdjax("compile", "--config", "configs/debug_distill.py", "--topology",
                            "v5e:2x2", *overrides))
    assert message in line


def test_cli_unknown_topology():
    line = _one_error(kdjax("compile", "--config", "configs/debug_distill.py", "--topology",
                            "v9:2x2"))
    assert "unknown TPU family 'v9'" in line


def test_cli_missing_libtpu(tmp_path):
    """Without libtpu (hidden here by a package that fails to import): one line saying how to
    install it."""
    shadow = tmp_path / "libtpu"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('hidden by test_compile')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    # (importing libtpu in this process set TPU_LIBRARY_PATH, which jax would follow)
    line = _one_error(kdjax("compile", "--config", "configs/debug_distill.py", "--topology",
                            "v5e:2x2", env=env, drop=("TPU_LIBRARY_PATH",)))
    assert "kdjax compile needs libtpu" in line and "pip install" in line


def test_require_fit_refuses_a_step_that_does_not_fit(libtpu):
    """A teacher whose 70M-row embedding alone exceeds a v5e chip: XLA refuses the program
    (out of HBM); the report says so, and --require_fit turns it into one error line."""
    proc = kdjax("compile", "--config", "configs/debug_distill.py", "--topology", "v5e:2x2",
                 "--json", "--config.teacher.model.vocab_size=70000000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["fits"] and "Ran out of memory" in report["compile_error"]
    assert report["total_bytes"] > report["usable_hbm_bytes"] > 15 * 2**30
    assert report["unpadded_bytes"]["teacher"] > 16 * 2**30  # 70M x 64 fp32, replicated
    line = _one_error(kdjax("compile", "--config", "configs/debug_distill.py", "--topology",
                            "v5e:2x2", "--require_fit",
                            "--config.teacher.model.vocab_size=70000000"))
    assert "per device but a TPU v5 lite chip has 15.75 GiB of HBM" in line


def test_presets_recommend_what_the_compile_showed(capsys):
    """`python -m kdjax.presets SLICE` names the mesh docs/scale.md recommends per run kind."""
    from kdjax.presets import main

    assert main(["v5litepod-16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recommended"]["distill"] == {"shape": [16, 1, 1], "rules": "replicated"}
    assert set(out["recommended"]) == {"pretrain", "distill", "finetune"}


def test_hbm_bytes_leave_out_on_chip_arrays():
    """VMEM (memory space S(1)) operands are not HBM traffic; a prefetch moves its bytes once."""
    from kdjax.tpu_compile import _hbm_bytes, memory_space

    assert memory_space("1,0:T(8,128)S(1)") == 1 and memory_space("1,0:T(8,128)") == 0
    assert array_bytes("(f32[8,128]{1,0:T(8,128)S(1)}, f32[8,128]{1,0:T(8,128)})",
                       hbm_only=True) == 8 * 128 * 4
    w, x = "bf16[192,768]{1,0:T(8,128)(2,1)S(1)}", "f32[16,768]{1,0:T(8,128)}"
    # a fusion reading a prefetched weight from VMEM and x from HBM, writing HBM
    assert _hbm_bytes("fusion", "f32[16,192]{1,0:T(8,128)}", [w, x]) == (16 * 256 + 16 * 768) * 4
    # slice-start: ((operand), destination, sync): the slice crosses HBM once
    start = "((bf16[768,768]{1,0:T(8,128)(2,1)}), " + w + ", s32[]{:S(2)})"
    assert _hbm_bytes("slice-start", start, ["bf16[768,768]{1,0:T(8,128)(2,1)}"]) == 192 * 768 * 2
    # copy-start: (source, destination, context), either order of HBM and VMEM
    cp = "(u32[16]{0:T(128)}, u32[16]{0:T(128)S(1)}, u32[]{:S(2)})"
    assert _hbm_bytes("copy-start", cp, ["u32[16]{0:T(128)}"]) == 128 * 4


WINDOWED = """\
HloModule jit_train_step, is_scheduled=true

%cond (p: (u32[], f32[8,48], f32[48,64])) -> pred[] {
  %p = TUPLE parameter(0)
  %n = u32[]{:T(128)} constant(8)
  %i = u32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %n), direction=LT
}

%body (q: (u32[], f32[8,48], f32[48,64])) -> (u32[], f32[8,48], f32[48,64]) {
  %q = TUPLE parameter(0)
  %i = u32[]{:T(128)} get-tuple-element(%q), index=0
  %x = f32[8,48]{1,0:T(8,128)} get-tuple-element(%q), index=1
  %w = f32[48,64]{1,0:T(8,128)} get-tuple-element(%q), index=2
  %d = f32[8,64]{1,0:T(8,128)} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %two = u32[]{:T(128)} constant(2)
  %next = u32[]{:T(128)} add(%i, %two)
  %cp = f32[48,64]{1,0:T(8,128)} collective-permute(%w), source_target_pairs={{0,1},{1,0}}
  ROOT %t = TUPLE tuple(%next, %x, %cp)
}

ENTRY %main (x0: f32[8,48], w0: f32[48,64]) -> f32[48,64] {
  %x0 = f32[8,48]{1,0:T(8,128)} parameter(0)
  %w0 = f32[48,64]{1,0:T(8,128)} parameter(1)
  %z = u32[]{:T(128)} constant(0)
  %init = TUPLE tuple(%z, %x0, %w0)
  %loop = TUPLE while(%init), condition=%cond, body=%body
  ROOT %out = f32[48,64]{1,0:T(8,128)} get-tuple-element(%loop), index=2
}
""".replace("TUPLE", "(u32[]{:T(128)}, f32[8,48]{1,0:T(8,128)}, f32[48,64]{1,0:T(8,128)})")


def test_windowed_einsum_loop_counts_its_iterations():
    """XLA's TPU windowed einsums (fsdp) loop over the shards with a u32 counter stepped by 2
    and no known_trip_count: `i < 8` stepping 2 is 4 iterations of the body's dot and permute."""
    costs = hlo_costs(WINDOWED)
    assert costs["flops_once"] == 2 * 8 * 48 * 64
    assert costs["flops_per_step"] == 4 * costs["flops_once"]
    assert collectives(WINDOWED, num_devices=2)["collective-permute"]["count"] == 4


def test_bench_knows_the_report_version():
    from kdjax.tpu_compile import REPORT_VERSION

    text = (Path(__file__).resolve().parent.parent / "bench" / "tpu_compile.py").read_text()
    assert f"REPORT_VERSION = {REPORT_VERSION}" in text


def test_compile_with_the_persistent_cache_on(libtpu, xla_cache):
    """A training run earlier in the process leaves JAX's persistent cache on; compiling for
    a topology twice must neither warn (no client can load a cached TPU executable) nor leave
    the setting changed."""
    import warnings

    import jax

    from kdjax.config_lib import load_config
    from kdjax.tpu_compile import compile_run

    assert jax.config.jax_enable_compilation_cache
    # a CPU compile first, as a training run does: from then on JAX treats the cache as in use
    jax.jit(lambda x: x * 3.0)(jax.numpy.ones(7)).block_until_ready()
    before = set(os.listdir(xla_cache))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            compile_run(load_config("configs/debug_distill.py"), "v5e:2x2")
    assert not [w for w in caught if "compilation cache" in str(w.message)]
    assert not [f for f in set(os.listdir(xla_cache)) - before if "train_step" in f]
    assert jax.config.jax_enable_compilation_cache
    # and JAX uses the cache again for the CPU afterwards
    from jax._src import compilation_cache as jax_cache

    assert jax_cache.is_cache_used(jax.devices()[0].client)

"""End-to-end training: `kdjax pretrain` -> `kdjax distill` on the built-in Korean sample.

Compilation dominates on a small CPU, so every distillation run here shares one program
wherever the test allows it:

- one teacher for all runs: a 40-step `debug_pretrain` run (module fixture `pretrained`),
  which is also the pretraining test;
- one base distillation config (`BASE`): sequence length 32, batch 8, constant learning rate
  (no warmup, so the compiled step does not depend on `train.steps`), student dropout 0;
- a persistent XLA compilation cache in a temporary directory for this module, shared with
  the subprocesses (`KDJAX_COMPILATION_CACHE`; they get the same matmul precision as
  conftest.py so their programs hit the cache).

Runs happen in-process through `kdjax.train.pretrain_distill.train` unless a process must be
killed or signalled (exact resume after SIGKILL, SIGTERM preemption).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from kdjax.config_lib import load_config
from kdjax.train.checkpoint import Checkpointer, read_state_numpy
from kdjax.train.pretrain_distill import train
from kdjax.train.trainer import TrainingError

REPO = Path(__file__).resolve().parents[1]
DISTILL = str(REPO / "configs" / "debug_distill.py")
PRETRAIN = str(REPO / "configs" / "debug_pretrain.py")

FAST = ["data.max_length=32", "train.batch_size=8", "train.schedule=constant",
        "train.warmup_steps=0", "train.lr=3e-3"]
BASE = [*FAST, "student.model.hidden_dropout=0.0", "student.model.attention_dropout=0.0"]
PAPER_KD_TERMS = {"logits", "hidden", "attn_q", "attn_k"}


# -- helpers ---------------------------------------------------------------------------------
def read_metrics(workdir: Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def by_step(records: list[dict]) -> dict[int, dict]:
    """The last record of each step (a resumed run logs re-done steps again)."""
    return {r["step"]: r for r in records}


def early_late(records: list[dict], key: str = "loss", n: int = 3) -> tuple[float, float]:
    values = [float(r[key]) for r in records]
    return float(np.mean(values[:n])), float(np.mean(values[-n:]))


def tree_hash(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def ckpt_steps(workdir: Path) -> list[int]:
    root = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() \
        else []


def leaves_with_paths(tree) -> list[tuple[str, np.ndarray]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), np.asarray(leaf)) for path, leaf in flat]


def distill_config(teacher: Path | str, *overrides: str, spec: str = DISTILL):
    return load_config(spec, [f"teacher.path={teacher}", "teacher.init=", *BASE, *overrides])


def cli_command(kind: str, workdir: Path, overrides: list[str], config: str = DISTILL):
    return [sys.executable, "-m", "kdjax.cli", kind, "--config", config, "--workdir",
            str(workdir), "--no_progress", *(f"--config.{o}" for o in overrides)]


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sub_env(xla_cache):
    env = dict(os.environ)
    env.update(
        KDJAX_COMPILATION_CACHE=str(xla_cache), JAX_PLATFORMS="cpu",
        JAX_DEFAULT_MATMUL_PRECISION=str(jax.config.jax_default_matmul_precision or ""),
        TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, xla_cache):
    """A 40-step ELECTRA pre-training run: the teacher of every distillation below."""
    workdir = tmp_path_factory.mktemp("pretrain") / "run"
    config = load_config(PRETRAIN, [*FAST, "train.steps=40", "train.log_every=1",
                                    "train.save_every=20"])
    summary = train(config, workdir, "pretrain", progress=False)
    return {"workdir": workdir, "summary": summary,
            "hash": tree_hash(workdir / "model"), "gen_hash": tree_hash(workdir / "generator")}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, pretrained):
    """12 steps of the debug recipe (paper_kd) from the pretrained teacher, logging each step."""
    workdir = tmp_path_factory.mktemp("distill") / "run"
    config = distill_config(pretrained["workdir"], "train.steps=12", "train.log_every=1",
                            "train.save_every=5")
    summary = train(config, workdir, "distill", progress=False)
    return {"workdir": workdir, "summary": summary, "config": config}


# -- 4. pretraining --------------------------------------------------------------------------
@pytest.mark.slow
def test_pretrain_lowers_both_losses_and_writes_models(pretrained):
    workdir = pretrained["workdir"]
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, 41))
    for key in ("gen_loss", "disc_loss", "loss"):
        early, late = early_late(records, key, n=5)
        assert late < early * 0.95, (key, early, late)
    assert all(r["skipped_steps"] == 0 for r in records)
    # what shows ELECTRA learning: on every step, and on held-out corpus rows at each save
    for key in ("gen_accuracy", "disc_precision", "disc_recall", "disc_auc"):
        assert all(0.0 <= r[key] <= 1.0 for r in records), key
    held = [r for r in records if "heldout_disc_auc" in r]
    assert [r["step"] for r in held] == [20, 40]
    for r in held:  # (the 70-line sample corpus is too small to expect held-out gains)
        assert np.isfinite(r["heldout_loss"]) and 0.0 <= r["heldout_disc_auc"] <= 1.0
        assert 0.0 < r["heldout_replaced_fraction"] < 0.5
    assert pretrained["summary"]["last_metrics"]["heldout_disc_auc"] == held[-1][
        "heldout_disc_auc"]
    for name, head in (("model", "discriminator"), ("generator", "generator")):
        info = json.loads((workdir / name / "kdjax_model.json").read_text())
        assert info["config"]["head"] == head
        assert info["trained_by"] == "pretrain" and info["step"] == 40
        assert (workdir / name / "params.safetensors").stat().st_size > 0
        assert (workdir / name / "tokenizer.json").is_file()
    assert pretrained["summary"]["final_step"] == 40


# -- 1. a distillation run and what it writes ------------------------------------------------
@pytest.mark.slow
def test_distill_writes_metrics_checkpoints_and_model(distilled, pretrained):
    workdir, config = distilled["workdir"], distilled["config"]
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, 13))
    for r in records:
        for key in ("loss", "lr", "grad_norm", "skipped_steps", *PAPER_KD_TERMS):
            assert isinstance(r[key], float | int) and np.isfinite(r[key]), (key, r)
        assert r["skipped_steps"] == 0
        assert r["lr"] == pytest.approx(3e-3)
        total = sum(r[t] for t in PAPER_KD_TERMS)  # every weight is 1
        assert r["loss"] == pytest.approx(total, rel=1e-5)
    assert all("tokens_per_s" in r for r in records[1:])

    # Orbax steps (save_every=5 plus the final step, keep=3).
    assert ckpt_steps(workdir) == [5, 10, 12]
    state, meta = read_state_numpy(workdir / "checkpoints")
    assert int(state["step"]) == 12
    assert meta["kind"] == "distill" and meta["step"] == 12 and meta["data_position"] == 12
    assert meta["teacher"] == str(pretrained["workdir"])
    teacher_info = json.loads((pretrained["workdir"] / "model" / "kdjax_model.json").read_text())
    assert meta["teacher_config"] == teacher_info["config"]
    assert meta["config"]["teacher"]["path"] == str(pretrained["workdir"])
    assert meta["config"]["train"]["steps"] == 12
    assert meta["config"] == json.loads(config.to_json_best_effort())

    # The state holds the trainable params only: no teacher weights.
    assert set(state["params"]) == {"student", "proj"}
    teacher_shapes = {(64, 128), (128, 64)}  # the teacher's FFN; the student's is rank-8
    for path, leaf in leaves_with_paths(state):
        assert leaf.shape not in teacher_shapes, path

    # The final model directory: the student at step 12, with the teacher's tokenizer.
    model = workdir / "model"
    info = json.loads((model / "kdjax_model.json").read_text())
    assert info["trained_by"] == "distill" and info["step"] == 12
    assert info["teacher"] == str(pretrained["workdir"])
    assert info["config"]["hidden_size"] == 32 and info["config"]["vocab_size"] == 512
    from kdjax.modeldir import load_model_dir

    _, params = load_model_dir(model)
    saved = dict(leaves_with_paths(params))
    final = dict(leaves_with_paths(state["params"]["student"]))
    assert saved.keys() == final.keys()
    for k in saved:
        np.testing.assert_array_equal(saved[k], final[k], err_msg=k)
    assert (model / "tokenizer.json").is_file()
    assert not (workdir / "tokenizer").exists()  # the teacher's tokenizer was used, not trained
    assert distilled["summary"]["compression"] > 1


# -- 2. the teacher is frozen ----------------------------------------------------------------
@pytest.mark.slow
def test_teacher_frozen_and_without_optimizer_state(distilled, pretrained):
    # The teacher's model directory is byte-identical after distillation from it.
    assert tree_hash(pretrained["workdir"] / "model") == pretrained["hash"]

    # The optimizer state covers exactly the trainable params: every array in it lives under
    # 'student' or 'proj', and the Adam moments mirror the params tree.
    state, _ = read_state_numpy(distilled["workdir"] / "checkpoints")
    opt_leaves = leaves_with_paths(state["opt_state"])
    arrays = [(p, x) for p, x in opt_leaves if x.ndim > 0]
    assert arrays
    for path, _ in arrays:
        assert "['student']" in path or "['proj']" in path, path
    param_leaves = leaves_with_paths(state["params"])
    n_params = len(param_leaves)
    assert len(arrays) == 2 * n_params  # mu and nu, one per trainable leaf
    param_size = sum(x.size for _, x in param_leaves)
    assert sum(x.size for _, x in arrays) == 2 * param_size

    # And the teacher params, loaded again, equal what pretraining saved.
    from kdjax.modeldir import load_model

    _, teacher = load_model(pretrained["workdir"])
    ckpt_state, _ = read_state_numpy(pretrained["workdir"] / "checkpoints")
    for (path, a), (_, b) in zip(leaves_with_paths(teacher),
                                 leaves_with_paths(ckpt_state["params"]["disc"])):
        np.testing.assert_array_equal(a, b, err_msg=path)


# -- 3. every recipe learns ------------------------------------------------------------------
RECIPES = {  # recipe -> overrides (minilm-style transfer needs the teacher's 4 heads)
    "paper_kd": [],
    "minilmv2": [],
    "ckd": [],
    "minilm": ["student.model.num_heads=4"],
    "kominilm": ["student.model.num_heads=4"],
    # the default stage boundary (step 10000) lies beyond the run: stage-1 terms only
    "tinybert": ["student.model.num_heads=4"],
    # DistilBERT needs MLM heads on both: the pretrained ELECTRA generator is the teacher
    "distilbert": ["student.model.head=generator"],
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_loss_decreases_for_every_recipe(recipe, pretrained, tmp_path):
    extra = RECIPES[recipe]
    teacher = pretrained["workdir"] / "generator" if recipe == "distilbert" \
        else pretrained["workdir"]
    config = distill_config(teacher, "train.steps=30", "train.log_every=1",
                            "train.save_every=30", *extra, spec=f"{DISTILL}:{recipe}")
    terms = set(config.objective.terms.keys())
    train(config, tmp_path / "run", "distill", progress=False)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, 31))
    for r in records:
        assert terms <= r.keys(), (terms - r.keys())
        assert np.isfinite(r["loss"]) and r["skipped_steps"] == 0
    if recipe == "tinybert":  # stage 1: pred has weight 0 (every other weight is 1)
        for r in records:
            assert r["loss"] == pytest.approx(r["emb"] + r["hidden"] + r["attn"], rel=1e-5)
            assert r["pred"] > 0  # still computed and logged
    early, late = early_late(records)
    assert late < early * 0.9, (recipe, early, late, [round(r["loss"], 4) for r in records])


# -- 5. exact resume after SIGKILL -----------------------------------------------------------
def wait_for_step(proc: subprocess.Popen, workdir: Path, step: int, timeout: float) -> int:
    """Poll metrics.jsonl until it shows `step` or later; returns the step seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = read_metrics_safe(workdir)
        if records and records[-1]["step"] >= step:
            return records[-1]["step"]
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended (rc {proc.returncode}) before step {step}:\n{err[-3000:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no step {step} within {timeout}s")


def read_metrics_safe(workdir: Path) -> list[dict]:
    """read_metrics that ignores a line being written."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


@pytest.mark.slow
def test_exact_resume_after_sigkill(pretrained, sub_env, tmp_path):
    """Run A: 20 steps straight. Run B: the same command, SIGKILLed at step >= 12, then run
    again: it resumes from its last complete checkpoint (10, or 15 if that one finished) and
    steps 11..20 have exactly A's losses.

    Checkpoints are synchronous here (train.async_checkpoints=False): each save then blocks
    the loop for a moment, which leaves a wide window to kill the run between step 12 and its
    end. (Async saves, the default, are covered by the other tests.)"""
    overrides = [f"teacher.path={pretrained['workdir']}", "teacher.init=", *BASE,
                 "train.steps=20", "train.log_every=1", "train.save_every=5",
                 "train.async_checkpoints=False"]
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    train(load_config(DISTILL, overrides), run_a, "distill", progress=False)
    a = by_step(read_metrics(run_a))
    assert sorted(a) == list(range(1, 21))

    cmd = cli_command("distill", run_b, overrides)
    proc = subprocess.Popen(cmd, env=sub_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        seen = wait_for_step(proc, run_b, 12, timeout=180)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_metrics_safe(run_b)[-1]["step"]
    assert 12 <= seen <= killed_at < 20, (seen, killed_at)
    assert not (run_b / "model").exists()
    resumed_from = max(s for s in ckpt_steps(run_b) if s <= killed_at)
    assert resumed_from in (10, 15)

    done = subprocess.run(cmd, env=sub_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"steps {resumed_from}->20" in done.stdout
    b_records = read_metrics(run_b)
    b = by_step(b_records)
    assert sorted(b) == list(range(1, 21))
    # The resumed run logged exactly the steps after its checkpoint once more.
    assert [r["step"] for r in b_records[-(20 - resumed_from):]] == \
        list(range(resumed_from + 1, 21))
    for step in range(1, 21):
        assert b[step]["loss"] == a[step]["loss"], (step, b[step]["loss"], a[step]["loss"])
        assert b[step]["grad_norm"] == a[step]["grad_norm"], step
    # Same final student, bit for bit.
    state_a, _ = read_state_numpy(run_a / "checkpoints")
    state_b, _ = read_state_numpy(run_b / "checkpoints")
    for (path, x), (_, y) in zip(leaves_with_paths(state_a), leaves_with_paths(state_b)):
        np.testing.assert_array_equal(x, y, err_msg=path)


# -- 6. SIGTERM: checkpoint the current step and stop ----------------------------------------
@pytest.mark.slow
def test_sigterm_checkpoints_and_rerun_resumes(pretrained, sub_env, tmp_path):
    workdir = tmp_path / "run"
    overrides = [f"teacher.path={pretrained['workdir']}", "teacher.init=", *BASE,
                 "train.steps=100000", "train.log_every=1", "train.save_every=50000"]
    proc = subprocess.Popen(cli_command("distill", workdir, overrides), env=sub_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(proc, workdir, 3, timeout=180)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # not 0: a scheduler must tell a preempted run from a finished one (128 + SIGTERM)
    assert proc.returncode == 143, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["interrupted"] is True and summary["signal"] == signal.SIGTERM
    last = read_metrics(workdir)[-1]["step"]
    assert summary["final_step"] == last
    # One checkpoint, at the step the signal interrupted (not a save_every multiple).
    assert ckpt_steps(workdir) == [last]
    assert 3 <= last < 50000
    state, meta = read_state_numpy(workdir / "checkpoints")
    assert int(state["step"]) == last and meta["data_position"] == last
    assert not (workdir / "model").exists()  # an interrupted run writes no final model

    # A rerun picks up from there (two more steps; the constant schedule keeps the program).
    rerun = [o for o in overrides if not o.startswith("train.steps=")] + \
        [f"train.steps={last + 2}"]
    summary = train(load_config(DISTILL, rerun), workdir, "distill", progress=False)
    assert summary["final_step"] == last + 2 and not summary["interrupted"]
    steps = [r["step"] for r in read_metrics(workdir)]
    assert steps == list(range(1, last + 3))  # nothing re-done, nothing skipped
    assert json.loads((workdir / "model" / "kdjax_model.json").read_text())["step"] == last + 2


# -- 7. a corrupt latest checkpoint ----------------------------------------------------------
def corrupt(step_dir: Path) -> None:
    """Truncate every array data file of the state item."""
    data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "d" in p.parts[-2:-1]]
    assert data, sorted(step_dir.rglob("*"))
    for p in data:
        p.write_bytes(b"")


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back(pretrained, tmp_path, caplog):
    workdir = tmp_path / "run"
    common = ["train.log_every=1", "train.save_every=5"]
    train(distill_config(pretrained["workdir"], "train.steps=10", *common), workdir, "distill",
          progress=False)
    first = by_step(read_metrics(workdir))
    assert ckpt_steps(workdir) == [5, 10]
    corrupt(workdir / "checkpoints" / "10")

    with caplog.at_level(logging.ERROR, logger="kdjax.train.checkpoint"):
        summary = train(distill_config(pretrained["workdir"], "train.steps=13", *common),
                        workdir, "distill", progress=False)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("step 10 (" in m and "unreadable" in m and "step 5" in m for m in errors), errors
    assert summary["final_step"] == 13
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, 14))  # 6..10 re-done, logged once
    for step in range(6, 11):  # identically
        assert by_step(records)[step]["loss"] == first[step]["loss"]
    assert json.loads((workdir / "model" / "kdjax_model.json").read_text())["step"] == 13


def test_corrupt_checkpoint_is_replaced_when_its_step_is_saved_again(tmp_path, caplog):
    """Checkpointer level (no training): save 5 and 10, corrupt 10, restore (-> 5), save 10
    again; a fresh Checkpointer must then restore the new step 10."""
    import jax.numpy as jnp

    directory = tmp_path / "checkpoints"
    ckpt = Checkpointer(directory, async_save=False)
    for step in (5, 10):
        ckpt.save(step, {"w": jnp.full((4, 4), float(step))}, {"step": step})
    ckpt.close()
    corrupt(directory / "10")
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32, sharding=sharding)}

    ckpt = Checkpointer(directory, async_save=False)
    with caplog.at_level(logging.ERROR, logger="kdjax.train.checkpoint"):
        state, _, step = ckpt.restore(target)
    assert step == 5 and float(state["w"][0, 0]) == 5.0
    assert any("step 10" in r.getMessage() for r in caplog.records)
    ckpt.save(10, {"w": jnp.full((4, 4), 10.5)}, {"step": 10})  # the run passes step 10 again
    ckpt.close()

    state, meta, step = Checkpointer(directory, async_save=False).restore(target)
    assert step == 10 and float(state["w"][0, 0]) == 10.5 and meta["step"] == 10


# -- 8. non-finite loss ----------------------------------------------------------------------
@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(pretrained, tmp_path):
    """A teacher with NaN weights makes every loss NaN (a data/teacher fault the run cannot
    train through): steps are skipped, then the run stops naming the step, and the checkpoint
    written before the fault is untouched. (The teacher params are an argument of the compiled
    step, so this needs no new program; an absurd learning rate would.)"""
    from safetensors.numpy import load_file, save_file

    bad_teacher = tmp_path / "nan_teacher"
    shutil.copytree(pretrained["workdir"] / "model", bad_teacher)
    params = load_file(bad_teacher / "params.safetensors")
    save_file({k: np.full_like(v, np.nan) for k, v in params.items()},
              bad_teacher / "params.safetensors", metadata={"format": "kdjax"})

    workdir = tmp_path / "run"
    common = ["train.log_every=1", "train.save_every=4", "train.max_consecutive_skips=3"]
    train(distill_config(pretrained["workdir"], "train.steps=4", *common), workdir, "distill",
          progress=False)
    good, _ = read_state_numpy(workdir / "checkpoints", 4)
    model_before = tree_hash(workdir / "model")

    with pytest.raises(TrainingError, match=r"stopped at step 7\b.*non-finite.*loss"):
        train(distill_config(bad_teacher, "train.steps=20", *common), workdir, "distill",
              progress=False)
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, 8))
    assert [r["skipped_steps"] for r in records] == [0, 0, 0, 0, 1, 2, 3]
    assert all(r["loss"] == "nan" for r in records[4:])
    assert ckpt_steps(workdir) == [4]  # no checkpoint of the skipped steps
    after, meta = read_state_numpy(workdir / "checkpoints", 4)
    assert meta["step"] == 4
    for (path, x), (_, y) in zip(leaves_with_paths(good), leaves_with_paths(after)):
        np.testing.assert_array_equal(x, y, err_msg=path)
        assert np.all(np.isfinite(y)), path
    assert tree_hash(workdir / "model") == model_before


# -- 9. gradient accumulation ----------------------------------------------------------------
def padded_row_seed(teacher: Path) -> int:
    """A data seed whose first global batch of 8 holds the packed corpus's short (padded) last
    row (in its second half): the two micro-batches of grad_accum=2 (rows of even and of odd
    index) then have different numbers of real tokens, which a mean of micro-batch means would
    weight wrongly."""
    from kdjax.data.corpus import SAMPLE, StepBatches, tokenize_corpus
    from kdjax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(teacher / "model")
    examples = tokenize_corpus([str(SAMPLE)], tok, 32, show_progress=False)
    for seed in range(1, 200):
        mask = StepBatches(examples, 8, seed, tok.pad_token_id).rows(0, np.arange(8))[
            "attention_mask"]
        if mask[:4].all() and not mask[4:].all():
            return seed
    raise AssertionError("the packed test corpus has no short row (the tokenizer changed?)")


@pytest.mark.slow
def test_grad_accum_matches_full_batch(pretrained, tmp_path):
    """grad_accum=2 over the same global batch of 8 (BASE has no dropout), whose micro-batches
    have different padding: the same token-weighted loss, terms and gradient norm, and the same
    update (second-step loss)."""
    seed = padded_row_seed(pretrained["workdir"])
    out = {}
    for accum in (1, 2):
        workdir = tmp_path / f"accum{accum}"
        train(distill_config(pretrained["workdir"], "train.steps=2", "train.log_every=1",
                             "train.save_every=2", f"train.grad_accum={accum}",
                             f"train.seed={seed}"),
              workdir, "distill", progress=False)
        out[accum] = read_metrics(workdir)
    for key in ("loss", "grad_norm", "hidden"):
        np.testing.assert_allclose(out[2][0][key], out[1][0][key], rtol=1e-5, err_msg=key)
    # Adam's first step is ~ lr * sign(grad): compare the resulting loss, not the params.
    np.testing.assert_allclose(out[2][1]["loss"], out[1][1]["loss"], rtol=1e-4)


def test_grad_accum_is_token_weighted_with_uneven_padding():
    """make_train_step on a toy workload whose loss is a token mean: micro-batches of 1 and 7
    real tokens. Accumulated loss and update equal the full batch's; the mean of micro-batch
    means (the old rule) would be off by far more than the tolerance."""
    import jax.numpy as jnp
    import optax

    from kdjax.train.state import TrainState
    from kdjax.train.step import make_train_step

    class Toy:
        def loss(self, params, frozen, batch, rng, step):
            mask = batch["attention_mask"].astype(jnp.float32)
            per = (params["w"] * batch["x"] - 1.0) ** 2
            return jnp.sum(per * mask) / jnp.sum(mask), {}

        def loss_weight(self, batch):
            return jnp.sum(batch["attention_mask"].astype(jnp.float32))

    x = jnp.asarray([[1.0, 5.0, 5.0, 5.0], [3.0, 3.0, 3.0, 3.0], [2.0, 2.0, 2.0, 2.0],
                     [3.0, 3.0, 3.0, 3.0]])
    mask = jnp.asarray([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], jnp.int32)
    batch = {"x": x, "attention_mask": mask}
    # micro-batch a is rows a, a + 2 (strided, see make_train_step): rows 0 and 2 (5 real
    # tokens), rows 1 and 3 (3 real tokens): unequal micro-batch weights
    tx = optax.sgd(0.1)
    params = {"w": jnp.float32(0.5)}
    zero = jnp.zeros((), jnp.int32)
    state = TrainState(step=zero, params=params, opt_state=tx.init(params),
                       rng=jnp.zeros((2,), jnp.uint32), skipped_steps=zero,
                       consecutive_skips=zero)
    results = {}
    for accum in (1, 2):
        new, metrics = jax.jit(make_train_step(Toy(), tx, lambda s: 0.1, accum))(state, None,
                                                                                batch)
        results[accum] = (float(metrics["loss"]), float(new.params["w"]))
    np.testing.assert_allclose(results[2], results[1], rtol=1e-6)
    m = np.asarray(batch["attention_mask"], bool)
    per = (0.5 * np.asarray(batch["x"]) - 1.0) ** 2
    mean_of_means = (per[0::2][m[0::2]].mean() + per[1::2][m[1::2]].mean()) / 2
    assert abs(mean_of_means - results[1][0]) > 1e-2  # the two rules differ on this batch


# -- 2b. after every run above ---------------------------------------------------------------
@pytest.mark.slow
def test_student_init_from_a_model_dir_is_its_svd(distilled, pretrained, tmp_path):
    """student.init=PATH: the trained student, factorized to the new student's ranks (how
    LF-V1..V3 start from the KD student); a missing path is one clear config error."""
    from kdjax.factorize import factorize_params
    from kdjax.modeldir import load_model
    from kdjax.train.pretrain_distill import prepare

    source = distilled["workdir"] / "model"
    config = distill_config(pretrained["workdir"], f"student.init={source}",
                            "student.model.ffn_rank=4", "student.model.attention_rank=4")
    session, run = prepare(config, tmp_path / "run", "distill", progress=False)
    src_cfg, src_params = load_model(source)
    expected = factorize_params(src_params, src_cfg, run.workload.student_cfg)
    got = dict(leaves_with_paths(jax.device_get(session.state.params["student"])))
    want = dict(leaves_with_paths(expected))
    assert got.keys() == want.keys()
    assert got["['encoder']['layer_0']['intermediate']['down']['kernel']"].shape[-1] == 4
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-6, err_msg=key)

    from kdjax.errors import ConfigError

    with pytest.raises(ConfigError, match="student.init='/nonexistent'"):
        prepare(distill_config(pretrained["workdir"], "student.init=/nonexistent"),
                tmp_path / "bad", "distill", progress=False)


@pytest.mark.slow
def test_teacher_svd_start_without_projections_trains(pretrained, tmp_path):
    """A same-width student from the teacher's layers (student.init=teacher_svd) under an
    objective with no learned projection (params["proj"] is empty): the state keeps its empty
    subtree, so it matches its shardings and trains (the multilingual-E5 ladder's setup)."""
    import ml_collections

    config = distill_config(pretrained["workdir"], "student.init=teacher_svd",
                            "train.steps=3", "train.save_every=3", "train.log_every=1")
    teacher_model = load_config(PRETRAIN).discriminator.model
    config.student.model = ml_collections.ConfigDict(
        {**teacher_model.to_dict(), "num_layers": 2, "ffn_rank": 8})
    config.objective = ml_collections.ConfigDict({"temperature": 1.0, "terms": {
        "hidden": {"loss": "hidden_mse", "feature": "hidden", "mapping": "uniform",
                   "include_embeddings": True, "projection": False},
        "attn": {"loss": "attention_kl", "feature": "attention", "mapping": "uniform"}}})
    summary = train(config, tmp_path / "run", "distill", progress=False)
    assert summary["final_step"] == 3 and np.isfinite(summary["last_metrics"]["loss"])


@pytest.mark.slow
def test_teacher_dirs_unchanged_after_all_runs(pretrained):
    assert tree_hash(pretrained["workdir"] / "model") == pretrained["hash"]
    assert tree_hash(pretrained["workdir"] / "generator") == pretrained["gen_hash"]


def test_pretrain_section_without_annealing_keys_uses_the_defaults():
    """A hand-written `pretrain` section with only disc_weight / temperature (as configs made
    before temperature annealing) builds the workload: no annealing, T as given."""
    import ml_collections

    from kdjax.train.pretrain_distill import make_workload

    class Tokenizer:  # what MaskingSpec reads
        mask_token_id = 4
        all_special_ids = [0, 1, 2, 3, 4]

    config = load_config(PRETRAIN)
    config.pretrain = ml_collections.ConfigDict({"disc_weight": 25.0, "temperature": 2.0})
    workload, *_ = make_workload(config, "pretrain", Tokenizer(), 512)
    assert workload.temperature_start is None
    assert float(workload.sampling_temperature(0)) == 2.0
    from kdjax.errors import ConfigError

    config.pretrain = ml_collections.ConfigDict({"disc_weight": 50.0, "temprature": 2.0})
    with pytest.raises(ConfigError, match="unknown pretrain config key.*temprature"):
        make_workload(config, "pretrain", Tokenizer(), 512)
    launch = load_config(str(REPO / "launch" / "configs" / "kr_electra_pretrain.py"))
    assert float(launch.pretrain.temperature_anneal) == 0.0

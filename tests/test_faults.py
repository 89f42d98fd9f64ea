"""No run lost, no model silently broken (issue 31): each fault a fault battery found, as a test.

1. the workdir lock comes first: a second command (even with `train.restart=True`) against a
   held lock moves nothing, trains no tokenizer and writes no config - every workdir command;
2. divergence: lr=1e30 stops at the step the skip limit is reached, no non-finite checkpoint,
   and export refuses (no checkpoint / NaN weights); lr=1e39 is a config error;
3. export never clobbers: a foreign non-empty --out needs --overwrite, which replaces only
   the files kdjax writes; --out = the workdir or a file is one error line;
4. writes are atomic: a write that fails midway (injected OSError, or a real full tmpfs where
   root can mount one) leaves the old file or none, never a truncated one, and one error line;
   a broken file kdjax owns is one line saying how to recover;
5. storage faults (a real full tmpfs where root can mount one): one `kdjax: error:` line, no
   traceback, library noise in WORKDIR/kdjax.log;
6. a model directory exports with its own tokenizer;
7. a preempted run exits 143 (see also tests/test_train.py's SIGTERM test).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from kdjax import cli
from kdjax.errors import ConfigError, NonFiniteError, StorageError

REPO = Path(__file__).resolve().parents[1]
DISTILL = str(REPO / "configs" / "debug_distill.py")
PRETRAIN = str(REPO / "configs" / "debug_pretrain.py")
FINETUNE = str(REPO / "configs" / "finetune" / "debug.py")
FAST = ["--config.data.max_length=32", "--config.train.batch_size=8"]


@pytest.fixture(autouse=True)
def _module_cache(xla_cache):
    return xla_cache


def _cli(capsys, *argv: str) -> tuple[int, str, list[str]]:
    """(exit status, stdout, stderr lines) of `kdjax ARGV` run in-process."""
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, [ln for ln in out.err.splitlines() if ln.strip()]


def _one_error(code: int, err: list[str]) -> str:
    """The error contract: status 2, exactly one `kdjax: error:` line, no traceback."""
    assert code == 2, (code, err[-20:])
    errors = [ln for ln in err if ln.startswith("kdjax: error:")]
    assert len(errors) == 1, err
    assert not any("Traceback" in ln for ln in err), err
    return errors[0]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if p.name != ".kdjax.lock"}


_HOLD = """
import sys
from kdjax.storage import workdir_lock
with workdir_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def held_lock(workdir: Path):
    """Another process holding WORKDIR's lock (as a running kdjax command does)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(workdir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


# -- 1. the lock before anything ---------------------------------------------------------------
def test_every_workdir_command_against_a_held_lock_moves_and_writes_nothing(tmp_path, capsys):
    wd = tmp_path / "run"
    (wd / "checkpoints" / "10").mkdir(parents=True)
    (wd / "checkpoints" / "10" / "state").write_text("the running job's checkpoint")
    (wd / "metrics.jsonl").write_text('{"step": 10, "loss": 1.0}\n')
    (wd / "tensorboard").mkdir()
    (wd / "config.json").write_text('{"the": "running job\'s config"}')
    data = tmp_path / "data"
    data.mkdir()
    before = _snapshot(wd)
    commands = {
        "distill --config.train.restart=True": ["distill", "--config", DISTILL,
                                                "--config.train.restart=True"],
        "distill (would train a tokenizer)": ["distill", "--config", DISTILL],
        "pretrain --config.train.restart=True": ["pretrain", "--config", PRETRAIN,
                                                 "--config.train.restart=True"],
        "finetune --config.train.restart=True": [
            "finetune", "--config", FINETUNE, f"--config.task.data_dir={data}",
            "--config.train.restart=True"],
        "demo": ["demo"],
        "evaluate": ["evaluate", "--models", str(REPO / "configs" / "debug.py"), "--tasks",
                     "nsmc", "--data_dir", str(data), "--no_baseline"],
        "select": ["select", "--task", "nsmc", "--candidates",
                   str(REPO / "configs" / "debug.py"), "--data_dir", str(data)],
    }
    with held_lock(wd) as pid:
        for what, argv in commands.items():
            start = time.perf_counter()
            code, _, err = _cli(capsys, *argv, "--workdir", wd, "--no_progress")
            line = _one_error(code, err)
            assert f"{wd} is in use by another kdjax run (pid {pid} " in line, (what, line)
            assert time.perf_counter() - start < 30, what  # refused before any work
            assert _snapshot(wd) == before, what  # nothing moved, created or overwritten
            assert not list(wd.glob("set-aside-*")), what
    assert not (wd / "tokenizer").exists()


def test_the_lock_nests_in_one_process_and_is_released(tmp_path):
    from kdjax.storage import workdir_lock

    with workdir_lock(tmp_path):
        with workdir_lock(tmp_path):  # finetune -> its stage's trainer, distill -> run
            with workdir_lock(tmp_path / "runs" / "a" / "nsmc"):  # evaluate -> a run inside
                pass
        with pytest.raises(AssertionError):  # still held by this process after the inner
            with held_lock(tmp_path):
                pass
    with held_lock(tmp_path):  # released at the end
        with pytest.raises(ConfigError, match="in use by another kdjax run"):
            with workdir_lock(tmp_path):
                pass


# -- 2. divergence -----------------------------------------------------------------------------
@pytest.mark.slow
def test_lr_1e30_stops_at_the_skip_limit_saves_nothing_non_finite_and_export_refuses(
        tmp_path, capsys):
    """The fault battery's run: the debug recipe at lr=1e30 (limit 10, saves every 10 steps,
    metrics every 5). It used to stop at the first log step past the limit and leave a
    checkpoint full of NaN/inf that `kdjax export` wrote with exit status 0."""
    wd = tmp_path / "run"
    code, _, err = _cli(capsys, "distill", "--config", DISTILL, "--workdir", wd,
                        "--no_progress", *FAST, "--config.train.lr=1e30")
    line = _one_error(code, err)
    rows = [json.loads(ln) for ln in (wd / "metrics.jsonl").read_text().splitlines()]
    # counted at every step: the run stops exactly where the streak reaches the limit, not at
    # the next log step
    last = rows[-1]
    stop = last["step"] + 10 - int(last["consecutive_skips"])
    assert 0 < last["consecutive_skips"] < 10 and stop % 5, rows
    assert f"stopped at step {stop}: 10 consecutive non-finite updates" in line
    assert "lower train.lr" in line
    from kdjax.train.checkpoint import read_state_numpy

    steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    for step in steps:  # whatever was saved is finite (saves wait out a skip streak)
        state, _ = read_state_numpy(wd / "checkpoints", step)
        for leaf in jax.tree_util.tree_leaves(state):
            if np.issubdtype(np.asarray(leaf).dtype, np.floating):
                assert np.isfinite(leaf).all(), step
    assert steps == [], steps  # step 10 fell inside the streak: not saved
    assert "no checkpoint" in line and not (wd / "model").exists()

    out = tmp_path / "hf"
    code, _, err = _cli(capsys, "export", "--workdir", wd, "--out", out)
    assert "no checkpoints" in _one_error(code, err)
    assert not out.exists()


def test_lr_out_of_float32_range_is_a_config_error_naming_the_key(tmp_path, capsys):
    for override, key in (("--config.train.lr=1e39", "train.lr"),
                          ("--config.train.lr=0", "train.lr"),
                          ("--config.train.b2=1.0", "train.b2"),
                          ("--config.train.eps=1e999", "train.eps"),
                          ("--config.train.clip_norm=-1.0", "train.clip_norm")):
        code, _, err = _cli(capsys, "distill", "--config", DISTILL, "--workdir",
                            tmp_path / "w", "--no_progress", override)
        line = _one_error(code, err)
        assert f"{key}=" in line and "finite number in" in line, line
    code, _, err = _cli(capsys, "finetune", "--config", FINETUNE, "--workdir", tmp_path / "f",
                        f"--config.task.data_dir={tmp_path}", "--config.distill.alpha=2.0")
    assert "distill.alpha=" in _one_error(code, err)
    assert not (tmp_path / "w" / "checkpoints").exists()


def _tiny_model(vocab: int = 120):
    from kdjax.eval.throughput import random_params
    from kdjax.models.config import EncoderConfig

    cfg = EncoderConfig(vocab_size=vocab, hidden_size=16, num_layers=1, num_heads=2,
                        intermediate_size=32, max_position_embeddings=32, head="discriminator")
    return cfg, random_params(cfg, 0)


def _with(params, path: tuple[str, ...], value: float):
    from flax.traverse_util import flatten_dict, unflatten_dict

    flat = {k: np.array(v) for k, v in flatten_dict(params).items()}
    key = next(k for k in flat if k[-len(path):] == path)
    flat[key][..., 0] = value
    return unflatten_dict(flat)


def test_export_refuses_non_finite_weights_and_writes_nothing(tmp_path, capsys, caplog):
    from kdjax.export import to_hf
    from kdjax.modeldir import save_model_dir

    cfg, params = _tiny_model()
    bad = _with(params, ("kernel",), np.nan)
    with pytest.raises(NonFiniteError, match=r"refusing to export: 1 of \d+ tensors hold NaN"):
        to_hf(cfg, bad, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    # a kdjax model directory is never written with NaN either
    with pytest.raises(NonFiniteError, match="not writing the model directory"):
        save_model_dir(tmp_path / "model", cfg, bad)
    assert not (tmp_path / "model").exists()
    # one written before kdjax checked (NaN in its safetensors): the CLI says it in one line
    from safetensors.numpy import load_file, save_file

    save_model_dir(tmp_path / "model", cfg, params)
    weights = tmp_path / "model" / "params.safetensors"
    flat = load_file(weights)
    save_file({k: np.full_like(v, np.inf) for k, v in flat.items()}, weights)
    code, _, err = _cli(capsys, "export", "--workdir", tmp_path / "model", "--out",
                        tmp_path / "cli")
    assert "NaN/inf" in _one_error(code, err) and not (tmp_path / "cli").exists()
    # finite but far beyond a trained model: exported, with a warning
    with caplog.at_level(logging.WARNING, logger="kdjax.export_core"):
        to_hf(cfg, _with(params, ("kernel",), 1e12), tmp_path / "huge")
    assert any("1e+12" in r.getMessage() and "diverged" in r.getMessage()
               for r in caplog.records)


def test_onnx_export_refuses_non_finite_weights(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from kdjax.deploy import to_onnx

    cfg, params = _tiny_model()
    with pytest.raises(NonFiniteError, match="NaN"):
        to_onnx(cfg, _with(params, ("embedding",), np.nan), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_checkpointer_refuses_and_skips_non_finite_state(tmp_path):
    import jax.numpy as jnp

    from kdjax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)
    ckpt.save(1, {"w": jnp.ones((2, 2))}, {"step": 1})
    with pytest.raises(NonFiniteError, match=r"step 2: .*NaN/inf.*finite weights is step 1"):
        ckpt.save(2, {"w": jnp.full((2, 2), jnp.nan)}, {"step": 2})
    ckpt.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_skip_limit_is_counted_at_every_step_one_step_behind():
    from kdjax.train.trainer import SkipWatch, TrainingError

    class Ckpt:
        def describe_last_finite(self):
            return "the last checkpoint with finite weights is step 4"

    watch = SkipWatch(3, Ckpt())
    counts = [0, 0, 1, 2, 3, 4]
    with pytest.raises(TrainingError, match=r"stopped at step 5: 3 consecutive.*step 4"):
        for step, n in enumerate(counts, start=1):
            watch.push(step, {"consecutive_skips": jax.numpy.int32(n),
                              "loss": jax.numpy.float32(np.nan if n else 1.0)})
    assert step == 6  # found while the next step ran, not at a log step
    last = SkipWatch(3, Ckpt())
    last.push(7, {"consecutive_skips": jax.numpy.int32(3), "loss": jax.numpy.float32(np.nan)})
    with pytest.raises(TrainingError, match="stopped at step 7"):
        last.flush()  # the run's last step is checked too


# -- 3. export never clobbers ------------------------------------------------------------------
def _model_dir(tmp_path: Path) -> Path:
    from kdjax.data.corpus import SAMPLE
    from kdjax.data.tokenizer import train_wordpiece
    from kdjax.modeldir import save_model_dir

    tok = train_wordpiece([str(SAMPLE)], tmp_path / "tok", vocab_size=120, min_frequency=1,
                          show_progress=False)
    cfg, params = _tiny_model(len(tok))
    return save_model_dir(tmp_path / "run" / "model", cfg, params, tok, trained_by="test")


def test_export_into_a_foreign_directory_needs_overwrite_and_deletes_nothing(tmp_path, capsys):
    model = _model_dir(tmp_path)
    out = tmp_path / "theirs"
    out.mkdir()
    theirs = {"README.md": b"their card", "config.json": b"{}", "model.safetensors": b"w",
              "model-00001-of-00002.safetensors": b"shard", "notes.txt": b"keep me"}
    for name, data in theirs.items():
        (out / name).write_bytes(data)
    code, _, err = _cli(capsys, "export", "--workdir", model, "--out", out)
    line = _one_error(code, err)
    assert "not written by kdjax export" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == theirs  # untouched

    code, stdout, err = _cli(capsys, "export", "--workdir", model, "--out", out, "--overwrite")
    assert code == 0, err
    printed = json.loads(stdout.strip().splitlines()[-1])["files"]
    assert "notes.txt" not in printed and "model-00001-of-00002.safetensors" not in printed
    assert {"config.json", "model.safetensors", "README.md", "kdjax_export.json"} <= set(printed)
    assert (out / "notes.txt").read_bytes() == b"keep me"  # never deleted
    assert (out / "model-00001-of-00002.safetensors").read_bytes() == b"shard"
    assert (out / "README.md").read_bytes() != b"their card"  # replaced, as asked
    # now it is an export's directory: a re-export needs no --overwrite; sharded then single
    # file: the old shards (kdjax's own) are removed, theirs stay
    code, _, err = _cli(capsys, "export", "--workdir", model, "--out", out,
                        "--max_shard_size", "5KB")
    assert code == 0, err
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 2
    code, _, err = _cli(capsys, "export", "--workdir", model, "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("model-*.safetensors")) == [
        "model-00001-of-00002.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no scratch left


def test_export_out_is_the_workdir_or_a_file_is_one_line(tmp_path, capsys):
    model = _model_dir(tmp_path)
    run = model.parent
    (run / "config.json").write_text('{"training": "config"}')
    (run / ".kdjax.lock").write_text("")
    for out, words in ((run, "kdjax workdir"), (model, "being exported from"),
                       (run / "config.json", "is a file")):
        for extra in ((), ("--overwrite",)):
            code, _, err = _cli(capsys, "export", "--workdir", model, "--out", out, *extra)
            assert words in _one_error(code, err), (out, extra)
    assert (run / "config.json").read_text() == '{"training": "config"}'


# -- 6. a model directory exports with its own tokenizer ---------------------------------------
def test_export_of_a_model_directory_keeps_its_tokenizer(tmp_path, caplog):
    from transformers import AutoTokenizer

    from kdjax.export import export_workdir

    model = _model_dir(tmp_path)
    for name in ("model", "best"):  # RUN/model, or a fine-tuning run's best/
        src = model if name == "model" else shutil.copytree(model, tmp_path / "ft" / "best")
        with caplog.at_level(logging.WARNING, logger="kdjax.export"):
            out = export_workdir(src, tmp_path / f"hf-{name}")
        assert not [r for r in caplog.records if "no tokenizer" in r.getMessage()]
        tok = AutoTokenizer.from_pretrained(str(out))
        assert tok.get_vocab() == AutoTokenizer.from_pretrained(str(model)).get_vocab()


# -- 4. atomic writes --------------------------------------------------------------------------
def _write_nsmc(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = [["너무 지루하다", "최악의 영화", "시간 아깝다"],
             ["정말 재미있다", "최고의 영화", "또 보고 싶다"]]
    lines = ["id\tdocument\tlabel"]
    for i in range(n):
        pick = words[i % 2]
        lines.append(f"{i}\t{pick[rng.integers(3)]} {pick[rng.integers(3)]}\t{i % 2}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _fail_midway(monkeypatch, name: str) -> None:
    """Writes of files named `name` write half their bytes, then hit a full disk."""
    import kdjax.storage as storage

    real = storage._write_file

    def write(path: Path, data: bytes) -> None:
        if name in path.name:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(storage, "_write_file", write)


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from kdjax.storage import atomic_write_json

    path = tmp_path / "best.json"
    atomic_write_json(path, {"step": 1})
    _fail_midway(monkeypatch, "best.json")
    with pytest.raises(StorageError, match=r"writing .*best.json failed: No space left on "
                                           r"device \(ENOSPC\); nothing was replaced"):
        atomic_write_json(path, {"step": 2, "pad": "x" * 1000})
    assert json.loads(path.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]


def test_a_model_directory_write_that_fails_midway_replaces_nothing(tmp_path, monkeypatch):
    import safetensors.numpy

    from kdjax.modeldir import save_model_dir

    model = _model_dir(tmp_path)
    before = _snapshot(model)
    real = safetensors.numpy.save_file

    def half(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", half)
    cfg, params = _tiny_model(120)
    with pytest.raises(StorageError, match=rf"writing {model}/params.safetensors failed: No "):
        save_model_dir(model, cfg, params)
    assert _snapshot(model) == before  # the old model, whole; no staging folder left
    with pytest.raises(StorageError):
        save_model_dir(tmp_path / "new", cfg, params)
    assert not (tmp_path / "new").exists()


def test_finetune_with_a_write_failing_midway_is_one_line_and_resumes(tmp_path, capsys,
                                                                      monkeypatch):
    """best.json on a full disk: one error line, no truncated file; the rerun finishes."""
    data = tmp_path / "data" / "nsmc"
    _write_nsmc(data / "train.tsv", 40, 0)
    _write_nsmc(data / "dev.tsv", 16, 1)
    tok = tmp_path / "tok"
    from kdjax.data.corpus import SAMPLE
    from kdjax.data.tokenizer import train_wordpiece

    train_wordpiece([str(SAMPLE)], tok, vocab_size=200, min_frequency=1, show_progress=False)
    wd = tmp_path / "ft"
    argv = ["finetune", "--config", FINETUNE, "--workdir", wd, "--no_progress",
            f"--config.task.data_dir={data}", f"--config.tokenizer={tok}",
            "--config.train.steps=4", "--config.train.save_every=2", "--config.eval.every=2",
            "--config.train.async_checkpoints=False"]
    with monkeypatch.context() as m:
        _fail_midway(m, "best.json")
        code, _, err = _cli(capsys, *argv)
    line = _one_error(code, err)
    assert "best.json failed: No space left on device" in line
    assert not list(wd.rglob("best.json")) and not list(wd.rglob("*.kdjax-tmp"))
    code, _, err = _cli(capsys, *argv)
    assert code == 0, err
    assert json.loads((wd / "results.json").read_text())["best_step"] in (2, 4)


def test_a_broken_file_kdjax_owns_is_one_line_saying_how_to_recover(tmp_path, capsys):
    wd = tmp_path / "ft"
    (wd / "stages" / "1_finetune").mkdir(parents=True)
    (wd / "results.json").write_text('{"task": "ns')  # cut short by a crash before kdjax 31
    code, _, err = _cli(capsys, "finetune", "--config", FINETUNE, "--workdir", wd,
                        f"--config.task.data_dir={tmp_path}")
    line = _one_error(code, err)
    assert f"{wd / 'results.json'} is unreadable" in line and "train.restart=True" in line


def test_a_broken_trained_tokenizer_is_one_line_and_restart_trains_it_again(tmp_path):
    from etils import epath

    from kdjax.config_lib import load_config
    from kdjax.data.corpus import resolve_sources
    from kdjax.train.pretrain_distill import resolve_tokenizer

    wd = epath.Path(tmp_path)
    config = load_config(DISTILL)
    sources = resolve_sources(config.data.files)
    tok = resolve_tokenizer(config, wd, None, sources)  # trained into WORKDIR/tokenizer
    path = tmp_path / "tokenizer" / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:100])  # what a full disk left before
    with pytest.raises(StorageError, match=r"tokenizer .*is unreadable .*train.restart=True"):
        resolve_tokenizer(config, wd, None, sources)
    config.train.restart = True
    again = resolve_tokenizer(config, wd, None, sources)
    assert again.get_vocab() == tok.get_vocab()
    (aside,) = tmp_path.glob("set-aside-*")
    assert (aside / "tokenizer" / "tokenizer.json").stat().st_size == 100


# -- 5. a real full disk -----------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` at `path` (root only; the test is skipped where it cannot mount)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode()[-200:]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves `leave` bytes free on `disk`."""
    st = os.statvfs(disk)
    ballast = disk / "ballast"
    with open(ballast, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return ballast


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkpoint", "model"])
def test_a_full_disk_is_one_error_line_and_the_rerun_finishes(tmp_path, where, sub_env):
    """A real full disk (a tmpfs filled up to 16 KB), in a real process: at a checkpoint
    (Orbax's background threads) or while the final model directory is written. One error line
    naming the cause, no traceback, no broken file: with room again, the same command resumes
    and finishes."""
    with tmpfs(tmp_path / "disk", "64m") as disk:
        wd = disk / "run"
        cmd = [sys.executable, "-m", "kdjax.cli", "distill", "--config", DISTILL, "--workdir",
               str(wd), "--no_progress", *FAST, "--config.train.save_every=10",
               "--config.train.async_checkpoints=True"]
        steps = "--config.train.steps=10" if where == "checkpoint" else "--config.train.steps=20"
        first = subprocess.run([*cmd, steps], capture_output=True, text=True, env=sub_env,
                               timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        if where == "model":  # as if the disk had filled up at the very end
            shutil.rmtree(wd / "model")
        ballast = _fill(disk, 16 * 1024)
        done = subprocess.run([*cmd, "--config.train.steps=20"], capture_output=True, text=True,
                              env=sub_env, timeout=600)
        err = [ln for ln in done.stderr.splitlines() if ln.strip()]
        line = _one_error(done.returncode, err)
        assert "No space left on device" in line, line
        assert ("checkpoint of step 20" in line) == (where == "checkpoint"), line
        assert not any(ln.startswith(" ") for ln in err), err  # no traceback lines at all
        if where == "model":
            assert not (wd / "model").exists()  # no half model directory
        else:  # the first run's model, whole
            assert json.loads((wd / "model" / "kdjax_model.json").read_text())["step"] == 10
        ballast.unlink()
        again = subprocess.run([*cmd, "--config.train.steps=20"], capture_output=True,
                               text=True, env=sub_env, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads((wd / "model" / "kdjax_model.json").read_text())["step"] == 20


@pytest.fixture(scope="module")
def sub_env(xla_cache):
    env = dict(os.environ)
    env.update(KDJAX_COMPILATION_CACHE=str(xla_cache), JAX_PLATFORMS="cpu",
               JAX_DEFAULT_MATMUL_PRECISION=str(jax.config.jax_default_matmul_precision or ""),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def test_library_reports_go_to_the_log_file_not_the_terminal(tmp_path):
    from kdjax.storage import NOISY_LOGGERS, LibraryLog, quiet_libraries

    stream = logging.StreamHandler(open(tmp_path / "terminal.txt", "w"))  # noqa: SIM115
    logging.getLogger().addHandler(stream)
    saved = (sys.unraisablehook, threading.excepthook)
    try:
        handler = LibraryLog(tmp_path / "kdjax.log")
        quiet_libraries(handler, [stream])
        try:
            raise ValueError("RESOURCE_EXHAUSTED: No space left on device")
        except ValueError:
            logging.getLogger("absl").error("Failed to run Commit", exc_info=True)
        logging.getLogger("kdjax.train").warning("a kdjax line")
        sys.unraisablehook(type("U", (), {"err_msg": "Exception ignored in", "object": "loop",
                                          "exc_type": RuntimeError,
                                          "exc_value": RuntimeError("Event loop is closed"),
                                          "exc_traceback": None})())
    finally:
        logging.getLogger().removeHandler(stream)
        stream.close()
        sys.unraisablehook, threading.excepthook = saved
        for name in NOISY_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
    terminal = (tmp_path / "terminal.txt").read_text()
    assert "a kdjax line" in terminal and "Traceback" not in terminal and "absl" not in terminal
    logged = (tmp_path / "kdjax.log").read_text()
    assert "Failed to run Commit" in logged and "Traceback" in logged
    assert "Event loop is closed" in logged


# -- 7. preemption's exit status ---------------------------------------------------------------
def test_a_stopped_run_exits_128_plus_the_signal():
    from kdjax.train.commands import _status
    from kdjax.train.preemption import exit_status

    assert exit_status(signal.SIGTERM) == 143 and exit_status(signal.SIGINT) == 130
    assert exit_status(None) == 143  # multi-host: JAX's preemption service caught SIGTERM
    assert _status({"interrupted": False}) == 0
    assert _status({"interrupted": True, "signal": int(signal.SIGTERM)}) == 143

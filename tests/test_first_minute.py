"""What a new user meets first, and what must never lose a run.

- every command works with paths relative to the current directory (the README's own
  `kdjax demo --workdir kdjax-demo` once crashed at its first checkpoint);
- a checkpoint save that fails stops the run at that step with one error line;
- restore: none -> fresh; none readable -> stop, delete nothing, `train.restart=True` starts
  over on purpose; readable but another shape -> stop naming keys and shapes;
- metrics.jsonl holds each step once after a resume;
- the same corpus gives the same WordPiece vocabulary in two processes;
- saved and exported files are readable by others;
- no transformers "PyTorch was not found" notice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kdjax.cli import main

REPO = Path(__file__).resolve().parents[1]
POS = ["정말 재미있다", "최고의 영화", "배우 연기 좋다", "감동적인 이야기", "또 보고 싶다"]
NEG = ["너무 지루하다", "최악의 영화", "시간 아깝다", "연기 별로다", "보다가 잤다"]
# debug recipes, shortened: one compiled program per recipe for the whole module
SHORT = ["--config.data.max_length=32", "--config.train.batch_size=8",
         "--config.train.schedule=constant", "--config.train.warmup_steps=0",
         "--config.train.log_every=1", "--config.train.async_checkpoints=false"]
FT_FAST = ["--config.train.steps=2", "--config.train.batch_size=8", "--config.task.max_length=32",
           "--config.train.save_every=2", "--config.train.log_every=1",
           "--config.eval.batch_size=16", "--config.train.async_checkpoints=false"]


@pytest.fixture(autouse=True)
def _module_cache(xla_cache):
    return xla_cache


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("kdjax: error:")]


def _write_nsmc(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = ["id\tdocument\tlabel"]
    for i in range(n):
        words = POS if i % 2 else NEG
        lines.append(f"{i}\t{words[rng.integers(len(words))]} {words[rng.integers(5)]}\t{i % 2}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _metrics_steps(workdir: Path) -> list[int]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln)["step"] for ln in lines if ln.strip()]


def _ckpt_steps(workdir: Path) -> list[int]:
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())


def _distill(capsys, workdir: str, *extra: str) -> tuple[int, str, str]:
    """The debug distillation recipe (random teacher), short, from the current directory."""
    return _run(capsys, "distill", "--config", "debug_distill", "--workdir", workdir,
                "--no_progress", *SHORT, *extra)


# -- 1. relative paths, every command ----------------------------------------------------------
@pytest.mark.slow
def test_every_command_with_relative_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "configs", tmp_path / "cfg")  # config files given relatively too
    Path("corpus.txt").write_text("\n".join(POS + NEG) * 8 + "\n", encoding="utf-8")
    _write_nsmc(Path("data/nsmc/train.tsv"), 40, 0)
    _write_nsmc(Path("data/nsmc/test.tsv"), 12, 1)

    code, out, err = _run(capsys, "tokenizer", "train", "--files", "corpus.txt", "--out", "tok",
                          "--vocab_size", "200", "--min_frequency", "1", "--no_progress")
    assert code == 0, err
    assert Path("tok/vocab.txt").is_file()

    code, out, err = _run(capsys, "params", "--config", "cfg/lf_v3.py")
    assert code == 0, err
    assert json.loads(out)["params"] > 0

    code, out, err = _run(capsys, "pretrain", "--config", "cfg/debug_pretrain.py", "--workdir",
                          "runs/teacher", "--no_progress", *SHORT, "--config.train.steps=4",
                          "--config.train.save_every=2", "--config.data.files=corpus.txt",
                          "--config.data.vocab_size=200")
    assert code == 0, err
    assert _ckpt_steps(tmp_path / "runs/teacher") == [2, 4]  # the save that crashed before
    assert Path("runs/teacher/model/kdjax_model.json").is_file()

    code, out, err = _run(capsys, "distill", "--config", "cfg/debug_distill.py", "--workdir",
                          "runs/student", "--no_progress", *SHORT, "--config.train.steps=2",
                          "--config.train.save_every=2", "--config.teacher.path=runs/teacher",
                          "--config.teacher.init=", "--config.data.files=corpus.txt")
    assert code == 0, err
    recorded = json.loads(Path("runs/student/config.json").read_text())
    assert recorded["teacher"]["path"] == str(tmp_path / "runs/teacher")  # resolved once
    assert recorded["data"]["files"] == str(tmp_path / "corpus.txt")
    code, out, err = _run(capsys, "distill", "--config", "cfg/debug_distill.py", "--workdir",
                          "runs/student2", "--no_progress", *SHORT, "--config.train.steps=2",
                          "--config.train.save_every=2", "--config.teacher.path=runs/teacher",
                          "--config.teacher.init=", "--config.data.files=corpus.txt",
                          "--config.student.init=runs/student")
    assert code == 0, err

    code, out, err = _run(capsys, "export", "--workdir", "runs/student", "--out", "hf/student",
                          "--format", "factorized")
    assert code == 0, err
    assert Path("hf/student/config.json").is_file()

    code, out, err = _run(capsys, "finetune", "--config", "cfg/finetune/debug.py", "--workdir",
                          "runs/ft", "--no_progress", "--config.model=runs/teacher",
                          "--config.task.data_dir=data/nsmc", *FT_FAST)
    assert code == 0, err
    assert json.loads(Path("runs/ft/results.json").read_text())["score"] is not None

    code, out, err = _run(capsys, "evaluate", "--models", "runs/teacher,runs/student",
                          "--tasks", "nsmc", "--data_dir", "data", "--workdir", "runs/eval",
                          "--no_progress", "--no_throughput", *FT_FAST)
    assert code == 0, err
    assert Path("runs/eval/report.md").is_file()

    code, out, err = _run(capsys, "select", "--task", "nsmc", "--candidates",
                          "runs/teacher,runs/student", "--data_dir", "data/nsmc", "--workdir",
                          "runs/select", "--no_progress", *FT_FAST)
    assert code == 0, err
    assert Path("runs/select/selection.json").is_file()

    # the scratch pipeline here (seconds); the real-teacher demo: tests/test_demo.py
    code, out, err = _run(capsys, "demo", "--workdir", "demo", "--corpus", "corpus.txt",
                          "--scale", "0.01", "--teacher", "scratch", "--no_progress")
    assert code == 0, err
    assert "kdjax demo summary" in out
    assert _ckpt_steps(tmp_path / "demo/student") == [3]
    # nothing was written outside the current directory's tree
    assert not _error_lines(err)


# -- 2. a failed save stops the run ------------------------------------------------------------
def _make_unwritable(path: Path) -> None:
    """chmod for ordinary users; root ignores modes, so root gets the immutable attribute."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or \
                subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("cannot make a directory unwritable as root here (no chattr +i)")
    else:
        path.chmod(0o555)
    try:
        (path / ".probe").write_text("x")
    except OSError:
        return
    (path / ".probe").unlink()
    _make_writable(path)
    pytest.skip("this filesystem ignores both chmod and chattr")


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    else:
        path.chmod(0o755)


def test_unwritable_checkpoint_directory_stops_before_training(tmp_path, capsys):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    _make_unwritable(ckpts)
    try:
        code, out, err = _distill(capsys, str(tmp_path / "run"), "--config.train.steps=4")
    finally:
        _make_writable(ckpts)
    assert code == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and "cannot write checkpoints to" in lines[0]
    assert str(ckpts) in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step was trained


def test_save_failing_mid_run_stops_at_that_step(tmp_path, capsys, monkeypatch):
    """The directory turns unwritable after the first checkpoint (a storage fault): the run
    stops at the next save's step, with one line, and leaves no half-written step."""
    from kdjax.train.checkpoint import Checkpointer

    workdir = tmp_path / "run"
    original = Checkpointer.save
    broken: list[Path] = []

    def save_then_break(self, step, state, meta):
        saved = original(self, step, state, meta)
        if step == 2:
            self.wait()
            _make_unwritable(self.directory)
            broken.append(Path(str(self.directory)))
        return saved

    monkeypatch.setattr(Checkpointer, "save", save_then_break)
    try:
        code, out, err = _distill(capsys, str(workdir), "--config.train.steps=8",
                                  "--config.train.save_every=2",
                                  "--config.train.async_checkpoints=true")
    finally:
        for path in broken:
            _make_writable(path)
    assert code == 2
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert "step 4" in lines[0] and str(workdir / "checkpoints") in lines[0]
    assert _metrics_steps(workdir)[-1] == 4  # stopped at that step, not 100 steps later
    assert _ckpt_steps(workdir) == [2]
    assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
    assert not (workdir / "model").exists()


# -- 3. restore: unreadable, not fitting, restart ----------------------------------------------
def _corrupt(step_dir: Path) -> None:
    """Truncate every array data file of the state item (as a failed disk would)."""
    data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "d" in p.parts[-2:-1]]
    assert data
    for p in data:
        p.write_bytes(b"")


@pytest.mark.slow
def test_restore_cases(tmp_path, capsys):
    workdir = tmp_path / "run"
    code, _, err = _distill(capsys, str(workdir), "--config.train.steps=4",
                            "--config.train.save_every=2")
    assert code == 0, err
    assert _ckpt_steps(workdir) == [2, 4]

    # readable, but the config changed the student's shape: stop, name the keys and shapes
    code, _, err = _distill(capsys, str(workdir), "--config.train.steps=6",
                            "--config.student.model.intermediate_size=48")
    assert code == 2
    (line,) = _error_lines(err)
    assert "does not fit" in line and "has shape" in line and "48)" in line
    assert "corrupt" not in line and "unreadable" not in line
    assert _ckpt_steps(workdir) == [2, 4]

    # every checkpoint unreadable: stop, name the directory and the steps, delete nothing
    for step in (2, 4):
        _corrupt(workdir / "checkpoints" / str(step))
    code, _, err = _distill(capsys, str(workdir), "--config.train.steps=6")
    assert code == 2
    (line,) = _error_lines(err)
    assert str(workdir / "checkpoints") in line and "4 (" in line and "2 (" in line
    assert "train.restart=True" in line
    assert _ckpt_steps(workdir) == [2, 4]
    assert _metrics_steps(workdir) == [1, 2, 3, 4]

    # starting over on purpose: the old checkpoints and metrics are moved aside, not deleted
    code, _, err = _distill(capsys, str(workdir), "--config.train.steps=6",
                            "--config.train.save_every=2", "--config.train.restart=True")
    assert code == 0, err
    assert _ckpt_steps(workdir) == [2, 4, 6]
    assert _metrics_steps(workdir) == [1, 2, 3, 4, 5, 6]
    (aside,) = workdir.glob("set-aside-*")
    assert sorted(p.name for p in (aside / "checkpoints").iterdir() if p.name.isdigit()) == \
        ["2", "4"]
    assert (aside / "metrics.jsonl").is_file()


# -- 4. metrics.jsonl after a resume -----------------------------------------------------------
@pytest.mark.slow
def test_metrics_hold_each_step_once_after_resume(tmp_path, capsys):
    workdir = tmp_path / "run"
    code, _, err = _distill(capsys, str(workdir), "--config.train.steps=5",
                            "--config.train.save_every=2")
    assert code == 0, err
    assert _ckpt_steps(workdir) == [2, 4, 5]
    first = {json.loads(ln)["step"]: json.loads(ln)
             for ln in (workdir / "metrics.jsonl").read_text().splitlines()}
    # as if the run had died after logging step 5 but before its checkpoint was written
    shutil.rmtree(workdir / "checkpoints" / "5")
    code, _, err = _distill(capsys, str(workdir), "--config.train.steps=7",
                            "--config.train.save_every=2")
    assert code == 0, err
    records = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert records[4]["loss"] == pytest.approx(first[5]["loss"], rel=1e-6)  # step 5 re-done


def test_metrics_writer_drops_rows_past_the_start_step(tmp_path):
    from kdjax.train.metrics import MetricsWriter

    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": float(s)}) for s in range(1, 7)]
    path.write_text("\n".join(rows) + "\n" + '{"step": 7, "lo')  # a torn last line too
    MetricsWriter(tmp_path, tensorboard=False, start_step=4).close()
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2, 3, 4]
    writer = MetricsWriter(tmp_path, tensorboard=False, start_step=4)
    writer.write(5, {"loss": 0.5})
    writer.close()
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2, 3, 4, 5]


# -- 5. reproducible vocabulary ----------------------------------------------------------------
def test_wordpiece_vocabulary_is_identical_in_two_processes(tmp_path):
    """Many words and characters of equal frequency: exactly the ties that the `tokenizers`
    trainer used to break in a per-process random order."""
    rng = np.random.default_rng(0)
    syllables = [chr(0xAC00 + 28 * i) for i in range(60)]  # 가, 개, 갸, ...
    words = ["".join(rng.choice(syllables, size=rng.integers(2, 5))) for _ in range(150)]
    lines = [" ".join(words[i:i + 5]) for i in range(0, 150, 5)]  # each word exactly once
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines * 2) + "\n", encoding="utf-8")
    script = textwrap.dedent("""
        import sys
        from kdjax.data.tokenizer import train_wordpiece
        train_wordpiece([sys.argv[1]], sys.argv[2], vocab_size=160, min_frequency=1,
                        limit_alphabet=40, show_progress=False)
    """)
    outs = []
    for i in range(2):
        out = tmp_path / f"tok{i}"
        subprocess.run([sys.executable, "-c", script, str(corpus), str(out)], check=True,
                       env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        outs.append(out)
    for name in ("vocab.txt", "tokenizer.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    vocab = (outs[0] / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 160 and any(t.startswith("##") and len(t) > 3 for t in vocab)


# -- 6. file modes -----------------------------------------------------------------------------
def test_saved_and_exported_files_are_readable_by_others(tmp_path):
    from kdjax.data.tokenizer import train_wordpiece
    from kdjax.eval.throughput import random_params
    from kdjax.export import to_hf
    from kdjax.modeldir import save_model_dir
    from kdjax.models.config import EncoderConfig

    old = os.umask(0o022)
    try:
        corpus = tmp_path / "c.txt"
        corpus.write_text("\n".join(POS + NEG) + "\n", encoding="utf-8")
        tok = train_wordpiece([corpus], tmp_path / "tok", vocab_size=120, min_frequency=1,
                              show_progress=False)
        cfg = EncoderConfig(vocab_size=len(tok), hidden_size=16, num_layers=1, num_heads=2,
                            intermediate_size=32, max_position_embeddings=32,
                            head="discriminator")
        params = random_params(cfg, 0)
        dirs = [save_model_dir(tmp_path / "model", cfg, params, tok),
                to_hf(cfg, params, tmp_path / "hf", format="electra", tokenizer=tok),
                to_hf(cfg, params, tmp_path / "hf_sharded", format="electra", tokenizer=tok,
                      max_shard_size="10KB")]
    finally:
        os.umask(old)
    for d in dirs:
        files = [p for p in Path(d).rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files)
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
        assert stat.S_IMODE(Path(d).stat().st_mode) == 0o755


# -- 7. no transformers backend notice ---------------------------------------------------------
def test_no_pytorch_notice_from_transformers(caplog):
    import kdjax  # noqa: F401  (installs the filter)

    logger = logging.getLogger("transformers")
    with caplog.at_level(logging.WARNING, logger="transformers"):
        logger.warning("PyTorch was not found. Models won't be available and only tokenizers, "
                       "configuration and file/data utilities can be used.")
        logger.warning("another transformers warning")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["another transformers warning"]


# -- 8. one run per workdir ------------------------------------------------------------------
def test_a_second_run_in_a_busy_workdir_is_one_clear_error(tmp_path):
    """Another process holds the lock: one ConfigError naming it. The same process may take
    it again (a finetune's stages, a run inside `kdjax evaluate`); it is released at the end.
    (Every command against a held lock: tests/test_faults.py.)"""
    from etils import epath

    from kdjax.errors import ConfigError
    from kdjax.train.trainer import workdir_lock

    hold = ("import sys\nfrom kdjax.storage import workdir_lock\n"
            "with workdir_lock(sys.argv[1]):\n    print('held', flush=True)\n"
            "    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"{tmp_path} is in use by another kdjax run "
                                              rf"\(pid {proc.pid} on "):
            with workdir_lock(epath.Path(tmp_path)):
                pass
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    with workdir_lock(epath.Path(tmp_path)):  # released when the other run ends
        with workdir_lock(epath.Path(tmp_path)):  # nested in one process
            pass

"""`kdjax distill` / `kdjax pretrain` user mistakes: exit status 2, one stderr line
`kdjax: error: ...` naming the problem, and nothing trained (no checkpoint written).

Every case must be rejected before any training compute, so each runs in a few seconds. The
teacher used here is a real kdjax model directory (`save_model_dir`) of the debug teacher with
zero weights: building it needs only `jax.eval_shape`, no compilation.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
import pytest

from kdjax import cli
from kdjax.config_lib import load_config
from kdjax.data.corpus import SAMPLE
from kdjax.data.tokenizer import load_tokenizer, train_wordpiece
from kdjax.modeldir import save_model_dir
from kdjax.models.config import EncoderConfig
from kdjax.models.model import abstract_params

MAX_SECONDS = 5.0


@pytest.fixture(autouse=True)
def _no_global_compilation_cache(monkeypatch):
    # main() enables the persistent XLA cache for train commands; keep it off here so that the
    # in-process calls neither touch ~/.cache nor change the jax config of later tests.
    monkeypatch.setenv("KDJAX_COMPILATION_CACHE", "off")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Two WordPiece tokenizers of different sizes, trained on the built-in Korean sample."""
    root = tmp_path_factory.mktemp("tokenizers")
    big = train_wordpiece([str(SAMPLE)], root / "big", vocab_size=512, min_frequency=1,
                          show_progress=False)
    small = train_wordpiece([str(SAMPLE)], root / "small", vocab_size=400, min_frequency=1,
                            show_progress=False, limit_alphabet=120)
    assert len(big) == 512 and len(small) != len(big)
    return {"big": root / "big", "small": root / "small"}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizers):
    """A kdjax model directory of the debug teacher (vocab 512) with its tokenizer."""
    model = load_config("configs/debug.py").model
    cfg = EncoderConfig.from_any(model.to_dict()).replace(vocab_size=512)
    shapes = abstract_params(cfg)
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes)
    out = tmp_path_factory.mktemp("teacher") / "model"
    save_model_dir(out, cfg, params, load_tokenizer(tokenizers["big"]), trained_by="test")
    return out


def run_cli(capsys, workdir: Path, *args: str, config: str = "configs/debug_distill.py",
            command: str = "distill") -> str:
    """Run `kdjax COMMAND` in-process; assert the one-line error contract; return the line."""
    start = time.perf_counter()
    code = cli.main([command, "--config", config, "--workdir", str(workdir), "--no_progress",
                     *args])
    elapsed = time.perf_counter() - start
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err[-2000:])
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("kdjax: error: "), lines[0]
    assert elapsed < MAX_SECONDS, f"took {elapsed:.1f}s: the mistake was found too late"
    ckpt = workdir / "checkpoints"
    assert not ckpt.exists() or not any(p.name.isdigit() for p in ckpt.iterdir())
    assert not (workdir / "metrics.jsonl").exists()
    return lines[0]


def test_teacher_path_missing(capsys, tmp_path):
    line = run_cli(capsys, tmp_path / "w", "--config.teacher.path=/nonexistent",
                   "--config.teacher.init=")
    assert "teacher.path" in line and "/nonexistent" in line and "does not exist" in line


def test_teacher_path_missing_nested(capsys, tmp_path):
    # An absolute path with several components that does not exist is a missing local path,
    # not a hub id.
    missing = tmp_path / "no" / "such" / "teacher"
    line = run_cli(capsys, tmp_path / "w", f"--config.teacher.path={missing}",
                   "--config.teacher.init=")
    assert str(missing) in line and "does not exist" in line


def test_teacher_path_empty_without_random_init(capsys, tmp_path):
    line = run_cli(capsys, tmp_path / "w", "--config.teacher.path=", "--config.teacher.init=")
    assert "teacher.path is empty" in line


def test_teacher_path_is_a_directory_but_not_a_model(capsys, tmp_path):
    not_model = tmp_path / "not_a_model"
    not_model.mkdir()
    (not_model / "notes.txt").write_text("hello\n")
    line = run_cli(capsys, tmp_path / "w", f"--config.teacher.path={not_model}",
                   "--config.teacher.init=")
    assert str(not_model) in line and ("not a model" in line or "config.json" in line)


def test_tokenizer_larger_than_teacher_embedding(capsys, tmp_path, tokenizers):
    """A tokenizer with more tokens than the teacher has embedding rows is one line naming
    both; fewer is fine (multilingual-E5 has 250,037 rows for 250,002 pieces)."""
    small = len(load_tokenizer(tokenizers["small"]))
    model = load_config("configs/debug.py").model
    cfg = EncoderConfig.from_any(model.to_dict()).replace(vocab_size=small)
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32),
                                    abstract_params(cfg))
    small_teacher = tmp_path / "small_teacher"
    save_model_dir(small_teacher, cfg, params, load_tokenizer(tokenizers["small"]),
                   trained_by="test")
    line = run_cli(capsys, tmp_path / "w", f"--config.teacher.path={small_teacher}",
                   "--config.teacher.init=", f"--config.data.tokenizer={tokenizers['big']}")
    assert "512 tokens" in line and f"{small} rows" in line


def test_tokenizer_smaller_than_teacher_embedding_is_fine(tmp_path, teacher_dir, tokenizers):
    from etils import epath

    from kdjax.train.pretrain_distill import build_run

    config = load_config("configs/debug_distill.py",
                         [f"teacher.path={teacher_dir}", "teacher.init=",
                          f"data.tokenizer={tokenizers['small']}"])
    run = build_run(config, epath.Path(tmp_path), "distill")
    assert len(run.tokenizer) < 512 and run.workload.student_cfg.vocab_size == 512


def test_teacher_model_dir_works_with_its_own_tokenizer(tmp_path, teacher_dir):
    """Control for the case above: the same teacher passes every check (build_run only)."""
    from etils import epath

    from kdjax.train.pretrain_distill import build_run

    config = load_config("configs/debug_distill.py",
                         [f"teacher.path={teacher_dir}", "teacher.init="])
    run = build_run(config, epath.Path(tmp_path), "distill")
    assert len(run.tokenizer) == 512
    assert run.teacher["source"] == str(teacher_dir)
    assert run.workload.student_cfg.vocab_size == 512


def _empty_corpus_args(tmp_path, teacher_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    return [f"--config.teacher.path={teacher_dir}", "--config.teacher.init=",
            f"--config.data.files={empty}"]


def test_empty_corpus_file(capsys, tmp_path, teacher_dir):
    """The tokenizer comes from the teacher, so the corpus is first read by tokenize_corpus."""
    workdir = tmp_path / "w"
    code = cli.main(["distill", "--config", "configs/debug_distill.py", "--workdir",
                     str(workdir), "--no_progress", *_empty_corpus_args(tmp_path, teacher_dir)])
    err = capsys.readouterr().err
    assert code == 2
    last = err.splitlines()[-1]  # splitlines also splits a progress bar's \r
    assert last.startswith("kdjax: error: ") and "empty.txt" in last and "no text" in last
    assert not (workdir / "checkpoints").exists()


def test_empty_corpus_file_one_line(capsys, tmp_path, teacher_dir):
    line = run_cli(capsys, tmp_path / "w", *_empty_corpus_args(tmp_path, teacher_dir))
    assert "empty.txt" in line and "no text" in line


def test_empty_corpus_file_random_teacher(capsys, tmp_path):
    # With a random teacher the tokenizer is trained on the corpus first: same contract.
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    line = run_cli(capsys, tmp_path / "w", f"--config.data.files={empty}")
    assert "empty.txt" in line and "empty" in line


def test_glob_matching_no_file(capsys, tmp_path):
    pattern = str(tmp_path / "corpus" / "*.txt")
    line = run_cli(capsys, tmp_path / "w", f"--config.data.files={pattern}")
    assert "data.files" in line and pattern in line and "matches no file" in line


def test_objective_needs_equal_heads(capsys, tmp_path):
    # minilm transfers attention maps head by head: the 2-head debug student cannot match the
    # 4-head debug teacher.
    line = run_cli(capsys, tmp_path / "w", config="configs/debug_distill.py:minilm")
    assert "head" in line and "2" in line and "4" in line


def test_objective_mismatch_found_before_tokenizer_training(capsys, tmp_path):
    workdir = tmp_path / "w"
    run_cli(capsys, workdir, config="configs/debug_distill.py:minilm")
    assert not (workdir / "tokenizer").exists()


def test_mesh_shape_not_matching_devices(capsys, tmp_path):
    line = run_cli(capsys, tmp_path / "w", "--config.mesh.shape=(3,1,1)")
    assert "mesh.shape" in line and "(3, 1, 1)" in line and f"{jax.device_count()}" in line


def test_unknown_config_key(capsys, tmp_path):
    line = run_cli(capsys, tmp_path / "w", "--config.train.stepz=3")
    assert "train.stepz" in line and "steps" in line  # names the key and lists the real ones


def test_unknown_section_in_config_file(capsys, tmp_path):
    config = tmp_path / "my_recipe.py"
    config.write_text(
        "from kdjax.config_lib import load_config\n\n\n"
        "def get_config():\n"
        "    config = load_config('debug_distill')\n"
        "    config.optimiser = {'lr': 1e-3}\n"
        "    return config\n"
    )
    line = run_cli(capsys, tmp_path / "w", config=str(config))
    assert "optimiser" in line and "section" in line


def test_pretrain_section_in_distill_config(capsys, tmp_path):
    # The pretrain recipe given to `distill`: its sections are unknown there.
    line = run_cli(capsys, tmp_path / "w", config="configs/debug_pretrain.py")
    assert "section" in line and "discriminator" in line


def test_batch_not_divisible_by_devices_times_accum(capsys, tmp_path):
    line = run_cli(capsys, tmp_path / "w", "--config.train.batch_size=6",
                   "--config.train.grad_accum=4")
    assert "train.batch_size=6" in line and "grad_accum (4)" in line


def test_pretrain_batch_not_divisible(capsys, tmp_path):
    line = run_cli(capsys, tmp_path / "w", "--config.train.batch_size=5",
                   "--config.train.grad_accum=2", config="configs/debug_pretrain.py",
                   command="pretrain")
    assert "train.batch_size=5" in line


def test_override_value_of_wrong_type(capsys, tmp_path):
    line = run_cli(capsys, tmp_path / "w", "--config.train.steps=many")
    assert "train.steps" in line and "many" in line

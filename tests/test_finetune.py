"""`kdjax finetune`: fine-tuning, best-checkpoint selection, task KD, two-stage runs.

Everything is tiny and local: a 56-row NSMC-format TSV and a WordPiece tokenizer trained on it
in tmp_path, random-init `configs/debug.py` models, sequence length 32, batch 8, a dozen steps.
One fine-tuned model (module fixture `finetuned`) is the teacher of the task-KD run, and one
three-stage run (pre_finetune -> distill with augmentation and intermediate terms ->
post_finetune, fixture `two_stage`) serves the KD, stage and augmentation tests. A persistent
compilation cache (as in tests/test_train.py) keeps repeated programs cheap.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kdjax.config_lib import finetune_config, load_config
from kdjax.errors import ConfigError
from kdjax.train.checkpoint import read_state_numpy
from kdjax.train.finetune import (
    BestTracker,
    plan_stages,
    run_task,
    selection_split,
    split_heldout,
)

REPO = Path(__file__).resolve().parents[1]
DEBUG = str(REPO / "configs" / "finetune" / "debug.py")
STUDENT = str(REPO / "configs" / "debug.py")

POS = ["정말 재미있다", "최고의 영화", "배우 연기 좋다", "감동적인 이야기", "또 보고 싶다"]
NEG = ["너무 지루하다", "최악의 영화", "시간 아깝다", "연기 별로다", "보다가 잤다"]
FILL = ["오늘", "그냥", "이번", "주말에", "친구와", "혼자"]


# -- fixtures --------------------------------------------------------------------------------
def _rows(n: int, seed: int) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 2
        words = POS if label else NEG
        text = f"{FILL[rng.integers(len(FILL))]} {words[rng.integers(len(words))]} " \
               f"{words[rng.integers(len(words))]}"
        out.append((text, label))
    return out


def _write_nsmc(path: Path, rows: list[tuple[str, int]]) -> None:
    lines = ["id\tdocument\tlabel"] + [f"{i}\t{t}\t{y}" for i, (t, y) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """NSMC-format train (56 rows) / test (16 rows), and a tokenizer trained on them."""
    from kdjax.data.tokenizer import train_wordpiece

    root = tmp_path_factory.mktemp("ft_data")
    nsmc = root / "nsmc"
    nsmc.mkdir()
    train, test = _rows(56, 0), _rows(16, 1)
    _write_nsmc(nsmc / "train.tsv", train)
    _write_nsmc(nsmc / "test.tsv", test)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(t for t, _ in train + test) * 3 + "\n", encoding="utf-8")
    tok = train_wordpiece([str(corpus)], root / "tokenizer", vocab_size=200, min_frequency=1,
                          show_progress=False)
    return {"root": root, "nsmc": nsmc, "tokenizer": root / "tokenizer", "vocab": len(tok)}


def debug_config(data, *overrides: str):
    return load_config(DEBUG, [f"tokenizer={data['tokenizer']}",
                               f"task.data_dir={data['nsmc']}",
                               "task.heldout_fraction=0.25", *overrides])


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if x]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, data, xla_cache):
    workdir = tmp_path_factory.mktemp("ft") / "run"
    results = run_task(debug_config(data, "train.steps=32", "eval.every=8"), workdir,
                       progress=False)
    return {"workdir": workdir, "results": results}


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory, data):
    """A random-init debug generator (an MLM head) sharing the tokenizer: the augmenter."""
    from kdjax.data.tokenizer import load_tokenizer
    from kdjax.modeldir import save_model_dir
    from kdjax.models.config import EncoderConfig
    from kdjax.models.model import init_params

    cfg = EncoderConfig.from_any(load_config(str(REPO / "configs" / "debug.py")).model.to_dict())
    cfg = cfg.replace(head="generator", vocab_size=data["vocab"], hidden_size=32,
                      num_layers=1, num_heads=2, intermediate_size=64, embedding_size=32)
    out = tmp_path_factory.mktemp("mlm") / "generator"
    save_model_dir(out, cfg, init_params(cfg), load_tokenizer(str(data["tokenizer"])))
    return out


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory, data, finetuned, mlm_dir):
    """Task KD (1 augmented copy per row; the DistilBERT objective, of which only the hidden
    cosine term applies) -> post_finetune, from a random student, teacher = the fine-tuned
    model. The student has the teacher's shape so the fine-tuning programs are cache hits."""
    workdir = tmp_path_factory.mktemp("kd") / "run"
    config = debug_config(
        data, f"model={STUDENT}", f"distill.teacher={finetuned['workdir']}",
        "distill.objective=configs/objectives/distilbert.py", "distill.alpha=0.9",
        "stages.post_finetune=True", "augment.copies=1", f"augment.mlm_model={mlm_dir}",
        "train.steps=24", "train.log_every=1", "eval.every=12",
    )
    return {"workdir": workdir, "results": run_task(config, workdir, progress=False)}


# -- fine-tuning -----------------------------------------------------------------------------
def test_finetune_lowers_loss_and_records_dev_score(finetuned):
    workdir, results = finetuned["workdir"], finetuned["results"]
    stage = workdir / "stages" / "1_finetune"
    records = read_metrics(stage)
    losses = [r["loss"] for r in records]
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    evals = [r for r in records if "heldout_accuracy" in r]
    assert [r["step"] for r in evals] == [8, 16, 24, 32]
    assert results["selected_on"] == "heldout" and results["main_metric"] == "accuracy"
    assert set(results["dev"]) == {"accuracy"} and set(results["test"]) == {"accuracy"}
    assert results["score"] == results["test"]["accuracy"]
    assert results["train_examples"] == 42  # 56 rows minus the 25% held out
    assert [s["name"] for s in results["stages"]] == ["finetune"]
    assert json.loads((workdir / "results.json").read_text()) == results
    info = json.loads((workdir / "best" / "kdjax_model.json").read_text())
    assert info["task"] == "nsmc" and info["config"]["head"] == "classification"
    assert info["config"]["num_labels"] == 2 and (workdir / "best" / "tokenizer.json").is_file()


def test_equal_token_buckets_train_with_batches_of_different_rows(data, tmp_path):
    """task.bucket_equal_tokens: short buckets hold more rows; the prefetcher, the compiled
    steps (one per shape) and the throughput figures follow the batch of each step."""
    from kdjax.data.task_batches import ArrayBatches

    config = debug_config(data, "train.steps=6", "train.log_every=1", "eval.every=6",
                          "task.buckets=(8, 16)", "task.bucket_equal_tokens=True",
                          "train.batch_size=4")
    results = run_task(config, tmp_path / "run", progress=False)
    assert results["score"] is not None
    records = read_metrics(tmp_path / "run" / "stages" / "1_finetune")
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) for r in records)
    # the same batches, rebuilt: short buckets hold more than batch_size rows (8 -> 16,
    # 16 -> 8; these short reviews all land in 8 or 16)
    from kdjax.data.tasks import get_task
    from kdjax.data.tokenizer import load_tokenizer
    from kdjax.train.finetune import load_splits

    splits = load_splits(get_task("nsmc"), config.task, load_tokenizer(str(data["tokenizer"])))
    batches = ArrayBatches(splits.train.arrays, 4, 0, buckets=(8, 16), equal_tokens=True)
    assert min(batches.batch_rows(s) for s in range(6)) > 4
    assert all(r["examples_per_s"] > 0 for r in records[1:])


def test_best_checkpoint_is_chosen_on_heldout_never_test(finetuned, data, tmp_path):
    results = finetuned["results"]
    records = read_metrics(finetuned["workdir"] / "stages" / "1_finetune")
    scores = {r["step"]: r["heldout_accuracy"] for r in records if "heldout_accuracy" in r}
    best = max(scores.values())
    assert results["best_step"] == min(s for s, v in scores.items() if v == best)
    assert results["dev_score"] == pytest.approx(best)
    assert not any(k.startswith("test") for r in records for k in r)

    # the selection logic itself
    from kdjax.data.tasks import get_task

    assert selection_split(get_task("nsmc"), str(data["nsmc"])) == "heldout"
    qp = tmp_path / "question_pair"
    qp.mkdir()
    for split in ("train", "dev", "test"):
        (qp / f"{split}.tsv").write_text("question1\tquestion2\tis_duplicate\n가\t나\t0\n",
                                         encoding="utf-8")
    assert selection_split(get_task("question_pair"), str(qp)) == "dev"
    (qp / "dev.tsv").unlink()
    assert selection_split(get_task("question_pair"), str(qp)) == "heldout"

    examples = list(range(40))
    train, held = split_heldout(examples, 0.25, seed=3)
    assert len(held) == 10 and sorted(train + held) == examples
    assert split_heldout(examples, 0.25, seed=3) == (train, held)
    assert split_heldout(examples, 0.25, seed=4) != (train, held)

    tracker = BestTracker("accuracy")
    assert tracker.update(10, {"accuracy": 50.0})
    assert not tracker.update(20, {"accuracy": 50.0})  # ties keep the earlier step
    assert tracker.update(30, {"accuracy": 60.0})
    assert not tracker.update(40, {"accuracy": float("nan")})
    assert tracker.best["step"] == 30 and tracker.score == 60.0


def test_finished_workdir_is_not_retrained(finetuned, data, capsys):
    from kdjax.cli import main

    workdir = finetuned["workdir"]
    # (the workdir lock's file records each holder: the one file a finished run's rerun writes)
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")
              if p.is_file() and p.name != ".kdjax.lock"}
    again = run_task(debug_config(data), workdir, progress=False)
    assert again == finetuned["results"]
    rc = main(["finetune", "--config", DEBUG, "--workdir", str(workdir), "--no_progress",
               f"--config.tokenizer={data['tokenizer']}", f"--config.task.data_dir={data['nsmc']}"])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["score"] == finetuned["results"]["score"] and line["stages"] == ["finetune"]
    after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")
             if p.is_file() and p.name != ".kdjax.lock"}
    assert after == before


def test_resume_after_training_only_writes_results(finetuned, data, tmp_path):
    """A run stopped after its last checkpoint resumes from it without training again."""
    workdir = tmp_path / "copy"
    shutil.copytree(finetuned["workdir"], workdir)
    (workdir / "results.json").unlink()
    (workdir / "stages" / "1_finetune" / "stage.json").unlink()
    lines = len(read_metrics(workdir / "stages" / "1_finetune"))
    results = run_task(debug_config(data, "train.steps=32", "eval.every=8"), workdir,
                       progress=False)
    assert len(read_metrics(workdir / "stages" / "1_finetune")) == lines
    for key in ("dev", "test", "best_step", "score"):
        assert results[key] == finetuned["results"][key], key


# -- task KD and two-stage fine-tuning -------------------------------------------------------
def test_two_stage_runs_stages_in_order_each_writing_its_dir(two_stage, data):
    workdir, results = two_stage["workdir"], two_stage["results"]
    names = ["distill", "post_finetune"]
    assert [s["name"] for s in results["stages"]] == names
    for i, name in enumerate(names, 1):
        d = workdir / "stages" / f"{i}_{name}"
        assert (d / "stage.json").is_file() and (d / "best" / "kdjax_model.json").is_file()
        assert (d / "checkpoints").is_dir() and (d / "metrics.jsonl").is_file()
    # stage k starts from stage k-1's best (stage 1 from `model`)
    assert [s["init"] for s in results["stages"]] == [
        STUDENT, str(workdir / "stages" / "1_distill" / "best")]
    info = json.loads((workdir / "best" / "kdjax_model.json").read_text())
    assert info["stage"] == "post_finetune" and info["task"] == "nsmc"
    assert results["score"] is not None and results["teacher"]
    # the order of all three stages, and their switches
    every = debug_config(data, "distill.teacher=T", "stages.pre_finetune=True",
                         "stages.post_finetune=True")
    assert plan_stages(every) == ["pre_finetune", "distill", "post_finetune"]
    assert plan_stages(debug_config(data)) == ["finetune"]
    _one_line_error(lambda: plan_stages(debug_config(data, "stages.distill=False")), "stage")


def test_task_kd_loss_decreases_with_intermediate_terms(two_stage):
    records = read_metrics(two_stage["workdir"] / "stages" / "1_distill")
    assert [r["step"] for r in records] == list(range(1, 25))
    for r in records:
        for key in ("loss", "kd_loss", "hard_loss", "cos"):
            assert np.isfinite(r[key]), (key, r)
        # alpha * KD + (1 - alpha) * hard + the intermediate (cosine) term
        expected = 0.9 * r["kd_loss"] + 0.1 * r["hard_loss"] + r["cos"]
        assert r["loss"] == pytest.approx(expected, rel=1e-5)
        assert not {"soft_ce", "mlm"} & set(r)  # logit/label terms come from alpha and T
    state, _ = read_state_numpy(two_stage["workdir"] / "stages" / "1_distill" / "checkpoints")
    assert set(state["params"]) == {"model", "proj"}  # the cosine term's learned projection
    for key in ("kd_loss", "loss"):
        values = [r[key] for r in records]
        assert np.mean(values[-4:]) < np.mean(values[:4]), (key, values)


def test_augmentation_adds_teacher_labelled_rows(two_stage, finetuned):
    stages = {s["name"]: s for s in two_stage["results"]["stages"]}
    n = finetuned["results"]["train_examples"]
    assert stages["distill"]["train_examples"] == 2 * n  # 1 augmented copy per row
    assert stages["post_finetune"]["train_examples"] == n  # only the KD stage is augmented
    assert two_stage["results"]["train_examples"] == n
    aug = np.load(two_stage["workdir"] / "augmented.npz")
    assert len(aug["input_ids"]) == n


# -- config errors ---------------------------------------------------------------------------
def _one_line_error(fn, *words: str) -> str:
    with pytest.raises(ConfigError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def test_config_errors_are_one_clear_line(data, finetuned, tmp_path):
    _one_line_error(lambda: finetune_config("no_such_task"), "no_such_task")
    _one_line_error(lambda: finetune_config("nsmc", train={"nope": 1}), "nope")
    _one_line_error(lambda: run_task(debug_config(data, "model=/no/such/model"), tmp_path / "a",
                                     progress=False), "/no/such/model")
    _one_line_error(lambda: run_task(debug_config(data, "task.name=nope"), tmp_path / "b",
                                     progress=False), "nope")
    _one_line_error(lambda: plan_stages(debug_config(data, "stages.post_finetune=True")),
                    "distill.teacher")
    _one_line_error(lambda: plan_stages(debug_config(data, "augment.copies=2")), "augment")

    # a teacher that is not fine-tuned for the task: a discriminator, and another task's head
    from kdjax.data.tokenizer import load_tokenizer
    from kdjax.modeldir import save_model_dir
    from kdjax.models.config import EncoderConfig
    from kdjax.models.model import init_params

    cfg = EncoderConfig.from_any(load_config(str(REPO / "configs" / "debug.py")).model.to_dict())
    cfg = cfg.replace(vocab_size=data["vocab"], num_layers=1)
    disc = save_model_dir(tmp_path / "disc", cfg, init_params(cfg),
                          load_tokenizer(str(data["tokenizer"])))
    _one_line_error(lambda: run_task(debug_config(data, f"distill.teacher={disc}"),
                                     tmp_path / "c", progress=False),
                    "discriminator", "classification")
    sts = cfg.replace(head="classification", num_labels=1)
    sts_dir = save_model_dir(tmp_path / "sts", sts, init_params(sts), None, task="korsts")
    _one_line_error(lambda: run_task(debug_config(data, f"distill.teacher={sts_dir}"),
                                     tmp_path / "d", progress=False), "1 label")
    assert not (tmp_path / "c" / "results.json").exists()


def test_head_start_is_the_label_prior():
    """Classification heads start at the labels' log frequencies (add-one, centred), token
    heads over labelled positions only; span heads and unknown kinds get nothing."""
    from kdjax.train.finetune import head_start

    token = {"classifier": {"classifier": {"bias": np.zeros(3, np.float32)}}}
    labels = np.array([[0, 0, 0, 0, 0, 1, -100, -100], [0, 0, 0, 0, 0, 0, 2, -100]])
    bias = head_start(token, "token", labels)["classifier"]["classifier"]["bias"]
    counts = np.array([11.0, 1.0, 1.0]) + 1
    want = np.log(counts / counts.sum())
    np.testing.assert_allclose(bias, want - want.mean(), rtol=1e-6)
    assert bias.dtype == np.float32 and bias[0] > bias[1] == bias[2]
    seq = {"classifier": {"out_proj": {"bias": np.zeros(2, np.float32)}}}
    balanced = head_start(seq, "sequence", np.array([0, 1, 0, 1]))
    np.testing.assert_allclose(balanced["classifier"]["out_proj"]["bias"], 0.0, atol=1e-7)
    assert head_start(seq, "span", np.array([0, 1])) == {}
    assert head_start({"qa_head": {}}, "token", labels) == {}


def test_regression_head_starts_at_the_training_labels_mean(data, tmp_path):
    """A fresh regression head's bias starts at the train labels' mean (KorSTS 0-5 here):
    a head at 0 under Adam reaches labels near 3 only through its kernel, which dragged the
    E5 teacher's KorSTS run into predicting the mean (Spearman 12)."""
    from kdjax.modeldir import load_model

    sts = tmp_path / "korsts"
    sts.mkdir()
    pairs = [(a, b) for a in POS for b in NEG + POS]
    scores = [4.0 + (i % 3) * 0.5 if b in POS else 1.0 + (i % 2) for i, (a, b) in
              enumerate(pairs)]
    head = "genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2"
    for split, rows in (("train", range(0, 40)), ("dev", range(40, 50)),
                        ("test", range(40, 50))):
        lines = [head] + [f"g\tf\t2012\t{i:04d}\t{scores[i]:.3f}\t{pairs[i][0]}\t{pairs[i][1]}"
                          for i in rows]
        (sts / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = debug_config(data, "task.name=korsts", f"task.data_dir={sts}", "train.steps=1",
                          "train.lr=1e-9", "train.warmup_steps=0", "eval.every=1")
    run_task(config, tmp_path / "run", progress=False)
    _, params = load_model(tmp_path / "run" / "best")
    bias = np.asarray(params["classifier"]["out_proj"]["bias"])
    assert bias.shape == (1,)
    np.testing.assert_allclose(bias, np.mean(scores[:40]), atol=1e-4)

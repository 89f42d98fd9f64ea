"""kdjax -> ONNX (`kdjax.deploy`, `kdjax export --format onnx`): ONNX Runtime gives kdjax's
outputs to 1e-4 on padded batches of shapes other than the traced one, for the merged and the
factorized graph and every task head; the factorized graph keeps the two small matrices of each
low-rank layer; int8 runs and is smaller; a `kdjax finetune` workdir exports; the accuracy mode
scores fp32 vs int8; user mistakes and a missing extra are one line.

Tiny debug-sized models with numpy-random weights; nothing is downloaded, ../shared is not read.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from flax.traverse_util import flatten_dict, unflatten_dict  # noqa: E402
from model_helpers import random_params, train_tokenizer  # noqa: E402

from kdjax import cli, deploy  # noqa: E402
from kdjax.errors import ConfigError, KdjaxError  # noqa: E402
from kdjax.models.config import EncoderConfig  # noqa: E402

TOL = 1e-4

KOREAN = [
    "오늘은 날씨가 정말 좋습니다.",
    "이 영화는 정말 재미있어요!",
    "서울에서 부산까지 기차로 갑니다.",
    "한국어 자연어 처리는 재미있는 분야입니다.",
    "모델을 작게 만들면 빠르게 실행됩니다.",
    "이 음식은 너무 맛이 없어요.",
    "지식 증류로 작은 모델을 학습합니다.",
    "배우들의 연기가 어색하고 지루했다.",
]

BASE = dict(num_layers=2, max_position_embeddings=48, hidden_dropout=0.0,
            attention_dropout=0.0)
KD = dict(hidden_size=32, embedding_size=16, num_heads=2, intermediate_size=64)
MODELS = {
    "teacher": dict(hidden_size=48, embedding_size=48, num_heads=4, intermediate_size=96),
    "kd": KD,
    "lf_v1": dict(KD, ffn_rank=8),
    "lf_v2": dict(KD, ffn_rank=8, attention_rank=6),
    "lf_v3": dict(KD, ffn_rank=8, attention_rank=6, embedding_rank=8),
}
# (model, head): every head kdjax fine-tunes, plus the plain encoder and the discriminator.
CASES = [
    ("lf_v3", "classification"),
    ("lf_v3", "token_classification"),
    ("lf_v2", "qa"),
    ("lf_v3", "none"),
    ("lf_v1", "discriminator"),
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok"), KOREAN)


@pytest.fixture(scope="module")
def vocab(tokenizer_dir) -> int:
    from kdjax.data.tokenizer import load_tokenizer

    return len(load_tokenizer(tokenizer_dir))


def make_config(name: str, head: str, vocab: int, **kw) -> EncoderConfig:
    labels = {"classification": 3, "token_classification": 5}.get(head, 2)
    return EncoderConfig.from_any({**BASE, **MODELS[name], "vocab_size": vocab, "head": head,
                                   "num_labels": labels, **kw})


def n_params(params: dict) -> int:
    return int(sum(v.size for v in flatten_dict(params).values()))


def padded_batch(vocab: int, batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """int64 [batch, length]: rows padded by different amounts, two segments in row 0."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, length))
    mask = np.ones((batch, length), np.int64)
    for row in range(1, batch):
        mask[row, max(1, length - 2 - 3 * row):] = 0
    ids = np.where(mask == 1, ids, 0)
    types = np.zeros_like(ids)
    types[0, length // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


_EXPORTS: dict = {}


def exported(tmp_path_factory, name: str, head: str, weights: str, vocab: int):
    """(cfg, params, export dir, manifest) of a case, exported once per module run."""
    key = (name, head, weights)
    if key not in _EXPORTS:
        cfg = make_config(name, head, vocab)
        params = random_params(cfg, seed=len(_EXPORTS))
        out = tmp_path_factory.mktemp(f"{name}-{head}-{weights}")
        manifest = deploy.to_onnx(cfg, params, out, weights=weights)
        _EXPORTS[key] = (cfg, params, out, manifest)
    return _EXPORTS[key]


# -- parity -----------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", ["merged", "factorized"])
@pytest.mark.parametrize("name,head", CASES, ids=[f"{m}-{h}" for m, h in CASES])
def test_onnx_runtime_matches_kdjax(tmp_path_factory, vocab, name, head, weights):
    cfg, params, out, manifest = exported(tmp_path_factory, name, head, weights, vocab)
    sess = deploy.session(out / deploy.FP32_FILE)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask",
                                                   "token_type_ids"]
    for i in sess.get_inputs():  # both axes symbolic (dynamic)
        assert all(isinstance(d, str) for d in i.shape), i.shape
    assert [o.name for o in sess.get_outputs()] == list(deploy.output_names(head))
    worst = 0.0
    # shapes other than the traced example (3 x 11), batch 1 included, and the longest allowed
    for b, length, seed in ((4, 19, 1), (1, 5, 2), (2, cfg.max_position_embeddings, 3)):
        batch = padded_batch(vocab, b, length, seed)
        got = deploy.run_session(sess, batch)
        ref = deploy.kdjax_outputs(cfg, params, **batch)
        assert set(got) == set(ref)
        for k in ref:
            assert got[k].shape == ref[k].shape, (k, got[k].shape, ref[k].shape)
            np.testing.assert_allclose(got[k], ref[k], atol=TOL, rtol=0,
                                       err_msg=f"{name}/{head}/{weights} {k} {b}x{length}")
        worst = max(worst, deploy.max_abs_diff(ref, got))
    assert manifest["weights"] == weights and manifest["head"] == head
    assert manifest["parity_max_abs"] <= TOL and manifest["parity_kdjax_max_abs"] <= TOL
    print(f"[onnx parity] {name}/{head}/{weights}: max |ORT - kdjax| {worst:.2e}")


def test_factorized_graph_keeps_the_factors(tmp_path_factory, vocab):
    """The factorized LF-V3 graph stores ~its own parameter count (4 bytes each) as two small
    matrices per low-rank layer; the merged graph stores the dense matrices instead."""
    sizes = {}
    shapes = {}
    for weights in ("factorized", "merged"):
        cfg, params, out, manifest = exported(tmp_path_factory, "lf_v3", "none", weights, vocab)
        import onnx

        model = onnx.load(str(out / deploy.FP32_FILE))
        inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
        matmul_weights = [inits[x] for node in model.graph.node if node.op_type == "MatMul"
                          for x in node.input if x in inits]
        shapes[weights] = matmul_weights
        sizes[weights] = (manifest["initializer_params"], (out / deploy.FP32_FILE).stat().st_size)
    H, F, E, r_att, r_ffn, r_emb = 32, 64, 16, 6, 8, 8
    n = n_params(random_params(make_config("lf_v3", "none", vocab)))
    layers = BASE["num_layers"]
    fact = shapes["factorized"]
    # Q, K, V, O: [H, r] then [r, H] in every layer; FFN: [H, r] [r, F] and [F, r] [r, H]
    assert fact.count((H, r_att)) == 4 * layers and fact.count((r_att, H)) == 4 * layers
    assert fact.count((F, r_ffn)) == layers and fact.count((r_ffn, F)) == layers
    assert fact.count((H, r_ffn)) == layers and fact.count((r_ffn, H)) == layers
    assert (r_emb, E) in fact  # word embedding [vocab, r] then r -> E
    assert (H, H) not in fact and (H, F) not in fact
    merged = shapes["merged"]
    assert merged.count((H, H)) == 4 * layers and merged.count((H, F)) == layers
    # every parameter is stored once; the rest is the int64 position-ids buffer [1, max_len]
    # and a few scalar constants of the graph
    init_fact, bytes_fact = sizes["factorized"]
    assert n <= init_fact <= n + BASE["max_position_embeddings"] + 32
    assert sizes["merged"][0] > init_fact
    print(f"[onnx factorized] lf_v3 tiny: {n} params, initializers {init_fact} (factorized) vs "
          f"{sizes['merged'][0]} (merged); files {bytes_fact} B vs {sizes['merged'][1]} B")


def test_int8_export_runs_and_is_smaller(tmp_path):
    # vocab 4000 x E 64: enough weight for the file sizes to be about the weights
    cfg = EncoderConfig.from_any({**BASE, "vocab_size": 4000, "hidden_size": 64,
                                  "embedding_size": 64, "num_heads": 4,
                                  "intermediate_size": 128, "head": "classification",
                                  "num_labels": 2, "ffn_rank": 16})
    params = random_params(cfg, seed=7)
    # weights at a trained model's scale (0.03), so logits stay in a range int8 represents well
    params = unflatten_dict({p: (v * 0.2 if p[-1] == "kernel" or p[-1] == "embedding" else v)
                             for p, v in flatten_dict(params).items()})
    manifest = deploy.to_onnx(cfg, params, tmp_path, quantize="int8")
    fp32, int8 = tmp_path / deploy.FP32_FILE, tmp_path / deploy.INT8_FILE
    assert manifest["files"] == [deploy.FP32_FILE, deploy.INT8_FILE]
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size
    assert manifest["int8_mb"] < manifest["onnx_mb"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}, ops
    sess = deploy.session(int8)
    assert [i.name for i in sess.get_inputs()] == list(deploy.INPUT_NAMES)
    batch = padded_batch(4000, 5, 23, seed=4)
    got = deploy.run_session(sess, batch)["logits"]
    ref = deploy.kdjax_outputs(cfg, params, **batch)["logits"]
    assert got.shape == ref.shape == (5, 2)
    err = float(np.max(np.abs(got - ref)))
    assert err < 0.05 * float(np.max(np.abs(ref))) + 0.02, (err, ref)
    # a later export without --quantize removes the stale int8 file
    deploy.to_onnx(cfg, params, tmp_path, check=False)
    assert not int8.exists()


def test_weights_choice():
    dense = EncoderConfig.from_any({**BASE, **KD, "vocab_size": 100})
    fact = dense.replace(ffn_rank=4)
    assert deploy.resolve_weights(dense) == "merged"
    assert deploy.resolve_weights(fact) == "factorized"
    assert deploy.resolve_weights(fact, "merged") == "merged"
    assert deploy.resolve_weights(dense.replace(family="bert", embedding_size=0)) == "merged"
    with pytest.raises(ConfigError, match="unknown onnx weights 'lowrank'"):
        deploy.resolve_weights(fact, "lowrank")
    with pytest.raises(ConfigError, match="unknown quantization 'int4'"):
        deploy.check_quantize("int4")


# -- from a `kdjax finetune` workdir, through the CLI -----------------------------------------
def _finetune_workdir(root: Path, tokenizer_dir: Path, vocab: int) -> tuple[Path, EncoderConfig,
                                                                             dict]:
    """A directory laid out like `kdjax finetune`'s WORKDIR (best/ model dir with the task and
    label names, config.json with the task section), without training."""
    from kdjax.data.tokenizer import load_tokenizer
    from kdjax.modeldir import save_model_dir

    cfg = make_config("lf_v3", "classification", vocab, num_labels=2)
    params = random_params(cfg, seed=11)
    wd = root / "ft"
    save_model_dir(wd / "best", cfg, params, load_tokenizer(tokenizer_dir),
                   trained_by="finetune", task="nsmc", label_names=["negative", "positive"],
                   step=10, stage="finetune", selected_on="heldout", dev={"accuracy": 50.0})
    (wd / "config.json").write_text(json.dumps({"task": {"name": "nsmc", "max_length": 24}}))
    (wd / "results.json").write_text(json.dumps({"task": "nsmc", "model_dir": str(wd / "best")}))
    return wd, cfg, params


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_exports_a_finetune_workdir(tmp_path, tokenizer_dir, vocab, capsys):
    from kdjax.data.tokenizer import load_tokenizer

    wd, cfg, params = _finetune_workdir(tmp_path, tokenizer_dir, vocab)
    out = tmp_path / "onnx"
    rc, stdout, err = run_cli(capsys, "export", "--workdir", str(wd), "--out", str(out),
                              "--format", "onnx", "--quantize", "int8")
    assert rc == 0, err
    line = json.loads(stdout.strip().splitlines()[-1])  # stdout is one JSON line
    assert len(stdout.strip().splitlines()) == 1
    assert line["format"] == "onnx" and line["weights"] == "factorized"
    assert line["inputs"] == list(deploy.INPUT_NAMES) and line["outputs"] == ["logits"]
    assert line["files"] == ["model.onnx", "model_int8.onnx"]
    assert line["parity_kdjax_max_abs"] <= TOL
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    manifest = json.loads((out / deploy.MANIFEST).read_text())
    # provenance of the run, its path relative: the directory leaves this machine
    assert manifest["model_card"]["workdir"] == os.path.relpath(wd)
    # the directory is self-contained: its tokenizer + model.onnx score text like kdjax does
    tok = load_tokenizer(out)
    enc = tok(KOREAN[:4], padding=True, return_tensors="np")
    batch = {k: enc[k].astype(np.int64) for k in deploy.INPUT_NAMES}
    assert batch["attention_mask"].min() == 0  # really padded
    for name in ("model.onnx", "model_int8.onnx"):
        got = deploy.run_session(deploy.session(out / name), batch)["logits"]
        ref = deploy.kdjax_outputs(cfg, params, **batch)["logits"]
        tol = TOL if name == "model.onnx" else 0.1
        np.testing.assert_allclose(got, ref, atol=tol, rtol=0, err_msg=name)
    # --onnx_weights merged: the dense graph, same outputs
    rc, stdout, err = run_cli(capsys, "export", "--workdir", str(wd), "--out",
                              str(tmp_path / "merged"), "--format", "onnx",
                              "--onnx_weights", "merged")
    assert rc == 0, err
    assert json.loads(stdout)["weights"] == "merged"
    assert not (tmp_path / "merged" / "model_int8.onnx").exists()
    got = deploy.run_session(deploy.session(tmp_path / "merged" / "model.onnx"), batch)["logits"]
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    # the Hugging Face formats export a finetune workdir too (labels from label_names)
    rc, stdout, err = run_cli(capsys, "export", "--workdir", str(wd), "--out",
                              str(tmp_path / "hf"), "--format", "electra")
    assert rc == 0, err
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["id2label"] == {"0": "negative", "1": "positive"}


@pytest.mark.parametrize("argv,message", [
    (["--quantize", "int8"], "--quantize int8 needs --format onnx"),
    (["--format", "factorized", "--quantize", "int8"], "--quantize int8 needs --format onnx"),
    (["--onnx_weights", "merged"], "--onnx_weights needs --format onnx"),
    (["--format", "onnx", "--dtype", "bfloat16"], "float32"),
    (["--format", "onnx", "--max_shard_size", "50MB"], "--max_shard_size"),
    (["--format", "onnx", "--quantize", "int4"], "unknown quantization 'int4'"),
    (["--format", "onnx", "--onnx_weights", "lowrank"], "unknown --onnx_weights 'lowrank'"),
    (["--format", "gguf"], "unknown export format 'gguf'; use one of electra, factorized, onnx"),
])
def test_bad_flag_combinations_are_one_line(tmp_path, tokenizer_dir, vocab, capsys, argv,
                                            message):
    wd, _, _ = _finetune_workdir(tmp_path, tokenizer_dir, vocab)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "export", "--workdir", str(wd), "--out", str(out), *argv)
    assert rc == 2 and not stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdjax: error: "), err
    assert message in lines[0]
    assert not out.exists()  # rejected before anything is written


def test_missing_onnx_extra_is_one_line(tmp_path, tokenizer_dir, vocab, capsys, monkeypatch):
    wd, cfg, params = _finetune_workdir(tmp_path, tokenizer_dir, vocab)
    for module in ("onnxruntime", "onnxscript"):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)  # `import module` now raises ImportError
            with pytest.raises(KdjaxError, match=r"pip install 'kdjax\[onnx\]'"):
                deploy.require_onnx()
            with pytest.raises(KdjaxError, match=module):
                deploy.to_onnx(cfg, params, tmp_path / "x")
            rc, stdout, err = run_cli(capsys, "export", "--workdir", str(wd), "--out",
                                      str(tmp_path / "out"), "--format", "onnx")
            assert rc == 2 and not stdout
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("kdjax: error: ONNX export needs "
                                                           "the 'onnx' extra"), err
            assert "pip install 'kdjax[onnx]'" in lines[0]
    # the Hugging Face formats do not need the extra
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnxruntime", None)
        rc, _, err = run_cli(capsys, "export", "--workdir", str(wd), "--out",
                             str(tmp_path / "hf"), "--format", "factorized")
        assert rc == 0, err


# -- accuracy mode ----------------------------------------------------------------------------
def test_task_accuracy_fp32_vs_int8(tmp_path, tokenizer_dir, vocab, capsys):
    wd, cfg, params = _finetune_workdir(tmp_path, tokenizer_dir, vocab)
    data = tmp_path / "nsmc"
    data.mkdir()
    rows = ["id\tdocument\tlabel"] + [f"{i}\t{KOREAN[i % len(KOREAN)]} {KOREAN[(3 * i) % 8]}"
                                      f"\t{i % 2}" for i in range(37)]
    (data / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = deploy.task_accuracy(wd, data, batch_size=8, progress=False)
    assert result["task"] == "nsmc" and result["examples"] == 37 and result["metric"] == "accuracy"
    assert result["max_length"] == 24  # from the run's config.json
    # ORT fp32 predicts exactly what kdjax predicts; int8 is scored on the same rows
    assert result["onnx_fp32"] == result["kdjax"]
    assert result["fp32_max_abs_vs_kdjax"] <= TOL
    assert 0.0 <= result["onnx_int8"]["accuracy"] <= 100.0
    assert 0.0 <= result["int8_agreement"] <= 1.0
    assert result["int8_delta"] == pytest.approx(
        result["onnx_int8"]["accuracy"] - result["onnx_fp32"]["accuracy"], abs=1e-3)
    # the accuracy is kdjax's own task metric of the logits
    from kdjax.data.tasks import get_task
    from kdjax.data.tokenizer import load_tokenizer

    task = get_task("nsmc")
    featurized = task.featurize(task.load(data, "test"), load_tokenizer(wd / "best"), 24)
    logits = deploy.kdjax_outputs(cfg, params, **{k: featurized.arrays[k]
                                                  for k in deploy.INPUT_NAMES})["logits"]
    assert result["kdjax"]["accuracy"] == pytest.approx(
        task.evaluate(logits, featurized)["accuracy"], abs=1e-3)
    # script mode: one JSON line; reusing an existing export
    out = tmp_path / "onnx"
    deploy.to_onnx(cfg, params, out, quantize="int8", check=False)
    assert deploy.main(["accuracy", "--model", str(wd), "--data_dir", str(data), "--onnx",
                        str(out), "--limit", "16", "--no_progress"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["examples"] == 16 and line["sizes_mb"]["int8"] < line["sizes_mb"]["fp32"]
    # a model directory without a task: one line
    (wd / "best" / "kdjax_model.json").write_text(json.dumps(
        {**json.loads((wd / "best" / "kdjax_model.json").read_text()), "task": None}))
    assert deploy.main(["accuracy", "--model", str(wd), "--data_dir", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdjax: error: ") and "--task" in err[0]

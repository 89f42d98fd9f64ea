"""kdjax -> Hugging Face export (`kdjax.export`): both formats load with transformers' Auto
classes and give the Flax model's hidden states and logits to 1e-5 (fp32, padded batches);
`kdjax.from_hf` reads them back; sizes, shards, bf16, model card, workdir/CLI export, and a
checkpoint saved on an 8-device mesh exports the same weights as one saved on 1 device.

Parameters are numpy-random (shapes from `abstract_params`, no jitted init) to keep it fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax.traverse_util import flatten_dict  # noqa: E402
from model_helpers import random_params, train_tokenizer  # noqa: E402

import kdjax  # noqa: E402
import kdjax.hf  # noqa: E402
from kdjax.errors import CheckpointError, ConfigError  # noqa: E402
from kdjax.export import (  # noqa: E402
    add_export_cli,
    export_size,
    export_workdir,
    parse_size,
    to_hf,
)
from kdjax.models.config import EncoderConfig  # noqa: E402

TOL = 1e-5


KOREAN = [
    "오늘은 날씨가 정말 좋습니다.",
    "이 영화는 정말 재미있어요!",
    "서울에서 부산까지 기차로 갑니다.",
    "한국어 자연어 처리는 재미있는 분야입니다.",
    "모델을 작게 만들면 빠르게 실행됩니다.",
    "이 음식은 너무 맛이 없어요.",
    "지식 증류로 작은 모델을 학습합니다.",
]

BASE = dict(num_layers=2, max_position_embeddings=40, hidden_dropout=0.0, attention_dropout=0.0)
KD = dict(hidden_size=32, embedding_size=16, num_heads=2, intermediate_size=64)
MODELS = {
    "teacher": dict(hidden_size=48, embedding_size=48, num_heads=4, intermediate_size=96),
    "kd": KD,  # ELECTRA-Small style: embedding 16 < hidden 32 (embeddings_project)
    "lf_v1": dict(KD, ffn_rank=8),
    "lf_v2": dict(KD, ffn_rank=8, attention_rank=6),
    "lf_v3": dict(KD, ffn_rank=8, attention_rank=6, embedding_rank=8),
    "gen_wide": dict(hidden_size=24, embedding_size=40, num_heads=4, intermediate_size=48),
}
CASES = [
    ("teacher", "discriminator"),
    ("teacher", "none"),
    ("gen_wide", "generator"),  # ELECTRA generator: embeddings wider than hidden
    ("kd", "classification"),
    ("kd", "generator"),
    ("lf_v1", "token_classification"),
    ("lf_v2", "qa"),
    ("lf_v3", "discriminator"),
    ("lf_v3", "generator"),  # tied MLM head over the low-rank embedding
    ("lf_v3", "classification"),
    ("lf_v3", "none"),
]
AUTO = {
    "none": "AutoModel",
    "discriminator": "AutoModelForPreTraining",
    "generator": "AutoModelForMaskedLM",
    "classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "qa": "AutoModelForQuestionAnswering",
}


# -- helpers ----------------------------------------------------------------------------------
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


def batch(vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(3, 11))
    mask = np.ones((3, 11), np.int64)
    mask[1, 7:] = 0  # padded rows of different lengths
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[0, 6:] = 1
    return ids, mask, types


def flax_outputs(cfg: EncoderConfig, params: dict, ids, mask, types):
    out = kdjax.build_model(cfg).apply(
        {"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
        token_type_ids=jnp.asarray(types), deterministic=True, output_hidden_states=True,
    )
    hidden = [np.asarray(h) for h in out.hidden_states]
    logits = None if out.logits is None else np.asarray(out.logits)
    return hidden, logits


def torch_outputs(model, ids, mask, types):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types), output_hidden_states=True)
    hidden = [h.float().numpy() for h in out.hidden_states]
    if hasattr(out, "start_logits"):
        logits = torch.stack([out.start_logits, out.end_logits], -1).float().numpy()
    elif hasattr(out, "logits"):
        logits = out.logits.float().numpy()
    else:
        logits = None
    return hidden, logits


def load_auto(directory: Path, head: str, format: str, **kw):
    cls = getattr(transformers, AUTO[head])
    model, info = cls.from_pretrained(str(directory), trust_remote_code=format == "factorized",
                                      output_loading_info=True, attn_implementation="eager", **kw)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, problems  # no missing / unexpected / mismatched keys
    return model


def assert_same(a, b, tol=TOL, what=""):
    hidden_a, logits_a = a
    hidden_b, logits_b = b
    assert len(hidden_a) == len(hidden_b)
    for i, (x, y) in enumerate(zip(hidden_a, hidden_b)):
        np.testing.assert_allclose(x, y, atol=tol, rtol=0, err_msg=f"{what} hidden {i}")
    assert (logits_a is None) == (logits_b is None), what
    if logits_a is not None:
        np.testing.assert_allclose(logits_a, logits_b, atol=tol, rtol=0, err_msg=f"{what} logits")


_REFERENCE: dict = {}


def reference(name: str, head: str, vocab: int):
    """(cfg, params, flax outputs) of a case, computed once per module run."""
    key = (name, head, vocab)
    if key not in _REFERENCE:
        cfg = make_config(name, head, vocab)
        params = random_params(cfg, seed=len(_REFERENCE))
        _REFERENCE[key] = (cfg, params, flax_outputs(cfg, params, *batch(vocab)))
    return _REFERENCE[key]


# -- parity with transformers -----------------------------------------------------------------
@pytest.mark.parametrize("format", ["electra", "factorized"])
@pytest.mark.parametrize("name,head", CASES, ids=[f"{m}-{h}" for m, h in CASES])
def test_transformers_parity(tmp_path, vocab, name, head, format):
    cfg, params, ref = reference(name, head, vocab)
    out = to_hf(cfg, params, tmp_path / "hf", format=format)
    config = json.loads((out / "config.json").read_text())
    expected_type = "kdjax_electra" if format == "factorized" else "electra"
    assert config["model_type"] == expected_type
    model = load_auto(out, head, format)
    arch = config["architectures"][0]
    assert type(model).__name__ == arch
    if format == "electra":
        assert model.__class__.__module__.startswith("transformers.models.electra")
    assert_same(torch_outputs(model, *batch(vocab)), ref, what=f"{name}/{head}/{format}")
    files = {p.name for p in out.iterdir()}
    remote = {"configuration_kdjax_electra.py", "modeling_kdjax_electra.py"}
    assert remote <= files if format == "factorized" else not remote & files


ROUND_TRIP = [("teacher", "discriminator"), ("kd", "classification"),
              ("lf_v1", "token_classification"), ("lf_v2", "qa"), ("lf_v3", "generator"),
              ("lf_v3", "none")]


@pytest.mark.parametrize(
    "format", ["electra", "factorized"])
@pytest.mark.parametrize("name,head", ROUND_TRIP, ids=[f"{m}-{h}" for m, h in ROUND_TRIP])
def test_from_hf_round_trip(tmp_path, vocab, name, head, format):
    cfg, params, ref = reference(name, head, vocab)
    out = to_hf(cfg, params, tmp_path / "hf", format=format)
    cfg2, params2 = kdjax.from_hf(out)
    assert cfg2.head == cfg.head and cfg2.num_labels == cfg.num_labels
    assert cfg2.emb_size == cfg.emb_size and cfg2.hidden_act == cfg.hidden_act
    if format == "factorized":  # the factors come back as they were
        assert (cfg2.embedding_rank, cfg2.attention_rank, cfg2.ffn_rank) == (
            cfg.embedding_rank, cfg.attention_rank, cfg.ffn_rank)
        for path, value in flatten_dict(params).items():
            np.testing.assert_array_equal(flatten_dict(params2)[path], value)
    else:
        assert not cfg2.is_factorized
    assert_same(flax_outputs(cfg2, params2, *batch(vocab)), ref, what=f"{name}/{format}")


def test_bert_family_exports_as_bert(tmp_path, vocab):
    for head, arch in (("classification", "BertForSequenceClassification"),
                       ("generator", "BertForMaskedLM")):
        cfg = EncoderConfig.from_any({**BASE, "hidden_size": 36, "num_heads": 3,
                                      "intermediate_size": 60, "vocab_size": vocab,
                                      "family": "bert", "head": head, "num_labels": 4})
        params = random_params(cfg, seed=3)
        ref = flax_outputs(cfg, params, *batch(vocab))
        out = to_hf(cfg, params, tmp_path / head)
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == "bert" and config["architectures"] == [arch]
        model = load_auto(out, head, "electra")
        assert type(model).__name__ == arch
        assert_same(torch_outputs(model, *batch(vocab)), ref, what=f"bert/{head}")
        cfg2, params2 = kdjax.from_hf(out)
        assert cfg2.family == "bert" and cfg2.head == head
        assert_same(flax_outputs(cfg2, params2, *batch(vocab)), ref, what="bert round trip")
    with pytest.raises(ConfigError, match="factorized"):
        to_hf(cfg, params, tmp_path / "f", format="factorized")


# -- pipeline, tokenizer, model card ----------------------------------------------------------
@pytest.mark.parametrize("format", ["electra", "factorized"])
def test_text_classification_pipeline(tmp_path, vocab, tokenizer_dir, format):
    from kdjax.data.tokenizer import load_tokenizer

    cfg, params, _ = reference("lf_v3", "classification", vocab)
    labels = ["부정", "긍정", "중립"]
    out = to_hf(cfg, params, tmp_path / "clf", format=format, tokenizer=tokenizer_dir,
                id2label=labels, model_card={"name": "tiny-clf", "metrics": {"accuracy": 0.5}})
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
    clf = transformers.pipeline("text-classification", model=str(out),
                                trust_remote_code=format == "factorized")
    text = "오늘은 날씨가 정말 좋습니다."
    (pred,) = clf(text)
    assert pred["label"] in labels
    # the pipeline's score is the Flax model's softmax on the same tokens
    enc = load_tokenizer(tokenizer_dir)(text, return_tensors="np")
    _, logits = flax_outputs(cfg, params, enc["input_ids"], enc["attention_mask"],
                             enc["token_type_ids"])
    probs = np.exp(logits[0] - logits[0].max())
    probs /= probs.sum()
    assert pred["label"] == labels[int(np.argmax(probs))]
    assert pred["score"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_config_and_model_card(tmp_path, vocab, tokenizer_dir):
    from safetensors import safe_open

    cfg, params, _ = reference("lf_v3", "classification", vocab)
    card = {"name": "KR-ELECTRA-Small-LF-V3 (tiny)", "recipe": "paper_kd", "teacher": "t/dir",
            "metrics": {"nsmc_accuracy": 0.875}}
    for format in ("electra", "factorized"):
        out = to_hf(cfg, params, tmp_path / format, format=format, tokenizer=tokenizer_dir,
                    model_card=card, id2label={0: "a", 1: "b", 2: "c"})
        config = json.loads((out / "config.json").read_text())
        assert config["embedding_size"] == 16 and config["hidden_size"] == 32
        assert config["layer_norm_eps"] == 1e-12 and config["hidden_act"] == "gelu"
        assert config["id2label"] == {"0": "a", "1": "b", "2": "c"}
        assert config["kdjax"]["format"] == format
        with safe_open(str(out / "model.safetensors"), "np") as f:
            assert f.metadata() == {"format": "pt"}
        readme = (out / "README.md").read_text(encoding="utf-8")
        assert readme.startswith("---\n") and "pipeline_tag: text-classification" in readme
        for text in ("KR-ELECTRA-Small-LF-V3 (tiny)", "paper_kd", "nsmc_accuracy", "0.875",
                     "parameters", "fp32 size", format):
            assert text in readme, text
        if format == "factorized":
            assert config["auto_map"]["AutoModelForSequenceClassification"].startswith(
                "modeling_kdjax_electra.")
            assert (config["ffn_rank"], config["attention_rank"], config["embedding_rank"]) == (
                8, 6, 8)
            assert "trust_remote_code=True" in readme
        else:
            assert "auto_map" not in config and "ffn_rank" not in config
            assert config["kdjax"]["merged_from_ranks"] == {"embedding": 8, "attention": 6,
                                                           "ffn": 8}
    # exporting electra into the factorized directory removes the stale remote code
    to_hf(cfg, params, tmp_path / "factorized", format="electra")
    assert not (tmp_path / "factorized" / "modeling_kdjax_electra.py").exists()


# -- sizes, shards, dtypes, layouts -----------------------------------------------------------
def test_factorized_file_size_matches_param_count(tmp_path, capsys):
    # An lf_v3-shaped model big enough that the safetensors header is small next to the data.
    cfg = EncoderConfig(vocab_size=6000, hidden_size=128, num_layers=2, num_heads=4,
                        intermediate_size=512, embedding_size=64, max_position_embeddings=128,
                        head="discriminator", ffn_rank=32, attention_rank=32, embedding_rank=32)
    params = random_params(cfg)
    n = sum(v.size for v in jax.tree_util.tree_leaves(params))
    sizes = {}
    for format in ("factorized", "electra"):
        out = to_hf(cfg, params, tmp_path / format, format=format)
        size = (out / "model.safetensors").stat().st_size
        assert size == export_size(cfg, format)["bytes"]  # exact, computed from shapes only
        sizes[format] = size
    assert abs(sizes["factorized"] - 4 * n) / (4 * n) < 0.02
    dense = export_size(cfg, "electra")["params"]
    assert abs(sizes["electra"] - 4 * dense) / (4 * dense) < 0.02
    assert sizes["electra"] > 2 * sizes["factorized"]
    with capsys.disabled():
        print(f"\n[export sizes] lf_v3-like tiny: {n} params; factorized "
              f"{sizes['factorized']} B, electra (merged, {dense} params) {sizes['electra']} B")


def test_export_size_of_the_paper_configs():
    from kdjax.config_lib import load_config
    from kdjax.models.size import param_report

    model = load_config("lf_v3").model
    factorized = export_size(model, "factorized")
    dense = export_size(model, "electra")
    assert factorized["params"] == param_report(model)["params"]
    assert abs(factorized["mb"] - 18.0) / 18.0 < 0.1  # the paper's 18 MB
    assert abs(dense["mb"] - 53.9) < 1.0  # factors multiplied out: KD-small size
    assert export_size(model, "factorized", "bfloat16")["bytes"] < factorized["bytes"] / 1.9


def test_sharded_export_loads(tmp_path, vocab):
    cfg, params, ref = reference("lf_v3", "generator", vocab)
    for format in ("electra", "factorized"):
        out = to_hf(cfg, params, tmp_path / format, format=format, max_shard_size="20KB")
        index = json.loads((out / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 1 and not (out / "model.safetensors").exists()
        for shard in shards:
            assert (out / shard).stat().st_size < 20_000 + 4_000  # + header
        model = load_auto(out, "generator", format)
        assert_same(torch_outputs(model, *batch(vocab)), ref, what=f"sharded {format}")
        assert_same(flax_outputs(*kdjax.from_hf(out), *batch(vocab)), ref, what="sharded")
    # re-exporting unsharded into the same directory removes the shards
    to_hf(cfg, params, tmp_path / "electra", format="electra")
    assert sorted(p.name for p in (tmp_path / "electra").glob("model*")) == ["model.safetensors"]


def test_bfloat16_export_loads_as_bfloat16(tmp_path, vocab):
    cfg, params, ref = reference("lf_v3", "discriminator", vocab)
    for format in ("electra", "factorized"):
        f32 = to_hf(cfg, params, tmp_path / f"{format}32", format=format)
        b16 = to_hf(cfg, params, tmp_path / f"{format}16", format=format, dtype="bfloat16")
        s32, s16 = ((d / "model.safetensors").stat().st_size for d in (f32, b16))
        n = export_size(cfg, format)["params"]
        assert s16 == export_size(cfg, format, "bfloat16")["bytes"]
        assert s32 - s16 == pytest.approx(2 * n, abs=300)  # 2 bytes a weight (+ header diff)
        assert json.loads((b16 / "config.json").read_text())["dtype"] == "bfloat16"
        model = load_auto(b16, "discriminator", format)
        assert next(model.parameters()).dtype == torch.bfloat16
        assert_same(torch_outputs(model.float(), *batch(vocab)), ref, tol=0.1,
                    what=f"bf16 {format}")
        cfg2, params2 = kdjax.from_hf(b16)  # upcast to fp32 params
        assert_same(flax_outputs(cfg2, params2, *batch(vocab)), ref, tol=0.1, what="bf16")


def test_scan_layout_and_jax_arrays_export_the_same_bytes(tmp_path, vocab):
    from kdjax.factorize import stack_layers

    cfg, params, _ = reference("lf_v2", "qa", vocab)
    scan_cfg = cfg.replace(scan_layers=True)
    scanned = jax.tree_util.tree_map(jnp.asarray, stack_layers(params, scan_cfg))
    for format in ("electra", "factorized"):
        a = to_hf(cfg, params, tmp_path / f"loop-{format}", format=format)
        b = to_hf(scan_cfg, scanned, tmp_path / f"scan-{format}", format=format)
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_user_errors_are_one_line(tmp_path, vocab):
    cfg, params, _ = reference("kd", "classification", vocab)
    with pytest.raises(ConfigError, match="unknown export format 'onnx'"):
        to_hf(cfg, params, tmp_path / "x", format="onnx")
    with pytest.raises(ConfigError, match="dtype"):
        to_hf(cfg, params, tmp_path / "x", dtype="int8")
    with pytest.raises(ConfigError, match="max_shard_size"):
        to_hf(cfg, params, tmp_path / "x", max_shard_size="lots")
    with pytest.raises(ConfigError, match="id2label has 2 labels"):
        to_hf(cfg, params, tmp_path / "x", id2label=["a", "b"])
    with pytest.raises(ConfigError, match="ffn_rank|missing"):  # params of another config
        to_hf(cfg.replace(ffn_rank=4), params, tmp_path / "x")
    with pytest.raises(ConfigError, match="state.params"):
        to_hf(cfg, {"student": params}, tmp_path / "x")
    assert parse_size("50MB") == 50_000_000 and parse_size("1GiB") == 2**30
    assert parse_size(123) == 123


# -- from a run's workdir, and the CLI --------------------------------------------------------
def _fake_pretrain_run(root: Path, vocab: int, tokenizer_dir: Path) -> tuple[Path, dict]:
    """A workdir shaped like `kdjax pretrain`'s: an Orbax checkpoint (disc + gen sharing the
    disc's embeddings), metrics.jsonl and the tokenizer; no training needed."""
    import shutil

    from kdjax.train.checkpoint import Checkpointer

    disc = make_config("kd", "discriminator", vocab).replace(embedding_size=16)
    gen = make_config("kd", "generator", vocab).replace(hidden_size=8, num_heads=2,
                                                        intermediate_size=16)
    d_params, g_params = random_params(disc, 11), random_params(gen, 12)
    g_params = {k: v for k, v in g_params.items() if k != "embeddings"}
    state = {"params": {"disc": d_params, "gen": g_params}, "step": np.asarray(7, np.int32)}
    meta = {"kind": "pretrain", "config": {"name": "tiny_pretrain", "data": {}},
            "models": {"disc": disc.to_dict(), "gen": gen.to_dict()}, "main_model": "disc",
            "tied": {"gen": {"embeddings": "disc"}}, "step": 7}
    wd = root / "run"
    ckpt = Checkpointer(wd / "checkpoints", async_save=False)
    ckpt.save(7, state, meta)
    ckpt.close()
    shutil.copytree(tokenizer_dir, wd / "tokenizer")
    (wd / "metrics.jsonl").write_text(
        json.dumps({"step": 5, "loss": 3.0}) + "\n"
        + json.dumps({"step": 7, "loss": 2.5, "disc_loss": 0.25, "epoch": 1}) + "\n")
    gen_full = {**g_params, "embeddings": d_params["embeddings"]}
    return wd, {"disc": (disc, d_params), "gen": (gen, gen_full)}


def test_export_workdir_main_model_and_generator(tmp_path, vocab, tokenizer_dir, monkeypatch):
    wd, models = _fake_pretrain_run(tmp_path, vocab, tokenizer_dir)
    ids = batch(vocab)
    for part, head in (("", "discriminator"), ("gen", "generator")):
        cfg, params = models[part or "disc"]
        ref = flax_outputs(cfg, params, *ids)
        for format in ("electra", "factorized"):
            out = export_workdir(wd, tmp_path / f"out-{part}-{format}", format=format, part=part)
            assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
            readme = (out / "README.md").read_text(encoding="utf-8")
            assert "tiny_pretrain" in readme and "disc_loss" in readme and "| step | 7 |" in readme
            model = load_auto(out, head, format)
            assert_same(torch_outputs(model, *ids), ref, what=f"workdir {part} {format}")
    # the model card names the workdir as given (relative), never this machine's absolute path
    assert f"| workdir | {os.path.relpath(wd)} |" in readme
    monkeypatch.chdir(tmp_path)
    readme = (export_workdir("run", "out-relative") / "README.md").read_text(encoding="utf-8")
    assert "| workdir | run |" in readme and str(tmp_path) not in readme
    with pytest.raises(CheckpointError, match="does not record model 'student'"):
        export_workdir(wd, tmp_path / "x", part="student")
    with pytest.raises(CheckpointError, match="step 3"):
        export_workdir(wd, tmp_path / "x", step=3)


def _cli(argv: list[str]):
    import argparse

    from kdjax.cli import split_overrides

    parser = argparse.ArgumentParser(prog="kdjax")
    sub = parser.add_subparsers(dest="command")
    handler = add_export_cli(sub)
    rest, overrides = split_overrides(argv)
    return handler(parser.parse_args(rest), overrides)


def test_cli_export_and_its_errors(tmp_path, vocab, tokenizer_dir, capsys):
    wd, _ = _fake_pretrain_run(tmp_path, vocab, tokenizer_dir)
    out = tmp_path / "hf"
    assert _cli(["export", "--workdir", str(wd), "--out", str(out), "--format", "factorized",
                 "--dtype", "bfloat16", "--max_shard_size", "30KB"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["architecture"] == "KdjaxElectraForPreTraining"
    assert "model.safetensors.index.json" in line["files"]
    load_auto(out, "discriminator", "factorized")
    with pytest.raises(CheckpointError, match="does not exist"):
        _cli(["export", "--workdir", str(tmp_path / "nope"), "--out", str(out)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints"):
        _cli(["export", "--workdir", str(tmp_path / "empty"), "--out", str(out)])
    with pytest.raises(ConfigError, match="unknown export format 'gguf'"):
        _cli(["export", "--workdir", str(wd), "--out", str(out), "--format", "gguf"])
    with pytest.raises(ConfigError, match="overrides"):
        _cli(["export", "--workdir", str(wd), "--out", str(out), "--config.train.steps=3"])


# -- checkpoints saved on different meshes ------------------------------------------------------
_TRAIN_BOTH = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax
jax.config.update("jax_default_matmul_precision", "highest")
if os.environ.get("KDJAX_COMPILATION_CACHE"):
    from kdjax.cli import enable_compilation_cache
    enable_compilation_cache()
from kdjax.config_lib import load_config
from kdjax.train.pretrain_distill import train
root, tokenizer = sys.argv[1], sys.argv[2]
base = ["train.steps=2", "train.batch_size=8", "train.log_every=1", "train.save_every=2",
        "train.warmup_steps=0", "train.async_checkpoints=False", "train.seed=0",
        "data.max_length=32", f"data.tokenizer={tokenizer}",
        "student.model.hidden_dropout=0.0", "student.model.attention_dropout=0.0"]
assert jax.device_count() == 8
for name, mesh in (("mesh8", ["mesh.shape=(8,1,1)"]),
                   ("mesh1", ["mesh.num_devices=1", "mesh.shape=(1,1,1)"])):
    train(load_config("debug_distill", base + mesh), os.path.join(root, name), "distill",
          progress=False)

# The 1-device run's state, sharded over 8 devices (leading axis split where it divides) and
# saved again from that mesh: the same numbers, saved from 8 devices.
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from kdjax.train.checkpoint import Checkpointer, read_state_numpy
state, meta = read_state_numpy(os.path.join(root, "mesh1", "checkpoints"))
mesh = jax.make_mesh((8,), ("fsdp",))
def put(x):
    x = np.asarray(x)
    split = x.ndim >= 1 and x.shape[0] % 8 == 0
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec("fsdp") if split
                                           else PartitionSpec()))
sharded = jax.tree_util.tree_map(put, state)
n_split = sum(len(a.sharding.device_set) == 8 and not a.sharding.is_fully_replicated
              for a in jax.tree_util.tree_leaves(sharded))
ckpt = Checkpointer(os.path.join(root, "resaved8", "checkpoints"), async_save=False)
ckpt.save(int(meta["step"]), sharded, meta)
ckpt.close()
print("TRAINED", n_split)
"""


@pytest.mark.slow
def test_checkpoint_from_8_device_mesh_exports_same_weights(tmp_path):
    from safetensors.numpy import load_file

    from kdjax.data.corpus import SAMPLE
    from kdjax.data.tokenizer import train_wordpiece

    tok = tmp_path / "tokenizer"
    train_wordpiece([str(SAMPLE)], tok, vocab_size=512, min_frequency=1, show_progress=False)
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", _TRAIN_BOTH, str(tmp_path), str(tok)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and "TRAINED" in proc.stdout, proc.stderr[-4000:]
    assert int(proc.stdout.split("TRAINED")[-1].split()[0]) > 10  # really sharded leaves
    for format in ("factorized", "electra"):
        files = {}
        for name in ("mesh8", "mesh1"):
            out = export_workdir(tmp_path / name, tmp_path / f"{name}-{format}", format=format)
            files[name] = out / "model.safetensors"
        a, b = load_file(files["mesh8"]), load_file(files["mesh1"])
        assert sorted(a) == sorted(b)
        worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
        assert worst <= 1e-6, (format, worst)
        identical = files["mesh8"].read_bytes() == files["mesh1"].read_bytes()
        print(f"[8-device vs 1-device training, {format}] max |diff| {worst:.3g}, "
              f"byte-identical: {identical}")
        # the same state saved from an 8-device (sharded) mesh exports bit for bit the same
        same = export_workdir(tmp_path / "resaved8", tmp_path / f"resaved8-{format}",
                              format=format) / "model.safetensors"
        assert same.read_bytes() == files["mesh1"].read_bytes(), format
        # the run's kdjax model directory (WORKDIR/model) exports the same weights too
        model_dir = export_workdir(tmp_path / "mesh1" / "model", tmp_path / f"dir-{format}",
                                   format=format) / "model.safetensors"
        assert model_dir.read_bytes() == files["mesh1"].read_bytes(), format
    readme = (tmp_path / "mesh8-factorized" / "README.md").read_text(encoding="utf-8")
    for text in ("debug_distill", "binary_kd_loss", "compression", "| step | 2 |", "loss"):
        assert text in readme, text

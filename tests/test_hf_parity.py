"""kdjax.from_hf against transformers' PyTorch models: every hidden state, attention map and
head output must match to 1e-5 in fp32, on padded batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

import kdjax  # noqa: E402
from kdjax.errors import CheckpointError  # noqa: E402

TOL = 1e-5


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Perturb every weight (LayerNorm and biases too) so that a mapping error shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.2 if "LayerNorm" in name else 0.05
            base = 1.0 if name.endswith("LayerNorm.weight") else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))


def _batch(vocab: int, batch: int = 3, length: int = 11, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[1, 7:] = 0  # padded rows of different lengths
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[0, 5:] = 1
    return ids, mask, types


def _save(model, tmp_path, name="m"):
    model.eval()
    out = tmp_path / name
    model.save_pretrained(out)
    return out


def _compare(model_t, directory, ids, mask, types, head_key=None):
    with torch.no_grad():
        ref = model_t(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types), output_hidden_states=True,
            output_attentions=True,
        )
    cfg, params = kdjax.from_hf(directory)
    out = kdjax.build_model(cfg).apply(
        {"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
        token_type_ids=jnp.asarray(types), deterministic=True, output_hidden_states=True,
        output_attentions=True,
    )
    assert len(out.hidden_states) == len(ref.hidden_states) == cfg.num_layers + 1
    for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states)):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=TOL, err_msg=f"hidden {i}")
    assert len(out.attentions) == len(ref.attentions) == cfg.num_layers
    for i, (a, b) in enumerate(zip(out.attentions, ref.attentions)):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=TOL, err_msg=f"attention {i}")
    if head_key is not None:
        ref_logits = getattr(ref, head_key)
        if head_key == "start_logits":
            ref_logits = torch.stack([ref.start_logits, ref.end_logits], -1)
        np.testing.assert_allclose(np.asarray(out.logits), ref_logits.numpy(), atol=TOL)
    return cfg, out


ELECTRA_SIZES = [
    # (hidden, embedding, heads, layers, ffn)
    (48, 48, 4, 2, 96),
    (40, 24, 5, 3, 72),  # embedding_size < hidden (ELECTRA-Small style), odd widths
]


def _electra_config(hidden, emb, heads, layers, ffn, **kw):
    return transformers.ElectraConfig(
        vocab_size=101, hidden_size=hidden, embedding_size=emb, num_attention_heads=heads,
        num_hidden_layers=layers, intermediate_size=ffn, max_position_embeddings=32,
        attn_implementation="eager", **kw,
    )


@pytest.mark.parametrize("size", ELECTRA_SIZES)
def test_electra_discriminator_parity(tmp_path, size):
    torch.manual_seed(0)
    model = transformers.ElectraForPreTraining(_electra_config(*size))
    _randomize(model, 1)
    d = _save(model, tmp_path)
    cfg, out = _compare(model, d, *_batch(101), head_key="logits")
    assert cfg.head == "discriminator" and cfg.emb_size == size[1]
    assert out.logits.shape == (3, 11)


def test_electra_base_model_parity(tmp_path):
    torch.manual_seed(0)
    model = transformers.ElectraModel(_electra_config(*ELECTRA_SIZES[1]))
    _randomize(model, 2)
    cfg, _ = _compare(model, _save(model, tmp_path), *_batch(101))
    assert cfg.head == "none"


def test_electra_generator_parity(tmp_path):
    # Generator shape of ELECTRA: embeddings wider than the hidden size, tied MLM head.
    torch.manual_seed(0)
    model = transformers.ElectraForMaskedLM(_electra_config(24, 40, 4, 2, 48))
    _randomize(model, 3)
    model.tie_weights()
    cfg, _ = _compare(model, _save(model, tmp_path), *_batch(101), head_key="logits")
    assert cfg.head == "generator"


@pytest.mark.parametrize(
    "cls,head_key",
    [
        ("ElectraForSequenceClassification", "logits"),
        ("ElectraForTokenClassification", "logits"),
        ("ElectraForQuestionAnswering", "start_logits"),
    ],
)
def test_electra_task_heads_parity(tmp_path, cls, head_key):
    torch.manual_seed(0)
    labels = 2 if cls == "ElectraForQuestionAnswering" else 3  # HF's QA head uses num_labels
    model = getattr(transformers, cls)(_electra_config(*ELECTRA_SIZES[1], num_labels=labels))
    _randomize(model, 4)
    cfg, _ = _compare(model, _save(model, tmp_path), *_batch(101), head_key=head_key)
    if cls != "ElectraForQuestionAnswering":
        assert cfg.num_labels == 3


def _bert_config(**kw):
    return transformers.BertConfig(
        vocab_size=97, hidden_size=36, num_attention_heads=3, num_hidden_layers=3,
        intermediate_size=60, max_position_embeddings=40, attn_implementation="eager", **kw,
    )


@pytest.mark.parametrize(
    "cls,head_key",
    [
        ("BertModel", None),
        ("BertForMaskedLM", "logits"),
        ("BertForPreTraining", "prediction_logits"),
        ("BertForSequenceClassification", "logits"),
    ],
)
def test_bert_parity(tmp_path, cls, head_key):
    torch.manual_seed(0)
    model = getattr(transformers, cls)(_bert_config())
    _randomize(model, 5)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    cfg, _ = _compare(model, _save(model, tmp_path), *_batch(97), head_key=head_key)
    assert cfg.family == "bert"


def test_pytorch_bin_and_sharded_safetensors(tmp_path):
    torch.manual_seed(0)
    model = transformers.ElectraForPreTraining(_electra_config(*ELECTRA_SIZES[0]))
    _randomize(model, 6)
    model.eval()
    binary = tmp_path / "bin"
    # transformers 5 only writes safetensors; older hub checkpoints ship a torch pickle.
    model.config.save_pretrained(binary)
    torch.save(model.state_dict(), binary / "pytorch_model.bin")
    _compare(model, binary, *_batch(101), head_key="logits")
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    _compare(model, sharded, *_batch(101), head_key="logits")


def test_scan_layers_layout_gives_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = transformers.ElectraForPreTraining(_electra_config(*ELECTRA_SIZES[1]))
    _randomize(model, 7)
    d = _save(model, tmp_path)
    ids, mask, types = _batch(101)
    cfg, params = kdjax.from_hf(d)
    cfg_s, params_s = kdjax.from_hf(d, scan_layers=True, remat=True)
    kw = dict(attention_mask=jnp.asarray(mask), token_type_ids=jnp.asarray(types),
              output_hidden_states=True)
    a = kdjax.build_model(cfg).apply({"params": params}, jnp.asarray(ids), **kw)
    b = kdjax.build_model(cfg_s).apply({"params": params_s}, jnp.asarray(ids), **kw)
    for x, y in zip(a.hidden_states, b.hidden_states):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    np.testing.assert_allclose(np.asarray(a.logits), np.asarray(b.logits), atol=1e-6)


def test_missing_and_unknown_keys_are_listed(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = transformers.ElectraForPreTraining(_electra_config(*ELECTRA_SIZES[0]))
    d = _save(model, tmp_path)
    state = load_file(d / "model.safetensors")
    state.pop("electra.encoder.layer.1.output.dense.bias")
    state["electra.encoder.layer.0.mystery.weight"] = np.zeros(3, np.float32)
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="layer.1.output.dense.bias"):
        kdjax.from_hf(d)
    state["electra.encoder.layer.1.output.dense.bias"] = np.zeros(48, np.float32)
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="mystery"):
        kdjax.from_hf(d)


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        kdjax.from_hf(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        kdjax.from_hf(tmp_path / "empty")
    d = tmp_path / "cfgonly"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(_electra_config(*ELECTRA_SIZES[0]).to_dict()))
    with pytest.raises(CheckpointError, match="no weights"):
        kdjax.from_hf(d)

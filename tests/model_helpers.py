"""Helpers shared by the export tests (test_export.py, test_onnx.py): a tiny Korean WordPiece
vocabulary and random params with every tensor distinct."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from kdjax.models.config import EncoderConfig
from kdjax.models.model import abstract_params


def train_tokenizer(root: Path, lines: list[str]) -> Path:
    """A 300-token WordPiece vocabulary trained on `lines`, in root/tokenizer."""
    from kdjax.data.tokenizer import train_wordpiece

    corpus = root / "ko.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    train_wordpiece([str(corpus)], root / "tokenizer", vocab_size=300, min_frequency=1,
                    show_progress=False)
    return root / "tokenizer"


def random_params(cfg: EncoderConfig, seed: int = 0) -> dict:
    """numpy params with the shapes of `cfg`: LayerNorm scales near 1, every tensor distinct
    (the ONNX exporter merges equal initializers)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, spec in sorted(flatten_dict(abstract_params(cfg)).items()):
        base = 1.0 if path[-1] == "scale" else 0.0
        std = 0.1 if path[-1] in ("scale", "bias") else 0.15
        flat[path] = (base + std * rng.standard_normal(spec.shape)).astype(np.float32)
    return unflatten_dict(flat)

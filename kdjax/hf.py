"""Hugging Face <-> kdjax parameter mapping (ELECTRA and BERT families).

transformers 5.x has no Flax backend, so the mapping is ours. One table, `key_table(config,
prefix)`, lists every (HF state-dict key, kdjax parameter path, transform); import reads it
one way and export (`to_hf`) the other, so the two cannot drift apart.

Transforms: "linear" (torch Linear weight [out, in] <-> flax kernel [in, out]), "copy"
(embeddings [rows, E], biases and LayerNorm vectors, unchanged).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from kdjax.errors import CheckpointError
from kdjax.models.config import EncoderConfig

log = logging.getLogger(__name__)

Path_ = tuple[str, ...]

# Architectures -> (family, head). The base-model prefix ("electra." / "bert.") is detected
# from the keys, so ElectraModel / BertModel checkpoints (no prefix) work too.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "ElectraModel": ("electra", "none"),
    "ElectraForPreTraining": ("electra", "discriminator"),
    "ElectraForMaskedLM": ("electra", "generator"),
    "ElectraForSequenceClassification": ("electra", "classification"),
    "ElectraForTokenClassification": ("electra", "token_classification"),
    "ElectraForQuestionAnswering": ("electra", "qa"),
    "BertModel": ("bert", "none"),
    "BertForPreTraining": ("bert", "generator"),
    "BertForMaskedLM": ("bert", "generator"),
    "BertForSequenceClassification": ("bert", "classification"),
    "BertForTokenClassification": ("bert", "token_classification"),
    "BertForQuestionAnswering": ("bert", "qa"),
    # kdjax's own factorized export (model_type "kdjax_electra", code in kdjax/hf_remote/).
    "KdjaxElectraModel": ("electra", "none"),
    "KdjaxElectraForPreTraining": ("electra", "discriminator"),
    "KdjaxElectraForMaskedLM": ("electra", "generator"),
    "KdjaxElectraForSequenceClassification": ("electra", "classification"),
    "KdjaxElectraForTokenClassification": ("electra", "token_classification"),
    "KdjaxElectraForQuestionAnswering": ("electra", "qa"),
}

# Keys that exist in HF checkpoints but carry nothing kdjax needs (or duplicate a tied weight).
_IGNORED_SUFFIXES = ("position_ids", "token_type_ids")


def _linear(hf: str, path: Path_, rank: int) -> list[tuple[str, Path_, str]]:
    """A (possibly low-rank) Linear: weight/bias, or down.weight + up.weight/up.bias."""
    if rank:
        return [
            (f"{hf}.down.weight", (*path, "down", "kernel"), "linear"),
            (f"{hf}.up.weight", (*path, "up", "kernel"), "linear"),
            (f"{hf}.up.bias", (*path, "up", "bias"), "copy"),
        ]
    return [(f"{hf}.weight", (*path, "kernel"), "linear"), (f"{hf}.bias", (*path, "bias"), "copy")]


def _norm(hf: str, path: Path_) -> list[tuple[str, Path_, str]]:
    return [(f"{hf}.weight", (*path, "scale"), "copy"), (f"{hf}.bias", (*path, "bias"), "copy")]


def key_table(cfg: EncoderConfig, prefix: str) -> list[tuple[str, Path_, str]]:
    """Every (HF key, kdjax path, transform) of a model with this config (unstacked layers).

    `prefix` is the base-model prefix of the HF state dict ("electra.", "bert." or "").
    """
    p = prefix
    rows: list[tuple[str, Path_, str]] = []
    emb = ("embeddings",)
    rows.append((f"{p}embeddings.word_embeddings.weight", (*emb, "word_embeddings", "embedding"),
                 "copy"))
    if cfg.embedding_rank:
        # Low-rank word embedding (factorized export): [V, r] table then a bias-free r -> E map.
        rows.append((f"{p}embeddings.word_embeddings_project.weight",
                     (*emb, "word_embeddings", "projection"), "linear"))
    rows += [
        (f"{p}embeddings.position_embeddings.weight", (*emb, "position_embeddings", "embedding"),
         "copy"),
        (f"{p}embeddings.token_type_embeddings.weight",
         (*emb, "token_type_embeddings", "embedding"), "copy"),
        *_norm(f"{p}embeddings.LayerNorm", (*emb, "LayerNorm")),
    ]
    if cfg.emb_size != cfg.hidden_size:
        rows += _linear(f"{p}embeddings_project", ("embeddings_project",), 0)
    for i in range(cfg.num_layers):
        hf, fx = f"{p}encoder.layer.{i}", ("encoder", f"layer_{i}")
        for name in ("query", "key", "value"):
            rows += _linear(f"{hf}.attention.self.{name}", (*fx, "attention", name),
                            cfg.attention_rank)
        rows += _linear(f"{hf}.attention.output.dense", (*fx, "attention", "output"),
                        cfg.attention_rank)
        rows += _norm(f"{hf}.attention.output.LayerNorm", (*fx, "attention_norm"))
        rows += _linear(f"{hf}.intermediate.dense", (*fx, "intermediate"), cfg.ffn_rank)
        rows += _linear(f"{hf}.output.dense", (*fx, "output"), cfg.ffn_rank)
        rows += _norm(f"{hf}.output.LayerNorm", (*fx, "output_norm"))
    rows += _head_rows(cfg, p)
    return rows


def _head_rows(cfg: EncoderConfig, p: str) -> list[tuple[str, Path_, str]]:
    bert = cfg.family == "bert"
    if cfg.head == "discriminator":
        return [
            *_linear("discriminator_predictions.dense", ("discriminator_head", "dense"), 0),
            *_linear("discriminator_predictions.dense_prediction",
                     ("discriminator_head", "prediction"), 0),
        ]
    if cfg.head == "generator":
        if bert:
            return [
                *_linear("cls.predictions.transform.dense", ("generator_head", "dense"), 0),
                *_norm("cls.predictions.transform.LayerNorm", ("generator_head", "norm")),
                ("cls.predictions.bias", ("generator_bias",), "copy"),
            ]
        return [
            *_linear("generator_predictions.dense", ("generator_head", "dense"), 0),
            *_norm("generator_predictions.LayerNorm", ("generator_head", "norm")),
            ("generator_lm_head.bias", ("generator_bias",), "copy"),
        ]
    if cfg.head == "classification":
        if bert:
            return [
                *_linear(f"{p}pooler.dense", ("classifier", "pooler"), 0),
                *_linear("classifier", ("classifier", "out_proj"), 0),
            ]
        return [
            *_linear("classifier.dense", ("classifier", "dense"), 0),
            *_linear("classifier.out_proj", ("classifier", "out_proj"), 0),
        ]
    if cfg.head == "token_classification":
        return _linear("classifier", ("classifier", "classifier"), 0)
    if cfg.head == "qa":
        return _linear("qa_outputs", ("qa_head", "qa_outputs"), 0)
    return []


# Keys a checkpoint may have that kdjax drops knowingly (tied copies, pooler/NSP heads that
# distillation does not use). Matched as prefixes / exact names after the ones above.
def _droppable(key: str, cfg: EncoderConfig) -> str | None:
    if key.endswith(_IGNORED_SUFFIXES):
        return "buffer"
    if key in ("generator_lm_head.weight", "cls.predictions.decoder.weight"):
        return "tied to the word embeddings"
    if key == "cls.predictions.decoder.bias":
        return "duplicate of cls.predictions.bias"
    if key.startswith("cls.seq_relationship."):
        return "BERT next-sentence head (unused for distillation)"
    if ".pooler." in key or key.startswith("pooler."):
        return "BERT pooler (only used by BERT sequence classification)"
    return None


# --------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------
def resolve_dir(path_or_hub_id: str | os.PathLike) -> Path:
    """A local model directory; a hub id is downloaded (only when online) with huggingface_hub."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the model directory that holds config.json")
    text = os.fspath(path_or_hub_id)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise CheckpointError(
            f"model directory {text!r} does not exist (and it is not a hub id like 'org/name')"
        )
    try:
        from huggingface_hub import snapshot_download

        allow = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
        return Path(snapshot_download(text, allow_patterns=allow))
    except Exception as e:  # offline, unknown repo, auth: one line, not a traceback
        raise CheckpointError(
            f"{text!r} is not a local directory and could not be fetched from the hub "
            f"({type(e).__name__}); download it first and pass the local path"
        ) from e


def read_state_dict(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of a HF checkpoint dir as float32/int numpy arrays (safetensors or .bin)."""
    from safetensors.numpy import load_file

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    binary = directory / "pytorch_model.bin"
    if single.is_file():
        return _to_numpy(load_file(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            if not (directory / shard).is_file():
                raise CheckpointError(f"shard {shard} listed in {index} is missing")
            state.update(load_file(directory / shard))
        return _to_numpy(state)
    if binary.is_file():
        try:
            import torch
        except ImportError as e:
            raise CheckpointError(
                f"{binary} is a PyTorch pickle; install torch (pip install torch==2.13.0) "
                "or convert it to model.safetensors"
            ) from e
        state_t = torch.load(binary, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
                for k, v in state_t.items()}
    raise CheckpointError(
        f"no weights in {directory}: expected model.safetensors, "
        "model.safetensors.index.json or pytorch_model.bin"
    )


def _to_numpy(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in state.items():
        v = np.asarray(v)
        # bf16/fp16 checkpoints are upcast: kdjax keeps fp32 master params.
        out[k] = v.astype(np.float32) if v.dtype.kind == "f" or v.dtype.name == "bfloat16" else v
    return out


def infer_head(keys: set[str] | Any, family: str) -> str:
    """The head of a checkpoint from its weight names (for config.json without architectures)."""
    keys = set(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("discriminator_predictions."):
        return "discriminator"
    if has("generator_predictions.") or has("cls.predictions."):
        return "generator"
    if has("qa_outputs."):
        return "qa"
    if "classifier.dense.weight" in keys or (family == "bert" and has("classifier.")
                                              and has("bert.pooler.")):
        return "classification"
    if has("classifier."):
        return "token_classification"
    return "none"


def config_from_hf(
    hf: Mapping[str, Any], keys: Any = None, **overrides: Any
) -> EncoderConfig:
    """An `EncoderConfig` from a HF config.json dict (ELECTRA or BERT).

    `keys` (the checkpoint's weight names) decides the head when config.json lists no
    known architecture.
    """
    model_type = hf.get("model_type", "")
    if model_type == "kdjax_electra":  # factorized kdjax export: ELECTRA with low-rank layers
        model_type = "electra"
    archs = hf.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if model_type not in ("electra", "bert") and arch is None:
        raise CheckpointError(
            f"unsupported model_type {model_type!r} (architectures {archs}); kdjax reads "
            "ELECTRA and BERT checkpoints"
        )
    if arch is not None:
        family, head = ARCHITECTURES[arch]
    else:
        family = model_type
        head = infer_head(keys, family) if keys is not None else "none"
    num_labels = len(hf["id2label"]) if hf.get("id2label") else hf.get("num_labels", 2)
    kd = hf.get("kdjax", {})  # ranks etc. written by a factorized kdjax export
    values: dict[str, Any] = {
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "num_layers": hf["num_hidden_layers"],
        "num_heads": hf["num_attention_heads"],
        "intermediate_size": hf["intermediate_size"],
        "embedding_size": hf.get("embedding_size", hf["hidden_size"]),
        "max_position_embeddings": hf.get("max_position_embeddings", 512),
        "type_vocab_size": hf.get("type_vocab_size", 2),
        "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
        "hidden_dropout": hf.get("hidden_dropout_prob", 0.1),
        "attention_dropout": hf.get("attention_probs_dropout_prob", 0.1),
        "classifier_dropout": (-1.0 if hf.get("classifier_dropout") is None
                               else hf["classifier_dropout"]),
        "hidden_act": hf.get("hidden_act", "gelu"),
        "initializer_range": hf.get("initializer_range", 0.02),
        "pad_token_id": hf.get("pad_token_id") or 0,
        "head": head,
        "num_labels": num_labels if head in ("classification", "token_classification") else 2,
        "family": family,
        "embedding_rank": kd.get("embedding_rank", 0),
        "attention_rank": kd.get("attention_rank", 0),
        "ffn_rank": kd.get("ffn_rank", 0),
    }
    if values["embedding_size"] == values["hidden_size"]:
        values["embedding_size"] = 0 if family == "bert" else values["embedding_size"]
    pe = hf.get("position_embedding_type", "absolute")
    if pe != "absolute":
        raise CheckpointError(f"position_embedding_type={pe!r} is not supported (absolute only)")
    values.update(overrides)
    return EncoderConfig.from_any(values)


def _detect_prefix(keys: set[str], family: str) -> str:
    wanted = f"{family}."
    if any(k.startswith(wanted) for k in keys):
        return wanted
    return ""


def params_from_state_dict(
    state: Mapping[str, np.ndarray], cfg: EncoderConfig
) -> dict[str, Any]:
    """Map a HF state dict onto kdjax's parameter tree for `cfg` (numpy leaves)."""
    keys = set(state)
    prefix = _detect_prefix(keys, cfg.family)
    table = key_table(cfg.replace(scan_layers=False), prefix)
    flat: dict[Path_, np.ndarray] = {}
    missing = []
    for hf_key, path, transform in table:
        if hf_key not in state:
            missing.append(hf_key)
            continue
        value = np.asarray(state[hf_key])
        flat[path] = value.T if transform == "linear" else value
    used = {row[0] for row in table}
    unknown, dropped = [], []
    for key in sorted(keys - used):
        reason = _droppable(key, cfg)
        (dropped if reason else unknown).append(key)
    if missing:
        raise CheckpointError(
            f"checkpoint lacks {len(missing)} weight(s) the {cfg.family}/{cfg.head} model "
            f"needs: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )
    if unknown:
        raise CheckpointError(
            f"checkpoint has {len(unknown)} weight(s) kdjax does not know: "
            f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''} "
            "(is config.json's architecture right?)"
        )
    if dropped:
        log.info("from_hf: dropped %d known extra weight(s): %s", len(dropped), dropped)
    params = unflatten_dict(flat)
    _check_shapes(params, cfg)
    if cfg.scan_layers:
        from kdjax.factorize import stack_layers

        params = stack_layers(params, cfg)
    return params


def _check_shapes(params: dict, cfg: EncoderConfig) -> None:
    from kdjax.models.model import abstract_params

    expected = flatten_dict(abstract_params(cfg.replace(scan_layers=False)))
    got = flatten_dict(params)
    for path, spec in expected.items():
        if path not in got:
            raise CheckpointError(f"weight {'/'.join(path)} missing after mapping")
        if tuple(got[path].shape) != tuple(spec.shape):
            raise CheckpointError(
                f"weight {'/'.join(path)} has shape {tuple(got[path].shape)} but config.json "
                f"implies {tuple(spec.shape)}"
            )


def from_hf(path_or_hub_id: str | os.PathLike, **overrides: Any) -> tuple[EncoderConfig, dict]:
    """Load a HF ELECTRA / BERT checkpoint as `(EncoderConfig, params)`.

    Args:
      path_or_hub_id: a local directory with config.json and model.safetensors (or a sharded
        safetensors index, or pytorch_model.bin), or a hub id (only when online).
      **overrides: `EncoderConfig` fields to change that do not affect the weights, e.g.
        dtype="bfloat16", scan_layers=True, remat=True, attention_impl="einsum".
    Returns:
      (config, params) with params a nested dict of float32 numpy arrays, ready for
      `build_model(config).apply({"params": params}, ...)`.
    """
    directory = resolve_dir(path_or_hub_id)
    cfg_file = directory / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{directory} has no config.json; is it a HF model directory?")
    state = read_state_dict(directory)
    cfg = config_from_hf(json.loads(cfg_file.read_text()), keys=state.keys(), **overrides)
    return cfg, params_from_state_dict(state, cfg)

"""kdjax -> ONNX (fp32 and int8) for CPU serving with ONNX Runtime, and the checks around it.

`to_onnx(config, params, out_dir)` writes ``model.onnx`` (fp32) and, with ``quantize="int8"``,
``model_int8.onnx`` next to the tokenizer, ``config.json`` (labels) and ``kdjax_onnx.json`` (a
manifest: inputs, outputs, sizes, the measured ONNX Runtime vs PyTorch difference). The graph
takes ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64 [batch, sequence], both axes
dynamic) and returns the head's outputs (`output_names`).

How: the model is first exported with `kdjax.export_core.to_hf` (the tested kdjax -> HF
path), loaded as a PyTorch module (transformers' ELECTRA/BERT classes for the merged graph,
kdjax's remote-code classes in `kdjax/hf_remote/` for the factorized one) and converted by
`torch.onnx.export(dynamo=True)`; ``int8`` is ONNX Runtime's dynamic quantization
(`onnxruntime.quantization.quantize_dynamic`: int8 weights, activations quantized per call).
Why these choices, and what was measured, is in docs/deploy.md.

`weights`: ``"merged"`` multiplies low-rank factors out (the dense ELECTRA graph, as the
``electra`` HF format), ``"factorized"`` keeps them (each low-rank layer is two MatMuls, so an
LF-V3 graph is ~4 bytes x its 4.5M parameters), ``"auto"`` (default) = factorized when the model
has factors, else merged.

`task_accuracy` scores a fine-tuned model on a Korean task split with kdjax, ONNX Runtime fp32
and ONNX Runtime int8 (before -> after quantization); ``python -m kdjax.deploy accuracy`` is its
command line.

Needs the ``onnx`` extra (torch, onnx, onnxscript, onnxruntime); without it `require_onnx`
raises a one-line `KdjaxError` naming the missing module and the pip command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdjax.errors import ConfigError, KdjaxError
from kdjax.models.config import EncoderConfig

log = logging.getLogger(__name__)

ONNX_WEIGHTS = ("auto", "merged", "factorized")
QUANTIZE = ("int8",)
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
MANIFEST = "kdjax_onnx.json"
OPSET = 20  # native Gelu (opset 20): one ORT kernel instead of Div/Erf/Add/Mul/Mul
# Modules of the `onnx` extra and the pip requirement that brings each.
_EXTRA_MODULES = (("torch", "torch==2.13.0"), ("onnx", "onnx"), ("onnxscript", "onnxscript"),
                  ("onnxruntime", "onnxruntime"))
# HF files of a `to_hf` export that the ONNX directory does not need (weights, remote code,
# the HF model card).
_HF_ONLY = (".safetensors", ".py", "model.safetensors.index.json", "README.md")


# -- the optional dependency ------------------------------------------------------------------
def require_onnx() -> None:
    """Import the `onnx` extra's modules; a one-line KdjaxError naming what is missing."""
    import importlib

    for module, requirement in _EXTRA_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise KdjaxError(
                f"ONNX export needs the 'onnx' extra ({requirement} is not installed: {e}); "
                "install it with: pip install 'kdjax[onnx]'") from None


# -- names, shapes, options -------------------------------------------------------------------
def output_names(head: str) -> tuple[str, ...]:
    """ONNX output names of a kdjax head (transformers' names for the same outputs).

    Shapes: none -> last_hidden_state [B, L, H]; discriminator -> logits [B, L];
    generator -> logits [B, L, vocab]; classification -> logits [B, num_labels];
    token_classification -> logits [B, L, num_labels]; qa -> start_logits, end_logits [B, L].
    """
    if head == "none":
        return ("last_hidden_state",)
    if head == "qa":
        return ("start_logits", "end_logits")
    return ("logits",)


def resolve_weights(cfg: EncoderConfig, weights: str = "auto") -> str:
    """"merged" or "factorized" for `weights` (auto = factorized when `cfg` has factors)."""
    if weights not in ONNX_WEIGHTS:
        raise ConfigError(f"unknown onnx weights {weights!r}; use one of "
                          f"{', '.join(ONNX_WEIGHTS)}")
    if weights == "auto":
        return "factorized" if cfg.is_factorized and cfg.family == "electra" else "merged"
    return weights


def check_quantize(quantize: str | None) -> str | None:
    if quantize in (None, "", "none"):
        return None
    if quantize not in QUANTIZE:
        raise ConfigError(f"unknown quantization {quantize!r}; use one of {', '.join(QUANTIZE)}")
    return quantize


def kdjax_outputs(cfg: EncoderConfig, params: Any, input_ids: np.ndarray,
                  attention_mask: np.ndarray, token_type_ids: np.ndarray,
                  forward: Any = None) -> dict[str, np.ndarray]:
    """The kdjax (Flax) model's outputs under the ONNX output names (see `output_names`).

    input_ids / attention_mask / token_type_ids: int [B, L]. `forward` is an optional jitted
    ``(params, ids, mask, types) -> model output`` to reuse across calls.
    """
    import jax.numpy as jnp

    import kdjax

    if forward is None:
        model = kdjax.build_model(cfg)

        def forward(p: Any, ids: Any, mask: Any, types: Any) -> Any:
            return model.apply({"params": p}, ids, attention_mask=mask, token_type_ids=types,
                               deterministic=True)

    out = forward(params, jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, jnp.int32),
                  jnp.asarray(token_type_ids, jnp.int32))
    if cfg.head == "none":
        return {"last_hidden_state": np.asarray(out.last_hidden_state)}
    logits = np.asarray(out.logits)
    if cfg.head == "qa":  # kdjax: [B, L, 2] = (start, end)
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}
    return {"logits": logits}


def example_batch(cfg: EncoderConfig, batch: int = 3, length: int = 11,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """A padded int64 batch [batch, length] (rows of different lengths, both segment types)."""
    length = max(2, min(length, cfg.max_position_embeddings))
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(5, cfg.vocab_size - 1), cfg.vocab_size, size=(batch, length))
    mask = np.ones((batch, length), np.int64)
    for row in range(1, batch):
        mask[row, max(1, length - 3 * row):] = 0  # rows padded by different amounts
    ids = np.where(mask == 1, ids, cfg.pad_token_id).astype(np.int64)
    types = np.zeros_like(ids)
    types[0, length // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


# -- PyTorch module to export -----------------------------------------------------------------
def _torch_model(hf_dir: Path, arch: str, weights: str) -> Any:
    """The exported HF directory as an eval-mode PyTorch module with eager attention (plain
    MatMul/Softmax ops that every exporter and ONNX Runtime handle)."""
    import transformers
    from transformers.utils import logging as hf_logging

    if weights == "factorized":
        from kdjax.hf_remote import modeling_kdjax_electra as remote

        cls = getattr(remote, arch)
    else:
        cls = getattr(transformers, arch)
    # transformers warns that the remote-code config type is not its own and draws a progress
    # bar per load; neither is news here
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = cls.from_pretrained(str(hf_dir), attn_implementation="eager")
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    return model.eval()


def _wrap(model: Any, head: str) -> Any:
    """A module `forward(input_ids, attention_mask, token_type_ids) -> tuple of outputs`."""
    import torch

    class OnnxWrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids, return_dict=True)
            if head == "none":
                return (out.last_hidden_state,)
            if head == "qa":
                return (out.start_logits, out.end_logits)
            return (out.logits,)

    return OnnxWrapper(model).eval()


def _torch_export(module: Any, example: Mapping[str, np.ndarray], names: Sequence[str],
                  path: Path, max_length: int, opset: int) -> None:
    """torch.onnx.export with the dynamo exporter: batch and sequence axes dynamic.

    The TorchScript exporter (dynamo=False) traces transformers 5's attention-mask code into
    shape-specialised constants (outputs off by ~1e-2 on other shapes), so it is not used.
    """
    import torch

    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("sequence", max=max_length)
    dynamic = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    args = tuple(torch.from_numpy(example[n]) for n in INPUT_NAMES)
    # The exporter prints its progress to stdout; the CLI's stdout is one JSON line.
    with _quiet(), contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=list(INPUT_NAMES),
                          output_names=list(names), dynamic_shapes=dynamic, dynamo=True,
                          opset_version=opset, external_data=False, optimize=True,
                          verbose=False)
    _strip_debug_info(path)


def _strip_debug_info(path: Path) -> None:
    """Drop what ONNX Runtime never reads: the exporter's per-node debug metadata (Python stack
    traces, FX node text, module paths: ~75% of a tiny model's file, ~1 MB of a 12-layer one)
    and the intermediate shape annotations (`value_info`; 82 KB of LF-V3's int8 file, which
    ORT infers again at load)."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the INFO chatter of the exporter and quantizer (onnx_ir logs every deduplicated
    initializer, onnxruntime.quantization logs every skipped tensor to the *root* logger) and
    their UserWarnings (kdjax logs its own progress outside this block)."""
    import warnings

    root = logging.getLogger()
    names = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo")
    saved = [(root, root.level)] + [(logging.getLogger(n), logging.getLogger(n).level)
                                    for n in names]
    try:
        for logger, _ in saved:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def session(path: str | os.PathLike, threads: int = 0) -> Any:
    """An ONNX Runtime CPU `InferenceSession` (all graph optimizations; `threads` 0 = ORT's
    default, one per physical core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # warnings about unused initializers etc. are not the user's
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_session(sess: Any, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{output name: array} of an ONNX Runtime session for an int batch [B, L] per input."""
    feed = {n: np.asarray(batch[n], np.int64) for n in INPUT_NAMES}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def max_abs_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Largest |a - b| over the outputs both have (KeyError if `b` lacks one of `a`'s)."""
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
               for k in a)


# -- quantization -----------------------------------------------------------------------------
def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """ONNX Runtime dynamic int8 quantization of `src` into `dst`.

    Weights of every MatMul/Gemm (the two factors of each low-rank layer included) become int8
    with one scale per output channel, the embedding tables of the Gathers uint8; activations
    are quantized to uint8 per call (`DynamicQuantizeLinear` + `MatMulInteger`), so no
    calibration data is needed. See docs/deploy.md for the measured alternatives.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    with _quiet():
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm", "Gather"],
                         extra_options={"MatMulConstBOnly": True})
    _strip_debug_info(tmp)
    os.replace(tmp, dst)
    return dst


# -- the export -------------------------------------------------------------------------------
def _onnx_config(cfg: EncoderConfig, weights: str, id2label: Any) -> dict[str, Any]:
    """config.json of an ONNX directory: the plain transformers ELECTRA/BERT config of the
    model's shape (labels, vocab, max length), so that `AutoTokenizer.from_pretrained(dir)` and
    ONNX Runtime front ends read it without remote code; the ranks of a factorized graph are
    recorded under "kdjax"."""
    from kdjax.export_core import hf_config

    dense = cfg.replace(embedding_rank=0, attention_rank=0, ffn_rank=0)
    config = hf_config(dense, "electra", id2label=id2label, source=cfg)
    config["kdjax"].update({"format": "onnx", "onnx_weights": weights,
                            "embedding_rank": cfg.embedding_rank,
                            "attention_rank": cfg.attention_rank, "ffn_rank": cfg.ffn_rank})
    return config


def _onnx_params(path: Path) -> int:
    """Number of elements stored as initializers (any dtype) in an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(math.prod(t.dims) for t in model.graph.initializer)


def to_onnx(
    model_config: Any,
    params: Any,
    out_dir: str | os.PathLike,
    weights: str = "auto",
    quantize: str | None = None,
    tokenizer: Any = None,
    id2label: Any = None,
    opset: int = OPSET,
    check: bool = True,
    model_card: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write an ONNX export of a kdjax model; returns the manifest (also OUT/kdjax_onnx.json).

    Args:
      model_config: the model's `EncoderConfig` (or a dict / ml-collections model section).
      params: its parameters (scan or loop layout, numpy or jax arrays; only the model's own).
      out_dir: output directory: model.onnx (fp32), model_int8.onnx (with quantize="int8"),
        config.json, tokenizer files, kdjax_onnx.json.
      weights: "auto" | "merged" | "factorized" (module docstring).
      quantize: None or "int8" (ONNX Runtime dynamic quantization; the fp32 file is kept).
      tokenizer: a transformers tokenizer or a tokenizer directory, copied next to the model.
      id2label: label names of a classification / token classification head.
      opset: ONNX opset of the graph.
      check: run ONNX Runtime on a padded batch and record the largest difference to PyTorch
        (and to kdjax) in the manifest; a difference above 1e-4 is logged as a warning.
      model_card: provenance (run, recipe, metrics...) stored in the manifest as "model_card".
      overwrite: write into a directory holding files kdjax export did not write (see
        `kdjax.export_core.check_output_dir`; nothing of theirs is deleted).

    Returns {"out", "weights", "head", "inputs", "outputs", "files", "onnx_mb", "int8_mb",
    "initializer_params", "parity_max_abs", ...}.
    """
    require_onnx()
    from kdjax.export_core import check_family, check_output_dir, commit_export, host_tree, to_hf
    from kdjax.storage import Staging

    cfg = EncoderConfig.from_any(model_config)
    weights = resolve_weights(cfg, weights)
    quantize = check_quantize(quantize)
    fmt = "factorized" if weights == "factorized" else "electra"
    check_family(cfg, fmt)
    out = Path(out_dir).expanduser()
    check_output_dir(out, overwrite)
    names = output_names(cfg.head)
    t0 = time.perf_counter()
    # Everything is staged inside `out` and renamed into place at the end: a failure (a full
    # disk, a non-finite weight) leaves `out` as it was.
    with tempfile.TemporaryDirectory(prefix="kdjax-onnx-") as tmp, Staging(out) as stage:
        export_log = logging.getLogger("kdjax.export_core")
        level = export_log.level
        export_log.setLevel(logging.WARNING)  # its "exported ... to /tmp/..." is not the output
        try:
            hf_dir = to_hf(cfg, params, Path(tmp) / "hf", format=fmt, tokenizer=tokenizer,
                           id2label=id2label)
        finally:
            export_log.setLevel(level)
        hf_cfg = json.loads((hf_dir / "config.json").read_text())
        arch = hf_cfg["architectures"][0]
        log.info("onnx: exporting %s (%s weights) with torch.onnx (dynamo) ...", arch, weights)
        module = _wrap(_torch_model(hf_dir, arch, weights), cfg.head)
        example = example_batch(cfg)
        fp32 = stage.dir / FP32_FILE
        tmp_onnx = Path(tmp) / FP32_FILE
        _torch_export(module, example, names, tmp_onnx, cfg.max_position_embeddings, opset)
        shutil.move(str(tmp_onnx), fp32)
        for f in sorted(hf_dir.iterdir()):  # the tokenizer files
            if f.is_file() and not f.name.endswith(_HF_ONLY) and f.name not in (
                    "config.json", "kdjax_export.json"):
                shutil.copyfile(f, stage.dir / f.name)
        config = _onnx_config(cfg, weights, id2label)
        (stage.dir / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False)
                                               + "\n")
        manifest: dict[str, Any] = {
            "out": str(out), "weights": weights, "head": cfg.head, "architecture": arch,
            "inputs": list(INPUT_NAMES), "outputs": list(names),
            "dynamic_axes": {"batch": 0, "sequence": 1},
            "max_sequence": cfg.max_position_embeddings, "opset": opset,
            "fp32": FP32_FILE, "onnx_mb": round(fp32.stat().st_size / 1e6, 3),
            "initializer_params": _onnx_params(fp32),
        }
        if check:
            other = example_batch(cfg, batch=2, length=7, seed=1)  # another (B, L) than traced
            import torch

            worst = 0.0
            sess = session(fp32)
            for batch in (example, other):
                with torch.no_grad():
                    ref = module(*(torch.from_numpy(batch[n]) for n in INPUT_NAMES))
                ref = {n: r.float().numpy() for n, r in zip(names, ref)}
                worst = max(worst, max_abs_diff(ref, run_session(sess, batch)))
            manifest["parity_max_abs"] = worst
            ref_cfg = cfg.replace(dtype="float32", param_dtype="float32")
            manifest["parity_kdjax_max_abs"] = max_abs_diff(
                kdjax_outputs(ref_cfg, host_tree(params), **other), run_session(sess, other))
            if max(worst, manifest["parity_kdjax_max_abs"]) > 1e-4:
                log.warning("onnx: ONNX Runtime differs from the model by %.3g (PyTorch) / "
                            "%.3g (kdjax)", worst, manifest["parity_kdjax_max_abs"])
        files = [FP32_FILE]
        if quantize == "int8":
            log.info("onnx: int8 dynamic quantization ...")
            int8 = quantize_int8(fp32, stage.dir / INT8_FILE)
            manifest["int8"] = INT8_FILE
            manifest["int8_mb"] = round(int8.stat().st_size / 1e6, 3)
            files.append(INT8_FILE)
            if check:
                q = run_session(session(int8), example)
                manifest["int8_max_abs"] = max_abs_diff(q, run_session(session(fp32), example))
        manifest["files"] = files
        manifest["ranks"] = {"embedding": cfg.embedding_rank, "attention": cfg.attention_rank,
                             "ffn": cfg.ffn_rank}
        if model_card:
            manifest["model_card"] = dict(model_card)
        manifest["seconds"] = round(time.perf_counter() - t0, 1)
        (stage.dir / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False,
                                                     default=str) + "\n")
        # a stale int8 file of an earlier export (listed in its manifest) is deleted here
        commit_export(stage, overwrite, {"format": "onnx", "weights": weights})
    log.info("onnx: wrote %s (%.1f MB%s) in %.0f s", out / FP32_FILE, manifest["onnx_mb"],
             f", int8 {manifest['int8_mb']:.1f} MB" if quantize else "", manifest["seconds"])
    return manifest


# -- accuracy of the exported model on a task -------------------------------------------------
def _finetuned_model_dir(path: Path) -> Path:
    """The kdjax model directory of a `kdjax finetune` WORKDIR (best/), a run's model/, or
    the directory itself."""
    from kdjax.modeldir import find_model_dir, is_model_dir

    if is_model_dir(path / "best"):
        return path / "best"
    found = find_model_dir(path)
    if found is None:
        raise ConfigError(f"{path} is not a `kdjax finetune` workdir or a kdjax model directory "
                          "(no best/kdjax_model.json or kdjax_model.json)")
    return found


def _task_settings(model_dir: Path, task_name: str | None,
                   max_length: int | None) -> tuple[Any, int]:
    """(Task, max_length): the task recorded in the model dir unless `task_name` is given; its
    options and max_length from the finetune WORKDIR/config.json when there is one."""
    from kdjax.data.tasks import get_task
    from kdjax.modeldir import MODEL_FILE

    info = json.loads((model_dir / MODEL_FILE).read_text())
    name = task_name or info.get("task")
    if not name:
        raise ConfigError(f"{model_dir} records no task (not a `kdjax finetune` model); "
                          "pass --task")
    run_task: dict[str, Any] = {}
    for cfg_file in (model_dir.parent / "config.json", model_dir / "config.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            run_task = json.loads(cfg_file.read_text()).get("task") or {}
            if run_task.get("name") == name:
                break
            run_task = {}
    from kdjax.data.tasks import canonical_name

    task_cls = type(get_task(canonical_name(name)))
    options = {k: run_task[k] for k in task_cls.option_defaults if k in run_task}
    task = get_task(canonical_name(name), **options)
    length = max_length or int(run_task.get("max_length") or task.defaults.get("max_length", 128))
    return task, length


def _batches(arrays: Mapping[str, np.ndarray], batch_size: int, trim: bool):
    """Successive row slices of `arrays` (model inputs only, int64); with `trim` each batch
    is cut to its longest row (sequence-level tasks: the padding does not change the logits)."""
    n = len(arrays["input_ids"])
    for start in range(0, n, batch_size):
        batch = {k: np.asarray(arrays[k][start:start + batch_size], np.int64)
                 for k in INPUT_NAMES}
        if trim:
            length = max(1, int(batch["attention_mask"].sum(1).max()))
            batch = {k: v[:, :length] for k, v in batch.items()}
        yield batch


def _as_task_outputs(outputs: Mapping[str, np.ndarray], head: str) -> np.ndarray:
    """ONNX outputs -> the array `Task.evaluate` wants (QA: [N, L, 2])."""
    if head == "qa":
        return np.stack([outputs["start_logits"], outputs["end_logits"]], -1)
    return outputs["logits"]


def task_accuracy(
    model: str | os.PathLike,
    data_dir: str | os.PathLike,
    onnx_dir: str | os.PathLike | None = None,
    task: str | None = None,
    split: str = "test",
    limit: int | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    threads: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Task metrics of a fine-tuned model: kdjax (Flax) vs ONNX Runtime fp32 vs int8.

    Args:
      model: a `kdjax finetune` WORKDIR (its best/), or a kdjax model directory with a task head.
      data_dir: the task data (its folder or the parent, e.g. ../shared/data/ko).
      onnx_dir: an existing `kdjax export --format onnx` directory of the same model; default:
        export one to a temporary directory (fp32 + int8).
      task: the task name (default: the one recorded in the model directory).
      split: the split to score (test by default); limit: its first N examples.
      max_length: default: the fine-tuning run's task.max_length, else the task's default.
      batch_size, threads: ONNX Runtime / kdjax batch rows; ORT intra-op threads (0 = default).

    Returns {"task", "split", "examples", "metric", "kdjax", "onnx_fp32", "onnx_int8"
    (metric dicts, x100), "int8_delta" (int8 - fp32 main metric, points), "int8_agreement"
    (fraction of rows whose prediction int8 keeps; sequence tasks), "fp32_max_abs_vs_kdjax",
    "sizes_mb", "seconds"}.
    """
    require_onnx()
    import jax
    from tqdm.auto import tqdm

    import kdjax
    from kdjax.data.tokenizer import load_tokenizer
    from kdjax.export_core import host_tree
    from kdjax.modeldir import load_model_dir

    t0 = time.perf_counter()
    model_dir = _finetuned_model_dir(Path(model).expanduser())
    task_obj, length = _task_settings(model_dir, task, max_length)
    cfg, params = load_model_dir(model_dir)
    cfg = cfg.replace(dtype="float32", param_dtype="float32", scan_layers=False, scan_unroll=1,
                      remat=False)
    if cfg.head != task_obj.head:
        raise ConfigError(f"{model_dir} has head {cfg.head!r} but task {task_obj.name!r} needs "
                          f"{task_obj.head!r}; pass the model fine-tuned for this task")
    tokenizer = load_tokenizer(model_dir)
    examples = task_obj.load(data_dir, split, limit)
    data = task_obj.featurize(examples, tokenizer, length)
    trim = task_obj.kind in ("sequence", "regression")
    n_rows = data.num_rows
    n_batches = math.ceil(n_rows / batch_size)

    # kdjax: one jitted shape [batch_size, length]; the last batch is padded with empty rows.
    net = kdjax.build_model(cfg)
    forward = jax.jit(lambda p, ids, mask, types: net.apply(
        {"params": p}, ids, attention_mask=mask, token_type_ids=types, deterministic=True))
    params = jax.device_put(host_tree(params))
    ref_chunks: list[dict[str, np.ndarray]] = []
    for batch in tqdm(_batches(data.arrays, batch_size, False), total=n_batches,
                      desc="kdjax", disable=not progress, leave=False):
        rows = len(batch["input_ids"])
        full = {k: np.pad(v, ((0, batch_size - rows), (0, 0))) for k, v in batch.items()}
        out = kdjax_outputs(cfg, params, **full, forward=forward)
        ref_chunks.append({k: v[:rows] for k, v in out.items()})
    ref = {k: np.concatenate([c[k] for c in ref_chunks]) for k in ref_chunks[0]}

    with tempfile.TemporaryDirectory(prefix="kdjax-onnx-acc-") as tmp:
        if onnx_dir is None:
            log.info("accuracy: exporting %s to ONNX (fp32 + int8)", model_dir)
            to_onnx(cfg, params, tmp, quantize="int8", check=False)
            onnx_root = Path(tmp)
        else:
            onnx_root = Path(onnx_dir).expanduser()
            if not (onnx_root / FP32_FILE).is_file():
                raise ConfigError(f"{onnx_root} has no {FP32_FILE}; give the --out directory of "
                                  "`kdjax export --format onnx`")
            if not (onnx_root / INT8_FILE).is_file():
                quantize_int8(onnx_root / FP32_FILE, Path(tmp) / INT8_FILE)
        files = {"fp32": onnx_root / FP32_FILE,
                 "int8": onnx_root / INT8_FILE if (onnx_root / INT8_FILE).is_file()
                 else Path(tmp) / INT8_FILE}
        outputs: dict[str, dict[str, np.ndarray]] = {}
        for kind, path in files.items():
            sess = session(path, threads)
            chunks = [run_session(sess, b) for b in tqdm(
                _batches(data.arrays, batch_size, trim), total=n_batches,
                desc=f"onnx {kind}", disable=not progress, leave=False)]
            outputs[kind] = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        sizes = {k: round(p.stat().st_size / 1e6, 3) for k, p in files.items()}

    def score(out: Mapping[str, np.ndarray]) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in
                task_obj.evaluate(_as_task_outputs(out, cfg.head), data).items()}

    result: dict[str, Any] = {
        "task": task_obj.name, "split": split, "examples": len(examples), "rows": n_rows,
        "max_length": length, "model_dir": str(model_dir), "metric": task_obj.main_metric,
        "kdjax": score(ref), "onnx_fp32": score(outputs["fp32"]),
        "onnx_int8": score(outputs["int8"]),
    }
    metric = task_obj.main_metric
    result["int8_delta"] = round(result["onnx_int8"][metric] - result["onnx_fp32"][metric], 4)
    if trim:  # same shapes as the reference only where padding was not trimmed away
        result["fp32_max_abs_vs_kdjax"] = max_abs_diff(ref, outputs["fp32"])
        if task_obj.kind == "sequence":
            a = np.argmax(outputs["fp32"]["logits"], -1)
            b = np.argmax(outputs["int8"]["logits"], -1)
            result["int8_agreement"] = round(float(np.mean(a == b)), 5)
    result["sizes_mb"] = sizes
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kdjax.deploy accuracy --model WORKDIR --data_dir DIR [...]``: one JSON line."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m kdjax.deploy",
        description="Checks of kdjax's ONNX exports (docs/deploy.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("accuracy", help="task metrics: kdjax vs ONNX Runtime fp32 vs int8")
    p.add_argument("--model", required=True, help="`kdjax finetune` WORKDIR or model dir")
    p.add_argument("--data_dir", required=True, help="task data, e.g. ../shared/data/ko/nsmc")
    p.add_argument("--onnx", default=None, help="existing `kdjax export --format onnx` dir "
                   "(default: export to a temporary directory)")
    p.add_argument("--task", default=None, help="default: the task the model was fine-tuned on")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="first N examples only")
    p.add_argument("--max_length", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = default)")
    p.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("jax", "absl", "orbax", "etils", "datasets", "httpx"):  # as kdjax.cli does
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = task_accuracy(args.model, args.data_dir, onnx_dir=args.onnx, task=args.task,
                               split=args.split, limit=args.limit, max_length=args.max_length,
                               batch_size=args.batch_size, threads=args.threads,
                               progress=not args.no_progress and sys.stderr.isatty())
    except KdjaxError as e:
        print(f"kdjax: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 0


__all__ = [
    "FP32_FILE",
    "INPUT_NAMES",
    "INT8_FILE",
    "MANIFEST",
    "ONNX_WEIGHTS",
    "example_batch",
    "kdjax_outputs",
    "output_names",
    "quantize_int8",
    "require_onnx",
    "resolve_weights",
    "run_session",
    "session",
    "task_accuracy",
    "to_onnx",
]

if __name__ == "__main__":
    sys.exit(main())

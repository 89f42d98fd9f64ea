"""Low-rank factorization of trained weights, merging factors back, and student initialisation.

Everything here is host-side bookkeeping on the *unboxed* parameter dict that
`kdjax.models.model.init_params` produces (flax `kernel` is [in, out]); no model is run.

* `svd_factors` / `merge_factors`: truncated SVD of one [in, out] matrix (or a stack
  [n, in, out]) into balanced factors `down` [in, r] and `up` [r, out], and their product.
* `factorize_params`: a dense model's parameters -> the factorized parameters of a config with
  `ffn_rank` / `attention_rank` / `embedding_rank` set (the SVD initialisation of LF-V1..V3).
* `merge_params`: every factor pair multiplied out -> the equivalent dense model (ranks 0); the
  outputs are unchanged. HF export in "electra" format goes through this.
* `select_layers` / `every_kth` / `init_student_from_teacher`: DistilBERT-style initialisation
  of a shallower student from a subset of the teacher's layers, then SVD to the student's ranks.

Both layer layouts are supported everywhere: the loop layout (`encoder/layer_{i}/...`) and the
scan layout (`cfg.scan_layers=True`: `encoder/layers/...` with a leading [num_layers] axis on
every leaf). Internally the layers are handled in the loop layout (`unstack_layers`) and put
back into the layout the output config asks for (`stack_layers`), so a conversion may also
change the layout.

Arrays keep their kind: jax arrays in give jax arrays out, numpy arrays give numpy arrays. The
SVD and the factor products are computed in float64 numpy and cast back to the parameter dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.errors import ConfigError, ShapeError
from kdjax.models.config import EncoderConfig
from kdjax.models.model import build_model

ArrayLike = Any  # jax.Array | np.ndarray
Params = dict[str, Any]

__all__ = [
    "every_kth",
    "factorize_params",
    "init_student_from_teacher",
    "merge_factors",
    "merge_params",
    "select_layers",
    "stack_layers",
    "svd_factors",
    "unstack_layers",
]

ATTENTION_PROJECTIONS = ("query", "key", "value", "output")  # ranked by attention_rank
FFN_PROJECTIONS = ("intermediate", "output")  # ranked by ffn_rank
HEAD_KEYS = ("discriminator_head", "generator_head", "generator_bias", "classifier", "qa_head")


# -- matrices -----------------------------------------------------------------------------------
def _is_jax(x: Any) -> bool:
    return isinstance(x, jax.Array)


def _like(ref: ArrayLike, x: np.ndarray, dtype: Any = None) -> ArrayLike:
    """`x` cast to `dtype` (default: ref's dtype), as a jax array when `ref` is one."""
    x = np.asarray(x).astype(ref.dtype if dtype is None else dtype)
    return jnp.asarray(x) if _is_jax(ref) else x


def _float64(x: ArrayLike) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def _check_rank(rank: Any, shape: tuple[int, ...]) -> None:
    """ConfigError unless `rank` is an int in [1, min(in, out)] for a [..., in, out] matrix."""
    limit = min(shape[-2:])
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or not 1 <= rank <= limit:
        raise ConfigError(
            f"rank={rank!r} is not in [1, {limit}] for a matrix of shape {shape} "
            f"(the rank can be at most min(in, out))"
        )


def svd_factors(w: ArrayLike, rank: int) -> tuple[ArrayLike, ArrayLike]:
    """Truncated SVD of `w` [..., in, out] into balanced factors with `down @ up ~= w`.

    With `w = U diag(s) V^T`, returns `down = U_r diag(sqrt(s_r))` [..., in, r] and
    `up = diag(sqrt(s_r)) V_r^T` [..., r, out]: the best rank-r approximation (Eckart-Young),
    with the singular values split evenly so both factors have the same scale (which keeps the
    gradients of the two factors balanced when training). Leading axes are batch axes (the
    stacked [num_layers, in, out] kernels of the scan layout). Computed in float64 numpy and
    cast back to `w`'s dtype; a jax array in gives jax arrays out.

    Raises `ShapeError` for fewer than 2 dimensions, `ConfigError` for a rank outside
    [1, min(in, out)].
    """
    shape = tuple(np.shape(w))
    if len(shape) < 2:
        raise ShapeError(f"svd_factors needs a [..., in, out] matrix, got shape {shape}")
    _check_rank(rank, shape)
    u, s, vt = np.linalg.svd(_float64(w), full_matrices=False)
    root = np.sqrt(s[..., :rank])
    down = u[..., :, :rank] * root[..., None, :]
    up = root[..., :, None] * vt[..., :rank, :]
    return _like(w, down), _like(w, up)


def whitened_svd_factors(w: ArrayLike, gram: np.ndarray, rank: int,
                         damp: float = 1e-2) -> tuple[ArrayLike, ArrayLike]:
    """Activation-aware truncated SVD of `w` [in, out]: the rank-r `down @ up` that minimises
    E||x (w - down @ up)||^2 over inputs x with second moment `gram` = E[x^T x] [in, in]
    (SVD-LLM's whitening), instead of ||w - down @ up||.

    With gram + damp * mean(diag) * I = L L^T (Cholesky), M = L^T w = U S V^T:
    down = L^-T U_r sqrt(S_r) [in, r], up = sqrt(S_r) V_r^T [r, out]. At full rank it is `w`
    exactly; the damping keeps directions the data never used from blowing up. float64, cast
    back to `w`'s dtype. Raises ShapeError when `gram` is not [in, in].
    """
    shape = tuple(np.shape(w))
    if len(shape) != 2 or tuple(np.shape(gram)) != (shape[0], shape[0]):
        raise ShapeError(f"whitened_svd_factors needs w [in, out] and gram [in, in], got w "
                         f"{shape} and gram {tuple(np.shape(gram))}")
    _check_rank(rank, shape)
    g = np.asarray(gram, np.float64)
    g = (g + g.T) / 2 + damp * max(float(np.mean(np.diag(g))), 1e-12) * np.eye(shape[0])
    chol = np.linalg.cholesky(g)  # lower: g = L L^T
    u, sv, vt = np.linalg.svd(chol.T @ _float64(w), full_matrices=False)
    root = np.sqrt(sv[:rank])
    down = np.linalg.solve(chol.T, u[:, :rank] * root[None, :])
    up = root[:, None] * vt[:rank, :]
    return _like(w, down), _like(w, up)


def merge_factors(down: ArrayLike, up: ArrayLike) -> ArrayLike:
    """`down` [..., in, r] @ `up` [..., r, out] -> [..., in, out], in float64, then cast.

    The result has the promoted dtype of the two factors and is a jax array if `down` is.
    """
    d_shape, u_shape = tuple(np.shape(down)), tuple(np.shape(up))
    if (
        len(d_shape) < 2
        or len(d_shape) != len(u_shape)
        or d_shape[-1] != u_shape[-2]
        or d_shape[:-2] != u_shape[:-2]
    ):
        raise ShapeError(
            f"merge_factors needs down [..., in, r] and up [..., r, out] with the same r and "
            f"leading axes, got down {d_shape} and up {u_shape}"
        )
    dtype = np.result_type(np.asarray(down).dtype, np.asarray(up).dtype)
    return _like(down, np.matmul(_float64(down), _float64(up)), dtype)


# -- trees --------------------------------------------------------------------------------------
def _plain(tree: Any) -> Any:
    """A copy of the nested mappings as plain dicts (the leaves are shared, not copied)."""
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def _child(tree: Mapping, key: str, where: str) -> Any:
    if not isinstance(tree, Mapping) or key not in tree:
        have = ", ".join(sorted(tree)) if isinstance(tree, Mapping) else type(tree).__name__
        raise ConfigError(
            f"params have no '{where}{key}' (found: {have}); pass the config the params were "
            f"built with"
        )
    return tree[key]


def _cast(tree: Any, dtype: Any) -> Any:
    """Every leaf cast to `dtype` (a no-op for leaves that already have it)."""

    def cast(x: ArrayLike) -> ArrayLike:
        return x if x.dtype == dtype else x.astype(dtype)

    return jax.tree_util.tree_map(cast, tree)


def unstack_layers(params: Mapping, cfg: EncoderConfig) -> Params:
    """`params` of `cfg`'s layout -> the loop layout `encoder/layer_{i}` (plain dicts).

    With `cfg.scan_layers` the stacked `encoder/layers/<leaf [num_layers, ...]>` is split into
    `encoder/layer_0 ... layer_{n-1}`; otherwise the tree is returned as a (shallow) copy. The
    inverse is `stack_layers(..., cfg)`.
    """
    params = _plain(params)
    encoder = _child(params, "encoder", "")
    if not cfg.scan_layers:
        if "layers" in encoder:
            raise ConfigError(
                "params are in the scan layout (encoder/layers) but model.scan_layers=False; "
                "pass the config the params were built with"
            )
        return params
    stacked = _child(encoder, "layers", "encoder/")
    for path, leaf in jax.tree_util.tree_leaves_with_path(stacked):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != cfg.num_layers:
            raise ConfigError(
                f"encoder/layers{jax.tree_util.keystr(path)} has shape {np.shape(leaf)}, "
                f"expected a leading axis of model.num_layers={cfg.num_layers}"
            )
    layers = {
        f"layer_{i}": jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
        for i in range(cfg.num_layers)
    }
    rest = {k: v for k, v in encoder.items() if k != "layers"}
    return {**params, "encoder": {**rest, **layers}}


def stack_layers(params: Mapping, cfg: EncoderConfig) -> Params:
    """Loop-layout `params` (`encoder/layer_{i}`) -> `cfg`'s layout (plain dicts).

    With `cfg.scan_layers` the `cfg.num_layers` layers are stacked into `encoder/layers` with a
    leading [num_layers] axis on every leaf; otherwise the tree is returned as a copy.
    """
    params = _plain(params)
    encoder = _child(params, "encoder", "")
    if "layers" in encoder:
        raise ConfigError(
            "stack_layers needs loop-layout params (encoder/layer_i), got encoder/layers"
        )
    names = [f"layer_{i}" for i in range(cfg.num_layers)]
    found = sorted((k for k in encoder if k.startswith("layer_")), key=lambda k: int(k[6:]))
    if found != names:
        raise ConfigError(
            f"params have encoder layers {found or 'none'} but model.num_layers={cfg.num_layers}"
        )
    if not cfg.scan_layers:
        return params

    def stack(*xs: ArrayLike) -> ArrayLike:
        return jnp.stack(xs) if _is_jax(xs[0]) else np.stack(xs)

    layers = jax.tree_util.tree_map(stack, *(encoder[n] for n in names))
    rest = {k: v for k, v in encoder.items() if k not in names}
    return {**params, "encoder": {**rest, "layers": layers}}


# Fields that change no parameter shape: normalised away so configs share one traced shape set.
_SHAPE_NEUTRAL = dict(
    num_layers=1, scan_layers=False, remat=False, hidden_dropout=0.0, attention_dropout=0.0,
    classifier_dropout=-1.0, hidden_act="gelu", initializer_range=0.02, layer_norm_eps=1e-12,
    pad_token_id=0, dtype="float32", param_dtype="float32", attention_impl="auto",
)


@functools.lru_cache(maxsize=64)
def _one_layer_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """'a/b/c' -> shape of every parameter of `cfg` (a normalised one-layer loop config).

    Like `abstract_params(cfg)`, but with inputs no longer than max_position_embeddings
    (abstract_params always traces length 8, which fails for max_position_embeddings < 8).
    """
    ids = jax.ShapeDtypeStruct((1, min(8, cfg.max_position_embeddings)), jnp.int32)
    variables = jax.eval_shape(build_model(cfg).init, jax.random.key(0), ids)
    return _shapes(nn.meta.unbox(variables["params"]))


def _expected_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """'a/b/c' -> shape of every parameter `init_params(cfg)` creates.

    Traces the model once per shape-relevant config with one layer (cheap) and replicates that
    layer: `layer_{i}` in the loop layout, a leading [num_layers] axis in the scan layout.
    """
    prefix = "encoder/layer_0/"
    out: dict[str, tuple[int, ...]] = {}
    for path, shape in _one_layer_shapes(cfg.replace(**_SHAPE_NEUTRAL)).items():
        if not path.startswith(prefix):
            out[path] = shape
        elif cfg.scan_layers:
            out[f"encoder/layers/{path[len(prefix):]}"] = (cfg.num_layers, *shape)
        else:
            for i in range(cfg.num_layers):
                out[f"encoder/layer_{i}/{path[len(prefix):]}"] = shape
    return out


def _shapes(params: Mapping) -> dict[str, tuple[int, ...]]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(x))
        for path, x in jax.tree_util.tree_leaves_with_path(params)
    }


def _check_params(params: Mapping, cfg: EncoderConfig, what: str) -> None:
    """Raise `ConfigError` unless `params` has exactly the paths and shapes `cfg` gives."""
    want = _expected_shapes(cfg)
    have = _shapes(params)
    problems = [f"missing {k}" for k in want if k not in have]
    problems += [f"unexpected {k}" for k in have if k not in want]
    problems += [
        f"{k} has shape {have[k]} but the config gives {want[k]}"
        for k in want
        if k in have and have[k] != want[k]
    ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        ranks = (
            f"scan_layers={cfg.scan_layers}, num_layers={cfg.num_layers}, "
            f"embedding_rank={cfg.embedding_rank}, attention_rank={cfg.attention_rank}, "
            f"ffn_rank={cfg.ffn_rank}, head={cfg.head!r}"
        )
        raise ConfigError(
            f"{what} do not match their config ({ranks}): {'; '.join(problems[:3])}{more}"
        )


# -- configs ------------------------------------------------------------------------------------
_WIDTHS = (
    ("vocab_size", lambda c: c.vocab_size),
    ("hidden_size", lambda c: c.hidden_size),
    ("intermediate_size", lambda c: c.intermediate_size),
    ("embedding_size", lambda c: c.emb_size),  # effective E (0 means hidden_size)
    ("num_heads", lambda c: c.num_heads),
    ("max_position_embeddings", lambda c: c.max_position_embeddings),
    ("type_vocab_size", lambda c: c.type_vocab_size),
)


def _width_diffs(src: EncoderConfig, dst: EncoderConfig) -> list[tuple[str, Any, Any]]:
    return [(k, get(src), get(dst)) for k, get in _WIDTHS if get(src) != get(dst)]


def _head_diffs(src: EncoderConfig, dst: EncoderConfig) -> list[tuple[str, Any, Any]]:
    """Differences that change the head's parameters; a target head 'none' drops the head."""
    if dst.head == "none":
        return []
    if src.head != dst.head:
        return [("head", src.head, dst.head)]
    diffs = []
    if dst.head in ("classification", "token_classification") and src.num_labels != dst.num_labels:
        diffs.append(("num_labels", src.num_labels, dst.num_labels))
    if dst.head == "classification" and src.family != dst.family:
        diffs.append(("family", src.family, dst.family))
    return diffs


def _raise_diffs(
    diffs: list[tuple[str, Any, Any]], src_name: str, dst_name: str, hint: str
) -> None:
    if diffs:
        parts = ", ".join(f"model.{k} is {a!r} in the {src_name} but {b!r} in the {dst_name}"
                          for k, a, b in diffs)
        raise ConfigError(f"{parts}; {hint}")


def _dense_config(cfg: EncoderConfig) -> EncoderConfig:
    return cfg.replace(embedding_rank=0, attention_rank=0, ffn_rank=0)


# -- conversion ---------------------------------------------------------------------------------
def _projection(sub: Mapping, src_rank: int, dst_rank: int, where: str,
                grams: Mapping[str, np.ndarray] | None = None) -> Params:
    """A dense `{kernel, bias}` or low-rank `{down: {kernel}, up: {kernel, bias}}` projection
    of rank `src_rank` re-expressed at `dst_rank` (0 = dense): merge, then truncated SVD
    (whitened by the input Gram matrix `grams[where]` when there is one)."""
    if src_rank == dst_rank:
        return _plain(sub)
    if src_rank:
        down = _child(_child(sub, "down", where), "kernel", where + "down/")
        up = _child(sub, "up", where)
        kernel = merge_factors(down, _child(up, "kernel", where + "up/"))
        bias = _child(up, "bias", where + "up/")
    else:
        kernel, bias = _child(sub, "kernel", where), _child(sub, "bias", where)
    if not dst_rank:
        return {"kernel": kernel, "bias": bias}
    gram = (grams or {}).get(where)
    down, up = svd_factors(kernel, dst_rank) if gram is None else \
        whitened_svd_factors(kernel, gram, dst_rank)
    return {"down": {"kernel": down}, "up": {"kernel": up, "bias": bias}}


def _word_embeddings(sub: Mapping, src_rank: int, dst_rank: int) -> Params:
    """`{embedding [V, E]}` or `{embedding [V, r], projection [r, E]}` at another rank."""
    where = "embeddings/word_embeddings/"
    if src_rank == dst_rank:
        return _plain(sub)
    table = _child(sub, "embedding", where)
    if src_rank:
        table = merge_factors(table, _child(sub, "projection", where))
    if not dst_rank:
        return {"embedding": table}
    down, up = svd_factors(table, dst_rank)
    return {"embedding": down, "projection": up}


def _layer(layer: Mapping, src: EncoderConfig, dst: EncoderConfig, where: str,
           grams: Mapping[str, np.ndarray] | None = None) -> Params:
    out = _plain(layer)
    attention = _child(layer, "attention", where)
    out["attention"] = {
        **_plain(attention),
        **{
            name: _projection(
                _child(attention, name, where + "attention/"),
                src.attention_rank,
                dst.attention_rank,
                f"{where}attention/{name}/",
                grams,
            )
            for name in ATTENTION_PROJECTIONS
        },
    }
    for name in FFN_PROJECTIONS:
        out[name] = _projection(
            _child(layer, name, where), src.ffn_rank, dst.ffn_rank, f"{where}{name}/", grams
        )
    return out


def _convert(params: Mapping, src: EncoderConfig, dst: EncoderConfig,
             grams: Mapping[str, np.ndarray] | None = None) -> Params:
    """`params` of `src` -> parameters of `dst` (same widths, layers and head; any ranks and
    layouts): factors are merged and/or re-factorized by truncated SVD, the rest is copied and
    cast to `dst.param_dtype`. The result is checked against `init_params(dst)`'s shapes."""
    _check_params(params, src, "params")
    loop = unstack_layers(params, src)
    out: Params = {}
    for key, value in loop.items():
        if key == "embeddings":
            emb = _plain(value)
            emb["word_embeddings"] = _word_embeddings(
                _child(value, "word_embeddings", "embeddings/"),
                src.embedding_rank,
                dst.embedding_rank,
            )
            out[key] = emb
        elif key == "encoder":
            out[key] = {
                name: _layer(layer, src, dst, f"encoder/{name}/", grams)
                for name, layer in value.items()
            }
        elif key in HEAD_KEYS and dst.head == "none":
            continue
        else:
            out[key] = _plain(value)
    out = _cast(stack_layers(out, dst), dst.weight_dtype)
    _check_params(out, dst, "converted params")
    return out


# -- public conversions -------------------------------------------------------------------------
def factorize_params(
    dense_params: Mapping, dense_cfg: EncoderConfig, target_cfg: EncoderConfig
) -> Params:
    """SVD-initialised parameters of the factorized `target_cfg` from a dense model's params.

    Every matrix whose rank `target_cfg` sets is replaced by its balanced truncated SVD
    (`svd_factors`): FFN `intermediate` [H, F] / `output` [F, H] for `ffn_rank`, attention
    `query/key/value/output` [H, H] for `attention_rank` (biases move onto `up`), the word
    embedding [V, E] -> `embedding` [V, r] + `projection` [r, E] for `embedding_rank`.
    Everything else (position/type embeddings, LayerNorms, `embeddings_project`, heads) is
    copied. The result has exactly the tree, shapes and `param_dtype` of
    `init_params(target_cfg)`; `target_cfg` may use the other layer layout (`scan_layers`).

    `dense_cfg` may itself be factorized: its factors are merged first, and projections whose
    rank is the same in both configs are copied unchanged.

    Raises `ConfigError` (one line, naming the keys and both values) when the widths
    (vocab_size, hidden_size, intermediate_size, embedding size, num_heads, positions, token
    types), num_layers or the head differ, or when `dense_params` do not match `dense_cfg`.
    """
    dense_cfg, target_cfg = EncoderConfig.from_any(dense_cfg), EncoderConfig.from_any(target_cfg)
    diffs = _width_diffs(dense_cfg, target_cfg)
    if dense_cfg.num_layers != target_cfg.num_layers:
        diffs.append(("num_layers", dense_cfg.num_layers, target_cfg.num_layers))
    _raise_diffs(
        diffs + _head_diffs(dense_cfg, target_cfg),
        "dense config",
        "target config",
        "factorize_params keeps every width, the layers and the head and only changes ranks "
        "(use select_layers for fewer layers)",
    )
    return _convert(dense_params, dense_cfg, target_cfg)


def merge_params(params: Mapping, cfg: EncoderConfig) -> tuple[EncoderConfig, Params]:
    """Multiply out every factor pair: -> (`cfg` with all ranks 0, the equal dense params).

    Each low-rank projection `{down [in, r], up [r, out] + bias}` becomes `{kernel = down @ up
    [in, out], bias}`; a low-rank word embedding `{embedding [V, r], projection [r, E]}` becomes
    `{embedding [V, E]}`. The products are computed in float64, so the dense model's outputs
    equal the factorized model's up to the rounding of the merged weights to `param_dtype`.
    The layer layout is kept. A dense `cfg` gives back a copy of `params`.
    """
    cfg = EncoderConfig.from_any(cfg)
    dense_cfg = _dense_config(cfg)
    return dense_cfg, _convert(params, cfg, dense_cfg)


# -- students from teachers ---------------------------------------------------------------------
def every_kth(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """1-based teacher layers, evenly spaced and ending with the last one, one per student layer.

    Student layer i (0-based) takes teacher layer floor((i + 1) * T / S): every k-th layer when
    S divides T (`every_kth(12, 6) == [2, 4, 6, 8, 10, 12]`, `every_kth(12, 4) == [3, 6, 9,
    12]`), the nearest spread otherwise (`every_kth(12, 5) == [2, 4, 7, 9, 12]`).
    """
    for key, value in (("num_teacher_layers", num_teacher_layers),
                       ("num_student_layers", num_student_layers)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if num_student_layers > num_teacher_layers:
        raise ConfigError(
            f"the student has more layers ({num_student_layers}) than the teacher "
            f"({num_teacher_layers}); every_kth can only pick a subset of the teacher's layers"
        )
    return [(i + 1) * num_teacher_layers // num_student_layers for i in range(num_student_layers)]


def _check_layers(layers: Sequence[int], num_teacher_layers: int) -> list[int]:
    if isinstance(layers, np.ndarray) and layers.ndim == 1:
        layers = layers.tolist()
    if isinstance(layers, str | bytes) or not isinstance(layers, Sequence) or not layers:
        raise ConfigError(
            f"layers must be a non-empty list of 1-based teacher layer numbers, got {layers!r}"
        )
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
            raise ConfigError(f"layers must hold integers, got {layer!r} in {list(layers)!r}")
        if not 1 <= layer <= num_teacher_layers:
            raise ConfigError(
                f"layer {layer} in layers={list(layers)!r} is outside 1..{num_teacher_layers} "
                f"(teacher layers are numbered from 1)"
            )
        out.append(int(layer))
    return out


def select_layers(
    teacher_params: Mapping,
    teacher_cfg: EncoderConfig,
    layers: Sequence[int],
    student_cfg: EncoderConfig | None = None,
    grams: Mapping[str, np.ndarray] | None = None,
) -> tuple[EncoderConfig, Params]:
    """DistilBERT-style student: the teacher's layers `layers`, embeddings and head.

    Args:
      teacher_params: parameters of `teacher_cfg` (either layer layout).
      teacher_cfg: the teacher's config.
      layers: 1-based teacher layer numbers, one per student layer, in student order, e.g.
        `every_kth(12, 6) == [2, 4, ..., 12]` or DistilBERT's `[1, 3, 5, 8, 10, 12]`.
      student_cfg: the student's config; default `teacher_cfg` with `num_layers=len(layers)`.
        Its num_layers must equal `len(layers)`; its widths and head must be the teacher's
        (a head 'none' drops the head). Its layout may differ, and so may its ranks: the copied
        weights are then merged / SVD-factorized as in `factorize_params`.
      grams: the teacher's input Gram matrices (`kdjax.activation_stats.input_grams`): the
        SVD is then whitened by them (activation-aware, `whitened_svd_factors`).
    Returns:
      (student_cfg, student_params), the params shaped exactly like `init_params(student_cfg)`.
    """
    teacher_cfg = EncoderConfig.from_any(teacher_cfg)
    picked = _check_layers(layers, teacher_cfg.num_layers)
    if student_cfg is None:
        student_cfg = teacher_cfg.replace(num_layers=len(picked))
    student_cfg = EncoderConfig.from_any(student_cfg)
    if student_cfg.num_layers != len(picked):
        raise ConfigError(
            f"model.num_layers={student_cfg.num_layers} in the student config but "
            f"{len(picked)} layers were selected ({picked}); they must be equal"
        )
    _raise_diffs(
        _width_diffs(teacher_cfg, student_cfg) + _head_diffs(teacher_cfg, student_cfg),
        "teacher",
        "student",
        "copying teacher layers needs equal widths and the same head",
    )
    _check_params(teacher_params, teacher_cfg, "teacher params")
    loop = unstack_layers(teacher_params, teacher_cfg)
    encoder = loop["encoder"]
    loop["encoder"] = {
        **{k: v for k, v in encoder.items() if not k.startswith("layer_")},
        **{f"layer_{i}": _plain(encoder[f"layer_{t - 1}"]) for i, t in enumerate(picked)},
    }
    mid_cfg = teacher_cfg.replace(num_layers=len(picked), scan_layers=False)
    if grams:
        grams = select_grams(grams, picked)
    return student_cfg, _convert(loop, mid_cfg, student_cfg, grams)


def select_grams(grams: Mapping[str, np.ndarray], layers: list[int]) -> dict[str, np.ndarray]:
    """Teacher-layer grams renamed for a student made of teacher `layers` (1-based, in student
    order): student layer i gets teacher layer layers[i]'s statistics."""
    out = {}
    for i, t in enumerate(layers):
        prefix = f"encoder/layer_{t - 1}/"
        for key, value in grams.items():
            if key.startswith(prefix):
                out[f"encoder/layer_{i}/" + key[len(prefix):]] = value
    return out


def init_student_from_teacher(
    teacher_params: Mapping,
    teacher_cfg: EncoderConfig,
    student_cfg: EncoderConfig,
    layers: Sequence[int] | None = None,
    grams: Mapping[str, np.ndarray] | None = None,
) -> Params:
    """Student params from a teacher: pick layers (default `every_kth`), then SVD to its ranks
    (whitened by the teacher's input `grams` when given: `select_layers`).

    `student_cfg` must have the teacher's widths (hidden, FFN, embedding, vocab, heads) and
    head; it may have fewer layers, low ranks and either layout. Returns params shaped exactly
    like `init_params(student_cfg)`. A narrower student cannot be SVD-initialised: that raises
    `ConfigError` (start it from random init and rely on distillation instead).
    """
    teacher_cfg, student_cfg = (EncoderConfig.from_any(teacher_cfg),
                                EncoderConfig.from_any(student_cfg))
    _raise_diffs(
        _width_diffs(teacher_cfg, student_cfg) + _head_diffs(teacher_cfg, student_cfg),
        "teacher",
        "student",
        "SVD initialisation from the teacher needs equal widths and the same head; for a "
        "narrower student use a random init and distillation alone",
    )
    if layers is None:
        layers = every_kth(teacher_cfg.num_layers, student_cfg.num_layers)
    return select_layers(teacher_params, teacher_cfg, layers, student_cfg, grams)[1]

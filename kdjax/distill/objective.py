"""A configurable distillation objective: a weighted sum of loss terms over mapped features.

Config (`config.objective`):
```
temperature: 1.0                      # default T for logit terms
terms:
  NAME:                               # any name; it is the metric name in metrics.jsonl
    loss: hidden_mse                  # a name in kdjax.distill.losses.LOSSES
    feature: hidden                   # logits | mlm_logits | labels | hidden | embeddings |
                                      # attention | attention_scores | q | k | v
    weight: 1.0
    mapping: uniform                  # layer map for per-layer features (kdjax.distill.mapping)
    pairs: ()                         # for mapping=explicit: ((s, t), ...)
    include_embeddings: None          # add the (0, 0) pair (None = strategy default)
    projection: False                 # learned student->teacher Dense (TinyBERT fit_dense)
    options: {}                       # extra loss kwargs (temperature, num_relation_heads, ...)
    schedule: {kind: constant}        # weight schedule: constant | linear | cosine | piecewise
```
Per-layer terms average over their mapped layer pairs, so a weight means the same for 3 or
12 mapped layers. The objective asks the models only for the outputs its terms read
(`model_kwargs`), and checks every term against both model configs before any compute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kdjax.distill import losses as L
from kdjax.distill.mapping import layer_map
from kdjax.errors import ConfigError
from kdjax.models.config import EncoderConfig
from kdjax.models.dense_dot import dense_matmul
from kdjax.models.layers import partitioned_normal, partitioned_zeros
from kdjax.models.model import EncoderOutput

Array = jax.Array

# feature -> (EncoderOutput field, kind). "layer" features are tuples indexed by mapping.
FEATURES: dict[str, tuple[str, str]] = {
    "logits": ("logits", "head"),
    "mlm_logits": ("logits", "mlm"),
    "labels": ("logits", "labels"),
    "hidden": ("hidden_states", "layer"),
    "embeddings": ("hidden_states", "layer"),
    "attention": ("attentions", "attn"),
    "attention_scores": ("attention_scores", "attn"),
    "q": ("queries", "attn"),
    "k": ("keys", "attn"),
    "v": ("values", "attn"),
}

# Which losses consume which feature kinds, and how they are called.
_LOGIT_LOSSES = {"kd_loss", "binary_kd_loss", "mse_logits_loss"}
_PAIR_LOSSES = {
    "hidden_mse", "cosine_loss", "wr_distance", "wr_angle", "nst_mmd", "sentence_relation_kl",
    "sentence_anchor_kl", "pooled_mse", "attention_score_mse", "attention_kl",
    "value_relation_kl", "qkv_relation_kl",
}
_STACK_LOSSES = {"ltr_distance", "ltr_angle"}
_EQUAL_HEADS = {"attention_score_mse", "attention_kl", "value_relation_kl"}
_EQUAL_WIDTH = {"hidden_mse", "cosine_loss", "pooled_mse", "sentence_anchor_kl"}
_TEMPERATURE_LOSSES = {"kd_loss", "binary_kd_loss"}
# The features each per-layer loss can read (others are a config error).
_HIDDEN = ("hidden", "embeddings")
_LOSS_FEATURES: dict[str, tuple[str, ...]] = {
    **{name: _HIDDEN for name in ("hidden_mse", "cosine_loss", "wr_distance", "wr_angle",
                                  "nst_mmd", "ltr_distance", "ltr_angle",
                                  "sentence_relation_kl", "sentence_anchor_kl",
                                  "pooled_mse")},
    "attention_kl": ("attention",),
    "attention_score_mse": ("attention_scores",),
    "value_relation_kl": ("v",),
    "qkv_relation_kl": ("q", "k", "v"),
}


@dataclasses.dataclass(frozen=True)
class Term:
    """One validated objective term."""

    name: str
    loss: str
    feature: str
    weight: float
    pairs: tuple[tuple[int, int], ...]
    projection: bool
    options: tuple[tuple[str, Any], ...]
    schedule: Callable[[Array], Array] | None

    def weight_at(self, step: Array) -> Array:
        if self.schedule is None:
            return jnp.asarray(self.weight, jnp.float32)
        return jnp.asarray(self.weight, jnp.float32) * self.schedule(step)


def make_schedule(spec: Mapping[str, Any] | None, key: str) -> Callable[[Array], Array] | None:
    """A multiplier schedule (optax) for a term's weight; None for constant."""
    if not spec:
        return None
    spec = dict(spec)
    kind = spec.pop("kind", "constant")
    allowed = {"constant": set(), "linear": {"start", "end", "steps", "begin"},
               "cosine": {"start", "end", "steps"}, "piecewise": {"boundaries", "values"}}
    if kind in allowed and set(spec) - allowed[kind]:
        raise ConfigError(f"{key}.schedule: unknown key(s) {sorted(set(spec) - allowed[kind])} "
                          f"for kind {kind!r}; allowed: {sorted(allowed[kind])}")
    try:
        if kind == "constant":
            return None
        if kind == "linear":
            return optax.linear_schedule(
                spec.get("start", 1.0), spec.get("end", 0.0), spec["steps"],
                spec.get("begin", 0),
            )
        if kind == "cosine":
            start, end = float(spec.get("start", 1.0)), float(spec.get("end", 0.0))
            steps = int(spec["steps"])
            # optax's alpha is a fraction of the start value; `end` here is absolute.
            return lambda step: end + (start - end) * 0.5 * (
                1 + jnp.cos(jnp.pi * jnp.minimum(step, steps) / steps)
            )
        if kind == "piecewise":
            bounds, values = list(spec["boundaries"]), list(spec["values"])
            if len(values) != len(bounds) + 1:
                raise ConfigError(f"{key}.schedule: piecewise needs len(values) = "
                                  f"len(boundaries) + 1, got {len(values)} and {len(bounds)}")
            if list(bounds) != sorted(bounds):
                raise ConfigError(f"{key}.schedule.boundaries {bounds} must be increasing")

            def piecewise(step: Array) -> Array:
                idx = jnp.searchsorted(jnp.asarray(bounds), step, side="right")
                return jnp.asarray(values, jnp.float32)[idx]

            return piecewise
    except KeyError as e:
        raise ConfigError(f"{key}.schedule ({kind}) needs the key {e.args[0]!r}") from None
    raise ConfigError(
        f"{key}.schedule.kind={kind!r} is not one of constant, linear, cosine, piecewise"
    )


def _to_dict(x: Any) -> dict[str, Any]:
    if x is None:
        return {}
    return dict(x.to_dict() if hasattr(x, "to_dict") else x)


class Objective:
    """Validated terms + the loss function. Construct once per run (host side)."""

    def __init__(self, config: Any, student: EncoderConfig, teacher: EncoderConfig):
        cfg = _to_dict(config)
        self.student, self.teacher = student, teacher
        self.temperature = float(cfg.get("temperature", 1.0))
        terms = _to_dict(cfg.get("terms"))
        if not terms:
            raise ConfigError("objective.terms is empty; add at least one loss term")
        self.terms = tuple(self._term(name, _to_dict(spec)) for name, spec in terms.items())

    # -- validation ----------------------------------------------------------------------------
    def _term(self, name: str, spec: dict[str, Any]) -> Term:
        key = f"objective.terms.{name}"
        allowed = {"loss", "feature", "weight", "mapping", "pairs", "include_embeddings",
                   "projection", "options", "schedule"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {key}; allowed: {sorted(allowed)}")
        loss = spec.get("loss")
        if loss not in L.LOSSES:
            raise ConfigError(f"{key}.loss={loss!r} is not one of {', '.join(sorted(L.LOSSES))}")
        feature = spec.get("feature", "hidden")
        if feature not in FEATURES:
            raise ConfigError(f"{key}.feature={feature!r} is not one of {', '.join(FEATURES)}")
        s, t = self.student, self.teacher
        kind = FEATURES[feature][1]
        options = _to_dict(spec.get("options"))
        if loss == "qkv_relation_kl":
            heads = options.get("num_relation_heads", "auto")
            if heads == "auto":
                heads = auto_relation_heads(s, t)
            try:
                heads = int(heads)
            except (TypeError, ValueError):
                heads = 0
            if heads < 1:
                raise ConfigError(f"{key}.options.num_relation_heads must be a positive integer "
                                  f"or 'auto', got {options.get('num_relation_heads')!r}")
            options["num_relation_heads"] = heads
            spec = {**spec, "options": options}
        try:
            weight = float(spec.get("weight", 1.0))
        except (TypeError, ValueError):
            raise ConfigError(
                f"{key}.weight must be a number, got {spec.get('weight')!r}"
            ) from None
        pairs: tuple[tuple[int, int], ...] = ()
        if kind in ("head", "mlm", "labels"):
            if spec.get("projection"):
                raise ConfigError(f"{key}.projection applies to hidden/embeddings features only "
                                  f"(got feature {feature!r})")
            self._check_logit_term(key, loss, feature)
        else:
            if loss in _LOGIT_LOSSES or loss == "hard_label_loss":
                raise ConfigError(f"{key}: {loss} works on logits; set feature=logits")
            if feature == "embeddings":
                pairs = ((0, 0),)
            else:
                include = spec.get("include_embeddings")
                pairs = tuple(tuple(p) for p in layer_map(
                    spec.get("mapping", "uniform"), s.num_layers, t.num_layers,
                    pairs=spec.get("pairs") or None, include_embeddings=include,
                ))
            if kind == "attn" and any(a == 0 or b == 0 for a, b in pairs):
                raise ConfigError(
                    f"{key}: feature {feature!r} exists per layer only (no embeddings layer, "
                    f"index 0), got pairs {list(pairs)}; set include_embeddings=False or drop "
                    "the 0 from the explicit pairs"
                )
            self._check_layer_term(key, loss, feature, spec)
        if loss in _STACK_LOSSES and len(pairs) < 2:
            raise ConfigError(f"{key}: {loss} relates >= 2 mapped layers, mapping gives {pairs}")
        if loss in _TEMPERATURE_LOSSES:
            options.setdefault("temperature", self.temperature)

        return Term(
            name=name, loss=loss, feature=feature, weight=weight,
            pairs=pairs, projection=bool(spec.get("projection", False)),
            options=tuple(sorted(options.items())),
            schedule=make_schedule(_to_dict(spec.get("schedule")), key),
        )

    def _check_logit_term(self, key: str, loss: str, feature: str) -> None:
        s, t = self.student, self.teacher
        if feature == "labels":
            if loss != "hard_label_loss":
                raise ConfigError(f"{key}: feature=labels needs loss=hard_label_loss")
            if s.head == "none":
                raise ConfigError(f"{key}: the student has no head (model.head='none')")
            return
        if loss not in _LOGIT_LOSSES:
            raise ConfigError(f"{key}: feature={feature} needs a logit loss "
                              f"({', '.join(sorted(_LOGIT_LOSSES))}), got {loss}")
        if feature == "mlm_logits":
            if s.head != "generator" or t.head != "generator":
                raise ConfigError(
                    f"{key}: mlm_logits needs MLM heads on both models (model.head='generator'),"
                    f" got student {s.head!r} and teacher {t.head!r}"
                )
            if s.vocab_size != t.vocab_size:
                raise ConfigError(f"{key}: vocab sizes differ (student {s.vocab_size}, "
                                  f"teacher {t.vocab_size}); logit KD needs one vocabulary")
            return
        if s.head == "none" or t.head == "none" or s.head != t.head:
            raise ConfigError(
                f"{key}: logit distillation needs the same head on both models, got student "
                f"{s.head!r} and teacher {t.head!r} (set model.head)"
            )
        if s.head in ("classification", "token_classification") and s.num_labels != t.num_labels:
            raise ConfigError(f"{key}: num_labels differ (student {s.num_labels}, "
                              f"teacher {t.num_labels})")
        if loss == "binary_kd_loss" and s.head != "discriminator":
            raise ConfigError(f"{key}: binary_kd_loss is for discriminator heads; use kd_loss")
        if s.head == "discriminator" and loss == "kd_loss":
            raise ConfigError(f"{key}: the discriminator has one sigmoid logit per token; use "
                              "binary_kd_loss (or mse_logits_loss), not kd_loss")
        if s.head == "generator" and s.vocab_size != t.vocab_size:
            raise ConfigError(f"{key}: vocab sizes differ (student {s.vocab_size}, teacher "
                              f"{t.vocab_size}); logit KD needs one vocabulary")

    def _check_layer_term(self, key: str, loss: str, feature: str, spec: dict[str, Any]) -> None:
        s, t = self.student, self.teacher
        wanted = _LOSS_FEATURES.get(loss)
        if wanted is not None and feature not in wanted:
            raise ConfigError(f"{key}: {loss} reads feature(s) {', '.join(wanted)}, "
                              f"not {feature!r}")
        if spec.get("projection") and feature not in ("hidden", "embeddings"):
            raise ConfigError(f"{key}.projection applies to hidden/embeddings features only "
                              f"(got feature {feature!r})")
        if loss in _EQUAL_HEADS and s.num_heads != t.num_heads:
            raise ConfigError(
                f"{key}: {loss} needs equal head counts, student has {s.num_heads} heads "
                f"([B, {s.num_heads}, L, L]) and teacher {t.num_heads} ([B, {t.num_heads}, L, L]);"
                " use the width-free qkv_relation_kl or the CKD relation losses (wr_distance)"
            )
        if loss in _EQUAL_WIDTH and s.hidden_size != t.hidden_size and not spec.get("projection"):
            raise ConfigError(
                f"{key}: {loss} compares [B, L, {s.hidden_size}] (student) with "
                f"[B, L, {t.hidden_size}] (teacher); set {key}.projection=True to learn a "
                "student->teacher projection"
            )
        if loss == "qkv_relation_kl":
            heads = int(_to_dict(spec.get("options"))["num_relation_heads"])
            for who, c in (("student", s), ("teacher", t)):
                if c.hidden_size % heads:
                    raise ConfigError(f"{key}: num_relation_heads={heads} does not divide the "
                                      f"{who} width {c.hidden_size}")

    # -- model requests ------------------------------------------------------------------------
    def model_kwargs(self, who: str) -> dict[str, bool]:
        """Static `EncoderModel.__call__` flags for 'student' or 'teacher'."""
        features = {t.feature for t in self.terms if who == "student" or t.feature != "labels"}
        return {
            "output_hidden_states": bool(features & {"hidden", "embeddings"}),
            "output_attentions": "attention" in features,
            "output_attention_scores": "attention_scores" in features,
            "output_qkv": bool(features & {"q", "k", "v"}),
            "compute_logits": bool(features & {"logits", "mlm_logits", "labels"}),
        }

    @property
    def needs_mlm_positions(self) -> bool:
        """MLM masking is needed for mlm_logits terms, and for hard labels on an MLM head."""
        return any(t.feature == "mlm_logits" or (t.feature == "labels" and
                                                  self.student.head == "generator")
                   for t in self.terms)

    @property
    def needs_teacher(self) -> bool:
        return any(t.feature != "labels" for t in self.terms)

    # -- trainable projections -----------------------------------------------------------------
    def init_projections(self, rng: Array) -> dict[str, Any]:
        """Boxed (logical-axis) params of the learned projections, {term: {kernel, bias}}."""
        out: dict[str, Any] = {}
        d_in, d_out = self.student.hidden_size, self.teacher.hidden_size
        for i, term in enumerate(t for t in self.terms if t.projection):
            dense = nn.Dense(
                d_out, param_dtype=self.student.weight_dtype,
                kernel_init=partitioned_normal(self.student.initializer_range,
                                               ("embed2", "embed")),
                bias_init=partitioned_zeros(("embed",)),
            )
            out[term.name] = dense.init(jax.random.fold_in(rng, i), jnp.zeros((1, d_in)))["params"]
        return out

    # -- the loss ------------------------------------------------------------------------------
    def __call__(
        self,
        projections: Mapping[str, Any],
        student: EncoderOutput,
        teacher: EncoderOutput | None,
        batch: Mapping[str, Array],
        step: Array,
    ) -> tuple[Array, dict[str, Array]]:
        """Weighted total loss and every term's (unweighted) value.

        Args:
          projections: the trainable projection params from `init_projections` (unboxed).
          student, teacher: model outputs computed with `model_kwargs(...)`.
          batch: at least "attention_mask" [B, L]; "labels" for hard-label terms;
            "mlm_mask" [B, P] for mlm_logits terms.
          step: the optimizer step (for weight schedules).
        Returns:
          (total, {term name: value, term name + "_weight": weight}).
        """
        mask = batch["attention_mask"]
        total = jnp.zeros((), jnp.float32)
        logged: dict[str, Array] = {}
        for term in self.terms:
            value = self._term_value(term, projections, student, teacher, batch, mask)
            weight = term.weight_at(step)
            total = total + weight * value
            logged[term.name] = value
            if term.schedule is not None:
                logged[f"{term.name}_weight"] = weight
        return total, logged

    def _term_value(self, term: Term, projections: Mapping[str, Any], s_out: EncoderOutput,
                    t_out: EncoderOutput | None, batch: Mapping[str, Array], mask: Array) -> Array:
        opts = dict(term.options)
        fn = L.LOSSES[term.loss]
        field, kind = FEATURES[term.feature]
        if kind == "labels":
            return fn(s_out.logits, batch["labels"], mask=_label_mask(s_out.logits, batch, mask),
                      **opts)
        assert t_out is not None
        if kind == "head":
            per_token = self.student.head != "classification"  # [B, L, ...] logits
            return fn(s_out.logits, t_out.logits, mask=mask if per_token else None, **opts)
        if kind == "mlm":
            return fn(s_out.logits, t_out.logits, mask=batch["mlm_mask"], **opts)
        s_all, t_all = getattr(s_out, field), getattr(t_out, field)
        offset = 1 if kind == "attn" else 0  # attention tuples have no embeddings entry
        project = self._projector(term, projections)
        s_feats = [project(s_all[i - offset]) for i, _ in term.pairs]
        t_feats = [t_all[j - offset] for _, j in term.pairs]
        if term.loss in _STACK_LOSSES:
            return fn(jnp.stack(s_feats), jnp.stack(t_feats), mask=mask, **opts)
        values = [fn(a, b, mask=mask, **opts) for a, b in zip(s_feats, t_feats)]
        return sum(values[1:], values[0]) / len(values)

    @staticmethod
    def _projector(term: Term, projections: Mapping[str, Any]) -> Callable[[Array], Array]:
        if not term.projection:
            return lambda x: x
        p = projections[term.name]
        kernel = p["kernel"].astype(jnp.float32)
        return lambda x: dense_matmul(x.astype(jnp.float32), kernel) + p["bias"]

    def describe(self) -> list[str]:
        """One human line per term (for the start summary)."""
        out = []
        for t in self.terms:
            pairs = f" pairs={list(t.pairs)}" if t.pairs else ""
            proj = " +proj" if t.projection else ""
            out.append(f"{t.name}: {t.weight} x {t.loss}({t.feature}){pairs}{proj}")
        return out


def _label_mask(logits: Array, batch: Mapping[str, Array], mask: Array) -> Array | None:
    labels = batch["labels"]
    if "label_mask" in batch:
        return batch["label_mask"]
    return mask if tuple(labels.shape) == tuple(mask.shape) else None


def auto_relation_heads(student: EncoderConfig, teacher: EncoderConfig) -> int:
    """MiniLMv2 relation heads when not configured: the largest count <= the larger head count
    that divides both widths (e.g. 12 for 768 -> 384, 8 for 768 -> 256)."""
    for r in range(max(student.num_heads, teacher.num_heads), 0, -1):
        if student.hidden_size % r == 0 and teacher.hidden_size % r == 0:
            return r
    return 1


def build_objective(config: Any, student: Any, teacher: Any) -> Objective:
    """`Objective` from an `objective` config section and the two model configs."""
    return Objective(config, EncoderConfig.from_any(student), EncoderConfig.from_any(teacher))


"""Student-to-teacher layer mappings for intermediate-layer distillation.

Every strategy returns a list of ``(student_index, teacher_index)`` pairs over *hidden-state*
indices: 0 is the embedding output, i is the output of transformer layer i (HF's
``hidden_states`` tuple). With S student and T teacher layers:

* ``uniform`` (TinyBERT): student layer i <-> teacher layer i·k, k = T/S, i = 1..S. T must be a
  multiple of S (TinyBERT's code silently floors k; we refuse instead and point at
  ``emb_skip``/``every``). ``include_embeddings=True`` adds (0, 0) as TinyBERT's embedding
  loss does.
* ``emb_skip`` (CKD "emb+skip", `matching_alignment` in github.com/GeondoPark/CKD utils.py):
  g = gcd(S, T); student layers S/g, 2·S/g, .., S are paired with teacher layers T/g,
  2·T/g, .., T, plus the embeddings (0, 0). When S divides T this is exactly i <-> i·T/S;
  otherwise only the g layer pairs that fall on common fractions of depth are used (6 -> 4:
  (2, 3), (4, 6)). ``include_embeddings=False`` gives CKD's plain "skip".
* ``last``: [(S, T)].
* ``every`` (KoMiniLM-style): every student layer i = 1..S to its proportional teacher layer
  round(i·T/S), rounding halves up (deterministic, unlike Python's banker's rounding) and
  never below 1.
* ``explicit``: a user-supplied list, validated against the layer counts.

`layer_map` dispatches by name and raises `ConfigError` for unknown names.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kdjax.errors import ConfigError

LayerPairs = list[tuple[int, int]]

__all__ = [
    "STRATEGIES",
    "LayerPairs",
    "emb_skip",
    "every",
    "explicit",
    "last",
    "layer_map",
    "uniform",
]


def _count(value: Any, key: str) -> int:
    """A positive layer count, else ConfigError naming `key`."""
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ConfigError(f"{key} must be a positive integer, got {n}")
    return n


def _counts(num_student_layers: Any, num_teacher_layers: Any) -> tuple[int, int]:
    return (
        _count(num_student_layers, "num_student_layers"),
        _count(num_teacher_layers, "num_teacher_layers"),
    )


def _with_embeddings(pairs: LayerPairs, include: bool) -> LayerPairs:
    if include and (0, 0) not in pairs:
        return [(0, 0), *pairs]
    return pairs


def uniform(
    num_student_layers: int, num_teacher_layers: int, include_embeddings: bool = False
) -> LayerPairs:
    """TinyBERT uniform mapping: student layer i <-> teacher layer i·(T/S), i = 1..S.

    Args:
      num_student_layers: S >= 1. num_teacher_layers: T, a multiple of S.
      include_embeddings: prepend (0, 0).

    Returns:
      [(i, i·T/S) for i in 1..S], e.g. 4 from 12: [(1, 3), (2, 6), (3, 9), (4, 12)].
    """
    s, t = _counts(num_student_layers, num_teacher_layers)
    if t % s:
        raise ConfigError(
            f"layer mapping 'uniform' needs num_teacher_layers ({t}) to be a multiple of "
            f"num_student_layers ({s}); use 'emb_skip' or 'every' for other ratios"
        )
    k = t // s
    return _with_embeddings([(i, i * k) for i in range(1, s + 1)], include_embeddings)


def emb_skip(
    num_student_layers: int, num_teacher_layers: int, include_embeddings: bool = True
) -> LayerPairs:
    """CKD "emb+skip": embeddings plus the layers at common fractions of depth (gcd steps).

    Follows `matching_alignment(..., "emb+skip")` in CKD's published code
    (github.com/GeondoPark/CKD, utils.py): g = gcd(S, T), student step S/g, teacher step T/g.

    Args:
      num_student_layers: S >= 1. num_teacher_layers: T >= 1.
      include_embeddings: keep the (0, 0) pair (False gives CKD's plain "skip").

    Returns:
      [(0, 0)] + [(j·S/g, j·T/g) for j in 1..g]; 12 -> 6: (1, 2), .., (6, 12);
      6 -> 4: [(0, 0), (2, 3), (4, 6)].
    """
    s, t = _counts(num_student_layers, num_teacher_layers)
    g = math.gcd(s, t)
    step_s, step_t = s // g, t // g
    pairs = [(j * step_s, j * step_t) for j in range(1, g + 1)]
    return _with_embeddings(pairs, include_embeddings)


def last(
    num_student_layers: int, num_teacher_layers: int, include_embeddings: bool = False
) -> LayerPairs:
    """Only the last layers: [(S, T)] (MiniLM / MiniLMv2 style).

    Args:
      num_student_layers: S >= 1. num_teacher_layers: T >= 1.
      include_embeddings: prepend (0, 0).
    """
    s, t = _counts(num_student_layers, num_teacher_layers)
    return _with_embeddings([(s, t)], include_embeddings)


def every(
    num_student_layers: int, num_teacher_layers: int, include_embeddings: bool = False
) -> LayerPairs:
    """Every student layer to its proportional teacher layer round(i·T/S), i = 1..S.

    Halves round up ((2·i·T + S) // (2·S) in integers), and the result is at least 1 so a
    student layer is never matched to the embeddings by accident when S > 2T.

    Args:
      num_student_layers: S >= 1. num_teacher_layers: T >= 1.
      include_embeddings: prepend (0, 0).

    Returns:
      e.g. 6 -> 4 from 6: [(1, 2), (2, 3), (3, 5), (4, 6)].
    """
    s, t = _counts(num_student_layers, num_teacher_layers)
    pairs = [(i, max(1, (2 * i * t + s) // (2 * s))) for i in range(1, s + 1)]
    return _with_embeddings(pairs, include_embeddings)


def explicit(
    num_student_layers: int,
    num_teacher_layers: int,
    pairs: Iterable[Sequence[int]] | None,
    include_embeddings: bool = False,
) -> LayerPairs:
    """A user-given mapping, validated: 0 <= student <= S, 0 <= teacher <= T, no duplicates.

    Args:
      num_student_layers: S >= 1. num_teacher_layers: T >= 1.
      pairs: iterable of (student_index, teacher_index), e.g. from a YAML/JSON list of lists.
        The order is kept.
      include_embeddings: prepend (0, 0) when it is not already listed.

    Returns:
      the pairs as a list of int tuples.
    """
    s, t = _counts(num_student_layers, num_teacher_layers)
    if pairs is None:
        raise ConfigError("layer mapping 'explicit' needs pairs=[(student, teacher), ...]")
    out: LayerPairs = []
    for pair in pairs:
        try:
            if isinstance(pair, str | bytes) or len(pair) != 2:
                raise TypeError
            if any(isinstance(x, bool) for x in pair):
                raise TypeError
            si, ti = operator.index(pair[0]), operator.index(pair[1])
        except TypeError:
            raise ConfigError(
                f"layer mapping 'explicit': bad pair {pair!r}; expected (student_index, "
                "teacher_index) integers"
            ) from None
        if not (0 <= si <= s and 0 <= ti <= t):
            raise ConfigError(
                f"layer mapping 'explicit': pair {(si, ti)} out of range; student index must "
                f"be in [0, {s}] and teacher index in [0, {t}] (0 = embeddings)"
            )
        if (si, ti) in out:
            raise ConfigError(f"layer mapping 'explicit': pair {(si, ti)} is listed twice")
        out.append((si, ti))
    if not out:
        raise ConfigError("layer mapping 'explicit': pairs is empty")
    return _with_embeddings(out, include_embeddings)


_DEFAULT_EMBEDDINGS = {"uniform": False, "emb_skip": True, "last": False, "every": False,
                       "explicit": False}
STRATEGIES: dict[str, Callable[..., LayerPairs]] = {
    "uniform": uniform,
    "emb_skip": emb_skip,
    "last": last,
    "every": every,
    "explicit": explicit,
}


def layer_map(
    strategy: str,
    num_student_layers: int,
    num_teacher_layers: int,
    pairs: Iterable[Sequence[int]] | None = None,
    include_embeddings: bool | None = None,
) -> LayerPairs:
    """Dispatch to a mapping strategy by name.

    Args:
      strategy: one of `STRATEGIES` ("uniform", "emb_skip", "last", "every", "explicit");
        case, '-' and '+' are normalised, so CKD's "emb+skip" works too.
      num_student_layers, num_teacher_layers: layer counts S and T.
      pairs: only for "explicit".
      include_embeddings: add (True) / omit (False) the (0, 0) embedding pair; None keeps the
        strategy's default (True for emb_skip, False otherwise).

    Returns:
      list of (student_index, teacher_index) hidden-state index pairs.
    """
    if not isinstance(strategy, str):
        raise ConfigError(f"layer mapping strategy must be a string, got {strategy!r}")
    key = strategy.strip().lower().replace("-", "_").replace("+", "_")
    if key not in STRATEGIES:
        raise ConfigError(
            f"unknown layer mapping strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
        )
    include = _DEFAULT_EMBEDDINGS[key] if include_embeddings is None else bool(include_embeddings)
    if key == "explicit":
        return explicit(num_student_layers, num_teacher_layers, pairs, include)
    if pairs is not None:
        raise ConfigError(f"layer mapping {key!r} takes no pairs; use strategy 'explicit'")
    return STRATEGIES[key](num_student_layers, num_teacher_layers, include)

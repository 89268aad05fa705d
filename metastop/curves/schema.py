"""The curve schema: ``Curve``, metric ranges and the rules every curve obeys.

One row per evaluation point. Required columns: ``curve_id``, ``tokens`` (cumulative cost,
finite, >= 0, strictly increasing within a curve) and ``value`` (finite). Optional:
``run_id``, ``task``, ``metric``, ``direction`` (``maximize`` or ``minimize``), ``budget``
(the planned total cost; default: the curve's last ``tokens``), ``step``; any other column is
kept as per-curve metadata.

A share of examples (``is_bounded_metric``: accuracy, EM, F1) lies in [0, 1] or [0, 100],
one scale per curve (``bounded_rule``); a metadata column ``bounded`` set to false declares a
metric whose name looks bounded unbounded (``declared_unbounded``).

Direction is handled here and nowhere else: ``Curve.scores`` is the curve oriented so that
higher is better, and ``Curve.to_metric`` maps scores back to the metric's own units.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import CurveError, ParameterError

MAXIMIZE = "maximize"
MINIMIZE = "minimize"
DIRECTIONS = (MAXIMIZE, MINIMIZE)
REQUIRED_COLUMNS = ("curve_id", "tokens", "value")
CURVE_COLUMNS = ("run_id", "task", "metric", "direction", "budget")
POINT_COLUMNS = ("step",)
ON_ERROR = ("fail", "skip")

# Words in a metric name that mark a share of examples: its scale (0-1 or 0-100) must agree.
_BOUNDED_METRIC_WORDS = frozenset({"em", "acc", "accuracy", "f1", "precision", "recall"})
BOUNDED = "bounded"
"""Optional per-curve metadata column: false declares the curve's metric unbounded."""
_FALSE_WORDS = frozenset({"false", "no", "0", "0.0"})
# A value above 1 in a curve otherwise on 0-1 is an outlier, not a 0-100 scale, when it is
# this many times the largest value within (0, 1] and such values are the majority.
_OUTLIER_RATIO = 10.0


def is_bounded_metric(name: str) -> bool:
    """Whether a metric is a share of examples (EM, accuracy, F1), logged on 0-1 or 0-100.

    Example:
        >>> is_bounded_metric("eval_exact_match"), is_bounded_metric("acc_norm"), is_bounded_metric("embedding_norm")
        (True, True, False)
    """
    lowered = name.lower()
    words = set(re.split(r"[^a-z0-9]+", lowered))
    return "exact_match" in lowered or bool(words & _BOUNDED_METRIC_WORDS)


def declared_unbounded(meta: Mapping[str, Any]) -> bool:
    """Whether a curve's metadata declares its metric unbounded (``bounded`` false).

    Example:
        >>> declared_unbounded({"bounded": False}), declared_unbounded({"bounded": "no"}), declared_unbounded({})
        (True, True, False)
    """
    value = meta.get(BOUNDED)
    if isinstance(value, str):
        return value.strip().lower() in _FALSE_WORDS
    return value is not None and not isinstance(value, (dict, list)) and not bool(value)


def bounded_breaks(values: np.ndarray, starts: Sequence[int] = (0,)) -> np.ndarray:
    """Per point, the range rule of a share of examples it breaks, for curves beginning at
    ``starts``: 0 none, 1 below 0, 2 above 100, 3 above 1 in a curve otherwise on 0-1.

    Such a metric lies in [0, 100]; a curve reaching above 1 is on 0-100, unless its values
    above 1 are a minority, each more than 10 times its largest value within (0, 1]: then
    they are outliers in a 0-1 curve (a 50 among 0.1-0.6), not a scale.

    Example:
        >>> bounded_breaks(np.array([0.1, 0.2, 50.0, 0.3, -1.0, 3.0, 40.0]), [0, 4]).tolist()
        [0, 0, 3, 0, 1, 0, 0]
    """
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, 0.0)
    starts = np.asarray(starts, dtype=np.int64)
    small, big = (v > 0) & (v <= 1), v > 1
    n_small, n_big = np.add.reduceat(small, starts), np.add.reduceat(big, starts)
    top_small = np.maximum.reduceat(np.where(small, v, 0.0), starts)
    low_big = np.minimum.reduceat(np.where(big, v, np.inf), starts)
    outliers = (n_big > 0) & (n_big < n_small) & (low_big > _OUTLIER_RATIO * top_small)
    out = np.zeros(len(v), dtype=np.int8)
    out[big & np.repeat(outliers, np.diff(np.r_[starts, len(v)]))] = 3
    out[v > 100] = 2
    out[v < 0] = 1
    return out


def bounded_message(kind: int, value: float) -> str:
    """The rule that ``bounded_breaks`` kind ``kind`` (1, 2 or 3) names, for ``value``."""
    if kind == 3:
        return (f"value {value!r} is above 1 while most of the curve's values lie within "
                f"(0, 1]: a share of examples keeps one scale, 0-1 or 0-100")
    return (f"value must be {'>= 0' if kind == 1 else '<= 100'} for a share of examples "
            f"(0-1 or 0-100), got {value!r}")


def bounded_rule(values: np.ndarray) -> tuple[int, str] | None:
    """``(point index, rule)`` of the first value of one curve that a share of examples
    cannot take (``bounded_breaks``), else None.

    Example:
        >>> bounded_rule(np.array([0.1, 0.2, 50.0, 0.3]))[0], bounded_rule(np.array([0.5, 3.0, 40.0]))
        (2, None)
    """
    if len(values) == 0:
        return None
    kinds = bounded_breaks(values)
    if not kinds.any():
        return None
    i = int(np.argmax(kinds != 0))
    return i, bounded_message(int(kinds[i]), float(values[i]))


def metric_floor(name: str | None) -> float:
    """The lowest value a loss-like metric can take: 1 for a perplexity, else 0.

    Example:
        >>> metric_floor("word_perplexity"), metric_floor("eval/ppl"), metric_floor("val_loss")
        (1.0, 1.0, 0.0)
    """
    lowered = (name or "").lower()
    return 1.0 if "perplexity" in lowered or "ppl" in re.split(r"[^a-z0-9]+", lowered) else 0.0


def metric_range(name: str | None, values: np.ndarray) -> tuple[float, float]:
    """The range a metric can take, in metric units, judged from its name and the values seen.

    A bounded metric (``is_bounded_metric``: accuracy, EM, F1) lies in [0, 1], or in
    [0, 100] once a value above 1 shows it is logged on 0-100. Another metric is at least
    its floor (``metric_floor``: 1 for a perplexity, else 0) when every value seen is.

    Example:
        >>> metric_range("acc", np.array([0.3, 0.5])), metric_range("eval_em", np.array([12.0]))
        ((0.0, 1.0), (0.0, 100.0))
        >>> metric_range("val_ppl", np.array([40.0, 9.0])), metric_range("reward", np.array([-2.0]))
        ((1.0, inf), (-inf, inf))
    """
    bounded, floor = _metric_limits(name)
    values = np.asarray(values, dtype=np.float64)
    if bounded:
        return 0.0, (1.0 if values.max() <= 1.0 else 100.0)
    return (floor if values.min() >= floor else -np.inf), np.inf


@functools.lru_cache(maxsize=4096)
def _metric_limits(name: str | None) -> tuple[bool, float]:
    """``(is_bounded_metric(name), metric_floor(name))``, cached: names repeat by the
    thousand in a batch."""
    return name is not None and is_bounded_metric(name), metric_floor(name)


def _as_array(values: Any, name: str, curve_id: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise CurveError(f"{name} must be numbers ({error})", curve=curve_id) from None
    if array.ndim != 1:
        raise CurveError(f"{name} must be one-dimensional, got shape {array.shape}", curve=curve_id)
    return array


def check_points(tokens: np.ndarray, values: np.ndarray, curve_id: str) -> None:
    """Raise ``CurveError`` naming the first point of a curve that breaks the schema."""
    if len(tokens) != len(values):
        raise CurveError(f"tokens and values differ in length ({len(tokens)} != {len(values)})",
                         curve=curve_id)
    if len(tokens) == 0:
        raise CurveError("a curve needs at least one point, got none", curve=curve_id)
    rule, row = first_broken_rule(tokens, values)
    if rule is not None:
        raise CurveError(rule, curve=curve_id, row=row)


def first_broken_rule(tokens: np.ndarray, values: np.ndarray) -> tuple[str | None, int | None]:
    """Return ``(rule, point index)`` of the first broken point rule, or ``(None, None)``."""
    checks = (
        (~np.isfinite(tokens), "tokens must be finite"),
        (tokens < 0, "tokens must be >= 0"),
        (~np.isfinite(values), "value must be finite (got NaN or inf)"),
    )
    for bad, rule in checks:
        if bad.any():
            i = int(np.argmax(bad))
            return f"{rule}, got {float(tokens[i] if 'tokens' in rule else values[i])!r}", i
    steps = np.diff(tokens)
    if (steps <= 0).any():
        i = int(np.argmax(steps <= 0)) + 1
        kind = "duplicate point" if steps[i - 1] == 0 else "tokens go backwards"
        return (f"tokens must strictly increase within a curve ({kind}: "
                f"{float(tokens[i - 1])!r} then {float(tokens[i])!r})"), i
    return None, None


@dataclass(frozen=True, eq=False)
class Curve:
    """One learning curve: an eval metric against cumulative training tokens.

    Example:
        >>> c = Curve("run1/em", tokens=[1e6, 2e6, 4e6], values=[0.1, 0.3, 0.35], budget=8e6)
        >>> c.best, c.fraction_seen
        (0.35, 0.5)
    """

    curve_id: str
    tokens: np.ndarray
    values: np.ndarray
    direction: str = MAXIMIZE
    budget: float | None = None
    run_id: str | None = None
    task: str | None = None
    metric: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        curve_id = str(self.curve_id)
        tokens = _as_array(self.tokens, "tokens", curve_id)
        values = _as_array(self.values, "values", curve_id)
        check_points(tokens, values, curve_id)
        if self.direction not in DIRECTIONS:
            raise CurveError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}",
                             curve=curve_id)
        budget = float(tokens[-1]) if self.budget is None else float(self.budget)
        if not np.isfinite(budget) or budget < tokens[-1]:
            raise CurveError(f"budget must be finite and >= the last tokens ({float(tokens[-1])!r}), "
                             f"got {budget!r}", curve=curve_id)
        tokens.setflags(write=False)
        values.setflags(write=False)
        for name, value in (("curve_id", curve_id), ("tokens", tokens), ("values", values),
                            ("budget", budget), ("meta", dict(self.meta))):
            object.__setattr__(self, name, value)

    @classmethod
    def _trusted(cls, curve_id: str, tokens: np.ndarray, values: np.ndarray, direction: str,
                 budget: float, run_id: str | None, task: str | None, metric: str | None,
                 meta: dict) -> Curve:
        """Build a curve from data already validated in bulk (``CurveSet.from_frame``)."""
        curve = object.__new__(cls)
        tokens.setflags(write=False)
        values.setflags(write=False)
        curve.__dict__.update(curve_id=curve_id, tokens=tokens, values=values,
                              direction=direction, budget=budget, run_id=run_id, task=task,
                              metric=metric, meta=meta)
        return curve

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return (f"Curve({self.curve_id!r}, n={len(self)}, direction={self.direction!r}, "
                f"seen={self.fraction_seen:.2f} of budget {self.budget:g})")

    # Direction: the one place where signs flip.
    @property
    def sign(self) -> float:
        """+1 for maximize metrics, -1 for minimize metrics."""
        return 1.0 if self.direction == MAXIMIZE else -1.0

    @property
    def scores(self) -> np.ndarray:
        """The values oriented so that higher is always better."""
        return self.values * self.sign

    def score_range(self) -> tuple[float, float]:
        """The lowest and highest score this curve can reach: ``metric_range`` of its metric
        (none where ``declared_unbounded``) and values, oriented like ``scores``."""
        metric = None if declared_unbounded(self.meta) else self.metric
        low, high = metric_range(metric, self.values)
        return (low, high) if self.direction == MAXIMIZE else (-high, -low)

    def to_metric(self, scores: Any) -> Any:
        """Map scores (higher is better) back to the metric's own units."""
        return np.asarray(scores, dtype=np.float64) * self.sign if np.ndim(scores) else float(scores) * self.sign

    @property
    def best(self) -> float:
        """The best value seen so far, in metric units."""
        return float(self.to_metric(self.scores.max()))

    @property
    def best_index(self) -> int:
        return int(np.argmax(self.scores))

    @property
    def last_tokens(self) -> float:
        return float(self.tokens[-1])

    @property
    def fraction_seen(self) -> float:
        """Share of the budget spent at the last observation."""
        return self.last_tokens / self.budget if self.budget > 0 else 1.0

    def prefix(self, n: int) -> Curve:
        """The first ``n`` points of the curve, with the same budget and metadata."""
        if not 1 <= n <= len(self):
            raise ParameterError(f"n must be in [1, {len(self)}], got n={n}")
        return Curve._trusted(self.curve_id, self.tokens[:n], self.values[:n], self.direction,
                              self.budget, self.run_id, self.task, self.metric, self.meta)

    def upto(self, tokens: float) -> Curve:
        """The points observed at or before ``tokens`` (at least the first point)."""
        n = max(1, int(np.searchsorted(self.tokens, tokens, side="right")))
        return self.prefix(n)

    def with_point(self, tokens: float, value: float) -> Curve:
        """A new curve with one more observation appended (validated)."""
        return Curve(self.curve_id, np.append(self.tokens, tokens), np.append(self.values, value),
                     direction=self.direction, budget=max(self.budget, float(tokens)),
                     run_id=self.run_id, task=self.task, metric=self.metric, meta=self.meta)

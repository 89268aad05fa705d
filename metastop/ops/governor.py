"""Shadow runs and the feedback loop that tunes each task's price to an EM-loss budget.

A share of runs (``shadow_fraction``, chosen by a hash of the run id, so the same run is
always in or out) runs in *shadow mode*: the controller logs where it would have stopped but
training continues to the end. From the full curve the governor measures what stopping would
really have cost: the EM loss in points (keep-best: best value up to the would-stop point
against the best of the whole run) and the share of the budget it would have saved.

``Governor.update()`` then moves each task's price (the tokens an EM point is worth):

- the one-sided upper confidence bound of the task's mean loss is above ``loss_budget``:
  raise the price by ``step`` (an EM point is worth more, so runs stop later);
- the upper bound is below half the budget: lower the price by ``step`` (save more tokens);
- otherwise, or with fewer than ``min_runs`` shadow runs since the last change: leave it.

After a change the task's evidence starts again: runs measured under the old price no longer
count. State is plain JSON (``state_dict`` / ``save`` / ``load``), written atomically.

Example:
    >>> from metastop.stop.prices import Price, PriceBook
    >>> gov = Governor(PriceBook(Price.fraction_of_budget(0.05)), loss_budget=0.5)
    >>> gov.assign_shadow("run-42") in (True, False)
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..curves import atomic_path
from ..errors import ParameterError, ReadError
from ..stop.decisionlog import RunLog, read_logs
from ..stop.prices import PriceBook, Price, to_points

log = logging.getLogger(__name__)

DEFAULT_TASK = "(default)"
"""The key of runs without a task: their price is the price book's default."""
STATE_VERSION = 1
_SALT = "metastop-shadow-v1"


# --- what one shadow run measured ----------------------------------------------------------
@dataclass(frozen=True)
class ShadowOutcome:
    """What stopping would have cost and saved on one finished shadow run.

    Attributes:
        run_id: the run.
        task: its task (``None`` for runs without one).
        em_loss: points lost, keep-best: best value up to the would-stop point against the
            best of the whole run (1 point = 0.01 metric units; >= 0).
        tokens_saved: share of the budget stopping would have saved, ``(t_last - t_stop) / budget``.
        stop_tokens: tokens at the would-stop point (``None``: it would never have stopped).
        final_tokens: tokens at the last observation.
        budget: the run's planned total tokens.
        time: when the run finished (Unix seconds), if the log says.
        started: when the run began (Unix seconds), if the log says.
    """

    run_id: str
    task: str | None
    em_loss: float
    tokens_saved: float
    stop_tokens: float | None
    final_tokens: float
    budget: float
    time: float | None = None
    started: float | None = None

    @property
    def task_key(self) -> str:
        return self.task or DEFAULT_TASK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShadowOutcome:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def shadow_outcome(run: RunLog) -> ShadowOutcome:
    """Measure one finished shadow run from its decision log.

    The would-stop point is the policy's first early stop verdict; the loss is keep-best:
    the best value up to that point against the best of the whole run.
    """
    tokens, best = run.tokens, run.best_so_far()
    stop = run.would_stop_index
    s = stop if stop is not None else len(tokens) - 1
    if not np.isfinite(best[s]):
        raise ParameterError(f"run {run.run_id!r}: decision log has no finite value up to "
                             f"its would-stop point")
    return ShadowOutcome(
        run_id=run.run_id, task=run.task, em_loss=to_points(float(abs(best[-1] - best[s]))),
        tokens_saved=float(max(0.0, tokens[-1] - tokens[s]) / run.budget),
        stop_tokens=float(tokens[s]) if stop is not None else None,
        final_tokens=float(tokens[-1]), budget=run.budget, time=run.points[-1].time,
        started=run.entries[0].time)


# --- confidence bounds ---------------------------------------------------------------------
@dataclass(frozen=True)
class LossEvidence:
    """The shadow-run evidence on one task's mean EM loss (points).

    ``upper`` is the one-sided upper confidence bound of the mean at ``confidence``
    (Student t); ``None`` with fewer than two runs.
    """

    task: str
    n: int
    mean: float | None
    upper: float | None
    confidence: float


def mean_upper_bound(losses: Sequence[float], confidence: float) -> float | None:
    """One-sided Student-t upper confidence bound of the mean (``None`` for n < 2)."""
    x = np.asarray(losses, dtype=float)
    if len(x) < 2:
        return None
    from scipy import stats

    sem = float(np.std(x, ddof=1)) / math.sqrt(len(x))
    return float(np.mean(x) + stats.t.ppf(confidence, len(x) - 1) * sem)


def mean_interval(losses: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Two-sided Student-t confidence interval of the mean (``None`` for n < 2)."""
    x = np.asarray(losses, dtype=float)
    if len(x) < 2:
        return None
    from scipy import stats

    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * float(np.std(x, ddof=1)) / math.sqrt(len(x))
    return float(np.mean(x) - half), float(np.mean(x) + half)


# --- price changes --------------------------------------------------------------------------
@dataclass(frozen=True)
class PriceChange:
    """One move of one task's price, with the evidence and the reason."""

    task: str
    old: Price
    new: Price
    factor: float
    reason: str
    n_runs: int
    mean_loss: float
    upper_bound: float
    time: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["old"], data["new"] = self.old.to_dict(), self.new.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceChange:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["old"] = Price.from_dict(fields["old"])
        fields["new"] = Price.from_dict(fields["new"])
        return cls(**fields)


class Governor:
    """Assigns shadow runs, records what they measured and tunes prices to a loss budget.

    Args:
        pricebook: the prices in force; ``update()`` replaces ``self.pricebook``.
        loss_budget: the mean EM loss per run allowed, in points (> 0).
        shadow_fraction: the share of runs to run in shadow mode, in [0, 1].
        min_runs: shadow runs of a task needed (since its last change) before its price moves.
        confidence: level of the one-sided upper bound of the mean loss, in (0.5, 1).
        step: factor by which a price moves (> 1).

    Example:
        >>> from metastop.stop.prices import Price, PriceBook
        >>> gov = Governor(PriceBook(Price.fraction_of_budget(0.05)), min_runs=2)
        >>> for i, loss in enumerate([2.0, 3.0, 2.5]):
        ...     _ = gov.record(ShadowOutcome(f"r{i}", "arc", loss, 0.3, 5.0, 10.0, 10.0))
        >>> [c.factor for c in gov.update()]
        [2.0]
    """

    def __init__(self, pricebook: PriceBook, *, loss_budget: float = 0.5,
                 shadow_fraction: float = 0.2, min_runs: int = 20, confidence: float = 0.9,
                 step: float = 2.0):
        _check_params(pricebook, loss_budget, shadow_fraction, min_runs, confidence, step)
        self.pricebook = pricebook
        self.loss_budget = float(loss_budget)
        self.shadow_fraction = float(shadow_fraction)
        self.min_runs = int(min_runs)
        self.confidence = float(confidence)
        self.step = float(step)
        self.outcomes: dict[str, list[ShadowOutcome]] = {}
        self.retired: dict[str, int] = {}
        self.changes: list[PriceChange] = []
        self._seen: set[str] = set()

    def __repr__(self) -> str:
        n = sum(map(len, self.outcomes.values()))
        return (f"Governor(loss_budget={self.loss_budget:g}, shadow_fraction="
                f"{self.shadow_fraction:g}, {n} shadow runs, {len(self.changes)} changes)")

    def assign_shadow(self, run_id: str) -> bool:
        """Whether run ``run_id`` runs in shadow mode (a stable hash, the same in every process)."""
        digest = hashlib.sha256(f"{_SALT}:{run_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.shadow_fraction

    def record(self, outcome: ShadowOutcome) -> bool:
        """Count a finished shadow run; ``False`` if this run was recorded already or it began
        before its task's last price change (it measured the old price)."""
        if outcome.run_id in self._seen:
            return False
        self._seen.add(outcome.run_id)
        changed = self._last_change(outcome.task_key)
        began = outcome.started if outcome.started is not None else outcome.time
        if changed is not None and began is not None and began < changed:
            self.retired[outcome.task_key] = self.retired.get(outcome.task_key, 0) + 1
            return False
        self.outcomes.setdefault(outcome.task_key, []).append(outcome)
        return True

    def record_log(self, paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[ShadowOutcome]:
        """Record every finished shadow run in decision logs (files or folders); return the new ones."""
        new = []
        for run in read_logs(paths).runs.values():
            if run.shadow:
                outcome = shadow_outcome(run)
                if self.record(outcome):
                    new.append(outcome)
        return new

    def evidence(self, task: str) -> LossEvidence:
        """The shadow-run evidence on ``task``'s mean loss since its last price change."""
        losses = [o.em_loss for o in self.outcomes.get(task, [])]
        mean = float(np.mean(losses)) if losses else None
        return LossEvidence(task, len(losses), mean, mean_upper_bound(losses, self.confidence),
                            self.confidence)

    def update(self, *, now: float | None = None) -> list[PriceChange]:
        """Move the price of every task whose evidence calls for it; return the changes."""
        now = time.time() if now is None else float(now)
        changes = [c for task in sorted(self.outcomes)
                   if (c := self._decide(self.evidence(task), now)) is not None]
        for change in changes:
            self._apply(change)
        return changes

    def price(self, task: str) -> Price:
        """The price in force for ``task`` (``DEFAULT_TASK`` is the book's default)."""
        return self.pricebook.default if task == DEFAULT_TASK else self.pricebook.price_for(task=task)

    def _decide(self, ev: LossEvidence, now: float) -> PriceChange | None:
        if ev.n < self.min_runs or ev.upper is None or ev.mean is None:
            return None
        level = f"{self.confidence:.0%} upper bound"
        if ev.upper > self.loss_budget:
            factor = self.step
            reason = (f"mean EM loss {ev.mean:.3g} pt over {ev.n} shadow runs, {level} "
                      f"{ev.upper:.3g} > budget {self.loss_budget:g} pt: an EM point is worth "
                      f"x{factor:g} (stop later)")
        elif ev.upper < self.loss_budget / 2:
            factor = 1.0 / self.step
            reason = (f"mean EM loss {ev.mean:.3g} pt over {ev.n} shadow runs, {level} "
                      f"{ev.upper:.3g} < half the budget {self.loss_budget / 2:g} pt: an EM point "
                      f"is worth x{factor:.3g} (save more)")
        else:
            return None
        old = self.price(ev.task)
        return PriceChange(ev.task, old, old.scaled(factor), factor, reason, ev.n, ev.mean,
                           ev.upper, now)

    def _apply(self, change: PriceChange) -> None:
        if change.task == DEFAULT_TASK:
            self.pricebook = self.pricebook.with_default(change.new)
        else:
            self.pricebook = self.pricebook.with_price(change.task, change.new)
        self.retired[change.task] = self.retired.get(change.task, 0) + len(
            self.outcomes.pop(change.task, []))
        self.changes.append(change)
        log.info("price of %s: %s -> %s (%s)", change.task, change.old, change.new, change.reason)

    def _last_change(self, task: str) -> float | None:
        times = [c.time for c in self.changes if c.task == task]
        return max(times) if times else None

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe state: parameters, prices, evidence windows and change history."""
        return {
            "version": STATE_VERSION,
            "params": {"loss_budget": self.loss_budget, "shadow_fraction": self.shadow_fraction,
                       "min_runs": self.min_runs, "confidence": self.confidence,
                       "step": self.step},
            "pricebook": self.pricebook.to_dict(),
            "outcomes": {t: [o.to_dict() for o in v] for t, v in sorted(self.outcomes.items())},
            "retired": dict(sorted(self.retired.items())),
            "changes": [c.to_dict() for c in self.changes],
            "seen_runs": sorted(self._seen),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore evidence and history from ``state_dict`` output (missing keys tolerated);
        the price book is taken from the state when it holds one."""
        if "pricebook" in state:
            self.pricebook = PriceBook.from_dict(state["pricebook"], source="governor state")
        self.outcomes = {t: [ShadowOutcome.from_dict(o) for o in v]
                         for t, v in state.get("outcomes", {}).items()}
        self.retired = {str(k): int(v) for k, v in state.get("retired", {}).items()}
        self.changes = [PriceChange.from_dict(c) for c in state.get("changes", [])]
        self._seen = set(state.get("seen_runs", [])) | {
            o.run_id for v in self.outcomes.values() for o in v}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the state as JSON, atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.state_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, pricebook: PriceBook | None = None) -> Governor:
        """Rebuild a governor from ``save`` output; ``pricebook`` overrides the saved one."""
        path = Path(path)
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ReadError(f"file {path}: cannot read governor state ({error})") from None
        if not isinstance(state, dict):
            raise ReadError(f"file {path}: governor state must be a JSON object")
        book = pricebook or PriceBook.from_dict(state.get("pricebook", {}), source=str(path))
        governor = cls(book, **state.get("params", {}))
        governor.load_state_dict({k: v for k, v in state.items()
                                  if k != "pricebook" or pricebook is None})
        return governor


def _check_params(pricebook: Any, loss_budget: float, shadow_fraction: float, min_runs: int,
                  confidence: float, step: float) -> None:
    if not isinstance(pricebook, PriceBook):
        raise ParameterError(f"pricebook must be a PriceBook, got {pricebook!r}")
    checks = [
        (loss_budget > 0 and math.isfinite(loss_budget), f"loss_budget must be > 0 points, but got {loss_budget=}"),
        (0.0 <= shadow_fraction <= 1.0, f"shadow_fraction must be in [0, 1], but got {shadow_fraction=}"),
        (int(min_runs) == min_runs and min_runs >= 2, f"min_runs must be an integer >= 2, but got {min_runs=}"),
        (0.5 < confidence < 1.0, f"confidence must be in (0.5, 1), but got {confidence=}"),
        (step > 1.0 and math.isfinite(step), f"step must be > 1, but got {step=}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ParameterError(message)

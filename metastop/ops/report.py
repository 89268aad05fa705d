"""The fleet report: what stopping saved and lost in production, from decision logs.

Per task and overall: runs, shadow runs, tokens saved by runs the controller acted on
(``1 - stop tokens / budget``), the EM loss that shadow runs measured (points, keep-best)
with a 95% confidence interval, the prices in force, and what the governor changed and why.

Example:
    >>> rep = fleet_report(["logs/"], pricebook=PriceBook.read("prices.toml"))  # doctest: +SKIP
    >>> rep.overall.em_loss_mean, rep.overall.tokens_saved_mean                  # doctest: +SKIP
    >>> plot_report(rep, "reports/fleet.png")                                    # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ParameterError
from ..stop.decisionlog import LogRead, RunLog, read_logs
from .governor import DEFAULT_TASK, Governor, mean_interval, shadow_outcome
from ..stop.prices import PriceBook

OVERALL = "(all)"


@dataclass(frozen=True)
class RunSummary:
    """One run as its decision log tells it.

    Attributes:
        run_id, task: the run.
        shadow: whether it ran in shadow mode.
        stopped: whether the controller stopped it before its budget (acted; never for shadow
            runs).
        final_tokens: tokens at its last observation; budget: its planned total.
        tokens_saved: ``1 - final_tokens / budget`` for acted runs; for shadow runs, the share
            stopping would have saved.
        em_loss: points that stopping lost (shadow runs only, else ``None``).
    """

    run_id: str
    task: str | None
    shadow: bool
    stopped: bool
    final_tokens: float
    budget: float
    tokens_saved: float
    em_loss: float | None


@dataclass(frozen=True)
class TaskSummary:
    """The numbers of one task (or of all runs, ``task == "(all)"``)."""

    task: str
    runs: int
    shadow_runs: int
    stopped_runs: int
    tokens_saved_mean: float | None
    shadow_would_save_mean: float | None
    em_loss_mean: float | None
    em_loss_ci95: tuple[float, float] | None
    em_loss_p95: float | None
    price: str | None = None
    price_data: dict[str, Any] | None = None
    changes: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "runs": self.runs, "shadow_runs": self.shadow_runs,
                "stopped_runs": self.stopped_runs, "tokens_saved_mean": self.tokens_saved_mean,
                "shadow_would_save_mean": self.shadow_would_save_mean,
                "em_loss_mean": self.em_loss_mean,
                "em_loss_ci95": list(self.em_loss_ci95) if self.em_loss_ci95 else None,
                "em_loss_p95": self.em_loss_p95, "price": self.price,
                "price_data": self.price_data, "changes": list(self.changes)}


@dataclass(frozen=True)
class FleetReport:
    """The whole report: per task, overall, the governor's changes and skipped log lines."""

    tasks: tuple[TaskSummary, ...]
    overall: TaskSummary
    runs: tuple[RunSummary, ...]
    changes: tuple[dict[str, Any], ...] = ()
    loss_budget: float | None = None
    skipped: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall.to_dict(), "tasks": [t.to_dict() for t in self.tasks],
                "governor": {"loss_budget": self.loss_budget, "changes": list(self.changes)},
                "n_runs": len(self.runs), "skipped_lines": list(self.skipped)}


def summarize_run(run: RunLog) -> RunSummary:
    """One run's summary from its decision log.

    Raises:
        ParameterError: a shadow run whose log holds no finite value to measure a loss from.
    """
    if run.shadow:
        got = shadow_outcome(run)
        return RunSummary(run.run_id, got.task, True, False, got.final_tokens, got.budget,
                          got.tokens_saved, got.em_loss)
    last = float(run.tokens[-1])
    return RunSummary(run.run_id, run.task, False, run.stopped, last, run.budget,
                      1.0 - last / run.budget, None)


def _summaries(read: LogRead) -> tuple[list[RunSummary], list[str]]:
    """Every run's summary, and one note per run that could not be summarised."""
    runs, notes = [], []
    for run in read.runs.values():
        try:
            runs.append(summarize_run(run))
        except ParameterError as error:
            notes.append(f"run {run.run_id}: skipped ({error})")
    return runs, notes


def fleet_report(paths: str | os.PathLike | Iterable[str | os.PathLike], *,
                 pricebook: PriceBook | None = None,
                 governor: Governor | None = None) -> FleetReport:
    """Build the report from decision logs (files, or folders of ``*.jsonl``).

    Args:
        paths: the logs.
        pricebook: the prices in force (default: the governor's, if given).
        governor: its change history and loss budget are reported.
    """
    read = read_logs(paths)
    runs, notes = _summaries(read)
    skipped = list(read.skipped) + notes
    book = pricebook if pricebook is not None else (governor.pricebook if governor else None)
    changes = [c.to_dict() for c in governor.changes] if governor is not None else []
    by_task: dict[str, list[RunSummary]] = {}
    for run in runs:
        by_task.setdefault(run.task or DEFAULT_TASK, []).append(run)
    tasks = tuple(_summarize(task, group, book, changes) for task, group in sorted(by_task.items()))
    overall = _summarize(OVERALL, runs, None, [])
    return FleetReport(tasks, overall, tuple(runs), tuple(changes),
                       governor.loss_budget if governor is not None else None, tuple(skipped))


def _summarize(task: str, runs: Sequence[RunSummary], book: PriceBook | None,
               changes: Sequence[dict[str, Any]]) -> TaskSummary:
    acted = [r for r in runs if not r.shadow]
    shadow = [r for r in runs if r.shadow]
    losses = np.array([r.em_loss for r in shadow if r.em_loss is not None])
    price = None
    if book is not None:
        price = book.default if task == DEFAULT_TASK else book.price_for(task=task)
    return TaskSummary(
        task=task, runs=len(runs), shadow_runs=len(shadow),
        stopped_runs=sum(r.stopped for r in acted),
        tokens_saved_mean=_mean([r.tokens_saved for r in acted]),
        shadow_would_save_mean=_mean([r.tokens_saved for r in shadow]),
        em_loss_mean=_mean(losses), em_loss_ci95=mean_interval(losses, 0.95),
        em_loss_p95=float(np.percentile(losses, 95)) if len(losses) else None,
        price=str(price) if price is not None else None,
        price_data=price.to_dict() if price is not None else None,
        changes=tuple(c for c in changes if c["task"] == task))


def _mean(values: Sequence[float] | np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def report_rows(report: FleetReport) -> list[list[Any]]:
    """Table rows (one per task, then overall) for ``metastop report``."""
    rows = []
    for t in (*report.tasks, report.overall):
        ci = f"[{t.em_loss_ci95[0]:.3g}, {t.em_loss_ci95[1]:.3g}]" if t.em_loss_ci95 else None
        rows.append([t.task, t.runs, t.shadow_runs, t.stopped_runs, _pct(t.tokens_saved_mean),
                     t.em_loss_mean, ci, t.price, len(t.changes)])
    return rows


REPORT_COLUMNS = ("task", "runs", "shadow", "stopped", "tokens saved", "EM loss (pt)",
                  "95% CI", "price", "changes")


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f}%"


def plot_report(report: FleetReport, path: str | os.PathLike) -> Path:
    """Write a PNG: per task, tokens saved (acted runs) and shadow EM loss with its 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..curves import atomic_path

    tasks = [*report.tasks, report.overall]
    names = [t.task for t in tasks]
    y = np.arange(len(tasks))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.35 * len(tasks)), sharey=True)
    saved = [100 * (t.tokens_saved_mean or 0.0) for t in tasks]
    left.barh(y, saved, color="tab:blue")
    left.set(xlabel="tokens saved, acted runs (%)", yticks=y, yticklabels=names)
    loss = [t.em_loss_mean if t.em_loss_mean is not None else math.nan for t in tasks]
    err = np.array([[m - t.em_loss_ci95[0], t.em_loss_ci95[1] - m] if t.em_loss_ci95 else [0, 0]
                    for t, m in zip(tasks, loss)]).T
    right.barh(y, loss, xerr=err, color="tab:orange", capsize=3)
    if report.loss_budget is not None:
        right.axvline(report.loss_budget, color="k", linestyle="--", label="loss budget")
        right.legend(loc="lower right")
    right.set(xlabel="EM loss, shadow runs (points, 95% CI)")
    left.invert_yaxis()
    fig.suptitle(f"metastop fleet report: {report.overall.runs} runs, "
                 f"{report.overall.shadow_runs} in shadow")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path

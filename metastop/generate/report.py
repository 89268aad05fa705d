"""The figure and data-card text that describe a generated curve corpus.

Example:
    >>> from metastop.curves import CurveSet
    >>> curves = read_curves("data/em_curves.parquet")  # doctest: +SKIP
    >>> plot_shape_examples(curves, "data/em_curve_shapes.png")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from ..curves import Curve, CurveSet, atomic_path
from ..errors import ParameterError
from .shapes import LEARNED, SHAPES, classify_shape, shape_counts

logger = logging.getLogger(__name__)


EM_METRIC = "exact_match"
LOSS_METRIC = "eval_loss"


def exact_match_curves(curves: CurveSet) -> CurveSet:
    """The EM curves of a corpus (those with metric ``exact_match`` or none): the shape rule
    is written for them, not for the eval-loss curves beside them."""
    return CurveSet([c for c in curves if c.metric in (None, EM_METRIC)])


def learns(curve: Curve) -> bool:
    """Whether a run learned: final EM at least 0.1 and above its first evaluation."""
    return bool(curve.values[-1] >= LEARNED and curve.values[-1] > curve.values[0])


def examples_by_shape(curves: CurveSet, *, per_shape: int) -> dict[str, list[Curve]]:
    """Up to ``per_shape`` EM curves of each shape: those with the widest range (max - min)."""
    if per_shape < 1:
        raise ParameterError(f"per_shape must be >= 1, got per_shape={per_shape!r}")
    grouped: dict[str, list[Curve]] = {shape: [] for shape in SHAPES}
    for curve in sorted(exact_match_curves(curves),
                        key=lambda c: (-float(np.ptp(c.values)), c.curve_id)):
        grouped[classify_shape(curve)].append(curve)
    return {shape: members[:per_shape] for shape, members in grouped.items()}


def plot_shape_examples(curves: CurveSet, path: str | Path, *, per_shape: int = 4) -> Path:
    """Save a figure with one column per shape: example EM curves on top and, below, the
    eval-loss curves of the same runs (where present), against the share of the budget.

    Uses matplotlib's object API (no pyplot), so no global backend is changed.
    """
    from matplotlib.figure import Figure

    picked = examples_by_shape(curves, per_shape=per_shape)
    counts = shape_counts(exact_match_curves(curves))
    losses = {c.run_id: c for c in curves if c.metric == LOSS_METRIC}
    figure = Figure(figsize=(3.2 * len(SHAPES), 5.6), layout="constrained")
    axes = figure.subplots(2, len(SHAPES), sharey="row")
    for top, bottom, shape in zip(axes[0], axes[1], SHAPES):
        for curve in picked[shape]:
            line, = top.plot(curve.tokens / curve.budget, curve.values, marker=".",
                             markersize=3, linewidth=1,
                             label=f"{curve.task} d{curve.meta.get('difficulty', '?')}")
            if curve.run_id in losses:
                loss = losses[curve.run_id]
                bottom.plot(loss.tokens / loss.budget, loss.values, color=line.get_color(),
                            linewidth=1)
        top.set_title(f"{shape} (n={counts[shape]})", fontsize=9)
        top.set_ylim(-0.03, 1.03)
        bottom.set_xlabel("tokens / budget")
        if picked[shape]:
            top.legend(fontsize=6, loc="best")
    axes[0][0].set_ylabel("held-out exact match")
    axes[1][0].set_ylabel("held-out loss (answer tokens)")
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=90, format=path.suffix.lstrip(".") or "png")
    logger.info("wrote %s", path)
    return path


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def lever(curve: Curve) -> str:
    """The lever setting of a run from its metadata: ``fixed``, ``ramp``, ``adaptive_batch``,
    ``freezeout``, ``adaptive_freeze`` or ``collapse_freeze`` (a freeze rule names the run
    when there is one)."""
    freeze, batch = curve.meta.get("freeze_rule", "none"), curve.meta.get("batch_rule", "fixed")
    if freeze != "none":
        return {"freezeout": "freezeout", "collapse": "collapse_freeze"}.get(freeze,
                                                                            "adaptive_freeze")
    return "adaptive_batch" if batch == "adaptive" else str(batch)


def summary_tables(curves: CurveSet) -> str:
    """Markdown tables of the EM curves: shape counts overall, curves per task x shape, and
    the share of runs that learn (:func:`learns`) per task and per lever setting."""
    curves = exact_match_curves(curves)
    counts = shape_counts(curves)
    total = max(1, len(curves))
    overall = _markdown_table(("shape", "curves", "share"),
                              [(s, counts[s], f"{counts[s] / total:.0%}") for s in SHAPES])
    by_task = Counter((c.task, classify_shape(c)) for c in curves)
    tasks = sorted({c.task for c in curves})
    per_task = _markdown_table(("task", *SHAPES),
                               [(t, *(by_task.get((t, s), 0) for s in SHAPES)) for t in tasks])
    learned = (_learn_table("task", [(c.task, learns(c)) for c in curves])
               + "\n\n" + _learn_table("lever", [(lever(c), learns(c)) for c in curves]))
    return f"{overall}\n\nBy task:\n\n{per_task}\n\nRuns that learn:\n\n{learned}"


def _learn_table(name: str, pairs: list[tuple[str, bool]]) -> str:
    runs, hits = Counter(k for k, _ in pairs), Counter(k for k, hit in pairs if hit)
    rows = [(k, runs[k], f"{hits[k] / runs[k]:.0%}") for k in sorted(runs)]
    rows.append(("all", len(pairs), f"{sum(hits.values()) / max(1, len(pairs)):.0%}"))
    return _markdown_table((name, "runs", "learn"), rows)


_SCHEMA_ROWS = (
    ("`curve_id`", "`<run_id>/em` and `<run_id>/eval_loss`: two curves per run"),
    ("`run_id`", "`<task>-d<difficulty>-<sha1 of the config>`, the same on both curves"),
    ("`task`", "`addition`, `reversal`, `sorting`, `modular`, `copy`, `qa`"),
    ("`metric`, `direction`", "`exact_match`, `maximize` (EM) or `eval_loss`, `minimize`"),
    ("`tokens`", "cumulative training input tokens at the evaluation, counted exactly "
                 "(`<bos>` + prompt + answer per example; padding excluded)"),
    ("`value`", "EM: share of the held-out set answered exactly by greedy decoding, in "
                "[0, 1]; eval loss: cross-entropy (nats per token) on the held-out answer "
                "tokens and `<eos>`, teacher-forced"),
    ("`budget`", "the run's total input tokens (`steps` x `batch_size` examples of its "
                 "stream, known up front from the seed; every batch rule spends exactly it)"),
    ("`step`", "per point: optimizer steps done at the evaluation"),
    ("`current_batch_size`", "per point: examples per optimizer step in effect"),
    ("`frozen_blocks`", "per point: frozen blocks (embeddings, then transformer blocks) in "
                        "effect"),
    ("`backward_flops`", "per point: cumulative backward FLOPs (4 x non-embedding parameters "
                         "per token, less what frozen blocks skip)"),
    ("`difficulty`", "digits (addition), length (reversal, sorting, copy), modulus "
                     "(modular), people in the passage (qa)"),
    ("`d_model`, `n_layers`, `n_heads`", "transformer width, depth, heads"),
    ("`lr`, `batch_size`, `weight_decay`", "AdamW peak learning rate, (starting) batch, "
                                           "decoupled weight decay"),
    ("`batch_rule`, `micro_batch`, `max_batch_size`, `lr_scaling`",
     "`fixed`, `ramp` (linear in tokens up to `max_batch_size`) or `adaptive` (gradient "
     "noise scale, `metastop.adapt.BatchSizeController`); examples per forward pass (0: "
     "`batch_size`); the LR rule for larger batches (`none`, `sqrt`, `linear`)"),
    ("`freeze_rule`", "`none`, `freezeout` (Brock et al. 2017), `adaptive` "
                      "(`metastop.adapt.Freezer`) or `collapse` (`Freezer(collapse=0.05)`)"),
    ("`schedule`, `warmup_frac`, `cooldown_frac`", "`cosine`, `linear`, `constant`, "
                                                   "`constant_cooldown`, by token progress "
                                                   "(warmup, decay share)"),
    ("`train_size`, `eval_size`", "distinct training examples; held-out examples"),
    ("`steps`, `n_evals`, `seed`", "steps at `batch_size` that set the budget, evaluations, "
                                   "seed (data, init, order)"),
    ("`optimizer_steps`", "optimizer steps the run took (fewer when the batch grew)"),
    ("`truncated`", "whether a time cap cut the run (false for every run here)"),
)


def data_card(curves: CurveSet, *, command: str, wall_minutes: float, note: str = "") -> str:
    """The ``em_curves.parquet`` section of ``data/README.md`` (markdown; one template, so
    longer than a function should be)."""
    em = exact_match_curves(curves)
    lengths = [len(c) for c in em]
    schema = _markdown_table(("column", "meaning"), _SCHEMA_ROWS)
    per_curve = (f"{min(lengths)}" if min(lengths) == max(lengths)
                 else f"{min(lengths)} to {max(lengths)}")
    losses = len(curves) - len(em)
    return f"""## `em_curves.parquet`: exact match and eval loss against tokens from tiny transformers

**What.** {len(curves)} curves of {len(em)} training runs: per run, a held-out exact-match
(EM) curve and a held-out loss curve ({losses} of them) at the same points ({per_curve}
per curve, {sum(lengths):,} points each kind), from decoder-only transformers trained from
scratch on CPU with PyTorch by `metastop.generate` on generated exact-answer tasks:
multi-digit addition, string reversal, digit sorting, modular addition, copying a bracketed
segment among distractors, and extractive QA over a passage of people
(`ann 23 rome;bob 41 oslo;?age bob=` -> `41`). Loss on answer tokens only. Each point is
measured on a fixed held-out set of 512 examples (disjoint prompts): EM by greedy decoding
(computed exactly from one teacher-forced pass), loss on the same pass. Made by this
project; same license as the repository.

**How.** {command}

{note}

**Schema** (the curve table, one row per evaluation point; every hyperparameter a column):

{schema}

**Shapes** (EM curves). `metastop.generate.shapes.classify_shape`, on the values `y` with
`x = tokens / last tokens` and `range = max - min`, checked in this order:
1. `never_learns`: `max < 0.1` or `range < 0.05`;
2. `overfit_decline`: on the 3-point moving average `m`, `max(m) - m[-1] >= max(0.05,
   0.2 * range)` and the best comes before `x = 0.9`;
3. `plateau_then_jump`: some point `s` with `x[s] >= 0.15` whose preceding 0.15 of the
   tokens (>= 3 points) lie within 0.05, followed within two evaluations by a rise of
   `>= max(0.1, 0.3 * range)`;
4. `rising_at_end`: the last 20% of the tokens add `>= max(0.02, 0.1 * range)`;
5. `saturating`: the rest (rises, then holds).

A run *learns* when its final EM is at least 0.1 and above its first evaluation.

{summary_tables(curves)}

Example curves of each shape, with the eval loss of the same runs below:
`em_curve_shapes.png`. Sweep wall time: {wall_minutes:.0f} min.
"""

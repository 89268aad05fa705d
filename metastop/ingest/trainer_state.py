"""Hugging Face ``Trainer`` state files: the eval curve in ``trainer_state.json``.

Example:
    >>> curves = read_trainer_state("out/trainer_state.json", metric="exact_match")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from ..curves import CurveSet
from ..curves.curveset import cell_rule
from ..errors import CurveError, ReadError
from ._common import (_as_float, _check_tokens_per_step, _curve_frame, _rescale, _run_name,
                      _short, _tokens_from_steps)

log = logging.getLogger(__name__)

EXACT_MATCH_KEYS = ("eval_exact_match", "eval_em")


def read_trainer_state(path: str | os.PathLike, *, on_error: str = "fail",
                       metric: str | None = None, tokens_per_step: float | None = None,
                       scale: float | None = None, run_id: str | None = None) -> CurveSet:
    """Read the eval curve of a Hugging Face ``Trainer`` run from its ``trainer_state.json``.

    Args:
        path: ``trainer_state.json`` (or the directory holding it).
        on_error: ``fail`` or ``skip`` (see ``read_curves``).
        metric: the ``log_history`` key, with or without ``eval_`` (``exact_match``,
            ``eval_loss``, ``eval_squad_f1``...). Default: ``eval_exact_match``, else
            ``eval_em``.
        tokens_per_step: tokens per optimizer step. Required when the run did not log
            ``num_input_tokens_seen`` (``include_num_input_tokens_seen``); also gives the
            budget as ``max_steps x tokens_per_step``.
        scale: 1 or 100 to state the metric's scale; default: detect (see ``_rescale``).
        run_id: the run's name; default: the output directory's name.

    Returns:
        One curve, ``<run_id>/<metric key>``, with EM on 0-1 (``scale_original`` = 100 in
        its metadata when it was logged on 0-100) and loss-like metrics minimized.

    Example:
        >>> read_trainer_state("out/trainer_state.json", metric="exact_match")  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        path = path / "trainer_state.json"
    _check_tokens_per_step(tokens_per_step)
    state = _load_trainer_state(path)
    key = _pick_log_key(state["log_history"], metric, source=str(path))
    rows, steps, values, tokens = _eval_points(state["log_history"], key, source=str(path))
    run = run_id or _run_name(path)
    curve_id = f"{run}/{key}"
    if tokens is None:
        tokens = _tokens_from_steps(steps, tokens_per_step, source=str(path),
                                    where=f"log_history ({key})")
    values, original = _rescale(values, key, scale, source=str(path), curve=curve_id, rows=rows)
    budget = _trainer_budget(state, tokens, tokens_per_step)
    frame = _curve_frame(curve_id=curve_id, run_id=run, metric_key=key, tokens=tokens,
                         values=values, steps=steps, scale=original, budget=budget)
    return CurveSet.from_frame(frame, source=str(path), on_error=on_error, rows=rows)


def _load_trainer_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ReadError(f"file {path}: malformed JSON ({type(error).__name__}: "
                        f"{_short(error)})") from None
    except OSError as error:
        raise ReadError(f"file {path}: cannot be read ({error.strerror or error})") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise CurveError("a trainer_state.json must be a JSON object with a 'log_history' "
                         "list (as Trainer.save_state writes it)", source=str(path))
    return state


def _pick_log_key(history: list, metric: str | None, *, source: str) -> str:
    keys = sorted({k for entry in history if isinstance(entry, dict) for k in entry
                   if isinstance(k, str) and k.startswith("eval_")
                   and not k.endswith(("_runtime", "_per_second"))})
    wanted = EXACT_MATCH_KEYS if metric is None else (metric, f"eval_{metric}")
    for key in wanted:
        if key in keys:
            return key
    asked = "an exact-match metric (eval_exact_match, eval_em)" if metric is None else repr(metric)
    raise CurveError(f"log_history has no {asked}; eval metrics present: {keys or 'none'}"
                     f"{'; pick one with metric=' if keys else ''}", source=source)


def _eval_points(history: list, key: str, *, source: str):
    """Rows, steps, values and (if every row logged them) tokens of one metric."""
    rows = [i for i, entry in enumerate(history) if isinstance(entry, dict) and key in entry]
    entries = [history[i] for i in rows]
    steps = np.array([_as_float(e.get("step")) for e in entries])
    bad = np.flatnonzero(~np.isfinite(steps))
    if bad.size:
        raise CurveError(f"step must be a number, got {entries[bad[0]].get('step')!r}",
                         source=source, curve=key, row=rows[bad[0]])
    odd = [i for i, e in enumerate(entries)
           if isinstance(e[key], bool) or not isinstance(e[key], (int, float))]
    if odd:
        raise CurveError(cell_rule(key, entries[odd[0]][key]), source=source, curve=key,
                         row=rows[odd[0]])
    values = np.array([_as_float(e[key]) for e in entries])
    rows, steps, values, entries = _collapse_repeats(rows, steps, values, entries)
    logged = [e.get("num_input_tokens_seen") for e in entries]
    if all(t is not None for t in logged):
        return rows, steps, values, np.array([_as_float(t) for t in logged])
    if any(t is not None for t in logged):
        log.warning("%s: num_input_tokens_seen is missing in some %s entries; using steps",
                    source, key)
    return rows, steps, values, None


def _collapse_repeats(rows, steps, values, entries):
    """Drop an eval logged twice at the same step with the same value (``trainer.evaluate()``
    after training repeats the last one); different values at one step stay an error."""
    keep = np.r_[True, ~((np.diff(steps) == 0) & (np.diff(values) == 0))] if len(steps) else []
    if len(steps) and not np.all(keep):
        log.info("dropped %d repeated eval entries", int((~keep).sum()))
    pick = np.flatnonzero(keep)
    return [rows[i] for i in pick], steps[pick], values[pick], [entries[i] for i in pick]


def _trainer_budget(state: dict, tokens: np.ndarray, tokens_per_step: float | None) -> float | None:
    """``max_steps x tokens_per_step``; without tokens_per_step, the observed tokens per step
    (``num_input_tokens_seen / global_step``) stands in. Never below the last tokens."""
    max_steps = _as_float(state.get("max_steps"))
    if not np.isfinite(max_steps) or max_steps <= 0 or len(tokens) == 0:
        return None
    rate = tokens_per_step
    if rate is None:
        seen = _as_float(state.get("num_input_tokens_seen"))
        step = _as_float(state.get("global_step"))
        rate = seen / step if np.isfinite(seen) and np.isfinite(step) and step > 0 else None
    if rate is None or not np.isfinite(max_steps * rate):
        return None
    last = tokens[np.isfinite(tokens)].max(initial=0.0)
    return float(max(max_steps * rate, last))

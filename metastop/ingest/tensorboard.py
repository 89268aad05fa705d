"""TensorBoard event files: scalar curves, one run per directory holding event files.

Needs the ``tensorboard`` extra (``pip install 'metastop[tensorboard]'``); without it reading
an event file is a ``ReadError`` saying so. Each file's TFRecord framing is checked first
(``tfrecord.first_damage``): a damaged or cut-short file still gives the records before the
damage, and ``CurveSet.warnings`` names the file and the byte offset. A tag holding complex
numbers is refused when asked for.

Example:
    >>> curves = read_tensorboard("runs/", tokens_per_step=4096)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..curves import CurveSet
from ..errors import CurveError, ReadError
from ._common import (_check_tokens_per_step, _curve_frame, _each, _rescale, _run_name, _short,
                      _tokens_from_steps, _validated)
from .tfrecord import first_damage

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'metastop[tensorboard]'"
EVENTS_PREFIX = "events.out.tfevents"
EXACT_MATCH_TAGS = ("eval/exact_match", "eval/em", "eval_exact_match", "eval_em")


def read_tensorboard(path: str | os.PathLike, *, on_error: str = "fail",
                     metric: str | None = None, tokens_per_step: float | None = None,
                     tokens_tag: str | None = None, scale: float | None = None,
                     run_id: str | None = None) -> CurveSet:
    """Read scalar curves from TensorBoard event files.

    Args:
        path: an ``events.out.tfevents.*`` file, or a directory searched recursively; each
            directory holding event files is one run.
        on_error: ``fail`` or ``skip`` (see ``read_curves``).
        metric: the scalar tag (``eval/exact_match``) or its last part (``exact_match``).
            Default: an exact-match tag (``eval/exact_match``, ``eval/em``...).
        tokens_per_step: tokens = step x tokens_per_step.
        tokens_tag: a scalar tag holding cumulative tokens at the same steps (e.g.
            ``eval/num_input_tokens_seen``, which the Hugging Face TensorBoard callback
            logs); used without tokens_per_step. Default: ``<prefix>/num_input_tokens_seen``
            when it exists.
        scale: 1 or 100 to state the metric's scale; default: detect.
        run_id: the run's name (default: the directory's name).

    Example:
        >>> read_tensorboard("runs/", metric="eval/exact_match", tokens_per_step=4096)  # doctest: +SKIP
    """
    path = Path(path)
    _check_tokens_per_step(tokens_per_step)
    files = [path] if path.is_file() else _event_files(path)
    if not files:
        raise ReadError(f"file {path}: no {EVENTS_PREFIX}.* files")
    runs: dict[Path, list[Path]] = {}
    for file in files:
        runs.setdefault(file.parent, []).append(file)
    notes: list[str] = []
    parts = _each(lambda run: _tensorboard_run(
        run[0], run[1], metric=metric, tokens_per_step=tokens_per_step, tokens_tag=tokens_tag,
        scale=scale, run_id=run_id if len(runs) == 1 else None,
        base=path if path.is_dir() else path.parent, notes=notes), sorted(runs.items()), on_error)
    curves = _validated(parts, source=str(path), on_error=on_error)
    curves.warnings.extend(notes)
    return curves


def _event_files(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.rglob(f"{EVENTS_PREFIX}*") if p.is_file())
    except OSError as error:
        raise ReadError(f"file {directory}: cannot be listed ({error})") from None


def _tensorboard_run(directory: Path, files: list[Path], *, metric, tokens_per_step, tokens_tag,
                     scale, run_id, base: Path, notes: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    scalars, refused = _load_scalars(files, notes)
    source = str(files[0] if len(files) == 1 else directory)
    tag = _pick_tag({**scalars, **refused}, metric, source=source)
    if tag in refused:
        raise CurveError(refused[tag], source=source, curve=tag)
    steps, values = scalars[tag]
    rows = np.arange(len(steps))
    run = run_id or (str(directory.relative_to(base)) if directory != base else None) \
        or _run_name(directory)
    curve_id = f"{run}/{tag}"
    tokens = _tensorboard_tokens(scalars, tag, steps, tokens_per_step, tokens_tag, source)
    values, original = _rescale(values, tag, scale, source=source, curve=curve_id, rows=rows)
    frame = _curve_frame(curve_id=curve_id, run_id=run, metric_key=tag, tokens=tokens,
                         values=values, steps=steps, scale=original)
    return frame, rows


def _tensorboard() -> tuple[Any, Any, tuple[type, ...]]:
    """``(EventAccumulator, tensor_util, errors of corrupt records)`` from the optional
    ``tensorboard`` package; ``ReadError`` with the install hint without it."""
    try:
        from google.protobuf.message import DecodeError
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.compat.tensorflow_stub.errors import OpError
        from tensorboard.util import tensor_util
    except ImportError as error:
        raise ReadError(f"reading TensorBoard event files needs the tensorboard extra: "
                        f"{INSTALL_HINT} ({error})") from None
    return EventAccumulator, tensor_util, (OSError, ValueError, DecodeError, OpError)


def _load_scalars(files: list[Path], notes: list[str]
                  ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """``tag -> (steps, values)`` of every scalar in the files, in file and step order, and
    ``tag -> why`` for tags refused (complex values); damaged files are noted in ``notes``."""
    event_accumulator, tensor_util, corrupt = _tensorboard()
    found: dict[str, list[tuple[float, float]]] = {}
    refused: dict[str, str] = {}
    for file in files:
        _note_damage(file, notes)
        try:
            accumulator = event_accumulator(str(file), size_guidance={"scalars": 0, "tensors": 0})
            accumulator.Reload()
        except corrupt as error:  # corrupt records
            raise ReadError(f"file {file}: cannot be read as TensorBoard events "
                            f"({type(error).__name__}: {_short(error)})") from None
        for tag, points in _accumulator_scalars(accumulator, tensor_util, refused).items():
            found.setdefault(tag, []).extend(points)
    return {tag: (np.array([p[0] for p in pts], dtype=np.float64),
                  np.array([p[1] for p in pts], dtype=np.float64))
            for tag, pts in found.items() if tag not in refused}, refused


def _note_damage(file: Path, notes: list[str]) -> None:
    """Say where an event file is damaged or cut short: TensorBoard stops there silently."""
    try:
        damage = first_damage(file)
    except OSError as error:
        raise ReadError(f"file {file}: cannot be read ({error.strerror or error})") from None
    if damage is not None:
        offset, what = damage
        notes.append(f"file {file}: damaged at byte {offset} of {file.stat().st_size} ({what}); "
                     f"only the records before it were read, so its curves may be cut short")
        log.warning("%s", notes[-1])


def _accumulator_scalars(accumulator, tensor_util, refused: dict[str, str]
                         ) -> dict[str, list[tuple[float, float]]]:
    tags = accumulator.Tags()
    out = {tag: [(float(e.step), float(e.value)) for e in accumulator.Scalars(tag)]
           for tag in tags.get("scalars", [])}
    for tag in tags.get("tensors", []):  # summary v2 writes scalars as 0-d tensors
        points = []
        for event in accumulator.Tensors(tag):
            array = _tensor_value(event.tensor_proto, tensor_util)
            if array is not None and np.iscomplexobj(array):
                refused[tag] = (f"tag {tag!r} holds a complex value ({array.item()!r}) at step "
                                f"{event.step}; a learning curve needs real numbers")
            if array is None or np.iscomplexobj(array):
                break
            points.append((float(event.step), float(array.item())))
        else:
            if points:
                out.setdefault(tag, points)
    return out


def _tensor_value(proto, tensor_util) -> np.ndarray | None:
    """A one-value tensor of numbers (integers, floats or complex), else None."""
    try:
        array = tensor_util.make_ndarray(proto)
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    numeric = np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_
    return array if array.size == 1 and numeric else None


def _pick_tag(scalars: Mapping[str, Any], metric: str | None, *, source: str) -> str:
    tags = sorted(scalars)
    if metric is None:
        candidates = [t for t in EXACT_MATCH_TAGS if t in scalars]
    else:
        candidates = [t for t in tags if t == metric] or \
            [t for t in tags if re.split(r"[/_]", t, maxsplit=1)[-1] == metric
             or t.rsplit("/", 1)[-1] == metric]
    if len(candidates) >= 1 and (metric is None or len(candidates) == 1):
        return candidates[0]
    asked = ("an exact-match tag (eval/exact_match, eval/em)" if metric is None
             else f"tag {metric!r}")
    problem = (f"{len(candidates)} tags match {metric!r}: {candidates}" if candidates
               else f"no {asked}")
    raise CurveError(f"{problem}; scalar tags present: {tags or 'none'}; pick one with metric=",
                     source=source)


def _default_tokens_tag(scalars: Mapping[str, Any], tag: str) -> str | None:
    """``num_input_tokens_seen`` beside the metric, else under ``train/`` (where the Hugging
    Face TensorBoard callback puts it, eval logs included), else at top level."""
    prefix = tag.rsplit("/", 1)[0] + "/" if "/" in tag else ""
    names = (f"{prefix}num_input_tokens_seen", "train/num_input_tokens_seen",
             "num_input_tokens_seen")
    return next((n for n in names if n in scalars), None)


def _tensorboard_tokens(scalars, tag, steps, tokens_per_step, tokens_tag, source) -> np.ndarray:
    if tokens_per_step is not None:
        return _tokens_from_steps(steps, tokens_per_step, source=source, where=f"tag {tag!r}")
    name = tokens_tag or _default_tokens_tag(scalars, tag)
    if name is None:
        return _tokens_from_steps(steps, None, source=source, where=f"tag {tag!r}")
    if name not in scalars:
        raise CurveError(f"tokens_tag {tokens_tag!r} is not a scalar tag; tags present: "
                         f"{sorted(scalars)}", source=source)
    lookup = dict(zip(*scalars[name]))
    missing = [s for s in steps if s not in lookup]
    if missing:
        raise CurveError(f"tokens tag {name!r} has no value at step {missing[0]:g} of {tag!r}",
                         source=source, curve=tag)
    return np.array([lookup[s] for s in steps], dtype=np.float64)

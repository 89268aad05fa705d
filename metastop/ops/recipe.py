"""The one training recipe: which corpora, how many curves of each, how they are weighed.

Both the shipped model (``scripts/train_default.py``) and ``metastop retrain`` train through
here, so the champion and its challengers differ only in their data, never in how it was
chosen. Every corpus contributes its *train* part only (``curves.splits``: the held-out
groups the benchmarks evaluate on are never seen), at most ``cap`` curves drawn at random,
and each curve weighs ``min(MAX_WEIGHT, sqrt(BALANCE_CURVES / curves used))`` so that a
large corpus does not drown the others. Finished runs folded back in form one more corpus.

Example:
    >>> recipe = Recipe(max_curves=500)  # doctest: +SKIP
    >>> training = training_set(recipe)  # doctest: +SKIP
    >>> predictor = fit(training, recipe.params)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..curves import Curve, CurveSet
from ..curves.paths import DATA_DIR, REPO_ROOT, shared_data_dir
from ..curves.splits import split_holdout
from ..errors import ParameterError
from ..ingest import read_curves
from ..predict.manifest import sha256_file
from ..predict.model import Predictor

log = logging.getLogger(__name__)

BALANCE_CURVES = 10_000
MAX_WEIGHT = 10.0
DEFAULT_PARAMS = {"n_estimators": 150, "learning_rate": 0.08}
"""The shipped model's booster settings (about 2.5 minutes on 2 cores for all corpora)."""
FINISHED_RUNS = "finished_runs"


@dataclass(frozen=True)
class Corpus:
    """One training corpus: a curve file, and at most ``cap`` of its training curves.

    ``task_column`` names the metadata column that is the corpus's task where its table has
    no ``task`` (nanoGPT: the track): siblings for task memory are found by task.
    """

    name: str
    path: Path
    cap: int | None = None
    task_column: str | None = None

    def read(self) -> CurveSet:
        """The corpus's valid curves (invalid ones are dropped and counted), with tasks."""
        curves = read_curves(self.path, on_error="skip")
        if self.task_column is None:
            return curves
        return CurveSet((c if c.task is not None else
                         dataclasses.replace(c, task=_text(c.meta.get(self.task_column)))
                         for c in curves), dropped=curves.dropped)


def default_corpora(data_dir: str | os.PathLike = DATA_DIR,
                    shared_dir: str | os.PathLike | None = None) -> tuple[Corpus, ...]:
    """The project's corpora (LCDB, generated EM) and the shared public ones (Pythia, nanoGPT)."""
    data, shared = Path(data_dir), Path(shared_dir) if shared_dir is not None else shared_data_dir()
    return (Corpus("lcdb", data / "lcdb.parquet", 12_000),
            Corpus("pythia_evals", shared / "pythia_evals.parquet"),
            Corpus("pythia_arithmetic", shared / "pythia_arithmetic.parquet", 3_000),
            Corpus("nanogpt_speedrun", shared / "nanogpt_speedrun.parquet", task_column="track"),
            Corpus("em_curves", data / "em_curves.parquet"))


@dataclass(frozen=True)
class Recipe:
    """How to build a training set and fit a predictor on it.

    Attributes:
        corpora: the corpora to read (missing files are skipped with a log line).
        max_curves: a cap on curves per corpus that overrides each corpus's own.
        seed: the seed of the per-corpus samples and of the boosters.
        params: ``Predictor`` keyword arguments.
    """

    corpora: tuple[Corpus, ...] = field(default_factory=default_corpora)
    max_curves: int | None = None
    seed: int = 0
    params: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_PARAMS))

    def __post_init__(self) -> None:
        if self.max_curves is not None and self.max_curves < 1:
            raise ParameterError(f"max_curves must be >= 1 or None, but got {self.max_curves=}")


@dataclass(frozen=True)
class TrainingSet:
    """Training curves with their weights, the held-out curves, and where each came from."""

    train: CurveSet
    weights: np.ndarray
    held_out: CurveSet
    sources: tuple[dict[str, Any], ...]


def training_set(recipe: Recipe, *, extra: Sequence[Curve] = (),
                 extra_sources: Sequence[Mapping[str, Any]] = ()) -> TrainingSet:
    """Read the recipe's corpora and ``extra`` curves (finished runs) into one training set.

    Raises:
        ParameterError: no training curve at all, or no held-out curve to evaluate on.
    """
    rng = np.random.default_rng(recipe.seed)
    parts = [_corpus_part(c, recipe, rng) for c in recipe.corpora if _present(c)]
    if extra:
        parts.append(_part(FINISHED_RUNS, CurveSet(extra), None, rng,
                           {"files": [dict(s) for s in extra_sources]}))
    if not parts or not sum(len(p[0]) for p in parts):
        raise ParameterError("the recipe found no training curves: no corpus file exists and "
                             "no extra curves were given")
    train = CurveSet.concat(p[0] for p in parts)
    held_out = CurveSet.concat(p[2] for p in parts)
    return TrainingSet(train, np.concatenate([p[1] for p in parts]), held_out,
                       tuple(p[3] for p in parts))


def fit(training: TrainingSet, params: Mapping[str, Any] | None = None, *,
        trainer: Callable | None = None) -> Predictor:
    """Fit a ``Predictor`` on a training set with the recipe's weights."""
    predictor = Predictor(**{**DEFAULT_PARAMS, **dict(params or {})})
    options = {"trainer": trainer} if trainer is not None else {}
    return predictor.fit(training.train, sample_weight=training.weights,
                         sources=list(training.sources), **options)


def _present(corpus: Corpus) -> bool:
    if not corpus.path.is_file():
        log.info("corpus %s not found at %s, skipped", corpus.name, corpus.path)
        return False
    return True


def _corpus_part(corpus: Corpus, recipe: Recipe, rng: np.random.Generator) -> tuple:
    curves = corpus.read()
    cap = recipe.max_curves if recipe.max_curves is not None else corpus.cap
    source = {"path": _display(corpus.path), "sha256": sha256_file(corpus.path),
              "n_curves_dropped_invalid": len(curves.dropped)}
    return _part(corpus.name, curves, cap, rng, source)


def _part(name: str, curves: CurveSet, cap: int | None, rng: np.random.Generator,
          source: dict[str, Any]) -> tuple:
    """(chosen training curves, their weights, held-out curves, source record) of one corpus."""
    train, held_out = split_holdout(curves)
    chosen = train
    if cap is not None and len(train) > cap:
        keep = np.sort(rng.choice(len(train), size=cap, replace=False))
        chosen = CurveSet(train[int(i)] for i in keep)
    weight = min(MAX_WEIGHT, float(np.sqrt(BALANCE_CURVES / max(len(chosen), 1))))
    log.info("%-18s %7d curves, train split %7d, held out %6d, used %6d", name, len(curves),
             len(train), len(held_out), len(chosen))
    record = {"name": name, **source, "curve_weight": round(weight, 4),
              "n_curves": len(curves), "n_curves_train_split": len(train),
              "n_curves_held_out": len(held_out), "n_curves_used": len(chosen)}
    return chosen, np.full(len(chosen), weight), held_out, record


def _text(value: Any) -> str | None:
    return None if value is None or value != value else str(value)


def _display(path: Path) -> str:
    """The path relative to the repository root (``../shared/data/...`` for shared files)."""
    try:
        return os.path.relpath(path.resolve(), REPO_ROOT)
    except ValueError:
        return str(path)

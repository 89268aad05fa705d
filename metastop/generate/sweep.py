"""The sweep: which runs to train, and running them in parallel, resumably, within a deadline.

Configs are drawn at random (seeded) from per-task grids over difficulty, width, depth,
learning rate, batch size, training-set size, weight decay, schedule and seed. The number
of steps of a run follows from a cost model so that every run takes about the same CPU
time (``seconds_per_run``); it depends only on the config, never on measured time, so the
sweep is deterministic.

Finished runs are stored one Parquet file per run under ``cache_dir`` and skipped on rerun.

Example:
    >>> configs = sample_configs(n_runs=4, seed=0)
    >>> frame = run_sweep(configs, cache_dir="data/.em_runs")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from ..curves import atomic_path
from ..errors import ParameterError
from .tasks import TASKS

logger = logging.getLogger(__name__)

DIFFICULTIES = {"addition": (2, 3), "reversal": (4, 6, 8), "sorting": (4, 6, 8),
                "modular": (23, 31, 47), "copy": (2, 3, 5), "qa": (1, 2, 3)}
TRAIN_SIZES = (64, 256, 1024, 4096)
MODULAR_TRAIN_FRACTIONS = (0.3, 0.5, 0.8)
WIDTHS = (32, 48, 64, 96)
DEPTHS = (1, 2, 3)
LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2)
BATCH_SIZES = (16, 32, 64)
WEIGHT_DECAYS = (0.0, 0.1, 1.0)
SCHEDULE_CHOICES = ("cosine", "linear", "constant_cooldown", "constant")
SEEDS = (0, 1, 2, 3, 4)
EVAL_SIZE = 96
N_EVALS = 25
MIN_STEPS, MAX_STEPS = 200, 3000


@dataclass(frozen=True)
class SweepOutcome:
    """What one call of :func:`run_sweep` did.

    Attributes:
        frame: the curve table of every finished run among the configs (cached or new).
        n_trained: runs trained in this call.
        n_cached: runs found in the cache.
        n_skipped: runs not started because the deadline passed.
        seconds: wall time of the call.
    """

    frame: pd.DataFrame
    n_trained: int
    n_cached: int
    n_skipped: int
    seconds: float


def mean_sequence_length(task: str, difficulty: int) -> float:
    """Mean model-input length (``<bos>`` + prompt + answer) over 200 fixed samples."""
    rng = random.Random(f"length/{task}/{difficulty}")
    examples = [TASKS[task](rng, difficulty) for _ in range(200)]
    return sum(len(e.prompt) + len(e.answer) + 1 for e in examples) / len(examples)


def step_milliseconds(*, tokens_per_step: float, d_model: int, n_layers: int) -> float:
    """Estimated single-thread CPU time of one training step (fitted on a laptop-class core)."""
    return 1.5 + 2.5 * n_layers + 0.005 * tokens_per_step * n_layers * (d_model / 64) ** 2


def planned_steps(task: str, difficulty: int, *, d_model: int, n_layers: int, batch_size: int,
                  seconds_per_run: float) -> int:
    """Steps that make a run take about ``seconds_per_run`` (clipped to a sane range)."""
    tokens = batch_size * mean_sequence_length(task, difficulty)
    per_step = step_milliseconds(tokens_per_step=tokens, d_model=d_model, n_layers=n_layers)
    steps = int(1000 * seconds_per_run / per_step)
    return max(MIN_STEPS, min(MAX_STEPS, steps))


def _train_size(rng: random.Random, task: str, difficulty: int) -> int:
    if task == "modular":
        return int(rng.choice(MODULAR_TRAIN_FRACTIONS) * (difficulty ** 2 - EVAL_SIZE))
    if task == "addition" and difficulty == 2:
        return rng.choice(TRAIN_SIZES[:3])
    return rng.choice(TRAIN_SIZES)


def _draw_config(rng: random.Random, seconds_per_run: float, tasks: tuple[str, ...]):
    from .train import RunConfig

    task = rng.choice(tasks)
    difficulty = rng.choice(DIFFICULTIES[task])
    d_model, n_layers, batch_size = rng.choice(WIDTHS), rng.choice(DEPTHS), rng.choice(BATCH_SIZES)
    steps = planned_steps(task, difficulty, d_model=d_model, n_layers=n_layers,
                          batch_size=batch_size, seconds_per_run=seconds_per_run)
    return RunConfig(task=task, difficulty=difficulty, d_model=d_model, n_layers=n_layers,
                     n_heads=d_model // 16, lr=rng.choice(LEARNING_RATES), batch_size=batch_size,
                     train_size=_train_size(rng, task, difficulty),
                     weight_decay=rng.choice(WEIGHT_DECAYS),
                     schedule=rng.choice(SCHEDULE_CHOICES), steps=steps, eval_size=EVAL_SIZE,
                     n_evals=N_EVALS, seed=rng.choice(SEEDS))


def sample_configs(*, n_runs: int, seed: int = 0, seconds_per_run: float = 4.0,
                   tasks: tuple[str, ...] | None = None) -> list:
    """Draw ``n_runs`` distinct run configs at random from the sweep grid.

    Args:
        n_runs: how many configs (>= 1).
        seed: sweep seed; the same seed gives the same list.
        seconds_per_run: target CPU seconds of training per run (sets the step counts).
        tasks: draw only these tasks; ``None`` draws all of :data:`DIFFICULTIES`.

    Returns:
        A list of :class:`~metastop.generate.train.RunConfig`, without duplicates.
    """
    if n_runs < 1:
        raise ParameterError(f"n_runs must be >= 1, got n_runs={n_runs!r}")
    if not seconds_per_run > 0:
        raise ParameterError(f"seconds_per_run must be > 0, got seconds_per_run={seconds_per_run!r}")
    unknown = sorted(set(tasks or ()) - set(DIFFICULTIES))
    if unknown or (tasks is not None and not tasks):
        raise ParameterError(f"tasks must be a non-empty subset of {sorted(DIFFICULTIES)}, "
                             f"got tasks={tasks!r}")
    rng = random.Random(f"sweep/{seed}")
    choices = tuple(sorted(tasks or DIFFICULTIES))
    configs: dict[str, object] = {}
    while len(configs) < n_runs:
        config = _draw_config(rng, seconds_per_run, choices)
        configs.setdefault(config.run_id, config)
    return list(configs.values())


def cache_path(cache_dir: str | Path, config) -> Path:
    """Where the finished curve of ``config`` is stored."""
    return Path(cache_dir) / f"{config.run_id}.parquet"


def run_one(config, *, cache_dir: str | Path, deadline: float | None = None,
            max_seconds: float | None = None) -> tuple[str, float | None]:
    """Train one run (single-threaded) and store its curve; a worker of :func:`run_sweep`.

    Returns:
        ``(run_id, seconds)``; seconds is ``None`` when the deadline passed before starting
        or the run stopped before its first evaluation.
    """
    import torch

    from .train import train_run

    if deadline is not None and time.time() > deadline:
        return config.run_id, None
    torch.set_num_threads(1)
    result = train_run(config, max_seconds=max_seconds)
    if not result.values:
        return config.run_id, None
    with atomic_path(cache_path(cache_dir, config)) as tmp:
        result.frame().to_parquet(tmp, index=False)
    return config.run_id, result.seconds


def _run_parallel(todo: list, *, cache_dir: Path, n_jobs: int, deadline: float | None,
                  max_seconds: float | None) -> Iterator[tuple[str, float | None]]:
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
    return parallel(delayed(run_one)(c, cache_dir=cache_dir, deadline=deadline,
                                     max_seconds=max_seconds) for c in todo)


def run_sweep(configs: list, *, cache_dir: str | Path, n_jobs: int = 1,
              max_minutes: float | None = None, max_seconds_per_run: float | None = None,
              on_run: Callable[[int, int, str, float | None], None] | None = None) -> SweepOutcome:
    """Train every config not yet in ``cache_dir`` and gather all finished curves.

    Args:
        configs: run configs (see :func:`sample_configs`).
        cache_dir: folder of per-run Parquet files; finished runs there are skipped.
        n_jobs: worker processes (joblib); each uses one torch thread.
        max_minutes: start no new run after this many minutes; ``None``: no limit.
        max_seconds_per_run: cut a single run after this much time (marked ``truncated``).
        on_run: called as ``on_run(done, total, run_id, seconds)`` after each run.

    Returns:
        A :class:`SweepOutcome`.
    """
    if n_jobs == 0 or n_jobs < -1:
        raise ParameterError(f"n_jobs must be >= 1 or -1, got n_jobs={n_jobs!r}")
    started = time.time()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    todo = [c for c in configs if not cache_path(cache_dir, c).exists()]
    deadline = None if max_minutes is None else started + 60 * max_minutes
    trained = skipped = 0
    results = _run_parallel(todo, cache_dir=cache_dir, n_jobs=n_jobs, deadline=deadline,
                            max_seconds=max_seconds_per_run) if todo else []
    for done, (run_id, seconds) in enumerate(results, start=1):
        trained += seconds is not None
        skipped += seconds is None
        if on_run is not None:
            on_run(done, len(todo), run_id, seconds)
    frame = collect(configs, cache_dir=cache_dir)
    logger.info("sweep: %d trained, %d cached, %d skipped", trained,
                len(configs) - len(todo), skipped)
    return SweepOutcome(frame, trained, len(configs) - len(todo), skipped, time.time() - started)


def collect(configs: list, *, cache_dir: str | Path) -> pd.DataFrame:
    """The curve table of the configs whose runs are in ``cache_dir``, in config order."""
    paths = [cache_path(cache_dir, c) for c in configs]
    frames = [pd.read_parquet(p) for p in paths if p.exists()]
    if not frames:
        raise ParameterError(f"no finished run in cache_dir={str(cache_dir)!r} for the "
                             f"{len(configs)} configs given")
    return pd.concat(frames, ignore_index=True)

"""The sweep: which runs to train, and running them in parallel, resumably, within a deadline.

Configs are drawn at random (seeded) from per-task grids over difficulty, width, depth,
learning rate, batch size, training-set size, weight decay, schedule, seed and lever setting
(:data:`LEVERS`: fixed, ramped or adaptive batch; FreezeOut or adaptive freezing), with tasks
weighted (:data:`TASK_WEIGHTS`) so that most runs learn within their budget. The number of
steps of a run follows from a CPU cost model (training steps plus evaluations on the
held-out set) so that every run takes about the same CPU time (``seconds_per_run``); it
depends only on the config, never on measured time, so the sweep is deterministic.

Finished runs are stored one Parquet file per run under ``cache_dir`` and skipped on rerun.

Example:
    >>> configs = sample_configs(n_runs=4, seed=0)
    >>> frame = run_sweep(configs, cache_dir="data/.em_runs")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
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

DIFFICULTIES = {"addition": (2,), "reversal": (3, 4, 5), "sorting": (4, 5, 6),
                "modular": (31,), "copy": (1, 1, 1, 2), "qa": (1, 1, 1, 2)}
"""Difficulties drawn per task (a repeat weights a value): copy and qa at difficulty 2 rarely
learn within a few CPU seconds, so they are a quarter of those tasks' runs."""
TASK_WEIGHTS = {"sorting": 0.23, "reversal": 0.23, "qa": 0.2, "copy": 0.18, "addition": 0.08,
                "modular": 0.08}
"""Shares of the tasks in a sweep: most runs on tasks that learn within a few CPU seconds
(piloted), a few on addition and modular addition, which stay at the floor at these budgets."""
TRAIN_SIZES = (64, 256, 1024, 4096)
MODULAR_TRAIN_FRACTIONS = (0.3, 0.5, 0.8)
WIDTHS = (32, 48, 64)
DEPTHS = (1, 2, 3)
LEARNING_RATES = (1e-3, 3e-3, 1e-2)
BATCH_SIZES = (16, 32, 64)
WEIGHT_DECAYS = (0.0, 0.1, 1.0)
SCHEDULE_CHOICES = ("cosine", "linear", "constant_cooldown", "constant")
SEEDS = (0, 1, 2, 3, 4)
EVAL_SIZE = 512
N_EVALS = 20
MIN_STEPS_PER_SECOND, MAX_STEPS = 80, 3000  # at least 80 steps per target second (200 at 2.5 s)
RUN_OVERHEAD_MS = 200.0  # data, model and process start-up of one run
LEVERS = {"fixed": 0.55, "ramp": 0.15, "adaptive_batch": 0.10, "freezeout": 0.10,
          "adaptive_freeze": 0.10}
"""Lever settings of a run and their shares in a sweep: a fixed batch and no freezing, a
batch ramped 2x over the tokens, the noise-scale batch controller (up to 8x), FreezeOut,
and the AutoFreeze-style freezer (both at a fixed batch)."""
LR_SCALINGS = ("none", "sqrt", "linear")


@dataclass(frozen=True)
class SweepOutcome:
    """What one call of :func:`run_sweep` did.

    Attributes:
        frame: the curve table of every finished run among the configs (cached or new).
        n_trained: runs trained in this call.
        n_cached: runs found in the cache.
        n_skipped: runs not started because the deadline passed.
        seconds: wall time of the call.
        failures: ``(run_id, error)`` of runs that raised (logged; the sweep went on).
    """

    frame: pd.DataFrame
    n_trained: int
    n_cached: int
    n_skipped: int
    seconds: float
    failures: tuple[tuple[str, str], ...] = ()


@functools.lru_cache(maxsize=None)
def mean_sequence_length(task: str, difficulty: int) -> float:
    """Mean model-input length (``<bos>`` + prompt + answer) over 200 fixed samples."""
    rng = random.Random(f"length/{task}/{difficulty}")
    examples = [TASKS[task](rng, difficulty) for _ in range(200)]
    return sum(len(e.prompt) + len(e.answer) + 1 for e in examples) / len(examples)


def step_milliseconds(*, tokens_per_step: float, d_model: int, n_layers: int) -> float:
    """Estimated single-thread CPU time of one training step (forward, backward, AdamW);
    fitted on 24 shapes on the 2-core sweep machine (within about +-30%)."""
    width = d_model / 64
    return (1.5 + 3.5 * n_layers + 7.0e-3 * tokens_per_step * n_layers * width ** 2
            + 6.0e-3 * tokens_per_step * width)


def eval_milliseconds(*, eval_tokens: float, d_model: int, n_layers: int) -> float:
    """Estimated CPU time of one evaluation (one teacher-forced pass over the held-out set)."""
    width = d_model / 64
    return (5.0 + 8.0 * n_layers + 3.3e-3 * eval_tokens * n_layers * width ** 2
            + 6.0e-3 * eval_tokens * width)


def planned_steps(task: str, difficulty: int, *, d_model: int, n_layers: int, batch_size: int,
                  seconds_per_run: float, n_evals: int = N_EVALS,
                  eval_size: int = EVAL_SIZE, clip: bool = True) -> int:
    """Steps that make a run, its evaluations included, take about ``seconds_per_run``
    (clipped to ``[min_steps(seconds_per_run), MAX_STEPS]`` unless ``clip`` is false)."""
    length = mean_sequence_length(task, difficulty)
    per_step = step_milliseconds(tokens_per_step=batch_size * length, d_model=d_model,
                                 n_layers=n_layers)
    evals = n_evals * eval_milliseconds(eval_tokens=eval_size * length, d_model=d_model,
                                        n_layers=n_layers)
    steps = int((1000 * seconds_per_run - RUN_OVERHEAD_MS - evals) / per_step)
    return max(min_steps(seconds_per_run), min(MAX_STEPS, steps)) if clip else steps


def min_steps(seconds_per_run: float) -> int:
    """The fewest steps a run of ``seconds_per_run`` gets (cheap shapes are preferred, see
    ``_draw_shape``), so that most runs have time to learn."""
    return max(1, round(MIN_STEPS_PER_SECOND * seconds_per_run))


def _train_size(rng: random.Random, task: str, difficulty: int) -> int:
    if task == "modular":
        return int(rng.choice(MODULAR_TRAIN_FRACTIONS) * (difficulty ** 2 - EVAL_SIZE))
    if (task, difficulty) in (("addition", 2), ("reversal", 3)):  # few distinct prompts
        return rng.choice(TRAIN_SIZES[:3])
    return rng.choice(TRAIN_SIZES)


def _lever_fields(rng: random.Random, lever: str, batch_size: int) -> dict:
    """The ``RunConfig`` fields of one lever setting (see :data:`LEVERS`)."""
    if lever == "ramp":
        return {"batch_rule": "ramp", "max_batch_size": 2 * batch_size,
                "lr_scaling": rng.choice(LR_SCALINGS)}
    if lever == "adaptive_batch":
        return {"batch_rule": "adaptive", "micro_batch": batch_size // 2,
                "max_batch_size": 8 * batch_size, "lr_scaling": rng.choice(LR_SCALINGS)}
    if lever in ("freezeout", "adaptive_freeze"):
        return {"freeze_rule": "freezeout" if lever == "freezeout" else "adaptive"}
    return {}


def _draw_shape(rng: random.Random, task: str, difficulty: int,
                seconds_per_run: float) -> tuple[int, int, int]:
    """Width, depth and batch size, redrawn (up to 20 times) while the cost model gives the
    run fewer than ``min_steps`` steps in ``seconds_per_run``; if none fits, the cheapest
    shape drawn. So no run overshoots its time by much."""
    tried = []
    for _ in range(20):
        shape = rng.choice(WIDTHS), rng.choice(DEPTHS), rng.choice(BATCH_SIZES)
        steps = planned_steps(task, difficulty, d_model=shape[0], n_layers=shape[1],
                              batch_size=shape[2], seconds_per_run=seconds_per_run, clip=False)
        if steps >= min_steps(seconds_per_run):
            return shape
        tried.append((-steps, shape))
    return min(tried)[1]


def _draw_config(rng: random.Random, seconds_per_run: float, tasks: tuple[str, ...],
                 levers: tuple[str, ...]):
    from .train import RunConfig

    task = rng.choices(tasks, weights=[TASK_WEIGHTS[t] for t in tasks])[0]
    difficulty = rng.choice(DIFFICULTIES[task])
    d_model, n_layers, batch_size = _draw_shape(rng, task, difficulty, seconds_per_run)
    steps = planned_steps(task, difficulty, d_model=d_model, n_layers=n_layers,
                          batch_size=batch_size, seconds_per_run=seconds_per_run)
    lever = rng.choices(levers, weights=[LEVERS[k] for k in levers])[0]
    return RunConfig(task=task, difficulty=difficulty, d_model=d_model, n_layers=n_layers,
                     n_heads=d_model // 16, lr=rng.choice(LEARNING_RATES), batch_size=batch_size,
                     train_size=_train_size(rng, task, difficulty),
                     weight_decay=rng.choice(WEIGHT_DECAYS),
                     schedule=rng.choice(SCHEDULE_CHOICES), steps=steps, eval_size=EVAL_SIZE,
                     n_evals=N_EVALS, seed=rng.choice(SEEDS),
                     **_lever_fields(rng, lever, batch_size))


def sample_configs(*, n_runs: int, seed: int = 0, seconds_per_run: float = 4.0,
                   tasks: tuple[str, ...] | None = None,
                   levers: tuple[str, ...] | None = None) -> list:
    """Draw ``n_runs`` distinct run configs at random from the sweep grid.

    Args:
        n_runs: how many configs (>= 1).
        seed: sweep seed; the same seed gives the same list.
        seconds_per_run: target CPU seconds of training per run (sets the step counts).
        tasks: draw only these tasks; ``None`` draws all of :data:`DIFFICULTIES`.
        levers: draw only these lever settings (keys of :data:`LEVERS`, in their relative
            shares); ``None`` draws all.

    Returns:
        A list of :class:`~metastop.generate.train.RunConfig`, without duplicates.
    """
    if n_runs < 1:
        raise ParameterError(f"n_runs must be >= 1, got n_runs={n_runs!r}")
    if not seconds_per_run > 0:
        raise ParameterError(f"seconds_per_run must be > 0, got seconds_per_run={seconds_per_run!r}")
    _check_subset("tasks", tasks, DIFFICULTIES)
    _check_subset("levers", levers, LEVERS)
    rng = random.Random(f"sweep/{seed}")
    choices = tuple(sorted(tasks or DIFFICULTIES))
    lever_choices = tuple(k for k in LEVERS if levers is None or k in levers)
    configs: dict[str, object] = {}
    while len(configs) < n_runs:
        config = _draw_config(rng, seconds_per_run, choices, lever_choices)
        configs.setdefault(config.run_id, config)
    return list(configs.values())


def _check_subset(name: str, given: tuple[str, ...] | None, allowed) -> None:
    if given is not None and (not given or set(given) - set(allowed)):
        raise ParameterError(f"{name} must be a non-empty subset of {sorted(allowed)}, "
                             f"got {name}={given!r}")


def cache_path(cache_dir: str | Path, config) -> Path:
    """Where the finished curve of ``config`` is stored."""
    return Path(cache_dir) / f"{config.run_id}.parquet"


def run_one(config, *, cache_dir: str | Path, deadline: float | None = None,
            max_seconds: float | None = None) -> tuple[str, float | None, str | None]:
    """Train one run (single-threaded) and store its curves; a worker of :func:`run_sweep`.

    Returns:
        ``(run_id, seconds, error)``; seconds is ``None`` when the deadline passed before
        starting, the run stopped before its first evaluation, or it failed; ``error`` says
        why a run failed (it is also logged), ``None`` otherwise.
    """
    import torch

    from .train import train_run

    if deadline is not None and time.time() > deadline:
        return config.run_id, None, None
    torch.set_num_threads(1)
    try:
        result = train_run(config, max_seconds=max_seconds)
    except (ParameterError, RuntimeError, ValueError) as error:  # one bad run, not the sweep
        logger.error("run %s failed: %s: %s", config.run_id, type(error).__name__, error)
        return config.run_id, None, f"{type(error).__name__}: {error}"
    if not result.values:
        return config.run_id, None, None
    with atomic_path(cache_path(cache_dir, config)) as tmp:
        result.frame().to_parquet(tmp, index=False)
    return config.run_id, result.seconds, None


def _run_parallel(todo: list, *, cache_dir: Path, n_jobs: int, deadline: float | None,
                  max_seconds: float | None) -> Iterator[tuple[str, float | None, str | None]]:
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
    failures = []
    results = _run_parallel(todo, cache_dir=cache_dir, n_jobs=n_jobs, deadline=deadline,
                            max_seconds=max_seconds_per_run) if todo else []
    for done, (run_id, seconds, error) in enumerate(results, start=1):
        trained += seconds is not None
        skipped += seconds is None and error is None
        if error is not None:
            failures.append((run_id, error))
        if on_run is not None:
            on_run(done, len(todo), run_id, seconds)
    frame = collect(configs, cache_dir=cache_dir)
    logger.info("sweep: %d trained, %d cached, %d skipped, %d failed", trained,
                len(configs) - len(todo), skipped, len(failures))
    return SweepOutcome(frame, trained, len(configs) - len(todo), skipped, time.time() - started,
                        tuple(failures))


def collect(configs: list, *, cache_dir: str | Path) -> pd.DataFrame:
    """The curve table of the configs whose runs are in ``cache_dir``, in config order."""
    paths = [cache_path(cache_dir, c) for c in configs]
    frames = [pd.read_parquet(p) for p in paths if p.exists()]
    if not frames:
        raise ParameterError(f"no finished run in cache_dir={str(cache_dir)!r} for the "
                             f"{len(configs)} configs given")
    return pd.concat(frames, ignore_index=True)

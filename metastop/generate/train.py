"""Train one tiny transformer on one task and record its exact-match and eval-loss curves.

Token counting: every training example is a sequence ``<bos> prompt answer <eos>`` minus its
last token (the model input). ``tokens`` counts those input positions exactly, padding
excluded: a sequence of ``n`` characters (prompt + answer) adds ``n + 1`` tokens.

Token budget: the run draws its whole example stream up front from the seed (shuffled
epochs of the training set). Its budget is the tokens of the first ``steps * batch_size``
examples of that stream, and the run trains until exactly those examples are spent,
whatever its batch rule: a run whose batch grows takes fewer optimizer steps for the same
tokens. The learning-rate schedule follows token progress, so it is comparable across
batch rules. Evaluations fall at the first step that crosses each ``1/n_evals`` of the
budget.

Example:
    >>> result = train_run(RunConfig(task="copy", difficulty=3, steps=40, n_evals=4))  # doctest: +SKIP
    >>> result.frame()[["curve_id", "tokens", "value"]]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import ParameterError
from .evalset import encode_examples
from .levers import (BATCH_RULES, FREEZE_RULES, LR_SCALING, LeverEvent, batch_rule,
                     freeze_rule)
from .loop import lr_factor, run_loop  # noqa: F401  (lr_factor is re-exported)
from .model import TinyDecoder
from .tasks import VOCAB_SIZE, check_task, make_split

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "linear", "constant_cooldown", "constant")
METRIC = "exact_match"
LOSS_METRIC = "eval_loss"


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run; equal configs give identical curves on CPU.

    ``steps`` and ``batch_size`` set the token budget (``steps`` optimizer steps at
    ``batch_size``); ``micro_batch`` (0: ``batch_size``) is the examples per forward pass,
    ``max_batch_size`` (0: ``batch_size``) the ceiling of a ``ramp`` or ``adaptive`` batch.

    Example:
        >>> RunConfig(task="addition", difficulty=2, lr=1e-3).run_id[:11]
        'addition-d2'
    """

    task: str = "addition"
    difficulty: int = 2
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    lr: float = 1e-3
    batch_size: int = 32
    train_size: int = 2000
    weight_decay: float = 0.0
    schedule: str = "cosine"
    steps: int = 600
    warmup_frac: float = 0.05
    cooldown_frac: float = 0.2
    eval_size: int = 512
    n_evals: int = 30
    seed: int = 0
    micro_batch: int = 0
    max_batch_size: int = 0
    batch_rule: str = "fixed"
    lr_scaling: str = "none"
    freeze_rule: str = "none"

    def __post_init__(self) -> None:
        check_task(self.task, self.difficulty)
        for name, allowed in (("schedule", SCHEDULES), ("batch_rule", BATCH_RULES),
                              ("freeze_rule", FREEZE_RULES), ("lr_scaling", LR_SCALING)):
            if getattr(self, name) not in allowed:
                raise ParameterError(f"{name} must be one of {allowed}, got "
                                     f"{name}={getattr(self, name)!r}")
        for name in ("d_model", "n_layers", "n_heads", "batch_size", "train_size", "steps",
                     "eval_size", "n_evals"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name} must be >= 1, got {name}={getattr(self, name)!r}")
        if self.n_evals > self.steps:
            raise ParameterError(f"n_evals must be <= steps={self.steps}, got n_evals={self.n_evals}")
        for name in ("lr", "weight_decay", "warmup_frac", "cooldown_frac"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ParameterError(f"{name} must be finite and >= 0, got {name}={value!r}")
        if self.warmup_frac + self.cooldown_frac >= 1:
            raise ParameterError(f"warmup_frac + cooldown_frac must be < 1, got "
                                 f"{self.warmup_frac} + {self.cooldown_frac}")
        _check_batching(self)

    @property
    def run_id(self) -> str:
        """A stable id: task, difficulty and a digest of every field."""
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.task}-d{self.difficulty}-{digest}"


def _check_batching(config: RunConfig) -> None:
    """Micro-batch, batch and ceiling must fit together and suit the batch rule."""
    for name in ("micro_batch", "max_batch_size"):
        if getattr(config, name) < 0:
            raise ParameterError(f"{name} must be >= 0 (0: batch_size), got "
                                 f"{name}={getattr(config, name)!r}")
    micro = config.micro_batch or config.batch_size
    ceiling = config.max_batch_size or config.batch_size
    for name, value in (("batch_size", config.batch_size), ("max_batch_size", ceiling)):
        if value % micro:
            raise ParameterError(f"{name} must be a multiple of micro_batch={micro}, "
                                 f"got {name}={value}")
    if config.batch_rule == "fixed" and ceiling != config.batch_size:
        raise ParameterError(f"max_batch_size must be 0 or batch_size={config.batch_size} for "
                             f"batch_rule='fixed', got max_batch_size={config.max_batch_size}")
    if config.batch_rule != "fixed" and ceiling <= config.batch_size:
        raise ParameterError(f"max_batch_size must be > batch_size={config.batch_size} for "
                             f"batch_rule={config.batch_rule!r}, got "
                             f"max_batch_size={config.max_batch_size}")
    if config.batch_rule == "adaptive" and config.batch_size < 2 * micro:
        raise ParameterError(f"batch_size must be >= 2 * micro_batch={micro} for "
                             f"batch_rule='adaptive' (two batch sizes estimate the noise "
                             f"scale), got batch_size={config.batch_size}")


@dataclass(frozen=True)
class RunResult:
    """The curves of one run: held-out exact match and eval loss at each evaluation.

    Attributes:
        config: the run's configuration.
        tokens: cumulative training input tokens at each evaluation.
        steps: optimizer steps done at each evaluation.
        values: held-out exact match (fraction in [0, 1]) at each evaluation.
        eval_losses: held-out cross-entropy on answer tokens at each evaluation.
        batch_sizes: examples per optimizer step in effect at each evaluation.
        frozen: frozen blocks at each evaluation.
        flops: cumulative backward FLOPs spent at each evaluation.
        budget: the planned total input tokens of the run.
        optimizer_steps: optimizer steps of the whole run.
        backward_flops: backward FLOPs spent (4 x non-embedding parameters per token,
            less the frozen prefix).
        backward_flops_saved: backward FLOPs that frozen blocks did not spend.
        events: batch-size and freezing changes, in order.
        seconds: wall time of the run (not part of the curve; varies between machines).
        truncated: whether the run hit its time limit before spending its budget.
    """

    config: RunConfig
    tokens: tuple[int, ...]
    steps: tuple[int, ...]
    values: tuple[float, ...]
    eval_losses: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    frozen: tuple[int, ...]
    flops: tuple[float, ...]
    budget: int
    optimizer_steps: int
    backward_flops: float
    backward_flops_saved: float
    events: tuple[LeverEvent, ...] = ()
    seconds: float = field(default=0.0, compare=False)
    truncated: bool = False

    def frame(self) -> pd.DataFrame:
        """Both curves in the curve-table schema: ``<run_id>/em`` then ``<run_id>/eval_loss``;
        per-point columns ``step``, ``current_batch_size``, ``frozen_blocks`` and
        ``backward_flops``; hyperparameters as metadata columns."""
        run_id = self.config.run_id
        points = {"tokens": np.asarray(self.tokens, np.int64), "budget": self.budget,
                  "step": np.asarray(self.steps, np.int64),
                  "current_batch_size": np.asarray(self.batch_sizes, np.int64),
                  "frozen_blocks": np.asarray(self.frozen, np.int64),
                  "backward_flops": np.asarray(self.flops, np.float64)}
        em = pd.DataFrame({"curve_id": f"{run_id}/em", "run_id": run_id,
                           "task": self.config.task, "metric": METRIC, "direction": "maximize",
                           "value": np.asarray(self.values, np.float64), **points})
        loss = em.assign(curve_id=f"{run_id}/eval_loss", metric=LOSS_METRIC,
                         direction="minimize", value=np.asarray(self.eval_losses, np.float64))
        frame = pd.concat([em, loss], ignore_index=True)
        for key, value in asdict(self.config).items():
            if key != "task":
                frame[key] = value
        frame["optimizer_steps"] = self.optimizer_steps
        frame["truncated"] = self.truncated
        return frame


def example_stream(n_examples: int, *, n_drawn: int, seed: int) -> torch.Tensor:
    """The training example indices in the order the run reads them: shuffled epochs."""
    generator = torch.Generator().manual_seed(seed)
    epochs = [torch.randperm(n_examples, generator=generator)
              for _ in range(-(-n_drawn // n_examples))]
    return torch.cat(epochs)[:n_drawn]


def _build(config: RunConfig, max_len: int) -> tuple[TinyDecoder, torch.optim.Optimizer]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = TinyDecoder(VOCAB_SIZE, d_model=config.d_model, n_layers=config.n_layers,
                            n_heads=config.n_heads, max_len=max_len)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.lr, betas=(0.9, 0.98))
    return model, optimizer


def _decision_log(config: RunConfig, log_path: str | Path | None, budget: int):
    if log_path is None:
        return None
    from ..stop.decisionlog import DecisionLog, LogContext

    return DecisionLog(log_path, LogContext(run_id=config.run_id, task=config.task,
                                            curve_id=f"{config.run_id}/em", budget=budget))


def train_run(config: RunConfig, *, max_seconds: float | None = None,
              log_path: str | Path | None = None) -> RunResult:
    """Train one model as ``config`` says and return its held-out curves.

    Args:
        config: the run.
        max_seconds: stop early (``truncated=True``) once this much wall time has passed;
            ``None`` spends the whole budget. A truncated run keeps its planned budget.
        log_path: a JSONL decision log for the batch-size and freezing changes (``None``:
            none written; the changes are in ``RunResult.events`` either way).
    """
    started = time.perf_counter()
    train, held_out = make_split(config.task, config.difficulty, train_size=config.train_size,
                                 eval_size=config.eval_size, seed=config.seed)
    train_data, eval_data = encode_examples(train), encode_examples(held_out)
    stream = example_stream(len(train), n_drawn=config.steps * config.batch_size,
                            seed=config.seed)
    cumulative = (train_data.lengths[stream] - 1).cumsum(0).numpy()
    model, optimizer = _build(config, max(train_data.ids.shape[1], eval_data.ids.shape[1]))
    log = _decision_log(config, log_path, int(cumulative[-1]))
    result = run_loop(config, model, optimizer, train_data, eval_data, stream, cumulative,
                      batches=batch_rule(config, log=log),
                      freezer=freeze_rule(config, model, optimizer, log=log),
                      deadline=None if max_seconds is None else started + max_seconds)
    seconds = time.perf_counter() - started
    logger.info("run %s: %d evals, final EM %.3f, %.1fs", config.run_id, len(result.values),
                result.values[-1] if result.values else float("nan"), seconds)
    return RunResult(config=config, **result.fields(), seconds=seconds)

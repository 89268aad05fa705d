"""Train one tiny transformer on one task and record its exact-match curve.

Token counting: every training step feeds a batch of sequences ``<bos> prompt answer <eos>``
minus their last token (the model input). ``tokens`` counts those input positions exactly,
padding excluded: a sequence of ``n`` characters (prompt + answer) adds ``n + 1`` tokens
(``<bos>`` plus the characters). The planned budget is known before training because the
whole batch order is drawn up front from the seed.

Example:
    >>> result = train_run(RunConfig(task="copy", difficulty=3, steps=40, n_evals=4))  # doctest: +SKIP
    >>> result.frame()[["tokens", "value"]]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ..errors import ParameterError
from .model import TinyDecoder
from .tasks import BOS, EOS, PAD, VOCAB_SIZE, Example, check_task, encode, make_split

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "linear", "constant_cooldown", "constant")
METRIC = "exact_match"


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run; equal configs give identical curves on CPU.

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
    eval_size: int = 128
    n_evals: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        check_task(self.task, self.difficulty)
        if self.schedule not in SCHEDULES:
            raise ParameterError(f"schedule must be one of {SCHEDULES}, got schedule={self.schedule!r}")
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

    @property
    def run_id(self) -> str:
        """A stable id: task, difficulty and a digest of every field."""
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.task}-d{self.difficulty}-{digest}"


@dataclass(frozen=True)
class RunResult:
    """The exact-match curve of one run.

    Attributes:
        config: the run's configuration.
        tokens: cumulative training input tokens at each evaluation.
        steps: optimizer steps done at each evaluation.
        values: held-out exact match (fraction in [0, 1]) at each evaluation.
        budget: the planned total input tokens of the run.
        seconds: wall time of the run (not part of the curve; varies between machines).
        truncated: whether the run hit its time limit before its planned steps.
    """

    config: RunConfig
    tokens: tuple[int, ...]
    steps: tuple[int, ...]
    values: tuple[float, ...]
    budget: int
    seconds: float = field(default=0.0, compare=False)
    truncated: bool = False

    def frame(self) -> pd.DataFrame:
        """The curve in the curve-table schema, hyperparameters as metadata columns."""
        cfg = asdict(self.config)
        cfg.pop("task")
        frame = pd.DataFrame({"curve_id": f"{self.config.run_id}/em", "run_id": self.config.run_id,
                              "task": self.config.task, "metric": METRIC,
                              "direction": "maximize", "tokens": np.asarray(self.tokens, np.int64),
                              "value": np.asarray(self.values, np.float64),
                              "budget": self.budget, "step": np.asarray(self.steps, np.int64)})
        for key, value in cfg.items():
            frame[key] = value
        frame["truncated"] = self.truncated
        return frame


def lr_factor(schedule: str, step: int, *, steps: int, warmup_frac: float,
              cooldown_frac: float) -> float:
    """The learning-rate multiplier for optimizer step ``step`` (0-based) of ``steps``.

    Linear warmup over ``warmup_frac`` of the steps, then ``cosine`` or ``linear`` decay to
    zero, ``constant``, or ``constant_cooldown`` (constant, then a linear decay to zero over
    the last ``cooldown_frac`` of the steps).
    """
    warmup = int(warmup_frac * steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "constant_cooldown":
        cooldown_start = steps - int(cooldown_frac * steps)
        return 1.0 if step < cooldown_start else (steps - step) / max(1, steps - cooldown_start)
    return 1.0


@dataclass(frozen=True)
class _Encoded:
    """A set of examples as padded id tensors."""

    ids: torch.Tensor  # (n, max_len) <bos> prompt answer <eos>, right padded
    lengths: torch.Tensor  # (n,) sequence lengths
    prompt_lengths: torch.Tensor  # (n,) <bos> + prompt
    answers: torch.Tensor  # (n, max_answer + 1) answer <eos>, right padded


def encode_examples(examples: list[Example]) -> _Encoded:
    """Tokenise examples into padded tensors."""
    prompts = [[BOS, *encode(e.prompt)] for e in examples]
    answers = [[*encode(e.answer), EOS] for e in examples]
    seqs = [p + a for p, a in zip(prompts, answers)]
    return _Encoded(_pad(seqs), torch.tensor([len(s) for s in seqs]),
                    torch.tensor([len(p) for p in prompts]), _pad(answers))


def _pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row)
    return out


def batch_order(n_examples: int, *, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the examples of every step, ``(steps, batch_size)``: shuffled epochs."""
    generator = torch.Generator().manual_seed(seed)
    need = steps * batch_size
    epochs = [torch.randperm(n_examples, generator=generator)
              for _ in range(-(-need // n_examples))]
    return torch.cat(epochs)[:need].view(steps, batch_size)


def eval_steps(cumulative: np.ndarray, n_evals: int) -> np.ndarray:
    """0-based steps after which to evaluate: first crossing of each 1/n_evals of the budget."""
    thresholds = cumulative[-1] * np.arange(1, n_evals + 1) / n_evals
    return np.unique(np.searchsorted(cumulative, thresholds - 1e-9))


@torch.no_grad()
def exact_match(model: TinyDecoder, data: _Encoded) -> float:
    """Greedy-decode every held-out prompt; share whose answer and ``<eos>`` match exactly."""
    model.train(False)  # evaluation mode
    n, answer_len = data.answers.shape
    width = int(data.prompt_lengths.max()) + answer_len
    buffer = torch.full((n, width), PAD, dtype=torch.long)
    rows = torch.arange(n)
    for i, length in enumerate(data.prompt_lengths.tolist()):
        buffer[i, :length] = data.ids[i, :length]
    for j in range(answer_len):
        position = data.prompt_lengths + j
        logits = model(buffer[:, :int(position.max())])
        buffer[rows, position] = logits[rows, position - 1].argmax(-1)
    generated = buffer[rows.unsqueeze(1), data.prompt_lengths.unsqueeze(1) + torch.arange(answer_len)]
    wanted = data.answers != PAD
    model.train()
    return float(((generated == data.answers) | ~wanted).all(1).float().mean())


def _step(model, optimizer, batch: torch.Tensor, data: _Encoded, lr: float) -> None:
    """One optimizer step with the loss on answer tokens (and the final ``<eos>``) only."""
    length = int(data.lengths[batch].max())
    ids = data.ids[batch, :length]
    inputs, targets = ids[:, :-1], ids[:, 1:]
    position = torch.arange(length - 1)
    mask = ((position >= data.prompt_lengths[batch, None] - 1)
            & (position < data.lengths[batch, None] - 1))
    logits = model(inputs)
    loss = F.cross_entropy(logits[mask], targets[mask])
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


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


def train_run(config: RunConfig, *, max_seconds: float | None = None) -> RunResult:
    """Train one model as ``config`` says and return its held-out exact-match curve.

    Args:
        config: the run.
        max_seconds: stop early (``truncated=True``) once this much wall time has passed;
            ``None`` runs all planned steps. A truncated run keeps its planned budget.
    """
    started = time.perf_counter()
    train, held_out = make_split(config.task, config.difficulty, train_size=config.train_size,
                                 eval_size=config.eval_size, seed=config.seed)
    train_data, eval_data = encode_examples(train), encode_examples(held_out)
    max_len = max(train_data.ids.shape[1], eval_data.ids.shape[1])
    model, optimizer = _build(config, max_len)
    order = batch_order(len(train), steps=config.steps, batch_size=config.batch_size,
                        seed=config.seed)
    cumulative = (train_data.lengths[order] - 1).sum(1).cumsum(0).numpy()
    evals = set(eval_steps(cumulative, config.n_evals).tolist())
    tokens, steps, values, truncated = [], [], [], False
    for step in range(config.steps):
        factor = lr_factor(config.schedule, step, steps=config.steps,
                           warmup_frac=config.warmup_frac, cooldown_frac=config.cooldown_frac)
        _step(model, optimizer, order[step], train_data, config.lr * factor)
        if step in evals:
            tokens.append(int(cumulative[step]))
            steps.append(step + 1)
            values.append(exact_match(model, eval_data))
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            truncated = step + 1 < config.steps
            break
    seconds = time.perf_counter() - started
    logger.info("run %s: %d evals, final EM %.3f, %.1fs", config.run_id, len(values),
                values[-1] if values else float("nan"), seconds)
    return RunResult(config, tuple(tokens), tuple(steps), tuple(values), int(cumulative[-1]),
                     seconds, truncated)

"""The token-budgeted training loop of a generated run, with gradient accumulation.

One optimizer step reads the next ``accumulation * micro_batch`` examples of the run's
example stream (the last step only what is left of the budget) as micro-batches, each
backward pass on its answer-token loss divided by the number of micro-batches. The batch
rule and the freeze rule (:mod:`metastop.generate.levers`) are called in the protocol of
``metastop.adapt``: ``after_backward`` after each micro-batch (batch rule) or after the
last one (freeze rule), ``after_step`` after ``optimizer.step()``.

Example:
    >>> lr_factor("cosine", 0.5, warmup_frac=0.0, cooldown_frac=0.2)
    0.5
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .evalset import Encoded, answer_loss, evaluate
from .levers import LeverEvent

GRAD_CLIP = 1.0


def lr_factor(schedule: str, progress: float, *, warmup_frac: float,
              cooldown_frac: float) -> float:
    """The learning-rate multiplier at ``progress`` (share of the token budget, in [0, 1]).

    Linear warmup over the first ``warmup_frac`` of the tokens, then ``cosine`` or ``linear``
    decay to zero, ``constant``, or ``constant_cooldown`` (constant, then a linear decay to
    zero over the last ``cooldown_frac`` of the tokens).
    """
    if progress < warmup_frac:
        return progress / warmup_frac
    decay = (progress - warmup_frac) / max(1e-12, 1.0 - warmup_frac)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, decay)))
    if schedule == "linear":
        return max(0.0, 1.0 - decay)
    if schedule == "constant_cooldown" and progress > 1.0 - cooldown_frac:
        return max(0.0, (1.0 - progress) / cooldown_frac)
    return 1.0


@dataclass
class Trace:
    """What a run records as it goes (turned into a ``RunResult`` by ``train_run``)."""

    budget: int
    tokens: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    frozen: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    events: list[LeverEvent] = field(default_factory=list)
    optimizer_steps: int = 0
    backward_flops: float = 0.0
    backward_flops_saved: float = 0.0
    truncated: bool = False

    def fields(self) -> dict:
        """The ``RunResult`` fields, lists as tuples."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in vars(self).items()}

    def evaluate(self, model: torch.nn.Module, data: Encoded, *, tokens: int,
                 batch_size: int, frozen: int) -> None:
        """Record EM and eval loss of ``model`` now."""
        self.tokens.append(tokens)
        self.steps.append(self.optimizer_steps)
        scores = evaluate(model, data)
        self.values.append(scores.exact_match)
        self.eval_losses.append(scores.eval_loss)
        self.batch_sizes.append(batch_size)
        self.frozen.append(frozen)
        self.flops.append(self.backward_flops)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Encoded,
          rows: torch.Tensor, *, batches, freezer, lr: float, full: bool) -> None:
    """One optimizer step over ``rows`` in micro-batches; a partial (last) step does not feed
    the batch rule, whose estimate assumes its own accumulation."""
    chunks = rows.split(batches.micro_batch)
    optimizer.zero_grad(set_to_none=True)
    for index, chunk in enumerate(chunks):
        (answer_loss(model, data, chunk) / len(chunks)).backward()
        if full:
            batches.after_backward(model, index)
    freezer.after_backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()


def _after_step(trace: Trace, *, batches, freezer, tokens: int, spent_tokens: int) -> None:
    """Count the step's backward FLOPs, then let the rules change batch and frozen blocks."""
    spent, saved = freezer.backward_flops(spent_tokens)
    trace.backward_flops += spent
    trace.backward_flops_saved += saved
    trace.optimizer_steps += 1
    step = trace.optimizer_steps
    event = batches.after_step(step=step, tokens=tokens)
    if event is not None:
        trace.events.append(event)
    for name in freezer.after_step(step=step, tokens=tokens, progress=tokens / trace.budget):
        trace.events.append(LeverEvent("freeze", step, tokens, f"froze {name}"))


def run_loop(config, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             train_data: Encoded, eval_data: Encoded, stream: torch.Tensor,
             cumulative: np.ndarray, *, batches, freezer, deadline: float | None) -> Trace:
    """Train until the stream (the budget) is spent or ``deadline`` (perf_counter) passes."""
    trace = Trace(budget=int(cumulative[-1]))
    thresholds = trace.budget * np.arange(1, config.n_evals + 1) / config.n_evals
    position = next_eval = 0
    while position < len(stream):
        before = int(cumulative[position - 1]) if position else 0
        batch = batches.plan(before / trace.budget) * batches.micro_batch
        rows = stream[position:position + batch]
        position += len(rows)
        after = int(cumulative[position - 1])
        progress = 0.5 * (before + after) / trace.budget
        lr = config.lr * batches.lr_factor * lr_factor(
            config.schedule, progress, warmup_frac=config.warmup_frac,
            cooldown_frac=config.cooldown_frac)
        _step(model, optimizer, train_data, rows, batches=batches, freezer=freezer, lr=lr,
              full=len(rows) == batch)
        frozen = len(freezer.frozen)
        _after_step(trace, batches=batches, freezer=freezer, tokens=after,
                    spent_tokens=after - before)
        if after >= thresholds[next_eval] - 1e-6:
            trace.evaluate(model, eval_data, tokens=after, batch_size=batch, frozen=frozen)
            next_eval = int(np.searchsorted(thresholds, after + 1e-6, side="left"))
        if deadline is not None and time.perf_counter() > deadline:
            trace.truncated = position < len(stream)
            break
    return trace

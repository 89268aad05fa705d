"""A plain PyTorch loop that uses all three levers: stopping, batch size and freezing.

The model and task are those of ``examples/torch_loop.py`` (sum ten digits, exact match on
held-out examples), with the hidden layers as a ``ModuleList`` of blocks. Three metastop
objects share one decision log:

- ``BatchSizeController`` sets the gradient accumulation from the gradient noise scale,
- ``Freezer(collapse=0.05)`` freezes blocks, front to back, whose gradients have collapsed,
- ``StopController`` stops the run when the EM still to be gained is not worth its tokens.

The budget is in tokens, so a larger batch ends the run in fewer optimizer steps. Runs on CPU
in well under a minute.

Usage:
    .venv/bin/python examples/levers_loop.py
    .venv/bin/python examples/levers_loop.py --log decisions.jsonl
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from metastop.adapt import BatchSizeController, Freezer
from metastop.stop.controller import Reporting, StopController
from metastop.stop.decisionlog import DecisionLog, LogContext, read_logs

N_DIGITS = 10
N_CLASSES = 9 * N_DIGITS + 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200_000, help="the budget, in examples")
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--max-accumulation", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=10_000, help="examples between evals")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", default="levers.jsonl", help="JSONL decision log")
    return parser.parse_args()


class DigitSum(nn.Module):
    """An MLP whose hidden layers are blocks a ``Freezer`` can name; ``head`` is never frozen."""

    def __init__(self, width: int = 256, depth: int = 3):
        super().__init__()
        self.inp = nn.Linear(10 * N_DIGITS, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU())
                                    for _ in range(depth))
        self.head = nn.Linear(width, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples: ten random digits (as one-hot rows) and the sum of the digits."""
    digits = torch.randint(0, 10, (n, N_DIGITS), generator=generator)
    return nn.functional.one_hot(digits, 10).float().flatten(1), digits.sum(dim=1)


@torch.no_grad()
def exact_match(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    em = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train()
    return em


def train_step(model, optimizer, control, freezer, data, args) -> int:
    """One optimizer step over ``control.accumulation`` micro-batches; the examples used."""
    optimizer.zero_grad()
    for index in range(control.accumulation):
        x, y = batch(args.micro_batch, data)
        (nn.functional.cross_entropy(model(x), y) / control.accumulation).backward()
        control.after_backward(model, index)
    freezer.after_backward()
    for group in optimizer.param_groups:
        group["lr"] = args.lr * control.lr_factor
    optimizer.step()
    return control.accumulation * args.micro_batch


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    data = torch.Generator().manual_seed(args.seed)
    held_out = batch(4000, torch.Generator().manual_seed(args.seed + 1))
    model = DigitSum()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    log = DecisionLog(args.log, LogContext(run_id=f"seed{args.seed}", task="digit_sum"))
    control = BatchSizeController(micro_batch=args.micro_batch, min_accumulation=2,
                                  max_accumulation=args.max_accumulation, log=log)
    freezer = Freezer(model, collapse=0.05, optimizer=optimizer, log=log)
    budget = args.examples * N_DIGITS  # tokens: ten digits per example
    stopper = StopController(budget=budget, task="digit_sum", run_id=f"seed{args.seed}",
                             reporting=Reporting(log_path=args.log))
    start, examples, step, next_eval, flops = time.perf_counter(), 0, 0, args.eval_every, 0.0
    while examples < args.examples and not stopper.should_stop:
        used = train_step(model, optimizer, control, freezer, data, args)
        examples, step = examples + used, step + 1
        flops += freezer.backward_flops(used * N_DIGITS).saved
        control.after_step(step=step, tokens=examples * N_DIGITS)
        freezer.after_step(step=step, tokens=examples * N_DIGITS, progress=examples / args.examples)
        if examples >= next_eval:
            next_eval += args.eval_every
            decision = stopper.observe(examples * N_DIGITS, exact_match(model, *held_out))
            print(f"{step:>5} steps {examples:>7} examples  batch {control.batch_size:>4}  "
                  f"EM {decision.value:.3f}  {decision.reason.value}")
    events = read_logs(args.log).events
    print(f"\n{'stopped' if stopper.should_stop else 'finished'} after {examples} of "
          f"{args.examples} examples in {step} optimizer steps, "
          f"{time.perf_counter() - start:.1f} s; best EM {stopper.best:.3f}; "
          f"{len(events)} lever changes logged; frozen: {list(freezer.frozen) or 'none'}; "
          f"backward FLOPs saved {flops:.3g}")


if __name__ == "__main__":
    main()

"""A plain PyTorch training loop stopped by metastop's ``StopController``.

The model is a small MLP that learns an exact-answer task: read ten digits, answer their sum
(one of 91 classes). Every ``--eval-every`` steps the loop measures exact match (EM) on fresh
held-out examples and asks the controller whether the EM still to be gained is worth the
tokens; it stops when the answer is no. Runs on CPU in well under a minute.

Usage:
    .venv/bin/python examples/torch_loop.py
    .venv/bin/python examples/torch_loop.py --shadow --log decisions.jsonl
    .venv/bin/python examples/torch_loop.py --model models/my-model
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from metastop.predict.model import Predictor
from metastop.stop.controller import StopController, Reporting

N_DIGITS = 10
N_CLASSES = 9 * N_DIGITS + 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="planned steps (the budget)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="predictor directory (default: the shipped model)")
    parser.add_argument("--shadow", action="store_true", help="decide and log, never stop")
    parser.add_argument("--log", default=None, help="JSONL decision log")
    return parser.parse_args()


def batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` examples: ten random digits (as one-hot rows) and the sum of the digits."""
    digits = torch.randint(0, 10, (n, N_DIGITS), generator=generator)
    x = nn.functional.one_hot(digits, 10).float().flatten(1)
    return x, digits.sum(dim=1)


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(10 * N_DIGITS, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, N_CLASSES))


@torch.no_grad()
def exact_match(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    em = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train()
    return em


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    data = torch.Generator().manual_seed(args.seed)
    held_out = batch(4000, torch.Generator().manual_seed(args.seed + 1))
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    tokens_per_step = args.batch_size * N_DIGITS
    controller = StopController(predictor=Predictor.load(args.model), budget=args.steps * tokens_per_step, curve_id="digit-sum/em",
                                run_id=f"seed{args.seed}", task="digit_sum", reporting=Reporting(log_path=args.log, shadow=args.shadow))
    print(f"{'step':>5} {'tokens':>9} {'EM':>6}  decision")
    start, step = time.perf_counter(), 0
    for step in range(1, args.steps + 1):
        x, y = batch(args.batch_size, data)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0:
            em = exact_match(model, *held_out)
            decision = controller.observe(step * tokens_per_step, em)
            print(f"{step:>5} {step * tokens_per_step:>9.2e} {em:>6.3f}  "
                  f"{decision.reason.value}: {decision.message}")
            if controller.should_stop:
                break
    spent = step / args.steps
    print(f"\n{'stopped' if step < args.steps else 'finished'} after {step} of {args.steps} "
          f"steps ({spent:.0%} of the budget, {1 - spent:.0%} saved) in "
          f"{time.perf_counter() - start:.1f} s; best EM {controller.best:.3f}")


if __name__ == "__main__":
    main()

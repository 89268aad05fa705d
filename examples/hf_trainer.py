"""A Hugging Face ``Trainer`` stopped by metastop, keeping its best checkpoint.

A tiny GPT-2, built locally (no download), learns to count: from its first token it must
continue ``start, start + 1, start + 2, ...`` (mod 64). The evaluation's
exact match is on 0-100, as the ``evaluate`` SQuAD metric gives it: metastop reads the scale
itself. The Trainer keeps the best checkpoint by that exact match and restores it at the end
(``load_best_model_at_end``), so the model after a stop scores the best value seen, not the
last one. Runs on CPU in well under a minute.

Usage:
    .venv/bin/python examples/hf_trainer.py
    .venv/bin/python examples/hf_trainer.py --log decisions.jsonl --output-dir /tmp/hf-run
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from metastop.integrations.hf import MetaStopCallback  # noqa: E402
from metastop.stop import Reporting  # noqa: E402

VOCAB, LENGTH = 64, 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, default=300, help="planned steps (the budget)")
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--output-dir", default=None, help="checkpoints (default: a temporary folder)")
    parser.add_argument("--log", default=None, help="JSONL decision log")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


class Sequences(torch.utils.data.Dataset):
    """Counting sequences mod ``VOCAB`` from random starts."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = (torch.randint(0, VOCAB, (n, 1), generator=g) + torch.arange(LENGTH)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def exact_match(prediction) -> dict[str, float]:
    """Share of sequences whose every predicted token is right, on 0-100."""
    logits, labels = prediction.predictions, prediction.label_ids
    guessed = torch.as_tensor(logits).argmax(dim=-1)[:, :-1]  # position i predicts token i + 1
    right = (guessed == torch.as_tensor(labels)[:, 1:]).all(dim=1)
    return {"exact_match": 100.0 * right.float().mean().item()}


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    output = args.output_dir or tempfile.mkdtemp(prefix="metastop-hf-")
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2)
    training = transformers.TrainingArguments(
        output, max_steps=args.max_steps, per_device_train_batch_size=16, learning_rate=3e-3,
        eval_strategy="steps", eval_steps=args.eval_steps, save_strategy="steps",
        save_steps=args.eval_steps, save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="exact_match", include_num_input_tokens_seen=True,
        logging_steps=args.eval_steps, report_to="none", use_cpu=True, disable_tqdm=True,
        seed=args.seed)
    # metric, direction (greater_is_better), scale (0-100) and budget (max_steps x tokens)
    # all come from the Trainer; the JSONL log is optional.
    stop = MetaStopCallback(reporting=Reporting(log_path=args.log) if args.log else None)
    trainer = transformers.Trainer(
        model=transformers.GPT2LMHeadModel(config), args=training,
        train_dataset=Sequences(2048, args.seed), eval_dataset=Sequences(128, args.seed + 1),
        compute_metrics=exact_match, callbacks=[stop])
    stop.bind(trainer)  # decisions also go through trainer.log to every reporter
    trainer.train()

    history = [(e["step"], e["eval_exact_match"]) for e in trainer.state.log_history
               if "eval_exact_match" in e]
    best_step, best = max(history, key=lambda item: item[1])
    final = trainer.evaluate()["eval_exact_match"]
    done = trainer.state.global_step
    print(f"\n{'stopped' if done < args.max_steps else 'finished'} at step {done} of "
          f"{args.max_steps} ({done / args.max_steps:.0%} of the budget); best exact match "
          f"{best:.1f} at step {best_step}; the model now scores {final:.1f} "
          f"(restored from {trainer.state.best_model_checkpoint})")


if __name__ == "__main__":
    main()

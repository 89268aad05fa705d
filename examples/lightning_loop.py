"""A Lightning ``Trainer`` stopped by metastop, keeping its best checkpoint.

A small network reads ten digits as token ids and answers their sum (one of 91 classes), as
in ``examples/torch_loop.py``. metastop watches the validation loss: its direction comes from
the ``ModelCheckpoint`` that keeps the best weights (``mode="min"``), the tokens are counted
from the batches (ten ids per example) and the budget is the planned steps' tokens. After a
stop, the best checkpoint is restored and scores the best validation loss seen. Runs on CPU
in well under a minute.

Usage:
    .venv/bin/python examples/lightning_loop.py
    .venv/bin/python examples/lightning_loop.py --log decisions.jsonl --root /tmp/pl-run
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import lightning.pytorch as pl
import torch
from torch import nn

from metastop.integrations.lightning import MetaStopCallback
from metastop.stop import Reporting

N_DIGITS = 10
N_CLASSES = 9 * N_DIGITS + 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="planned epochs (the budget)")
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--root", default=None, help="checkpoints and logs (default: a temporary folder)")
    parser.add_argument("--log", default=None, help="JSONL decision log")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def digit_sums(n: int, seed: int) -> torch.utils.data.TensorDataset:
    digits = torch.randint(0, 10, (n, N_DIGITS), generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.TensorDataset(digits, digits.sum(dim=1))


class DigitSum(pl.LightningModule):
    def __init__(self, steps_per_epoch: int = 50, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Embedding(10, 16), nn.Flatten(), nn.Linear(16 * N_DIGITS, 128),
                                 nn.ReLU(), nn.Linear(128, N_CLASSES))

    def training_step(self, batch, _):
        digits, total = batch
        return nn.functional.cross_entropy(self.net(digits), total)

    def validation_step(self, batch, _):
        digits, total = batch
        logits = self.net(digits)
        self.log("val_loss", nn.functional.cross_entropy(logits, total))
        self.log("val_em", (logits.argmax(dim=1) == total).float().mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        data = digit_sums(64 * self.hparams.steps_per_epoch, self.hparams.seed + self.current_epoch)
        return torch.utils.data.DataLoader(data, batch_size=64)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(digit_sums(2000, 10_000 + self.hparams.seed), batch_size=2000)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    root = args.root or tempfile.mkdtemp(prefix="metastop-pl-")
    best = pl.callbacks.ModelCheckpoint(dirpath=f"{root}/checkpoints", monitor="val_loss", mode="min")
    stop = MetaStopCallback(monitor="val_loss",
                            reporting=Reporting(log_path=args.log) if args.log else None)
    trainer = pl.Trainer(max_epochs=args.epochs, callbacks=[best, stop], accelerator="cpu",
                         default_root_dir=root, logger=pl.loggers.CSVLogger(root, name="logs"),
                         reload_dataloaders_every_n_epochs=1, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    model = DigitSum(args.steps_per_epoch, args.seed)
    trainer.fit(model)

    restored = trainer.validate(model, ckpt_path="best", verbose=False)[0]
    planned = args.epochs * args.steps_per_epoch
    done = trainer.global_step
    print(f"\n{'stopped' if done < planned else 'finished'} at step {done} of {planned} "
          f"({done / planned:.0%} of the budget); best val_loss {float(best.best_model_score):.4f} "
          f"in {best.best_model_path}; restored, it scores {restored['val_loss']:.4f} "
          f"(exact match {restored['val_em']:.3f})")


if __name__ == "__main__":
    main()

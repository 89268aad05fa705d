"""End-to-end: metastop's Lightning callback inside a real ``lightning.Trainer`` (CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from metastop.integrations.lightning import MetaStopCallback  # noqa: E402
from metastop.stop.rules import Patience, Threshold  # noqa: E402
from conftest import cost_aware

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*")]

STEPS_PER_EPOCH, TOKENS_PER_STEP = 4, 100
# val_exact_match by global step (validation runs at the end of each 4-step epoch)
PLATEAU = {4: 0.1, 8: 0.2, 12: 0.3, 16: 0.3, 20: 0.3, 24: 0.3, 28: 0.3, 32: 0.3}
RISING = {s: 0.0125 * s for s in range(4, 33, 4)}


class TinyModule(pl.LightningModule):
    def __init__(self, curve: dict[int, float]):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.curve = curve

    def training_step(self, batch, _):
        (x,) = batch
        return self.layer(x).pow(2).mean()

    def validation_step(self, batch, _):
        value = self.curve.get(self.trainer.global_step, 0.0)
        self.log("val_exact_match", value, batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(STEPS_PER_EPOCH * 2, 4))
        return torch.utils.data.DataLoader(data, batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(2, 4)), batch_size=2)


def fit(callback, *, max_epochs: int = 8, ckpt_path=None, root=None, curve=PLATEAU) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=[callback], accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=1, default_root_dir=root)
    trainer.fit(TinyModule(curve), ckpt_path=ckpt_path)
    return trainer


def budget(epochs: int = 8) -> float:
    return epochs * STEPS_PER_EPOCH * TOKENS_PER_STEP


def test_patience_stops_at_the_exact_validation_and_skips_the_sanity_check():
    callback = MetaStopCallback(policy=Patience(2), budget=budget(), tokens_per_step=TOKENS_PER_STEP)
    trainer = fit(callback)
    # best at step 12 (epoch 3); epochs 4 and 5 are flat -> stop after epoch 5
    assert trainer.global_step == 20
    assert trainer.current_epoch == 5
    decisions = callback.controller.decisions  # no decision at step 0: sanity check skipped
    assert [d.tokens for d in decisions] == [s * TOKENS_PER_STEP for s in (4, 8, 12, 16, 20)]
    assert [d.stop for d in decisions] == [False] * 4 + [True]


def test_lenient_policy_lets_training_finish_and_tokens_function_is_used():
    callback = MetaStopCallback(policy=Threshold(target=0.9), budget=budget(),
                                tokens=lambda trainer: 7.0 * trainer.global_step)
    trainer = fit(callback)
    assert trainer.global_step == 32
    decisions = callback.controller.decisions
    assert [d.tokens for d in decisions] == [7.0 * s for s in range(4, 33, 4)]
    assert not any(d.stop for d in decisions)  # 7 tokens a step never reach the budget


def test_missing_metric_warns_lists_metrics_and_training_continues():
    callback = MetaStopCallback(policy=Patience(1), budget=budget(), monitor="val_bleu")
    with pytest.warns(RuntimeWarning, match=r"'val_bleu'.*metrics present: \['val_exact_match'\]"):
        trainer = fit(callback, max_epochs=2)
    assert trainer.global_step == 8
    assert callback.controller.decisions == []


def test_controller_state_rides_in_the_checkpoint(tmp_path):
    first = MetaStopCallback(policy=Patience(100), budget=budget(), tokens_per_step=TOKENS_PER_STEP)
    trainer = fit(first, max_epochs=4, root=tmp_path)
    path = tmp_path / "four.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["callbacks"]
    assert saved[first.state_key]["controller"] == first.controller.state_dict()

    # Restored history (best at step 12, flat at 16) makes Patience(2) stop at step 20;
    # a fresh controller would only stop at step 28.
    second = MetaStopCallback(policy=Patience(2), budget=budget(), tokens_per_step=TOKENS_PER_STEP)
    trainer = fit(second, max_epochs=8, ckpt_path=path, root=tmp_path)
    assert trainer.global_step == 20
    assert len(second.controller.decisions) == 5


def test_cost_aware_with_a_near_zero_price_stops_right_after_warm_up(shipped_predictor):
    callback = MetaStopCallback(policy=cost_aware(shipped_predictor, 1e-9), budget=budget(),
                                tokens_per_step=TOKENS_PER_STEP)
    trainer = fit(callback, curve=RISING)
    assert trainer.global_step == 8  # the first validation is warm-up (one point)
    assert [d.reason.value for d in callback.controller.decisions] == ["warmup", "gain_below_cost"]


def test_cost_aware_with_a_huge_price_lets_a_rising_run_finish(shipped_predictor):
    callback = MetaStopCallback(policy=cost_aware(shipped_predictor, 1e30), budget=budget(),
                                tokens_per_step=TOKENS_PER_STEP)
    trainer = fit(callback, curve=RISING)
    assert trainer.global_step == 32
    reasons = [d.reason.value for d in callback.controller.decisions]
    assert reasons == ["warmup"] + ["continue_worth_it"] * 6 + ["budget_reached"]

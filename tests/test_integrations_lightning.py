"""End-to-end: metastop's Lightning callback inside a real ``lightning.Trainer`` (CPU)."""

from __future__ import annotations

import csv
import logging

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from metastop.errors import ParameterError  # noqa: E402
from metastop.integrations.lightning import MetaStopCallback  # noqa: E402
from metastop.stop.controller import StopController  # noqa: E402
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


class Shift(pl.LightningModule):
    """``y = w x`` trained toward ``w = 2`` but validated against ``w = 1``: a real
    ``val_loss`` that falls while ``w`` nears 1 (by step 12), then rises."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.x = torch.randn(STEPS_PER_EPOCH * 2, 1, generator=torch.Generator().manual_seed(0))

    def training_step(self, batch, _):
        (x,) = batch
        return ((self.w * x - 2 * x) ** 2).mean()

    def validation_step(self, batch, _):
        (x,) = batch
        self.log("val_loss", ((self.w * x - x) ** 2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.02)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x), batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x), batch_size=8)


class Tokens(pl.LightningModule):
    """Reads batches of 2 x 8 token ids and learns their mean id: an improving ``val_loss``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(32, 1)
        g = torch.Generator().manual_seed(0)
        self.train_ids, self.val_ids = (torch.randint(0, 32, (n, 8), generator=g) for n in (8, 8))

    def _loss(self, ids):
        return (self.embedding(ids).mean(dim=(1, 2)) - ids.float().mean(dim=1) / 32).pow(2).mean()

    def training_step(self, batch, _):
        return self._loss(batch[0])

    def validation_step(self, batch, _):
        self.log("val_loss", self._loss(batch[0]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.03)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.train_ids), batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.val_ids), batch_size=8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train faster on one thread, and do not fight other processes for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(callback, *, max_epochs: int = 8, ckpt_path=None, root=None, curve=PLATEAU, module=None,
        callbacks=(), logger=False) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=[*callbacks, callback], accelerator="cpu",
                         logger=logger, enable_checkpointing=bool(callbacks),
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=1, default_root_dir=root)
    trainer.fit(module or TinyModule(curve), ckpt_path=ckpt_path)
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
    assert callback.controller is None  # no validation had the metric: nothing decided


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


def test_an_improving_loss_is_minimized_counted_in_tokens_and_not_stopped(caplog):
    caplog.set_level(logging.INFO, logger="metastop")
    callback = MetaStopCallback(monitor="val_loss")  # default policy, budget and tokens from the Trainer
    trainer = fit(callback, module=Tokens())
    decisions = callback.controller.decisions
    losses = [d.value for d in decisions]
    assert losses == sorted(losses, reverse=True)  # improving all along
    assert callback.controller.direction == "minimize"
    # not stopped while the gains are large: only once they shrink, after half the budget
    assert trainer.global_step > 16 and not any(d.stop for d in decisions[:-1])
    # 2 x 8 token ids a step, counted from the batches; the budget is the planned steps' tokens
    assert [d.tokens for d in decisions] == [16.0 * s for s in range(4, trainer.global_step + 1, 4)]
    assert callback.controller.budget == 32 * 16
    assert "counts optimizer steps" not in caplog.text


def test_the_direction_comes_from_model_checkpoint_and_the_best_checkpoint_scores_the_best(tmp_path, caplog,
                                                                                            monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    caplog.set_level(logging.INFO, logger="metastop")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the local file store, under tmp_path
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    mlflow.set_experiment("metastop-lightning")
    best = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", mode="min")
    callback = MetaStopCallback(policy=Patience(2), monitor="val_loss")  # float batches: no tokens
    with mlflow.start_run() as run:
        trainer = fit(callback, module=Shift(), max_epochs=10, callbacks=[best],
                      logger=pl.loggers.CSVLogger(tmp_path, name="csv"))
    assert callback.controller.direction == "minimize"
    assert "val_loss: minimize, from ModelCheckpoint(monitor='val_loss', mode='min')" in caplog.text
    values = {int(d.tokens): d.value for d in callback.controller.decisions}  # tokens are steps
    best_step = min(values, key=values.get)
    stop = trainer.global_step
    assert 4 < best_step and stop == best_step + 8 < 40  # two validations without a better loss
    assert callback.controller.budget == 40  # the planned steps
    assert best.best_model_path.endswith(f"step={best_step}.ckpt")
    restored = Shift.load_from_checkpoint(best.best_model_path)
    assert pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False).validate(restored, verbose=False)[0]["val_loss"] == \
        pytest.approx(values[best_step])
    stops = [r.message for r in caplog.records if r.levelno == logging.WARNING and "stopping at step" in r.message]
    assert len(stops) == 1 and f"stopping at step {stop}" in stops[0]
    assert f"best val_loss {values[best_step]:g} at step {best_step}" in stops[0]
    assert f"the best checkpoint is {best.best_model_path}" in caplog.text
    assert caplog.text.count("counts optimizer steps") == 1  # the warning comes once
    assert "no ModelCheckpoint monitors" not in caplog.text

    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as file:
        rows = [r for r in csv.DictReader(file) if r.get("metastop/stop")]
    expected = [(s, 0.0) for s in range(4, stop, 4)] + [(stop, 1.0)]
    assert [(int(r["step"]), float(r["metastop/stop"])) for r in rows] == expected
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "metastop/stop")
    assert [(m.step, m.value) for m in history] == expected


def test_a_controller_or_mode_against_the_checkpoint_direction_is_refused():
    best = pl.callbacks.ModelCheckpoint(monitor="val_loss", mode="min")
    callback = MetaStopCallback(policy=Patience(2), monitor="val_loss", mode="max")
    with pytest.raises(ParameterError, match=r"mode='max' contradicts ModelCheckpoint\(monitor='val_loss', mode='min'\)"):
        fit(callback, module=Shift(), callbacks=[best])
    callback = MetaStopCallback(StopController(Patience(2), budget=40), monitor="val_loss")
    with pytest.raises(ParameterError, match=r"direction='maximize' but ModelCheckpoint.* says 'minimize'"):
        fit(callback, module=Shift(), callbacks=[pl.callbacks.ModelCheckpoint(monitor="val_loss", mode="min")])

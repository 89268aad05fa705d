"""End-to-end: metastop's transformers callback inside a real ``Trainer`` (tiny GPT-2, CPU)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from metastop.errors import ParameterError  # noqa: E402
from metastop.integrations.hf import MetaStopCallback  # noqa: E402
from metastop.stop.controller import Reporting, StopController  # noqa: E402
from metastop.stop import Patience  # noqa: E402
from conftest import cost_aware

pytestmark = pytest.mark.slow

SEQ, BATCH, TOKENS_PER_STEP = 8, 2, 16
# The evaluation metric by global step: rises to 0.3 at step 6, then flat.
PLATEAU = {2: 0.1, 4: 0.2, 6: 0.3}
RISING = {s: 0.02 * s for s in range(2, 41, 2)}
# EM as the SQuAD metric of `evaluate` gives it (0-100), first at 0.5: within 0-1 at first sight.
SQUAD = {2: 0.5, 4: 10.0, 6: 20.0, 8: 30.0}


class _Data(torch.utils.data.Dataset):
    """Random token ids, or (``pattern``) counting sequences a tiny GPT-2 learns quickly."""

    def __init__(self, n: int, *, seed: int = 0, pattern: bool = False):
        g = torch.Generator().manual_seed(seed)
        if pattern:
            self.ids = (torch.randint(0, 32, (n, 1), generator=g) + torch.arange(SEQ)) % 32
        else:
            self.ids = torch.randint(0, 32, (n, SEQ), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long)}


def make_trainer(tmp_path: Path, callback, curve: dict[int, float] | None = None, *,
                 max_steps: int = 20, save_steps: int | None = None, count_tokens: bool = True,
                 train: _Data | None = None, evaluate: _Data | None = None,
                 **arguments) -> transformers.Trainer:
    """A tiny GPT-2 evaluated every 2 steps; ``eval_exact_match`` is ``curve[global_step]``
    (without ``curve`` the evaluation gives the real ``eval_loss`` only)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=SEQ, n_embd=8, n_layer=1, n_head=2)
    options = dict(max_steps=max_steps, per_device_train_batch_size=BATCH,
                   per_device_eval_batch_size=BATCH, eval_strategy="steps", eval_steps=2,
                   logging_steps=2, save_strategy="steps" if save_steps else "no",
                   save_steps=save_steps or 500, include_num_input_tokens_seen=count_tokens,
                   report_to="none", use_cpu=True, disable_tqdm=True, learning_rate=1e-3, seed=0)
    args = transformers.TrainingArguments(str(tmp_path / "out"), **{**options, **arguments})
    holder: dict = {}

    def compute_metrics(_prediction):
        step = holder["trainer"].state.global_step
        return {"exact_match": curve.get(step, max(curve.values()))}

    trainer = transformers.Trainer(
        model=transformers.GPT2LMHeadModel(config), args=args, train_dataset=train or _Data(8),
        eval_dataset=evaluate or _Data(2), compute_metrics=compute_metrics if curve else None,
        callbacks=[callback])
    holder["trainer"] = trainer
    return trainer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train faster on one thread, and do not fight other processes for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def metastop_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "metastop/stop" in entry]


def test_patience_stops_at_the_exact_evaluation_and_logs_each_decision(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="metastop")
    callback = MetaStopCallback(policy=Patience(2), budget=20 * TOKENS_PER_STEP)
    trainer = make_trainer(tmp_path, callback, PLATEAU)
    trainer.train()
    # best at step 6; steps 8 and 10 do not improve -> stop after the evaluation at step 10
    assert trainer.state.global_step == 10
    decisions = callback.controller.decisions
    assert [d.tokens for d in decisions] == [s * TOKENS_PER_STEP for s in range(2, 11, 2)]
    assert [d.stop for d in decisions] == [False] * 4 + [True]
    assert decisions[-1].reason.value == "patience_exhausted"
    logged = metastop_logs(trainer)  # one entry per decision in the Trainer's log history
    assert [e["step"] for e in logged] == [2, 4, 6, 8, 10]
    assert [e["metastop/stop"] for e in logged] == [0.0] * 4 + [1.0]
    assert logged[-1]["metastop/reason"] == "patience_exhausted"
    assert logged[-1]["metastop/message"] == decisions[-1].message
    assert logged[-1]["metastop/best"] == pytest.approx(0.3)
    stops = [r for r in caplog.records if r.levelno == logging.WARNING and "stopping at step 10" in r.message]
    assert len(stops) == 1 and decisions[-1].message in stops[0].message
    assert "best eval_exact_match 0.3 at step 6" in stops[0].message
    # no best checkpoint is kept: the advice names the exact settings, once
    advice = [r.message for r in caplog.records if "load_best_model_at_end=True" in r.message]
    assert len(advice) == 1
    assert "metric_for_best_model='eval_exact_match', greater_is_better=True" in advice[0]


def test_tokens_per_step_counts_when_the_trainer_counts_no_tokens(tmp_path, caplog):
    callback = MetaStopCallback(policy=Patience(100), budget=20 * TOKENS_PER_STEP,
                                tokens_per_step=TOKENS_PER_STEP)
    trainer = make_trainer(tmp_path, callback, PLATEAU, count_tokens=False)
    trainer.train()
    assert trainer.state.global_step == 20
    decisions = callback.controller.decisions
    assert [d.tokens for d in decisions] == [s * TOKENS_PER_STEP for s in range(2, 21, 2)]
    assert not any(d.stop for d in decisions[:-1])
    assert decisions[-1].reason.value == "budget_reached"  # the last evaluation spends the budget
    assert "counts no tokens" not in caplog.text


def test_without_a_token_count_the_batch_shape_is_used_and_the_budget_comes_from_max_steps(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="metastop")
    callback = MetaStopCallback(policy=Patience(100))  # no budget, no tokens_per_step
    trainer = make_trainer(tmp_path, callback, PLATEAU, count_tokens=False)
    trainer.train()
    assert callback.controller.budget == 20 * TOKENS_PER_STEP  # max_steps x batch x length
    assert [d.tokens for d in callback.controller.decisions] == [s * TOKENS_PER_STEP for s in range(2, 21, 2)]
    assert not any(d.reason.value == "warmup" for d in callback.controller.decisions[1:])
    warned = [r.message for r in caplog.records if "counts no tokens" in r.message]
    assert len(warned) == 1  # once, naming both ways to give the count
    assert "estimates 16 tokens per optimizer step (2 sequences x 8 tokens" in warned[0]
    assert "include_num_input_tokens_seen=True" in warned[0] and "tokens_per_step=" in warned[0]


def test_the_budget_comes_from_max_steps_and_the_counted_tokens(tmp_path, caplog):
    callback = MetaStopCallback(policy=Patience(100))
    # the evaluation before the first step has no tokens per step yet: no decision, no crash
    make_trainer(tmp_path, callback, {0: 0.0, **PLATEAU}, max_steps=6, eval_on_start=True).train()
    assert callback.controller.budget == 6 * TOKENS_PER_STEP
    assert [d.tokens for d in callback.controller.decisions] == [32.0, 64.0, 96.0]
    assert "counts no tokens" not in caplog.text


def test_em_on_0_100_acts_exactly_as_the_same_em_on_0_1(tmp_path, shipped_predictor, caplog):
    caplog.set_level(logging.INFO, logger="metastop")
    runs = {}
    for name, curve in (("percent", SQUAD), ("unit", {s: v / 100 for s, v in SQUAD.items()})):
        callback = MetaStopCallback(policy=cost_aware(shipped_predictor, 10.0), budget=40 * TOKENS_PER_STEP)
        trainer = make_trainer(tmp_path / name, callback, curve, max_steps=40)
        trainer.train()
        runs[name] = (trainer, callback.controller)
    (trainer, percent), (_, unit) = runs["percent"], runs["unit"]
    assert trainer.state.global_step < 40  # metastop acted: it stopped before the budget
    reasons = [d.reason.value for d in percent.decisions]
    assert reasons == ["warmup"] + ["continue_worth_it"] * (len(reasons) - 2) + ["gain_below_cost"]
    assert reasons == [d.reason.value for d in unit.decisions]
    assert percent.curve.values.tolist() == pytest.approx(unit.curve.values.tolist())  # all on 0-1
    for mine, theirs in zip(percent.decisions[1:], unit.decisions[1:]):
        assert mine.predicted_final == pytest.approx(theirs.predicted_final)
    # reported in the metric's own units, next to eval_exact_match
    last = metastop_logs(trainer)[-1]
    assert last["metastop/predicted_final"] == pytest.approx(100 * percent.decisions[-1].predicted_final)
    assert last["metastop/best"] == pytest.approx(30.0)
    assert "a 0-100 score (value 10 > 1), divided by 100 for metastop; the earlier values" in caplog.text


def test_eval_loss_is_minimized_and_an_improving_run_is_not_stopped(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="metastop")
    callback = MetaStopCallback(metric="eval_loss")  # the default, cost-aware policy
    trainer = make_trainer(tmp_path, callback, train=_Data(64, pattern=True),
                           evaluate=_Data(8, seed=1, pattern=True))
    trainer.train()
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert losses == sorted(losses, reverse=True)  # improving all along
    assert callback.controller.direction == "minimize"
    assert trainer.state.global_step == 20
    assert [d.stop for d in callback.controller.decisions] == [False] * 9 + [True]
    assert callback.controller.decisions[-1].reason.value == "budget_reached"
    assert "eval_loss: minimize, from the name 'eval_loss'" in caplog.text

    # the same run judged as if the loss were to be maximized (no direction) stops at once
    wrong = MetaStopCallback(metric="eval_loss", mode="max")
    trainer = make_trainer(tmp_path / "max", wrong, train=_Data(64, pattern=True),
                           evaluate=_Data(8, seed=1, pattern=True))
    trainer.train()
    assert trainer.state.global_step <= 6


def test_the_stop_restores_the_best_checkpoint_which_scores_the_best_value(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="metastop")
    callback = MetaStopCallback(policy=Patience(3))  # metric and direction from the arguments
    trainer = make_trainer(tmp_path, callback, max_steps=40, save_steps=2, train=_Data(2, pattern=True),
                           evaluate=_Data(16, seed=1, pattern=True), learning_rate=3e-2,
                           lr_scheduler_type="constant", load_best_model_at_end=True,
                           metric_for_best_model="eval_loss", save_total_limit=2)
    trainer.train()
    losses = {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e}
    best_step = min(losses, key=losses.get)
    assert callback.controller.direction == "minimize"
    assert trainer.state.global_step == best_step + 6 < 40  # three evaluations without a better loss
    assert trainer.evaluate()["eval_loss"] == pytest.approx(losses[best_step], abs=1e-6)
    assert "load_best_model_at_end=True" not in caplog.text  # the settings are there: no advice
    assert f"best eval_loss {losses[best_step]:g} at step {best_step}" in caplog.text
    assert f"restored the best checkpoint {trainer.state.best_model_checkpoint}" in caplog.text
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")


def test_bound_to_the_trainer_decisions_reach_tensorboard_mlflow_and_the_decision_log(tmp_path, shipped_predictor,
                                                                                       monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the local file store, under tmp_path
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "out" / "runs"))  # no leftover
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    mlflow.set_experiment("metastop-hf")
    log = tmp_path / "decisions.jsonl"
    callback = MetaStopCallback(policy=cost_aware(shipped_predictor, 1e-9), budget=20 * TOKENS_PER_STEP,
                                reporting=Reporting(log_path=log))
    trainer = make_trainer(tmp_path, callback, RISING, report_to="tensorboard")
    callback.bind(trainer)
    with mlflow.start_run() as run:
        trainer.train()
    assert trainer.state.global_step <= 6
    assert [e["metastop/reason"] for e in metastop_logs(trainer)] == ["warmup", "gain_below_cost"]

    events = EventAccumulator(str(next((tmp_path / "out").rglob("events.out.tfevents*")).parent))
    events.Reload()
    # the Trainer's TensorBoard reporter files them under train/
    assert [(e.step, e.value) for e in events.Scalars("train/metastop/stop")] == [(2, 0.0), (4, 1.0)]
    assert events.Scalars("train/metastop/predicted_final")[-1].value == pytest.approx(
        callback.controller.decisions[-1].predicted_final)

    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "metastop/stop")
    assert [(m.step, m.value) for m in history] == [(2, 0.0), (4, 1.0)]
    assert client.get_run(run.info.run_id).data.tags["metastop.reason"] == "gain_below_cost"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["reason"] for line in lines] == ["warmup", "gain_below_cost"]


def test_a_controller_of_the_wrong_direction_is_refused_naming_both(tmp_path):
    callback = MetaStopCallback(StopController(Patience(2), budget=320), metric="eval_loss")
    with pytest.raises(ParameterError, match=r"direction='maximize' but the name 'eval_loss' says 'minimize'"):
        make_trainer(tmp_path, callback).train()
    callback = MetaStopCallback(policy=Patience(2), budget=320, mode="max")
    trainer = make_trainer(tmp_path, callback, metric_for_best_model="eval_loss")
    with pytest.raises(ParameterError, match=r"mode='max' contradicts TrainingArguments\(metric_for_best_model="
                                             r"'eval_loss', greater_is_better=False\)"):
        trainer.train()
    with pytest.raises(ParameterError, match=r"direction='maximize' but mode='min' says 'minimize'"):
        MetaStopCallback(StopController(Patience(2), budget=320), mode="min")


def test_missing_metric_warns_lists_metrics_and_training_continues(tmp_path):
    callback = MetaStopCallback(policy=Patience(1), budget=20 * TOKENS_PER_STEP, metric="eval_bleu")
    trainer = make_trainer(tmp_path, callback, PLATEAU, max_steps=4)
    with pytest.warns(RuntimeWarning, match=r"'eval_bleu'.*metrics present: .*'eval_exact_match'"):
        trainer.train()
    assert trainer.state.global_step <= 6
    assert callback.controller is None  # no evaluation had the metric: nothing decided


def test_controller_state_is_saved_with_the_checkpoint_and_restored_on_resume(tmp_path):
    first = MetaStopCallback(policy=Patience(100), budget=20 * TOKENS_PER_STEP)
    make_trainer(tmp_path, first, PLATEAU, max_steps=8, save_steps=4).train()
    checkpoint = tmp_path / "out" / "checkpoint-8"
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    state = saved["stateful_callbacks"]["MetaStopCallback"]["attributes"]
    assert json.loads(json.dumps(state)) == state  # plain data, no pickle
    assert state["controller"]["tokens"] == [s * TOKENS_PER_STEP for s in (2, 4, 6, 8)]
    assert state["monitor"] == {"divisor": None, "best": 0.3, "best_step": 6}

    # A fresh callback with a stricter policy: only the restored history (best at step 6,
    # no improvement at 8) makes it stop after one more flat evaluation, at step 10.
    second = MetaStopCallback(policy=Patience(2))  # the budget comes back with the state
    trainer = make_trainer(tmp_path, second, PLATEAU, max_steps=20, save_steps=4)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 10
    assert second.controller.budget == 20 * TOKENS_PER_STEP
    assert [d.tokens for d in second.controller.decisions] == [s * TOKENS_PER_STEP for s in range(2, 11, 2)]
    assert second.controller.decisions[-1].stop


def test_transformers_own_callback_restore_is_refused_with_a_clear_error(tmp_path):
    callback = MetaStopCallback(policy=Patience(2), budget=320)
    trainer = make_trainer(tmp_path, callback, PLATEAU)
    trainer.args.restore_callback_states_from_checkpoint = True
    with pytest.raises(ParameterError, match="restore_callback_states_from_checkpoint"):
        trainer.callback_handler.on_init_end(trainer.args, trainer.state, trainer.control)


def test_bad_arguments_are_rejected():
    with pytest.raises(ParameterError, match="budget must be finite and > 0, got budget=0"):
        MetaStopCallback(policy=Patience(2), budget=0)
    with pytest.raises(ParameterError, match="tokens_per_step"):
        MetaStopCallback(policy=Patience(2), budget=10, tokens_per_step=0)
    with pytest.raises(ParameterError, match=r"mode must be one of \['auto', 'max', 'min'\], got mode='maximize'"):
        MetaStopCallback(mode="maximize")
    with pytest.raises(ParameterError, match=r"scale must be one of .*got scale='percent'"):
        MetaStopCallback(scale="percent")
    with pytest.raises(ParameterError, match="either controller or policy/budget/reporting"):
        MetaStopCallback(StopController(Patience(2), budget=320), budget=320)


def test_cost_aware_with_a_huge_price_lets_a_rising_run_finish(tmp_path, shipped_predictor):
    callback = MetaStopCallback(policy=cost_aware(shipped_predictor, 1e30), budget=20 * TOKENS_PER_STEP)
    trainer = make_trainer(tmp_path, callback, RISING)
    trainer.train()
    assert trainer.state.global_step == 20
    reasons = [d.reason.value for d in callback.controller.decisions]
    assert reasons == ["warmup"] + ["continue_worth_it"] * 8 + ["budget_reached"]


def test_several_metrics_decide_the_run_as_one(tmp_path, shipped_predictor):
    """A run scored on two tasks (one on 0-100, as `evaluate` gives SQuAD's EM): the
    controller sees both, on 0-1, and decides the run by its weighted score."""
    from metastop.stop import CostAware, MultiTask, Price

    policy = MultiTask(CostAware(shipped_predictor, price=Price.fraction_of_budget(1e6)))
    callback = MetaStopCallback(policy=policy, budget=20 * TOKENS_PER_STEP,
                                metrics=["gsm8k_em", "squad_em"])
    trainer = make_trainer(tmp_path, callback)
    holder = {"trainer": trainer}
    trainer.compute_metrics = lambda _p: {"gsm8k_em": 0.01 * holder["trainer"].state.global_step,
                                          "squad_em": 30.0 + holder["trainer"].state.global_step}
    trainer.train()
    tasks = callback.controller.state_dict()["tasks"]
    assert sorted(tasks) == ["gsm8k_em", "squad_em"] and len(tasks["gsm8k_em"][1]) == 10
    assert max(tasks["squad_em"][1]) <= 1.0  # an EM above 1 is read as 0-100
    assert not any(d.early_stop for d in callback.controller.decisions)  # dear: to the budget
    with pytest.raises(ParameterError, match="at least one metric"):
        MetaStopCallback(budget=10, metrics=[])

"""End-to-end: metastop's transformers callback inside a real ``Trainer`` (tiny GPT-2, CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from metastop.integrations.hf import MetaStopCallback  # noqa: E402
from metastop.stop.rules import Patience  # noqa: E402
from conftest import cost_aware

pytestmark = pytest.mark.slow

SEQ, BATCH, TOKENS_PER_STEP = 8, 2, 16
# The evaluation metric by global step: rises to 0.3 at step 6, then flat.
PLATEAU = {2: 0.1, 4: 0.2, 6: 0.3}
RISING = {s: 0.02 * s for s in range(2, 41, 2)}


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 32, (n, SEQ), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long)}


def make_trainer(tmp_path: Path, callback, curve: dict[int, float], *, max_steps: int = 20,
                 save_steps: int | None = None, count_tokens: bool = True) -> transformers.Trainer:
    """A tiny GPT-2 evaluated every 2 steps; ``eval_exact_match`` is ``curve[global_step]``."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=SEQ, n_embd=8, n_layer=1, n_head=2)
    args = transformers.TrainingArguments(
        str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH, eval_strategy="steps", eval_steps=2, logging_steps=2,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        include_num_input_tokens_seen=count_tokens, report_to="none", use_cpu=True, disable_tqdm=True,
        learning_rate=1e-3, seed=0)
    holder: dict = {}

    def compute_metrics(_prediction):
        step = holder["trainer"].state.global_step
        return {"exact_match": curve.get(step, max(curve.values()))}

    trainer = transformers.Trainer(
        model=transformers.GPT2LMHeadModel(config), args=args, train_dataset=_Data(8),
        eval_dataset=_Data(2), compute_metrics=compute_metrics, callbacks=[callback])
    holder["trainer"] = trainer
    return trainer


def test_patience_stops_at_the_exact_evaluation(tmp_path):
    callback = MetaStopCallback(policy=Patience(2), budget=20 * TOKENS_PER_STEP)
    trainer = make_trainer(tmp_path, callback, PLATEAU)
    trainer.train()
    # best at step 6; steps 8 and 10 do not improve -> stop after the evaluation at step 10
    assert trainer.state.global_step == 10
    decisions = callback.controller.decisions
    assert [d.tokens for d in decisions] == [s * TOKENS_PER_STEP for s in range(2, 11, 2)]
    assert [d.stop for d in decisions] == [False] * 4 + [True]
    assert decisions[-1].reason.value == "patience_exhausted"


def test_patient_policy_lets_training_finish_and_tokens_per_step_counts_without_token_counts(tmp_path):
    callback = MetaStopCallback(policy=Patience(100), budget=20 * TOKENS_PER_STEP,
                                tokens_per_step=TOKENS_PER_STEP)
    trainer = make_trainer(tmp_path, callback, PLATEAU, count_tokens=False)
    trainer.train()
    assert trainer.state.global_step == 20
    decisions = callback.controller.decisions
    assert [d.tokens for d in decisions] == [s * TOKENS_PER_STEP for s in range(2, 21, 2)]
    assert not any(d.stop for d in decisions[:-1])
    assert decisions[-1].reason.value == "budget_reached"  # the last evaluation spends the budget


def test_missing_metric_warns_lists_metrics_and_training_continues(tmp_path):
    callback = MetaStopCallback(policy=Patience(1), budget=20 * TOKENS_PER_STEP, metric="eval_bleu")
    trainer = make_trainer(tmp_path, callback, PLATEAU, max_steps=4)
    with pytest.warns(RuntimeWarning, match=r"'eval_bleu'.*metrics present: .*'eval_exact_match'"):
        trainer.train()
    assert trainer.state.global_step == 4
    assert callback.controller.decisions == []


def test_controller_state_is_saved_with_the_checkpoint_and_restored_on_resume(tmp_path):
    first = MetaStopCallback(policy=Patience(100), budget=20 * TOKENS_PER_STEP)
    make_trainer(tmp_path, first, PLATEAU, max_steps=8, save_steps=4).train()
    checkpoint = tmp_path / "out" / "checkpoint-8"
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    state = saved["stateful_callbacks"]["MetaStopCallback"]["attributes"]["controller"]
    assert json.loads(json.dumps(state)) == state  # plain data, no pickle
    assert state["tokens"] == [s * TOKENS_PER_STEP for s in (2, 4, 6, 8)]

    # A fresh callback with a stricter policy: only the restored history (best at step 6,
    # no improvement at 8) makes it stop after one more flat evaluation, at step 10.
    second = MetaStopCallback(policy=Patience(2), budget=20 * TOKENS_PER_STEP)
    trainer = make_trainer(tmp_path, second, PLATEAU, max_steps=20, save_steps=4)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 10
    assert [d.tokens for d in second.controller.decisions] == [s * TOKENS_PER_STEP for s in range(2, 11, 2)]
    assert second.controller.decisions[-1].stop


def test_transformers_own_callback_restore_is_refused_with_a_clear_error(tmp_path):
    from metastop.errors import ParameterError

    callback = MetaStopCallback(policy=Patience(2), budget=320)
    trainer = make_trainer(tmp_path, callback, PLATEAU)
    trainer.args.restore_callback_states_from_checkpoint = True
    with pytest.raises(ParameterError, match="restore_callback_states_from_checkpoint"):
        trainer.callback_handler.on_init_end(trainer.args, trainer.state, trainer.control)


def test_bad_arguments_are_rejected():
    from metastop.errors import ParameterError

    with pytest.raises(ParameterError, match="budget"):
        MetaStopCallback(policy=Patience(2))
    with pytest.raises(ParameterError, match="tokens_per_step"):
        MetaStopCallback(policy=Patience(2), budget=10, tokens_per_step=0)


def test_cost_aware_with_a_near_zero_price_stops_right_after_warm_up(tmp_path, shipped_predictor):
    callback = MetaStopCallback(policy=cost_aware(shipped_predictor, 1e-9), budget=20 * TOKENS_PER_STEP)
    trainer = make_trainer(tmp_path, callback, RISING)
    trainer.train()
    assert trainer.state.global_step == 4  # the first evaluation is warm-up (one point)
    assert [d.reason.value for d in callback.controller.decisions] == ["warmup", "gain_below_cost"]


def test_cost_aware_with_a_huge_price_lets_a_rising_run_finish(tmp_path, shipped_predictor):
    callback = MetaStopCallback(policy=cost_aware(shipped_predictor, 1e30), budget=20 * TOKENS_PER_STEP)
    trainer = make_trainer(tmp_path, callback, RISING)
    trainer.train()
    assert trainer.state.global_step == 20
    reasons = [d.reason.value for d in callback.controller.decisions]
    assert reasons == ["warmup"] + ["continue_worth_it"] * 8 + ["budget_reached"]

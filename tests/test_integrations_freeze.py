"""End-to-end: the freezing callbacks inside a real transformers ``Trainer`` (tiny GPT-2) and a
real ``lightning.Trainer`` (CPU): a block freezes mid-run, its weights stop, the head trains."""

from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

from metastop.adapt import FreezeOutSchedule, Freezer
from metastop.errors import ParameterError
from metastop.integrations.freeze import batch_tokens
from metastop.stop.decisionlog import DecisionLog, LogContext, read_logs

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*")]

SEQ, BATCH, STEPS = 8, 2, 20
# Aggressive: a check every 2 steps, every change counts as a plateau, one check suffices.
FAST = {"check_every": 2, "threshold": 10.0, "patience": 1, "min_progress": 0.3}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def snapshot(modules: dict) -> dict:
    return {name: [p.detach().clone() for p in m.parameters()] for name, m in modules.items()}


def same(a: list, b: list) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


# --- transformers ---------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")
from metastop.integrations.freeze import hf_callback


class _Data(torch.utils.data.Dataset):
    """Counting sequences a tiny GPT-2 learns quickly."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.ids = (torch.randint(0, 32, (n, 1), generator=g) + torch.arange(SEQ)) % 32

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i],
                "attention_mask": torch.ones(SEQ, dtype=torch.long)}


class _Weights(transformers.TrainerCallback):
    """Keeps the weights of some modules after every optimizer step."""

    def __init__(self, modules: dict):
        self.modules, self.by_step = modules, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.by_step[state.global_step] = snapshot(self.modules)


def gpt2_trainer(tmp_path, callbacks) -> tuple[transformers.Trainer, object]:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=SEQ, n_embd=8, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(
        str(tmp_path / "out"), max_steps=STEPS, per_device_train_batch_size=BATCH,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        learning_rate=1e-2, seed=0, logging_steps=50)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Data(16),
                                   callbacks=callbacks(model))
    return trainer, model


def test_hf_trainer_freezes_a_block_mid_run_and_the_head_keeps_training(tmp_path):
    path = tmp_path / "log.jsonl"
    holder = {}

    def callbacks(model):
        holder["freezer"] = Freezer(model, log=DecisionLog(path, LogContext(run_id="hf")), **FAST)
        holder["weights"] = _Weights({"wpe": model.transformer.wpe, "h.0": model.transformer.h[0],
                                      "lm_head": model.lm_head})
        holder["callback"] = hf_callback(holder["freezer"])
        return [holder["callback"], holder["weights"]]

    trainer, _ = gpt2_trainer(tmp_path, callbacks)
    trainer.train()
    freezer, weights, callback = holder["freezer"], holder["weights"].by_step, holder["callback"]
    events = read_logs(path).events
    assert [e.change["block"] for e in events][:2] == ["transformer.wpe", "transformer.h.0"]
    froze = events[1].step
    assert 0.3 * STEPS <= froze < STEPS
    assert same(weights[froze]["h.0"], weights[STEPS]["h.0"])  # stopped at the freeze
    assert not same(weights[froze - 1]["h.0"], weights[froze]["h.0"])  # it trained before
    assert not same(weights[froze]["lm_head"], weights[STEPS]["lm_head"])  # the head trains on
    modules = dict(freezer.layout.blocks)
    frozen_params = [p for name in freezer.frozen for p in modules[name].parameters()]
    assert all(not p.requires_grad and p.grad is None for p in frozen_params)
    assert not any(p in trainer.optimizer.state for p in frozen_params)  # state dropped
    assert callback.driver.tokens == STEPS * BATCH * SEQ  # counted from the attention mask
    assert 0 < callback.backward_flops_saved < callback.backward_flops


def test_hf_tokens_per_example_counts_the_same_tokens(tmp_path):
    holder = {}

    def callbacks(model):
        holder["callback"] = hf_callback(FreezeOutSchedule(model, t0=0.5),
                                         tokens_per_example=SEQ)
        return [holder["callback"]]

    trainer, model = gpt2_trainer(tmp_path, callbacks)
    trainer.train()
    callback = holder["callback"]
    assert callback.driver.tokens == STEPS * BATCH * SEQ
    assert callback.driver.freezer.frozen == ("transformer.wpe", "transformer.h.0",
                                              "transformer.h.1")
    assert not model.transformer.h[1].ln_1.weight.requires_grad


def test_bad_callback_arguments_are_refused():
    with pytest.raises(ParameterError, match="freezer must be a metastop.adapt Freezer"):
        hf_callback(object())
    with pytest.raises(ParameterError, match="tokens_per_example must be finite and > 0"):
        hf_callback(Freezer(blocks=[("a", torch.nn.Linear(2, 2))]), tokens_per_example=0)


def test_batch_tokens_reads_the_mask_then_the_ids():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert batch_tokens({"input_ids": torch.zeros(2, 3, dtype=torch.long),
                         "attention_mask": mask}) == 3
    assert batch_tokens([torch.zeros(2, 3, dtype=torch.long)]) == 6
    assert batch_tokens((torch.zeros(2, 3),)) is None


# --- Lightning ------------------------------------------------------------------------------
pl = pytest.importorskip("lightning.pytorch")
from metastop.integrations.freeze import lightning_callback


class Regression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 1))
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(8 * STEPS, 4, generator=g)
        self.y = torch.sin(self.x.sum(1, keepdim=True))
        self.weights: dict = {}

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.weights[self.trainer.global_step] = snapshot({"0": self.net[0], "4": self.net[4]})

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(self.x, self.y)
        return torch.utils.data.DataLoader(data, batch_size=8)


def fit(module, callback) -> None:
    trainer = pl.Trainer(max_steps=STEPS, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module)


def test_lightning_freezes_a_block_mid_run_and_the_head_keeps_training(tmp_path):
    module, path = Regression(), tmp_path / "log.jsonl"
    freezer = Freezer(module.net, log=DecisionLog(path, LogContext(run_id="pl")), **FAST)
    callback = lightning_callback(freezer, tokens_per_example=4)
    fit(module, callback)
    (first, *_) = read_logs(path).events
    froze = first.step
    assert first.change["block"] == "0" and 0.3 * STEPS <= froze < STEPS
    weights = module.weights
    assert same(weights[froze]["0"], weights[STEPS]["0"])
    assert not same(weights[froze - 1]["0"], weights[froze]["0"])
    assert not same(weights[froze]["4"], weights[STEPS]["4"])
    assert callback.driver.tokens == STEPS * 8 * 4
    assert callback.state_dict()["freezer"]["frozen"] == list(freezer.frozen)


def test_lightning_callback_error_warns_and_training_goes_on(caplog):
    module = Regression()
    callback = lightning_callback(Freezer(module.net, **FAST))
    before = [p.detach().clone() for p in module.net[0].parameters()]
    with caplog.at_level(logging.WARNING, logger="metastop.integrations.freeze"):
        callback.load_state_dict({"freezer": {"version": 1, "kind": "Freezer",
                                              "blocks": ["other"], "frozen": []}})
        fit(module, callback)
    failures = [r.getMessage() for r in caplog.records
                if "freezing callback failed" in r.getMessage()]
    assert len(failures) == 1 and "state blocks must match" in failures[0]
    assert module.trainer.global_step == STEPS  # training finished
    assert not same(before, list(module.net[0].parameters()))  # and nothing froze

"""End-to-end: the batch-size lever inside a real transformers ``Trainer`` (tiny GPT-2) and a
real Lightning ``Trainer`` (CPU): the accumulation the Trainer runs really changes mid-run."""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pl = pytest.importorskip("lightning.pytorch")

from metastop.adapt import BatchSizeController  # noqa: E402
from metastop.errors import ParameterError  # noqa: E402
from metastop.integrations.batchsize import hf_callback, lightning_callback  # noqa: E402
from metastop.stop.decisionlog import DecisionLog, LogContext, read_logs  # noqa: E402
from test_integrations_hf import SEQ, _Data  # noqa: E402 (the tiny GPT-2's data)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*")]

LR = 1e-3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train faster on one thread, and do not fight other processes for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def controller(log=None, **overrides) -> BatchSizeController:
    settings = dict(micro_batch=1, min_accumulation=2, max_accumulation=8, warmup_steps=2,
                    check_every=2, smoothing=0.5, noise_fraction=1.0, log=log)
    return BatchSizeController(**{**settings, **overrides})


class Witness:
    """Records, independently of the lever, what the model and the optimizer really did:
    training forward passes per optimizer step and the learning rate inside each step."""

    def __init__(self, model, optimizer):
        self.forwards: Counter = Counter()
        self.step_lrs: list[float] = []
        self.steps = 0
        model.register_forward_pre_hook(self._forward)
        optimizer.register_step_pre_hook(self._lr)  # after the lever's: sees the scaled LR
        optimizer.register_step_post_hook(self._stepped)  # Lightning runs its closure in step()

    def _forward(self, module, _inputs):
        if module.training:
            self.forwards[self.steps] += 1

    def _lr(self, optimizer, _args, _kwargs):
        self.step_lrs.append(optimizer.param_groups[0]["lr"])

    def _stepped(self, optimizer, _args, _kwargs):
        self.steps += 1

    @property
    def per_step(self) -> list[int]:
        return [self.forwards[s] for s in range(self.steps)]


# --- transformers ------------------------------------------------------------------------------
class _Watch(transformers.TrainerCallback):
    """Installs a ``Witness`` once the Trainer's optimizer exists; keeps the LR after steps."""

    def __init__(self):
        self.witness = None
        self.lr_after_steps: set[float] = set()
        self.first_grad_sq = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.witness = Witness(model, optimizer.optimizer)  # accelerate wraps the torch optimizer
        self.optimizer = optimizer

    def on_step_end(self, args, state, control, **kwargs):
        self.lr_after_steps.add(self.optimizer.param_groups[0]["lr"])


def hf_trainer(tmp_path, lever, *, examples: int = 64, **arguments):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=SEQ, n_embd=8, n_layer=1, n_head=2)
    options = dict(per_device_train_batch_size=1, gradient_accumulation_steps=2,
                   num_train_epochs=1, report_to="none", use_cpu=True, disable_tqdm=True,
                   learning_rate=LR, lr_scheduler_type="constant", seed=0, save_strategy="no",
                   logging_steps=1000, include_num_input_tokens_seen=True)
    args = transformers.TrainingArguments(str(tmp_path / "out"), **{**options, **arguments})
    watch = _Watch()
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args,
                                   train_dataset=_Data(examples, pattern=True),
                                   callbacks=[lever, watch])
    return trainer, watch


def test_hf_trainer_runs_the_new_accumulation_with_the_scaled_learning_rate(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="metastop")
    control = controller(DecisionLog(tmp_path / "log.jsonl", LogContext(run_id="gpt2")))
    trainer, watch = hf_trainer(tmp_path, hf_callback(control))
    trainer.train()
    per_step = watch.witness.per_step
    assert sum(per_step) == 64  # one epoch: every example once, whatever the batch
    assert trainer.state.global_step == len(per_step) < 32  # fewer steps than at 2 a step
    assert per_step[:3] == [2, 2, 2] and max(per_step) > 2 and set(per_step) <= set(range(1, 9))
    assert control.changes  # each change reached the Trainer, at the first aligned step
    applied = [s for s in range(1, len(per_step)) if per_step[s] != per_step[s - 1]]
    assert len(applied) >= 1 and per_step[applied[0]] == control.changes[0].new
    assert all(sum(per_step[:s]) % per_step[s] == 0 for s in applied)  # aligned with the epoch
    # the learning rate inside each step is the constant one times sqrt(acc / 2); the
    # scheduler's value is back in place after every step
    for lr, micro in zip(watch.witness.step_lrs, per_step):
        assert lr == pytest.approx(LR * math.sqrt(micro / 2))
    assert watch.lr_after_steps == {LR}
    # tokens are the Trainer's count; each change is in the decision log
    events = read_logs(tmp_path / "log.jsonl").events
    assert [e.message for e in events] == [c.message for c in control.changes]
    assert events[0].tokens == pytest.approx(events[0].step * 2 * SEQ)  # steps of 2 sequences of 8
    assert "gradient accumulation 2 -> " in caplog.text


def test_hf_the_last_micro_batch_is_measured_before_gradient_clipping(tmp_path):
    """Two runs equal up to the first optimizer step, one clipping its gradients to almost
    nothing: the first noise-scale measurement is the same."""
    measured = []
    for clip in (0.0, 1e-6):
        control = controller(warmup_steps=100)
        trainer, _ = hf_trainer(tmp_path / str(clip), hf_callback(control), max_steps=1,
                                max_grad_norm=clip)
        trainer.train()
        measured.append((control.noise.grad_sq, control.noise.trace))
    assert measured[0][0] is not None
    assert measured[1] == pytest.approx(measured[0], rel=1e-5)


def test_hf_arguments_that_contradict_the_controller_are_refused(tmp_path):
    trainer, _ = hf_trainer(tmp_path, hf_callback(controller()), gradient_accumulation_steps=1)
    with pytest.raises(ParameterError, match=r"gradient_accumulation_steps=1\) must equal the "
                                             r"controller's accumulation \(2.*set gradient_accumulation_steps=2"):
        trainer.train()
    trainer, _ = hf_trainer(tmp_path, hf_callback(controller()), per_device_train_batch_size=2)
    with pytest.raises(ParameterError, match=r"per_device_train_batch_size=2\) must equal the "
                                             r"controller's micro_batch=1"):
        trainer.train()
    with pytest.raises(ParameterError, match="controller must be a BatchSizeController, got dict"):
        hf_callback({})
    with pytest.raises(ParameterError, match="tokens_per_example must be finite and > 0"):
        hf_callback(controller(), tokens_per_example=0)


class _BrokenController(BatchSizeController):
    """A controller that fails when asked to decide (a stand-in for any internal error)."""

    def after_step(self, *, step, tokens):
        raise RuntimeError("broken on purpose")


def test_hf_an_internal_error_stops_the_lever_with_a_warning_and_training_goes_on(tmp_path, caplog):
    broken = _BrokenController(micro_batch=1, min_accumulation=2, max_accumulation=8)
    trainer, watch = hf_trainer(tmp_path, hf_callback(broken, tokens_per_example=SEQ))
    trainer.train()
    assert trainer.state.global_step == 32 and watch.witness.per_step == [2] * 32
    warned = [r.message for r in caplog.records if "batch-size lever stopped" in r.message]
    assert len(warned) == 1
    assert ("RuntimeError: broken on purpose); training goes on with gradient accumulation 2 "
            "and learning-rate factor 1") in warned[0]


# --- Lightning ----------------------------------------------------------------------------------
class Sequences(pl.LightningModule):
    """Learns the mean token id of noisy sequences of 8 token ids: a task whose gradient noise
    asks for batches larger than the micro-batch of 2. Counts what really happens."""

    def __init__(self, *, manual: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = not manual
        self.embedding = torch.nn.Embedding(32, 4)
        self.head = torch.nn.Linear(4, 1)
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 32, (192, 8), generator=g)
        self.targets = self.ids.float().mean(dim=1, keepdim=True) / 32 + 0.3 * torch.randn(192, 1, generator=g)
        self.witness = None

    def on_train_start(self):
        self.witness = Witness(self.head, self.trainer.optimizers[0])  # head: once a batch

    def training_step(self, batch, _):
        ids, target = batch
        return (self.head(self.embedding(ids).mean(dim=1)) - target).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(self.ids, self.targets)
        return torch.utils.data.DataLoader(data, batch_size=2)


def lightning_fit(lever, *, module=None, max_epochs: int = 2, callbacks=(),
                  **options) -> tuple[pl.Trainer, Sequences]:
    module = module or Sequences()
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=[*callbacks, lever], accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, **options)
    trainer.fit(module)
    return trainer, module


def test_lightning_trainer_runs_the_new_accumulation_and_counts_tokens_from_batches(tmp_path):
    control = controller(DecisionLog(tmp_path / "log.jsonl", LogContext(run_id="seq")),
                         micro_batch=2, max_accumulation=16, lr_scaling="linear")
    lever = lightning_callback(control)
    trainer, module = lightning_fit(lever, gradient_clip_val=1.0)
    per_step = module.witness.per_step
    assert sum(per_step) == 2 * 96  # two epochs of 96 batches
    assert trainer.global_step == len(per_step) < 96
    assert per_step[:3] == [2, 2, 2] and max(per_step) > 2
    # every step runs a decided accumulation, except the short last step of an epoch, and a
    # change starts where the epoch's micro-batch count is a multiple of it
    ends = {i for i in range(len(per_step)) if sum(per_step[:i + 1]) % 96 == 0}
    decided = {2} | {c.new for c in control.changes}
    assert all(per_step[i] in decided for i in range(len(per_step)) if i not in ends)
    starts = [i for i in range(1, len(per_step)) if per_step[i] != per_step[i - 1] and i not in ends]
    assert starts and all(sum(per_step[:i]) % 96 % per_step[i] == 0 for i in starts)
    assert trainer.accumulate_grad_batches in decided
    for i, (lr, micro) in enumerate(zip(module.witness.step_lrs, per_step)):
        if i not in ends:  # (a short step keeps the factor of the accumulation in force)
            assert lr == pytest.approx(0.1 * micro / 2)  # linear rule: 0.1 x acc / 2
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1)  # restored
    events = read_logs(tmp_path / "log.jsonl").events
    assert [e.message for e in events] == [c.message for c in control.changes]
    # tokens: the token-id tensor of each batch (2 x 8), counted up to the decision's step
    first = control.changes[0]
    assert first.tokens == 16 * sum(per_step[:first.step])
    state = json.loads(json.dumps(lever.state_dict()))  # plain data: rides in checkpoints
    assert state["controller"] == control.state_dict()


def test_lightning_setups_the_lever_cannot_drive_are_refused():
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    with pytest.raises(ParameterError, match="automatic_optimization=False"):
        lightning_fit(lightning_callback(controller(micro_batch=2)), module=Sequences(manual=True))
    with pytest.raises(ParameterError, match="remove the GradientAccumulationScheduler"):
        lightning_fit(lightning_callback(controller(micro_batch=2)), max_epochs=1,
                      callbacks=[GradientAccumulationScheduler({0: 2})])

"""Freezing blocks front to back: FLOP accounting, block discovery, the AutoFreeze-style
Freezer on a real tiny model, its log, its state, and the FreezeOut baseline."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metastop.adapt.flops import BackwardFlops, backward_flops, backward_flops_per_token
from metastop.adapt.freeze import freezeout_times
from metastop.adapt.plateau import (
    Check,
    Collapse,
    Window,
    collapse_check,
    plateau_check,
)
from metastop.errors import ParameterError

torch = pytest.importorskip("torch")
from torch import nn

from metastop.adapt import FreezeOutSchedule, Freezer, find_blocks
from metastop.generate.model import TinyDecoder
from metastop.stop.decisionlog import DecisionLog, LogContext, read_logs

ROOT = Path(__file__).resolve().parent.parent
# TinyDecoder(52, d_model=8, n_layers=2, n_heads=2): one block holds 2 LayerNorms (2 x 16),
# qkv 8x24+24, out 8x8+8, MLP 8x32+32 and 32x8+8 = 872 parameters; the head is the final
# LayerNorm (16) and the untied output matrix 8 x 52 (416).
BLOCK, HEAD = 872, 16 + 8 * 52


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_decoder() -> TinyDecoder:
    torch.manual_seed(0)
    return TinyDecoder(52, d_model=8, n_layers=2, n_heads=2, max_len=8)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 1))


def regression(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, torch.sin(x.sum(1, keepdim=True)) + 0.3 * torch.randn(n, 1, generator=g)


def train(model, freezer, optimizer, steps: int, *, start: int = 0, total: int | None = None,
          poison: int | None = None) -> list[tuple[str, ...]]:
    """Full-batch Adam steps on the synthetic regression; ``poison``: a NaN in that step."""
    x, y = regression()
    frozen = []
    for step in range(start + 1, start + steps + 1):
        inputs = x.clone()
        if step == poison:
            inputs[0, 0] = math.nan
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(inputs), y).backward()
        freezer.after_backward()
        if step != poison:  # like a loss scaler, skip the step of a non-finite gradient
            optimizer.step()
        progress = None if total is None else step / total
        frozen.append(freezer.after_step(step=step, tokens=64.0 * step, progress=progress))
    return frozen


class Gated(nn.Module):
    """Two hidden blocks; ``gate`` multiplies the first block's output (``where="first"``) or
    the second's (``where="second"``): at 0 the blocks before it get no gradient at all."""

    def __init__(self, where: str = "first"):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second, self.out = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 1)
        self.where = where
        self.register_buffer("gate", torch.ones(()))

    def forward(self, x):
        hidden = torch.tanh(self.first(x) * (self.gate if self.where == "first" else 1.0))
        hidden = torch.tanh(self.second(hidden) * (self.gate if self.where == "second" else 1.0))
        return self.out(hidden)


def stream(model: Gated, freezer, optimizer, steps: int, *,
           gate_off: int | None = None) -> list[tuple[str, ...]]:
    """Adam on fresh noisy minibatches (the gradients never settle to 0 by themselves); the
    gate closes at step ``gate_off``."""
    g = torch.Generator().manual_seed(1)
    frozen = []
    for step in range(1, steps + 1):
        if step == gate_off:
            model.gate.fill_(0.0)
        x = torch.randn(16, 4, generator=g)
        y = torch.sin(x.sum(1, keepdim=True)) + 0.3 * torch.randn(16, 1, generator=g)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        freezer.after_backward()
        optimizer.step()
        frozen.append(freezer.after_step(step=step, tokens=16.0 * step, progress=step / steps))
    return frozen


def collapse_freezer(model: Gated, optimizer, **options) -> Freezer:
    return Freezer(blocks=[("first", model.first), ("second", model.second)], check_every=5,
                   patience=2, min_progress=0.0, collapse=0.05, optimizer=optimizer, **options)


# --- FLOP accounting -----------------------------------------------------------------------
@pytest.mark.parametrize("frozen, input_grad, expected", [
    (0, False, 4 * 300 + 4 * 10),      # everything: 4N
    (1, False, 4 * 200 + 4 * 10),      # the prefix skips weight and activation gradients
    (3, False, 2 * 10),                # all blocks frozen: the head's weight gradients only
    (1, True, 2 * 200 + 2 * 300 + 4 * 10),  # a trainable input: activations flow everywhere
    (3, True, 2 * 300 + 4 * 10),
])
def test_backward_flops_per_token_follows_the_6n_rule(frozen, input_grad, expected):
    assert backward_flops_per_token([100, 100, 100], frozen=frozen, head_params=10,
                                    input_grad=input_grad) == expected


def test_backward_flops_splits_tokens_into_spent_and_saved():
    flops = backward_flops(1000, [100, 100], frozen=1, head_params=10)
    assert flops == BackwardFlops(spent=440_000.0, saved=400_000.0)
    assert flops.saved_share == pytest.approx(400 / 840)
    spent, saved = backward_flops(0, [100], frozen=1)
    assert (spent, saved) == (0.0, 0.0)


@pytest.mark.parametrize("call, match", [
    (lambda: backward_flops_per_token([100], frozen=2), "frozen must be an integer in"),
    (lambda: backward_flops_per_token([100, -1]), "block_params must hold integers >= 0"),
    (lambda: backward_flops(-1.0, [100]), "tokens must be a finite number >= 0"),
    (lambda: backward_flops(math.inf, [100]), "got tokens=inf"),
])
def test_bad_flop_arguments_name_the_parameter(call, match):
    with pytest.raises(ParameterError, match=match):
        call()


def test_flops_of_a_known_model_before_and_after_freezing_its_prefix():
    model = tiny_decoder()
    freezer = Freezer(model)
    assert freezer.layout.head_params == HEAD and freezer.layout.inputs == ()
    assert freezer.backward_flops(1000) == (4000.0 * (2 * BLOCK + HEAD), 0.0)
    for name in ("embed", "position"):  # embeddings: ~0 FLOPs, but they open the prefix
        freezer.freeze(name, reason="test")
    assert freezer.backward_flops(1000).saved == 0.0
    freezer.freeze("blocks.0", reason="test")
    assert freezer.backward_flops(1000) == (4000.0 * (BLOCK + HEAD), 4000.0 * BLOCK)


# --- discovery -----------------------------------------------------------------------------
def test_discovery_on_tiny_decoder_puts_embeddings_first_and_never_the_head():
    layout = find_blocks(tiny_decoder())
    assert [name for name, _ in layout.blocks] == ["embed", "position", "blocks.0", "blocks.1"]


def test_discovery_on_a_hf_gpt2_keeps_the_tied_embedding_with_the_head():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=32, n_positions=8, n_embd=8, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    layout = find_blocks(model)
    assert [name for name, _ in layout.blocks] == ["transformer.wpe", "transformer.h.0",
                                                   "transformer.h.1"]
    assert layout.head_params == 32 * 8 + 2 * 8  # lm_head (= wte) and ln_f
    assert [p is model.transformer.wte.weight for p in layout.inputs] == [True]
    freezer = Freezer(model)
    for name in freezer.blocks[:2]:
        freezer.freeze(name, reason="test")
    block = sum(p.numel() for p in model.transformer.h[0].parameters())
    # the tied token embedding still trains, so block 0 saves its weight gradients only
    assert freezer.backward_flops(1.0).saved == 2.0 * block


def test_discovery_on_llama_and_sequential_and_the_error_without_blocks():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=2)
    llama = find_blocks(transformers.LlamaForCausalLM(config))
    assert [n for n, _ in llama.blocks] == ["model.embed_tokens", "model.layers.0",
                                            "model.layers.1"]
    assert [n for n, _ in find_blocks(mlp()).blocks] == ["0", "2"]  # not the last (the head)
    with pytest.raises(ParameterError, match=r"found no blocks .* pass blocks=\[\(name, module\)"):
        Freezer(nn.Linear(3, 3))


@pytest.mark.parametrize("blocks, match", [
    ([], "blocks must be a non-empty list"),
    ([("a", nn.Linear(2, 2)), ("a", nn.Linear(2, 2))], "names must be unique"),
    ([("a", nn.Tanh())], "each block needs parameters"),
    ([("a", "not a module")], r"blocks must hold \(name, module\) pairs"),
])
def test_given_blocks_are_checked(blocks, match):
    with pytest.raises(ParameterError, match=match):
        Freezer(blocks=blocks)


def test_a_parameter_in_two_blocks_is_refused():
    shared = nn.Linear(2, 2)
    with pytest.raises(ParameterError, match="no parameter may sit in two blocks"):
        Freezer(blocks=[("a", shared), ("b", nn.Sequential(shared))])


@pytest.mark.parametrize("options, match", [
    ({"check_every": 0}, r"check_every must be an integer >= 1, got check_every=0"),
    ({"threshold": 0.0}, r"threshold must be finite and > 0, got threshold=0.0"),
    ({"patience": 1.5}, r"patience must be an integer >= 1, got patience=1.5"),
    ({"min_progress": 1.5}, r"min_progress must be in \[0.0, 1.0\], got min_progress=1.5"),
    ({"collapse": 0}, r"collapse must be in \(0.0, 1.0\), got collapse=0.0"),
    ({"collapse": 1.0}, r"collapse must be in \(0.0, 1.0\), got collapse=1.0"),
    ({"collapse": -0.05}, r"collapse must be in \(0.0, 1.0\), got collapse=-0.05"),
    ({"collapse": math.nan}, r"collapse must be finite, got collapse=nan"),
    ({"collapse": "5%"}, r"collapse must be a number, got collapse='5%'"),
    ({"collapse": True}, r"collapse must be a number, got collapse=True"),
    ({"optimizer": object()}, "optimizer must be a torch optimizer"),
    ({"log": object()}, "log must be a DecisionLog"),
])
def test_bad_freezer_parameters_name_parameter_rule_and_value(options, match):
    with pytest.raises(ParameterError, match=match):
        Freezer(mlp(), **options)


# --- the adaptive freezer on a real model --------------------------------------------------
def test_plateau_check_allows_for_the_noise_of_the_windows():
    assert plateau_check(None, Window(1.0, 0.0), 0.05) is None
    assert plateau_check(Window(2.0, 0.0), Window(1.9, 0.0), 0.1) == Check(0.05, 0.1)
    assert not plateau_check(Window(1.0, 0.0), Window(1.2, 0.0), 0.05).plateau
    assert plateau_check(Window(1.0, 0.06), Window(1.2, 0.08), 0.05).plateau  # 20% < 5% + 20%


def test_collapse_check_compares_with_the_peak_so_far():
    assert collapse_check(None, 0.0, 0.05) is None  # no gradient yet: nothing to compare
    assert collapse_check(None, 2.0, 0.05) == Collapse(1.0, 0.05)  # this window is the peak
    assert collapse_check(4.0, 0.2, 0.05).collapsed  # 5% of the peak: the bound is inclusive
    assert not collapse_check(4.0, 0.3, 0.05).collapsed
    assert collapse_check(4.0, 5.0, 0.05) == Collapse(1.0, 0.05)  # a new peak


def test_collapse_freezes_a_block_whose_gradients_vanish_and_keeps_one_still_learning(tmp_path):
    model, path = Gated("first"), tmp_path / "log.jsonl"
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    freezer = collapse_freezer(model, optimizer, log=DecisionLog(path, LogContext(run_id="c")))
    frozen = stream(model, freezer, optimizer, 150, gate_off=40)
    # windows 41-45 and 46-50 have no gradient in "first": two collapsed checks, then frozen
    assert [(i, names) for i, names in enumerate(frozen, 1) if names] == [(50, ("first",))]
    (event,) = read_logs(path).events
    assert event.message == "block 'first': grad norm 0.0% of its peak <= 5% for 2 checks"
    assert event.step == 50 and event.change["frozen"] == ["first"]
    # "second" still learns from noisy batches: its norm stays well above 5% of its peak
    assert freezer.frozen == ("first",) and model.second.weight.requires_grad
    assert freezer.state_dict()["drops"]["second"][0] > 0.1


def test_collapse_freezes_every_collapsed_block_at_the_front_at_once():
    model = Gated("second")  # a closed gate after "second": neither block gets a gradient
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    frozen = stream(model, collapse_freezer(model, optimizer), optimizer, 60, gate_off=40)
    assert [(i, names) for i, names in enumerate(frozen, 1) if names] == [
        (50, ("first", "second"))]


def test_collapse_leaves_blocks_with_large_gradients_alone():
    model = Gated("first")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    freezer = collapse_freezer(model, optimizer)
    assert not any(stream(model, freezer, optimizer, 150)) and freezer.frozen == ()
    shares = {name: share for name, (share, bound) in freezer.state_dict()["drops"].items()}
    assert shares.keys() == {"first", "second"} and min(shares.values()) > 0.3


def test_training_freezes_front_to_back_logs_why_and_frozen_blocks_stop(tmp_path):
    model, path = mlp(), tmp_path / "log.jsonl"
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    log = DecisionLog(path, LogContext(run_id="r1"))
    freezer = Freezer(model, check_every=5, threshold=0.2, patience=2, min_progress=0.3,
                      optimizer=optimizer, log=log)
    frozen = [names for names in train(model, freezer, optimizer, 150, total=150) if names]
    assert frozen == [("0",), ("2",)] and freezer.frozen == ("0", "2")  # never "4", the head
    events = read_logs(path).events
    assert [(e.kind, e.run_id, e.change["block"], e.change["frozen"]) for e in events] == [
        ("freeze", "r1", "0", ["0"]), ("freeze", "r1", "2", ["0", "2"])]
    assert events[0].step >= 0.3 * 150 and events[0].step < events[1].step
    assert events[0].tokens == 64.0 * events[0].step and events[0].change["params"] == 80
    assert events[0].message.startswith("block '0': grad-norm change ")
    assert "< 20% + noise" in events[0].message and events[0].message.endswith(" for 2 checks")
    # frozen: no gradient, no optimizer state, weights fixed; the head still trains
    before = [p.detach().clone() for p in model.parameters()]
    train(model, freezer, optimizer, 5, start=150)
    after = list(model.parameters())
    assert all(p.grad is None and p not in optimizer.state
               for p in [*model[0].parameters(), *model[2].parameters()])
    assert all(torch.equal(b, a) for b, a in zip(before[:4], after[:4]))
    assert not torch.equal(before[4], after[4])


def test_nothing_freezes_before_min_progress():
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    freezer = Freezer(model, check_every=5, threshold=0.2, patience=2, min_progress=0.9)
    steps = train(model, freezer, optimizer, 100, total=150)  # 2/3 of the run
    assert not any(steps) and freezer.frozen == ()


def test_unfreeze_is_logged_and_order_is_enforced(tmp_path):
    model, path = mlp(), tmp_path / "log.jsonl"
    freezer = Freezer(model, log=DecisionLog(path, LogContext(run_id="r")))
    model[2].bias.requires_grad_(False)  # frozen by someone else (an adapter's base weights)
    with pytest.raises(ParameterError, match="the next block is '0', got name='2'"):
        freezer.freeze("2", reason="out of order")
    freezer.freeze("0", reason="by hand", step=3, tokens=30.0)
    freezer.freeze("2", reason="by hand")
    with pytest.raises(ParameterError, match="the last frozen block is '2', got name='0'"):
        freezer.unfreeze("0", reason="out of order")
    freezer.unfreeze("2", reason="loss went up", step=9, tokens=90.0)
    assert freezer.frozen == ("0",) and model[2].weight.requires_grad
    assert not model[2].bias.requires_grad  # switched back on: only what freezing switched off
    last = read_logs(path).events[-1]
    assert (last.message, last.step, last.tokens) == ("unfroze block '2': loss went up", 9, 90.0)
    assert last.change == {"block": "2", "action": "unfreeze", "frozen": ["0"], "params": 272}


def test_a_non_finite_gradient_skips_that_check_with_a_warning(caplog):
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    freezer = Freezer(model, check_every=5, threshold=0.2, patience=1, min_progress=0.0)
    with caplog.at_level(logging.WARNING, logger="metastop.adapt.freeze"):
        steps = train(model, freezer, optimizer, 10, poison=3)
    assert not any(steps)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert ("freeze check at step 5 skipped: block '0' had a non-finite gradient norm (nan)"
            in warning)
    assert freezer.state_dict()["previous"].keys() == {"0", "2"}  # the second window counted


@pytest.mark.parametrize("collapse", [None, 0.5])
def test_state_round_trips_through_json_and_reapplies_frozen_blocks(collapse):
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    options = {"check_every": 5, "threshold": 0.2, "patience": 2, "min_progress": 0.3,
               "collapse": collapse}
    freezer = Freezer(model, **options)
    train(model, freezer, optimizer, 73, total=150)
    state = json.loads(json.dumps(freezer.state_dict()))
    assert bool(state["peaks"]) == (collapse is not None)
    fresh = mlp()
    again = Freezer(fresh, **options)
    again.load_state_dict(state)
    assert again.state_dict() == state and again.frozen == freezer.frozen
    for name, module in again.layout.blocks:
        assert all(p.requires_grad == (name not in again.frozen) for p in module.parameters())


@pytest.mark.parametrize("change, match", [
    ({"version": 9}, "state must be a Freezer state of version 1"),
    ({"kind": "FreezeOutSchedule"}, "state must be a Freezer state"),
    ({"blocks": ["0", "2", "4"]}, r"state blocks must match this model's \['0', '2'\]"),
    ({"frozen": ["2"]}, "state frozen must be a front prefix"),
    ({"streaks": {"0": -1}}, "state streaks must map this model's blocks"),
    ({"window": {"0": [1.0, 1.0, 0]}}, "state window must map"),
    ({"previous": {"9": [1.0, 0.1]}}, "state previous must map"),
    ({"steps": "many"}, "state steps must be an integer >= 0"),
    ({"peaks": {"0": -1.0}}, "state peaks must map this model's blocks"),
    ({"lows": {"2": 1.5}}, "state lows must map"),
    ({"drops": {"0": [0.1]}}, "state drops must map"),
])
def test_bad_state_is_refused_before_anything_changes(change, match):
    model = mlp()
    freezer = Freezer(model)
    freezer.freeze("0", reason="before")
    good = freezer.state_dict()
    with pytest.raises(ParameterError, match=match):
        freezer.load_state_dict({**Freezer(mlp()).state_dict(), **change})
    assert freezer.state_dict() == good and not model[0].weight.requires_grad


# --- the FreezeOut baseline ----------------------------------------------------------------
def test_freezeout_times_linear_and_cubic():
    assert freezeout_times(4, t0=0.5) == (0.5, 0.625, 0.75, 0.875)
    cubic = freezeout_times(2, t0=0.8, cubic=True)
    assert cubic == pytest.approx((0.512, 0.9 ** 3))


def test_freezeout_schedule_freezes_every_due_block_and_warns_without_progress(caplog, tmp_path):
    model, path = tiny_decoder(), tmp_path / "log.jsonl"
    schedule = FreezeOutSchedule(model, t0=0.5, log=DecisionLog(path, LogContext(run_id="f")))
    assert schedule.times == (0.5, 0.625, 0.75, 0.875)
    with caplog.at_level(logging.WARNING, logger="metastop.adapt.freeze"):
        assert schedule.after_step(step=1, tokens=1.0) == ()
        assert schedule.after_step(step=2, tokens=2.0) == ()
    assert len(caplog.records) == 1 and "needs progress" in caplog.records[0].getMessage()
    assert schedule.after_step(step=3, tokens=3.0, progress=0.49) == ()
    assert schedule.after_step(step=4, tokens=4.0, progress=0.7) == ("embed", "position")
    assert not model.position.weight.requires_grad and model.blocks[0].norm1.weight.requires_grad
    event = read_logs(path).events[-1]
    assert event.message == ("block 'position': FreezeOut linear schedule: progress 0.700 >= "
                             "t_1 = 0.625")
    assert schedule.after_step(step=5, tokens=5.0, progress=1.0) == ("blocks.0", "blocks.1")
    assert schedule.backward_flops(1.0) == (2.0 * HEAD, 4.0 * 2 * BLOCK + 2.0 * HEAD)
    copy = FreezeOutSchedule(tiny_decoder(), t0=0.5)
    copy.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
    assert copy.frozen == schedule.frozen


@pytest.mark.parametrize("options, match", [
    ({"t0": 0}, r"t0 must be in \(0, 1\], got t0=0"),
    ({"t0": 1.5}, r"t0 must be in \[0.0, 1.0\], got t0=1.5"),
    ({"cubic": "yes"}, "cubic must be True or False, got cubic='yes'"),
])
def test_bad_freezeout_parameters(options, match):
    with pytest.raises(ParameterError, match=match):
        FreezeOutSchedule(mlp(), **options)


# --- torch stays optional ------------------------------------------------------------------
def test_import_and_validation_work_without_torch():
    code = """
import sys
sys.modules["torch"] = None
import metastop.adapt as adapt
from metastop.adapt import Freezer, FreezeOutSchedule, backward_flops
from metastop.errors import ParameterError
assert backward_flops(10, [100], frozen=1).saved == 4000.0
for make in (lambda: Freezer(check_every=0), lambda: FreezeOutSchedule(t0=2.0),
             lambda: Freezer()):
    try:
        make()
    except ParameterError as error:
        print("refused:", error)
    else:
        raise SystemExit("accepted")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("refused:") == 3 and "check_every" in done.stdout

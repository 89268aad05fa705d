"""The gradient noise scale and the adaptive batch-size controller (``metastop.adapt``)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import numpy as np
import pytest

from metastop.adapt import LR_SCALING, BatchChange, BatchSizeController, NoiseScale
from metastop.adapt.batchsize import lr_factor
from metastop.errors import ParameterError
from metastop.stop.decisionlog import DecisionLog, LogContext, read_logs


def gaussian_gradients(rng, *, noise_scale: float, micro: int, accumulation: int,
                       steps: int, dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Squared norms ``(small, big)`` per step of micro-batch mean gradients drawn around a
    true gradient with ``|G|^2 = 1`` and a diagonal covariance of trace ``noise_scale``."""
    true = rng.normal(size=dim)
    true /= np.linalg.norm(true)
    scale = rng.uniform(0.5, 1.5, size=dim)  # anisotropic: only the trace matters
    scale *= math.sqrt(noise_scale / np.sum(scale ** 2))
    draws = true + rng.normal(size=(steps, accumulation, dim)) * scale / math.sqrt(micro)
    small = np.sum(draws[:, 0] ** 2, axis=1)
    big = np.sum(draws.mean(axis=1) ** 2, axis=1)
    return small, big


def feed(controller: BatchSizeController, rng, *, noise_scale: float, steps: int,
         start: int = 1, tokens_per_step: float = 100.0) -> list[int]:
    """Run ``steps`` optimizer steps of synthetic norms through the controller's protocol;
    the accumulation after each step."""
    seen = []
    for step in range(start, start + steps):
        acc = controller.accumulation
        small, big = gaussian_gradients(rng, noise_scale=noise_scale, micro=controller.micro_batch,
                                        accumulation=acc, steps=1)
        controller.record(float(small[0]) / acc ** 2, index=0)  # .grad holds g_1 / accumulation
        controller.record(float(big[0]), index=acc - 1)
        controller.after_step(step=step, tokens=step * tokens_per_step)
        seen.append(controller.accumulation)
    return seen


# --- NoiseScale ------------------------------------------------------------------------------
@pytest.mark.parametrize("noise_scale, micro, accumulation", [(50, 4, 8), (20, 2, 4), (200, 16, 8)])
def test_noise_scale_recovers_a_known_b_simple_from_gaussian_gradients(noise_scale, micro, accumulation):
    rng = np.random.default_rng(0)
    small, big = gaussian_gradients(rng, noise_scale=noise_scale, micro=micro,
                                    accumulation=accumulation, steps=3000)
    estimate = NoiseScale(smoothing=0.995)
    for s, b in zip(small, big):
        estimate.update(small_sq_norm=s, small_batch=micro, big_sq_norm=b, big_batch=micro * accumulation)
    assert estimate.value == pytest.approx(noise_scale, rel=0.15)
    assert estimate.trace == pytest.approx(noise_scale, rel=0.15)  # tr(Sigma)
    assert estimate.grad_sq == pytest.approx(1.0, rel=0.15)  # |G|^2


def test_noise_scale_is_exact_on_expected_norms_and_unknown_before_data():
    estimate = NoiseScale(smoothing=0.5)
    assert estimate.value is None and estimate.trace is None
    for _ in range(3):  # E|G_B|^2 = |G|^2 + tr(Sigma) / B with |G|^2 = 2, tr = 300
        value = estimate.update(small_sq_norm=2 + 300 / 8, small_batch=8, big_sq_norm=2 + 300 / 64,
                                big_batch=64)
    assert value == pytest.approx(150.0)
    assert estimate.grad_sq == pytest.approx(2.0) and estimate.trace == pytest.approx(300.0)


def test_noise_scale_skips_non_finite_norms_and_rejects_bad_batches(caplog):
    estimate = NoiseScale()
    estimate.update(small_sq_norm=10.0, small_batch=1, big_sq_norm=2.0, big_batch=4)
    before = estimate.state_dict()
    for bad in (math.nan, math.inf, -1.0, "x"):
        assert estimate.update(small_sq_norm=bad, small_batch=1, big_sq_norm=1.0, big_batch=4) == estimate.value
    assert estimate.state_dict() == before
    assert "small_sq_norm=nan is not a finite number >= 0" in caplog.text
    with pytest.raises(ParameterError, match="big_batch must be larger than small_batch.*small_batch=4, big_batch=4"):
        estimate.update(small_sq_norm=1.0, small_batch=4, big_sq_norm=1.0, big_batch=4)
    with pytest.raises(ParameterError, match=r"small_batch must be an integer >= 1, got small_batch=0"):
        estimate.update(small_sq_norm=1.0, small_batch=0, big_sq_norm=1.0, big_batch=4)
    with pytest.raises(ParameterError, match=r"smoothing must be < 1.*smoothing=1"):
        NoiseScale(smoothing=1)
    with pytest.raises(ParameterError, match=r"smoothing must be in \[0.0, 1.0\], got smoothing=-0.1"):
        NoiseScale(smoothing=-0.1)


# --- the controller ------------------------------------------------------------------------
def test_a_big_noise_scale_grows_the_accumulation_to_its_bound_and_logs_each_change(tmp_path):
    log_path = tmp_path / "decisions.jsonl"
    control = BatchSizeController(micro_batch=4, min_accumulation=2, max_accumulation=16,
                                  warmup_steps=5, check_every=5, smoothing=0.8, noise_fraction=1.0,
                                  log=DecisionLog(log_path, LogContext(run_id="r1", task="qa")))
    seen = feed(control, np.random.default_rng(1), noise_scale=400.0, steps=60)
    assert seen[:4] == [2] * 4  # warmup: no decision
    assert seen[-1] == 16 and set(seen) <= set(range(2, 17))
    assert control.batch_size == 64
    assert control.changes and all(isinstance(c, BatchChange) for c in control.changes)
    assert control.changes[-1].message.endswith("(max_accumulation)")
    assert [c.step % 5 for c in control.changes] == [0] * len(control.changes)

    events = read_logs(log_path).events
    assert len(events) == len(control.changes)
    first, change = events[0], control.changes[0]
    assert first.kind == "batch_size" and first.run_id == "r1" and first.step == change.step
    assert first.tokens == change.step * 100.0
    assert first.message == change.message
    assert first.message.startswith(f"noise scale {change.noise_scale:.0f} examples > batch 8: "
                                    f"accumulation 2 -> {change.new}")
    assert first.change["accumulation"] == [2, change.new]
    assert first.change["batch_size"] == [8, 4 * change.new]
    assert first.change["noise_scale"] == pytest.approx(change.noise_scale)
    assert first.change["lr_factor"] == pytest.approx([1.0, math.sqrt(change.new / 2)])


def test_a_small_noise_scale_shrinks_the_accumulation_back_to_its_minimum():
    control = BatchSizeController(micro_batch=4, min_accumulation=2, max_accumulation=16,
                                  warmup_steps=0, check_every=2, smoothing=0.8)
    rng = np.random.default_rng(2)
    assert feed(control, rng, noise_scale=400.0, steps=40)[-1] == 16  # 0.25 x 400 / 4 > 16
    assert feed(control, rng, noise_scale=2.0, steps=40, start=41)[-1] == 2
    assert "< batch" in control.changes[-1].message


def test_hysteresis_keeps_the_accumulation_when_the_target_is_close():
    # noise scale 40 examples / micro-batch 8 -> target 5 micro-batches; from 4 it is 1.25x
    control = BatchSizeController(micro_batch=8, min_accumulation=2, max_accumulation=16,
                                  warmup_steps=0, check_every=1, smoothing=0.0, noise_fraction=1.0)
    control.load_state_dict({"accumulation": 4})
    for step in range(1, 4):
        control.record((1 + 40 / 8) / 16, index=0)  # the expected norms: an exact estimate
        control.record(1 + 40 / 32, index=3)
        assert control.after_step(step=step, tokens=0.0) is None
    assert control.noise_scale == pytest.approx(40.0) and control.accumulation == 4
    control.record((1 + 80 / 8) / 16, index=0)  # noise scale 80 -> target 10: 2.5x
    control.record(1 + 80 / 32, index=3)
    change = control.after_step(step=4, tokens=4.0)
    assert (change.old, change.new) == (4, 10) and control.accumulation == 10


def test_noise_fraction_aims_the_batch_at_a_share_of_the_noise_scale():
    control = BatchSizeController(micro_batch=8, min_accumulation=2, max_accumulation=32,
                                  warmup_steps=0, check_every=1, smoothing=0.0,
                                  noise_fraction=0.25)
    control.record((1 + 320 / 8) / 4, index=0)  # noise scale 320 -> 80 examples -> 10 x 8
    control.record(1 + 320 / 16, index=1)
    change = control.after_step(step=1, tokens=16.0)
    assert change.new == 10 and change.noise_scale == pytest.approx(320.0)
    assert change.message == "noise scale 320 examples x 0.25 = 80 > batch 16: accumulation 2 -> 10"


@pytest.mark.parametrize("rule, expected", [("linear", 4.0), ("sqrt", 2.0), ("none", 1.0)])
def test_the_learning_rate_factor_follows_the_rule_relative_to_min_accumulation(rule, expected):
    control = BatchSizeController(micro_batch=4, min_accumulation=2, max_accumulation=32,
                                  lr_scaling=rule)
    assert control.lr_factor == 1.0
    control.load_state_dict({"accumulation": 8})
    assert control.lr_factor == pytest.approx(expected)
    assert lr_factor(8, 2, rule) == pytest.approx(expected)
    assert rule in LR_SCALING


@pytest.mark.parametrize("arguments, message", [
    ({"micro_batch": 0}, r"micro_batch must be an integer >= 1, got micro_batch=0"),
    ({"micro_batch": 2.5}, r"micro_batch must be an integer >= 1, got micro_batch=2.5"),
    ({"micro_batch": 4, "min_accumulation": 1},
     r"min_accumulation must be an integer >= 2 \(the noise scale needs two batch sizes: one "
     r"micro-batch and the whole step\), got min_accumulation=1"),
    ({"micro_batch": 4, "min_accumulation": 8, "max_accumulation": 4},
     r"max_accumulation must be >= min_accumulation, got min_accumulation=8, max_accumulation=4"),
    ({"micro_batch": 4, "lr_scaling": "quadratic"},
     r"lr_scaling must be one of \('none', 'linear', 'sqrt'\), got lr_scaling='quadratic'"),
    ({"micro_batch": 4, "check_every": 0}, r"check_every must be an integer >= 1, got check_every=0"),
    ({"micro_batch": 4, "warmup_steps": -1}, r"warmup_steps must be an integer >= 0, got warmup_steps=-1"),
    ({"micro_batch": 4, "smoothing": 1.5}, r"smoothing must be in \[0.0, 1.0\], got smoothing=1.5"),
    ({"micro_batch": True}, r"micro_batch must be an integer >= 1, got micro_batch=True"),
    ({"micro_batch": 4, "noise_fraction": 0}, r"noise_fraction must be in \(0.0, inf\), got noise_fraction=0"),
    ({"micro_batch": 4, "noise_fraction": math.inf}, r"noise_fraction must be finite, got noise_fraction=inf"),
])
def test_bad_arguments_are_rejected_naming_parameter_rule_and_value(arguments, message):
    with pytest.raises(ParameterError, match=message):
        BatchSizeController(**arguments)


def test_non_finite_or_missing_gradients_are_skipped_without_raising(caplog):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 1)
    settings = dict(micro_batch=2, min_accumulation=2, max_accumulation=8, warmup_steps=0,
                    check_every=1)
    BatchSizeController(**settings).after_backward(model, 0)  # no gradients yet
    assert "skipped the measurement at micro-batch 0: no parameter has a gradient" in caplog.text
    control = BatchSizeController(**settings)
    for bad in (math.inf, math.nan):
        for p in model.parameters():
            p.grad = torch.full_like(p, bad)
        control.after_backward(model, 0)
        control.after_backward(model, 1)  # not read: the step's first reading was dropped
        assert control.after_step(step=1, tokens=1.0) is None
    control.record(-1.0, index=0)
    control.record(1.0, index=7)  # outside 0..accumulation-1: ignored with a warning
    assert control.noise.count == 0 and control.noise_scale is None
    assert control.skipped == 3 and control.accumulation == 2
    assert ("the squared gradient norm is inf (overflow or NaN in the gradients); the batch "
            "size stays 4 (1 measurement(s) skipped so far)") in caplog.text
    assert "micro-batch index 7 is outside 0..1" in caplog.text
    # warnings thin out: the 1st, 10th, 100th ... skip of a controller
    assert len([r for r in caplog.records if "skipped the measurement" in r.message]) == 2
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    control.after_backward(model, 0)
    control.after_backward(model, 1)
    control.after_step(step=2, tokens=2.0)
    assert control.noise.count == 1  # and measuring goes on


def test_the_state_round_trips_as_plain_data():
    control = BatchSizeController(micro_batch=4, min_accumulation=2, max_accumulation=16,
                                  warmup_steps=2, check_every=3, smoothing=0.7)
    feed(control, np.random.default_rng(3), noise_scale=300.0, steps=20)
    state = json.loads(json.dumps(control.state_dict()))  # plain data, no pickle
    copy = BatchSizeController(micro_batch=4, min_accumulation=2, max_accumulation=16,
                               warmup_steps=2, check_every=3, smoothing=0.7)
    copy.load_state_dict(state)
    assert copy.state_dict() == control.state_dict()
    assert copy.changes == control.changes and copy.noise_scale == pytest.approx(control.noise_scale)
    # both continue identically
    assert feed(copy, np.random.default_rng(4), noise_scale=5.0, steps=12, start=21) == \
        feed(control, np.random.default_rng(4), noise_scale=5.0, steps=12, start=21)


@pytest.mark.parametrize("patch, message", [
    ({"accumulation": 64}, r"accumulation must be an integer in \[2, 16\], got accumulation=64"),
    ({"accumulation": "4"}, r"accumulation must be an integer in \[2, 16\], got accumulation='4'"),
    ({"micro_batch": 8}, r"saved with micro_batch=8, but this controller has micro_batch=4"),
    ({"last_check": -3}, r"last_check must be an integer >= 0, got last_check=-3"),
    ({"noise": {"grad_sq_ema": math.nan}}, r"grad_sq_ema must be a finite number, got grad_sq_ema=nan"),
    ({"noise": {"count": -1}}, r"count must be an integer >= 0, got count=-1"),
    ({"noise": []}, r"noise-scale state must be a mapping, got list"),
    ({"changes": [{"step": 1}]}, r"changes\[0\] must be a mapping with keys"),
    ({"changes": {}}, r"changes must be a list, got dict"),
])
def test_a_bad_state_is_rejected_and_changes_nothing(patch, message):
    control = BatchSizeController(micro_batch=4, min_accumulation=2, max_accumulation=16,
                                  warmup_steps=0, check_every=1, smoothing=0.5)
    feed(control, np.random.default_rng(5), noise_scale=300.0, steps=30)
    before = control.state_dict()
    good = {**before, "changes": [dict(c) for c in before["changes"]]}
    bad_change = dict(good["changes"][0], new="8")
    with pytest.raises(ParameterError, match=message):
        control.load_state_dict({**good, **patch})
    with pytest.raises(ParameterError, match=r"changes\[0\].new must be int, got new='8'"):
        control.load_state_dict({**good, "accumulation": 2, "changes": [bad_change]})
    with pytest.raises(ParameterError, match="batch-size state must be a mapping, got list"):
        control.load_state_dict([])
    assert control.state_dict() == before


def test_importing_and_building_the_levers_needs_no_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import metastop.adapt as adapt\n"
            "control = adapt.BatchSizeController(micro_batch=8, max_accumulation=4)\n"
            "control.record(3.0, index=0); control.record(1.0, index=1)\n"
            "control.after_step(step=1, tokens=16.0)\n"
            "assert adapt.NoiseScale().value is None\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print(sorted(adapt.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "BatchSizeController" in out.stdout and "NoiseScale" in out.stdout


# --- a real model in a plain PyTorch loop ----------------------------------------------------
def test_a_tiny_mlp_trains_in_a_plain_loop_while_the_batch_grows(tmp_path, caplog):
    torch = pytest.importorskip("torch")
    caplog.set_level(logging.INFO, logger="metastop")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(4096, 8)
        y = x @ torch.randn(8, 1) + 0.5 * torch.randn(4096, 1)  # noisy targets
        model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        control = BatchSizeController(micro_batch=4, min_accumulation=2, max_accumulation=16,
                                      lr_scaling="sqrt", warmup_steps=10, check_every=10,
                                      noise_fraction=1.0,
                                      log=DecisionLog(tmp_path / "log.jsonl", LogContext(run_id="mlp")))

        def loss_at() -> float:
            with torch.no_grad():
                return float(torch.nn.functional.mse_loss(model(x), y))

        first, position, examples = loss_at(), 0, 0
        for step in range(1, 151):
            optimizer.zero_grad()
            for index in range(control.accumulation):
                rows = torch.arange(position, position + 4) % len(x)
                position += 4
                loss = torch.nn.functional.mse_loss(model(x[rows]), y[rows])
                (loss / control.accumulation).backward()
                control.after_backward(model, index)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for group in optimizer.param_groups:
                group["lr"] = 0.05 * control.lr_factor
            optimizer.step()
            examples += control.batch_size
            control.after_step(step=step, tokens=examples * 8.0)
    finally:
        torch.set_num_threads(threads)
    assert loss_at() < 0.5 * first
    assert control.noise.count == 150 and control.skipped == 0
    assert control.changes and control.accumulation > 2  # the noisy task asks for bigger batches
    assert all(2 <= c.new <= 16 for c in control.changes)
    assert [e.message for e in read_logs(tmp_path / "log.jsonl").events] == \
        [c.message for c in control.changes]
    assert control.changes[0].message in caplog.text

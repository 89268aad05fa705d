"""Tests of metastop.generate: task generators, the training run, the sweep, shapes."""

from __future__ import annotations

import random
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from metastop.curves import Curve, CurveSet
from metastop.errors import ParameterError
from metastop.generate import shapes
from metastop.generate.shapes import classify_shape, shape_counts
from metastop.generate.tasks import TASKS, decode, encode, make_split

torch = pytest.importorskip("torch")

from metastop.generate.report import data_card, plot_shape_examples, summary_tables  # noqa: E402
from metastop.generate.sweep import run_sweep, sample_configs  # noqa: E402
from metastop.generate.train import RunConfig, example_stream, lr_factor, train_run  # noqa: E402
from metastop.ingest import read_curves  # noqa: E402

TINY = RunConfig(task="sorting", difficulty=3, d_model=16, n_layers=1, n_heads=2, lr=3e-3,
                 batch_size=8, train_size=40, steps=30, eval_size=16, n_evals=6, seed=3)


# --- task generators ---------------------------------------------------------------------
def _examples(task: str, difficulty: int, n: int = 200):
    rng = random.Random(7)
    return [TASKS[task](rng, difficulty) for _ in range(n)]


def test_addition_answers_are_the_sums():
    for ex in _examples("addition", 3):
        a, b = ex.prompt.rstrip("=").split("+")
        assert int(ex.answer) == int(a) + int(b)
        assert max(len(a), len(b)) <= 3


def test_modular_answers_are_sums_mod_p():
    for ex in _examples("modular", 23):
        a, b, p = map(int, re.fullmatch(r"(\d+)\+(\d+)%(\d+)=", ex.prompt).groups())
        assert p == 23 and a < p and b < p
        assert int(ex.answer) == (a + b) % p


def test_reversal_and_sorting_answers():
    for ex in _examples("reversal", 6):
        assert ex.prompt.endswith("|") and ex.answer == ex.prompt[:-1][::-1]
        assert 2 <= len(ex.answer) <= 6
    for ex in _examples("sorting", 6):
        assert ex.answer == "".join(sorted(ex.prompt[:-1]))


def test_copy_answer_is_the_queried_segment():
    for ex in _examples("copy", 4):
        body, query = ex.prompt.split("?")
        close = ")" if query == "(" else "]"
        segment = body[body.index(query) + 1:body.index(close)]
        assert ex.answer == segment and 1 <= len(segment) <= 4


def test_qa_answer_matches_the_passage():
    for ex in _examples("qa", 3):
        passage, question = ex.prompt.split("?")
        facts = {name: (age, city) for name, age, city in
                 (entry.split(" ") for entry in passage.rstrip(";").split(";"))}
        field, name = question.rstrip("=").split(" ")
        assert len(facts) == 3
        assert ex.answer == facts[name][0 if field == "age" else 1]


def test_encode_decode_round_trip_and_bad_character():
    assert decode(encode("12+3=15?ab[c]")) == "12+3=15?ab[c]"
    with pytest.raises(ParameterError, match="outside the vocabulary: '!'"):
        encode("1!")


def test_make_split_is_disjoint_seeded_and_keeps_held_out_fixed():
    train, held = make_split("addition", 2, train_size=300, eval_size=50, seed=1)
    assert len(train) == 300 and len(held) == 50
    assert not {e.prompt for e in train} & {e.prompt for e in held}
    assert len({e.prompt for e in train}) == 300
    again_train, again_held = make_split("addition", 2, train_size=300, eval_size=50, seed=1)
    assert again_train == train and again_held == held
    _, held_small_train = make_split("addition", 2, train_size=20, eval_size=50, seed=1)
    assert held_small_train == held
    _, other = make_split("addition", 2, train_size=20, eval_size=50, seed=2)
    assert other != held


@pytest.mark.parametrize("kwargs, message", [
    (dict(task="division", difficulty=2), "task must be one of"),
    (dict(task="addition", difficulty=9), r"difficulty for task 'addition' must be in \[1, 6\], got difficulty=9"),
    (dict(task="addition", difficulty=2, train_size=0), "train_size must be >= 1, got train_size=0"),
    (dict(task="modular", difficulty=5, train_size=30), "too few distinct prompts"),
])
def test_make_split_rejects_bad_parameters(kwargs, message):
    options = dict(train_size=10, eval_size=5, seed=0) | kwargs
    with pytest.raises(ParameterError, match=message):
        make_split(options.pop("task"), options.pop("difficulty"), **options)


# --- training ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(schedule="step"), "schedule must be one of"),
    (dict(lr=-1.0), r"lr must be finite and >= 0, got lr=-1.0"),
    (dict(d_model=30, n_heads=4), "d_model must be divisible by n_heads=4, got d_model=30"),
    (dict(n_evals=50, steps=10), "n_evals must be <= steps=10, got n_evals=50"),
    (dict(warmup_frac=0.5, cooldown_frac=0.5), "warmup_frac \\+ cooldown_frac must be < 1"),
    (dict(batch_rule="grow"), r"batch_rule must be one of \('fixed', 'ramp', 'adaptive'\), "
                              r"got batch_rule='grow'"),
    (dict(freeze_rule="all"), r"freeze_rule must be one of .*got freeze_rule='all'"),
    (dict(lr_scaling="cubic"), r"lr_scaling must be one of .*got lr_scaling='cubic'"),
    (dict(micro_batch=-2), r"micro_batch must be >= 0 \(0: batch_size\), got micro_batch=-2"),
    (dict(batch_size=32, micro_batch=12), "batch_size must be a multiple of micro_batch=12, "
                                          "got batch_size=32"),
    (dict(batch_size=32, max_batch_size=64), "max_batch_size must be 0 or batch_size=32 for "
                                             "batch_rule='fixed', got max_batch_size=64"),
    (dict(batch_rule="ramp", batch_size=32), "max_batch_size must be > batch_size=32 for "
                                             "batch_rule='ramp', got max_batch_size=0"),
    (dict(batch_rule="ramp", batch_size=32, max_batch_size=80),
     "max_batch_size must be a multiple of micro_batch=32, got max_batch_size=80"),
    (dict(batch_rule="adaptive", batch_size=32, max_batch_size=128),
     r"batch_size must be >= 2 \* micro_batch=32 for batch_rule='adaptive'"),
])
def test_run_config_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        config = RunConfig(**kwargs)
        train_run(config)


def test_lr_schedules_follow_token_progress():
    progress = np.linspace(0.0, 1.0, 101)

    def factors(schedule):
        return np.array([lr_factor(schedule, p, warmup_frac=0.1, cooldown_frac=0.2)
                         for p in progress])
    for schedule in ("cosine", "linear", "constant_cooldown", "constant"):
        f = factors(schedule)
        assert f[0] == 0.0 and f[5] == pytest.approx(0.5) and f[10] == pytest.approx(1.0)
        assert np.all((f >= 0) & (f <= 1))
    assert factors("cosine")[-1] < 1e-9 and factors("linear")[-1] < 1e-9
    assert factors("cosine")[55] == pytest.approx(0.5)
    cooldown = factors("constant_cooldown")
    assert np.all(cooldown[10:81] == 1.0)
    assert cooldown[-1] < 1e-9 and np.all(np.diff(cooldown[80:]) < 0)
    assert np.all(factors("constant")[10:] == 1.0)


def _expected_tokens(config: RunConfig) -> np.ndarray:
    """Input tokens per example of the stream, counted independently: <bos> + prompt + answer."""
    train, _ = make_split(config.task, config.difficulty, train_size=config.train_size,
                          eval_size=config.eval_size, seed=config.seed)
    sizes = np.array([1 + len(e.prompt) + len(e.answer) for e in train])
    stream = example_stream(len(train), n_drawn=config.steps * config.batch_size,
                            seed=config.seed).numpy()
    return sizes[stream].cumsum()


def test_train_run_counts_tokens_exactly_and_is_deterministic():
    result = train_run(TINY)
    expected = _expected_tokens(TINY)
    assert result.budget == expected[-1] and result.tokens[-1] == result.budget
    assert np.all(np.diff(result.tokens) > 0)
    assert list(result.tokens) == [int(expected[s * TINY.batch_size - 1]) for s in result.steps]
    assert result.steps[-1] == result.optimizer_steps == TINY.steps
    assert len(result.values) == len(result.eval_losses) == TINY.n_evals
    assert all(0.0 <= v <= 1.0 for v in result.values)
    assert set(result.batch_sizes) == {TINY.batch_size} and set(result.frozen) == {0}
    assert result.backward_flops > 0 and result.backward_flops_saved == 0 and not result.events
    again = train_run(TINY)
    assert again == result  # every curve, count and event (wall time aside)
    other_seed = train_run(RunConfig(**{**TINY.__dict__, "seed": 4}))
    assert other_seed.tokens != result.tokens


RAMP = RunConfig(**{**TINY.__dict__, "batch_rule": "ramp", "max_batch_size": 32,
                    "lr_scaling": "sqrt"})
ADAPTIVE = RunConfig(**{**TINY.__dict__, "batch_rule": "adaptive", "micro_batch": 4,
                        "max_batch_size": 32, "lr_scaling": "linear"})


@pytest.mark.parametrize("config", [RAMP, ADAPTIVE], ids=["ramp", "adaptive"])
def test_batch_rules_spend_the_same_token_budget(config):
    fixed, result = train_run(TINY), train_run(config)
    assert result.budget == fixed.budget and result.tokens[-1] == fixed.budget
    assert result.backward_flops == pytest.approx(fixed.backward_flops)
    assert result.tokens[0] >= fixed.budget / TINY.n_evals
    assert min(result.batch_sizes) >= TINY.batch_size and max(result.batch_sizes) <= 32
    if config is RAMP:
        assert result.batch_sizes[-1] == 32 and result.optimizer_steps < fixed.optimizer_steps
    assert train_run(config) == result


def test_accumulated_micro_batches_match_one_batch():
    """Gradient accumulation (loss / accumulation): two micro-batches of 4 ~ one of 8."""
    whole, split = train_run(TINY), train_run(RunConfig(**{**TINY.__dict__, "micro_batch": 4}))
    assert split.tokens == whole.tokens and split.optimizer_steps == whole.optimizer_steps
    np.testing.assert_allclose(split.eval_losses, whole.eval_losses, rtol=0.05)


def test_each_run_gives_an_em_curve_and_an_eval_loss_curve():
    frame = train_run(TINY).frame()
    curves = CurveSet.from_frame(frame)
    em, loss = curves[f"{TINY.run_id}/em"], curves[f"{TINY.run_id}/eval_loss"]
    assert (em.metric, em.direction, loss.metric, loss.direction) == (
        "exact_match", "maximize", "eval_loss", "minimize")
    assert em.run_id == loss.run_id == TINY.run_id and em.task == loss.task == "sorting"
    assert em.budget == loss.budget and list(em.tokens) == list(loss.tokens)
    assert np.all(np.isfinite(loss.values)) and np.all(loss.values > 0)
    assert loss.values[-1] < loss.values[0]  # the loss falls as the model learns
    per_point = frame[["step", "current_batch_size", "frozen_blocks", "backward_flops"]]
    assert per_point.notna().all().all() and frame["backward_flops"].is_monotonic_increasing is not None
    assert set(frame["optimizer_steps"]) == {TINY.steps}


def test_teacher_forced_exact_match_equals_greedy_decoding():
    """One teacher-forced pass gives the same EM as decoding token by token."""
    from metastop.generate.evalset import (answer_loss, encode_examples, evaluate,
                                           greedy_exact_match)
    from metastop.generate.train import _build

    config = RunConfig(task="reversal", difficulty=4, d_model=32, n_layers=1, n_heads=2,
                       lr=1e-2, batch_size=32, train_size=400, steps=150, eval_size=128, seed=0)
    train, held_out = make_split("reversal", 4, train_size=400, eval_size=128, seed=0)
    train_data, data = encode_examples(train), encode_examples(held_out)
    model, optimizer = _build(config, max(train_data.ids.shape[1], data.ids.shape[1]))
    assert evaluate(model, data).exact_match == greedy_exact_match(model, data) == 0.0
    generator = torch.Generator().manual_seed(0)
    for _ in range(config.steps):
        optimizer.zero_grad()
        answer_loss(model, train_data, torch.randint(0, 400, (32,), generator=generator)).backward()
        optimizer.step()
    scores = evaluate(model, data)
    assert 0.0 < scores.exact_match == greedy_exact_match(model, data) < 1.0
    assert 0.0 < scores.eval_loss < 3.0


def test_training_learns_an_easy_task():
    config = RunConfig(task="sorting", difficulty=3, d_model=32, n_layers=1, n_heads=2,
                       lr=1e-2, batch_size=32, train_size=400, steps=250, eval_size=64,
                       n_evals=5, schedule="cosine", seed=0)
    values = train_run(config).values
    assert values[-1] > 0.5 and values[-1] > values[0]


def test_one_run_sweep_gives_valid_resumable_curves(tmp_path):
    outcome = run_sweep([TINY], cache_dir=tmp_path / "runs", n_jobs=1)
    assert (outcome.n_trained, outcome.n_cached, outcome.n_skipped) == (1, 0, 0)
    frame = outcome.frame
    curves = read_curves(_write(frame, tmp_path / "curves.parquet"))
    assert sorted(curves.ids) == [f"{TINY.run_id}/em", f"{TINY.run_id}/eval_loss"]
    curve = curves[f"{TINY.run_id}/em"]
    assert curve.metric == "exact_match" and curve.direction == "maximize"
    assert curve.task == "sorting" and curve.run_id == TINY.run_id
    assert curve.budget == _expected_tokens(TINY)[-1]
    assert curve.meta["d_model"] == 16 and curve.meta["schedule"] == "cosine"
    assert curve.meta["batch_rule"] == "fixed" and curve.meta["eval_size"] == 16
    assert frame["step"].tolist()[-1] == TINY.steps
    again = run_sweep([TINY], cache_dir=tmp_path / "runs", n_jobs=1)
    assert (again.n_trained, again.n_cached) == (0, 1)
    pd.testing.assert_frame_equal(again.frame, frame)


def _write(frame: pd.DataFrame, path) -> str:
    frame.to_parquet(path, index=False)
    return str(path)


def test_sweep_skips_runs_after_the_deadline(tmp_path):
    late = RunConfig(**{**TINY.__dict__, "seed": 9})
    with pytest.raises(ParameterError, match="no finished run in cache_dir="):
        run_sweep([late], cache_dir=tmp_path, n_jobs=1, max_minutes=-1.0)
    run_sweep([TINY], cache_dir=tmp_path, n_jobs=1)
    seen = []
    outcome = run_sweep([TINY, late], cache_dir=tmp_path, n_jobs=1, max_minutes=-1.0,
                        on_run=lambda *args: seen.append(args))
    assert (outcome.n_trained, outcome.n_cached, outcome.n_skipped) == (0, 1, 1)
    assert seen == [(1, 1, late.run_id, None)]
    assert set(outcome.frame["run_id"]) == {TINY.run_id}


_INTERRUPTED = """
import sys
from metastop.generate.sweep import run_sweep
from metastop.generate.train import RunConfig
base = dict(task="sorting", difficulty=3, d_model=16, n_layers=1, n_heads=2, lr=3e-3,
            batch_size=8, train_size=40, steps=30, eval_size=16, n_evals=6)
configs = [RunConfig(**base, seed=s) for s in range(6)]
run_sweep(configs, cache_dir=sys.argv[1], n_jobs=1,
          on_run=lambda done, *_: print("done", done, flush=True))
"""


def test_cache_survives_an_interrupted_sweep(tmp_path):
    """Kill a sweep after its second run: the finished runs stay cached and a rerun trains
    only the rest; a temporary file left by a killed writer is ignored."""
    cache = tmp_path / "runs"
    process = subprocess.Popen([sys.executable, "-c", _INTERRUPTED, str(cache)],
                               stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.strip() == "done 2":
            break
    process.kill()
    process.wait()
    (cache / ".stray.parquet.tmp").write_bytes(b"half a file")
    finished = len(list(cache.glob("*.parquet")))
    assert 2 <= finished < 6
    configs = [RunConfig(**{**TINY.__dict__, "seed": s}) for s in range(6)]
    outcome = run_sweep(configs, cache_dir=cache, n_jobs=1)
    assert (outcome.n_cached, outcome.n_trained) == (finished, 6 - finished)
    assert outcome.frame["run_id"].nunique() == 6 and len(CurveSet.from_frame(outcome.frame)) == 12


def test_sample_configs_is_seeded_varied_and_a_stable_prefix():
    configs = sample_configs(n_runs=60, seed=5)
    assert [c.run_id for c in configs] == [c.run_id for c in sample_configs(n_runs=60, seed=5)]
    assert [c.run_id for c in configs[:20]] == [c.run_id for c in sample_configs(n_runs=20, seed=5)]
    assert len({c.run_id for c in configs}) == 60
    assert {c.task for c in configs} == set(TASKS)
    assert len({c.schedule for c in configs}) == 4 and len({c.lr for c in configs}) > 2
    with pytest.raises(ParameterError, match="n_runs must be >= 1, got n_runs=0"):
        sample_configs(n_runs=0)
    only = sample_configs(n_runs=10, seed=5, tasks=("modular", "qa"))
    assert {c.task for c in only} <= {"modular", "qa"}
    with pytest.raises(ParameterError, match=r"tasks must be a non-empty subset of .*got tasks=\('division',\)"):
        sample_configs(n_runs=3, tasks=("division",))


def test_importing_generate_does_not_import_torch():
    code = ("import sys, metastop, metastop.generate, metastop.generate.shapes; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- shapes ------------------------------------------------------------------------------
FLAT = [0.0] * 25


def _curve(values, name="c"):
    return Curve(name, tokens=np.arange(1, len(values) + 1) * 100.0, values=values)


SHAPE_CASES = [
    ("flat zero", FLAT, "never_learns"),
    ("noise below 10%", [0.0, 0.04, 0.08, 0.02] * 6 + [0.05], "never_learns"),
    ("stuck at a level", [0.5] * 25, "never_learns"),
    ("rise then decline", list(np.linspace(0, 0.8, 10)) + list(np.linspace(0.78, 0.4, 15)),
     "overfit_decline"),
    ("plateau then jump", [0.02] * 12 + [0.3, 0.7] + [0.75] * 11, "plateau_then_jump"),
    ("jump late at cooldown", [0.2] * 20 + [0.6, 0.8, 0.8, 0.8, 0.8], "plateau_then_jump"),
    ("steady rise to the end", list(np.linspace(0.0, 0.9, 25)), "rising_at_end"),
    ("fast rise then holds", [0.0, 0.4, 0.7, 0.8] + [0.82] * 21, "saturating"),
    ("one high spike is not a decline", [0.0, 0.3, 0.6] + [0.7] * 10 + [0.95] + [0.7] * 11,
     "saturating"),
    ("small dip at end kept", [0.0, 0.5, 0.8] + [0.85] * 21 + [0.82], "saturating"),
    ("one low last point after a late best is not overfitting",
     list(np.linspace(0.0, 0.6, 24)) + [0.3], "saturating"),
]


@pytest.mark.parametrize("label, values, expected", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_classify_shape(label, values, expected):
    assert classify_shape(_curve(values)) == expected


def test_classify_shape_uses_tokens_not_indices():
    # Same values, but the flat stretch covers only 5% of the tokens: no plateau.
    tokens = np.r_[np.linspace(1, 5, 12), np.linspace(10, 100, 13)]
    values = [0.02] * 12 + [0.3, 0.7] + [0.75] * 11
    assert classify_shape(Curve("c", tokens=tokens, values=values)) != "plateau_then_jump"


def test_shape_counts_lists_every_shape():
    counts = shape_counts([_curve(FLAT, "a"), _curve(list(np.linspace(0, 0.9, 25)), "b")])
    assert list(counts) == list(shapes.SHAPES)
    assert counts["never_learns"] == 1 and counts["rising_at_end"] == 1
    assert sum(counts.values()) == 2


def test_report_figure_and_tables(tmp_path):
    curves = CurveSet([_curve(values, label) for label, values, _ in SHAPE_CASES])
    path = plot_shape_examples(curves, tmp_path / "shapes.png", per_shape=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tables = summary_tables(curves)
    assert "| never_learns | 3 | 27% |" in tables
    assert "| plateau_then_jump | 2 | 18% |" in tables
    card = data_card(curves, command="python scripts/generate_curves.py", wall_minutes=3)
    assert card.startswith("## `em_curves.parquet`")
    assert "11 curves of 11 training runs" in card
    assert "at the same points (25\nper curve, 275 points each kind)" in card
    assert "Runs that learn:" in tables and "| all | 11 |" in tables
    assert "**How.** python scripts/generate_curves.py" in card and tables in card


def test_report_reads_shapes_from_em_curves_and_draws_the_loss_below(tmp_path):
    curves = CurveSet.from_frame(pd.concat([train_run(TINY).frame(), train_run(RAMP).frame()]))
    assert len(curves) == 4
    tables = summary_tables(curves)
    assert "| all | 2 |" in tables  # two runs, not four curves
    assert "| fixed | 1 |" in tables and "| ramp | 1 |" in tables
    path = plot_shape_examples(curves, tmp_path / "shapes.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the script --------------------------------------------------------------------------
def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/generate_curves.py", *args],
                          capture_output=True, text=True)


def test_script_help_has_an_example_and_bad_sweep_is_named():
    out = _script("--help")
    assert out.returncode == 0 and "example: python scripts/generate_curves.py --sweep" in out.stdout
    bad = _script("--sweep", "0:many:4", "--collect-only")
    assert bad.returncode == 2
    assert ("--sweep must look like SEED:N_RUNS:SECONDS[:TASKS[:LEVERS]] (e.g. 0:360:4 or "
            "1:200:3:all:fixed+ramp), got '0:many:4'") in bad.stderr

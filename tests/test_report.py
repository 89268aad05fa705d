"""The fleet report from decision logs written by real StopControllers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from metastop.evaluate.outcomes import backtest
from metastop.cli.main import main
from metastop.curves import Curve
from metastop.ops.governor import Governor, ShadowOutcome
from metastop.stop.rules import Patience
from metastop.stop.prices import Price, PriceBook
from metastop.ops.report import OVERALL, fleet_report, plot_report, report_rows
from metastop.stop.controller import StopController, Reporting

BOOK = PriceBook(Price.fraction_of_budget(0.05), tasks={"arc": Price.tokens(3e7)})


def fleet_curves(n: int = 24) -> list[Curve]:
    rng = np.random.default_rng(3)
    curves = []
    for i in range(n):
        t = np.arange(1, 13) * 1e8
        late = 0.25 if i % 3 == 0 else 0.0  # a third plateau, then rise late
        v = 0.3 * (1 - np.exp(-t / 1.5e8)) + late * (t > 9e8) + rng.normal(0, 0.004, len(t))
        curves.append(Curve(f"run{i}/em", t, v, budget=12e8, run_id=f"run{i}",
                            task="arc" if i % 2 else "gsm8k"))
    return curves


def write_logs(curves, folder, shadow_of):
    for c in curves:
        ctl = StopController(policy=Patience(2), budget=c.budget, curve_id=c.curve_id,
                             run_id=c.run_id, task=c.task,
                             reporting=Reporting(shadow=shadow_of(c), log_path=folder / f"{c.run_id}.jsonl"))
        for t, v in zip(c.tokens, c.values):
            if ctl.observe(t, v).stop:
                break


@pytest.fixture()
def logs(tmp_path):
    curves = fleet_curves()
    folder = tmp_path / "logs"
    write_logs(curves, folder, lambda c: int(c.run_id[3:]) % 4 == 3)
    with open(folder / "run1.jsonl", "a") as handle:
        handle.write('{"tokens": 5, "value"')  # a truncated last line, as after a crash
    return curves, folder


def test_report_matches_the_backtest_definitions(logs):
    curves, folder = logs
    report = fleet_report([folder], pricebook=BOOK)
    by_run = {r.run_id: r for r in report.runs}
    outcomes = {o.curve_id: o for o in backtest(curves, Patience(2)).outcomes}
    for c in curves:
        run, ref = by_run[c.run_id], outcomes[c.curve_id]
        if run.shadow:  # shadow runs measure what the policy would have lost
            assert run.em_loss == pytest.approx(100 * ref.em_loss)
            assert run.final_tokens == c.tokens[-1]
        else:  # acted runs stopped where the backtest stops
            assert run.tokens_saved == pytest.approx(ref.token_savings)
            assert run.stopped == ref.stopped
    assert report.overall.runs == 24 and report.overall.shadow_runs == 6
    assert any(r.em_loss > 1 for r in report.runs if r.shadow)  # the late risers were lost
    assert len(report.skipped) == 1 and "run1.jsonl" in report.skipped[0]


def test_report_per_task_prices_and_interval(logs):
    _, folder = logs
    report = fleet_report(folder, pricebook=BOOK)
    tasks = {t.task: t for t in report.tasks}
    assert sorted(tasks) == ["arc", "gsm8k"]
    assert tasks["arc"].price == str(Price.tokens(3e7))
    assert tasks["gsm8k"].price_data == {"kind": "fraction_of_budget", "amount": 0.05}
    a = tasks["arc"]
    assert a.shadow_runs == 6 and tasks["gsm8k"].shadow_runs == 0
    losses = [r.em_loss for r in report.runs if r.shadow]
    low, high = a.em_loss_ci95
    assert a.em_loss_mean == pytest.approx(np.mean(losses))
    assert low < a.em_loss_mean < high
    assert report.overall.em_loss_mean == pytest.approx(a.em_loss_mean)
    assert tasks["gsm8k"].em_loss_mean is None and tasks["gsm8k"].tokens_saved_mean > 0.05
    rows = report_rows(report)
    assert [r[0] for r in rows] == ["arc", "gsm8k", OVERALL]


def test_report_shows_governor_changes(logs, tmp_path):
    _, folder = logs
    gov = Governor(BOOK, min_runs=3)
    for i in range(4):
        gov.record(ShadowOutcome(f"x{i}", "gsm8k", 4.0 + i, 0.3, 5.0, 10.0, 10.0))
    gov.update()
    report = fleet_report(folder, governor=gov)
    tasks = {t.task: t for t in report.tasks}
    [change] = tasks["gsm8k"].changes
    assert change["factor"] == 2.0 and "stop later" in change["reason"]
    assert tasks["gsm8k"].price == str(Price.fraction_of_budget(0.1))
    assert tasks["arc"].changes == ()
    assert report.to_dict()["governor"]["loss_budget"] == 0.5


def test_cli_report_table_json_and_png(logs, tmp_path):
    _, folder = logs
    book = BOOK.write(tmp_path / "prices.json")
    gov = Governor(BOOK, min_runs=3)
    for i in range(4):
        gov.record(ShadowOutcome(f"x{i}", "arc", 0.0, 0.3, 5.0, 10.0, 10.0))
    gov.update()
    state = gov.save(tmp_path / "gov.json")
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    result = CliRunner().invoke(main, ["report", str(folder), "--pricebook", str(book),
                                       "--governor-state", str(state), "--json", str(out),
                                       "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert "gsm8k" in result.output and "save more" in result.output
    data = json.loads(out.read_text())
    assert data["overall"]["runs"] == 24 and len(data["tasks"]) == 2
    assert data["governor"]["changes"][0]["task"] == "arc"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_report_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert "Traceback" not in result.output


def test_plot_report_without_shadow_runs(tmp_path):
    c = fleet_curves(2)
    write_logs(c, tmp_path / "l", lambda _: False)
    path = plot_report(fleet_report(tmp_path / "l"), tmp_path / "p.png")
    assert path.stat().st_size > 1000

"""The scripts the README names run: each has --help, and each benchmark writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help(script):
    assert "usage:" in run(f"scripts/{script}", "--help").stdout


def test_bench_predictor_writes_metrics_and_latency(tmp_path):
    out = tmp_path / "predictor.json"
    run("scripts/bench_predictor.py", "--max-curves", "40", "--calls", "50", "--json", str(out))
    data = json.loads(out.read_text())
    assert data["latency"]["one_curve_p99_ms"] > 0
    rows = [row for result in data["corpora"].values() for row in result["fractions"].values()]
    new_keys = ("noise_floor_mae", "noise_floor_ratio", "noise_floor_n", "hindsight_mean3_mae",
                "hindsight_mean3_ratio")
    assert all(key in row for row in rows for key in new_keys)
    assert any(row["noise_floor_mae"] is not None and 0 < row["noise_floor_mae"] < float("inf")
               for row in rows)


def test_bench_runtime_writes_observe_latency(tmp_path):
    out = tmp_path / "runtime.json"
    run("scripts/bench_runtime.py", "--n-curves", "3", "--replay-curves", "20", "--json", str(out))
    data = json.loads(out.read_text())
    assert [row["name"] for row in data["observe"]] == ["metastop (CostAware, default model)",
                                                        "patience(5)"]
    assert all(row["n_observations"] > 0 and row["p99_ms"] > 0 for row in data["observe"])
    assert data["replay"]["n_curves"] == 20


def test_bench_stopping_writes_the_backtest_contract(tmp_path):
    from metastop.evaluate.contract import contract_problems

    out = tmp_path / "stopping.json"
    run("scripts/bench_stopping.py", "--corpus", "lcdb", "--limit", "30", "--out", str(out))
    data = json.loads(out.read_text())
    assert contract_problems(data["corpora"]["lcdb"]) == []
    lcdb = data["corpora"]["lcdb"]
    bound = lcdb["hindsight_bound"]["oracle"]  # within the loss targets, at most the oracle's best
    assert bound["em_loss_mean"] <= 0.005 and bound["em_loss_p95"] <= 0.02
    assert 0 < bound["token_savings_mean"] <= max(p["token_savings_mean"] for p in lcdb["frontier"]["oracle"])
    assert lcdb["targets"]["hindsight_savings_at_loss_targets"] == bound["token_savings_mean"]

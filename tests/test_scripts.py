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


def test_bench_runtime_writes_observe_latency(tmp_path):
    out = tmp_path / "runtime.json"
    run("scripts/bench_runtime.py", "--n-curves", "3", "--replay-curves", "20", "--json", str(out))
    data = json.loads(out.read_text())
    assert [row["name"] for row in data["observe"]] == ["metastop (CostAware, default model)",
                                                        "patience(5)"]
    assert all(row["n_observations"] > 0 and row["p99_ms"] > 0 for row in data["observe"])
    assert data["replay"]["n_curves"] == 20


def test_bench_stopping_writes_the_backtest_contract(tmp_path):
    from metastop.backtest import contract_problems

    out = tmp_path / "stopping.json"
    run("scripts/bench_stopping.py", "--corpus", "lcdb", "--limit", "30", "--out", str(out))
    data = json.loads(out.read_text())
    assert contract_problems(data["corpora"]["lcdb"]) == []

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
    assert "usage:" in run(f"scripts/{script}", "--help").stdout.lower()  # argparse or click


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
    # task memory, side by side: the model with and without context, the model without task
    # memory, the sibling-median rule
    assert data["context"] == "both"
    row = data["corpora"]["em_curves"]["fractions"]["0.25"]
    for name in ("metastop", "metastop_no_context", "context_free", "sibling_median", "last"):
        assert row[f"{name}_mae"] >= 0
    assert row["with_siblings"]["n"] > 0 and row["with_siblings"]["ratio_to_sibling_median"] > 0
    low, high = row["no_siblings"]["diff_ci95"]
    assert low <= row["no_siblings"]["diff"] <= high
    em = data["corpora"]["em_curves"]
    assert 0 <= em["metastop_coverage_80"] <= 1 and 0 <= em["metastop_no_context_coverage_80"] <= 1
    assert any("x sibling-median" in line for line in data["targets"])


def test_bench_predictor_without_context_runs_no_context(tmp_path):
    out = tmp_path / "predictor.json"
    run("scripts/bench_predictor.py", "--limit", "20", "--corpus", "em_curves", "--context", "none",
        "--calls", "10", "--json", str(out))
    row = json.loads(out.read_text())["corpora"]["em_curves"]["fractions"]["0.25"]
    assert "metastop_mae" in row and row["main"] == "metastop_no_context"
    assert "sibling_median_mae" not in row and "with_siblings" not in row


def test_bench_runtime_writes_observe_latency(tmp_path):
    out = tmp_path / "runtime.json"
    run("scripts/bench_runtime.py", "--n-curves", "3", "--replay-curves", "20", "--json", str(out))
    data = json.loads(out.read_text())
    assert [row["name"] for row in data["observe"]] == ["metastop (CostAware, default model)",
                                                        "metastop with a 50-run history",
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
    assert lcdb["context"] == "leave-one-run-out" and lcdb["n_curves_with_context"] == 30
    assert lcdb["without_context"]["context"] == "none"
    assert contract_problems(lcdb["without_context"]) == []
    variants = lcdb["task_memory"]["variants"]
    assert set(variants) == {"context", "no_context", "context_free_model", "sibling_median"}
    for v in variants.values():
        share = v["share_at_0.5pt"]
        assert 0 <= share["token_savings_mean"] <= 1 and share["oracle_token_savings_mean"] > 0
    assert set(lcdb["targets"]["task_memory_checks"]) == {
        "context_share_of_oracle_savings_at_0.5pt_ge_0.75", "context_default_beats_patience5"}
    bound = lcdb["hindsight_bound"]["oracle"]  # within the loss targets, at most the oracle's best
    assert bound["em_loss_mean"] <= 0.005 and bound["em_loss_p95"] <= 0.02
    assert 0 < bound["token_savings_mean"] <= max(p["token_savings_mean"] for p in lcdb["frontier"]["oracle"])
    assert lcdb["targets"]["hindsight_savings_at_loss_targets"] == bound["token_savings_mean"]

"""bench/experiment_peeking.py decides each look through the experiment job's own functions, without
experiment_rows' figures that no decision reads: these tests hold its decisions to experiment_rows'."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from marketlake import experiment as ex
from marketlake.config import ExperimentConfig

BENCH = Path(__file__).resolve().parent.parent / "bench" / "experiment_peeking.py"
_spec = importlib.util.spec_from_file_location("experiment_peeking", BENCH)
assert _spec is not None and _spec.loader is not None
peeking = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peeking)

RULES = peeking.rules(ExperimentConfig(), 28_000)
WIN, LOSS, BELOW, POWERED, RUNNING = (
    ex.REASON_WIN,
    ex.REASON_LOSS,
    ex.REASON_BELOW_MINIMUM,
    ex.REASON_POWERED,
    ex.REASON_RUNNING,
)
# (users, conversions) of control and treatment -> the reasons of the rules fixed, sequential (tuned to
# 5,000 users) and sequential tuned to 28,000; between them every reason of decide() but SRM, which an
# equal split never has.
CASES = {
    "better": (((14_000, 700), (14_000, 850)), (WIN, WIN, WIN)),
    "worse": (((14_000, 700), (14_000, 580)), (LOSS, LOSS, LOSS)),
    "better for the fixed test only": (((3_000, 150), (3_000, 190)), (WIN, RUNNING, RUNNING)),
    "below the minimum": (((10_000, 500), (10_000, 450)), (RUNNING, BELOW, BELOW)),
    "below the minimum when tuned to the plan": (((14_000, 700), (14_000, 660)), (RUNNING, RUNNING, BELOW)),
    "the fixed test has its users": (((40_000, 2_000), (40_000, 2_020)), (POWERED, RUNNING, RUNNING)),
    "not yet": (((2_000, 100), (2_000, 105)), (RUNNING,) * 3),
    "too few users": (((50, 3), (50, 4)), (ex.REASON_FEW_USERS,) * 3),
    "no conversions": (((1_000, 0), (1_000, 0)), (ex.REASON_NO_RESULT,) * 3),
}


def counts_of(case: tuple[tuple[int, int], tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {peeking.CONTROL: case[0], peeking.TREATMENT: case[1]}


@pytest.mark.parametrize(("case", "reasons"), CASES.values(), ids=CASES.keys())
def test_the_bench_decides_as_experiment_rows(case, reasons):
    counts = counts_of(case)
    decided = peeking.LookDecisions(RULES)(counts)
    assert decided == peeking.job_decisions(counts, RULES)
    assert tuple(reason for _, reason in decided.values()) == reasons


def test_simulated_looks_decide_as_experiment_rows():
    conversions = peeking.simulate(np.random.default_rng(7), 2, 14, 1_000, (0.05, 0.06))
    look = peeking.LookDecisions(RULES)
    for e, d in [(0, 6), (1, 3), (1, 13)]:
        users = 1_000 * (d + 1)
        counts = {
            peeking.CONTROL: (users, int(conversions[e, d, 0])),
            peeking.TREATMENT: (users, int(conversions[e, d, 1])),
        }
        assert look(counts) == peeking.job_decisions(counts, RULES), counts


@pytest.mark.parametrize("control", [(1_000, 50), (7_000, 330), (14_000, 700)])
def test_users_needed_reads_only_the_variants_users(control):
    # LookDecisions memoises users_needed by (control arm, variant users).
    settings = RULES[peeking.FIXED]
    arm = ex._arm("control", ex.moments(peeking.conversion_sums(*control)), ex.CONVERSION)
    n = control[0]
    variants = [
        ex.Arm("treatment", n, total, total / n, total / n * (1 - total / n)) for total in (0, 40, 900)
    ]
    needed = {ex.users_needed(arm, variant, settings, 1, True) for variant in variants}
    assert len(needed) == 1 and None not in needed


def test_the_bench_runs_and_ends_with_its_json(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent.parent / "lib")}
    done = subprocess.run(
        [sys.executable, str(BENCH), "--experiments", "4", "--days", "3", "--workers", "1", "--seed", "3"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in (
        "sequential_false_positive_rate",
        "fixed_false_positive_rate",
        "sequential_power",
        "fixed_power",
        "sequential_median_decision_day",
        "fixed_median_decision_day",
        "sequential_planned_false_positive_rate",
        "sequential_planned_power",
    ):
        assert key in result
    assert result["looks_checked"] == 6 and result["planned_tuning_users"] == 2 * 1_000 * 3
    for key in (
        "sequential_false_positive_rate",
        "fixed_false_positive_rate",
        "sequential_power",
        "fixed_power",
    ):
        assert 0 <= result[key] <= 1 and result[key] * 4 == round(result[key] * 4)


def test_bad_arguments_are_one_line_and_exit_2():
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent.parent / "lib")}
    done = subprocess.run(
        [sys.executable, str(BENCH), "--experiments", "0"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["experiment_peeking: --experiments must be at least 1"]

"""plan: fixed-horizon users equal statsmodels' solve_power (1e-6), the sequential users reach the requested
power in a seeded simulation of the experiment job's sequential decision, the baseline measured on
hand-made events equals the hand-computed figures, and bad input is one line and exit 2."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import proportion_effectsize

from marketlake.config import ExperimentConfig
from marketlake.errors import UsageError
from marketlake.experiment import SHIP, Arm, Comparison, _always_valid, compare_sequential, decide
from marketlake.jobs import main
from marketlake.planning import (
    Question,
    fixed_horizon_plan,
    sequential_boundary,
    sequential_plan,
    sequential_powers,
)

RUN_DATE = "2024-06-30"


def conversion(rate: float, mde: float, split: tuple[float, ...], alpha=0.05, power=0.8) -> Question:
    return Question("conversion", rate, math.sqrt(rate * (1 - rate)), mde, alpha, power, split, 500.0, 100)


def revenue(mean: float, sd: float, mde: float, split: tuple[float, ...], alpha=0.05, power=0.8) -> Question:
    return Question("revenue_per_user", mean, sd, mde, alpha, power, split, 500.0, 100)


CASES = [
    (conversion(0.05, 0.1, (0.5, 0.5)), NormalIndPower, None),
    (conversion(0.313, 0.1, (0.5, 0.5), alpha=0.01, power=0.9), NormalIndPower, None),
    (conversion(0.2, 0.15, (0.4, 0.3, 0.3)), NormalIndPower, None),
    (conversion(0.02, 0.25, (0.7, 0.3)), NormalIndPower, None),
    (revenue(41.6, 90.0, 0.1, (0.5, 0.5)), TTestIndPower, None),
    (revenue(12.0, 30.0, 0.2, (0.25, 0.25, 0.25, 0.25), power=0.9), TTestIndPower, None),
    (revenue(100.0, 80.0, 0.05, (0.6, 0.1, 0.3)), TTestIndPower, None),
]


@pytest.mark.parametrize("question, power_class, _", CASES)
def test_fixed_horizon_users_equal_statsmodels(question, power_class, _):
    alpha = question.alpha / (len(question.split) - 1)
    target = question.mean * (1 + question.mde)
    if question.metric == "conversion":
        effect = abs(proportion_effectsize(target, question.mean))
    else:
        effect = (target - question.mean) / question.sd
    control = question.split[0]
    needed = [
        power_class().solve_power(effect, alpha=alpha, power=question.power, ratio=share / control)
        for share in question.split[1:]
    ]
    total = max(needed) / control  # the comparison that needs the most users decides
    plan = fixed_horizon_plan(question)
    for share, exact, users in zip(question.split, plan.exact_users, plan.users, strict=True):
        assert exact == pytest.approx(total * share, rel=1e-6)
        assert users == max(100, math.ceil(total * share))
    assert plan.days == math.ceil(plan.total_users / question.daily_users)


def test_an_arm_gets_at_least_min_users():
    plan = fixed_horizon_plan(conversion(0.3, 1.0, (0.5, 0.5)))  # a huge lift: a few dozen users would do
    assert plan.users == (100, 100)


def test_the_sequential_boundary_is_where_the_jobs_p_value_reaches_the_level():
    for n, level, rho in [(1000, 0.05, 0.04), (20000, 0.025, 0.01), (150, 0.01, 0.2)]:
        b = sequential_boundary(n, level, rho)
        variance = 0.37
        _, p_value = _always_valid(b * math.sqrt(variance), variance, n, 0.05, rho)
        assert p_value == pytest.approx(level, rel=1e-9)


def ship_share(question: Question, draw, runs: int, seed: int) -> float:
    """The share of `runs` simulated experiments of the sequential plan's size in which the job's decision
    at the last look is ship (sequential test, tuning users as the plan says to configure)."""
    plan = sequential_plan(question)
    settings = ExperimentConfig(
        alpha=question.alpha, test="sequential", sequential_tuning_users=plan.tuning_users, min_users=100
    )
    rng = np.random.default_rng(seed)
    n_c, n_t = plan.users
    proportions = question.metric == "conversion"
    shipped = 0
    for _ in range(runs):
        control = draw(rng, "control", n_c, question.mean)
        variant = draw(rng, "B", n_t, question.mean * (1 + question.mde))
        sequential = compare_sequential(control, variant, question.alpha, plan.tuning_users, proportions)
        lift = Comparison(lift=variant.mean - control.mean)
        decision, _ = decide(
            False, control, variant, lift, None, None, settings, sequential, sequential.p_value
        )
        shipped += decision == SHIP
    return shipped / runs


def draw_conversions(rng, name, n, rate):
    converted = int(rng.binomial(n, rate))
    mean = converted / n
    return Arm(name, n, float(converted), mean, mean * (1 - mean) * n / (n - 1))


def test_the_sequential_plan_has_the_requested_power_in_a_simulation_of_the_job():
    question = conversion(0.1, 0.2, (0.5, 0.5))
    runs = 4000
    share = ship_share(question, draw_conversions, runs, seed=19)
    standard_error = math.sqrt(0.8 * 0.2 / runs)
    assert abs(share - 0.8) < 3.5 * standard_error, share
    # The fixed-horizon plan is smaller: the sequential test pays for looking every day.
    assert sum(fixed_horizon_plan(question).users) < sequential_plan(question).total_users


def test_the_sequential_plan_for_revenue_has_the_requested_power():
    question = revenue(40.0, 60.0, 0.1, (0.5, 0.5), power=0.9)
    sd = question.sd

    def draw_revenue(rng, name, n, mean):  # normal per-user values through their sufficient statistics
        sample_mean = rng.normal(mean, sd / math.sqrt(n))
        sample_var = sd**2 * rng.chisquare(n - 1) / (n - 1)
        return Arm(name, n, sample_mean * n, sample_mean, sample_var)

    runs = 4000
    share = ship_share(question, draw_revenue, runs, seed=7)
    assert abs(share - 0.9) < 3.5 * math.sqrt(0.9 * 0.1 / runs), share


def test_with_three_variants_each_comparison_reaches_the_power_at_the_bonferroni_level():
    question = conversion(0.1, 0.2, (0.4, 0.3, 0.3))
    plan = sequential_plan(question)
    powers = sequential_powers(plan.total_users, question)
    assert min(powers) == pytest.approx(0.8, abs=1e-3)
    assert plan.tuning_users == plan.total_users
    # Halving alpha for two comparisons needs more users than one comparison at the same shares would.
    two = sequential_plan(conversion(0.1, 0.2, (0.4, 0.6)))
    assert plan.users[0] > two.users[0]


# ---- the baseline from silver.events ------------------------------------------------------------------------

EVENT_SCHEMA = (
    "event_id string, user_id string, event_type string, event_ts timestamp, event_date date, "
    "session_id string, revenue double"
)


def hand_made_events(spark):
    rows = [
        # u1: first event of the window in s1; buys there (50); a later purchase in s2 is another session.
        ("e01", "u1", "view", "2024-06-28T10:00:00", "s1", None),
        ("e02", "u1", "purchase", "2024-06-28T10:20:00", "s1", 50.0),
        ("e03", "u1", "purchase", "2024-06-29T11:00:00", "s2", 20.0),
        # u2: active two days, never buys.
        ("e04", "u2", "view", "2024-06-29T09:00:00", "s3", None),
        ("e05", "u2", "view", "2024-06-30T09:00:00", "s4", None),
        # u3: a purchase before the window (not counted); in the window buys in its first session (30).
        ("e06", "u3", "purchase", "2024-06-25T12:00:00", "s5", 100.0),
        ("e07", "u3", "view", "2024-06-30T12:00:00", "s6", None),
        ("e08", "u3", "purchase", "2024-06-30T12:30:00", "s6", 30.0),
        # u4: only before the window: not active.
        ("e09", "u4", "purchase", "2024-06-20T12:00:00", "s8", 70.0),
        # u5: a purchase in the session but after the run date's end: never counts.
        ("e10", "u5", "view", "2024-06-30T23:00:00", "s7", None),
        ("e11", "u5", "purchase", "2024-07-01T00:10:00", "s7", 40.0),
    ]
    frame = []
    for event_id, user, kind, when, session, value in rows:
        ts = dt.datetime.fromisoformat(when)
        frame.append((event_id, user, kind, ts, ts.date(), session, value))
    return spark.createDataFrame(frame, EVENT_SCHEMA)


@pytest.fixture(scope="module")
def small_lake(spark, config, tmp_path_factory):
    from marketlake.lake import Lake

    root = str(tmp_path_factory.mktemp("plan-lake"))
    Lake(spark, config.lake, root).write(
        "silver.events", hand_made_events(spark), "append", partition_by=["event_date"]
    )
    return root


def plan_json(capsys, *argv: str) -> dict:
    assert main("plan", list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_the_measured_baseline_equals_the_hand_computed_one(small_lake, capsys):
    window = ["--lake", small_lake, "--run-date", RUN_DATE, "--window-days", "3", "--json"]
    found = plan_json(capsys, *window, "--metric", "revenue_per_user")
    # Active in 2024-06-28..30: u1, u2, u3, u5. Revenue in the first session: 50, 0, 30, 0.
    values = np.array([50.0, 0.0, 30.0, 0.0])
    assert found["window_users"] == 4
    assert found["baseline"] == pytest.approx(values.mean(), rel=1e-12)
    assert found["baseline_sd"] == pytest.approx(values.std(ddof=1), rel=1e-12)
    # User-days: 06-28 u1; 06-29 u1, u2; 06-30 u2, u3, u5: 6 over 3 days.
    assert found["daily_users"] == pytest.approx(2.0)
    expected = fixed_horizon_plan(
        revenue(values.mean(), values.std(ddof=1), 0.1, (0.5, 0.5))
    )  # the config's defaults
    assert found["fixed"]["total_users"] == expected.total_users
    assert found["fixed"]["days"] == math.ceil(expected.total_users / 2.0)

    rate = plan_json(capsys, *window, "--daily-users", "250")
    assert rate["baseline"] == pytest.approx(0.5) and rate["daily_users"] == 250.0


def test_a_given_baseline_needs_no_events_and_prints_a_table(lake_root, capsys):
    argv = ["--lake", lake_root, "--run-date", RUN_DATE, "--baseline-rate", "0.05", "--daily-users", "1000"]
    assert main("plan", [*argv, "--variants", "3"]) == 0
    out = capsys.readouterr().out
    plan = fixed_horizon_plan(conversion(0.05, 0.1, (1 / 3, 1 / 3, 1 / 3)))
    assert f"{plan.users[0]:,} / {plan.users[1]:,} / {plan.users[2]:,}" in out
    assert "Set experiment.sequential_tuning_users:" in out


def test_no_events_in_the_window_is_one_line_and_exit_2(small_lake, capsys):
    assert main("plan", ["--lake", small_lake, "--run-date", "2025-01-31"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no events in silver.events in the 28 days to 2025-01-31" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mde", "0"], "--mde must be above 0"),
        (["--mde", "-0.1"], "--mde must be above 0"),
        (["--baseline-rate", "1.2"], "--baseline-rate must lie between 0 and 1"),
        (["--baseline-rate", "0"], "--baseline-rate must lie between 0 and 1"),
        (["--variants", "1"], "two or more"),
        (["--split", "0.5,0.4"], "shares above 0 that sum to 1"),
        (["--split", "1"], "two or more variants"),
        (["--split", "0.5,0.25,0.25", "--variants", "2"], "--split has 3 shares but --variants is 2"),
        (["--baseline-rate", "0.6", "--mde", "0.8"], "is a rate of 100% or more"),
        (
            ["--metric", "revenue_per_user", "--baseline-rate", "0.1"],
            "--baseline-rate goes with --metric conversion",
        ),
        (
            ["--metric", "revenue_per_user", "--baseline-mean", "10"],
            "give both --baseline-mean and --baseline-sd",
        ),
        (["--metric", "revenue_per_user", "--baseline-mean", "10", "--baseline-sd", "0"], "must be above 0"),
        (["--daily-users", "0"], "--daily-users must be above 0"),
        (["--power", "1"], "alpha and power must lie between 0 and 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_spark(argv, message, capsys):
    assert main("plan", argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_the_pipeline_does_not_run_the_planner():
    from marketlake.jobs import pipeline
    from marketlake.runner import build_parser

    with pytest.raises(UsageError, match="no pipeline step"):
        pipeline._selected(build_parser(pipeline.JOB).parse_args(["--only", "plan"]))


def test_a_configured_cap_applies_to_the_measured_revenue(small_lake, tmp_path, capsys):
    capped_config = tmp_path / "cap.yaml"
    capped_config.write_text("experiment:\n  value_cap: {method: absolute, value: 40}\n")
    argv = [
        "--config",
        str(capped_config),
        "--lake",
        small_lake,
        "--run-date",
        RUN_DATE,
        "--window-days",
        "3",
    ]
    found = plan_json(capsys, *argv, "--metric", "revenue_per_user", "--json")
    values = np.array([40.0, 0.0, 30.0, 0.0])  # u1's 50 capped at 40
    assert found["value_cap"] == 40.0
    assert found["baseline"] == pytest.approx(values.mean(), rel=1e-12)
    assert found["baseline_sd"] == pytest.approx(values.std(ddof=1), rel=1e-12)

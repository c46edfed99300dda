"""experiment, issue 19: the sequential (always-valid) figures equal GrowthBook's stats engine (gbstats) to
1e-6, the decision follows experiment.test and never the other test's figures, and revenue capping (computed
in Spark) caps each user's value before CUPED and the tests, with the cap named in the results."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import polars as pl
import pytest
import yaml
from gbstats.frequentist.tests import SequentialConfig, SequentialTwoSidedTTest
from gbstats.models.statistics import ProportionStatistic, RegressionAdjustedStatistic, SampleMeanStatistic
from statsmodels.stats.multitest import multipletests

from marketlake.config import ExperimentConfig, ValueCap
from marketlake.experiment import (
    CONVERSION,
    DO_NOT_SHIP,
    KEEP_RUNNING,
    REASON_BELOW_MINIMUM,
    REASON_FEW_USERS,
    REASON_POWERED,
    REASON_RUNNING,
    REASON_WIN,
    REVENUE,
    SHIP,
    USER_COLUMNS,
    Arm,
    Comparison,
    Plan,
    compare_sequential,
    decide,
    experiment_rows,
    moment_sums,
    moments,
)
from marketlake.jobs import main

TOL = 1e-6


def close(actual, expected):
    return actual == pytest.approx(expected, rel=TOL, abs=TOL)


def gbstats(stat_a, stat_b, alpha: float, tuning: float, difference: str):
    config = SequentialConfig(alpha=alpha, sequential_tuning_parameter=tuning, difference_type=difference)
    return SequentialTwoSidedTTest(stat_a, stat_b, config).compute_result()


def per_user_experiment(seed: int, variants: dict[str, tuple[int, float]]) -> pd.DataFrame:
    """Per-user rows (USER_COLUMNS): {variant: (users, conversion rate)}; lognormal revenue on conversion;
    pre-period covariates that correlate with both."""
    rng = np.random.default_rng(seed)
    frames = []
    for variant, (n, rate) in variants.items():
        pre_conversions = rng.poisson(1.0, n).astype(float)
        converted = (rng.random(n) < rate * (0.6 + 0.4 * pre_conversions)).astype(float)
        frames.append(
            pd.DataFrame(
                {
                    "experiment_id": "exp",
                    "user_id": [f"{variant}-{i}" for i in range(n)],
                    "variant": variant,
                    "converted": converted,
                    "value": converted * rng.lognormal(3.5, 0.9, n),
                    "pre_conversions": pre_conversions,
                    "pre_value": pre_conversions * rng.lognormal(3.4, 0.7, n),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[USER_COLUMNS]


def job_rows(spark, users: pd.DataFrame, settings: ExperimentConfig) -> dict:
    frame = spark.createDataFrame(users)
    by_variant = {
        r.variant: moments(r.asDict()) for r in moment_sums(frame, ["experiment_id", "variant"]).collect()
    }
    pooled = moments(moment_sums(frame, ["experiment_id"]).first().asDict())
    rows, notes = experiment_rows("exp", "events", by_variant, pooled, Plan("control", None), settings)
    assert notes == []
    return {(r["metric"], r["variant"], r["cuped"]): r for r in rows}


def plain_statistic(values: np.ndarray, proportion: bool):
    if proportion:
        return ProportionStatistic(n=len(values), sum=float(values.sum()))
    return SampleMeanStatistic(n=len(values), sum=float(values.sum()), sum_squares=float((values**2).sum()))


def cuped_statistic(y: np.ndarray, x: np.ndarray, theta: float):
    return RegressionAdjustedStatistic(
        n=len(y),
        post_statistic=plain_statistic(y, False),
        pre_statistic=plain_statistic(x, False),
        post_pre_sum_of_products=float((x * y).sum()),
        theta=theta,
    )


@pytest.mark.parametrize(
    "seed, variants, alpha, tuning",
    [
        (1, {"control": (4000, 0.05), "treatment": (4100, 0.06)}, 0.05, 5000),
        (2, {"control": (800, 0.20), "treatment": (760, 0.19)}, 0.10, 2000),
        (3, {"control": (20000, 0.03), "treatment": (19800, 0.034)}, 0.05, 50000),
    ],
)
def test_sequential_figures_equal_gbstats(spark, seed, variants, alpha, tuning):
    users = per_user_experiment(seed, variants)
    settings = ExperimentConfig(alpha=alpha, sequential_tuning_users=tuning, min_users=100)
    rows = job_rows(spark, users, settings)
    control, treatment = (users[users.variant == v] for v in ("control", "treatment"))
    pairs = {(CONVERSION, "converted", "pre_conversions"), (REVENUE, "value", "pre_value")}
    theta_of = {
        y: np.cov(users[x], users[y], ddof=1)[0, 1] / users[x].var(ddof=1) for _, y, x in pairs
    }  # over both arms: gbstats' compute_theta on the pooled statistics
    for metric, y, x in pairs:
        for cuped in (False, True):
            if cuped:
                a = cuped_statistic(control[y].to_numpy(), control[x].to_numpy(), theta_of[y])
                b = cuped_statistic(treatment[y].to_numpy(), treatment[x].to_numpy(), theta_of[y])
            else:
                proportion = metric == CONVERSION  # gbstats' proportion variance p (1 - p)
                a, b = (plain_statistic(arm[y].to_numpy(), proportion) for arm in (control, treatment))
            absolute = gbstats(a, b, alpha, tuning, "absolute")
            relative = gbstats(a, b, alpha, tuning, "relative")
            r = rows[(metric, "treatment", cuped)]
            assert close(r["lift"], absolute.expected), (metric, cuped)
            # The test is on the difference (as the fixed tests); the relative interval is the interval of
            # the difference over the control's observed mean, so p-value and intervals always agree.
            assert close(r["sequential_p_value"], absolute.p_value), (metric, cuped)
            assert close(r["sequential_ci_low"], absolute.ci[0]), (metric, cuped)
            assert close(r["sequential_ci_high"], absolute.ci[1]), (metric, cuped)
            base = control[y].mean()
            assert close(r["sequential_rel_ci_low"], absolute.ci[0] / base)
            assert close(r["sequential_rel_ci_high"], absolute.ci[1] / base)
            # gbstats' own relative test (its default) has the same point estimate, a wider interval.
            assert close((r["sequential_rel_ci_low"] + r["sequential_rel_ci_high"]) / 2, relative.expected)
            excludes_zero = not r["sequential_rel_ci_low"] <= 0 <= r["sequential_rel_ci_high"]
            assert (r["sequential_p_value"] < alpha) == excludes_zero
            assert close(r["sequential_p_value_adjusted"], r["sequential_p_value"])  # one comparison
            # Always valid costs width: the sequential interval is wider than the fixed-horizon one.
            assert r["sequential_ci_high"] - r["sequential_ci_low"] > r["ci_high"] - r["ci_low"]
            assert r["decision_test"] == "sequential"


def test_without_a_control_mean_there_is_no_relative_interval():
    """A control mean not above 0 (refunds larger than sales): the test on the difference holds, there is no
    relative interval. gbstats refuses a baseline not above 0, so the reference is gbstats' absolute test on
    both arms shifted by 10 (the difference and the variances do not change)."""
    rng = np.random.default_rng(6)
    treatment = rng.lognormal(2.0, 1.0, 900) * (rng.random(900) < 0.2)
    control = rng.normal(-1.0, 5.0, 1000)
    found = compare_sequential(
        Arm("control", 1000, control.sum(), control.mean(), control.var(ddof=1)),
        Arm("t", 900, treatment.sum(), treatment.mean(), treatment.var(ddof=1)),
        0.05,
        5000,
        False,
    )
    expected = gbstats(
        plain_statistic(control + 10, False), plain_statistic(treatment + 10, False), 0.05, 5000, "absolute"
    )
    assert close(found.p_value, expected.p_value)
    assert close(found.ci_low, expected.ci[0]) and close(found.ci_high, expected.ci[1])
    assert found.rel_ci_low is None and found.rel_ci_high is None


def test_sequential_p_values_are_holm_adjusted_over_the_variants(spark):
    users = per_user_experiment(4, {"control": (3000, 0.10), "b": (3100, 0.12), "c": (2900, 0.095)})
    rows = job_rows(spark, users, ExperimentConfig(min_users=100))
    for metric in (CONVERSION, REVENUE):
        raw = [rows[(metric, v, False)]["sequential_p_value"] for v in ("b", "c")]
        adjusted = multipletests(raw, method="holm")[1]
        for variant, expected in zip(("b", "c"), adjusted, strict=True):
            assert close(rows[(metric, variant, False)]["sequential_p_value_adjusted"], expected)


# ---- the decision follows one test only ---------------------------------------------------------------------

CONTROL = Arm("control", 10_000, 1_000, 0.100, 0.100 * 0.900)


def decision(settings, variant: Arm, p_fixed, p_sequential, rel_ci_high=None, needed=None):
    comparison = Comparison(lift=variant.mean - CONTROL.mean)
    sequential = compare_sequential(CONTROL, variant, settings.alpha, settings.sequential_tuning_users, True)
    if rel_ci_high is not None:
        sequential = dataclasses.replace(sequential, rel_ci_high=rel_ci_high)
    return decide(False, CONTROL, variant, comparison, p_fixed, needed, settings, sequential, p_sequential)


def test_the_decision_uses_only_the_configured_test():
    variant = Arm("b", 10_000, 1_090, 0.109, 0.109 * 0.891)
    # Significant for the fixed test only (a morning when a peek would ship):
    fixed, sequential = ExperimentConfig(test="fixed"), ExperimentConfig(test="sequential")
    assert decision(fixed, variant, p_fixed=0.03, p_sequential=0.4) == (SHIP, REASON_WIN)
    assert decision(sequential, variant, p_fixed=0.03, p_sequential=0.4) == (KEEP_RUNNING, REASON_RUNNING)
    # and the other way round (the sequential p can be lower late in a long experiment):
    assert decision(fixed, variant, p_fixed=0.2, p_sequential=0.01) == (KEEP_RUNNING, REASON_RUNNING)
    assert decision(sequential, variant, p_fixed=0.2, p_sequential=0.01) == (SHIP, REASON_WIN)
    # Futility: the fixed test by its power, the sequential test by its interval of the relative lift.
    assert decision(fixed, variant, 0.2, 0.5, needed=5_000) == (DO_NOT_SHIP, REASON_POWERED)
    assert decision(sequential, variant, 0.2, 0.5, needed=5_000) == (KEEP_RUNNING, REASON_RUNNING)
    assert decision(sequential, variant, 0.2, 0.5, rel_ci_high=0.08) == (DO_NOT_SHIP, REASON_BELOW_MINIMUM)
    assert decision(fixed, variant, 0.2, 0.5, rel_ci_high=0.08) == (KEEP_RUNNING, REASON_RUNNING)
    small = Arm("b", 50, 6, 0.12, 0.12 * 0.88)
    assert decision(sequential, small, 0.01, 0.01) == (KEEP_RUNNING, REASON_FEW_USERS)


def test_the_sequential_interval_holds_the_lift_at_every_look_far_more_often_than_the_fixed_one():
    """Peeking: 400 A/A experiments of 20 daily looks. The fixed-horizon interval excludes 0 at some look in
    far more than alpha of them; the always-valid one in at most alpha (plus simulation error)."""
    rng = np.random.default_rng(19)
    runs, looks, per_look, rate = 400, 20, 500, 0.1
    ever_fixed = ever_sequential = 0
    for _ in range(runs):
        c = np.cumsum(rng.binomial(per_look, rate, looks))
        t = np.cumsum(rng.binomial(per_look, rate, looks))
        n = per_look * np.arange(1, looks + 1)
        fixed_hit = sequential_hit = False
        for cc, tt, nn in zip(c, t, n, strict=True):
            control = Arm("control", int(nn), float(cc), cc / nn, 0.0)
            treatment = Arm("t", int(nn), float(tt), tt / nn, 0.0)
            seq = compare_sequential(control, treatment, 0.05, 5000, True)
            se = np.sqrt(control.mean * (1 - control.mean) / nn + treatment.mean * (1 - treatment.mean) / nn)
            fixed_hit |= abs(treatment.mean - control.mean) > 1.959964 * se
            sequential_hit |= not (seq.ci_low <= 0 <= seq.ci_high)
        ever_fixed += fixed_hit
        ever_sequential += sequential_hit
    assert ever_sequential / runs <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / runs)
    assert ever_fixed / runs > 0.12


# ---- capping, through the job on an exposure log --------------------------------------------------------------


def capped_log(path) -> pd.DataFrame:
    """Two arms of 2,000 users; revenue on conversion; one whale of 50,000 in the treatment."""
    rng = np.random.default_rng(5)
    frames = []
    for variant in ("control", "treatment"):
        n = 2000
        converted = (rng.random(n) < 0.3).astype(int)
        value = np.round(converted * rng.lognormal(3.5, 0.8, n), 2)
        covariate = np.round(rng.lognormal(3.0, 0.9, n), 2)
        frames.append(
            pd.DataFrame(
                {
                    "user_id": [f"{variant}-{i}" for i in range(n)],
                    "variant": variant,
                    "converted": converted,
                    "value": value,
                    "covariate": covariate,
                }
            )
        )
    log = pd.concat(frames, ignore_index=True)
    log.loc[log.index[-1], ["converted", "value"]] = [1, 50_000.0]
    log.to_csv(path, index=False)
    return log


def run_capped(tmp_path, log_path, value_cap: dict) -> pd.DataFrame:
    config = tmp_path / f"config-{value_cap['method']}.yaml"
    config.write_text(yaml.safe_dump({"experiment": {"value_cap": value_cap}}))
    root = str(tmp_path / f"lake-{value_cap['method']}")
    args = ["--lake", root, "--config", str(config), "--run-date", "2024-06-30", "--input", str(log_path)]
    assert main("experiment", [*args, "--experiment", "whale"]) == 0
    return pl.read_delta(f"{root}/gold/experiment_results").to_pandas()


def test_revenue_is_capped_before_cuped_and_the_tests(tmp_path):
    log = capped_log(tmp_path / "whale.csv")
    for value_cap in ({"method": "percentile", "value": 0.99}, {"method": "absolute", "value": 300.0}):
        frame = run_capped(tmp_path, tmp_path / "whale.csv", value_cap)
        if value_cap["method"] == "percentile":
            cap = float(np.percentile(log.value, 99))  # Spark's percentile interpolates as numpy's default
            x_cap = float(np.percentile(log.covariate, 99))
        else:
            cap = x_cap = 300.0
        y, x = np.minimum(log.value, cap), np.minimum(log.covariate, x_cap)
        theta = np.cov(x, y, ddof=1)[0, 1] / x.var(ddof=1)
        for variant in ("control", "treatment"):
            arm = log.variant == variant
            plain = frame[(frame.metric == REVENUE) & (frame.variant == variant) & ~frame.cuped].iloc[0]
            cuped = frame[(frame.metric == REVENUE) & (frame.variant == variant) & frame.cuped].iloc[0]
            assert close(plain.value_cap, cap) and close(cuped.value_cap, cap)
            assert plain.capped_users == int((log.value[arm] > cap).sum())
            assert close(plain.rate, y[arm].mean()) and close(plain.conversions, y[arm].sum())
            adjusted = y - theta * (x - x.mean())
            assert close(cuped.rate, adjusted[arm].mean())
        conversion = frame[frame.metric == CONVERSION]
        assert conversion.value_cap.isna().all() and conversion.capped_users.isna().all()
        treatment = frame[(frame.metric == REVENUE) & (frame.variant == "treatment") & ~frame.cuped].iloc[0]
        assert treatment.rate < 200  # the whale alone would add 25 per user


def test_without_a_cap_the_whale_counts_in_full(tmp_path):
    log = capped_log(tmp_path / "whale.csv")
    frame = run_capped(tmp_path, tmp_path / "whale.csv", {"method": "none"})
    treatment = frame[(frame.metric == REVENUE) & (frame.variant == "treatment") & ~frame.cuped].iloc[0]
    assert close(treatment.rate, log.value[log.variant == "treatment"].mean())
    assert frame.value_cap.isna().all() and frame.capped_users.isna().all()


@pytest.mark.parametrize(
    "value_cap, message",
    [
        ({"method": "percentile", "value": 99}, "a percentile cap needs a value between 0 and 1"),
        ({"method": "absolute"}, "an absolute cap needs a value above 0"),
    ],
)
def test_a_bad_cap_is_refused(value_cap, message):
    with pytest.raises(ValueError, match=message):
        ValueCap(**value_cap)

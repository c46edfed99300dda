"""experiment: every statistic against scipy/statsmodels computed here from the per-user data (1e-6), the
assignment and conversion window on hand-made events, the planted lift of the demo shop recovered, an
unbalanced split flagged, a null experiment not called, bad CSVs refused in one line, and idempotence."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pandas as pd
import polars as pl
import pytest
from chispa import assert_df_equality
from conftest import DEMO_END
from scipy import special, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from marketlake.config import ExperimentConfig, load_config
from marketlake.errors import ConfigError
from marketlake.experiment import (
    CONVERSION,
    DO_NOT_SHIP,
    INVALID_SRM,
    KEEP_RUNNING,
    REVENUE,
    SHIP,
    USER_COLUMNS,
    Arm,
    Plan,
    compare_means,
    experiment_rows,
    first_exposures,
    moment_sums,
    moments,
    outcomes,
    pooled_sums,
    prob_beat_control,
)
from marketlake.jobs import main

RUN_DATE = dt.date(2024, 6, 30)
TOL = 1e-6


def close(actual, expected, tol=TOL):
    """Equal to 1e-6, relative for numbers above 1 (revenue sums)."""
    return actual == pytest.approx(expected, rel=tol, abs=tol)


def results(root: str, run_date=RUN_DATE) -> pd.DataFrame:
    frame = (
        pl.read_delta(f"{root}/gold/experiment_results").filter(pl.col("as_of_date") == run_date).to_pandas()
    )
    return frame.sort_values(["experiment_id", "source", "cuped", "metric", "variant"]).reset_index(drop=True)


def row(frame: pd.DataFrame, metric: str, variant: str, cuped: bool = False) -> pd.Series:
    found = frame[(frame.metric == metric) & (frame.variant == variant) & (frame.cuped == cuped)]
    assert len(found) == 1, (metric, variant, cuped)
    return found.iloc[0]


# ---- statistics against scipy and statsmodels ------------------------------------------------------------


@pytest.fixture(scope="module")
def three_variants(spark):
    """A 3-variant experiment of per-user rows (seeded): conversion rates 10%, 11.5%, 9.5%; revenue on
    conversion (lognormal); pre-period covariates that correlate with both. Returns (per-user pandas
    frame, result rows by (metric, variant, cuped), settings)."""
    rng = np.random.default_rng(7)
    frames = []
    for variant, n, rate in (("control", 3000, 0.10), ("b", 3100, 0.115), ("c", 2900, 0.095)):
        pre_conversions = rng.poisson(1.0, n).astype(float)
        converted = (rng.random(n) < rate * (0.6 + 0.4 * pre_conversions)).astype(float)
        value = converted * rng.lognormal(3.5, 0.8, n)
        pre_value = pre_conversions * rng.lognormal(3.4, 0.7, n)
        frames.append(
            pd.DataFrame(
                {
                    "experiment_id": "exp-3",
                    "user_id": [f"{variant}-{i}" for i in range(n)],
                    "variant": variant,
                    "converted": converted,
                    "value": value,
                    "pre_conversions": pre_conversions,
                    "pre_value": pre_value,
                }
            )
        )
    users = pd.concat(frames, ignore_index=True)[USER_COLUMNS]
    frame = spark.createDataFrame(users)
    by_variant = {
        r.variant: moments(r.asDict()) for r in moment_sums(frame, ["experiment_id", "variant"]).collect()
    }
    pooled = moments(moment_sums(frame, ["experiment_id"]).first().asDict())
    settings = ExperimentConfig(min_users=100)
    plan = Plan("control", {"control": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    rows, notes = experiment_rows("exp-3", "events", by_variant, pooled, plan, settings)
    assert notes == []
    return users, {(r["metric"], r["variant"], r["cuped"]): r for r in rows}, settings


def test_experiment_wide_sums_added_up_from_the_variants_equal_a_second_aggregation(spark):
    rng = np.random.default_rng(3)
    n = 300
    users = pd.DataFrame(
        {
            "experiment_id": rng.choice(["exp-a", "exp-b"], n),
            "user_id": [f"u{i}" for i in range(n)],
            "variant": rng.choice(["control", "b", "c"], n),
            "converted": (rng.random(n) < 0.2).astype(float),
            "value": rng.lognormal(3, 1, n).round(2),
            "pre_conversions": rng.integers(0, 4, n).astype(float),
            "pre_value": rng.lognormal(2, 1, n).round(2),
        }
    )[USER_COLUMNS]
    frame = spark.createDataFrame(users)
    by_variant = [r.asDict() for r in moment_sums(frame, ["experiment_id", "variant"]).collect()]
    direct = {
        r.experiment_id: {k: v for k, v in r.asDict().items() if k != "experiment_id"}
        for r in moment_sums(frame, ["experiment_id"]).collect()
    }
    assert pooled_sums(by_variant) == direct


def arms_of(users: pd.DataFrame, column: str) -> dict[str, np.ndarray]:
    return {variant: group[column].to_numpy() for variant, group in users.groupby("variant")}


def test_conversion_statistics_equal_statsmodels_and_scipy(three_variants):
    users, rows, _ = three_variants
    converted = arms_of(users, "converted")
    c = {v: int(a.sum()) for v, a in converted.items()}
    n = {v: len(a) for v, a in converted.items()}
    p_values = {}
    for variant in ("b", "c"):
        r = rows[(CONVERSION, variant, False)]
        assert (r["users"], r["conversions"]) == (n[variant], c[variant])
        assert close(r["rate"], c[variant] / n[variant])
        assert close(r["lift"], c[variant] / n[variant] - c["control"] / n["control"])
        p_values[variant] = proportions_ztest([c[variant], c["control"]], [n[variant], n["control"]])[1]
        assert close(r["p_value"], p_values[variant])
        low, high = confint_proportions_2indep(
            c[variant], n[variant], c["control"], n["control"], method="newcomb", compare="diff"
        )
        assert close(r["ci_low"], low) and close(r["ci_high"], high)
        low, high = confint_proportions_2indep(
            c[variant], n[variant], c["control"], n["control"], method="log", compare="ratio"
        )
        assert close(r["rel_ci_low"], low - 1) and close(r["rel_ci_high"], high - 1)
        assert close(r["lift_relative"], (c[variant] / n[variant]) / (c["control"] / n["control"]) - 1)
        assert close(r["prob_beat_control"], beta_beats(c["control"], n["control"], c[variant], n[variant]))
    # Holm over the two comparisons with control, computed here with statsmodels.
    adjusted = multipletests([p_values["b"], p_values["c"]], method="holm")[1]
    assert close(rows[(CONVERSION, "b", False)]["p_value_adjusted"], adjusted[0])
    assert close(rows[(CONVERSION, "c", False)]["p_value_adjusted"], adjusted[1])
    assert adjusted[0] != pytest.approx(p_values["b"])  # the correction did something
    control = rows[(CONVERSION, "control", False)]
    assert control["is_control"] and control["lift"] is None and control["p_value"] is None


def test_revenue_statistics_equal_welch_from_scipy(three_variants):
    users, rows, _ = three_variants
    value = arms_of(users, "value")
    p_values = []
    for variant in ("b", "c"):
        r = rows[(REVENUE, variant, False)]
        welch = stats.ttest_ind(value[variant], value["control"], equal_var=False)
        low, high = welch.confidence_interval(0.95)
        assert close(r["p_value"], welch.pvalue)
        assert close(r["ci_low"], low) and close(r["ci_high"], high)
        assert close(r["rate"], value[variant].mean()) and close(r["conversions"], value[variant].sum())
        assert close(r["lift"], value[variant].mean() - value["control"].mean())
        assert r["prob_beat_control"] is None  # Beta-Binomial is for conversions
        p_values.append(welch.pvalue)
    adjusted = multipletests(p_values, method="holm")[1]
    assert close(rows[(REVENUE, "b", False)]["p_value_adjusted"], adjusted[0])
    assert close(rows[(REVENUE, "c", False)]["p_value_adjusted"], adjusted[1])


def test_cuped_equals_welch_on_the_adjusted_values(three_variants):
    """theta = cov(x, y) / var(x) over all users; y - theta (x - mean x) per user, then scipy's Welch."""
    users, rows, _ = three_variants
    for metric, y, x in ((CONVERSION, "converted", "pre_conversions"), (REVENUE, "value", "pre_value")):
        theta = np.cov(users[x], users[y], ddof=1)[0, 1] / users[x].var(ddof=1)
        adjusted = users.assign(adjusted=users[y] - theta * (users[x] - users[x].mean()))
        arms = arms_of(adjusted, "adjusted")
        for variant in ("b", "c"):
            r = rows[(metric, variant, True)]
            welch = stats.ttest_ind(arms[variant], arms["control"], equal_var=False)
            low, high = welch.confidence_interval(0.95)
            assert close(r["rate"], arms[variant].mean())
            assert close(r["lift"], arms[variant].mean() - arms["control"].mean())
            assert close(r["p_value"], welch.pvalue)
            assert close(r["ci_low"], low) and close(r["ci_high"], high)
        # CUPED narrows the interval: the covariate explains part of the variance.
        plain, cuped = rows[(metric, "b", False)], rows[(metric, "b", True)]
        assert cuped["ci_high"] - cuped["ci_low"] < plain["ci_high"] - plain["ci_low"]


def test_srm_is_scipy_chisquare_against_the_planned_split(three_variants):
    users, rows, _ = three_variants
    observed = users.groupby("variant").size().sort_index().to_numpy()
    expected = stats.chisquare(observed, np.full(3, observed.sum() / 3)).pvalue
    for r in rows.values():
        assert close(r["srm_p_value"], expected) and r["srm"] == (expected < 0.001)


def beta_beats(c_control: int, n_control: int, c_variant: int, n_variant: int) -> float:
    """P(B > A) for Beta posteriors with integer parameters, in closed form (Evan Miller's sum) with
    scipy.special.betaln: an independent computation of what the job integrates numerically."""
    a_a, b_a = 1 + c_control, 1 + n_control - c_control
    a_b, b_b = 1 + c_variant, 1 + n_variant - c_variant
    i = np.arange(a_b)
    terms = (
        special.betaln(a_a + i, b_a + b_b)
        - np.log(b_b + i)
        - special.betaln(1 + i, b_b)
        - special.betaln(a_a, b_a)
    )
    return float(np.exp(terms).sum())


@pytest.mark.parametrize(
    "counts",
    [
        (178, 569, 224, 540),
        (500, 5000, 510, 5000),
        (5, 20, 9, 21),
        (0, 10, 0, 10),
        (3000, 30000, 2900, 30000),
    ],
)
def test_prob_beat_control_equals_the_closed_form(counts):
    assert close(prob_beat_control(*counts), beta_beats(*counts))


def test_relative_interval_of_means_covers_95_percent():
    """The delta-method interval on log(mean_b / mean_a), on zero-inflated lognormal revenue with a true
    relative lift of 20%: about 95% of 2,000 simulated experiments cover it (binomial SE 0.5%)."""
    rng = np.random.default_rng(11)
    n, rate, mu, sigma, reps = 1500, 0.2, 3.0, 1.0, 2000
    covered = 0
    for _ in range(reps):
        a = (rng.random(n) < rate) * rng.lognormal(mu, sigma, n)
        b = (rng.random(n) < rate * 1.2) * rng.lognormal(mu, sigma, n)
        arms = [Arm(v, n, x.sum(), x.mean(), x.var(ddof=1)) for v, x in (("a", a), ("b", b))]
        result = compare_means(arms[0], arms[1], 0.05)
        covered += result.rel_ci_low <= 0.2 <= result.rel_ci_high
    assert 0.935 <= covered / reps <= 0.965


# ---- assignment and conversion window on hand-made events -------------------------------------------------


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


EVENT_SCHEMA = (
    "event_id string, user_id string, event_type string, event_ts timestamp, event_date date, session_id string, "
    "order_id string, revenue double, experiment_id string, variant string"
)


def hand_made_events(spark):
    rows = [
        # u1: control; converts in the exposure's session; an earlier order is its pre-period covariate.
        ("e01", "u1", "purchase", "2024-06-20T10:00:00", "s0", "o0", 30.0, None, None),
        ("e02", "u1", "exposure", "2024-06-28T09:00:00", "s1", None, 0.0, "x", "control"),
        ("e03", "u1", "purchase", "2024-06-28T09:20:00", "s1", "o1", 50.0, None, None),
        ("e04", "u1", "purchase", "2024-06-28T09:20:00", "s1", "o1", 5.0, None, None),
        ("e05", "u1", "exposure", "2024-06-29T09:00:00", "s2", None, 0.0, "x", "control"),
        # u2: treatment; its purchase is in another session: no conversion with same_session.
        ("e06", "u2", "exposure", "2024-06-28T12:00:00", "s3", None, 0.0, "x", "treatment"),
        ("e07", "u2", "purchase", "2024-06-28T15:00:00", "s4", "o2", 20.0, None, None),
        # u3: exposed to both variants: left out.
        ("e08", "u3", "exposure", "2024-06-27T12:00:00", "s5", None, 0.0, "x", "treatment"),
        ("e09", "u3", "exposure", "2024-06-28T12:00:00", "s6", None, 0.0, "x", "control"),
        # u4: treatment; purchase in the session but 30 hours later (past the 24-hour window); and a purchase
        # after the run date, which never counts.
        ("e10", "u4", "exposure", "2024-06-28T08:00:00", "s7", None, 0.0, "x", "treatment"),
        ("e11", "u4", "purchase", "2024-06-29T14:00:00", "s7", "o3", 40.0, None, None),
        ("e12", "u4", "purchase", "2024-07-01T01:00:00", "s7", "o4", 40.0, None, None),
    ]
    frame = [(e, u, t, ts(when), ts(when).date(), s, o, r, x, v) for e, u, t, when, s, o, r, x, v in rows]
    return spark.createDataFrame(frame, EVENT_SCHEMA)


def test_first_exposure_assigns_and_the_window_decides_conversion(spark):
    from marketlake.experiment import exposures

    events = hand_made_events(spark)
    first = first_exposures(events.transform(exposures(RUN_DATE, 90)))
    assigned = first.select("user_id", "variant", "exposed_at", "variants").orderBy("user_id")
    expected = spark.createDataFrame(
        [
            ("u1", "control", ts("2024-06-28T09:00:00"), 1),
            ("u2", "treatment", ts("2024-06-28T12:00:00"), 1),
            ("u3", "treatment", ts("2024-06-27T12:00:00"), 2),
            ("u4", "treatment", ts("2024-06-28T08:00:00"), 1),
        ],
        "user_id string, variant string, exposed_at timestamp, variants long",
    )
    assert_df_equality(assigned, expected, ignore_nullable=True)

    single = first.filter("variants = 1")
    settings = ExperimentConfig()
    users = single.transform(outcomes(events, RUN_DATE, settings)).orderBy("user_id")
    expected = spark.createDataFrame(
        [
            ("x", "u1", "control", 1.0, 55.0, 1.0, 30.0),
            ("x", "u2", "treatment", 0.0, 0.0, 0.0, 0.0),
            ("x", "u4", "treatment", 0.0, 0.0, 0.0, 0.0),
        ],
        "experiment_id string, user_id string, variant string, converted double, value double, "
        "pre_conversions double, pre_value double",
    )
    assert_df_equality(users, expected, ignore_nullable=True)

    # Without the session rule u2's purchase 3 hours later counts; a 48-hour window also takes u4's.
    loose = ExperimentConfig(same_session=False, window_hours=48, cuped=False)
    converted = {
        r.user_id: r.converted for r in single.transform(outcomes(events, RUN_DATE, loose)).collect()
    }
    assert converted == {"u1": 1.0, "u2": 1.0, "u4": 1.0}


# ---- the job on the demo shop: the planted lift ------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_experiment(spark, demo_shop, tmp_path_factory):
    shop, _, root = demo_shop
    lake_root = str(tmp_path_factory.mktemp("experiment-demo") / "lake")
    shutil.copytree(root, lake_root)
    assert main("experiment", ["--lake", lake_root, "--run-date", DEMO_END]) == 0
    truth = json.loads((shop / "truth" / "experiment.json").read_text())
    return lake_root, truth


def test_the_planted_lift_is_inside_the_interval(demo_experiment):
    root, truth = demo_experiment
    frame = results(root, dt.date.fromisoformat(DEMO_END))
    assert set(frame.experiment_id) == {truth["experiment_id"]} and set(frame.source) == {"events"}
    treatment, control = row(frame, CONVERSION, "treatment"), row(frame, CONVERSION, "control")
    # Session conversion counts exactly what the generator planted.
    for r, variant in ((treatment, "treatment"), (control, "control")):
        assert (r.users, r.conversions) == (
            truth["realised"][variant]["users"],
            truth["realised"][variant]["conversions"],
        )
    assert treatment.ci_low <= truth["true_absolute_lift"] <= treatment.ci_high
    assert treatment.rel_ci_low <= truth["true_relative_lift"] <= treatment.rel_ci_high
    assert treatment.ci_low > 0 and treatment.p_value_adjusted < 0.05 and treatment.decision == SHIP
    assert treatment.prob_beat_control > 0.99 and not treatment.srm and treatment.srm_p_value > 0.001
    cuped = row(frame, CONVERSION, "treatment", cuped=True)
    assert cuped.ci_low <= truth["true_absolute_lift"] <= cuped.ci_high
    assert cuped.ci_high - cuped.ci_low < treatment.ci_high - treatment.ci_low
    assert set(frame.metric) == {CONVERSION, REVENUE} and len(frame) == 8


def test_a_rerun_leaves_the_same_contents_and_keeps_csv_results(demo_experiment, tmp_path):
    root, _ = demo_experiment
    date = dt.date.fromisoformat(DEMO_END)
    before = results(root, date)
    path = write_csv(tmp_path / "other.csv", {"control": (1000, 100), "b": (1000, 120)})
    assert main("experiment", ["--lake", root, "--run-date", DEMO_END, "--input", str(path)]) == 0
    assert main("experiment", ["--lake", root, "--run-date", DEMO_END]) == 0
    after = results(root, date)
    pd.testing.assert_frame_equal(after[after.source == "events"].reset_index(drop=True), before)
    assert set(after[after.source == "csv"].experiment_id) == {"other"}


# ---- CSV input: unbalanced split, null experiment, bad files ------------------------------------------------


def write_csv(path, arms: dict[str, tuple[int, int]], value: bool = False):
    """One row per user: arms = {variant: (users, conversions)}; with value, revenue on conversions."""
    rng = np.random.default_rng(3)
    frames = []
    for variant, (n, c) in arms.items():
        converted = np.zeros(n, dtype=int)
        converted[rng.choice(n, c, replace=False)] = 1
        frame = pd.DataFrame(
            {"user_id": [f"{variant}{i}" for i in range(n)], "variant": variant, "converted": converted}
        )
        if value:
            frame["value"] = np.round(converted * rng.lognormal(3.0, 0.7, n), 2)
        frames.append(frame)
    pd.concat(frames).to_csv(path, index=False)
    return path


def test_an_unbalanced_split_is_flagged_and_invalid(tmp_path, lake_root):
    path = write_csv(tmp_path / "unbalanced.csv", {"control": (5000, 500), "treatment": (4500, 560)})
    assert (
        main(
            "experiment",
            ["--lake", lake_root, "--run-date", "2024-06-30", "--input", str(path), "--control", "control"],
        )
        == 0
    )
    frame = results(lake_root)
    expected = stats.chisquare([5000, 4500]).pvalue
    assert expected < 0.001
    assert set(frame.experiment_id) == {"unbalanced"} and set(frame.source) == {"csv"}
    assert frame.srm.all() and all(close(p, expected) for p in frame.srm_p_value)
    assert set(frame.decision) == {INVALID_SRM}
    assert set(frame.metric) == {CONVERSION}  # no value column: no revenue rows; no covariate: no CUPED


def test_a_null_experiment_is_not_significant(tmp_path, lake_root):
    path = write_csv(tmp_path / "null.csv", {"control": (5000, 500), "treatment": (5000, 505)}, value=True)
    assert (
        main(
            "experiment",
            ["--lake", lake_root, "--run-date", "2024-06-30", "--input", str(path), "--control", "control"],
        )
        == 0
    )
    frame = results(lake_root)
    for metric in (CONVERSION, REVENUE):
        treatment = row(frame, metric, "treatment")
        assert treatment.p_value_adjusted > 0.05 and treatment.ci_low < 0 < treatment.ci_high
        assert treatment.decision in (KEEP_RUNNING, DO_NOT_SHIP) and not treatment.srm
    assert 0.3 < row(frame, CONVERSION, "treatment").prob_beat_control < 0.7


@pytest.mark.parametrize(
    "content, message",
    [
        ("user_id,variant\nu1,control\n", "no column converted"),
        (
            "user_id,variant,converted\nu1,control,1\nu2,treatment,maybe\n",
            "1 rows with converted not 0/1/true/false (e.g. converted='maybe')",
        ),
        (
            "user_id,variant,converted,value\nu1,control,1,ten\nu2,treatment,0,\n",
            "1 rows with value not a number",
        ),
        (
            "user_id,variant,converted\nu1,a,1\nu2,b,0\n",
            "no rows of the control variant 'control' (variants: a, b)",
        ),
        ("user_id,variant,converted\n", "no rows under the header"),
    ],
)
def test_a_bad_csv_is_one_line_and_exit_2(tmp_path, lake_root, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main("experiment", ["--lake", lake_root, "--run-date", "2024-06-30", "--input", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "lake" / "gold" / "experiment_results").exists()


def test_a_missing_file_and_stray_options_exit_2_before_spark(tmp_path, capsys):
    assert main("experiment", ["--input", str(tmp_path / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main("experiment", ["--control", "a"]) == 2
    assert "--control and --experiment go with --input" in capsys.readouterr().err


def test_no_exposures_writes_an_empty_partition(spark, config, lake_root):
    from marketlake.lake import Lake

    lake = Lake(spark, config.lake, lake_root)
    events = hand_made_events(spark).filter("event_type != 'exposure'")
    lake.write("silver.events", events, "append", partition_by=["event_date"])
    assert main("experiment", ["--lake", lake_root, "--run-date", "2024-06-30"]) == 0
    assert results(lake_root).empty


def test_a_planned_split_must_be_a_distribution(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: {experiments: {x: {split: {control: 0.5, treatment: 0.4}}}}\n")
    with pytest.raises(ConfigError, match="split shares must sum to 1"):
        load_config(bad, {})
    good = tmp_path / "good.yaml"
    good.write_text("experiment: {experiments: {x: {control: a, split: {a: 0.2, b: 0.8}}}}\n")
    assert load_config(good, {}).experiment.experiments["x"].split == {"a": 0.2, "b": 0.8}

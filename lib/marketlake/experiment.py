"""A/B test results: who saw which variant, who converted, and what the difference is worth.

Definitions (the README's "experiment" section says the same for readers of the table):

- Assignment: a user's first exposure (event_type exposure, earliest event_ts, then event_id) to an
  experiment gives their variant, the time their window opens and the session it happened in. A user
  exposed to two or more variants of one experiment cannot be attributed to either: they are left out
  of that experiment and counted (`users_in_several_variants`).
- Conversion: an event of type `conversion_event` after the first exposure, at most `window_hours`
  later and, with `same_session`, in the session of the first exposure; up to the end of the run date.
  Value: the revenue of the events that qualify the same way (revenue is 0 except on purchases).
- CUPED covariates: in the `cuped_days` before the first exposure, the sessions holding a conversion
  event (for the conversion metric) and the revenue (for revenue_per_user).
- An exposure log (the job's --input CSV) is collapsed to one row per user the same way: rows identical
  in every column read are one row (`duplicate_rows`); a user's further rows in their variant are merged
  (`repeat_rows_merged`: converted if any row converted, values summed, the covariate of the first
  exposure); users in two or more variants are left out (`users_in_several_variants`).

The statistics work on a handful of aggregate rows per experiment and variant (count, sum, mean,
sample variance and covariances, computed by Spark); they run in the driver with scipy and statsmodels:

- conversion: two-proportion z-test (statsmodels proportions_ztest, pooled variance), Newcombe's
  interval for the difference and the log (Katz) interval for the ratio (confint_proportions_2indep),
  Beta-Binomial P(variant beats control) with Beta(1 + c, 1 + n - c) posteriors, integrated numerically;
- revenue_per_user: Welch's t-test (scipy ttest_ind_from_stats, equal_var=False) and Welch's interval;
  the relative interval by the delta method on the log of the ratio of means;
- CUPED rows: y - theta (x - mean x), theta = cov(x, y) / var(x) over the experiment's users, then the
  same Welch test and intervals on the adjusted means;
- multiple comparisons: statsmodels multipletests over a metric's comparisons with control;
- sample-ratio mismatch: scipy chisquare of the users per variant against the planned split;
- sequential: always-valid p-values and intervals (the asymptotic confidence sequence of Waudby-Smith et
  al. 2023, as GrowthBook computes it) on the same statistics; the decision uses the test settings.test
  names, never a mix.

Revenue may be capped per user (settings.value_cap, computed in Spark per experiment) before the moments.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from scipy import integrate, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_effectsize, proportions_ztest

from marketlake import catalog
from marketlake.config import ExperimentConfig, ValueCap
from marketlake.lake.schema import spark_schema

CONVERSION, REVENUE = "conversion", "revenue_per_user"
SHIP, DO_NOT_SHIP, KEEP_RUNNING, INVALID_SRM = "ship", "do not ship", "keep running", "invalid: SRM"
FROM_EVENTS, FROM_CSV = "events", "csv"

# gold.experiment_results. conversions: converted users (for revenue_per_user the revenue); rate: conversions
# / users (CUPED rows: adjusted). duplicate_rows, repeat_rows_merged, users_in_several_variants: what was left
# out or folded before the analysis, per experiment (the same on all its rows): rows identical to an earlier
# row, dropped; further rows of a user in their variant, merged; users left out as not attributable. An
# exposure log (--input) has all three; silver.events only users_in_several_variants (its events are unique
# by event_id, and many exposures per user are normal there).
RESULT_SCHEMA = spark_schema(catalog.EXPERIMENT_RESULTS)
RESULT_COLUMNS = RESULT_SCHEMA.fieldNames()

EXACT = "decimal(38,6)"  # decimal sums are exact: totals do not depend on the order rows arrive in
# The per-user frame every source is turned into before aggregation.
USER_COLUMNS = ["experiment_id", "user_id", "variant", "converted", "value", "pre_conversions", "pre_value"]


# ---------------------------------------------------------------------------------------------------------
# Spark: silver.events -> one row per experiment and user -> moments per experiment and variant


def _day_end(run_date: dt.date) -> Column:
    return F.lit(dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time()))


def exposures(run_date: dt.date, lookback_days: int) -> Callable[[DataFrame], DataFrame]:
    """silver.events -> the exposure events (with an experiment_id and a variant) up to the end of the run
    date, of the experiments exposed to anyone in the lookback_days ending on the run date."""

    def transform(events: DataFrame) -> DataFrame:
        exposed = events.filter(
            (F.col("event_type") == "exposure")
            & (F.col("event_date") <= F.lit(run_date))
            & (F.col("event_ts") < _day_end(run_date))
            & F.col("experiment_id").isNotNull()
            & F.col("variant").isNotNull()
        ).select("experiment_id", "user_id", "variant", "event_ts", "event_id", "session_id", "event_date")
        start = run_date - dt.timedelta(days=lookback_days - 1)
        active = exposed.filter(F.col("event_date") >= F.lit(start)).select("experiment_id").distinct()
        return exposed.join(F.broadcast(active), "experiment_id").drop("event_date")

    return transform


def first_exposures(exposed: DataFrame) -> DataFrame:
    """exposures -> (experiment_id, user_id, variant, exposed_at, exposure_session, variants): each user's
    first exposure per experiment, and how many distinct variants the user was exposed to."""
    first = F.min(F.struct("event_ts", "event_id", "variant", "session_id"))
    return (
        exposed.groupBy("experiment_id", "user_id")
        .agg(first.alias("first"), F.countDistinct("variant").alias("variants"))
        .select(
            "experiment_id",
            "user_id",
            F.col("first.variant").alias("variant"),
            F.col("first.event_ts").alias("exposed_at"),
            F.col("first.session_id").alias("exposure_session"),
            "variants",
        )
    )


def outcomes(
    events: DataFrame, run_date: dt.date, settings: ExperimentConfig
) -> Callable[[DataFrame], DataFrame]:
    """assigned users (first_exposures, one variant each) -> the per-user frame (USER_COLUMNS): converted
    (0/1) and value in the window, and with settings.cuped the pre-period covariates (else 0)."""
    conversion_type = settings.conversion_event
    up_to_run_date = (F.col("event_date") <= F.lit(run_date)) & (F.col("event_ts") < _day_end(run_date))

    def in_window(assigned: DataFrame) -> DataFrame:
        candidates = events.filter(
            F.col("event_type").isin(conversion_type, "purchase") & up_to_run_date
        ).select(
            "user_id",
            "event_ts",
            F.col("session_id").alias("event_session"),
            (F.col("event_type") == conversion_type).cast("double").alias("is_conversion"),
            F.coalesce(F.col("revenue"), F.lit(0.0)).alias("revenue"),
        )
        within = F.col("event_ts") >= F.col("exposed_at")
        if settings.window_hours is not None:
            elapsed = F.col("event_ts").cast("double") - F.col("exposed_at").cast("double")
            within &= elapsed <= F.lit(settings.window_hours * 3600.0)
        if settings.same_session:
            within &= F.col("event_session") == F.col("exposure_session")
        return (
            assigned.join(candidates, "user_id")
            .filter(within)
            .groupBy("experiment_id", "user_id")
            .agg(
                F.max("is_conversion").alias("converted"),
                F.sum(F.col("revenue").cast(EXACT)).cast("double").alias("value"),
            )
        )

    def pre_period(assigned: DataFrame) -> DataFrame:
        start = F.col("exposed_at") - F.make_dt_interval(F.lit(settings.cuped_days))
        before = (
            assigned.select("experiment_id", "user_id", "exposed_at")
            .join(
                events.filter(up_to_run_date).select(
                    "user_id", "event_ts", "event_id", "session_id", "event_type", "revenue"
                ),
                "user_id",
            )
            .filter((F.col("event_ts") < F.col("exposed_at")) & (F.col("event_ts") >= start))
        )
        session = F.coalesce(F.col("session_id"), F.col("event_id"))  # an event without a session is its own
        return before.groupBy("experiment_id", "user_id").agg(
            F.count_distinct(F.when(F.col("event_type") == conversion_type, session))
            .cast("double")
            .alias("pre_conversions"),
            F.sum(F.coalesce(F.col("revenue"), F.lit(0.0)).cast(EXACT)).cast("double").alias("pre_value"),
        )

    def transform(assigned: DataFrame) -> DataFrame:
        keys = ["experiment_id", "user_id"]
        users = assigned.join(in_window(assigned), keys, "left").fillna(0.0, subset=["converted", "value"])
        if settings.cuped:
            users = users.join(pre_period(assigned), keys, "left").fillna(
                0.0, subset=["pre_conversions", "pre_value"]
            )
        else:
            users = users.withColumn("pre_conversions", F.lit(0.0)).withColumn("pre_value", F.lit(0.0))
        return users.select(*USER_COLUMNS)

    return transform


# An exposure log before collapse_exposure_log: one row per exposure. exposed_at is null when the log has no
# time; row_order is the row's place in the log (file, then line), the tie-break after exposed_at.
EXPOSURE_LOG_COLUMNS = ["user_id", "variant", "converted", "value", "covariate", "exposed_at", "row_order"]


def collapse_exposure_log(log: DataFrame) -> DataFrame:
    """An exposure log (EXPOSURE_LOG_COLUMNS) -> one row per user_id: variant, converted (the largest: 1 if
    any row converted), value (the sum; null when no row has one), covariate and exposed_at of the first
    exposure (earliest exposed_at, a missing time after every time, then row_order), and what was folded:
    variants (how many distinct variants the user was in; more than one: not attributable to any),
    duplicate_rows (rows equal to another in every column but row_order, dropped before anything is
    summed) and repeat_rows (the user's other distinct rows, merged into this one)."""
    record = [c for c in EXPOSURE_LOG_COLUMNS if c != "row_order"]
    distinct = log.groupBy(*record).agg(
        F.min("row_order").alias("row_order"), (F.count("*") - 1).alias("duplicates")
    )
    first = F.min(F.struct(F.col("exposed_at").isNull(), "exposed_at", "row_order", "variant", "covariate"))
    return (
        distinct.groupBy("user_id")
        .agg(
            first.alias("first"),
            F.count_distinct("variant").alias("variants"),
            F.max("converted").alias("converted"),
            F.sum(F.col("value").cast(EXACT)).cast("double").alias("value"),  # exact: any row order, one sum
            F.sum("duplicates").alias("duplicate_rows"),
            (F.count("*") - 1).alias("repeat_rows"),
        )
        .select(
            "user_id",
            F.col("first.variant").alias("variant"),
            "variants",
            "converted",
            "value",
            F.col("first.covariate").alias("covariate"),
            F.col("first.exposed_at").alias("exposed_at"),
            "duplicate_rows",
            "repeat_rows",
        )
    )


def value_caps(cap: ValueCap) -> Callable[[DataFrame], DataFrame]:
    """The per-user frame -> per experiment_id: value_cap and pre_value_cap, the caps of the value and of
    its CUPED covariate (each by the same rule over its own values: a percentile of the experiment's users,
    all variants together, or the absolute cap)."""

    def transform(users: DataFrame) -> DataFrame:
        if cap.method == "absolute":
            return (
                users.select("experiment_id")
                .distinct()
                .select(
                    "experiment_id",
                    F.lit(cap.value).alias("value_cap"),
                    F.lit(cap.value).alias("pre_value_cap"),
                )
            )

        def quantile(column: str) -> Column:
            counted = F.when(F.col(column) != 0, F.col(column)) if cap.ignore_zeros else F.col(column)
            return F.percentile(counted, F.lit(cap.value))

        return users.groupBy("experiment_id").agg(
            quantile("value").alias("value_cap"), quantile("pre_value").alias("pre_value_cap")
        )

    return transform


def capped(caps: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """The per-user frame -> the same with value and pre_value capped at their experiment's caps (value_caps)
    and `capped` = 1 for a user whose value was above its cap (an experiment without caps: unchanged)."""

    def transform(users: DataFrame) -> DataFrame:
        joined = users.join(F.broadcast(caps), "experiment_id", "left")
        return joined.select(
            *[c for c in USER_COLUMNS if c not in ("value", "pre_value")],
            F.least("value", "value_cap").alias("value"),
            F.least("pre_value", "pre_value_cap").alias("pre_value"),
            F.coalesce((F.col("value") > F.col("value_cap")).cast("long"), F.lit(0)).alias("capped"),
        )

    return transform


MOMENTS = {
    CONVERSION: ("converted", "pre_conversions"),
    REVENUE: ("value", "pre_value"),
}


def moment_sums(users: DataFrame, by: Iterable[str]) -> DataFrame:
    """The per-user frame -> per group: n, and for each metric y with its covariate x the exact (decimal)
    sums of y, y^2, x, x^2 and x*y (each term rounded to 6 decimals first). `moments` turns a row of them
    into means, variances and the covariance."""
    columns = [F.count("*").alias("n")]
    for metric, (y, x) in MOMENTS.items():
        terms = {
            "sum": F.col(y),
            "sum2": F.col(y) * F.col(y),
            "x_sum": F.col(x),
            "x_sum2": F.col(x) * F.col(x),
            "xy_sum": F.col(x) * F.col(y),
        }
        columns += [F.sum(term.cast(EXACT)).alias(f"{metric}_{name}") for name, term in terms.items()]
    if "capped" in users.columns:
        columns.append(F.sum("capped").alias("capped"))
    return users.groupBy(*by).agg(*columns)


def pooled_sums(by_variant: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows of moment_sums per experiment and variant -> the same sums per experiment (all its users): the
    sums are exact decimals, so adding them up equals aggregating the users again."""
    pooled: dict[str, dict[str, Any]] = {}
    for row in by_variant:
        sums = {name: value for name, value in row.items() if name not in ("experiment_id", "variant")}
        total = pooled.setdefault(row["experiment_id"], dict.fromkeys(sums, 0))
        for name, value in sums.items():
            total[name] += value
    return pooled


def moments(sums: dict[str, Any]) -> dict[str, Any]:
    """A row of moment_sums (as a dict) -> n, and per metric: sum, mean and sample variance of y, mean and
    sample variance of x, sample covariance of x and y; exact rational arithmetic, then floats (variances
    None for a single user)."""
    n = int(sums["n"])

    def sample(total: Fraction) -> float | None:
        return float(total / (n - 1)) if n > 1 else None

    found: dict[str, Any] = {"n": n}
    for metric in MOMENTS:
        y, y2, x, x2, xy = (
            Fraction(sums[f"{metric}_{name}"]) for name in ("sum", "sum2", "x_sum", "x_sum2", "xy_sum")
        )
        found[f"{metric}_sum"] = float(y)
        found[f"{metric}_mean"] = float(y / n)
        found[f"{metric}_x_mean"] = float(x / n)
        found[f"{metric}_var"] = sample(y2 - y * y / n)
        found[f"{metric}_x_var"] = sample(x2 - x * x / n)
        found[f"{metric}_xy_cov"] = sample(xy - x * y / n)
    return found


# ---------------------------------------------------------------------------------------------------------
# Statistics over aggregates (driver)


@dataclass(frozen=True)
class Arm:
    """One variant's aggregate for one metric: n users, sum and mean of the metric, its sample variance."""

    variant: str
    n: int
    total: float
    mean: float
    var: float
    unadjusted_mean: float | None = None  # CUPED arms: the observed mean (relative lifts divide by it)

    @property
    def observed_mean(self) -> float:
        return self.mean if self.unadjusted_mean is None else self.unadjusted_mean


@dataclass(frozen=True)
class Comparison:
    lift: float | None = None
    lift_relative: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    rel_ci_low: float | None = None
    rel_ci_high: float | None = None
    p_value: float | None = None
    prob_beat_control: float | None = None


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def compare_proportions(
    control: Arm, variant: Arm, alpha: float, with_probability: bool = True
) -> Comparison:
    """Two-proportion z-test (pooled), Newcombe interval of the difference, log (Katz) interval of the
    ratio minus 1, and (with_probability) the Beta-Binomial probability that the variant's rate is the
    higher: a numerical integration no decision reads, which a simulation of many looks skips."""
    c_t, n_t, c_c, n_c = round(variant.total), variant.n, round(control.total), control.n
    p_t, p_c = c_t / n_t, c_c / n_c
    lift = p_t - p_c
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        p_value = _finite(proportions_ztest([c_t, c_c], [n_t, n_c])[1]) if 0 < c_t + c_c < n_t + n_c else None
        ci_low, ci_high = confint_proportions_2indep(
            c_t, n_t, c_c, n_c, method="newcomb", compare="diff", alpha=alpha
        )
        if c_t > 0 and c_c > 0:
            ratio_low, ratio_high = confint_proportions_2indep(
                c_t, n_t, c_c, n_c, method="log", compare="ratio", alpha=alpha
            )
            rel_ci = _finite(ratio_low - 1), _finite(ratio_high - 1)
        else:
            rel_ci = None, None
    return Comparison(
        lift=lift,
        lift_relative=lift / p_c if p_c > 0 else None,
        ci_low=_finite(ci_low),
        ci_high=_finite(ci_high),
        rel_ci_low=rel_ci[0],
        rel_ci_high=rel_ci[1],
        p_value=p_value,
        prob_beat_control=prob_beat_control(c_c, n_c, c_t, n_t) if with_probability else None,
    )


def compare_means(control: Arm, variant: Arm, alpha: float) -> Comparison:
    """Welch's t-test and interval for the difference of means; delta-method interval on the log of the
    ratio of means for the relative lift (needs both means above 0)."""
    lift = variant.mean - control.mean
    se2_t, se2_c = variant.var / variant.n, control.var / control.n
    se = math.sqrt(se2_t + se2_c)
    if not se > 0:
        return Comparison(lift=lift, lift_relative=lift / control.mean if control.mean else None)
    p_value = stats.ttest_ind_from_stats(
        variant.mean,
        math.sqrt(variant.var),
        variant.n,
        control.mean,
        math.sqrt(control.var),
        control.n,
        equal_var=False,
    ).pvalue
    df = (se2_t + se2_c) ** 2 / (se2_t**2 / (variant.n - 1) + se2_c**2 / (control.n - 1))
    half = stats.t.ppf(1 - alpha / 2, df) * se
    rel_low = rel_high = relative = None
    if control.mean != 0:
        relative = lift / control.mean
    if variant.mean > 0 and control.mean > 0:
        log_se = math.sqrt(se2_t / variant.mean**2 + se2_c / control.mean**2)
        z = stats.norm.ppf(1 - alpha / 2)
        log_ratio = math.log(variant.mean / control.mean)
        rel_low, rel_high = math.expm1(log_ratio - z * log_se), math.expm1(log_ratio + z * log_se)
    return Comparison(
        lift=lift,
        lift_relative=relative,
        ci_low=lift - half,
        ci_high=lift + half,
        rel_ci_low=rel_low,
        rel_ci_high=rel_high,
        p_value=_finite(p_value),
    )


@dataclass(frozen=True)
class SequentialComparison:
    p_value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    rel_ci_low: float | None = None
    rel_ci_high: float | None = None


def sequential_rho(alpha: float, tuning_users: float) -> float:
    """The mixture parameter of the asymptotic confidence sequence that makes it narrowest at tuning_users
    observations (Waudby-Smith et al. 2023, eq. 161; GrowthBook's sequential_tuning_parameter)."""
    log_alpha = math.log(alpha)
    return math.sqrt((-2 * log_alpha + math.log(-2 * log_alpha + 1)) / tuning_users)


def _always_valid(estimate: float, variance: float, n: int, alpha: float, rho: float) -> tuple[float, float]:
    """(half width of the always-valid interval, always-valid p-value of estimate = 0) for an estimate
    with sampling variance `variance` after n observations: the asymptotic confidence sequence of
    Waudby-Smith et al. 2023 (eq. 9) and its p-value (eq. 155), as GrowthBook computes them."""
    n_rho2 = n * rho**2
    half = math.sqrt(variance * n) * math.sqrt(
        2 * (n_rho2 + 1) * math.log(math.sqrt(n_rho2 + 1) / alpha) / (n * rho) ** 2
    )
    z2n = estimate**2 * n / variance
    log_evalue = rho**2 * z2n / (2 * (n_rho2 + 1)) - 0.5 * math.log(n_rho2 + 1)
    return half, min(1.0, math.exp(-log_evalue))


def compare_sequential(
    control: Arm, variant: Arm, alpha: float, tuning_users: float, proportions: bool
) -> SequentialComparison:
    """Always-valid (sequential) p-value and intervals: they stay valid however often they are looked at,
    unlike the fixed-horizon ones. The test is on the difference of means, as the fixed-horizon tests are
    (GrowthBook's engine with difference_type absolute); a proportion's variance is p (1 - p), a mean's its
    sample variance. The relative interval is the interval of the difference over the control's observed
    mean, so the p-value and both intervals always agree: p < alpha exactly when they exclude 0 (none when
    the control's mean is not above 0). Nothing without spread."""
    var_c = control.mean * (1 - control.mean) if proportions else control.var
    var_t = variant.mean * (1 - variant.mean) if proportions else variant.var
    variance = var_c / control.n + var_t / variant.n
    if not variance > 0:
        return SequentialComparison()
    rho = sequential_rho(alpha, tuning_users)
    lift = variant.mean - control.mean
    half, p_value = _always_valid(lift, variance, control.n + variant.n, alpha, rho)
    base = control.observed_mean
    return SequentialComparison(
        p_value=_finite(p_value),
        ci_low=lift - half,
        ci_high=lift + half,
        rel_ci_low=(lift - half) / base if base > 0 else None,
        rel_ci_high=(lift + half) / base if base > 0 else None,
    )


def prob_beat_control(c_control: int, n_control: int, c_variant: int, n_variant: int) -> float:
    """P(rate_variant > rate_control) under independent Beta(1 + c, 1 + n - c) posteriors (uniform priors):
    E[P(variant > x)] over the control's posterior, integrated over its quantiles u in (0, 1) (a smooth
    integrand however narrow the posteriors are)."""
    control = stats.beta(1 + c_control, 1 + n_control - c_control)
    variant = stats.beta(1 + c_variant, 1 + n_variant - c_variant)
    value: float
    value, _ = integrate.quad(
        lambda u: variant.sf(control.ppf(u)), 0.0, 1.0, epsabs=1e-12, epsrel=1e-10, limit=200
    )
    return min(1.0, max(0.0, value))


def cuped_arms(
    arms: dict[str, dict[str, float]], metric: str, theta: float, pooled_x_mean: float
) -> dict[str, Arm]:
    """Per variant, the CUPED-adjusted metric y - theta (x - pooled mean of x): its mean and sample
    variance (var y + theta^2 var x - 2 theta cov(x, y)); total stays the observed sum."""
    adjusted = {}
    for variant, row in arms.items():
        mean = row[f"{metric}_mean"] - theta * (row[f"{metric}_x_mean"] - pooled_x_mean)
        y_var, x_var, xy_cov = (row[f"{metric}_{name}"] or 0.0 for name in ("var", "x_var", "xy_cov"))
        var = y_var + theta**2 * x_var - 2 * theta * xy_cov
        adjusted[variant] = Arm(
            variant,
            int(row["n"]),
            float(row[f"{metric}_sum"]),
            mean,
            max(var, 0.0),
            unadjusted_mean=float(row[f"{metric}_mean"]),
        )
    return adjusted


def cuped_theta(pooled: dict[str, float], metric: str) -> float | None:
    """theta = cov(x, y) / var(x) over all the experiment's users; None when x does not vary."""
    x_var = pooled.get(f"{metric}_x_var")
    if x_var is None or not x_var > 0 or pooled.get(f"{metric}_xy_cov") is None:
        return None
    return pooled[f"{metric}_xy_cov"] / x_var


def srm_p_value(users: dict[str, int], planned: dict[str, float]) -> float:
    """Chi-square goodness of fit of users per variant to the planned shares (a planned variant nobody saw
    counts as 0 users); 0.0 when users landed in a variant the plan does not have."""
    if set(users) - set(planned):
        return 0.0
    variants = sorted(planned)
    observed = np.array([users.get(v, 0) for v in variants], dtype=float)
    expected = observed.sum() * np.array([planned[v] for v in variants])
    return float(stats.chisquare(observed, expected).pvalue)


def adjusted_p_values(p_values: list[float | None], method: str) -> list[float | None]:
    """multipletests over the defined p-values (the same values with one comparison)."""
    defined = [i for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    if defined:
        corrected = multipletests([p_values[i] for i in defined], method=method)[1]
        for i, p in zip(defined, corrected, strict=True):
            adjusted[i] = float(p)
    return adjusted


def users_needed(
    control: Arm, variant: Arm, settings: ExperimentConfig, comparisons: int, proportions: bool
) -> float | None:
    """Control users needed to detect a relative lift of min_detectable_lift with the configured power at
    alpha / comparisons (two-sided), at the observed ratio of variant to control users: Cohen's h with the
    normal power of two proportions, else Cohen's d (control's standard deviation) with the t-test's.
    None when the control's mean or spread leaves no effect to size."""
    if control.mean <= 0 or control.var <= 0:
        return None
    alpha = settings.alpha / max(1, comparisons)
    ratio = variant.n / control.n
    target = control.mean * (1 + settings.min_detectable_lift)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if proportions and target < 1:
            effect = abs(proportion_effectsize(target, control.mean))
            return float(NormalIndPower().solve_power(effect, alpha=alpha, power=settings.power, ratio=ratio))
        effect = (target - control.mean) / math.sqrt(control.var)
        return float(TTestIndPower().solve_power(effect, alpha=alpha, power=settings.power, ratio=ratio))


# Why a decision was taken, in words a marketer reads in the report.
REASON_SRM = "the split of users between variants is off: the assignment is broken, fix it and restart"
REASON_FEW_USERS = "too few users yet"
REASON_NO_RESULT = "no result yet (no conversions or no spread)"
REASON_WIN, REASON_LOSS = "significantly better than control", "significantly worse than control"
REASON_POWERED = "no significant difference although large enough to see the minimum lift worth having"
REASON_BELOW_MINIMUM = "the lift is smaller than the minimum worth having"
REASON_RUNNING = "no significant difference yet"


def decide(
    srm: bool,
    control: Arm,
    variant: Arm,
    comparison: Comparison,
    p_adjusted: float | None,
    needed: float | None,
    settings: ExperimentConfig,
    sequential: SequentialComparison | None = None,
    sequential_p_adjusted: float | None = None,
) -> tuple[str, str]:
    """(decision, reason) by settings.test, never mixing the two tests. invalid: SRM when the split is off;
    keep running below min_users in either arm or without a p-value; ship / do not ship when significant
    (adjusted p below alpha) upwards / downwards. Not significant: do not ship when the fixed test was
    powered for min_detectable_lift (`needed` control users reached), or when the sequential interval of
    the relative lift lies below min_detectable_lift; else keep running."""
    if srm:
        return INVALID_SRM, REASON_SRM
    if min(control.n, variant.n) < settings.min_users:
        return KEEP_RUNNING, REASON_FEW_USERS
    use_sequential = settings.test == "sequential"
    p_value = sequential_p_adjusted if use_sequential else p_adjusted
    if p_value is None:
        return KEEP_RUNNING, REASON_NO_RESULT
    if p_value < settings.alpha:
        assert comparison.lift is not None  # compare_proportions and compare_means always set it
        return (SHIP, REASON_WIN) if comparison.lift > 0 else (DO_NOT_SHIP, REASON_LOSS)
    if use_sequential:
        upper = sequential.rel_ci_high if sequential else None
        if upper is not None and upper < settings.min_detectable_lift:
            return DO_NOT_SHIP, REASON_BELOW_MINIMUM
    elif needed is not None and control.n >= needed:
        return DO_NOT_SHIP, REASON_POWERED
    return KEEP_RUNNING, REASON_RUNNING


@dataclass(frozen=True)
class Plan:
    control: str
    split: dict[str, float] | None  # None: equal over the variants seen


def plan_for(experiment_id: str, settings: ExperimentConfig, control: str | None = None) -> Plan:
    """The experiment's control (the given one, its plan's, else experiment.control) and planned split."""
    plan = settings.experiments.get(experiment_id)
    chosen = control or (plan.control if plan and plan.control else None) or settings.control
    return Plan(chosen, dict(plan.split) if plan and plan.split else None)


def _arm(variant: str, row: dict[str, float], metric: str) -> Arm:
    var = row[f"{metric}_var"]
    return Arm(
        variant, int(row["n"]), float(row[f"{metric}_sum"]), float(row[f"{metric}_mean"]), float(var or 0.0)
    )


def _sequential_columns(sequential: SequentialComparison, p_adjusted: float | None) -> dict[str, Any]:
    return {
        "sequential_p_value": sequential.p_value,
        "sequential_p_value_adjusted": p_adjusted,
        "sequential_ci_low": sequential.ci_low,
        "sequential_ci_high": sequential.ci_high,
        "sequential_rel_ci_low": sequential.rel_ci_low,
        "sequential_rel_ci_high": sequential.rel_ci_high,
    }


def experiment_rows(
    experiment_id: str,
    source: str,
    arms: dict[str, dict[str, float]],
    pooled: dict[str, float],
    plan: Plan,
    settings: ExperimentConfig,
    caps: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Result rows (RESULT_COLUMNS but as_of_date) for one experiment from its moments per variant
    (`arms`, keyed by variant) and over all its users (`pooled`); and notes on what could not be computed.
    `caps`, per metric: the value_cap applied to it and capped_users per variant (none: not capped)."""
    caps = caps or {}
    notes: list[str] = []
    users = {variant: int(row["n"]) for variant, row in arms.items()}
    planned = plan.split or {variant: 1 / len(users) for variant in users}
    if set(users) - set(planned):
        notes.append(
            f"{experiment_id}: variants {', '.join(sorted(set(users) - set(planned)))} are not in the planned split"
        )
    srm_p = srm_p_value(users, planned)
    srm = srm_p < settings.srm_threshold
    if plan.control not in arms:
        notes.append(
            f"{experiment_id}: no users in the control variant {plan.control!r} (variants: {', '.join(sorted(arms))}); not analysed"
        )
        return [], notes
    others = sorted(v for v in arms if v != plan.control)
    rows = []
    metrics = [CONVERSION, REVENUE] if settings.value_metric else [CONVERSION]
    for cuped in [False, True] if settings.cuped else [False]:
        for metric in metrics:
            if cuped:
                theta = cuped_theta(pooled, metric)
                if theta is None:
                    notes.append(
                        f"{experiment_id}: no CUPED rows for {metric} (the pre-period covariate does not vary)"
                    )
                    continue
                metric_arms = cuped_arms(arms, metric, theta, pooled[f"{metric}_x_mean"])
            else:
                metric_arms = {variant: _arm(variant, row, metric) for variant, row in arms.items()}
            control = metric_arms[plan.control]
            proportions = metric == CONVERSION and not cuped
            compare = compare_proportions if proportions else compare_means
            comparisons = [compare(control, metric_arms[v], settings.alpha) for v in others]
            adjusted = adjusted_p_values([c.p_value for c in comparisons], settings.correction)
            sequentials = [
                compare_sequential(
                    control, metric_arms[v], settings.alpha, settings.sequential_tuning_users, proportions
                )
                for v in others
            ]
            sequential_adjusted = adjusted_p_values([c.p_value for c in sequentials], settings.correction)
            cap = caps.get(metric, {})
            base = {
                "experiment_id": experiment_id,
                "source": source,
                "metric": metric,
                "srm_p_value": srm_p,
                "srm": srm,
                "cuped": cuped,
                "decision_test": settings.test,
                "value_cap": cap.get("value_cap"),
            }
            rows.append(
                {
                    **base,
                    **Comparison().__dict__,
                    **_sequential_columns(SequentialComparison(), None),
                    "variant": plan.control,
                    "is_control": True,
                    "users": control.n,
                    "conversions": control.total,
                    "rate": control.mean,
                    "p_value_adjusted": None,
                    "decision": INVALID_SRM if srm else None,
                    "decision_reason": REASON_SRM if srm else None,
                    "capped_users": cap.get("capped_users", {}).get(plan.control),
                }
            )
            for variant, comparison, p_adjusted, sequential, sequential_p in zip(
                others, comparisons, adjusted, sequentials, sequential_adjusted, strict=True
            ):
                arm = metric_arms[variant]
                # The power solve feeds only the fixed test's futility step.
                fixed = settings.test == "fixed"
                needed = users_needed(control, arm, settings, len(others), proportions) if fixed else None
                decision, reason = decide(
                    srm, control, arm, comparison, p_adjusted, needed, settings, sequential, sequential_p
                )
                rows.append(
                    {
                        **base,
                        **comparison.__dict__,
                        **_sequential_columns(sequential, sequential_p),
                        "variant": variant,
                        "is_control": False,
                        "users": arm.n,
                        "conversions": arm.total,
                        "rate": arm.mean,
                        "p_value_adjusted": p_adjusted,
                        "decision": decision,
                        "decision_reason": reason,
                        "capped_users": cap.get("capped_users", {}).get(variant),
                    }
                )
    return rows, notes

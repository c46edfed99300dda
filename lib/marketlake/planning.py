"""How long must an experiment run? Users per variant and days for the experiment job's two tests.

- Fixed horizon (read once, at the planned end): statsmodels' power of the job's tests: NormalIndPower on
  Cohen's h (proportion_effectsize) for a conversion rate, TTestIndPower on Cohen's d (the baseline's
  standard deviation) for revenue per user; two-sided, at alpha / (variants - 1). The job corrects with
  Holm (experiment.correction); Bonferroni is Holm's strictest step, so the plan is conservative.
- Sequential (look every day): the job's always-valid test (experiment.compare_sequential). Its p-value
  falls below a level a exactly when the z statistic of the difference, |lift| / its standard error,
  passes the boundary b(n) = sqrt(2 (n rho^2 + 1) / (n rho^2) * log(sqrt(n rho^2 + 1) / a)), n the users
  of control and variant together, rho from sequential_tuning_users (sequential_rho). The plan is the
  smallest number of users at which the expected z statistic passes b with the requested power:
  P(Z > b(n)) for Z ~ N(lift / se, 1). That is the power of stopping at the last look; looking every day
  can only stop earlier, so it is a lower bound on the power of the daily decision.

With more than two variants and an unequal split every comparison with control has to reach the power:
the total is the largest any comparison needs, shared out by the split. No arm gets fewer than the job's
min_users (below them it keeps running whatever the figures). Days: the total divided by the users a day.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from scipy import optimize, stats
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import proportion_effectsize

from marketlake.config import ExperimentConfig
from marketlake.errors import UsageError
from marketlake.experiment import (
    CONVERSION,
    REVENUE,
    capped,
    moment_sums,
    moments,
    outcomes,
    sequential_rho,
    value_caps,
)

FIXED, SEQUENTIAL = "fixed", "sequential"
CONTROL = "control"
BASELINE = "baseline"  # the experiment id of the baseline's per-user frame (one group: everyone)


@dataclass(frozen=True)
class Question:
    """What to plan for. mean: the baseline conversion rate or revenue per user; sd: its per-user standard
    deviation (a rate's is sqrt(p (1 - p))); mde: the relative lift to detect; split: the shares of the
    variants, control first."""

    metric: str
    mean: float
    sd: float
    mde: float
    alpha: float
    power: float
    split: tuple[float, ...]
    daily_users: float
    min_users: int
    tuning_users: float | None = None  # the configured sequential_tuning_users; None: the planned total

    @property
    def variants(self) -> list[str]:
        return [CONTROL, *(f"variant {i}" for i in range(1, len(self.split)))]

    @property
    def comparisons(self) -> int:
        return len(self.split) - 1

    @property
    def target(self) -> float:
        """The variant's mean the plan must detect."""
        return self.mean * (1 + self.mde)


@dataclass(frozen=True)
class TestPlan:
    test: str
    exact_users: tuple[float, ...]  # per variant, control first: what the power calculation asks for
    users: tuple[int, ...]  # per variant: exact_users rounded up, at least min_users
    days: int
    tuning_users: int | None = None  # sequential: experiment.sequential_tuning_users the plan assumes

    @property
    def total_users(self) -> int:
        return sum(self.users)


def check_question(question: Question) -> None:
    """A UsageError naming what cannot be planned."""
    if not question.mde > 0:
        raise UsageError(f"--mde must be above 0 (a relative lift, e.g. 0.1 for +10%), not {question.mde}")
    if len(question.split) < 2:
        raise UsageError("an experiment needs two or more variants (control included)")
    if any(not share > 0 for share in question.split) or not math.isclose(
        sum(question.split), 1, abs_tol=1e-9
    ):
        raise UsageError(f"--split: shares above 0 that sum to 1, not {','.join(map(str, question.split))}")
    if not 0 < question.alpha < 1 or not 0 < question.power < 1:
        raise UsageError(
            f"alpha and power must lie between 0 and 1, not {question.alpha} and {question.power}"
        )
    if not question.daily_users > 0:
        raise UsageError(f"users a day must be above 0, not {question.daily_users}")
    if question.metric == CONVERSION:
        if not 0 < question.mean < 1:
            raise UsageError(f"the baseline conversion rate must lie between 0 and 1, not {question.mean}")
        if question.target >= 1:
            raise UsageError(
                f"a lift of {question.mde:+.0%} on a conversion rate of {question.mean:.1%} is a rate of 100% or more"
            )
    elif not question.mean > 0 or not question.sd > 0:
        raise UsageError(
            f"the baseline revenue per user and its standard deviation must be above 0, not {question.mean} and {question.sd}"
        )


def _round_up(value: float) -> int:
    return math.ceil(value - 1e-9)  # 1200.0000000002 is 1200 users, not 1201


def _allot(test: str, total: float, question: Question, tuning_users: int | None = None) -> TestPlan:
    """A total (continuous) shared out by the split, at least min_users an arm, and the days it takes."""
    total = max(total, question.min_users / min(question.split))
    exact = tuple(total * share for share in question.split)
    users = tuple(max(question.min_users, _round_up(n)) for n in exact)
    return TestPlan(test, exact, users, _round_up(sum(users) / question.daily_users), tuning_users)


def fixed_horizon_control_users(question: Question) -> list[float]:
    """Per comparison with control: the control users statsmodels' solve_power asks for at the ratio of the
    variant's share to the control's, at alpha / comparisons (two-sided)."""
    alpha = question.alpha / question.comparisons
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for share in question.split[1:]:
            ratio = share / question.split[0]
            if question.metric == CONVERSION:
                effect = abs(proportion_effectsize(question.target, question.mean))
                power = NormalIndPower()
            else:
                effect = (question.target - question.mean) / question.sd
                power = TTestIndPower()
            found.append(float(power.solve_power(effect, alpha=alpha, power=question.power, ratio=ratio)))
    return found


def fixed_horizon_plan(question: Question) -> TestPlan:
    control_users = max(fixed_horizon_control_users(question))
    return _allot(FIXED, control_users / question.split[0], question)


def sequential_boundary(n: float, level: float, rho: float) -> float:
    """The |z| above which the job's always-valid p-value (experiment._always_valid) is below `level`, after
    n users (control and variant together)."""
    n_rho2 = n * rho**2
    return math.sqrt(2 * (n_rho2 + 1) / n_rho2 * math.log(math.sqrt(n_rho2 + 1) / level))


def _variances(question: Question) -> tuple[float, float]:
    """Per-user variances of control and variant as the job estimates them: p (1 - p) of each arm's rate;
    for revenue the baseline's, the same in both arms."""
    if question.metric == CONVERSION:
        control, variant = question.mean, question.target
        return control * (1 - control), variant * (1 - variant)
    return question.sd**2, question.sd**2


def sequential_powers(total: float, question: Question, tuning_users: float | None = None) -> list[float]:
    """Per comparison with control: the probability that the job's sequential test declares the variant
    better at the last look, with `total` users over all variants (tuning_users: the configured
    sequential_tuning_users, default the total), at alpha / comparisons."""
    rho = sequential_rho(question.alpha, total if tuning_users is None else tuning_users)
    level = question.alpha / question.comparisons
    var_c, var_t = _variances(question)
    control = total * question.split[0]
    found = []
    for share in question.split[1:]:
        variant = total * share
        mean_z, sd_z = _z_statistic(question, control, variant)
        boundary = sequential_boundary(control + variant, level, rho)
        found.append(float(stats.norm.cdf((mean_z - boundary) / sd_z)))
    return found


def _z_statistic(question: Question, control: float, variant: float) -> tuple[float, float]:
    """Mean and standard deviation, by the delta method, of compare_sequential's z statistic (m_t - m_c) over
    its estimated standard error, where the means m_c, m_t vary around the baseline and the target and the
    variances are estimated from them as the job does (p (1 - p) of each rate; for revenue the
    baseline's, fixed). For rates the statistic's spread is not exactly 1: its standard error moves with
    the rates."""
    base, target = question.mean, question.target
    proportions = question.metric == CONVERSION

    def z(m_c: float, m_t: float) -> float:
        v_c, v_t = (m_c * (1 - m_c), m_t * (1 - m_t)) if proportions else (question.sd**2, question.sd**2)
        return (m_t - m_c) / math.sqrt(v_c / control + v_t / variant)

    var_c, var_t = _variances(question)
    step_c, step_t = 1e-6 * base, 1e-6 * target
    dz_c = (z(base + step_c, target) - z(base - step_c, target)) / (2 * step_c)
    dz_t = (z(base, target + step_t) - z(base, target - step_t)) / (2 * step_t)
    return z(base, target), math.sqrt(dz_c**2 * var_c / control + dz_t**2 * var_t / variant)


def sequential_plan(question: Question) -> TestPlan:
    """The smallest total at which every comparison reaches the power (the sequential test's power grows
    with the users; a root of the weakest comparison's power minus the target)."""

    def shortfall(total: float) -> float:
        return min(sequential_powers(total, question, question.tuning_users)) - question.power

    low = 2 / min(question.split)
    high = low
    while shortfall(high) < 0:
        low, high = high, high * 2
        if high > 1e13:
            raise UsageError("the lift is too small to detect with any number of users")
    total = high if low == high else float(optimize.brentq(shortfall, low, high, xtol=1e-6, rtol=1e-12))
    planned = _allot(SEQUENTIAL, total, question)
    tuning = _round_up(question.tuning_users) if question.tuning_users is not None else planned.total_users
    return TestPlan(planned.test, planned.exact_users, planned.users, planned.days, tuning)


# ---------------------------------------------------------------------------------------------------------
# Spark: the baseline from silver.events


@dataclass(frozen=True)
class Measured:
    """A baseline measured over a window of silver.events: the users active in it, the conversion rate and
    revenue per user (mean, standard deviation) of the experiment job's definitions, the users a day."""

    users: int
    conversion_rate: float
    revenue_mean: float
    revenue_sd: float
    daily_users: float
    value_cap: float | None  # the revenue cap applied (experiment.value_cap), None: not capped


def in_window(run_date: dt.date, window_days: int) -> Column:
    """The events of the window_days ending with the run date."""
    start = run_date - dt.timedelta(days=window_days - 1)
    end = dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time())
    return (
        (F.col("event_date") >= F.lit(start))
        & (F.col("event_date") <= F.lit(run_date))
        & (F.col("event_ts") < F.lit(end))
    )


def first_visits(window_events: DataFrame) -> DataFrame:
    """The window's events -> each user active in it as if exposed there: the experiment job's assigned
    frame (experiment_id, user_id, variant, exposed_at, exposure_session) with the user's first event in
    the window (earliest event_ts, then event_id) as the exposure."""
    first = F.min(F.struct("event_ts", "event_id", "session_id"))
    return (
        window_events.groupBy("user_id")
        .agg(first.alias("first"))
        .select(
            F.lit(BASELINE).alias("experiment_id"),
            "user_id",
            F.lit(CONTROL).alias("variant"),
            F.col("first.event_ts").alias("exposed_at"),
            F.col("first.session_id").alias("exposure_session"),
        )
    )


def measure(events: DataFrame, run_date: dt.date, window_days: int, settings: ExperimentConfig) -> Measured:
    """The baseline over the window_days to the run date: per user active in it, what the experiment job
    would record had they been exposed at their first event of the window (converted, revenue; capped by
    experiment.value_cap), their mean and spread; and the mean distinct active users a day. A UsageError
    when nobody was active."""
    no_cuped = settings.model_copy(update={"cuped": False})
    # Read three times (first events, purchases after them, active days): the window's events once. A
    # purchase that counts follows a first event in the window, so it is in the window too.
    columns = ["event_id", "user_id", "event_type", "event_ts", "event_date", "session_id", "revenue"]
    window_events = events.filter(in_window(run_date, window_days)).select(*columns).persist()
    try:
        users = first_visits(window_events).transform(outcomes(window_events, run_date, no_cuped))
        cap = None
        if settings.value_cap.method != "none":
            caps = users.transform(value_caps(settings.value_cap)).collect()  # one row
            cap = caps[0].value_cap if caps and caps[0].value_cap is not None else None
            cap_frame = events.sparkSession.createDataFrame(
                [(BASELINE, cap, None)], "experiment_id string, value_cap double, pre_value_cap double"
            )
            users = users.transform(capped(cap_frame))
        rows = moment_sums(users, ["experiment_id"]).collect()  # one row
        if not rows or not rows[0]["n"]:
            raise UsageError(
                f"no events in silver.events in the {window_days} days to {run_date}: give the baseline "
                "(--baseline-rate, or --baseline-mean and --baseline-sd) and --daily-users, or another --run-date"
            )
        user_days = window_events.agg(F.count_distinct("user_id", "event_date").alias("days")).first()
        assert user_days is not None  # an aggregate without groups has one row
    finally:
        window_events.unpersist()
    found = moments(rows[0].asDict())
    return Measured(
        users=int(found["n"]),
        conversion_rate=float(found[f"{CONVERSION}_mean"]),
        revenue_mean=float(found[f"{REVENUE}_mean"]),
        revenue_sd=math.sqrt(found[f"{REVENUE}_var"] or 0.0),
        daily_users=int(user_days.days) / window_days,
        value_cap=None if cap is None else float(cap),
    )

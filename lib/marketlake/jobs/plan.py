"""plan: how long must an experiment run? Users per variant, total users and days for the experiment job's
sequential test (safe to look at every day) and its fixed-horizon test (read once, at the end), to detect
a relative lift of --mde in a conversion rate or in revenue per user with the configured alpha and power.
The baseline is given (--baseline-rate, or --baseline-mean and --baseline-sd) or measured in silver.events
over the --window-days to the run date: per user active there, converted = a conversion_event in the
session of their first event (as the experiment job counts a conversion after an exposure), revenue per
user likewise; users a day = the mean distinct active users a day (or --daily-users). Prints a table (or
--json) and the sequential_tuning_users to configure; writes no table (the run is in ops.job_runs)."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from typing import Any

from marketlake import catalog
from marketlake.config import Config, ExperimentConfig
from marketlake.errors import UsageError
from marketlake.experiment import CONVERSION, REVENUE
from marketlake.planning import (
    FIXED,
    SEQUENTIAL,
    Measured,
    Question,
    TestPlan,
    check_question,
    fixed_horizon_plan,
    measure,
    sequential_plan,
)
from marketlake.runner import Job, JobContext

DEFAULT_WINDOW_DAYS = 28


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metric", choices=[CONVERSION, REVENUE], default=CONVERSION)
    parser.add_argument(
        "--baseline-rate", type=float, help="conversion: the control's expected rate, e.g. 0.05"
    )
    parser.add_argument("--baseline-mean", type=float, help="revenue_per_user: the expected revenue per user")
    parser.add_argument(
        "--baseline-sd", type=float, help="revenue_per_user: its standard deviation over users"
    )
    parser.add_argument(
        "--window-days",
        type=int,
        default=DEFAULT_WINDOW_DAYS,
        help="days of silver.events to the run date the baseline and the users a day are measured over",
    )
    parser.add_argument(
        "--daily-users", type=float, help="users entering the experiment a day (default: measured)"
    )
    parser.add_argument(
        "--mde",
        type=float,
        help="the smallest relative lift worth detecting (default experiment.min_detectable_lift)",
    )
    parser.add_argument("--alpha", type=float, help="significance level (default experiment.alpha)")
    parser.add_argument(
        "--power", type=float, help="chance to detect the lift when it is there (default experiment.power)"
    )
    parser.add_argument(
        "--variants", type=int, help="variants including control (default 2, or as many as --split)"
    )
    parser.add_argument(
        "--split", help="shares of the variants, control first, e.g. 0.5,0.25,0.25 (default: equal)"
    )
    parser.add_argument(
        "--tuning-users",
        type=int,
        help="plan with this experiment.sequential_tuning_users (default: the planned total, which is what to set)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def parse_split(args: argparse.Namespace) -> tuple[float, ...]:
    if args.split is None:
        variants = 2 if args.variants is None else args.variants
        if variants < 2:
            raise UsageError(
                f"--variants: an experiment needs two or more (control included), not {variants}"
            )
        return tuple(1 / variants for _ in range(variants))
    try:
        split = tuple(float(share) for share in args.split.split(","))
    except ValueError:
        raise UsageError(f"--split: comma-separated shares, e.g. 0.5,0.5, not {args.split!r}") from None
    if args.variants is not None and args.variants != len(split):
        raise UsageError(f"--split has {len(split)} shares but --variants is {args.variants}")
    return split


def validate(args: argparse.Namespace, config: Config) -> None:
    """Everything that can be checked before Spark starts; with the baseline and the users a day given, the
    whole question."""
    if args.metric == CONVERSION and (args.baseline_mean is not None or args.baseline_sd is not None):
        raise UsageError("--baseline-mean and --baseline-sd go with --metric revenue_per_user")
    if args.metric == REVENUE and args.baseline_rate is not None:
        raise UsageError("--baseline-rate goes with --metric conversion")
    if (args.baseline_mean is None) != (args.baseline_sd is None):
        raise UsageError("give both --baseline-mean and --baseline-sd, or neither (then both are measured)")
    if args.window_days < 1:
        raise UsageError(f"--window-days must be 1 or more, not {args.window_days}")
    if args.tuning_users is not None and args.tuning_users < 1:
        raise UsageError(f"--tuning-users must be 1 or more, not {args.tuning_users}")
    if args.baseline_rate is not None and not 0 < args.baseline_rate < 1:
        raise UsageError(f"--baseline-rate must lie between 0 and 1, not {args.baseline_rate}")
    if args.daily_users is not None and not args.daily_users > 0:
        raise UsageError(f"--daily-users must be above 0, not {args.daily_users}")
    # The rest of the question, with any baseline still to be measured standing in by a valid one.
    stand_in = Measured(
        users=0, conversion_rate=1e-9, revenue_mean=1.0, revenue_sd=1.0, daily_users=1.0, value_cap=None
    )
    check_question(question(args, config.experiment, stand_in))


def needs_measuring(args: argparse.Namespace) -> bool:
    given = args.baseline_rate is not None if args.metric == CONVERSION else args.baseline_mean is not None
    return not given or args.daily_users is None


def question(args: argparse.Namespace, settings: ExperimentConfig, measured: Measured | None) -> Question:
    """The question from the arguments, the config's defaults and, for what was not given, the measurement."""

    def pick(given: float | None, found: float | None) -> float:
        value = given if given is not None else found
        assert value is not None  # measured whenever something was not given
        return value

    m = measured
    if args.metric == CONVERSION:
        mean = pick(args.baseline_rate, m.conversion_rate if m else None)
        sd = math.sqrt(mean * (1 - mean)) if 0 < mean < 1 else 0.0
    else:
        mean = pick(args.baseline_mean, m.revenue_mean if m else None)
        sd = pick(args.baseline_sd, m.revenue_sd if m else None)
    return Question(
        metric=args.metric,
        mean=mean,
        sd=sd,
        mde=settings.min_detectable_lift if args.mde is None else args.mde,
        alpha=settings.alpha if args.alpha is None else args.alpha,
        power=settings.power if args.power is None else args.power,
        split=parse_split(args),
        daily_users=pick(args.daily_users, m.daily_users if m else None),
        min_users=settings.min_users,
        tuning_users=args.tuning_users,
    )


@dataclass(frozen=True)
class Answer:
    question: Question
    plans: dict[str, TestPlan]
    configured_test: str
    baseline_source: str
    measured: Measured | None
    window_days: int


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    settings = ctx.config.experiment
    measured = None
    source = "given"
    if needs_measuring(args):
        ctx.lake.require(catalog.SILVER_EVENTS)
        with ctx.step(f"baseline over the {args.window_days} days to {ctx.run_date}") as step:
            measured = measure(ctx.lake.read(catalog.SILVER_EVENTS), ctx.run_date, args.window_days, settings)
            step.rows = measured.users
            step.detail = (
                f"conversion rate {measured.conversion_rate:.4f}, revenue per user {measured.revenue_mean:.2f} "
                f"(sd {measured.revenue_sd:.2f}), {measured.daily_users:.1f} active users a day"
            )
        source = f"measured on the {measured.users:,} users active in the {args.window_days} days to {ctx.run_date}"
    asked = question(args, settings, measured)
    check_question(asked)
    with ctx.step("plan") as step:
        plans = {SEQUENTIAL: sequential_plan(asked), FIXED: fixed_horizon_plan(asked)}
        step.detail = "; ".join(f"{p.test}: {p.total_users:,} users, {p.days} days" for p in plans.values())
    ctx.counts.update(
        {f"{p.test}_total_users": p.total_users for p in plans.values()}
        | {f"{p.test}_days": p.days for p in plans.values()}
    )
    answer = Answer(asked, plans, settings.test, source, measured, args.window_days)
    print(json.dumps(as_json(answer)) if args.json else as_text(answer), flush=True)


def _money(value: float) -> str:
    return f"{value:,.2f}"


def as_text(answer: Answer) -> str:
    q, m = answer.question, answer.measured
    if q.metric == CONVERSION:
        baseline = f"conversion rate {q.mean:.2%}; to detect a lift of {q.mde:+.1%} (to {q.target:.2%})"
    else:
        baseline = (
            f"revenue per user {_money(q.mean)} (standard deviation {_money(q.sd)}); to detect a lift of "
            f"{q.mde:+.1%} (to {_money(q.target)})"
        )
    split = "equal split" if len(set(q.split)) == 1 else "split " + " / ".join(f"{s:g}" for s in q.split)
    lines = [
        f"How long must the experiment run? {q.metric}, baseline {baseline}",
        f"  baseline: {answer.baseline_source}; {q.daily_users:,.1f} users a day"
        + (" (given)" if m is None or m.daily_users != q.daily_users else " (measured)"),
        f"  {len(q.split)} variants ({split}), alpha {q.alpha:g}"
        + (f" / {q.comparisons} comparisons" if q.comparisons > 1 else "")
        + f", power {q.power:g}",
        "",
        f"{'test':<28}{'users per variant':>22}{'total users':>14}{'days':>7}",
    ]
    for name, plan in answer.plans.items():
        label = "sequential (look every day)" if name == SEQUENTIAL else "fixed horizon (read once)"
        label += " *" if name == answer.configured_test else ""
        per_variant = " / ".join(f"{n:,}" for n in plan.users)
        lines.append(f"{label:<28}{per_variant:>22}{plan.total_users:>14,}{plan.days:>7}")
    sequential = answer.plans[SEQUENTIAL]
    lines += [
        "",
        f"* the configured test (experiment.test: {answer.configured_test}).",
        f"Users per variant: {', '.join(q.variants)}. Every arm gets at least experiment.min_users ({q.min_users}).",
        f"Set experiment.sequential_tuning_users: {sequential.tuning_users} (the sequential plan's total users).",
        "Sequential: look every day; stop when the decision is ship or do not ship, at the latest on the last day.",
        "Fixed horizon: read the decision once, on the last day; looking earlier multiplies false winners.",
    ]
    if m is not None and m.value_cap is not None and q.metric == REVENUE:
        lines.append(
            f"Revenue per user capped at {_money(m.value_cap)} (experiment.value_cap), as the job will."
        )
    if m is not None and q.metric == REVENUE and q.sd > 3 * q.mean:
        lines.append(
            "Revenue varies a lot between users: a cap (experiment.value_cap) shortens the experiment."
        )
    if m is not None and max(p.total_users for p in answer.plans.values()) > m.users:
        lines.append(
            f"Note: only {m.users:,} different users were active in the {answer.window_days} days measured; a user "
            "counts once in an experiment however often they come back, so it may take longer than the days say."
        )
    return "\n".join(lines)


def as_json(answer: Answer) -> dict[str, Any]:
    q, m = answer.question, answer.measured
    return {
        "metric": q.metric,
        "baseline": q.mean,
        "baseline_sd": q.sd,
        "baseline_source": answer.baseline_source,
        "mde": q.mde,
        "target": q.target,
        "alpha": q.alpha,
        "power": q.power,
        "variants": q.variants,
        "split": list(q.split),
        "daily_users": q.daily_users,
        "window_users": m.users if m else None,
        "value_cap": m.value_cap if m else None,
        "configured_test": answer.configured_test,
        **{
            name: {
                "users_per_variant": dict(zip(q.variants, plan.users, strict=True)),
                "exact_users_per_variant": dict(zip(q.variants, plan.exact_users, strict=True)),
                "total_users": plan.total_users,
                "days": plan.days,
                **({"sequential_tuning_users": plan.tuning_users} if name == SEQUENTIAL else {}),
            }
            for name, plan in answer.plans.items()
        },
    }


JOB = Job(name="plan", help=__doc__.strip(), run=run, add_arguments=add_arguments, validate=validate)

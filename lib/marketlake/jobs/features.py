"""features: gold.user_features, one row per user as of the run date, from silver.events (and silver.users,
silver.items): recency, frequency, monetary, behaviour counts and rates, tenure, favourite category, RFM
scores and label. Overwrites only the run date's partition."""

from __future__ import annotations

import argparse

from marketlake import catalog
from marketlake.errors import UsageError
from marketlake.features import user_features
from marketlake.runner import Job, JobContext

TABLE = catalog.USER_FEATURES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lookback-days", type=int, help="days of events up to the run date (default: config features.lookback_days)")


def validate(args: argparse.Namespace, config) -> None:
    if args.lookback_days is not None and args.lookback_days < 1:
        raise UsageError(f"--lookback-days must be at least 1, not {args.lookback_days}")


def run(ctx: JobContext, args: argparse.Namespace) -> dict[str, int]:
    lake = ctx.lake
    lookback = args.lookback_days or ctx.config.features.lookback_days
    lake.require(catalog.SILVER_EVENTS)
    users, items = lake.read_if_exists(catalog.SILVER_USERS), lake.read_if_exists(catalog.SILVER_ITEMS)
    with ctx.step(f"{TABLE.name} as of {ctx.run_date} ({lookback} days of events)") as step:
        features = user_features(lake.read(catalog.SILVER_EVENTS), users, items, ctx.run_date, lookback)
        step.rows = lake.overwrite_as_of(TABLE, features, ctx.run_date).rows
    with ctx.step("RFM labels") as step:
        written = lake.read_as_of(TABLE, ctx.run_date)
        labels = {row["rfm_label"]: row["count"] for row in written.groupBy("rfm_label").count().collect()}  # <= 12 rows
        step.detail = ", ".join(f"{label}={n}" for label, n in sorted(labels.items(), key=lambda kv: -kv[1]))
    return {"users": sum(labels.values()), **{f"label.{label}": n for label, n in labels.items()}}


JOB = Job(name="features", help=__doc__.strip(), run=run, add_arguments=add_arguments, validate=validate)

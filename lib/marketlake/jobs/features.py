"""features: gold.user_features, one row per user as of the run date, from silver.events (and silver.users,
silver.items): recency, frequency, monetary, behaviour counts and rates, tenure, favourite category, RFM
scores and label. Overwrites only the run date's partition."""

from __future__ import annotations

import argparse

from marketlake import catalog
from marketlake.config import Config, FeaturesConfig, with_overrides
from marketlake.features import user_features
from marketlake.runner import Job, JobContext

TABLE = catalog.USER_FEATURES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lookback-days",
        type=int,
        help="days of events up to the run date (default: config features.lookback_days)",
    )


def settings_for(args: argparse.Namespace, config: Config) -> FeaturesConfig:
    return with_overrides(config.features, {"lookback_days": args.lookback_days})


def validate(args: argparse.Namespace, config: Config) -> None:
    settings_for(args, config)


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    lake = ctx.lake
    lookback = settings_for(args, ctx.config).lookback_days
    lake.require(catalog.SILVER_EVENTS)
    users, items = lake.read_if_exists(catalog.SILVER_USERS), lake.read_if_exists(catalog.SILVER_ITEMS)
    with ctx.step(f"{TABLE.name} as of {ctx.run_date} ({lookback} days of events)") as step:
        features = user_features(lake.read(catalog.SILVER_EVENTS), users, items, ctx.run_date, lookback)
        step.rows = lake.overwrite_as_of(TABLE, features, ctx.run_date).rows
    with ctx.step("RFM labels") as step:
        written = lake.read_as_of(TABLE, ctx.run_date)
        labels = {
            row["rfm_label"]: row["count"] for row in written.groupBy("rfm_label").count().collect()
        }  # <= 12 rows
        step.detail = ", ".join(f"{label}={n}" for label, n in sorted(labels.items(), key=lambda kv: -kv[1]))
    ctx.counts.update({"users": sum(labels.values()), **{f"label.{label}": n for label, n in labels.items()}})


JOB = Job(name="features", help=__doc__.strip(), run=run, add_arguments=add_arguments, validate=validate)

"""features: gold.user_features, one row per user as of the run date, from silver.events (and silver.users,
silver.items): recency, frequency, monetary, behaviour counts and rates, tenure, favourite category, RFM
scores and label. Overwrites only the run date's partition."""

from __future__ import annotations

import argparse

from pyspark.sql import functions as F

from marketlake.errors import UsageError
from marketlake.features import user_features
from marketlake.runner import Job, JobContext

TABLE = "gold.user_features"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lookback-days", type=int, help="days of events up to the run date (default: config features.lookback_days)")


def validate(args: argparse.Namespace, config) -> None:
    if args.lookback_days is not None and args.lookback_days < 1:
        raise UsageError(f"--lookback-days must be at least 1, not {args.lookback_days}")


def run(ctx: JobContext, args: argparse.Namespace) -> dict[str, int]:
    lake = ctx.lake
    lookback = args.lookback_days or ctx.config.features.lookback_days
    if not lake.exists("silver.events"):
        raise UsageError("silver.events does not exist in this lake; run ingest first")
    optional = {table: lake.read(table) if lake.exists(table) else None for table in ("silver.users", "silver.items")}
    with ctx.step(f"{TABLE} as of {ctx.run_date} ({lookback} days of events)") as step:
        features = user_features(lake.read("silver.events"), optional["silver.users"], optional["silver.items"], ctx.run_date, lookback)
        step.rows = lake.write(
            TABLE, features, mode="overwrite", partition_by=["as_of_date"], partitions={"as_of_date": [ctx.run_date]}
        ).rows
    with ctx.step("RFM labels") as step:
        written = lake.read(TABLE).filter(F.col("as_of_date") == F.lit(ctx.run_date))
        labels = {row["rfm_label"]: row["count"] for row in written.groupBy("rfm_label").count().collect()}  # <= 12 rows
        step.detail = ", ".join(f"{label}={n}" for label, n in sorted(labels.items(), key=lambda kv: -kv[1]))
    return {"users": sum(labels.values()), **{f"label.{label}": n for label, n in labels.items()}}


JOB = Job(name="features", help=__doc__.strip(), run=run, add_arguments=add_arguments, validate=validate)

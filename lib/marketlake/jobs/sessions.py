"""sessions: the daily next-item model. Sequential rules over the sessions of silver.events up to the run
date (pairs of items at most `steps` steps apart, each weighing 1 / distance, normalised per item) into
gold.next_items: per item, its top next items. The real-time list (`marketlake.sessions.
realtime_recommendations`) blends a live session's candidates from this table with the daily list.
Overwrites only the run date's partition."""

from __future__ import annotations

import argparse

from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.config import Config, SessionsConfig, with_overrides
from marketlake.models import model_version
from marketlake.runner import Job, JobContext
from marketlake.sessions import SESSION, next_items, sequential_rules, session_steps

NEXT_ITEMS = catalog.NEXT_ITEMS.name
# Command-line options that override the config's sessions section (option dest = config key).
OVERRIDES = ("steps", "top_n", "min_sessions")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps", type=int, help="most steps between the items of a rule (default: config, 10)"
    )
    parser.add_argument("--top-n", type=int, help="next items kept per item (default: config, 50)")
    parser.add_argument(
        "--min-sessions", type=int, help="fewest sessions a pair must be seen in (default: config, 1)"
    )


def settings(args: argparse.Namespace, config: Config) -> SessionsConfig:
    """The config's sessions section with the command line's overrides."""
    return with_overrides(config.sessions, {key: getattr(args, key) for key in OVERRIDES})


def validate(args: argparse.Namespace, config: Config) -> None:
    settings(args, config)


def model_params(chosen: SessionsConfig) -> dict[str, object]:
    return {"method": "sequential_rules_position_decay", **chosen.model_dump()}


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    lake, chosen = ctx.lake, settings(args, ctx.config)
    lake.require(catalog.SILVER_EVENTS)
    version = model_version(ctx.run_date, model_params(chosen))
    with ctx.step(f"sessions up to {ctx.run_date}") as step:
        events = lake.read(catalog.SILVER_EVENTS).filter(F.col("event_date") <= F.lit(ctx.run_date))
        steps = events.transform(session_steps(chosen.event_types, chosen.session_gap_minutes)).persist()
        summary = steps.agg(F.count("*").alias("steps"), F.countDistinct(SESSION).alias("sessions")).first()
        n_steps, n_sessions = (int(summary["steps"]), int(summary["sessions"])) if summary else (0, 0)
        step.rows = n_sessions
        step.detail = f"{n_steps:,} steps"
    try:
        with ctx.step(f"{NEXT_ITEMS}: sequential rules, {chosen.steps} steps, top {chosen.top_n}") as step:
            rules = steps.transform(sequential_rules(chosen.steps)).persist()
            n_rules = rules.count()
            rows = rules.transform(next_items(chosen.top_n, chosen.min_sessions)).select(
                *catalog.NEXT_ITEMS.column_names[:4],
                F.lit(version).alias("model_version"),
                F.lit(ctx.run_date).alias("as_of_date"),
            )
            step.rows = n_rows = lake.overwrite_as_of(NEXT_ITEMS, rows, ctx.run_date).rows
            step.detail = f"from {n_rules:,} rules, model {version}"
            if not n_rows:
                step.detail += ": no pairs in any session, empty partition written"
            rules.unpersist()
    finally:
        steps.unpersist()
    ctx.counts.update(sessions=n_sessions, steps=n_steps, rules=n_rules, next_items=n_rows)


JOB = Job(name="sessions", help=__doc__.strip(), run=run, add_arguments=add_arguments, validate=validate)

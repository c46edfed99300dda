"""experiment: A/B test results per experiment, metric and variant into gold.experiment_results (the run
date's partition). Experiments come from the exposures in silver.events (a user's first exposure gives
their variant; conversion: the configured event in the window after it), or with --input from an
exposure log: a CSV of user_id, variant, converted and optionally value, covariate (for CUPED) and
timestamp. The log is collapsed to one row per user: identical rows count once; a user's rows in their
variant are merged (converted if any row converted, values summed, the covariate of the first exposure:
the earliest timestamp, else the first row in the file); users in several variants are left out. How
many of each is in the log, ops.job_runs and the results table. Against the control: lift
with 95% intervals, p-values (z-test; Welch's t-test for revenue per user), adjusted for several variants,
the probability to beat control (Beta-Binomial), always-valid (sequential) p-values and intervals, a
sample-ratio check and a decision with its reason (by experiment.test: sequential, safe to read every day,
or fixed). Revenue can be capped per user first (experiment.value_cap)."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.config import Config, ExperimentConfig
from marketlake.errors import UsageError
from marketlake.experiment import (
    CONVERSION,
    FROM_CSV,
    FROM_EVENTS,
    RESULT_COLUMNS,
    RESULT_SCHEMA,
    REVENUE,
    USER_COLUMNS,
    Plan,
    capped,
    collapse_exposure_log,
    experiment_rows,
    exposures,
    first_exposures,
    moment_sums,
    moments,
    outcomes,
    plan_for,
    pooled_sums,
    value_caps,
)
from marketlake.ingest.transform import text  # trimmed, the empty string as null
from marketlake.runner import Job, JobContext

RESULTS = catalog.EXPERIMENT_RESULTS.name
EXPERIMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TRUE_WORDS, FALSE_WORDS = ("1", "1.0", "true", "yes"), ("0", "0.0", "false", "no")
# Optional columns of an exposure log: (Spark type, what a cell must be).
OPTIONAL_COLUMNS = {
    "value": ("double", "a number"),
    "covariate": ("double", "a number"),
    "timestamp": ("timestamp", "a timestamp"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        help="an exposure log CSV (header: user_id, variant, converted[, value][, covariate][, timestamp]) "
        "instead of silver.events",
    )
    parser.add_argument(
        "--control",
        help="with --input: the control variant (default: the experiment's plan, else experiment.control)",
    )
    parser.add_argument(
        "--experiment", help="with --input: the experiment id (default: the file name without .csv)"
    )


def csv_experiment_id(args: argparse.Namespace) -> str:
    return args.experiment or Path(args.input.rstrip("/")).name.removesuffix(".csv")


def validate(args: argparse.Namespace, config: Config) -> None:
    if args.input is None:
        if args.control or args.experiment:
            raise UsageError(
                "--control and --experiment go with --input (silver mode takes them from the config)"
            )
        return
    if "://" not in args.input and not os.path.exists(args.input):
        raise UsageError(f"--input: no such file: {args.input}")
    if not EXPERIMENT_ID.match(csv_experiment_id(args)):
        raise UsageError(
            f"--experiment: {csv_experiment_id(args)!r} is not an experiment id (letters, digits, _ . -)"
        )


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    if args.input is not None:
        run_csv(ctx, args)
        return
    lake, run_date, settings = ctx.lake, ctx.run_date, ctx.config.experiment
    lake.require(catalog.SILVER_EVENTS)
    events = lake.read(catalog.SILVER_EVENTS)
    with ctx.step(f"exposures up to {run_date}") as step:
        first = first_exposures(events.transform(exposures(run_date, settings.lookback_days))).persist()
        per_experiment = (
            first.groupBy("experiment_id")
            .agg(F.count("*").alias("users"), F.sum((F.col("variants") > 1).cast("long")).alias("crossed"))
            .collect()
        )  # one row per experiment
        crossed = sum(row.crossed for row in per_experiment)
        step.rows = sum(row.users for row in per_experiment)
        step.detail = (
            f"{len(per_experiment)} experiments with an exposure in the {settings.lookback_days} days to {run_date}; "
            f"{crossed} users exposed to several variants of one experiment (left out)"
        )
    ctx.counts.update(experiments=len(per_experiment), users_in_several_variants=crossed)
    crossed_in = {row.experiment_id: row.crossed for row in per_experiment}
    try:
        if not per_experiment:
            ctx.note(f"no exposures in silver.events for {run_date}: nothing to analyse")
            ctx.counts["result_rows"] = write_results(ctx, [], F.col("source") == FROM_EVENTS)
            return
        users = first.filter(F.col("variants") == 1).transform(outcomes(events, run_date, settings))
        analysed = analyse(ctx, users, FROM_EVENTS, {})
        rows = [{**r, "users_in_several_variants": crossed_in[r["experiment_id"]]} for r in analysed]
    finally:
        first.unpersist()
    ctx.counts["result_rows"] = write_results(ctx, rows, F.col("source") == FROM_EVENTS)
    ctx.counts["srm_flags"] = len({r["experiment_id"] for r in rows if r["srm"]})


def run_csv(ctx: JobContext, args: argparse.Namespace) -> None:
    experiment_id = csv_experiment_id(args)
    settings = ctx.config.experiment
    plan = plan_for(experiment_id, settings, args.control)
    collapsed = None
    try:
        with ctx.step(f"read {args.input}") as step:
            collapsed, log_rows, optional = read_exposure_log(ctx, args.input)
            collapsed = collapsed.persist()  # counted here, analysed below
            groups = (
                collapsed.groupBy("variant", (F.col("variants") > 1).alias("crossed"))
                .agg(
                    F.count("*").alias("users"),
                    F.sum("duplicate_rows").alias("duplicates"),
                    F.sum("repeat_rows").alias("repeats"),
                )
                .collect()
            )  # variants x 2 rows
            variants = {g.variant: g.users for g in groups if not g.crossed}
            folded = {
                "duplicate_rows": sum(g.duplicates for g in groups),
                "repeat_rows_merged": sum(g.repeats for g in groups if not g.crossed),
                "users_in_several_variants": sum(g.users for g in groups if g.crossed),
            }
            step.rows = sum(variants.values())
            per_variant = ", ".join(f"{v} {n:,}" for v, n in sorted(variants.items()))
            step.detail = (
                f"experiment {experiment_id}: {log_rows:,} rows, users {per_variant}; "
                f"{folded['duplicate_rows']:,} duplicate rows dropped, {folded['repeat_rows_merged']:,} repeat rows "
                f"merged into their user's, {folded['users_in_several_variants']:,} users in several variants left "
                f"out; optional columns: {', '.join(optional) or 'none'}"
            )
        if plan.control not in variants:
            raise UsageError(
                f"--input {args.input}: no rows of the control variant {plan.control!r} (variants: {', '.join(sorted(variants))}); give --control"
            )
        if len(variants) < 2:
            raise UsageError(
                f"--input {args.input}: only the variant {plan.control!r}; an experiment needs two or more"
            )
        csv_settings = settings.model_copy(
            update={
                "value_metric": settings.value_metric and "value" in optional,
                "cuped": settings.cuped and "covariate" in optional,
            }
        )
        users = collapsed.filter(F.col("variants") == 1).transform(per_user(experiment_id))
        rows = [{**r, **folded} for r in analyse(ctx, users, FROM_CSV, {experiment_id: plan}, csv_settings)]
    finally:
        if collapsed is not None:
            collapsed.unpersist()
    replaced = (F.col("source") == FROM_CSV) & (F.col("experiment_id") == experiment_id)
    written = write_results(ctx, rows, replaced)
    ctx.counts.update(
        {"experiments": 1, **folded, "result_rows": written, "srm_flags": int(any(r["srm"] for r in rows))}
    )


def read_exposure_log(ctx: JobContext, path: str) -> tuple[DataFrame, int, list[str]]:
    """The CSV collapsed to one row per user (collapse_exposure_log), after checks that each end in one
    UsageError line: the columns, and one value per cell that parses. Returns (collapsed log, rows in the
    file, optional columns present)."""
    where = f"--input {path}"
    try:
        raw = ctx.spark.read.option("header", True).option("mode", "PERMISSIVE").csv(path)
        columns = [c.strip() for c in raw.columns]
    except Exception as exc:  # AnalysisException: not readable, not found
        raise UsageError(f"{where}: cannot read it as CSV: {str(exc).strip().splitlines()[0]}") from None
    raw = raw.toDF(*columns)
    missing = [c for c in ("user_id", "variant", "converted") if c not in columns]
    if missing:
        raise UsageError(
            f"{where}: no column {', '.join(missing)} (header: {', '.join(columns) or 'none'}; needs user_id, variant, converted[, value][, covariate][, timestamp])"
        )
    optional = [c for c in OPTIONAL_COLUMNS if c in columns]
    flag = F.lower(F.trim("converted"))
    # The row's place in the log: a file's lines get increasing ids (its splits are read in order).
    row_order = F.struct(F.col("_metadata.file_path"), F.monotonically_increasing_id())
    parsed = raw.select(
        F.trim("user_id").alias("user_id"),
        F.trim("variant").alias("variant"),
        F.when(flag.isin(*TRUE_WORDS), 1.0).when(flag.isin(*FALSE_WORDS), 0.0).alias("converted"),
        F.col("converted").alias("converted_text"),
        *[text(F.col(c)).try_cast(OPTIONAL_COLUMNS[c][0]).alias(c) for c in optional],
        *[F.col(c).alias(f"{c}_text") for c in optional],
        row_order.alias("row_order"),
    )
    checks = {
        "rows": F.count("*"),
        "no user_id or variant": F.sum(
            (F.coalesce(F.length("user_id"), F.lit(0)) * F.coalesce(F.length("variant"), F.lit(0)) == 0).cast(
                "long"
            )
        ),
        "converted not 0/1/true/false": F.sum(F.col("converted").isNull().cast("long")),
        **{
            f"{c} not {OPTIONAL_COLUMNS[c][1]}": F.sum(
                (F.col(c).isNull() & (F.length(F.trim(f"{c}_text")) > 0)).cast("long")
            )
            for c in optional
        },
    }
    found_row = parsed.agg(*[expr.alias(name) for name, expr in checks.items()]).first()
    assert found_row is not None  # an aggregate without groups has one row
    found = found_row.asDict()
    if not found["rows"]:
        raise UsageError(f"{where}: no rows under the header")
    bad = [f"{found[name]:,} rows with {name}" for name in checks if name != "rows" and found[name]]
    if bad:
        example = (
            parsed.filter(F.col("converted").isNull()).select("converted_text").first()
            if found["converted not 0/1/true/false"]
            else None
        )
        shown = f" (e.g. converted={example[0]!r})" if example else ""
        raise UsageError(f"{where}: {'; '.join(bad)}{shown}")
    log = parsed.select(
        "user_id",
        "variant",
        "converted",
        *[F.col(c) if c in optional else F.lit(None).cast("double").alias(c) for c in ("value", "covariate")],
        (F.col("timestamp") if "timestamp" in optional else F.lit(None).cast("timestamp")).alias(
            "exposed_at"
        ),
        "row_order",
    )
    return log.transform(collapse_exposure_log), found["rows"], optional


def per_user(experiment_id: str) -> Callable[[DataFrame], DataFrame]:
    """Collapsed log rows (one variant each) -> the per-user frame (USER_COLUMNS); a missing value or
    covariate is 0."""

    def transform(collapsed: DataFrame) -> DataFrame:
        return collapsed.select(
            F.lit(experiment_id).alias("experiment_id"),
            "user_id",
            "variant",
            "converted",
            F.coalesce(F.col("value"), F.lit(0.0)).alias("value"),
            F.coalesce(F.col("covariate"), F.lit(0.0)).alias("pre_conversions"),
            F.coalesce(F.col("covariate"), F.lit(0.0)).alias("pre_value"),
        ).select(*USER_COLUMNS)

    return transform


def analyse(
    ctx: JobContext,
    users: DataFrame,
    source: str,
    plans: dict[str, Plan],
    settings: ExperimentConfig | None = None,
) -> list[dict[str, Any]]:
    """Moments per experiment and variant in Spark (the per-user rows stay there; one aggregation, the
    experiment-wide moments are added up from it), then the statistics in the driver; one log line per
    experiment."""
    settings = settings or ctx.config.experiment
    cap = settings.value_cap
    caps: dict[str, dict[str, float | None]] = {}
    persisted = None
    try:
        if settings.value_metric and cap.method != "none":
            persisted = users = users.persist()  # read twice: for the caps, then capped for the moments
            with ctx.step(f"value caps ({cap.method} {cap.value:g})") as step:
                found_caps = users.transform(value_caps(cap)).collect()  # one row per experiment
                caps = {row.experiment_id: row.asDict() for row in found_caps}
                step.rows = len(caps)
                step.detail = "; ".join(
                    f"{e}: revenue capped at {c['value_cap']}, pre-period revenue at {c['pre_value_cap']}"
                    for e, c in sorted(caps.items())
                )
            schema = "experiment_id string, value_cap double, pre_value_cap double"
            cap_frame = ctx.spark.createDataFrame(
                [(e, c["value_cap"], c["pre_value_cap"]) for e, c in caps.items()], schema
            )
            users = users.transform(capped(cap_frame))
        with ctx.step("outcomes and moments per experiment and variant") as step:
            by_variant = [
                row.asDict() for row in moment_sums(users, ["experiment_id", "variant"]).collect()
            ]  # a handful of rows
            pooled = {experiment_id: moments(sums) for experiment_id, sums in pooled_sums(by_variant).items()}
            step.rows = len(by_variant)
    finally:
        if persisted is not None:
            persisted.unpersist()
    rows: list[dict[str, Any]] = []
    for experiment_id in sorted(pooled):
        arms = {row["variant"]: moments(row) for row in by_variant if row["experiment_id"] == experiment_id}
        plan = plans.get(experiment_id) or plan_for(experiment_id, settings)
        metric_caps = {}
        if experiment_id in caps:
            capped_users = {
                row["variant"]: int(row["capped"])
                for row in by_variant
                if row["experiment_id"] == experiment_id
            }
            metric_caps[REVENUE] = {
                "value_cap": caps[experiment_id]["value_cap"],
                "capped_users": capped_users,
            }
        with ctx.step(f"{experiment_id}: statistics") as step:
            found, notes = experiment_rows(
                experiment_id, source, arms, pooled[experiment_id], plan, settings, metric_caps
            )
            rows += found
            step.rows = len(found)
            step.detail = "; ".join([summary(found, arms, plan.control), *notes])
    return rows


def summary(rows: list[dict[str, Any]], arms: dict[str, dict[str, float]], control: str) -> str:
    users = ", ".join(f"{v} {int(a['n']):,}" for v, a in sorted(arms.items()))
    parts = [f"users {users}"]
    for row in rows:
        if row["metric"] == CONVERSION and not row["is_control"] and not row["cuped"]:
            sequential = row["decision_test"] == "sequential"
            p = row["sequential_p_value_adjusted" if sequential else "p_value_adjusted"]
            lift = "-" if row["lift"] is None else f"{row['lift']:+.4f}"
            parts.append(
                f"{row['variant']} vs {control}: conversion {lift} ({row['decision_test']} p "
                f"{'-' if p is None else f'{p:.3g}'}) -> {row['decision']} ({row['decision_reason']})"
            )
    if rows:
        parts.append(f"SRM p {rows[0]['srm_p_value']:.3g}{' (MISMATCH)' if rows[0]['srm'] else ''}")
    return "; ".join(parts)


def write_results(ctx: JobContext, rows: list[dict[str, Any]], replaced: Column) -> int:
    """Replace the run date's rows that `replaced` selects (this source's, or this CSV experiment's) by
    `rows`, keeping the date's other rows: one overwrite of the run date's partition."""
    lake, run_date = ctx.lake, ctx.run_date
    kept = []
    if lake.exists(RESULTS):
        of_date = lake.read_as_of(RESULTS, run_date)
        # A table written before a column was added lacks it: null there (the write below adds it).
        columns = [
            F.col(f.name) if f.name in of_date.columns else F.lit(None).cast(f.dataType).alias(f.name)
            for f in RESULT_SCHEMA
        ]
        kept = [
            tuple(row) for row in of_date.filter(~replaced).select(*columns).collect()
        ]  # result rows: few
    new = [tuple(clean(row.get(c)) for c in RESULT_COLUMNS[:-1]) + (run_date,) for row in rows]
    frame = ctx.spark.createDataFrame(kept + new, RESULT_SCHEMA)
    with ctx.step(RESULTS) as step:
        # merge_schema: a table from before a column was added gains it
        lake.overwrite_as_of(RESULTS, frame, run_date, merge_schema=True)
        step.rows = len(new)
        step.detail = f"for {run_date} ({len(kept)} rows of other sources or experiments kept)"
    return len(new)


def clean(value: object) -> object:
    """Python scalars for Spark: numpy numbers to float/int/bool, NaN and infinities to None."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


JOB = Job(name="experiment", help=__doc__.strip(), run=run, add_arguments=add_arguments, validate=validate)

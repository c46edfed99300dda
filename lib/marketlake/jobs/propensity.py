"""propensity: who will buy in the next horizon. For run date D and horizon H, fits Spark MLlib classifiers
(logistic regression, random forest, gradient-boosted trees) on features as of D - 2H labelled with the
purchases of (D - 2H, D - H], judges them and the BG/NBD baseline on features as of D - H against the
purchases of (D - H, D] (out of time), keeps the best by average precision, refits it on the later set and
scores every user known on D: gold.purchase_propensity (calibrated p_purchase, decile), with
gold.propensity_evaluation and gold.propensity_deciles for the candidates. Reads nothing dated after D."""

from __future__ import annotations

import argparse
import datetime as dt
import math
from dataclasses import asdict
from typing import Any

from pyspark.ml import PipelineModel, Transformer
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.config import Config, PropensityConfig, with_overrides
from marketlake.errors import UsageError
from marketlake.lake.schema import spark_schema
from marketlake.models import model_version, record_model
from marketlake.propensity import evaluation
from marketlake.propensity import models as candidates
from marketlake.propensity.dataset import FEATURES, LABEL, PropensitySet, propensity_set
from marketlake.runner import Job, JobContext

SCORES, EVALUATION, DECILES = (
    catalog.PURCHASE_PROPENSITY,
    catalog.PROPENSITY_EVALUATION,
    catalog.PROPENSITY_DECILES,
)
MODEL_NAME = "propensity"
ROWS_PER_PARTITION = 100_000
EVENT_COLUMNS = [
    "user_id",
    "event_type",
    "event_ts",
    "event_date",
    "session_id",
    "order_id",
    "event_id",
    "revenue",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--horizon-days",
        type=int,
        help="days after the run date the scores predict (default: config propensity.horizon_days, 30)",
    )


def settings_for(args: argparse.Namespace, config: Config) -> PropensityConfig:
    return with_overrides(config.propensity, {"horizon_days": args.horizon_days})


def validate(args: argparse.Namespace, config: Config) -> None:
    settings_for(args, config)


def cutoffs(run_date: dt.date, horizon_days: int) -> tuple[dt.date, dt.date]:
    """(training cutoff, validation cutoff): D - 2H and D - H."""
    horizon = dt.timedelta(days=horizon_days)
    return run_date - 2 * horizon, run_date - horizon


def check_history(events: DataFrame, run_date: dt.date, horizon_days: int) -> None:
    """UsageError unless there are purchases up to the training cutoff and buyers and non-buyers to learn
    from after each cutoff."""
    train_cutoff, validation_cutoff = cutoffs(run_date, horizon_days)
    date = F.col("event_date")
    purchases = events.filter(F.col("event_type") == "purchase")
    row = purchases.agg(
        F.min(date).alias("first"),
        F.count_if(date <= F.lit(train_cutoff)).alias("before"),
        F.count_distinct(
            F.when((date > F.lit(train_cutoff)) & (date <= F.lit(validation_cutoff)), F.col("user_id"))
        ).alias("train"),
        F.count_distinct(F.when(date > F.lit(validation_cutoff), F.col("user_id"))).alias("validation"),
    ).first()
    assert row is not None
    span = f"(training cutoff = run date - 2 x {horizon_days} days)"
    if row["before"] == 0:
        first = "none" if row["first"] is None else f"the first is dated {row['first']}"
        raise UsageError(
            f"no purchases on or before {train_cutoff} {span}; {first}: use a later run date or a shorter --horizon-days"
        )
    for name, count, start, end in (
        ("training", row["train"], train_cutoff, validation_cutoff),
        ("validation", row["validation"], validation_cutoff, run_date),
    ):
        if count == 0:
            raise UsageError(f"nobody bought in ({start}, {end}], the {name} labels: nothing to learn from")


def compact(frame: DataFrame) -> DataFrame:
    """One row per user is small: few partitions keep MLlib's many passes over it cheap (each pass is a Spark
    job whose cost is mostly per task). A fixed partitioning and order, so that a re-run fits the same model.
    Returns the set persisted and materialised; the features are computed once (the count that sizes the
    partitions reads them from the cache the repartition then reads too)."""
    computed = frame.persist()
    partitions = max(1, math.ceil(computed.count() / ROWS_PER_PARTITION))
    compacted = computed.repartition(partitions, "user_id").sortWithinPartitions("user_id").persist()
    compacted.count()
    computed.unpersist()
    return compacted


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    settings, lake, run_date = settings_for(args, ctx.config), ctx.lake, ctx.run_date
    horizon = settings.horizon_days
    lookback = ctx.config.features.lookback_days
    train_cutoff, validation_cutoff = cutoffs(run_date, horizon)
    lake.require(catalog.SILVER_EVENTS)
    # Nothing dated after the run date is read, whatever the lake holds.
    events = (
        lake.read(catalog.SILVER_EVENTS).filter(F.col("event_date") <= F.lit(run_date)).select(*EVENT_COLUMNS)
    )
    events = events.persist()
    users = lake.read_if_exists(catalog.SILVER_USERS)
    frames: list[DataFrame] = [events]
    try:
        check_history(events, run_date, horizon)
        sets = {}
        for name, cutoff, labelled in (
            ("training", train_cutoff, True),
            ("validation", validation_cutoff, True),
            ("scoring", run_date, False),
        ):
            with ctx.step(
                f"{name} set: features as of {cutoff}"
                + (f", purchases in the next {horizon} days" if labelled else "")
            ) as step:
                found = propensity_set(ctx.spark, events, users, cutoff, horizon, lookback, labelled)
                found = PropensitySet(found.cutoff, compact(found.frame), found.bgnbd)
                frames.append(found.frame)
                step.rows = found.frame.count()
                if labelled:
                    buyers = found.frame.filter(F.col(LABEL) == 1).count()
                    step.detail = f"buyers={buyers}"
                if found.bgnbd is None:
                    step.detail = f"{step.detail or ''} no BG/NBD fit (too few repeat buyers)".strip()
                sets[name] = found
        fit_and_score(ctx, settings, sets["training"], sets["validation"], sets["scoring"], frames)
    finally:
        for frame in frames:
            frame.unpersist()


def fit_and_score(
    ctx: JobContext,
    settings: PropensityConfig,
    training: PropensitySet,
    validation: PropensitySet,
    scoring: PropensitySet,
    frames: list[DataFrame],
) -> None:
    lake, run_date, horizon = ctx.lake, ctx.run_date, settings.horizon_days
    names = [n for n in settings.models if n != candidates.BASELINE or (training.bgnbd and validation.bgnbd)]
    if candidates.BASELINE in settings.models and candidates.BASELINE not in names:
        ctx.note("bgnbd baseline left out: too few repeat buyers to fit it")
    if not names:
        raise UsageError(
            "no propensity model can be fitted: propensity.models holds only bgnbd, which needs repeat buyers"
        )
    training_users = training.frame.count()
    validated: dict[str, DataFrame] = {}
    results: dict[str, evaluation.Metrics] = {}
    tables: dict[str, list[evaluation.Decile]] = {}
    for name in names:
        with ctx.step(f"{name}: fit as of {training.cutoff}, validate as of {validation.cutoff}") as step:
            model = None if name == candidates.BASELINE else candidates.fit(name, settings, training.frame)
            scored = candidates.scores(name, model, validation.frame).select(
                "user_id", candidates.SCORE, LABEL
            )
            scored = scored.persist()
            frames.append(scored)
            validated[name] = scored
            calibrated = candidates.cross_calibrated(
                settings.calibration, scored
            ).toPandas()  # one row per user
            arrays = (
                calibrated[candidates.SCORE].to_numpy(dtype=float),
                calibrated[candidates.PROBABILITY].to_numpy(dtype=float),
                calibrated[LABEL].to_numpy(dtype=float),
            )
            results[name] = evaluation.evaluate(*arrays)
            tables[name] = evaluation.decile_table(*arrays)
            m = results[name]
            step.detail = (
                f"AUC={m.auc:.4f} AP={m.average_precision:.4f} Brier={m.brier:.4f} "
                f"top-decile lift={m.lift_top_decile:.2f}"
            )
    chosen = max(names, key=lambda n: (results[n].average_precision, -names.index(n)))
    params = model_params(settings, chosen, ctx.config.features.lookback_days)
    version = model_version(run_date, params)
    ctx.note(f"chosen: {chosen} (best average precision {results[chosen].average_precision:.4f})")
    with ctx.step(f"{chosen}: refit as of {validation.cutoff}, score users as of {run_date}") as step:
        final = None if chosen == candidates.BASELINE else candidates.fit(chosen, settings, validation.frame)
        calibrator = candidates.calibrator(settings.calibration, validated[chosen])
        scores = candidates.calibrate(calibrator, candidates.scores(chosen, final, scoring.frame))
        rows = score_rows(scores, chosen, version, horizon, run_date)
        scored_users = lake.overwrite_as_of(SCORES, rows, run_date).rows
        step.rows = scored_users
    with ctx.step(EVALUATION.name) as step:
        frame = ctx.spark.createDataFrame(
            [
                evaluation_row(
                    n, n == chosen, version, horizon, training.cutoff, validation.cutoff, results[n], run_date
                )
                for n in names
            ],
            spark_schema(EVALUATION),
        )
        step.rows = lake.overwrite_as_of(EVALUATION, frame, run_date).rows
    with ctx.step(DECILES.name) as step:
        rows_list = [(run_date, n, *asdict(d).values()) for n in names for d in tables[n]]
        frame = ctx.spark.createDataFrame(rows_list, spark_schema(DECILES))
        step.rows = lake.overwrite_as_of(DECILES, frame, run_date).rows
    with ctx.step(catalog.MODELS.name) as step:
        path = save(lake.model_path(MODEL_NAME, version), final, calibrator)
        bgnbd = scoring.bgnbd
        fitted = {} if bgnbd is None else {"bgnbd": {k: getattr(bgnbd, k) for k in ("r", "alpha", "a", "b")}}
        metrics = {k: float(v) for k, v in asdict(results[chosen]).items()}
        record_model(ctx, MODEL_NAME, version, path, {**params, **fitted}, metrics, FEATURES)
        step.detail = f"saved {path}"
    ctx.counts.update(
        {
            "users_scored": scored_users or 0,
            "training_users": training_users,
            "validation_users": results[chosen].users,
        }
    )


def save(path: str, classifier: PipelineModel | None, calibrator: Transformer) -> str:
    if classifier is not None:
        classifier.write().overwrite().save(f"{path}/classifier")
    calibrator.write().overwrite().save(f"{path}/calibrator")  # type: ignore[attr-defined]
    return path


def model_params(settings: PropensityConfig, chosen: str, lookback_days: int) -> dict[str, Any]:
    """What determines the scores (the model version is a hash of these)."""
    return {"model": chosen, "lookback_days": lookback_days, **settings.model_dump()}


def score_rows(scores: DataFrame, chosen: str, version: str, horizon: int, run_date: dt.date) -> DataFrame:
    # One global order for the deciles (exact sizes, ties broken by user id): every row in one window
    # partition, one narrow row per user.
    order = Window.partitionBy(F.lit(0)).orderBy(F.desc(candidates.SCORE), F.asc("user_id"))
    bought = F.col("p_alive").isNotNull()
    return scores.select(
        "user_id",
        F.col(candidates.PROBABILITY).alias("p_purchase"),
        F.ntile(10).over(order).cast("int").alias("decile"),
        F.when(bought, F.col("expected_purchases")).alias("expected_purchases"),
        F.when(bought, F.col("p_alive")).alias("p_alive"),
        F.lit(chosen).alias("model"),
        F.lit(version).alias("model_version"),
        F.lit(horizon).cast("int").alias("horizon_days"),
        F.lit(run_date).alias("as_of_date"),
    )


def evaluation_row(
    name: str,
    chosen: bool,
    version: str,
    horizon: int,
    train_cutoff: dt.date,
    validation_cutoff: dt.date,
    m: evaluation.Metrics,
    run_date: dt.date,
) -> tuple[Any, ...]:
    return (
        run_date,
        name,
        chosen,
        version,
        horizon,
        train_cutoff,
        validation_cutoff,
        m.users,
        m.buyers,
        m.base_rate,
        m.auc,
        m.average_precision,
        m.brier,
        m.log_loss,
        m.lift_top_decile,
        m.threshold,
        m.accuracy,
        m.precision,
        m.recall,
        m.f1,
    )


JOB = Job(name="propensity", help=__doc__.strip(), run=run, add_arguments=add_arguments, validate=validate)

"""segment: KMeans customer segments from gold.user_features of the run date. Chooses k on a sample of
users (the highest silhouette among the k's whose fits on halves of the sample agree) or uses a fixed k,
fits the final model on everyone, saves the model under <lake root>/models/segment_kmeans/<version>,
writes gold.user_segments and gold.segment_profiles (size, share, feature means, name, strategy) for the
run date, and appends the model to ops.models."""

from __future__ import annotations

import argparse
import logging
import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.config import Config, SegmentConfig, with_overrides
from marketlake.errors import UsageError
from marketlake.features import NUMERIC
from marketlake.models import model_version, record_model, save_model
from marketlake.runner import Job, JobContext
from marketlake.segment import (
    CLUSTER,
    EVERYONE,
    SEGMENT_FEATURES,
    STRATEGIES,
    Fitted,
    assign,
    fit,
    name_segments,
    profile_aggregates,
    profiles_frame,
)

FEATURES, SEGMENTS, PROFILES = (
    catalog.USER_FEATURES.name,
    catalog.USER_SEGMENTS.name,
    catalog.SEGMENT_PROFILES.name,
)
MODEL_NAME = "segment_kmeans"
ROWS_PER_PARTITION = 50_000
MAX_PARALLEL_FITS = 8

log = logging.getLogger("marketlake")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--k", type=int, help="a fixed number of segments (default: config segment.k, else by silhouette)"
    )


def settings_for(args: argparse.Namespace, config: Config) -> SegmentConfig:
    return with_overrides(config.segment, {"k": args.k})


def validate(args: argparse.Namespace, config: Config) -> None:
    settings = settings_for(args, config)
    if settings.k_min > settings.k_max:
        raise UsageError(f"segment.k_min ({settings.k_min}) is above segment.k_max ({settings.k_max})")
    if not settings.features:
        raise UsageError("segment.features is empty")
    for key in ("features", "log_features"):
        unknown = [name for name in getattr(settings, key) if name not in SEGMENT_FEATURES]
        if unknown:
            raise UsageError(f"segment.{key}: {', '.join(unknown)} not among {', '.join(SEGMENT_FEATURES)}")


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    settings, lake, run_date = settings_for(args, ctx.config), ctx.lake, ctx.run_date
    lake.require(FEATURES)
    features = lake.read_as_of(FEATURES, run_date).select("user_id", *NUMERIC)
    users = features.count()
    if users == 0:
        raise UsageError(f"{FEATURES} has no rows for {run_date}; run features for that date first")
    # A fixed partitioning and order, so that the same rows and seeds give the same model on a re-run.
    # Never None: a SQL conf Spark gives its default (200) for when unset.
    shuffle_partitions = int(ctx.spark.conf.get("spark.sql.shuffle.partitions") or 200)
    partitions = max(1, min(shuffle_partitions, math.ceil(users / ROWS_PER_PARTITION)))
    data = features.repartition(partitions, "user_id").sortWithinPartitions("user_id").persist()
    try:
        segment(ctx, settings, data, users)
    finally:
        data.unpersist()


def log_trials(ctx: JobContext, fitted: Fitted) -> None:
    for trial in fitted.trials:
        log.info(
            "%s | kmeans k=%d | silhouette=%.4f stability=%.4f (ARI %s) cost=%.1f (lowest of %d runs: seed %d)",
            ctx.job,
            trial.k,
            trial.silhouette,
            trial.stability,
            ", ".join(f"{a:.3f}" for a in trial.stabilities),
            trial.cost,
            len(trial.costs),
            trial.seed,
        )


def segment(ctx: JobContext, settings: SegmentConfig, data: DataFrame, users: int) -> None:
    lake, run_date = ctx.lake, ctx.run_date
    params = {"model": "kmeans", **settings.model_dump()}
    version: str | None = model_version(run_date, params)
    workers = min(MAX_PARALLEL_FITS, ctx.spark.sparkContext.defaultParallelism)
    with ctx.step(f"fit KMeans ({users} users; features {', '.join(settings.features)})") as step:
        fitted = fit(data, settings, workers)
        fits = len(fitted.trials) * (settings.runs + 2 * settings.stability_splits * settings.stability_runs)
        step.detail = (
            f"k search on {fitted.sampled} users: {fits} fits; final fit on everyone; {workers} at a time"
        )
    log_trials(ctx, fitted)
    chosen = fitted.chosen
    if fitted.model is None:
        why = "too few distinct users to segment" if not fitted.trials else "no k gave two non-empty segments"
        ctx.note(f"{why} ({fitted.distinct} distinct of {users}): one segment")
        predictions, version = data.select("user_id", F.lit(0).alias(CLUSTER)), None
    else:
        # fit() makes a model only for a chosen k; the version is None only without a model.
        assert chosen is not None and version is not None
        with ctx.step(
            f"chose k={chosen.k} (silhouette {chosen.silhouette:.4f}, stability {chosen.stability:.4f}: "
            f"{fitted.reason}); save model {version}"
        ) as step:
            path = save_model(fitted.model, lake, MODEL_NAME, version)
            step.detail = path
        predictions = fitted.model.transform(data).select("user_id", F.col(CLUSTER).cast("int"))
    predictions = predictions.persist()
    try:
        with ctx.step("profiles") as step:
            # One row per segment: a small aggregate, fine to bring to the driver for naming.
            rows = data.join(predictions, "user_id").groupBy(CLUSTER).agg(*profile_aggregates()).collect()
            named = name_segments([row.asDict() for row in rows])
            if fitted.model is None:
                named = [{**p, "segment_name": EVERYONE, "strategy": STRATEGIES[EVERYONE]} for p in named]
            step.rows = len(named)
            step.detail = "; ".join(f"{p['segment_id']} {p['segment_name']} ({p['size']})" for p in named)
        silhouette = None if chosen is None or math.isnan(chosen.silhouette) else round(chosen.silhouette, 6)
        profiles = profiles_frame(ctx.spark, named, users, silhouette, settings.features, version, run_date)
        segments = assign(predictions, named, version, run_date)
        with ctx.step(SEGMENTS) as step:
            step.rows = lake.overwrite_as_of(SEGMENTS, segments, run_date).rows
        with ctx.step(PROFILES) as step:
            step.rows = lake.overwrite_as_of(PROFILES, profiles, run_date).rows
    finally:
        predictions.unpersist()
    if fitted.model is not None:
        assert version is not None  # None only without a model
        with ctx.step(catalog.MODELS.name):
            record_model(ctx, MODEL_NAME, version, path, params, model_metrics(fitted), settings.features)
    # A model is fitted exactly when a k is chosen.
    ctx.counts.update(users=users, segments=len(named), k=chosen.k if chosen is not None else 1)


def model_metrics(fitted: Fitted) -> dict[str, float]:
    chosen = fitted.chosen
    assert chosen is not None  # called with a model, fitted only for a chosen k
    metrics = {
        "k": chosen.k,
        "silhouette": chosen.silhouette,
        "cost": chosen.cost,
        "users": fitted.users,
        "distinct_users": fitted.distinct,
        "sampled_users": fitted.sampled,
        "stability": chosen.stability,
        "min_stability": fitted.min_stability,
    }
    for trial in fitted.trials:
        metrics[f"silhouette_k{trial.k}"] = trial.silhouette
        metrics[f"stability_k{trial.k}"] = trial.stability
        metrics[f"cost_k{trial.k}"] = trial.cost
        metrics[f"seed_k{trial.k}"] = trial.seed
    return metrics


JOB = Job(name="segment", help=__doc__.strip(), run=run, add_arguments=add_arguments, validate=validate)

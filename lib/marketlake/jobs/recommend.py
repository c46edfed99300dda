"""recommend: implicit-feedback ALS recommendations from silver.events up to the run date. Builds interaction
strengths (weighted, decayed events per user and item), tunes ALS by nDCG@k on a validation split, evaluates
it against a popularity baseline on a held-out split (gold.recommendation_evaluation), refits on all
interactions, saves the model, and writes the top N items per user to gold.user_recommendations (ALS, or
the segment's or overall most popular items for users the model does not know). Overwrites only the run
date's partitions and appends the model to ops.models."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake import catalog
from marketlake.coldstart import MODEL_NAME as COLD_MODEL_NAME
from marketlake.coldstart import ColdRun, fit_cold_run, merge_cold
from marketlake.config import Config, RecommendConfig, with_overrides
from marketlake.content import ContentRun, item_factors, write_similar_items
from marketlake.errors import UsageError
from marketlake.models import model_version, record_model
from marketlake.recommend import (
    ITEM,
    ITEM_INDEX,
    USER,
    USER_INDEX,
    AlsParams,
    Evaluation,
    Recommender,
    Search,
    Split,
    Tuned,
    als_top,
    assemble,
    checkpoints,
    dense_index,
    evaluate,
    fallback_candidates,
    fit,
    global_popular,
    interactions,
    item_popularity,
    lookback_start,
    most_excluded,
    popular_top,
    retune_reason,
    reuse_note,
    save_recommender,
    search_fingerprint,
    segment_popular,
    split_random,
    split_time,
    to_indexes,
    tune,
    tuning_budget,
    window_events,
)
from marketlake.runner import Job, JobContext

EVENTS, USERS, ITEMS = catalog.SILVER_EVENTS.name, catalog.SILVER_USERS.name, catalog.SILVER_ITEMS.name
SEGMENTS = catalog.USER_SEGMENTS.name
RECOMMENDATIONS, EVALUATION = catalog.USER_RECOMMENDATIONS.name, catalog.RECOMMENDATION_EVALUATION.name
MODEL_NAME = "recommend_als"
METRIC_DECIMALS = 9
EVALUATION_SCHEMA = T.StructType(
    [
        T.StructField("as_of_date", T.DateType()),
        T.StructField("model_version", T.StringType()),
        T.StructField("model", T.StringType()),
        T.StructField("metric", T.StringType()),
        T.StructField("k", T.IntegerType()),
        T.StructField("value", T.DoubleType()),
        T.StructField("users", T.LongType()),
        T.StructField("split", T.StringType()),
    ]
)
# Command-line options that override the config's recommend section (option dest = config key).
OVERRIDES = ("top_n", "split", "tune", "tuning_budget_seconds", "evaluate", "retune")

log = logging.getLogger("marketlake")

# Persists a frame and returns it; the run unpersists it at the end.
Keep = Callable[[DataFrame], DataFrame]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--top-n", type=int, help="recommendations per user (default: config recommend.top_n)"
    )
    parser.add_argument(
        "--split", choices=["random", "time"], help="held-out split for the evaluation (default: config)"
    )
    parser.add_argument(
        "--no-tune",
        dest="tune",
        action="store_const",
        const=False,
        help="use the configured ALS params, no search",
    )
    parser.add_argument(
        "--tuning-budget-seconds",
        type=float,
        help="the search's time budget at most; it scales with the interactions below it (default: config)",
    )
    parser.add_argument(
        "--retune",
        action="store_const",
        const=True,
        help="search ALS params now instead of reusing the last search's (default: config recommend.retune)",
    )
    parser.add_argument(
        "--no-evaluate",
        dest="evaluate",
        action="store_const",
        const=False,
        help="skip the held-out evaluation",
    )


def settings_for(args: argparse.Namespace, config: Config) -> RecommendConfig:
    return with_overrides(config.recommend, {key: getattr(args, key) for key in OVERRIDES})


def validate(args: argparse.Namespace, config: Config) -> None:
    settings = settings_for(args, config)
    negative = sorted(t for t, w in settings.event_weights.items() if w < 0)
    if negative:
        raise UsageError(f"recommend.event_weights: negative weight for {', '.join(negative)}")
    if not any(w > 0 for w in settings.event_weights.values()):
        raise UsageError("recommend.event_weights: no event type has a positive weight")
    space = settings.search
    for key, values, lowest in (("rank", space.rank, 1), ("max_iter", space.max_iter, 1)):
        if min(values) < lowest:
            raise UsageError(f"recommend.search.{key}: values must be at least {lowest}, not {min(values)}")
    if min(space.reg_param) <= 0 or min(space.alpha) < 0:
        raise UsageError("recommend.search: reg_param values must be positive and alpha values not negative")


@dataclass
class Inputs:
    pairs: DataFrame  # user_id, item_id, strength, events, first_ts: the window's interactions
    windowed: DataFrame  # the window's events
    audience: DataFrame  # user_id: who gets recommendations
    exclude: DataFrame  # user_id, item_id: never recommended to that user
    inactive: DataFrame | None  # item_id: never recommended
    segments: DataFrame | None  # user_id, segment_id of the run date


def read_inputs(ctx: JobContext, settings: RecommendConfig) -> Inputs:
    lake, run_date = ctx.lake, ctx.run_date
    history = lake.read(EVENTS).filter(F.col("event_date") <= F.lit(run_date))
    windowed = history.transform(window_events(lookback_start(run_date, settings.lookback_days), run_date))
    pairs = windowed.transform(interactions(settings, run_date))
    audience = history.select(USER).where(F.col(USER).isNotNull())
    if lake.exists(USERS):
        users = lake.read(USERS)
        signed_up = F.col("signup_date").isNull() | (F.col("signup_date") <= F.lit(run_date))
        audience = audience.unionByName(users.filter(signed_up).select(USER))
    exclude = (
        history.filter(F.col("event_type").isin(settings.exclude_event_types)).select(USER, ITEM).distinct()
    )
    inactive = None
    if lake.exists(ITEMS):
        inactive = lake.read(ITEMS).filter(F.col("active") == F.lit(False)).select(ITEM)
    segments = None
    if lake.exists(SEGMENTS):
        segments = lake.read_as_of(SEGMENTS, run_date).select(USER, "segment_id")
        if segments.limit(1).count() == 0:
            segments = None
    return Inputs(pairs, windowed, audience.distinct(), exclude, inactive, segments)


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    settings, lake = settings_for(args, ctx.config), ctx.lake
    if not lake.exists(EVENTS):
        raise UsageError(f"{EVENTS} does not exist in this lake; run ingest first")
    inputs = read_inputs(ctx, settings)
    if inputs.segments is None:
        log.info(
            "recommend | %s has no rows for %s: users the model does not know get global_popular",
            SEGMENTS,
            ctx.run_date,
        )
    # Never None: a SQL conf Spark gives its default (200) for when unset.
    partitions = int(ctx.spark.conf.get("spark.sql.shuffle.partitions") or 200)
    blocks = settings.blocks or ctx.spark.sparkContext.defaultParallelism
    cached: list[DataFrame] = []

    def keep(frame: DataFrame) -> DataFrame:
        cached.append(frame.persist())
        return cached[-1]

    with checkpoints(ctx.spark, lake.checkpoint_dir(ctx.run_id), lake.files):  # removed at the end
        try:
            fit_and_recommend(ctx, settings, inputs, partitions, blocks, keep)
        finally:
            for frame in cached:
                frame.unpersist()


def fit_and_recommend(
    ctx: JobContext, settings: RecommendConfig, inputs: Inputs, partitions: int, blocks: int, keep: Keep
) -> None:
    pairs = keep(inputs.pairs)
    with ctx.step("interactions") as step:
        step.rows = interactions_count = pairs.count()
    users, items = (
        keep(dense_index(pairs, USER, USER_INDEX, partitions)),
        keep(dense_index(pairs, ITEM, ITEM_INDEX, partitions)),
    )
    indexed = keep(to_indexes(pairs, users, items))
    with ctx.step("id numbering") as step:
        known_users, known_items = users.count(), items.count()
        step.detail = f"{known_users} users, {known_items} items"
    ctx.counts.update(interactions=interactions_count, users_known=known_users, items_known=known_items)
    plan = plan_tuning(ctx, settings, interactions_count)
    evaluation, tuned = evaluate_and_tune(
        ctx, settings, inputs, pairs, users, items, indexed, blocks, keep, plan
    )
    recommend(ctx, settings, inputs, pairs, users, items, indexed, tuned, evaluation, blocks)


def evaluate_and_tune(
    ctx: JobContext,
    settings: RecommendConfig,
    inputs: Inputs,
    pairs: DataFrame,
    users: DataFrame,
    items: DataFrame,
    indexed: DataFrame,
    blocks: int,
    keep: Keep,
    plan: TuningPlan,
) -> tuple[list[Evaluation] | None, Tuned]:
    """Tune on the training part of the held-out split (or on everything when evaluation is off), or reuse
    the last search's params (`plan`), then evaluate the chosen params and the popularity baseline on the
    held-out part."""
    if not settings.evaluate:
        ctx.note("evaluation: off (recommend.evaluate: false)")
        return None, tune_logged(ctx, settings, indexed, blocks, plan)
    split: Split = (
        split_time(inputs.windowed, settings, ctx.run_date)
        if settings.split == "time"
        else split_random(pairs, settings.test_fraction, settings.seed)
    )
    train = keep(to_indexes(split.train, users, items))
    known = train.select(USER_INDEX).distinct()
    test = keep(
        to_indexes(split.test, users, items)
        .select(USER_INDEX, ITEM_INDEX)
        .join(known, USER_INDEX, "left_semi")
    )
    tuned = tune_logged(ctx, settings, train, blocks, plan)
    evaluated = test.select(USER_INDEX).distinct().count()
    if evaluated < settings.min_users:
        ctx.note(
            f"evaluation skipped: {evaluated} users with held-out items, fewer than recommend.min_users={settings.min_users}"
        )
        return None, tuned
    catalogue = train.select(ITEM_INDEX).distinct().count()
    with ctx.step(f"evaluate on the {split.kind} split ({evaluated} users, k={settings.k})") as step:
        model = fit(train, tuned.chosen, settings.seed, blocks)
        als = evaluate("als", als_top(model, settings.k, exclude=train), test, settings.k, catalogue)
        popularity = item_popularity(train, ITEM_INDEX, USER_INDEX)
        baseline = evaluate(
            "popularity",
            popular_top(popularity, known, settings.k, exclude=train),
            test,
            settings.k,
            catalogue,
        )
        step.detail = "; ".join(
            f"{e.model} " + " ".join(f"{m}={v:.4f}" for m, v in e.metrics.items()) for e in (als, baseline)
        )
    return [als, baseline], tuned


@dataclass(frozen=True)
class TuningPlan:
    """What this run does about ALS params: reuse `reuse` (an earlier search), or search within
    `budget_seconds` because of `reason` (or take the configured params when tuning is off)."""

    interactions: int
    fingerprint: str
    budget_seconds: float
    reuse: Search | None = None
    reason: str = ""


def plan_tuning(ctx: JobContext, settings: RecommendConfig, interactions: int) -> TuningPlan:
    """Reuse the last recorded search while it is recent, its interaction count close and its settings the
    same; otherwise search (logged either way)."""
    fingerprint = search_fingerprint(settings)
    budget = tuning_budget(settings, interactions)
    if not settings.tune:
        return TuningPlan(interactions, fingerprint, budget, reason="tuning is off (recommend.tune: false)")
    past = last_search(ctx, settings) if not settings.retune else None
    reason = retune_reason(past, ctx.run_date, interactions, settings)
    if reason is None and past is not None:
        ctx.note(
            f"ALS params {past.params.describe()}: {reuse_note(past, ctx.run_date, interactions, settings)}"
        )
        return TuningPlan(interactions, fingerprint, budget, reuse=past)
    ctx.note(
        f"ALS params: a new search ({reason}) within {budget:.0f} s "
        f"(budget for {interactions:,} interactions, at most recommend.tuning_budget_seconds={settings.tuning_budget_seconds:g})"
    )
    return TuningPlan(interactions, fingerprint, budget, reason=reason or "")


def last_search(ctx: JobContext, settings: RecommendConfig) -> Search | None:
    """The newest search recorded in ops.models for this model up to the run date (a later date's search
    never decides a backfill), or None."""
    if not ctx.lake.exists(catalog.MODELS.name):
        return None
    row = (
        ctx.lake.read(catalog.MODELS.name)
        .filter(
            (F.col("model_name") == MODEL_NAME)
            & (F.col("run_date") <= F.lit(ctx.run_date))
            & F.col("params").getItem("searched_on").isNotNull()
        )
        .orderBy(F.desc("run_date"), F.desc("created_at"))
        .select("model_version", "params")
        .first()
    )
    if row is None:
        return None
    params = {key: json.loads(value) for key, value in row["params"].items()}
    return Search(
        AlsParams(
            int(params["rank"]), float(params["reg_param"]), float(params["alpha"]), int(params["max_iter"])
        ),
        dt.date.fromisoformat(params["searched_on"]),
        int(params["searched_interactions"]),
        str(params["search_fingerprint"]),
        reused_from=row["model_version"],
    )


def tune_logged(
    ctx: JobContext, settings: RecommendConfig, train: DataFrame, blocks: int, plan: TuningPlan
) -> Tuned:
    if plan.reuse is not None:
        ctx.counts["params_reused"] = 1
        return Tuned(
            plan.reuse.params,
            reason=reuse_note(plan.reuse, ctx.run_date, plan.interactions, settings),
            search=plan.reuse,
        )
    ctx.counts["params_reused"] = 0
    with ctx.step("tune ALS") as step:
        tuned = tune(
            train, settings.model_copy(update={"tuning_budget_seconds": plan.budget_seconds}), blocks
        )
        if tuned.trials:
            searched = Search(tuned.chosen, ctx.run_date, plan.interactions, plan.fingerprint)
            tuned = dataclasses.replace(tuned, search=searched, budget_seconds=plan.budget_seconds)
        step.rows = len(tuned.trials)
        best = max((t.ndcg for t in tuned.trials), default=None)
        chosen = f"chose {tuned.chosen.describe()}"
        step.detail = (
            f"{chosen} (validation nDCG@{settings.k} {best:.4f})"
            if best is not None
            else f"{tuned.reason}; {chosen}"
        )
    return tuned


def recommend(
    ctx: JobContext,
    settings: RecommendConfig,
    inputs: Inputs,
    pairs: DataFrame,
    users: DataFrame,
    items: DataFrame,
    indexed: DataFrame,
    tuned: Tuned,
    evaluation: list[Evaluation] | None,
    blocks: int,
) -> None:
    lake, run_date = ctx.lake, ctx.run_date
    params = model_params(settings, tuned.chosen, blocks)
    version = model_version(run_date, params)
    als_candidates, path, train_seconds, factors = None, None, 0.0, None
    recommender: Recommender | None = None
    rows_version: str | None = version  # the model the rows name: none without interactions
    if indexed.limit(1).count():
        with ctx.step(f"fit ALS on all interactions ({tuned.chosen.describe()})") as step:
            started = time.perf_counter()
            model = fit(indexed, tuned.chosen, settings.seed, blocks)
            train_seconds = time.perf_counter() - started
            path = lake.model_path(MODEL_NAME, version)
            save_recommender(model, users, items, path)
            step.detail = f"saved {path}"
        recommender = Recommender(model, users, items)
        als_candidates = recommender.top(settings.top_n, inputs.exclude, inputs.inactive)
        factors = item_factors(model, items)
    else:
        rows_version = None
        ctx.note("no interactions in the window: no model, popular items only")
    # gold.similar_items: content look-alikes of every active item, blended with the ALS item factors.
    content = write_similar_items(ctx, settings.content, factors, pairs, rows_version)
    listed = settings.top_n + most_excluded(inputs.exclude, USER)
    active_pairs = pairs if inputs.inactive is None else pairs.join(inputs.inactive, ITEM, "left_anti")
    segment_lists = (
        segment_popular(active_pairs, inputs.segments, listed) if inputs.segments is not None else None
    )
    fallbacks = fallback_candidates(
        inputs.audience, global_popular(active_pairs, listed), segment_lists, inputs.segments
    )
    rows = assemble(
        als_candidates, fallbacks, inputs.exclude, inputs.inactive, settings.top_n, rows_version, run_date
    )
    cached: list[DataFrame] = []
    try:
        cold = None
        if recommender is not None:
            fit_factors = partial(fit, params=tuned.chosen, seed=settings.seed, blocks=blocks)
            cold = cold_start(ctx, settings, inputs, pairs, recommender, fit_factors, content, rows_version)
        if cold is not None:
            cached += [rows.persist(), cold.scores.persist()]
            touched = pairs.select(USER, ITEM).unionByName(inputs.exclude.select(USER, ITEM))
            rows = merge_cold(cached[0], cached[1], touched, settings.cold_start.max_per_list, settings.top_n)
        with ctx.step(RECOMMENDATIONS) as step:
            step.rows = lake.overwrite_as_of(RECOMMENDATIONS, rows, run_date).rows
    finally:
        for frame in cached:
            frame.unpersist()
    with ctx.step("sources") as step:
        written = lake.read_as_of(RECOMMENDATIONS, run_date)
        by_source = {
            r["source"]: r["count"] for r in written.groupBy("source").count().collect()
        }  # <= 3 rows
        step.detail = ", ".join(f"{s}={n}" for s, n in sorted(by_source.items()))
    with ctx.step(EVALUATION) as step:
        frame = evaluation_frame(ctx.spark, evaluation or [], rows_version, settings.split, run_date)
        step.rows = lake.overwrite_as_of(EVALUATION, frame, run_date).rows
    if path is not None:
        with ctx.step(catalog.MODELS.name):
            metrics = model_metrics(tuned, evaluation, settings.k, train_seconds)
            record_model(
                ctx,
                MODEL_NAME,
                version,
                path,
                {**params, **tuning_params(settings, tuned)},
                metrics,
                sorted(t for t, w in settings.event_weights.items() if w > 0),
            )
    if cold is not None:
        with ctx.step(f"{catalog.MODELS.name} ({COLD_MODEL_NAME})"):
            cold_rows = by_source.get("content", 0)
            record_model(
                ctx,
                COLD_MODEL_NAME,
                cold.version,
                cold.path,
                cold.params,
                {**cold.metrics, "cold_rows": cold_rows},
                ["item content vectors", "ALS factors", "interaction strengths"],
            )
        ctx.counts.update(cold_items=cold.cold_items)
    ctx.counts.update(
        {
            "recommendations": sum(by_source.values()),
            **{f"source.{s}": n for s, n in by_source.items()},
            "trials": len(tuned.trials),
        }
    )


def cold_start(
    ctx: JobContext,
    settings: RecommendConfig,
    inputs: Inputs,
    pairs: DataFrame,
    recommender: Recommender,
    fit_factors: Callable[[DataFrame], Any],
    content: ContentRun | None,
    als_version: str | None,
) -> ColdRun | None:
    """The run's cold-start model and the scores of its cold items (marketlake.coldstart), or None when
    it is off, capped to nothing, or has no content model or no cold items."""
    cold = settings.cold_start
    if not cold.enabled or cold.max_per_list == 0:
        ctx.note("cold start: off (recommend.cold_start.enabled: false or max_per_list: 0)")
        return None
    if content is None:
        ctx.note(f"cold start: no content model (no {ITEMS}), no cold items in the lists")
        return None
    with ctx.step("cold start model") as step:
        run = fit_cold_run(
            ctx,
            cold,
            content.model,
            content.catalogue,
            pairs,
            recommender,
            fit_factors,
            {"als": als_version, "content": content.version},
            settings.seed,
        )
        if run is not None:
            step.rows = run.cold_items
            step.detail = (
                f"{run.cold_items} cold items, at most {cold.max_per_list} per list; saved {run.path}"
            )
    return run


def model_params(settings: RecommendConfig, chosen: AlsParams, blocks: int) -> dict[str, Any]:
    """What determines the saved model (its version is a hash of these)."""
    return {
        "model": "als-implicit",
        "rank": chosen.rank,
        "reg_param": chosen.reg_param,
        "alpha": chosen.alpha,
        "max_iter": chosen.max_iter,
        "seed": settings.seed,
        "blocks": blocks,
        "event_weights": settings.event_weights,
        "rating_value": settings.rating_value,
        "half_life_days": settings.half_life_days,
        "strength": settings.strength,
        "lookback_days": settings.lookback_days,
    }


def tuning_params(settings: RecommendConfig, tuned: Tuned) -> dict[str, Any]:
    """How the params were chosen. A search's origin (searched_on, searched_interactions,
    search_fingerprint) is carried by every row that reuses it, so reuse never outlives the search."""
    search = tuned.search
    source = "configured" if search is None else "search" if search.reused_from is None else "reused"
    origin = (
        {}
        if search is None
        else {
            "searched_on": search.searched_on.isoformat(),
            "searched_interactions": search.interactions,
            "search_fingerprint": search.fingerprint,
            "reused_from": search.reused_from,
        }
    )
    return {
        "tuned": bool(tuned.trials),
        "tuning_note": tuned.reason,
        "params_source": source,
        **origin,
        "search": settings.search.model_dump(),
        "tuning_budget_seconds": tuned.budget_seconds,
        "split": settings.split,
        "k": settings.k,
        "top_n": settings.top_n,
        "exclude_event_types": settings.exclude_event_types,
    }


def model_metrics(
    tuned: Tuned, evaluation: list[Evaluation] | None, k: int, train_seconds: float
) -> dict[str, float]:
    metrics: dict[str, float] = {"train_seconds": round(train_seconds, 3), "trials": len(tuned.trials)}
    for number, trial in enumerate(tuned.trials, 1):
        metrics[f"trial{number}_validation_ndcg@{k}"] = trial.ndcg
    chosen = [t.ndcg for t in tuned.trials if t.params == tuned.chosen]
    if chosen:
        metrics[f"validation_ndcg@{k}"] = chosen[0]
    for result in evaluation or []:
        metrics[f"{result.model}_users"] = result.users
        for name, value in result.metrics.items():
            metrics[f"{result.model}_{name}@{k}" if name != "coverage" else f"{result.model}_coverage"] = (
                value
            )
    return metrics


def evaluation_frame(
    spark: SparkSession, evaluation: list[Evaluation], version: str | None, split: str, run_date: dt.date
) -> DataFrame:
    # Rounded: Spark may sum the per-user values in another order on a re-run, which moves the last bits.
    rows = [
        (
            run_date,
            version,
            result.model,
            metric,
            result.k,
            round(float(value), METRIC_DECIMALS),
            result.users,
            split,
        )
        for result in evaluation
        for metric, value in result.metrics.items()
    ]
    return spark.createDataFrame(rows, EVALUATION_SCHEMA)


JOB = Job(name="recommend", help=__doc__.strip(), run=run, add_arguments=add_arguments, validate=validate)

"""Reading the lake: every figure the report shows, as a typed model of small pandas frames.

Each figure is a small Spark aggregate of a gold (or ops) table filtered to the run date, brought to the
driver as a pandas frame (a table's rows never are). A table that is absent, or has no rows for the run
date, gives an `Absent` in place of its frames, saying why and naming the job that writes it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from marketlake import catalog

if TYPE_CHECKING:
    from marketlake.lake import Lake

SEGMENT_MODEL = "segment_kmeans"
PROFILES, FEATURES = catalog.SEGMENT_PROFILES, catalog.USER_FEATURES
RULES, CROSS_SELL = catalog.ASSOCIATION_RULES, catalog.ITEM_CROSS_SELL
EVALUATION, RECOMMENDATIONS = catalog.RECOMMENDATION_EVALUATION, catalog.USER_RECOMMENDATIONS
AUDIENCE, EXPERIMENTS = catalog.CAMPAIGN_AUDIENCE, catalog.EXPERIMENT_RESULTS
MODELS, JOB_RUNS, ITEMS = catalog.MODELS, catalog.JOB_RUNS, catalog.SILVER_ITEMS
SCORES = catalog.PURCHASE_PROPENSITY
PROPENSITY_EVALUATION, PROPENSITY_DECILES = catalog.PROPENSITY_EVALUATION, catalog.PROPENSITY_DECILES


@dataclass(frozen=True)
class Absent:
    """Why a section has no data: the table is missing, or has no rows for the run date."""

    message: str


Frame = pd.DataFrame | Absent


@dataclass(frozen=True)
class SegmentsData:
    profiles: Frame  # gold.segment_profiles of the date, by segment_id


@dataclass(frozen=True)
class SilhouetteData:
    scores: Frame  # k, silhouette, stability, chosen: of the segment model the profiles came from


@dataclass(frozen=True)
class RfmData:
    labels: Frame  # rfm_label, users, orders (mean frequency), revenue (mean monetary)
    grid: Frame  # r_score, f_score, count: buyers only


@dataclass(frozen=True)
class RulesData:
    rules: Frame  # the top rules by lift: antecedent, consequent (items joined by " + "), support, confidence, lift
    summary: Frame  # one row: rules, max_lift, mean_confidence
    cross_sell_items: Frame  # one row: items (with a cross-sell list)
    item_names: dict[str, str]  # item_id -> title (or category) of the items in `rules`


@dataclass(frozen=True)
class RecommendationsData:
    evaluation: Frame  # gold.recommendation_evaluation of the date
    sources: Frame  # source, users, rows of gold.user_recommendations


@dataclass(frozen=True)
class AudiencesData:
    audience: Frame  # per campaign: channel, control_share, audience, treatment, control, with_items, with_cross_sell
    offers: Frame  # campaign_id, offer, users


@dataclass(frozen=True)
class ExperimentsData:
    results: Frame  # gold.experiment_results of the date, controls first within a metric


@dataclass(frozen=True)
class PropensityData:
    evaluation: Frame  # gold.propensity_evaluation of the date, one row per candidate, the chosen one first
    deciles: Frame  # gold.propensity_deciles of the date (the validation cutoff's users), by model and decile
    # Per decile of the run date's scores: model, horizon_days, decile, users, mean_p, min_p, max_p and
    # expected_buyers (the sum of p_purchase).
    scores: Frame


@dataclass(frozen=True)
class ReportData:
    run_date: dt.date
    lake_root: str
    segments: SegmentsData
    silhouette: SilhouetteData
    rfm: RfmData
    rules: RulesData
    recommendations: RecommendationsData
    audiences: AudiencesData
    experiments: ExperimentsData
    propensity: PropensityData
    runs: Frame  # job, status, ended_at, seconds: the latest run of each job for the date


def dated(lake: Lake, source: catalog.Table, run_date: dt.date) -> DataFrame | Absent:
    """The table's rows for the run date, or why there are none."""
    table, job = source.name, source.written_by[0]
    if not lake.exists(table):
        return Absent(
            f"{table} is absent from this lake: the {job} job makes it (./spark-submit.sh {job} --run-date {run_date})."
        )
    frame = lake.read_as_of(table, run_date)
    if frame.limit(1).count() == 0:
        latest_row = lake.read(table).agg(F.max("as_of_date")).first()
        assert latest_row is not None  # an aggregate without groups has one row
        latest = latest_row[0]
        where = f"its latest date is {latest}" if latest else "it is empty"
        return Absent(f"{table} has no rows for {run_date} ({where}): run {job} for {run_date}.")
    return frame


def small(frame: DataFrame | Absent, make: Callable[[DataFrame], DataFrame]) -> Frame:
    """Apply an aggregate and bring its (few) rows to the driver."""
    return frame if isinstance(frame, Absent) else make(frame).toPandas()


def gather(lake: Lake, run_date: dt.date, top_rules: int = 15) -> ReportData:
    """Every figure the report shows."""
    segments = gather_segments(lake, run_date)
    return ReportData(
        run_date=run_date,
        lake_root=lake.root,
        segments=segments,
        silhouette=SilhouetteData(silhouettes(lake, segments.profiles, run_date)),
        rfm=gather_rfm(lake, run_date),
        rules=gather_rules(lake, run_date, top_rules),
        recommendations=gather_recommendations(lake, run_date),
        audiences=gather_audiences(lake, run_date),
        experiments=gather_experiments(lake, run_date),
        propensity=gather_propensity(lake, run_date),
        runs=job_runs(lake, run_date),
    )


def gather_segments(lake: Lake, run_date: dt.date) -> SegmentsData:
    return SegmentsData(small(dated(lake, PROFILES, run_date), lambda f: f.orderBy("segment_id")))


def gather_rfm(lake: Lake, run_date: dt.date) -> RfmData:
    features = dated(lake, FEATURES, run_date)
    labels = small(
        features,
        lambda f: f.groupBy("rfm_label").agg(
            F.count("*").alias("users"),
            F.avg("frequency").alias("orders"),
            F.avg("monetary").alias("revenue"),
        ),
    )
    grid = small(
        features, lambda f: f.filter(F.col("r_score").isNotNull()).groupBy("r_score", "f_score").count()
    )
    return RfmData(labels, grid)


def gather_rules(lake: Lake, run_date: dt.date, top_rules: int) -> RulesData:
    rules = dated(lake, RULES, run_date)
    top = small(
        rules,
        lambda f: (
            f.orderBy(
                F.desc("lift"), F.desc("confidence"), F.desc("support"), F.col("antecedent").cast("string")
            )
            .limit(top_rules)
            .select(
                F.array_join("antecedent", " + ").alias("antecedent"),
                F.array_join("consequent", " + ").alias("consequent"),
                "support",
                "confidence",
                "lift",
            )
        ),
    )
    summary = small(
        rules,
        lambda f: f.agg(
            F.count("*").alias("rules"),
            F.max("lift").alias("max_lift"),
            F.avg("confidence").alias("mean_confidence"),
        ),
    )
    cross_sell_items = small(
        dated(lake, CROSS_SELL, run_date), lambda f: f.agg(F.countDistinct("item_id").alias("items"))
    )
    return RulesData(top, summary, cross_sell_items, item_names(lake, top))


def gather_recommendations(lake: Lake, run_date: dt.date) -> RecommendationsData:
    evaluation = small(dated(lake, EVALUATION, run_date), lambda f: f.drop("as_of_date"))
    sources = small(
        dated(lake, RECOMMENDATIONS, run_date),
        lambda f: (
            f.groupBy("source")
            .agg(F.countDistinct("user_id").alias("users"), F.count("*").alias("rows"))
            .orderBy("source")
        ),
    )
    return RecommendationsData(evaluation, sources)


def gather_audiences(lake: Lake, run_date: dt.date) -> AudiencesData:
    audience = dated(lake, AUDIENCE, run_date)
    campaigns = small(
        audience,
        lambda f: (
            f.groupBy("campaign_id", "channel", "control_share")
            .agg(
                F.count("*").alias("audience"),
                F.sum((F.col("group") == "treatment").cast("long")).alias("treatment"),
                F.sum((F.col("group") == "control").cast("long")).alias("control"),
                F.sum((F.size("items") > 0).cast("long")).alias("with_items"),
                F.sum((F.size("cross_sell") > 0).cast("long")).alias("with_cross_sell"),
            )
            .orderBy("campaign_id")
        ),
    )
    offers = small(
        audience,
        lambda f: (
            f.groupBy("campaign_id", "offer")
            .agg(F.count("*").alias("users"))
            .orderBy("campaign_id", F.desc("users"), "offer")
        ),
    )
    return AudiencesData(campaigns, offers)


def gather_experiments(lake: Lake, run_date: dt.date) -> ExperimentsData:
    return ExperimentsData(
        small(
            dated(lake, EXPERIMENTS, run_date),
            lambda f: f.orderBy("experiment_id", "cuped", "metric", F.desc("is_control"), "variant"),
        )
    )


def gather_propensity(lake: Lake, run_date: dt.date) -> PropensityData:
    evaluation = small(
        dated(lake, PROPENSITY_EVALUATION, run_date),
        lambda f: f.drop("as_of_date").orderBy(F.desc("chosen"), F.desc("average_precision"), "model"),
    )
    deciles = small(
        dated(lake, PROPENSITY_DECILES, run_date), lambda f: f.drop("as_of_date").orderBy("model", "decile")
    )
    p = F.col("p_purchase")
    scores = small(
        dated(lake, SCORES, run_date),
        lambda f: (
            f.groupBy("model", "horizon_days", "decile")
            .agg(
                F.count("*").alias("users"),
                F.avg(p).alias("mean_p"),
                F.min(p).alias("min_p"),
                F.max(p).alias("max_p"),
                F.sum(p).alias("expected_buyers"),
            )
            .orderBy("decile")
        ),
    )
    return PropensityData(evaluation, deciles, scores)


def silhouettes(lake: Lake, profiles: Frame, run_date: dt.date) -> Frame:
    """(k, silhouette, stability, chosen) of the segment model the run date's profiles came from (ops.models);
    stability is nan for models recorded before the job measured it."""
    if isinstance(profiles, Absent):
        return profiles
    versions = [v for v in profiles.model_version.dropna().unique()]
    if not versions:
        return Absent("the segments of this date come from no model (too few distinct users to segment).")
    if not lake.exists(MODELS):
        return Absent(f"{MODELS.name} is absent from this lake: the segment job records its models there.")
    row = (
        lake.read(MODELS)
        .filter((F.col("model_name") == SEGMENT_MODEL) & (F.col("model_version") == versions[0]))
        .orderBy(F.desc("created_at"))
        .select("metrics")
        .first()
    )
    if row is None:
        return Absent(
            f"{MODELS.name} has no row for model {SEGMENT_MODEL} {versions[0]}: run segment for {run_date}."
        )
    metrics: dict[str, float] = row.metrics  # map<string,double>
    ks = sorted(int(key[len("silhouette_k") :]) for key in metrics if key.startswith("silhouette_k"))
    scores: pd.DataFrame = pd.DataFrame(
        {
            "k": ks,
            "silhouette": [metrics[f"silhouette_k{k}"] for k in ks],
            "stability": [metrics.get(f"stability_k{k}", float("nan")) for k in ks],
            "chosen": [k == metrics.get("k") for k in ks],
        }
    )
    return scores


def item_names(lake: Lake, rules: Frame) -> dict[str, str]:
    """Titles (or category) of the items in the listed rules, from silver.items."""
    if isinstance(rules, Absent) or rules.empty or not lake.exists(ITEMS):
        return {}
    ids = sorted(
        {
            item
            for column in ("antecedent", "consequent")
            for text in rules[column]
            for item in text.split(" + ")
        }
    )
    items = lake.read(ITEMS).filter(F.col("item_id").isin(ids))
    title = F.coalesce(*[F.col(c) for c in ("title", "category") if c in items.columns], F.lit(""))
    return {
        row.item_id: row.name for row in items.select("item_id", title.alias("name")).collect()
    }  # a few dozen


def job_runs(lake: Lake, run_date: dt.date) -> Frame:
    """The latest run of each job for the run date."""
    table = JOB_RUNS.name
    if not lake.exists(table):
        return Absent(f"{table} is absent from this lake.")
    runs = lake.read(table).filter(F.col("run_date") == F.lit(run_date))
    latest = runs.groupBy("job").agg(
        F.max_by(F.struct("status", "ended_at", "seconds"), "ended_at").alias("last")
    )
    return latest.select("job", "last.status", "last.ended_at", "last.seconds").orderBy("ended_at").toPandas()

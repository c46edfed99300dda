"""KMeans customer segments over gold.user_features: the model, the choice of k, and the naming of segments.

The model is a Spark ML PipelineModel: a SQLTransformer (log1p of the heavy-tailed features, the others as
they are; a missing value counts as 0), a VectorAssembler, a StandardScaler (mean 0, unit variance) and
KMeans. The preprocessing is fitted once; then for every k tried (`k`, or `k_min`..`k_max` capped by the
data: at most the number of distinct feature rows and one less than the number of users) KMeans runs
`runs` times with seeds seed, seed+1, ... and the run with the lowest cost (within-cluster sum of squares)
is kept, because a single run can stop in a local optimum. The silhouette of each kept run (squared
Euclidean distance on the scaled features, Spark's ClusteringEvaluator) picks k: the highest wins, the
smaller k on a tie.

Segments are numbered by mean monetary value, highest first, and named from their profile against the
whole population by `name_segment` (rules in the README); each name comes with a marketing strategy.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans, KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake.config import SegmentConfig
from marketlake.features import NUMERIC

log = logging.getLogger("marketlake.segment")

# Features KMeans can use: the numeric columns of gold.user_features that are never null.
SEGMENT_FEATURES = [c for c in NUMERIC if c != "days_since_purchase"]
SCALED, CLUSTER = "_scaled", "_cluster"

HIGH_VALUE_LOYAL, LOYAL, OCCASIONAL = "high-value loyal", "loyal", "occasional buyers"
NEW, AT_RISK, DORMANT, WINDOW_SHOPPERS, EVERYONE = "new", "at risk", "dormant", "window shoppers", "everyone"
STRATEGIES = {
    HIGH_VALUE_LOYAL: "Reward and retain: VIP perks, early access and referral asks; no blanket discounts.",
    LOYAL: "Grow the basket: cross-sell from the favourite category and bundles, loyalty points toward VIP.",
    OCCASIONAL: "Raise frequency: replenishment and seasonal reminders, bundles and a next-order incentive.",
    NEW: "Onboard: welcome series, best-sellers of the first category bought, an offer on the second order.",
    AT_RISK: "Win back now: personal reminder of past purchases, a time-limited offer, ask what went wrong.",
    DORMANT: "Reactivate cheaply: email only with a strong offer; drop from paid audiences if no response.",
    WINDOW_SHOPPERS: "Convert browsing: cart and price-drop reminders, free-shipping threshold, reviews.",
    EVERYONE: "Too few distinct users to segment: address them as one audience.",
}


def log_transform(features: list[str], log_features: list[str]) -> SQLTransformer:
    def expression(name: str) -> str:
        value = f"coalesce(CAST(`{name}` AS DOUBLE), 0D)"
        value = f"log1p(greatest({value}, 0D))" if name in log_features else value
        return f"{value} AS `_in_{name}`"

    return SQLTransformer(statement=f"SELECT *, {', '.join(expression(f) for f in features)} FROM __THIS__")


def preprocessing(features: list[str], log_features: list[str]) -> Pipeline:
    return Pipeline(
        stages=[
            log_transform(features, log_features),
            VectorAssembler(inputCols=[f"_in_{f}" for f in features], outputCol="_assembled"),
            StandardScaler(inputCol="_assembled", outputCol=SCALED, withMean=True, withStd=True),
        ]
    )


def candidate_ks(settings: SegmentConfig, users: int, distinct: int) -> list[int]:
    """The k to try: the fixed k or k_min..k_max, none above `distinct` feature rows or `users` - 1 (a
    silhouette needs at least one cluster with two users); empty when not even k=2 fits."""
    cap = min(distinct, users - 1)
    if settings.k is not None:
        return [min(settings.k, cap)] if cap >= 2 else []
    return list(range(min(settings.k_min, cap), min(settings.k_max, cap) + 1)) if cap >= 2 else []


@dataclass
class Trial:
    """The kept (lowest-cost) KMeans run for one k."""

    k: int
    seed: int
    cost: float
    silhouette: float
    costs: list[float] = field(default_factory=list)  # every run's cost, in seed order


@dataclass
class Fitted:
    model: PipelineModel | None  # None: too few distinct users to segment
    trials: list[Trial]
    users: int
    distinct: int

    @property
    def chosen(self) -> Trial | None:
        scored = [t for t in self.trials if not math.isnan(t.silhouette)]
        if not scored:
            return self.trials[0] if len(self.trials) == 1 else None
        return max(scored, key=lambda t: (round(t.silhouette, 9), -t.k))


def silhouette(predictions: DataFrame) -> float:
    evaluator = ClusteringEvaluator(
        featuresCol=SCALED, predictionCol=CLUSTER, distanceMeasure="squaredEuclidean"
    )
    try:
        return evaluator.evaluate(predictions)
    except Exception as exc:  # fewer than two non-empty clusters: no silhouette, this k is not chosen
        log.warning(
            "segment | no silhouette: %s", str(exc).strip().splitlines()[0] if str(exc).strip() else exc
        )
        return float("nan")


def fit(data: DataFrame, settings: SegmentConfig, workers: int = 1) -> Fitted:
    """Fit the preprocessing once and KMeans for every candidate k and seed, `workers` fits at a time (Spark
    runs jobs from several threads side by side; each fit's result depends only on its data and seed).
    `data` should be persisted (every fit reads it), in a fixed order: the same rows in the same order and
    the same settings give the same model."""
    users = data.count()
    distinct = data.select(*settings.features).distinct().count()
    ks = candidate_ks(settings, users, distinct)
    if not ks:
        return Fitted(None, [], users, distinct)
    prep = preprocessing(settings.features, settings.log_features).fit(data)
    # Not persisted: KMeans then caches its own vectors with their norms; iterating over a cached DataFrame
    # instead decodes every row again on every iteration (2-4 times slower at 10^5 rows).
    scaled = prep.transform(data).select("user_id", SCALED)
    seeds = list(range(settings.seed, settings.seed + settings.runs))

    def kmeans(k: int, seed: int) -> tuple[float, int, KMeansModel]:
        model = KMeans(
            featuresCol=SCALED, predictionCol=CLUSTER, k=k, seed=seed, maxIter=settings.max_iter
        ).fit(scaled)
        return model.summary.trainingCost, seed, model

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        submitted = {k: [pool.submit(kmeans, k, seed) for seed in seeds] for k in ks}
        runs = {k: [future.result() for future in futures] for k, futures in submitted.items()}
        best = {k: min(found, key=lambda run: (run[0], run[1])) for k, found in runs.items()}
        silhouettes = {
            k: pool.submit(silhouette, model.transform(scaled)) for k, (_, _, model) in best.items()
        }
        trials = [
            Trial(k, best[k][1], best[k][0], silhouettes[k].result(), [run[0] for run in runs[k]]) for k in ks
        ]
    fitted = Fitted(None, trials, users, distinct)
    chosen = fitted.chosen
    if chosen is not None:
        fitted.model = PipelineModel(stages=[*prep.stages, best[chosen.k][2]])
    return fitted


# ---- profiles and names ----------------------------------------------------------------------------

PROFILE_MEANS = [f"mean_{c}" for c in NUMERIC]


def profile_aggregates() -> list[Column]:
    """Per-segment size, buyer share and means in the features' own units (decimal sums: exact, so the
    means do not depend on the order rows arrive in)."""
    means = [
        F.round(F.avg(F.col(c).cast("decimal(38,6)")).cast("double"), 4).alias(f"mean_{c}") for c in NUMERIC
    ]
    buyers = F.avg(F.when(F.col("frequency") > 0, 1).otherwise(0).cast("decimal(10,0)"))
    return [F.count("*").alias("size"), F.round(buyers.cast("double"), 4).alias("buyer_share"), *means]


def overall(profiles: list[dict[str, Any]]) -> dict[str, float]:
    """Population means from the per-segment means, weighted by size."""
    total = sum(p["size"] for p in profiles)
    keys = ["buyer_share", *PROFILE_MEANS]
    return {key: sum((p[key] or 0.0) * p["size"] for p in profiles) / total for key in keys}


def name_segment(profile: dict[str, Any], population: dict[str, float]) -> str:
    """A segment's name from its means against the population's (the README lists the rules)."""
    recency, population_recency = profile["mean_recency_days"], population["mean_recency_days"]
    lapsed = recency > 1.5 * population_recency
    if profile["buyer_share"] < 0.5:
        return DORMANT if lapsed else WINDOW_SHOPPERS
    if lapsed:
        return AT_RISK
    if profile["mean_tenure_days"] < 0.25 * population["mean_tenure_days"]:
        return NEW
    frequency, monetary = profile["mean_frequency"], profile["mean_monetary"]
    if frequency >= 2 * population["mean_frequency"] and monetary >= 2 * population["mean_monetary"]:
        return HIGH_VALUE_LOYAL
    return LOYAL if frequency >= population["mean_frequency"] else OCCASIONAL


def name_segments(profiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Profiles (one dict per cluster, with `_cluster`) -> the same with segment_id (by mean monetary,
    highest first), segment_name (unique: a repeated name gets " 2", " 3" in segment order), strategy."""
    population = overall(profiles)
    ordered = sorted(
        profiles, key=lambda p: (-p["mean_monetary"], -p["mean_frequency"], p["mean_recency_days"])
    )
    seen: dict[str, int] = {}
    named = []
    for segment_id, profile in enumerate(ordered):
        base = name_segment(profile, population)
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base} {seen[base]}"
        named.append(
            {**profile, "segment_id": segment_id, "segment_name": name, "strategy": STRATEGIES[base]}
        )
    return named


PROFILE_SCHEMA = T.StructType(
    [
        T.StructField("segment_id", T.IntegerType()),
        T.StructField("segment_name", T.StringType()),
        T.StructField("size", T.LongType()),
        T.StructField("share", T.DoubleType()),
        T.StructField("buyer_share", T.DoubleType()),
        *[T.StructField(name, T.DoubleType()) for name in PROFILE_MEANS],
        T.StructField("strategy", T.StringType()),
        T.StructField("silhouette", T.DoubleType()),
        T.StructField("k", T.IntegerType()),
        T.StructField("features", T.ArrayType(T.StringType())),
        T.StructField("model_version", T.StringType()),
    ]
)


def profiles_frame(
    spark: SparkSession,
    named: list[dict[str, Any]],
    users: int,
    silhouette: float | None,
    features: list[str],
    version: str | None,
    run_date: dt.date,
) -> DataFrame:
    """gold.segment_profiles rows of one run date from the named profiles."""
    rows = [
        (
            p["segment_id"],
            p["segment_name"],
            p["size"],
            round(p["size"] / users, 6),
            p["buyer_share"],
            *[p[name] for name in PROFILE_MEANS],
            p["strategy"],
            silhouette,
            len(named),
            list(features),
            version,
        )
        for p in named
    ]
    return spark.createDataFrame(rows, PROFILE_SCHEMA).withColumn("as_of_date", F.lit(run_date))


def assign(
    predictions: DataFrame, named: list[dict[str, Any]], version: str | None, run_date: dt.date
) -> DataFrame:
    """(user_id, _cluster) -> gold.user_segments rows: the cluster's segment id and name, the model version."""
    mapping = predictions.sparkSession.createDataFrame(
        [(p[CLUSTER], p["segment_id"], p["segment_name"]) for p in named],
        f"{CLUSTER} int, segment_id int, segment_name string",
    )
    return predictions.join(F.broadcast(mapping), CLUSTER).select(
        "user_id",
        "segment_id",
        "segment_name",
        F.lit(version).cast("string").alias("model_version"),
        F.lit(run_date).alias("as_of_date"),
    )

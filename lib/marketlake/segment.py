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
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans, KMeansModel
from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
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
    """One candidate k, searched on the sample: the kept (lowest-cost) KMeans run and its scores."""

    k: int
    seed: int
    cost: float  # of the kept run, on the sample
    silhouette: float  # of the kept run, on the sample
    stability: float = float("nan")  # median ARI between fits on two halves of the sample (nan: not measured)
    costs: list[float] = field(default_factory=list)  # every run's cost, in seed order
    stabilities: list[float] = field(default_factory=list)  # one ARI per halving


@dataclass
class Fitted:
    model: PipelineModel | None  # None: too few distinct users to segment
    trials: list[Trial]
    users: int
    distinct: int
    min_stability: float = 0.0
    sampled: int = 0  # users in the k search's sample
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of prepare, search and final

    @property
    def chosen(self) -> Trial | None:
        return choose_k(self.trials, self.min_stability)

    @property
    def reason(self) -> str:
        return choice_reason(self.trials, self.min_stability)


def stable(trial: Trial, min_stability: float) -> bool:
    return not math.isnan(trial.stability) and trial.stability >= min_stability


def choose_k(trials: list[Trial], min_stability: float) -> Trial | None:
    """The highest silhouette among the stable k's (the smaller k on a tie); when no k is stable, the highest
    silhouette of all. A lone candidate is chosen even without a silhouette."""
    scored = [t for t in trials if not math.isnan(t.silhouette)]
    if not scored:
        return trials[0] if len(trials) == 1 else None
    pool = [t for t in scored if stable(t, min_stability)] or scored
    return max(pool, key=lambda t: (round(t.silhouette, 9), -t.k))


def choice_reason(trials: list[Trial], min_stability: float) -> str:
    """One line saying why the chosen k was chosen (the log and the report show it)."""
    chosen = choose_k(trials, min_stability)
    if chosen is None:
        return "no k gave two non-empty segments"
    if len(trials) == 1:
        return f"k={chosen.k} is the only candidate"
    stable_ks = [t.k for t in trials if stable(t, min_stability)]
    if not stable_ks:
        return f"no k reached stability {min_stability}: the highest silhouette, k={chosen.k}"
    scored = [t for t in trials if not math.isnan(t.silhouette)]
    best = max(scored, key=lambda t: (round(t.silhouette, 9), -t.k))
    why = f"the highest silhouette among the stable k's ({', '.join(map(str, stable_ks))}: stability >= {min_stability})"
    if best.k != chosen.k:
        return f"{why}; k={best.k} had a higher silhouette but stability {best.stability:.3f}"
    return why


# ---- scores on the sample (small numpy arrays on the driver) ---------------------------------------


def nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """The index of each row's nearest centre (Euclidean), as KMeansModel assigns."""
    distances = (x * x).sum(axis=1)[:, None] - 2 * x @ centers.T + (centers * centers).sum(axis=1)[None, :]
    return np.asarray(distances.argmin(axis=1))


def silhouette_sq(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette with squared Euclidean distances in O(n k): the mean distance from a point to a
    cluster is |x|^2 - 2 x.mean_c + mean(|y|^2 over c), the formula of Spark's ClusteringEvaluator. A point
    alone in its cluster scores 0; nan with fewer than two non-empty clusters."""
    _, labels = np.unique(labels, return_inverse=True)
    k = int(labels.max()) + 1 if len(labels) else 0
    if k < 2:
        return float("nan")
    counts = np.bincount(labels, minlength=k).astype(float)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    norms = np.einsum("ij,ij->i", x, x)
    norm_sums = np.bincount(labels, weights=norms, minlength=k)
    mean_distance = norms[:, None] - 2 * (x @ (sums / counts[:, None]).T) + (norm_sums / counts)[None, :]
    rows = np.arange(len(x))
    own_count = counts[labels]
    a = np.where(own_count > 1, mean_distance[rows, labels] * own_count / np.maximum(own_count - 1, 1), 0.0)
    mean_distance[rows, labels] = np.inf
    b = mean_distance.min(axis=1)
    top = np.maximum(a, b)
    s = np.where((own_count > 1) & (top > 0), (b - a) / np.where(top > 0, top, 1.0), 0.0)
    return float(s.mean())


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings of the same rows (1: the same partition; about 0: chance)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)

    def pairs(n: np.ndarray) -> float:
        return float((n * (n - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    total = len(a) * (len(a) - 1) / 2
    expected = rows * cols / total if total else 0.0
    top = (rows + cols) / 2 - expected
    return 1.0 if top == 0 else float((index - expected) / top)


# ---- the fit ------------------------------------------------------------------------------------------


def take_sample(data: DataFrame, size: int, seed: int) -> DataFrame:
    """At most `size` rows, chosen by a hash of user_id and seed (the same users on every run whatever the
    partitioning), in one partition sorted by user_id: small fits run fastest without a shuffle per step."""
    rank = F.xxhash64("user_id", F.lit(seed))
    return data.orderBy(rank, "user_id").limit(size).coalesce(1).sortWithinPartitions("user_id")


def to_numpy(scaled: DataFrame) -> np.ndarray:
    vectors = scaled.select(vector_to_array(F.col(SCALED)).alias("v")).toPandas().v.to_list()
    return np.vstack(vectors) if vectors else np.zeros((0, 0))


def centers(model: KMeansModel) -> np.ndarray:
    return np.array(model.clusterCenters())


def lowest_cost(fits: list[Future[KMeansModel]]) -> KMeansModel:
    """The fit with the lowest cost (the first on a tie: fits are listed in seed order)."""
    models = [future.result() for future in fits]
    return min(models, key=lambda m: m.summary.trainingCost)


def fit(data: DataFrame, settings: SegmentConfig, workers: int = 1) -> Fitted:
    """Fit the preprocessing on everyone, search k on a sample of `sample_size` users, and fit KMeans with
    the chosen k on everyone, `workers` fits at a time (Spark runs jobs from several threads side by side;
    each fit's result depends only on its data and seed).

    On the sample, for each candidate k: `runs` KMeans runs (the lowest cost kept, and its silhouette), and
    `stability_splits` random halvings, each half fitted (`stability_runs` runs, the lowest cost kept) and the
    two fits' assignments of the whole sample compared by the adjusted Rand index; the median over the
    halvings is the stability (a k that cuts a real group arbitrarily gets a low one). The
    chosen k: the highest silhouette among the k's with stability >= min_stability (`choose_k`).

    `data` should be persisted (every fit reads it), in a fixed order: the same rows in the same order and
    the same settings give the same model."""
    started = time.perf_counter()
    users = data.count()
    distinct = data.select(*settings.features).distinct().count()
    ks = candidate_ks(settings, users, distinct)
    if not ks:
        return Fitted(None, [], users, distinct, settings.min_stability)
    prep = preprocessing(settings.features, settings.log_features).fit(data)
    seconds = {"prepare": time.perf_counter() - started}
    started = time.perf_counter()

    def kmeans(frame: DataFrame, k: int, seed: int) -> KMeansModel:
        return KMeans(
            featuresCol=SCALED, predictionCol=CLUSTER, k=k, seed=seed, maxIter=settings.max_iter
        ).fit(frame)

    sample = take_sample(data, settings.sample_size, settings.seed).persist()
    try:
        # Not persisted: KMeans then caches its own vectors with their norms; iterating over a cached
        # DataFrame instead decodes every row again on every iteration (2-4 times slower at 10^5 rows).
        scaled_sample = prep.transform(sample).select("user_id", SCALED)
        points = to_numpy(scaled_sample)
        halves = [
            scaled_sample.randomSplit([0.5, 0.5], seed=settings.seed + i)
            for i in range(settings.stability_splits)
        ]
        seeds = list(range(settings.seed, settings.seed + settings.runs))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            runs = {k: [pool.submit(kmeans, scaled_sample, k, seed) for seed in seeds] for k in ks}
            half_seeds = list(range(settings.seed, settings.seed + settings.stability_runs))
            splits = {
                k: [
                    [[pool.submit(kmeans, half, k, seed) for seed in half_seeds] for half in pair]
                    for pair in halves
                ]
                for k in ks
            }
            trials = []
            for k in ks:
                models = [future.result() for future in runs[k]]
                costs = [m.summary.trainingCost for m in models]
                best = min(range(len(models)), key=lambda i: (costs[i], seeds[i]))
                score = silhouette_sq(points, nearest(points, centers(models[best])))
                agreements = [
                    adjusted_rand(*(nearest(points, centers(lowest_cost(fits))) for fits in pair))
                    for pair in splits[k]
                ]
                trials.append(
                    Trial(k, seeds[best], costs[best], score, float(np.median(agreements)), costs, agreements)
                )
    finally:
        sample.unpersist()
    seconds["search"] = time.perf_counter() - started
    fitted = Fitted(None, trials, users, distinct, settings.min_stability, len(points), seconds)
    chosen = fitted.chosen
    started = time.perf_counter()
    if chosen is not None:
        scaled = prep.transform(data).select("user_id", SCALED)
        final_seeds = range(chosen.seed, chosen.seed + settings.final_runs)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            finals = list(pool.map(lambda seed: kmeans(scaled, chosen.k, seed), final_seeds))
        final = min(finals, key=lambda m: m.summary.trainingCost)
        fitted.model = PipelineModel(stages=[*prep.stages, final])
    seconds["final"] = time.perf_counter() - started
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

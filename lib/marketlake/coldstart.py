"""Cold start: recommending items nobody has interacted with yet (issue 17), from their content.

An item ALS has never seen has no factors. Its content vector (marketlake.content.item_vectors, the model of
gold.similar_items: title words and tags, category, brand, price) places it:

- Regression: a ridge regression, fitted on the warm items, from an item's content vector to its ALS
  factors and to two priors: popularity (log1p of its users) and appeal (the mean over its users of their
  strength for it minus their mean strength: how much more than usual its users engage with it). It is
  solved in closed form on the driver: the Gram matrix of [content, 1, targets] is summed by Spark
  (RowMatrix), only a (d + 1 + rank + 2)^2 matrix reaches the driver, and one solve gives every target at
  once (MLlib's LinearRegression would be one distributed fit per factor, 32-64 fits).
- User content profile: the mean of the content vectors of the user's items, each weighted by the user's
  strength for it minus their mean strength (items engaged with more than usual pull the profile
  towards them, less than usual push it away). Its dot product with a cold item's vector is `profile`.
- Blend: two logistic regressions fitted on a validation split of the warm items (held out of a second
  ALS fit as pseudo-cold; the real cold items are never seen): P(the user interacts with the item) from
  the ALS-scale score `als_score` = user factors . predicted item factors and the popularity prior, and
  P(the user engages more than usual | interacts) from `profile` and the appeal prior. The cold score is
  log P(interacts) + log P(engages | interacts).
- Merge: each user's best `max_per_list` cold items by that score, never an item the user has any event
  for, enter the list where their `als_score` places them among the user's ALS rows (the same scale);
  fallback rows come after them; the warm rows keep their order, and the list is cut at top_n again.
- The recommend job's step (fit_cold_run): cold items are the active items with fewer than `min_users`
  users in the window; the fitted model is saved as JSON beside the run's other models.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import (
    VectorAssembler,
)
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from marketlake.config import ColdStartConfig
from marketlake.content import active_items, item_vectors
from marketlake.errors import UsageError
from marketlake.models import model_version
from marketlake.recommend import (
    ALS_SOURCE,
    ITEM,
    ITEM_INDEX,
    RANK,
    SCORE,
    SCORE_DECIMALS,
    SOURCE,
    STRENGTH,
    USER,
    USER_INDEX,
    Recommender,
)

if TYPE_CHECKING:
    from marketlake.runner import JobContext

CONTENT_SOURCE = "content"
FEATURES, FACTORS = "features", "factors"
DIM, VALUE = "dim", "value"
ALS_SCORE, PROFILE, POPULARITY, APPEAL = "als_score", "profile", "popularity", "appeal"
CENTRED = "centred"

# Fits ALS on a subset of the interactions (user_index, item_index, strength) with the job's parameters.
FitFactors = Callable[[DataFrame], ALSModel]


# ---- content vectors ------------------------------------------------------------------------------------------


def vectors_long(vectors: DataFrame) -> DataFrame:
    """(item_id, dim, value): the non-zero entries of each item's vector."""
    exploded = vectors.select(ITEM, F.posexplode(vector_to_array(F.col(FEATURES))).alias(DIM, VALUE))
    return exploded.filter(F.col(VALUE) != 0)


# ---- the regression from content to ALS factors and priors ------------------------------------------------------


def centred(pairs: DataFrame) -> DataFrame:
    """pairs with `centred` = strength - the user's mean strength."""
    return pairs.withColumn(CENTRED, F.col(STRENGTH) - F.avg(STRENGTH).over(Window.partitionBy(USER)))


def item_targets(pairs: DataFrame, item_factors: DataFrame) -> DataFrame:
    """(item_id, targets array<double>): the item's ALS factors, then its popularity (log1p of its users) and
    appeal (mean centred strength of its users). item_factors: (item_id, factors)."""
    priors = (
        pairs.transform(centred)
        .groupBy(ITEM)
        .agg(F.log1p(F.count(USER)).alias(POPULARITY), F.avg(CENTRED).alias(APPEAL))
    )
    targets = F.concat(
        F.col(FACTORS).cast("array<double>"), F.array(F.col(POPULARITY).cast("double"), F.col(APPEAL))
    )
    return item_factors.join(priors, ITEM).select(ITEM, targets.alias("targets"))


@dataclass(frozen=True)
class ContentRegression:
    weights: np.ndarray  # (dims + 1) x (rank + 2): content dims, then the intercept
    rank: int


def fit_regression(vectors: DataFrame, targets: DataFrame, ridge: float, max_dim: int) -> ContentRegression:
    """Ridge regression of the targets (item_targets) on the content vectors of the same items; the intercept
    is not penalised."""
    from pyspark.mllib.linalg import Vectors as MLlibVectors
    from pyspark.mllib.linalg.distributed import RowMatrix

    dims = vectors.select(FEATURES).first()
    if dims is None:
        raise UsageError("cold start: no content vectors")
    d = dims[0].size
    if d > max_dim:
        raise UsageError(
            f"recommend.cold_start.max_feature_dim: content vectors have {d} dims, more than {max_dim}"
        )
    rows = vectors.join(targets, ITEM).select(
        FEATURES, F.lit(1.0).alias("_one"), array_to_vector(F.col("targets")).alias("_targets")
    )
    assembled = VectorAssembler(inputCols=[FEATURES, "_one", "_targets"], outputCol="_row").transform(rows)
    gram = RowMatrix(assembled.select("_row").rdd.map(lambda r: MLlibVectors.fromML(r[0])))
    full = gram.computeGramianMatrix().toArray()
    xtx, xty = full[: d + 1, : d + 1], full[: d + 1, d + 1 :]
    penalty = np.eye(d + 1) * ridge
    penalty[d, d] = 0.0
    weights = np.linalg.solve(xtx + penalty, xty)
    return ContentRegression(weights=weights, rank=xty.shape[1] - 2)


def predict(spark: SparkSession, regression: ContentRegression, long_vectors: DataFrame) -> DataFrame:
    """(item_id, factors array<double>, popularity, appeal) predicted from the items' content."""
    dims, targets = regression.weights.shape
    weights = spark.createDataFrame(
        [(int(i), int(t), float(regression.weights[i, t])) for i in range(dims) for t in range(targets)],
        f"{DIM} int, _target int, _weight double",
    )
    intercept = (
        long_vectors.select(ITEM).distinct().select(ITEM, F.lit(dims - 1).alias(DIM), F.lit(1.0).alias(VALUE))
    )
    values = (
        long_vectors.unionByName(intercept)
        .join(F.broadcast(weights), DIM)
        .groupBy(ITEM, "_target")
        .agg(F.sum(F.col(VALUE) * F.col("_weight")).alias("_v"))
        .groupBy(ITEM)
        .agg(F.sort_array(F.collect_list(F.struct("_target", "_v"))).alias("_all"))
        .select(ITEM, F.transform("_all", lambda s: s["_v"]).alias("_all"))
    )
    rank = regression.rank
    return values.select(
        ITEM,
        F.slice("_all", 1, rank).alias(FACTORS),
        F.col("_all")[rank].alias(POPULARITY),
        F.col("_all")[rank + 1].alias(APPEAL),
    )


# ---- per-user features of cold items ----------------------------------------------------------------------------


def user_profiles(pairs: DataFrame, long_vectors: DataFrame) -> DataFrame:
    """(user_id, dim, value): mean over the user's items of the item's vector x the user's centred strength."""
    weighted = pairs.transform(centred).withColumn("_n", F.count(ITEM).over(Window.partitionBy(USER)))
    return (
        weighted.join(long_vectors, ITEM)
        .groupBy(USER, DIM)
        .agg(F.sum(F.col(CENTRED) * F.col(VALUE) / F.col("_n")).alias(VALUE))
    )


def dot(left: str, right: str) -> Column:
    products = F.zip_with(F.col(left), F.col(right), lambda a, b: a * b)
    return F.aggregate(products, F.lit(0.0).cast("double"), lambda acc, x: acc + x)


def cold_features(
    user_factors: DataFrame, profiles: DataFrame, predicted: DataFrame, cold_long: DataFrame
) -> DataFrame:
    """(user_id, item_id, als_score, profile, popularity, appeal) for every user with factors and every
    predicted (cold) item. user_factors: (user_id, factors)."""
    pairs = user_factors.select(USER, F.col(FACTORS).cast("array<double>").alias("_u")).crossJoin(
        predicted.select(ITEM, F.col(FACTORS).alias("_v"), POPULARITY, APPEAL)
    )
    scored = pairs.select(USER, ITEM, dot("_u", "_v").alias(ALS_SCORE), POPULARITY, APPEAL)
    matched = (
        profiles.join(cold_long.withColumnRenamed(VALUE, "_x"), DIM)
        .groupBy(USER, ITEM)
        .agg(F.sum(F.col(VALUE) * F.col("_x")).alias(PROFILE))
    )
    return scored.join(matched, [USER, ITEM], "left").fillna(0.0, [PROFILE])


# ---- the blend ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Logit:
    """log P = log sigmoid(intercept + coefficients . inputs); all zeros: a constant."""

    inputs: tuple[str, str]
    coefficients: tuple[float, float]
    intercept: float

    def log_probability(self) -> Column:
        z = F.lit(self.intercept) + sum(
            (F.lit(c) * F.col(name) for name, c in zip(self.inputs, self.coefficients, strict=True)),
            F.lit(0.0),
        )
        # log sigmoid(z), stable for large |z|.
        return -(F.greatest(-z, F.lit(0.0)) + F.log1p(F.exp(-F.abs(z))))


@dataclass(frozen=True)
class Blend:
    interacts: Logit  # P(interacts) from als_score and popularity
    engages: Logit  # P(strength above the user's mean | interacts) from profile and appeal

    def score(self) -> Column:
        return self.interacts.log_probability() + self.engages.log_probability()


def fit_logit(frame: DataFrame, inputs: tuple[str, str], label: Column) -> Logit:
    labelled = VectorAssembler(inputCols=list(inputs), outputCol="_x").transform(
        frame.select(*inputs, label.cast("double").alias("_label"))
    )
    classes = labelled.select("_label").distinct().count()
    if classes < 2:  # nothing to tell apart: a constant, the other part of the blend decides
        return Logit(inputs, (0.0, 0.0), 0.0)
    model = LogisticRegression(featuresCol="_x", labelCol="_label", regParam=1e-4, maxIter=100).fit(labelled)
    a, b = (float(c) for c in model.coefficients.toArray())
    return Logit(inputs, (round(a, 9), round(b, 9)), round(float(model.intercept), 9))


def fit_blend(features: DataFrame, validation_pairs: DataFrame) -> Blend:
    """features: cold_features of the validation items; validation_pairs: (user_id, item_id, centred) of
    those items (centred against the user's mean over all their items)."""
    labelled = features.join(validation_pairs.select(USER, ITEM, CENTRED), [USER, ITEM], "left")
    interacts = fit_logit(labelled, (ALS_SCORE, POPULARITY), F.col(CENTRED).isNotNull())
    engages = fit_logit(labelled.filter(F.col(CENTRED).isNotNull()), (PROFILE, APPEAL), F.col(CENTRED) > 0)
    return Blend(interacts, engages)


# ---- the whole model: fitted on warm items, scoring cold ones -------------------------------------------------


def factors_by_id(model: ALSModel, users: DataFrame, items: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(user_id, factors), (item_id, factors) of an ALS model numbered by users (user_id, user_index) and
    items (item_id, item_index)."""
    user_factors = model.userFactors.withColumnRenamed("id", USER_INDEX).join(users, USER_INDEX)
    item_factors = model.itemFactors.withColumnRenamed("id", ITEM_INDEX).join(items, ITEM_INDEX)
    return (
        user_factors.select(USER, F.col("features").alias(FACTORS)),
        item_factors.select(ITEM, F.col("features").alias(FACTORS)),
    )


def validation_items(pairs: DataFrame, fraction: float, seed: int) -> DataFrame:
    """(item_id): a seeded hash picks `fraction` of the warm items."""
    picked = F.abs(F.xxhash64(F.lit(seed), F.col(ITEM))) % 10_000 < F.lit(int(fraction * 10_000))
    return pairs.select(ITEM).distinct().filter(picked)


@dataclass
class ColdModel:
    blend: Blend
    regression: ContentRegression


def fit_cold_model(
    spark: SparkSession,
    pairs: DataFrame,
    vectors: DataFrame,
    users: DataFrame,
    items: DataFrame,
    fit_factors: FitFactors,
    settings: ColdStartConfig,
    seed: int,
) -> ColdModel:
    """Fits the blend on pseudo-cold validation items (ALS refitted without them) and the regression on
    every warm item of the full model. pairs: (user_id, item_id, strength); users, items: the numbering."""
    held_out = validation_items(pairs, settings.validation_fraction, seed)
    kept = pairs.join(held_out, ITEM, "left_anti")
    indexed = kept.join(users, USER).join(items, ITEM).select(USER_INDEX, ITEM_INDEX, STRENGTH)
    model = fit_factors(indexed)
    user_factors, item_factors = factors_by_id(model, users, items)
    long_vectors = vectors_long(vectors)
    regression = fit_regression(
        vectors, item_targets(kept, item_factors), settings.ridge, settings.max_feature_dim
    )
    held_out_long = long_vectors.join(held_out, ITEM, "left_semi")
    features = cold_features(
        user_factors,
        user_profiles(kept, long_vectors),
        predict(spark, regression, held_out_long),
        held_out_long,
    )
    held_out_pairs = pairs.transform(centred).join(held_out, ITEM, "left_semi")
    return ColdModel(blend=fit_blend(features, held_out_pairs), regression=regression)


def full_regression(
    pairs: DataFrame,
    vectors: DataFrame,
    model: ALSModel,
    users: DataFrame,
    items: DataFrame,
    settings: ColdStartConfig,
) -> ContentRegression:
    """The regression fitted on every warm item of `model` (the run's ALS), the one that scores cold items."""
    _, item_factors = factors_by_id(model, users, items)
    return fit_regression(
        vectors, item_targets(pairs, item_factors), settings.ridge, settings.max_feature_dim
    )


def cold_scores(
    spark: SparkSession,
    blend: Blend,
    regression: ContentRegression,
    pairs: DataFrame,
    vectors: DataFrame,
    model: ALSModel,
    users: DataFrame,
    items: DataFrame,
    cold_items: DataFrame,
) -> DataFrame:
    """(user_id, item_id, score, als_score, profile, popularity, appeal) for every user of the model and
    every cold item (item_id); `regression`: full_regression of the same model, the blend applied."""
    user_factors, _ = factors_by_id(model, users, items)
    long_vectors = vectors_long(vectors)
    cold_long = long_vectors.join(cold_items, ITEM, "left_semi")
    features = cold_features(
        user_factors, user_profiles(pairs, long_vectors), predict(spark, regression, cold_long), cold_long
    )
    return features.select(
        USER,
        ITEM,
        F.round(blend.score(), SCORE_DECIMALS).alias(SCORE),
        F.round(ALS_SCORE, SCORE_DECIMALS).alias(ALS_SCORE),
        PROFILE,
        POPULARITY,
        APPEAL,
    )


# ---- the merge into the lists ----------------------------------------------------------------------------------


def merge_cold(
    rows: DataFrame, cold: DataFrame, touched: DataFrame, max_per_list: int, top_n: int
) -> DataFrame:
    """gold.user_recommendations rows with cold items merged: each user's best max_per_list cold items by
    score (cold: user_id, item_id, score, als_score), none the user has an event for (touched: user_id,
    item_id), placed by als_score among the user's ALS rows (before the fallbacks); warm rows keep their
    order; ranks 1..top_n again. A cold row's score is its als_score (the scale of the ALS rows)."""
    if max_per_list == 0:
        return rows
    best = (
        cold.join(touched.select(USER, ITEM).distinct(), [USER, ITEM], "left_anti")
        .join(rows.select(USER, ITEM), [USER, ITEM], "left_anti")
        .withColumn("_n", F.row_number().over(Window.partitionBy(USER).orderBy(F.desc(SCORE), F.col(ITEM))))
        .filter(F.col("_n") <= max_per_list)
    )
    template = rows.select("model_version", "as_of_date").limit(1)
    listed = rows.select(USER).distinct()
    entering = (
        best.join(listed, USER, "left_semi")
        .crossJoin(template)
        .select(
            USER,
            F.lit(None).cast("int").alias(RANK),
            ITEM,
            F.col(ALS_SCORE).alias(SCORE),
            F.lit(CONTENT_SOURCE).alias(SOURCE),
            "model_version",
            "as_of_date",
        )
    )
    merged = rows.withColumn("_warm", F.lit(0)).unionByName(entering.withColumn("_warm", F.lit(1)))
    is_ranked_by_score = F.col(SOURCE).isin(ALS_SOURCE, CONTENT_SOURCE)
    order = [
        F.when(is_ranked_by_score, 0).otherwise(1),
        F.when(is_ranked_by_score, F.col(SCORE)).desc(),
        F.col("_warm"),
        F.col(RANK),
        F.col(ITEM),
    ]
    window = Window.partitionBy(USER).orderBy(*order)
    return (
        merged.withColumn("_rank", F.row_number().over(window))
        .filter(F.col("_rank") <= top_n)
        .select(
            USER,
            F.col("_rank").cast("int").alias(RANK),
            ITEM,
            F.col(SCORE).cast("double").alias(SCORE),
            SOURCE,
            "model_version",
            "as_of_date",
        )
    )


# ---- the recommend job's step -------------------------------------------------------------------------------------

MODEL_NAME = "recommend_cold_start"
MODEL_FILE = "cold_start.json"


def cold_items_of(catalogue: DataFrame, pairs: DataFrame, min_users: int) -> DataFrame:
    """(item_id): the active items of the catalogue with fewer than `min_users` distinct users in the
    interactions (with the default 1: the items ALS does not know)."""
    known = (
        pairs.groupBy(ITEM).agg(F.countDistinct(USER).alias("_users")).filter(F.col("_users") >= min_users)
    )
    return active_items(catalogue).select(ITEM).join(known.select(ITEM), ITEM, "left_anti")


@dataclass
class ColdRun:
    """The run's fitted cold-start model: the scores of its cold items and what ops.models records."""

    scores: DataFrame  # cold_scores
    cold_items: int
    version: str
    path: str
    params: dict[str, Any]
    metrics: dict[str, float]


def fit_cold_run(
    ctx: JobContext,
    settings: ColdStartConfig,
    content: PipelineModel,
    catalogue: DataFrame,
    pairs: DataFrame,
    recommender: Recommender,
    fit_factors: FitFactors,
    versions: dict[str, str | None],
    seed: int,
) -> ColdRun | None:
    """Fits the cold model of the run (the blend on pseudo-cold warm items, the regression on all warm items
    of the run's ALS model), saves it to models/recommend_cold_start/<version>/cold_start.json and scores
    the cold items for every user of the ALS model. None without cold items. `versions`: the ALS and
    content model versions the cold model builds on (part of its params)."""
    cold_items = cold_items_of(catalogue, pairs, settings.min_users)
    count = cold_items.count()
    if count == 0:
        ctx.note("cold start: no cold items (every active item has interactions)")
        return None
    started = time.perf_counter()
    params: dict[str, Any] = {
        "model": "cold-start-hybrid",
        **settings.model_dump(),
        "seed": seed,
        **{f"{name}_model_version": version for name, version in sorted(versions.items())},
    }
    version = model_version(ctx.run_date, params)
    vectors = item_vectors(content, catalogue)
    model, users, items = recommender.model, recommender.users, recommender.items
    strengths = pairs.select(USER, ITEM, STRENGTH)
    fitted = fit_cold_model(ctx.spark, strengths, vectors, users, items, fit_factors, settings, seed)
    regression = full_regression(strengths, vectors, model, users, items, settings)
    path = ctx.lake.model_path(MODEL_NAME, version)
    ctx.lake.files.write_text(f"{path}/{MODEL_FILE}", model_json(fitted.blend, regression))
    scores = cold_scores(
        ctx.spark, fitted.blend, regression, strengths, vectors, model, users, items, cold_items
    )
    interacts, engages = fitted.blend.interacts, fitted.blend.engages
    metrics = {
        "cold_items": count,
        "fit_seconds": round(time.perf_counter() - started, 3),
        "content_dims": regression.weights.shape[0] - 1,
        **{f"interacts_{n}": c for n, c in zip(interacts.inputs, interacts.coefficients, strict=True)},
        "interacts_intercept": interacts.intercept,
        **{f"engages_{n}": c for n, c in zip(engages.inputs, engages.coefficients, strict=True)},
        "engages_intercept": engages.intercept,
    }
    return ColdRun(scores, count, version, path, params, metrics)


def model_json(blend: Blend, regression: ContentRegression) -> str:
    """The fitted cold model as JSON: the two logits and the regression's weights (rows: content dims, then
    the intercept; columns: the ALS factors, then popularity and appeal)."""
    logits = {
        name: {
            "inputs": list(logit.inputs),
            "coefficients": list(logit.coefficients),
            "intercept": logit.intercept,
        }
        for name, logit in (("interacts", blend.interacts), ("engages", blend.engages))
    }
    weights = [[round(float(w), 12) for w in row] for row in regression.weights]
    return json.dumps({**logits, "rank": regression.rank, "weights": weights}, separators=(",", ":"))

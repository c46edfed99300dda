"""The candidate models (Spark MLlib pipelines over the set's features, and the BG/NBD baseline), their raw
scores, and the calibrators that turn a raw score into a probability.

Classifiers read FEATURES as log1p(value) (missing BG/NBD values as 0): counts and revenue are heavy-tailed,
trees do not mind and the logistic regression needs it. The BG/NBD baseline's raw score is
1 - exp(-expected purchases in the horizon), 0 for users who have not bought yet: it orders customers as
the expected purchases do (which rank CDNOW's holdout buyers better than BG/NBD's own P(any purchase):
AUC 0.763 against 0.747) and lies in [0, 1) for Platt scaling; calibration makes it a probability.
"""

from __future__ import annotations

from typing import Any

from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.ml.classification import GBTClassifier, LogisticRegression, RandomForestClassifier
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.regression import IsotonicRegression
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from marketlake.config import PROPENSITY_BASELINE, PropensityConfig
from marketlake.propensity.dataset import FEATURES, LABEL

BASELINE = PROPENSITY_BASELINE
CLASSIFIERS = ("logistic_regression", "random_forest", "gbt")
SCORE = "score"
PROBABILITY = "probability_calibrated"
# Calibrated probabilities stay this far from 0 and 1: an isotonic step with no buyer is not a certainty.
PROBABILITY_FLOOR = 1e-4


def model_inputs(frame: DataFrame) -> DataFrame:
    """Adds `x_<feature>` = log1p(feature, null as 0) for every feature."""
    return frame.withColumns({f"x_{c}": F.log1p(F.coalesce(F.col(c), F.lit(0.0))) for c in FEATURES})


def _assembler() -> VectorAssembler:
    return VectorAssembler(inputCols=[f"x_{c}" for c in FEATURES], outputCol="features")


def estimator(name: str, settings: PropensityConfig) -> Estimator[Any]:
    """The MLlib pipeline of a classifier candidate."""
    if name == "logistic_regression":
        scaled = StandardScaler(inputCol="features", outputCol="scaled", withMean=True)
        model: Estimator[Any] = LogisticRegression(
            featuresCol="scaled", labelCol=LABEL, regParam=settings.reg_param, maxIter=100
        )
        return Pipeline(stages=[_assembler(), scaled, model])
    if name == "random_forest":
        model = RandomForestClassifier(
            labelCol=LABEL,
            numTrees=settings.trees,
            maxDepth=settings.max_depth,
            minInstancesPerNode=settings.min_instances_per_node,
            seed=settings.seed,
        )
    elif name == "gbt":
        model = GBTClassifier(
            labelCol=LABEL,
            maxIter=settings.gbt_iterations,
            maxDepth=settings.gbt_depth,
            stepSize=settings.gbt_step,
            minInstancesPerNode=settings.min_instances_per_node,
            seed=settings.seed,
        )
    else:
        raise ValueError(f"no classifier {name!r}")
    return Pipeline(stages=[_assembler(), model])


def fit(name: str, settings: PropensityConfig, training: DataFrame) -> PipelineModel:
    fitted: PipelineModel = estimator(name, settings).fit(model_inputs(training))
    return fitted


def scores(name: str, model: Transformer | None, frame: DataFrame) -> DataFrame:
    """frame + `score` (the model's raw probability of a purchase); the baseline needs no model."""
    if name == BASELINE:
        expected = F.coalesce(F.col("expected_purchases"), F.lit(0.0))
        return frame.withColumn(SCORE, F.lit(1.0) - F.exp(-expected))
    assert model is not None
    scored = model.transform(model_inputs(frame))
    return scored.select(*frame.columns, vector_to_array(F.col("probability"))[1].alias(SCORE))


def calibrator(method: str, scored: DataFrame) -> Transformer:
    """Fits score -> probability on labelled scores: isotonic regression, or Platt scaling (a logistic
    regression on the score's log-odds)."""
    if method == "isotonic":
        isotonic: Transformer = IsotonicRegression(
            featuresCol=SCORE, labelCol=LABEL, predictionCol=PROBABILITY
        ).fit(scored)
        return isotonic
    odds = VectorAssembler(inputCols=["_log_odds"], outputCol="_odds")
    platt = LogisticRegression(featuresCol="_odds", labelCol=LABEL, probabilityCol="_platt", regParam=0.0)
    return Pipeline(stages=[odds, platt]).fit(scored.transform(_with_log_odds))


def _with_log_odds(frame: DataFrame) -> DataFrame:
    p = F.least(F.greatest(F.col(SCORE), F.lit(1e-6)), F.lit(1 - 1e-6))
    return frame.withColumn("_log_odds", F.log(p / (F.lit(1.0) - p)))


def calibrate(model: Transformer, scored: DataFrame) -> DataFrame:
    """scored + `probability_calibrated`, kept within [PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR]."""
    columns = scored.columns
    if isinstance(model, PipelineModel):  # Platt
        out = model.transform(scored.transform(_with_log_odds))
        out = out.withColumn(PROBABILITY, vector_to_array(F.col("_platt"))[1])
    else:
        out = model.transform(scored)
    bounded = F.least(F.greatest(F.col(PROBABILITY), F.lit(PROBABILITY_FLOOR)), F.lit(1 - PROBABILITY_FLOOR))
    return out.select(*columns, bounded.alias(PROBABILITY))


def cross_calibrated(method: str, scored: DataFrame, folds: int = 2) -> DataFrame:
    """Every row's calibrated probability from a calibrator fitted on the other folds (users split by a hash
    of their id), so metrics of calibrated probabilities are not measured on the calibrator's own data."""
    fold = F.abs(F.xxhash64("user_id")) % folds
    parts = []
    for k in range(folds):
        fitted = calibrator(method, scored.filter(fold != k))
        parts.append(calibrate(fitted, scored.filter(fold == k)))
    result = parts[0]
    for part in parts[1:]:
        result = result.unionByName(part)
    return result

"""Point-in-time propensity sets: for a cutoff date, every user known by then with features computed from
events up to the cutoff only, and (for training and validation) the label: a purchase in the `horizon`
days after it.

Features are gold.user_features' own (marketlake.features.user_features for the cutoff) plus the BG/NBD
model's p_alive and expected purchases in the horizon, fitted on the purchase history up to the cutoff
(frequency = distinct purchase days - 1, recency = days from the first to the last purchase day, age T =
days from the first purchase day to the cutoff). Users who have not bought yet have no BG/NBD values
(null in the table; 0 as model features).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from marketlake import bgnbd
from marketlake.features import NUMERIC, user_features

LABEL = "label"
BGNBD_COLUMNS = ["p_alive", "expected_purchases"]
# What the classifiers see, log1p-transformed (all are >= 0).
FEATURES = [*NUMERIC, "p_alive", "expected_purchases"]
HISTORY = ["repeat_days", "recency_span", "age"]


@dataclass(frozen=True)
class PropensitySet:
    cutoff: dt.date
    frame: DataFrame  # user_id, FEATURES, BGNBD_COLUMNS (nullable), [label]
    bgnbd: bgnbd.BgNbd | None  # None: too few repeat buyers to fit


def purchase_history(events: DataFrame, cutoff: dt.date) -> DataFrame:
    """(user_id, repeat_days, recency_span, age) in days for every user with a purchase up to the cutoff."""
    days = (
        events.filter((F.col("event_type") == "purchase") & (F.col("event_date") <= F.lit(cutoff)))
        .groupBy("user_id")
        .agg(
            F.min("event_date").alias("_first"),
            F.max("event_date").alias("_last"),
            F.size(F.collect_set("event_date")).alias("_days"),
        )
    )
    return days.select(
        "user_id",
        (F.col("_days") - 1).cast("double").alias("repeat_days"),
        F.datediff("_last", "_first").cast("double").alias("recency_span"),
        F.datediff(F.lit(cutoff), "_first").cast("double").alias("age"),
    )


def buyers_in(events: DataFrame, after: dt.date, horizon_days: int) -> DataFrame:
    """(user_id) of users with a purchase dated in (after, after + horizon]."""
    end = after + dt.timedelta(days=horizon_days)
    return (
        events.filter(
            (F.col("event_type") == "purchase")
            & (F.col("event_date") > F.lit(after))
            & (F.col("event_date") <= F.lit(end))
        )
        .select("user_id")
        .distinct()
    )


def bgnbd_values(
    spark: SparkSession, history: DataFrame, horizon_days: int
) -> tuple[bgnbd.BgNbd | None, DataFrame | None]:
    """Fits BG/NBD on the driver from the distinct (repeat_days, recency_span, age) triples and their
    counts; returns the model and (user_id, p_alive, expected_purchases), or (None,
    None) when the history cannot identify the model."""
    triples = history.groupBy(*HISTORY).count().toPandas()  # distinct triples: far fewer than users
    if triples.empty:
        return None, None
    x, t_x, age = (triples[c].to_numpy(dtype=float) for c in HISTORY)
    try:
        model = bgnbd.fit(x, t_x, age, weights=triples["count"].to_numpy(dtype=float))
    except bgnbd.BgNbdFitError:
        return None, None
    values = pd.DataFrame(
        {
            **{c: triples[c].to_numpy(dtype=float) for c in HISTORY},
            "p_alive": model.p_alive(x, t_x, age),
            "expected_purchases": model.expected_purchases(float(horizon_days), x, t_x, age),
        }
    ).replace([np.inf, -np.inf], np.nan)
    per_triple = spark.createDataFrame(values)
    return model, history.join(F.broadcast(per_triple), HISTORY).select("user_id", *BGNBD_COLUMNS)


def propensity_set(
    spark: SparkSession,
    events: DataFrame,
    users: DataFrame | None,
    cutoff: dt.date,
    horizon_days: int,
    lookback_days: int,
    labelled: bool,
) -> PropensitySet:
    """Users known at the cutoff with their features (and the label when `labelled`). `events` must hold
    nothing the caller may not read; labels read events up to cutoff + horizon."""
    past = events.filter(F.col("event_date") <= F.lit(cutoff))
    features = user_features(past, users, None, cutoff, lookback_days)
    model, values = bgnbd_values(spark, purchase_history(past, cutoff), horizon_days)
    if values is None:
        values = features.select(
            "user_id", *(F.lit(None).cast("double").alias(c) for c in BGNBD_COLUMNS)
        ).limit(0)
    frame = features.join(values, "user_id", "left").select(
        "user_id",
        *(
            F.coalesce(F.col(c).cast("double"), F.lit(float(lookback_days))).alias(c)
            if c == "days_since_purchase"
            else F.col(c).cast("double")
            for c in NUMERIC
        ),
        *BGNBD_COLUMNS,
    )
    if labelled:
        buyers = buyers_in(events, cutoff, horizon_days).withColumn(LABEL, F.lit(1.0))
        frame = frame.join(buyers, "user_id", "left").fillna(0.0, subset=[LABEL])
    return PropensitySet(cutoff, frame, model)

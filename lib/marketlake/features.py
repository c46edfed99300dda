"""Pure transformations behind gold.user_features: silver events, users and items -> one row per user as of
a run date, with behaviour counts, rates, RFM scores and the RFM label.

Definitions (the README's "features" section says the same for readers of the table):

- The window: events whose `event_date` is one of the `lookback_days` days ending on the run date; later
  events are ignored, so a re-run for a past date gives the same rows.
- recency_days: days, with a fraction (3 decimals), from the user's last event of any kind in the window
  to the end of the run date (UTC); `lookback_days` when the user has no event in the window (not seen for
  the whole window). Fractions keep quintiles meaningful where many users were active in the last days.
- days_since_purchase: the same for the last purchase in the window; null when there is none.
- frequency: distinct orders (a purchase without an order_id is its own order); monetary: revenue;
  avg_order_value: monetary / frequency.
- views, clicks, carts (add_to_cart), purchases (purchase lines): event counts; sessions: distinct
  session_id; active_days: distinct event dates.
- ctr = clicks / views; cart_rate = carts / views; purchase_rate = sessions with a purchase / sessions
  (session conversion). A rate whose denominator is 0 is 0.
- tenure_days: days since the earlier of signup_date and the user's first event (before the window too).
- favourite_category: the category of most of the user's events in the window (ties: more revenue, then
  the name); null without events on known items.
- r_score, f_score, m_score (1-5): quintiles among the users with an order in the window of
  days_since_purchase (fewer days score higher), frequency and monetary. A user's score is 1 plus the
  number of quintile boundaries their value is better than, so tied users share a score and ties at a
  boundary take the lower one. Users without an order have no scores (null).
- rfm_label: from r_score and f_score by RFM_GRID; users without an order are "Prospects" when they have
  events in the window, "Inactive" when they have none.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

QUINTILES = [0.2, 0.4, 0.6, 0.8]

# (label, r_score range, f_score range): the usual RFM segment map over recency and frequency scores; the
# ranges cover all 25 (r, f) cells exactly once.
RFM_GRID = (
    ("Champions", (5, 5), (4, 5)),
    ("Loyal", (3, 4), (4, 5)),
    ("Potential Loyalist", (4, 5), (2, 3)),
    ("New", (5, 5), (1, 1)),
    ("Promising", (4, 4), (1, 1)),
    ("Need Attention", (3, 3), (3, 3)),
    ("About to Sleep", (3, 3), (1, 2)),
    ("Cannot Lose Them", (1, 2), (5, 5)),
    ("At Risk", (1, 2), (3, 4)),
    ("Hibernating", (1, 2), (1, 2)),
)
PROSPECTS, INACTIVE = "Prospects", "Inactive"

COUNTS = ["frequency", "views", "clicks", "carts", "purchases", "sessions", "active_days"]
# Numeric behaviour columns, in table order (segment profiles average these).
NUMERIC = [
    "recency_days",
    "days_since_purchase",
    "frequency",
    "monetary",
    "avg_order_value",
    "views",
    "clicks",
    "carts",
    "purchases",
    "sessions",
    "ctr",
    "cart_rate",
    "purchase_rate",
    "active_days",
    "tenure_days",
]
COLUMNS = [
    "user_id",
    *NUMERIC,
    "favourite_category",
    "r_score",
    "f_score",
    "m_score",
    "rfm_score",
    "rfm_label",
    "as_of_date",
]


def window_start(run_date: dt.date, lookback_days: int) -> dt.date:
    """The first event date in the window of `lookback_days` days ending on the run date."""
    return run_date - dt.timedelta(days=lookback_days - 1)


def in_window(run_date: dt.date, lookback_days: int) -> Callable[[DataFrame], DataFrame]:
    def transform(events: DataFrame) -> DataFrame:
        return events.filter(
            F.col("event_date").between(F.lit(window_start(run_date, lookback_days)), F.lit(run_date))
        )

    return transform


def _is(event_type: str) -> Column:
    return F.col("event_type") == event_type


def activity(events: DataFrame) -> DataFrame:
    """One row per user with events: counts, revenue and the dates the other features derive from."""
    purchase = _is("purchase")
    return events.groupBy("user_id").agg(
        F.max("event_ts").alias("last_event_ts"),
        F.max(F.when(purchase, F.col("event_ts"))).alias("last_purchase_ts"),
        # Sizes of per-user sets rather than count_distinct: several distinct counts in one aggregation make
        # Spark expand every row once per distinct column.
        F.size(F.collect_set(F.when(purchase, F.coalesce("order_id", "event_id"))))
        .cast("long")
        .alias("frequency"),
        # A decimal sum is exact, so the total does not depend on the order rows arrive in.
        F.sum(F.when(purchase, F.col("revenue")).cast("decimal(38,6)")).cast("double").alias("monetary"),
        F.count_if(_is("view")).alias("views"),
        F.count_if(_is("click")).alias("clicks"),
        F.count_if(_is("add_to_cart")).alias("carts"),
        F.count_if(purchase).alias("purchases"),
        F.size(F.collect_set("session_id")).cast("long").alias("sessions"),
        F.size(F.collect_set(F.when(purchase, F.col("session_id")))).cast("long").alias("converted_sessions"),
        F.size(F.collect_set("event_date")).cast("long").alias("active_days"),
    )


def favourite_category(items: DataFrame | None) -> Callable[[DataFrame], DataFrame]:
    """events -> (user_id, favourite_category): the category of most events, then most revenue, then name."""

    def transform(events: DataFrame) -> DataFrame:
        if items is None:
            return events.select("user_id", F.lit(None).cast("string").alias("favourite_category")).limit(0)
        per_category = (
            events.join(F.broadcast(items.select("item_id", "category")), "item_id")
            .filter(F.col("category").isNotNull())
            .groupBy("user_id", "category")
            .agg(F.count("*").alias("events"), F.sum(F.col("revenue").cast("decimal(38,6)")).alias("revenue"))
        )
        best = Window.partitionBy("user_id").orderBy(F.desc("events"), F.desc("revenue"), F.asc("category"))
        return (
            per_category.withColumn("rank", F.row_number().over(best))
            .filter(F.col("rank") == 1)
            .select("user_id", F.col("category").alias("favourite_category"))
        )

    return transform


def ratio(numerator: str, denominator: str) -> Column:
    return F.when(F.col(denominator) > 0, F.col(numerator) / F.col(denominator)).otherwise(F.lit(0.0))


def days_before_end(run_date: dt.date, ts: str) -> Column:
    """Days, with a fraction, from `ts` to the end of the run date (UTC)."""
    end = dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
    micros = F.lit(int(end.timestamp()) * 1_000_000) - F.unix_micros(F.col(ts))
    return F.round(micros / F.lit(86_400_000_000.0), 3)


def derive(run_date: dt.date, lookback_days: int) -> Callable[[DataFrame], DataFrame]:
    """Users joined with their activity -> the behaviour columns (zeros for users without events)."""
    as_of = F.lit(run_date)

    def transform(joined: DataFrame) -> DataFrame:
        filled = joined.fillna(0, subset=[*COUNTS, "converted_sessions"]).fillna(0.0, subset=["monetary"])
        return filled.select(
            "user_id",
            F.coalesce(days_before_end(run_date, "last_event_ts"), F.lit(float(lookback_days))).alias(
                "recency_days"
            ),
            days_before_end(run_date, "last_purchase_ts").alias("days_since_purchase"),
            "frequency",
            "monetary",
            ratio("monetary", "frequency").alias("avg_order_value"),
            "views",
            "clicks",
            "carts",
            "purchases",
            "sessions",
            ratio("clicks", "views").alias("ctr"),
            ratio("carts", "views").alias("cart_rate"),
            ratio("converted_sessions", "sessions").alias("purchase_rate"),
            "active_days",
            F.datediff(as_of, F.least("signup_date", "first_event_date")).alias("tenure_days"),
            "favourite_category",
        )

    return transform


def _score(value: Column, cuts: Column, lower_is_better: bool = False) -> Column:
    """1 + the number of quintile boundaries that `value` is strictly better than."""
    better = (lambda cut: cut > value) if lower_is_better else (lambda cut: cut < value)
    return (F.lit(1) + F.size(F.filter(cuts, better))).cast("int")


def quintile_cuts(features: DataFrame) -> DataFrame:
    """One row: the quintile boundaries of days_since_purchase, frequency and monetary among buyers."""
    return features.filter(F.col("frequency") > 0).agg(
        F.percentile("days_since_purchase", QUINTILES).alias("_r_cuts"),
        F.percentile("frequency", QUINTILES).alias("_f_cuts"),
        F.percentile("monetary", QUINTILES).alias("_m_cuts"),
    )


def rfm(cuts: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Adds r_score, f_score, m_score, rfm_score ("545") and rfm_label (see the module docstring), given
    the `quintile_cuts` of the population."""
    buyer = F.col("frequency") > 0

    def transform(features: DataFrame) -> DataFrame:
        scored = features.crossJoin(F.broadcast(cuts)).select(
            "*",
            F.when(buyer, _score(F.col("days_since_purchase"), F.col("_r_cuts"), lower_is_better=True)).alias(
                "r_score"
            ),
            F.when(buyer, _score(F.col("frequency"), F.col("_f_cuts"))).alias("f_score"),
            F.when(buyer, _score(F.col("monetary"), F.col("_m_cuts"))).alias("m_score"),
        )
        return scored.drop("_r_cuts", "_f_cuts", "_m_cuts").withColumns(
            {
                "rfm_score": F.concat("r_score", "f_score", "m_score"),
                "rfm_label": rfm_label(F.col("r_score"), F.col("f_score")),
            }
        )

    return transform


def rfm_label(r: Column, f: Column) -> Column:
    label = F.when(F.col("frequency") == 0, F.when(F.col("active_days") > 0, PROSPECTS).otherwise(INACTIVE))
    for name, (r_low, r_high), (f_low, f_high) in RFM_GRID:
        label = label.when(r.between(r_low, r_high) & f.between(f_low, f_high), name)
    return label


def user_features(
    events: DataFrame, users: DataFrame | None, items: DataFrame | None, run_date: dt.date, lookback_days: int
) -> DataFrame:
    """gold.user_features for one run date: one row for every user of `users` who had signed up by then
    (or whose signup date is unknown) and for every user with events up to the run date."""
    history = events.filter(F.col("event_date") <= F.lit(run_date))
    seen = history.groupBy("user_id").agg(F.min("event_date").alias("first_event_date"))
    if users is not None:
        signed_up = F.col("signup_date").isNull() | (F.col("signup_date") <= F.lit(run_date))
        seen = users.filter(signed_up).select("user_id", "signup_date").join(seen, "user_id", "full")
    else:
        seen = seen.withColumn("signup_date", F.lit(None).cast("date"))
    windowed = history.transform(in_window(run_date, lookback_days))
    per_user = activity(windowed)
    # The boundaries come from the activity alone (every buyer has some), a far shorter plan than the result's.
    cuts = quintile_cuts(
        per_user.select(
            "frequency",
            "monetary",
            days_before_end(run_date, "last_purchase_ts").alias("days_since_purchase"),
        )
    )
    return (
        seen.join(
            per_user.join(windowed.transform(favourite_category(items)), "user_id", "left"), "user_id", "left"
        )
        .transform(derive(run_date, lookback_days))
        .transform(rfm(cuts))
        .withColumn("as_of_date", F.lit(run_date))
        .select(*COLUMNS)
    )

"""Session-aware recommendations: a next-item model computed daily from sessions, and the real-time blend
of a live session's next-item candidates with the user's daily list.

The model is sequential rules (Ludewig et al., "Empirical analysis of session-based recommendation
algorithms", 2021) scored over the whole session with position decay:

- A session is the events of one `session_id` (or, where an event has none, of one user split at gaps
  longer than `session_gap_minutes`) whose type is in `event_types`, ordered by event_ts (then event_id),
  with consecutive events of the same item collapsed into one step (view, click and cart of one item are
  one step).
- Every ordered pair of distinct items (a at step p, b at step q, p < q <= p + steps) adds 1 / (q - p) to
  the rule a -> b. An item's rules are normalised to sum to 1 over all its next items (so items seen
  in many sessions do not drown the others), then its top `top_n` are kept: gold.next_items.
- Scoring a session (`session_candidates`): each distinct item of the session weighs 1 / (1 + its
  recency), recency 0 for the item of the latest step, and a candidate's score is the sum over the
  session's items of weight x the rule's score.

On MovieLens 100k (bench/session_movielens.py) this beats sequential rules from the last item alone,
session-kNN, co-occurrence and popularity; the figures are in bench/README.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake.config import RealtimeConfig

SESSION = "session_key"
NEXT_ITEM_COLUMNS = ["item_id", "rank", "next_item_id", "score"]
REALTIME_COLUMNS = ["user_id", "rank", "item_id", "score", "source", "updated_at", "last_event_ts"]
SOURCE_SESSION, SOURCE_DAILY, SOURCE_BLEND = "session", "daily", "blend"


# ---- sessions ------------------------------------------------------------------------------------


def with_sessions(gap_minutes: float) -> Callable[[DataFrame], DataFrame]:
    """Events (user_id, event_ts, session_id or none) -> the same with `session_key`: the session_id, or for
    an event without one, the user's events split where more than `gap_minutes` pass between two events."""

    def transform(events: DataFrame) -> DataFrame:
        if "session_id" not in events.columns:
            events = events.withColumn("session_id", F.lit(None).cast("string"))
        by_user = Window.partitionBy("user_id", F.col("session_id").isNull()).orderBy("event_ts")
        gap = F.col("event_ts").cast("double") - F.lag(F.col("event_ts").cast("double")).over(by_user)
        opens = F.when(gap.isNull() | (gap > gap_minutes * 60), 1).otherwise(0)
        number = F.sum(opens).over(by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow))
        derived = F.concat(F.col("user_id"), F.lit("#"), number.cast("string"))
        return events.withColumn(SESSION, F.coalesce(F.col("session_id"), derived))

    return transform


def session_steps(event_types: list[str] | None, gap_minutes: float) -> Callable[[DataFrame], DataFrame]:
    """Events -> (session_key, user_id, step, item_id, event_ts): one row per step of each session, in
    order (step 1 first), consecutive events of one item collapsed into the step of the first of them.
    `event_types`: the events that count (None: all)."""

    def transform(events: DataFrame) -> DataFrame:
        wanted = F.col("item_id").isNotNull() & F.col("user_id").isNotNull() & F.col("event_ts").isNotNull()
        if event_types is not None:
            wanted = wanted & F.col("event_type").isin(list(event_types))
        tie = F.col("event_id") if "event_id" in events.columns else F.col("item_id")
        in_order = Window.partitionBy(SESSION).orderBy("event_ts", tie)
        sessions = events.filter(wanted).transform(with_sessions(gap_minutes))
        return (
            sessions.withColumn("_previous", F.lag("item_id").over(in_order))
            .filter(F.col("_previous").isNull() | (F.col("_previous") != F.col("item_id")))
            .withColumn("step", F.row_number().over(in_order))
            .select(SESSION, "user_id", "step", "item_id", "event_ts")
        )

    return transform


# ---- the daily model -----------------------------------------------------------------------------


def sequential_rules(steps: int) -> Callable[[DataFrame], DataFrame]:
    """Session steps -> (item_id, next_item_id, weight, sessions): for every ordered pair of distinct items
    at most `steps` steps apart in a session, 1 / distance summed over all sessions, and the number of
    sessions holding the pair."""

    def transform(session_rows: DataFrame) -> DataFrame:
        a = session_rows.select(SESSION, F.col("step").alias("p"), F.col("item_id"))
        b = session_rows.select(
            F.col(SESSION).alias("_s"), F.col("step").alias("q"), F.col("item_id").alias("next_item_id")
        )
        distance = F.col("q") - F.col("p")
        pairs = a.join(
            b, (F.col(SESSION) == F.col("_s")) & (distance > 0) & (distance <= steps), "inner"
        ).filter(F.col("item_id") != F.col("next_item_id"))
        return pairs.groupBy("item_id", "next_item_id").agg(
            F.sum(1.0 / distance).alias("weight"), F.countDistinct(SESSION).alias("sessions")
        )

    return transform


def next_items(top_n: int, min_sessions: int = 1) -> Callable[[DataFrame], DataFrame]:
    """Rules (item_id, next_item_id, weight, sessions) -> (item_id, rank, next_item_id, score): the weights
    of each item normalised to sum to 1 over all its next items, then the top `top_n` by score (ties by
    next_item_id, so that every run ranks them alike). Pairs seen in fewer than `min_sessions` sessions
    are dropped after normalising."""

    def transform(rules: DataFrame) -> DataFrame:
        total = F.sum("weight").over(Window.partitionBy("item_id"))
        by_score = Window.partitionBy("item_id").orderBy(F.desc("score"), F.asc("next_item_id"))
        return (
            rules.withColumn("score", F.col("weight") / total)
            .filter(F.col("sessions") >= min_sessions)
            .withColumn("rank", F.row_number().over(by_score))
            .filter(F.col("rank") <= top_n)
            .select("item_id", F.col("rank").cast("int"), "next_item_id", F.col("score").cast("double"))
        )

    return transform


# ---- scoring a session ---------------------------------------------------------------------------


def recency_weights() -> Callable[[DataFrame], DataFrame]:
    """Session steps (key, item_id, step) -> (key, item_id, weight): each distinct item once, weighing
    1 / (1 + recency), where recency counts the distinct items seen after it (0: the latest)."""

    def transform(steps: DataFrame) -> DataFrame:
        last = steps.groupBy(SESSION, "item_id").agg(F.max("step").alias("last_step"))
        newest_first = Window.partitionBy(SESSION).orderBy(F.desc("last_step"))
        return last.withColumn("weight", 1.0 / F.row_number().over(newest_first)).select(
            SESSION, "item_id", "weight"
        )

    return transform


def session_candidates(next_item_rows: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Session steps -> (session_key, item_id, score): the sequential-rule candidates of each session, the
    rules of its items weighted by recency and summed. Items of the session stay candidates (a viewed item
    can be the one bought); the caller decides what to exclude."""

    def transform(steps: DataFrame) -> DataFrame:
        weights = steps.transform(recency_weights())
        rules = next_item_rows.select(
            F.col("item_id").alias("_from"), F.col("next_item_id").alias("_to"), F.col("score").alias("_s")
        )
        return (
            weights.join(rules, F.col("item_id") == F.col("_from"))
            .groupBy(SESSION, F.col("_to").alias("item_id"))
            .agg(F.sum(F.col("weight") * F.col("_s")).alias("score"))
        )

    return transform


def top_per(key: str, n: int, score: Column | str = "score") -> Callable[[DataFrame], DataFrame]:
    """The `n` best rows per `key` by score (ties by item_id), with their rank 1..n."""

    def transform(frame: DataFrame) -> DataFrame:
        order = Window.partitionBy(key).orderBy(F.desc(score), F.asc("item_id"))
        return frame.withColumn("rank", F.row_number().over(order)).filter(F.col("rank") <= n)

    return transform


# ---- the real-time blend -------------------------------------------------------------------------


def current_session(gap_minutes: float) -> Callable[[DataFrame], DataFrame]:
    """Events -> those of each user's latest session (the session of the user's latest event)."""

    def transform(events: DataFrame) -> DataFrame:
        keyed = events.transform(with_sessions(gap_minutes))
        latest = Window.partitionBy("user_id")
        newest = F.max_by(F.col(SESSION), F.col("event_ts")).over(latest)
        return (
            keyed.withColumn("_current", newest).filter(F.col(SESSION) == F.col("_current")).drop("_current")
        )

    return transform


def realtime_recommendations(
    session_events: DataFrame,
    next_items: DataFrame,
    daily: DataFrame,
    settings: RealtimeConfig,
    updated_at: dt.datetime,
) -> DataFrame:
    """The rows of gold.realtime_recommendations for the users of `session_events`.

    session_events: silver.events rows of the users active now, their current session so far (of several
    sessions per user, the latest is used); next_items: gold.next_items (one as_of_date); daily:
    gold.user_recommendations (one as_of_date). Per user, the top `settings.list_size` of

        score = session_weight x session score / the user's best session score
              + (1 - session_weight) x 1 / daily rank

    over the session's next-item candidates and the user's daily list, without the items bought in the
    session. source: `session` (only a session candidate), `daily` (only on the daily list), `blend` (both).
    A user with neither gets no rows. Ties rank by item_id."""
    events = session_events.transform(current_session(settings.session_gap_minutes))
    last_event = events.groupBy("user_id").agg(F.max("event_ts").alias("last_event_ts"))
    bought = events.filter(F.col("event_type") == "purchase").select("user_id", "item_id").distinct()
    steps = events.transform(session_steps(settings.event_types, settings.session_gap_minutes))
    users = steps.select(SESSION, "user_id").distinct()
    candidates = (
        steps.transform(session_candidates(next_items))
        .join(users, SESSION)
        .select("user_id", "item_id", "score")
    )
    best = Window.partitionBy("user_id")
    session_part = candidates.select(
        "user_id", "item_id", (F.col("score") / F.max("score").over(best)).alias("session_score")
    ).transform(_limit_per_user(settings.candidates))
    daily_part = daily.join(last_event.select("user_id"), "user_id", "left_semi").select(
        "user_id", "item_id", (1.0 / F.col("rank")).alias("daily_score")
    )
    weight = settings.session_weight
    blended = (
        session_part.join(daily_part, ["user_id", "item_id"], "full_outer")
        .join(bought, ["user_id", "item_id"], "left_anti")
        .select(
            "user_id",
            "item_id",
            (
                F.lit(weight) * F.coalesce("session_score", F.lit(0.0))
                + F.lit(1.0 - weight) * F.coalesce("daily_score", F.lit(0.0))
            ).alias("score"),
            F.when(F.col("daily_score").isNull(), SOURCE_SESSION)
            .when(F.col("session_score").isNull(), SOURCE_DAILY)
            .otherwise(SOURCE_BLEND)
            .alias("source"),
        )
    )
    return (
        blended.transform(top_per("user_id", settings.list_size))
        .join(last_event, "user_id")
        .select(
            "user_id",
            F.col("rank").cast("int"),
            "item_id",
            F.col("score").cast("double"),
            "source",
            F.lit(updated_at).cast(T.TimestampType()).alias("updated_at"),
            "last_event_ts",
        )
    )


def _limit_per_user(n: int) -> Callable[[DataFrame], DataFrame]:
    def transform(frame: DataFrame) -> DataFrame:
        return frame.transform(top_per("user_id", n, "session_score")).drop("rank")

    return transform

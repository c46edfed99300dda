"""sessions: session steps, sequential rules with position decay, the real-time blend, and the job on a tiny lake."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.config import RealtimeConfig
from marketlake.jobs import main
from marketlake.lake import Lake
from marketlake.lake.schema import spark_schema
from marketlake.sessions import (
    REALTIME_COLUMNS,
    SESSION,
    next_items,
    realtime_recommendations,
    sequential_rules,
    session_candidates,
    session_steps,
)

DAY = dt.date(2024, 6, 30)
UPDATED = dt.datetime(2024, 6, 30, 12, 0)


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 6, 30, hour, minute)


def silver(spark, rows):
    schema = spark_schema(catalog.SILVER_EVENTS)
    data = []
    for n, (user, session, item, kind, ts) in enumerate(rows):
        record = dict.fromkeys(schema.fieldNames())
        record.update(
            event_id=f"e{n:03d}",
            user_id=user,
            item_id=item,
            event_type=kind,
            event_ts=ts,
            event_date=ts.date(),
            session_id=session,
        )
        data.append(tuple(record[name] for name in schema.fieldNames()))
    return spark.createDataFrame(data, schema)


def test_steps_collapse_repeats_and_split_sessions_without_an_id_at_gaps(spark):
    rows = [
        ("u1", "s1", "a", "view", at(10, 0)),
        ("u1", "s1", "a", "click", at(10, 1)),
        ("u1", "s1", "b", "view", at(10, 2)),
        ("u1", "s1", "a", "view", at(10, 3)),
        ("u1", "s1", "x", "exposure", at(10, 4)),
        ("u2", None, "c", "view", at(9, 0)),
        ("u2", None, "d", "view", at(9, 20)),
        ("u2", None, "e", "view", at(10, 0)),  # 40 minutes later: a new session
    ]
    got = (
        silver(spark, rows).transform(session_steps(["view", "click"], 30)).select(SESSION, "step", "item_id")
    )
    expected = spark.createDataFrame(
        [
            ("s1", 1, "a"),
            ("s1", 2, "b"),
            ("s1", 3, "a"),
            ("u2#1", 1, "c"),
            ("u2#1", 2, "d"),
            ("u2#2", 1, "e"),
        ],
        f"{SESSION} string, step int, item_id string",
    )
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def two_sessions(spark):
    rows = [
        ("u1", "s1", "a", "view", at(10, 0)),
        ("u1", "s1", "b", "view", at(10, 1)),
        ("u1", "s1", "c", "view", at(10, 2)),
        ("u2", "s2", "a", "view", at(11, 0)),
        ("u2", "s2", "c", "purchase", at(11, 5)),
    ]
    return silver(spark, rows).transform(session_steps(["view", "purchase"], 30))


def test_sequential_rules_weigh_pairs_by_one_over_distance_then_normalise_per_item(spark):
    rules = two_sessions(spark).transform(sequential_rules(10))
    # a->b 1 (s1), a->c 1/2 (s1) + 1 (s2), b->c 1 (s1); a's weights sum to 2.5.
    got = rules.transform(next_items(10))
    expected = spark.createDataFrame(
        [("a", 1, "c", 0.6), ("a", 2, "b", 0.4), ("b", 1, "c", 1.0)],
        "item_id string, rank int, next_item_id string, score double",
    )
    assert_approx_df_equality(got, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)
    sessions = {(r.item_id, r.next_item_id): r.sessions for r in rules.collect()}
    assert sessions == {("a", "b"): 1, ("a", "c"): 2, ("b", "c"): 1}


def test_steps_and_top_n_bound_the_rules_and_ties_rank_by_item(spark):
    got = two_sessions(spark).transform(sequential_rules(1)).transform(next_items(1))
    # With one step a->c only comes from s2: a->b and a->c tie at 0.5, b first by id.
    expected = spark.createDataFrame(
        [("a", 1, "b", 0.5), ("b", 1, "c", 1.0)],
        "item_id string, rank int, next_item_id string, score double",
    )
    assert_approx_df_equality(got, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)
    assert two_sessions(spark).transform(sequential_rules(10)).transform(next_items(10, 2)).count() == 1


def rules_table(spark):
    return spark.createDataFrame(
        [("a", 1, "c", 0.6), ("a", 2, "b", 0.4), ("b", 1, "c", 1.0), ("d", 1, "e", 1.0)],
        "item_id string, rank int, next_item_id string, score double",
    )


def test_session_candidates_weigh_recent_items_more(spark):
    steps = silver(
        spark, [("u1", "s1", "a", "view", at(10, 0)), ("u1", "s1", "b", "view", at(10, 1))]
    ).transform(session_steps(None, 30))
    got = steps.transform(session_candidates(rules_table(spark)))
    # b is the latest (weight 1), a one before (1/2): c = 1 x 1.0 + 1/2 x 0.6, b = 1/2 x 0.4.
    expected = spark.createDataFrame(
        [("s1", "c", 1.3), ("s1", "b", 0.2)], f"{SESSION} string, item_id string, score double"
    )
    assert_approx_df_equality(got, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)


def daily_table(spark):
    rows = [("u1", 1, "x"), ("u1", 2, "c"), ("u1", 3, "b"), ("u3", 1, "x")]
    return spark.createDataFrame(
        [(u, r, i, 1.0 / r, "als", "v1", DAY) for u, r, i in rows],
        "user_id string, rank int, item_id string, score double, source string, model_version string, "
        "as_of_date date",
    )


def test_realtime_blends_session_candidates_with_the_daily_list_without_what_was_bought(spark):
    session_events = silver(
        spark,
        [
            ("u1", "s0", "d", "view", at(8, 0)),  # an earlier session: not the current one
            ("u1", "s1", "a", "view", at(10, 0)),
            ("u1", "s1", "b", "view", at(10, 1)),
            ("u1", "s1", "b", "purchase", at(10, 2)),
            ("u2", "s2", "z", "view", at(10, 5)),  # no rules and no daily list: no rows
            ("u4", "s4", "d", "view", at(10, 7)),
        ],
    )
    settings = RealtimeConfig(list_size=2, session_weight=0.7)
    got = realtime_recommendations(session_events, rules_table(spark), daily_table(spark), settings, UPDATED)
    # u1: session c 1.3 -> 1.0, b 0.2 -> 0.154 but bought; daily x 1, c 1/2, b 1/3.
    expected = spark.createDataFrame(
        [
            ("u1", 1, "c", 0.7 * 1.0 + 0.3 * 0.5, "blend", UPDATED, at(10, 2)),
            ("u1", 2, "x", 0.3 * 1.0, "daily", UPDATED, at(10, 2)),
            ("u4", 1, "e", 0.7, "session", UPDATED, at(10, 7)),
        ],
        "user_id string, rank int, item_id string, score double, source string, updated_at timestamp, "
        "last_event_ts timestamp",
    )
    assert got.columns == REALTIME_COLUMNS == catalog.REALTIME_RECOMMENDATIONS.column_names
    assert_approx_df_equality(got, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)


def test_realtime_without_a_session_candidate_keeps_the_daily_order(spark):
    session_events = silver(spark, [("u3", "s3", "q", "view", at(10, 0))])
    got = realtime_recommendations(
        session_events, rules_table(spark), daily_table(spark), RealtimeConfig(session_weight=1.0), UPDATED
    )
    assert [(r.rank, r.item_id, r.source) for r in got.collect()] == [(1, "x", "daily")]
    wanted = spark_schema(catalog.REALTIME_RECOMMENDATIONS)
    assert [(f.name, f.dataType) for f in got.schema] == [(f.name, f.dataType) for f in wanted]


@pytest.fixture()
def small_lake(spark, config, tmp_path):
    lake = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), str(tmp_path / "lake"))
    rows = [
        ("u1", "s1", "a", "view", at(10, 0)),
        ("u1", "s1", "b", "view", at(10, 1)),
        ("u1", "s1", "c", "view", at(10, 2)),
        ("u2", "s2", "a", "view", at(11, 0)),
        ("u2", "s2", "c", "purchase", at(11, 5)),
        ("u3", "s3", "a", "view", dt.datetime(2024, 7, 1, 9)),  # after the run date: ignored
        ("u3", "s3", "d", "view", dt.datetime(2024, 7, 1, 9, 1)),
    ]
    lake.write(catalog.SILVER_EVENTS.name, silver(spark, rows), "overwrite", partition_by=["event_date"])
    return lake


def test_job_writes_next_items_for_the_run_date_and_is_idempotent(spark, small_lake):
    args = ["--lake", small_lake.root, "--run-date", DAY.isoformat(), "--top-n", "5"]
    assert main("sessions", args) == 0
    first = small_lake.read_as_of(catalog.NEXT_ITEMS.name, DAY)
    assert first.columns == catalog.NEXT_ITEMS.column_names
    got = {(r.item_id, r.rank, r.next_item_id, round(r.score, 9)) for r in first.collect()}
    assert got == {("a", 1, "c", 0.6), ("a", 2, "b", 0.4), ("b", 1, "c", 1.0)}
    assert first.select("model_version").distinct().count() == 1
    assert main("sessions", args) == 0
    again = small_lake.read_as_of(catalog.NEXT_ITEMS.name, DAY)
    assert_df_equality(first, again, ignore_row_order=True)
    counts = small_lake.read("ops.job_runs").filter(F.col("job") == "sessions").first()["counts"]
    assert counts["sessions"] == 2 and counts["next_items"] == 3


def test_job_refuses_a_bad_option_before_writing(small_lake, capsys):
    assert main("sessions", ["--lake", small_lake.root, "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err
    assert not small_lake.exists(catalog.NEXT_ITEMS.name)


# ---- the demo shop: the live list follows the session ----------------------------------------------

DEMO_DAY = dt.date(2024, 6, 30)


@pytest.mark.slow
def test_on_the_demo_shop_the_live_list_finds_the_next_purchase_more_often_than_the_daily_list(
    spark, config, demo_shop, tmp_path
):
    """The models as of the day before the shop's last day; each user's first session of the last day
    that buys, replayed up to its first purchase through realtime_recommendations: its list (10 items)
    holds the item bought next at least 1.5x as often as the user's daily list (10 items)."""
    import shutil

    import pandas as pd

    shop, _, root = demo_shop
    lake_root = shutil.copytree(root, tmp_path / "lake")
    before = (DEMO_DAY - dt.timedelta(days=1)).isoformat()
    settings_file = tmp_path / "fast.yaml"
    settings_file.write_text("recommend: {tune: false, evaluate: false}\n")
    common = ["--lake", str(lake_root), "--run-date", before, "--config", str(settings_file)]
    assert main("recommend", common) == 0
    assert main("sessions", common) == 0
    lake = Lake(spark, config.lake, str(lake_root))
    as_of = dt.date.fromisoformat(before)
    next_item_rows = lake.read_as_of(catalog.NEXT_ITEMS.name, as_of)
    daily = lake.read_as_of(catalog.USER_RECOMMENDATIONS.name, as_of).persist()

    day = lake.read(catalog.SILVER_EVENTS.name).filter(F.col("event_date") == F.lit(DEMO_DAY))
    first_buy = (
        day.filter(F.col("event_type") == "purchase")
        .groupBy("user_id", "session_id")
        .agg(
            F.min_by("item_id", F.struct("event_ts", "event_id")).alias("target"),
            F.min("event_ts").alias("bought_at"),
        )
    )
    first_session = (
        first_buy.groupBy("user_id")
        .agg(F.min_by(F.struct("session_id", "target", "bought_at"), F.col("bought_at")).alias("s"))
        .select("user_id", "s.*")
    )
    replay = day.join(first_session, ["user_id", "session_id"]).filter(F.col("event_ts") < F.col("bought_at"))
    live = realtime_recommendations(
        replay.select(*day.columns), next_item_rows, daily, RealtimeConfig(), UPDATED
    )
    targets = first_session.select("user_id", "session_id", "target").toPandas()
    live_lists = live.groupBy("user_id").agg(F.collect_list("item_id").alias("live")).toPandas()
    daily_lists = daily.groupBy("user_id").agg(F.collect_list("item_id").alias("daily")).toPandas()
    frame = targets.merge(live_lists, on="user_id", how="left").merge(daily_lists, on="user_id", how="left")
    for column in ("live", "daily"):
        frame[f"{column}_hit"] = [holds(lst, t) for t, lst in zip(frame.target, frame[column], strict=True)]
    intent = pd.read_csv(shop / "truth" / "intent_sessions.csv")
    frame["intent"] = frame.session_id.isin(set(intent.session_id))
    live_rate, daily_rate = frame.live_hit.mean(), frame.daily_hit.mean()
    by_intent = frame.groupby("intent")[["live_hit", "daily_hit"]].mean()
    print(f"{len(frame)} sessions: live {live_rate:.3f}, daily {daily_rate:.3f}\n{by_intent}")
    assert len(frame) >= 100
    assert live_rate >= 1.5 * daily_rate
    assert by_intent.loc[True, "live_hit"] > by_intent.loc[True, "daily_hit"]


def holds(items, item: str) -> bool:
    """Whether a collected list (None or NaN for a user without one) holds the item."""
    return item in list(items) if isinstance(items, list | tuple) or hasattr(items, "tolist") else False

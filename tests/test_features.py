"""gold.user_features: exact values on a hand-made shop (zeros not nulls, the window, tenure, favourite
category), RFM quintile scores and labels, and the job's idempotence per run date."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake.features import COLUMNS, INACTIVE, PROSPECTS, RFM_GRID, quintile_cuts, rfm, user_features
from marketlake.jobs import main
from marketlake.lake import Lake

RUN = dt.date(2024, 6, 30)

EVENT_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType()),
        T.StructField("user_id", T.StringType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("event_type", T.StringType()),
        T.StructField("event_ts", T.TimestampType()),
        T.StructField("session_id", T.StringType()),
        T.StructField("order_id", T.StringType()),
        T.StructField("revenue", T.DoubleType()),
    ]
)
# (event_id, user, item, type, UTC time, session, order, revenue)
EVENTS = [
    ("a0", "a", "i1", "view", "2024-05-01 09:00:00", "s0", None, 0.0),  # before a 30-day window
    ("a1", "a", "i1", "view", "2024-06-10 10:00:00", "s1", None, 0.0),
    ("a2", "a", "i1", "click", "2024-06-10 10:01:00", "s1", None, 0.0),
    ("a3", "a", "i1", "add_to_cart", "2024-06-10 10:02:00", "s1", None, 0.0),
    ("a4", "a", "i1", "purchase", "2024-06-10 10:05:00", "s1", "o1", 20.0),
    ("a5", "a", "i3", "purchase", "2024-06-10 10:05:00", "s1", "o1", 15.5),
    ("a6", "a", "i2", "view", "2024-06-29 12:00:00", "s2", None, 0.0),
    ("a7", "a", "i2", "view", "2024-06-29 12:01:00", "s2", None, 0.0),
    ("a8", "a", "i2", "purchase", "2024-06-29 18:00:00", "s2", "o2", 4.5),
    ("a9", "a", "i2", "view", "2024-07-01 09:00:00", "s3", None, 0.0),  # after the run date
    ("b1", "b", "i2", "view", "2024-06-25 00:00:00", "t1", None, 0.0),
    ("b2", "b", "i2", "view", "2024-06-25 06:00:00", "t1", None, 0.0),
    ("d0", "d", "i1", "view", "2024-03-01 08:00:00", None, None, 0.0),  # before the window: tenure only
    (
        "d1",
        "d",
        "i9",
        "purchase",
        "2024-06-30 12:00:00",
        None,
        None,
        9.99,
    ),  # no session, no order, unknown item
]
USERS = [
    ("a", dt.date(2024, 1, 1)),
    ("b", dt.date(2024, 6, 20)),
    ("c", dt.date(2023, 6, 30)),  # no events at all
    ("n", None),  # no signup date, no events
    ("late", dt.date(2024, 7, 5)),  # signed up after the run date: not a user yet
]
ITEMS = [("i1", "books"), ("i2", "toys"), ("i3", "books")]


@pytest.fixture(scope="module")
def shop(spark):
    rows = [(*e[:4], dt.datetime.fromisoformat(e[4]), *e[5:]) for e in EVENTS]
    events = spark.createDataFrame(rows, EVENT_SCHEMA).withColumn("event_date", F.to_date("event_ts"))
    users = spark.createDataFrame(USERS, "user_id string, signup_date date")
    items = spark.createDataFrame(ITEMS, "item_id string, category string")
    return events, users, items


def test_exact_features_with_zeros_not_nulls(spark, shop):
    features = user_features(*shop, RUN, lookback_days=30)
    assert features.columns == COLUMNS
    types = dict(features.dtypes)
    assert {
        types[c] for c in ("frequency", "views", "clicks", "carts", "purchases", "sessions", "active_days")
    } == {"bigint"}
    assert {
        types[c] for c in ("recency_days", "monetary", "avg_order_value", "ctr", "cart_rate", "purchase_rate")
    } == {"double"}
    third = 1 / 3
    expected = spark.createDataFrame(
        [
            # user, recency, since purchase, F, M, AOV, views, clicks, carts, purchases, sessions, ctr, cart rate,
            # purchase rate, active days, tenure, favourite, r, f, m, rfm, label, as of
            (
                "a",
                1.25,
                1.25,
                2,
                40.0,
                20.0,
                3,
                1,
                1,
                3,
                2,
                third,
                third,
                1.0,
                2,
                181,
                "books",
                1,
                5,
                5,
                "155",
                "Cannot Lose Them",
                RUN,
            ),
            (
                "b",
                5.75,
                None,
                0,
                0.0,
                0.0,
                2,
                0,
                0,
                0,
                1,
                0.0,
                0.0,
                0.0,
                1,
                10,
                "toys",
                None,
                None,
                None,
                None,
                PROSPECTS,
                RUN,
            ),
            (
                "c",
                30.0,
                None,
                0,
                0.0,
                0.0,
                0,
                0,
                0,
                0,
                0,
                0.0,
                0.0,
                0.0,
                0,
                366,
                None,
                None,
                None,
                None,
                None,
                INACTIVE,
                RUN,
            ),
            (
                "d",
                0.5,
                0.5,
                1,
                9.99,
                9.99,
                0,
                0,
                0,
                1,
                0,
                0.0,
                0.0,
                0.0,
                1,
                121,
                None,
                5,
                1,
                1,
                "511",
                "New",
                RUN,
            ),
            (
                "n",
                30.0,
                None,
                0,
                0.0,
                0.0,
                0,
                0,
                0,
                0,
                0,
                0.0,
                0.0,
                0.0,
                0,
                None,
                None,
                None,
                None,
                None,
                None,
                INACTIVE,
                RUN,
            ),
        ],
        features.schema,
    )
    assert_df_equality(features, expected, ignore_row_order=True, ignore_nullable=True)


def test_the_look_back_window_is_configurable(shop):
    wide = {r.user_id: r for r in user_features(*shop, RUN, lookback_days=180).collect()}
    assert (wide["a"].views, wide["a"].active_days, wide["a"].sessions) == (
        4,
        3,
        3,
    )  # the May view counts now
    assert (wide["d"].views, wide["c"].recency_days) == (1, 180.0)
    narrow = {r.user_id: r for r in user_features(*shop, RUN, lookback_days=1).collect()}
    assert (narrow["a"].frequency, narrow["a"].recency_days, narrow["a"].rfm_label) == (0, 1.0, INACTIVE)
    assert narrow["a"].tenure_days == 181  # tenure looks at all history up to the run date


def score_rows(spark, rows) -> dict:
    """Rows of (user, days since purchase, frequency, monetary) of active users -> scored rows by user."""
    frame = spark.createDataFrame(
        [(u, r, f, m, 1) for u, r, f, m in rows],
        "user_id string, days_since_purchase double, frequency long, monetary double, active_days long",
    )
    return {r.user_id: r for r in frame.transform(rfm(quintile_cuts(frame))).collect()}


def test_rfm_quintiles_split_ten_buyers_two_per_score(spark):
    # u1 bought once long ago for little ... u10 often, recently, for a lot: every score is the user's rank / 2.
    rows = [(f"u{i:02d}", 11.0 - i, i, 10.0 * i) for i in range(1, 11)] + [("none", None, 0, 0.0)]
    scored = score_rows(spark, rows)
    for i in range(1, 11):
        row = scored[f"u{i:02d}"]
        assert (row.r_score, row.f_score, row.m_score) == ((i + 1) // 2,) * 3
    assert [scored[f"u{i:02d}"].rfm_label for i in (1, 3, 5, 7, 9)] == [
        "Hibernating",
        "Hibernating",
        "Need Attention",
        "Loyal",
        "Champions",
    ]
    assert (scored["none"].r_score, scored["none"].rfm_score, scored["none"].rfm_label) == (
        None,
        None,
        PROSPECTS,
    )


def test_rfm_ties_share_a_score_and_take_the_lower_one_at_a_boundary(spark):
    # Six of ten buyers ordered once: they all score f=1; recent big spenders score 5.
    rows = [(f"u{i}", 1.0 + i, 1, 10.0) for i in range(6)] + [
        ("v1", 0.1, 2, 50.0),
        ("v2", 0.2, 3, 60.0),
        ("v3", 0.3, 8, 500.0),
        ("v4", 0.4, 9, 900.0),
    ]
    scored = score_rows(spark, rows)
    assert {scored[f"u{i}"].f_score for i in range(6)} == {1} and {
        scored[f"u{i}"].m_score for i in range(6)
    } == {1}
    assert (scored["v4"].f_score, scored["v4"].m_score, scored["v1"].r_score) == (5, 5, 5)
    assert (scored["v1"].rfm_label, scored["u0"].rfm_label, scored["u5"].rfm_label) == (
        "Champions",
        "About to Sleep",
        "Hibernating",
    )


def test_the_rfm_grid_labels_every_cell_once():
    cells = [
        (r, f)
        for _, (r_low, r_high), (f_low, f_high) in RFM_GRID
        for r, f in itertools.product(range(r_low, r_high + 1), range(f_low, f_high + 1))
    ]
    assert sorted(cells) == list(itertools.product(range(1, 6), range(1, 6)))


def small_lake(spark, config, root, shop) -> Lake:
    events, users, items = shop
    lake = Lake(spark, config.lake, root)
    lake.write("silver.events", events.withColumn("quantity", F.lit(1)), partition_by=["event_date"])
    lake.write("silver.users", users)
    lake.write("silver.items", items)
    return lake


def test_the_job_is_idempotent_per_run_date(spark, config, lake_root, shop):
    lake = small_lake(spark, config, lake_root, shop)
    argv = ["--lake", lake_root, "--run-date", RUN.isoformat(), "--lookback-days", "30"]
    assert main("features", argv) == 0
    first = lake.read("gold.user_features").cache()
    assert first.count() == 5
    assert main("features", argv) == 0
    assert_df_equality(lake.read("gold.user_features"), first, ignore_row_order=True)

    assert main("features", ["--lake", lake_root, "--run-date", "2024-06-26", "--lookback-days", "30"]) == 0
    both = lake.read("gold.user_features")
    assert_df_equality(both.filter(F.col("as_of_date") == RUN), first, ignore_row_order=True)
    earlier = {r.user_id: r for r in both.filter(F.col("as_of_date") == dt.date(2024, 6, 26)).collect()}
    assert set(earlier) == {"a", "b", "c", "d", "n"}  # d's March view makes d a user already
    assert (earlier["a"].frequency, earlier["d"].frequency, earlier["b"].views) == (1, 0, 2)
    runs = lake.read("ops.job_runs").filter(F.col("job") == "features").orderBy("started_at").collect()
    assert [r.status for r in runs] == ["succeeded"] * 3 and runs[0].counts["users"] == 5


def test_without_silver_events_the_job_stops_with_one_line(spark, lake_root, capsys):
    assert main("features", ["--lake", lake_root, "--run-date", RUN.isoformat()]) == 2
    assert capsys.readouterr().err.strip() == (
        "marketlake features: silver.events does not exist in this lake; run ingest first"
    )

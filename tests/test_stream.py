"""The stream job: application transactions on the lake (recorded, read back, replays skipped), the
per-user MERGE of gold.realtime_recommendations, and the stream itself (--available-now) against batch
ingest of the same files, with a stand-in blend (tests/stream_support.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import threading

import pytest
from chispa import assert_df_equality
from stream_support import land, stand_in

from marketlake import catalog
from marketlake.config import Config
from marketlake.jobs import main
from marketlake.jobs.stream import run as run_stream
from marketlake.lake import Lake
from marketlake.runner import JobContext

REALTIME = catalog.REALTIME_RECOMMENDATIONS
EVENT_COLUMNS = [c for c in catalog.SILVER_EVENTS.column_names if c not in ("batch_id", "ingested_at")]


@pytest.fixture()
def rs_lake(spark, config, lake_root) -> Lake:
    return Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), lake_root)


def test_a_write_records_its_application_transaction_and_a_replay_is_recognised(spark, rs_lake):
    rows = spark.createDataFrame([(1, "a")], "id int, name string")
    assert rs_lake.transaction_version("bronze.t", "app") is None
    rs_lake.with_app_transaction("app", 3).write("bronze.t", rows)  # creates the table
    rs_lake.with_app_transaction("app", 4).write("bronze.t", rows)
    rs_lake.with_app_transaction("other", 1).write("bronze.t", rows)
    assert rs_lake.transaction_version("bronze.t", "app") == 4
    assert rs_lake.transaction_version("bronze.t", "other") == 1
    assert rs_lake.with_app_transaction("app", 4).committed("bronze.t")
    assert rs_lake.with_app_transaction("app", 2).committed("bronze.t")
    assert not rs_lake.with_app_transaction("app", 5).committed("bronze.t")
    assert not rs_lake.committed("bronze.t")  # a lake without a transaction never skips
    history = rs_lake.history("bronze.t", limit=1)[0]
    assert history["user_metadata"]["marketlake.transaction"] == "other:1"


def test_replace_groups_replaces_each_users_rows_whole_and_leaves_others(spark, rs_lake):
    now = dt.datetime(2026, 12, 2, 12, tzinfo=dt.timezone.utc)
    schema = ", ".join(f"{n} {t}" for n, t in REALTIME.columns)

    def rows(*items: tuple[str, int, str]):
        return spark.createDataFrame([(u, r, i, 1.0 / r, "session", now, now) for u, r, i in items], schema)

    first = rows(("a", 1, "x"), ("a", 2, "y"), ("a", 3, "z"), ("b", 1, "x"), ("b", 2, "w"))
    rs_lake.replace_groups(REALTIME, first, "user_id", list(REALTIME.keys))
    # a's list shrinks to one new item, c is new, b is not in this batch
    rs_lake.with_app_transaction("s", 7).replace_groups(
        REALTIME, rows(("a", 1, "q"), ("c", 1, "x")), "user_id", list(REALTIME.keys)
    )
    got = {(r.user_id, r.rank, r.item_id) for r in rs_lake.read(REALTIME).collect()}
    assert got == {("a", 1, "q"), ("b", 1, "x"), ("b", 2, "w"), ("c", 1, "x")}
    assert rs_lake.transaction_version(REALTIME, "s") == 7
    # after a compaction (files deltalake wrote, whose strings its dataset reads as string_view) and a merge
    rs_lake.compact(REALTIME)
    rs_lake.replace_groups(REALTIME, rows(("b", 1, "v")), "user_id", list(REALTIME.keys))
    rs_lake.replace_groups(REALTIME, rows(("c", 1, "y"), ("c", 2, "x")), "user_id", list(REALTIME.keys))
    got = {(r.user_id, r.rank, r.item_id) for r in rs_lake.read(REALTIME).collect()}
    assert got == {("a", 1, "q"), ("b", 1, "v"), ("c", 1, "y"), ("c", 2, "x")}


def context(spark, config: Config, lake: Lake) -> JobContext:
    return JobContext("stream", spark, config.with_lake_root(lake.root), lake, dt.date(2026, 12, 2), "test")


def stream_args(source, available_now: bool = True) -> argparse.Namespace:
    return argparse.Namespace(available_now=available_now, source=str(source), mapping=None)


def silver(lake: Lake):
    return lake.read(catalog.SILVER_EVENTS).select(*EVENT_COLUMNS)


@pytest.mark.slow  # two stream starts and a batch ingest: minutes on a busy 2-core machine
def test_available_now_ingests_like_batch_ingest_and_merges_the_active_users(spark, config, tmp_path):
    landing = tmp_path / "landing"
    for number in range(4):
        land(landing, number)
    settings = config.stream.model_copy(update={"max_files_per_trigger": 2, "compact_every_batches": 2})
    stream_config = config.model_copy(update={"stream": settings})
    lake = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), str(tmp_path / "lake"))
    ctx = context(spark, stream_config, lake)
    run_stream(ctx, stream_args(landing), realtime=stand_in())
    assert ctx.counts["batches"] == 2
    assert ctx.counts["events.records_read"] == (
        ctx.counts["events.accepted"] + ctx.counts["events.rejected"] + ctx.counts["events.duplicates"]
    )
    assert ctx.counts["events.duplicates"] >= 1 and ctx.counts["events.rejected"] == 8

    batch_root = str(tmp_path / "batch-lake")
    assert main("ingest", ["--lake", batch_root, "--source", str(landing)]) == 0
    batch = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), batch_root)
    assert_df_equality(silver(lake), silver(batch), ignore_row_order=True, ignore_nullable=True)
    quarantined = ["raw", "reason", "source_file"]
    assert_df_equality(
        lake.read("quarantine.events").select(*quarantined),
        batch.read("quarantine.events").select(*quarantined),
        ignore_row_order=True,
    )
    # One list per user, from the user's last session: the stand-in over silver gives the same rows.
    realtime = lake.read(REALTIME)
    assert realtime.select("user_id").distinct().count() == 3
    expected = stand_in().blend(
        silver(lake),
        spark.createDataFrame([], "a int"),
        spark.createDataFrame([], "a int"),
        None,
        dt.datetime.now(dt.timezone.utc),
    )
    assert_df_equality(
        realtime.drop("updated_at"),
        expected.drop("updated_at"),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    # compaction ran (every 2 batches) and a second start finds nothing new
    versions = {t: lake.version(t) for t in ("silver.events", "bronze.events", REALTIME.name)}
    again = context(spark, stream_config, lake)
    run_stream(again, stream_args(landing), realtime=stand_in())
    assert again.counts.get("batches", 0) == 0
    assert {t: lake.version(t) for t in versions} == versions


def test_a_replayed_micro_batch_writes_nothing_again(spark, config, tmp_path):
    """The exactly-once check: micro-batch 0 run a second time (as after a crash between its last commit
    and Spark's own commit) finds every table holding its transaction and skips them all."""
    from marketlake.ingest import IngestRequest
    from marketlake.mapping import load_mapping
    from marketlake.stream import MicroBatch

    landing = tmp_path / "landing"
    land(landing, 0)
    land(landing, 1)
    lake = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), str(tmp_path / "lake"))
    ctx = context(spark, config, lake)
    mapping = load_mapping("shop_events")
    request = IngestRequest("events", str(landing), mapping, "json")
    handler = MicroBatch(ctx, request, config.ingest, config.stream, stand_in(), threading.Event())
    files = spark.read.format("binaryFile").load(str(landing)).select("path", "length", "modificationTime")
    handler(files, 0)
    tables = ["bronze.events", "silver.events", "quarantine.events", "ops.ingested_files", REALTIME.name]
    versions = {t: lake.version(t) for t in tables}
    assert all(lake.transaction_version(t, "marketlake-stream:events") == 0 for t in tables)
    handler(files, 0)
    assert {t: lake.version(t) for t in tables} == versions
    assert ctx.counts["events.tables_replayed"] == 4
    # without the check the replay would have written: bronze/silver/quarantine dedupe by content, but
    # the manifest and realtime table take every write
    handler(files, 1)
    assert lake.version("ops.ingested_files") == versions["ops.ingested_files"] + 1


def test_a_stop_request_ends_the_stream_before_the_next_batch_writes(spark, config, tmp_path):
    from marketlake.errors import MarketlakeError
    from marketlake.stream import MicroBatch, StopRequested

    stopping = threading.Event()
    stopping.set()
    lake = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), str(tmp_path / "lake"))
    handler = MicroBatch(context(spark, config, lake), None, config.ingest, config.stream, None, stopping)  # type: ignore[arg-type]
    with pytest.raises(StopRequested):
        handler(spark.createDataFrame([], "path string"), 0)
    assert issubclass(StopRequested, MarketlakeError)
    assert not lake.exists("silver.events")


def test_the_stream_job_refuses_a_missing_landing_folder(tmp_path, capsys):
    code = main("stream", ["--lake", str(tmp_path / "lake"), "--source", str(tmp_path / "nowhere")])
    assert code == 2
    assert "landing folder not found" in capsys.readouterr().err


def test_kafka_needs_its_connector(spark, config, tmp_path):
    from marketlake.errors import UsageError
    from marketlake.lake.jvm import class_loads
    from marketlake.stream import kafka_source

    if class_loads(spark, "org.apache.spark.sql.kafka010.KafkaSourceProvider"):
        pytest.skip("the Kafka connector is on the classpath here")
    settings = config.stream.model_copy(update={"source": "kafka"})
    with pytest.raises(UsageError, match="spark-sql-kafka"):
        kafka_source(spark, settings)


def test_the_stream_merges_the_sessions_blend_of_the_next_items_and_the_daily_list(spark, config, tmp_path):
    """The real blend (marketlake.sessions): a user browsing i1 gets i1's next items from gold.next_items
    ahead of the rest of their daily list, without the items of the session itself being bought."""
    landing = tmp_path / "landing"
    land(landing, 0, users=1, per_user=1)  # u0 views one item in session s0
    viewed = spark.read.json(str(landing)).select("item_id").first()[0]
    lake = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), str(tmp_path / "lake"))
    as_of = dt.date(2024, 6, 28)
    next_rows = [(viewed, 1, "n1", 0.7, "v", as_of), (viewed, 2, "n2", 0.6, "v", as_of)]
    lake.write(
        catalog.NEXT_ITEMS,
        spark.createDataFrame(next_rows, catalog.NEXT_ITEMS.ddl()),
        partition_by=["as_of_date"],
    )
    daily_rows = [("u0", r, f"d{r}", 1.0 / r, "als", "v", as_of) for r in (1, 2, 3)]
    lake.write(
        catalog.USER_RECOMMENDATIONS,
        spark.createDataFrame(daily_rows, catalog.USER_RECOMMENDATIONS.ddl()),
        partition_by=["as_of_date"],
    )

    ctx = context(spark, config, lake)
    run_stream(ctx, stream_args(landing))

    rows = lake.read(REALTIME).filter("user_id = 'u0'").orderBy("rank").collect()
    items = [r.item_id for r in rows]
    assert items[:2] == ["n1", "n2"] and {"d1", "d2", "d3"} <= set(items)
    assert {r.source for r in rows[:2]} <= {"session", "blend"} and rows[-1].source == "daily"
    assert [r.rank for r in rows] == list(range(1, len(rows) + 1))

"""The contract of marketlake.lake, run against every engine available here.

Tables are checked with readers that know nothing of marketlake: the `deltalake` package and polars.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from pyspark.sql import functions as F

from marketlake.errors import ConcurrentWriteError, TableError
from marketlake.lake import WriteOptions


def events(spark, n=600, days=3, offset=0):
    """A small events-like frame: string, long, double, timestamp (with microseconds), date, nulls."""
    return spark.range(offset, offset + n).select(
        F.concat(F.lit("e"), F.col("id").cast("string")).alias("event_id"),
        F.when(F.col("id") % 7 == 0, F.lit(None))
        .otherwise(F.concat(F.lit("u"), (F.col("id") % 50).cast("string")))
        .alias("user_id"),
        (F.col("id") * 1.25).alias("price"),
        F.expr("timestamp_micros(1704067200000000 + id * 86400000000 div 200 + 123)").alias("event_ts"),
        F.expr(f"date_add(date'2024-01-01', cast(id % {days} as int))").alias("event_date"),
    )


def read_sorted(lake, table, version=None):
    return lake.read(table, version).orderBy("event_id")


def delta_files(lake, table, version=None):
    return pa.table(DeltaTable(lake.path(table), version=version).get_add_actions(flatten=True))


def test_roundtrip_through_independent_readers(lake, spark):
    df = events(spark)
    result = lake.write("silver.events", df, partition_by=["event_date"])
    assert result.version == 0 and result.rows == 600
    assert_df_equality(lake.read("silver.events"), df, ignore_row_order=True, ignore_nullable=True)

    expected = df.toPandas().sort_values("event_id").reset_index(drop=True)
    via_deltalake = (
        DeltaTable(lake.path("silver.events")).to_pandas().sort_values("event_id").reset_index(drop=True)
    )
    via_polars = pl.read_delta(lake.path("silver.events")).sort("event_id")
    via_deltalake["event_ts"] = via_deltalake["event_ts"].dt.tz_convert("UTC").dt.tz_localize(None)
    pd.testing.assert_frame_equal(via_deltalake[expected.columns], expected, check_dtype=False)
    assert via_polars["event_id"].to_list() == expected["event_id"].tolist()
    assert via_polars["price"].to_list() == expected["price"].tolist()
    assert via_polars.schema["event_date"] == pl.Date
    assert via_polars["event_date"].to_list() == expected["event_date"].tolist()
    # microseconds survive (Spark's default INT96 would not be read as such by Delta readers)
    micros = [t.replace(tzinfo=None) for t in via_polars["event_ts"].to_list()]
    assert micros == [t.to_pydatetime() for t in expected["event_ts"]]
    assert all(t.microsecond % 1000 == 123 for t in micros)
    assert DeltaTable(lake.path("silver.events")).metadata().partition_columns == ["event_date"]


def test_add_actions_carry_partition_values_and_per_file_statistics(lake, spark):
    lake.write("silver.events", events(spark), partition_by=["event_date"])
    actions = delta_files(lake, "silver.events").to_pylist()
    assert actions, "the write added files"
    for action in actions:
        path = DeltaTable(lake.path("silver.events")).table_uri.rstrip("/") + "/" + action["path"]
        data = pq.read_table(path.replace("file://", "")).to_pandas()
        assert action["num_records"] == len(data)
        assert action["size_bytes"] == os.path.getsize(path.replace("file://", ""))
        assert action["min.event_id"] == data["event_id"].min()
        assert action["max.event_id"] == data["event_id"].max()
        assert action["min.price"] == data["price"].min() and action["max.price"] == data["price"].max()
        assert action["null_count.user_id"] == data["user_id"].isna().sum()
        assert action["null_count.price"] == 0
        low, high = data["event_ts"].min(), data["event_ts"].max()
        assert action["min.event_ts"] <= low.to_pydatetime().replace(tzinfo=dt.timezone.utc)
        assert action["max.event_ts"] >= high.to_pydatetime().replace(tzinfo=dt.timezone.utc)
        assert str(action["partition.event_date"]) in path


def test_partition_overwrite_replaces_exactly_the_selected_partitions(lake, spark):
    lake.write("silver.events", events(spark, days=3), partition_by=["event_date"])
    before = {a["path"]: a["partition.event_date"] for a in delta_files(lake, "silver.events").to_pylist()}
    replacement = events(spark, n=40, offset=10_000).withColumn("event_date", F.lit(dt.date(2024, 1, 2)))
    result = lake.write("silver.events", replacement, mode="overwrite", partitions="dynamic")
    after = {a["path"]: a["partition.event_date"] for a in delta_files(lake, "silver.events").to_pylist()}

    replaced = {p for p, d in before.items() if d == dt.date(2024, 1, 2)}
    assert set(before) - set(after) == replaced
    assert result.files_removed == len(replaced) and result.version == 1
    log = os.path.join(lake.path("silver.events"), "_delta_log", "00000000000000000001.json")
    with open(log) as commit:
        removes = [json.loads(line)["remove"]["path"] for line in commit if '"remove"' in line]
    assert {p for p in removes} == replaced

    expected = events(spark, days=3).filter("event_date <> date'2024-01-02'").unionByName(replacement)
    assert_df_equality(lake.read("silver.events"), expected, ignore_row_order=True, ignore_nullable=True)
    via_polars = pl.read_delta(lake.path("silver.events"))
    assert via_polars.height == expected.count()
    assert via_polars.filter(pl.col("event_date") == dt.date(2024, 1, 2)).height == 40

    # and the older version still reads as it was, through marketlake and through deltalake
    assert_df_equality(
        lake.read("silver.events", version=0),
        events(spark, days=3),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert len(DeltaTable(lake.path("silver.events"), version=0).to_pandas()) == 600
    assert pl.read_delta(lake.path("silver.events"), version=0).height == 600


def test_explicit_partition_overwrite_refuses_rows_outside_the_partitions(lake, spark):
    lake.write("silver.events", events(spark, days=3), partition_by=["event_date"])
    with pytest.raises(TableError, match="outside the partitions"):
        lake.write(
            "silver.events",
            events(spark, days=3),
            mode="overwrite",
            partitions={"event_date": ["2024-01-01"]},
        )
    assert lake.version("silver.events") == 0
    only_first = events(spark, days=3).filter("event_date = date'2024-01-01'").limit(5)
    lake.write(
        "silver.events", only_first, mode="overwrite", partitions={"event_date": [dt.date(2024, 1, 1)]}
    )
    counts = {
        r.event_date: r["count"] for r in lake.read("silver.events").groupBy("event_date").count().collect()
    }
    assert counts == {dt.date(2024, 1, 1): 5, dt.date(2024, 1, 2): 200, dt.date(2024, 1, 3): 200}


def test_full_overwrite_and_versions(lake, spark):
    lake.write("gold.t", events(spark, n=100, days=1))
    lake.write("gold.t", events(spark, n=30, days=1), mode="overwrite")
    lake.write("gold.t", events(spark, n=10, days=1, offset=500))
    assert lake.version("gold.t") == 2
    assert [lake.read("gold.t", v).count() for v in range(3)] == [100, 30, 40]
    assert [len(DeltaTable(lake.path("gold.t"), version=v).to_pandas()) for v in range(3)] == [100, 30, 40]
    history = lake.history("gold.t")
    assert [h["version"] for h in history] == [2, 1, 0]


def test_empty_table_reads_as_empty_frame_with_schema(lake, spark):
    df = events(spark).limit(0)
    lake.write("gold.empty", df, partition_by=["event_date"])
    back = lake.read("gold.empty")
    assert back.count() == 0
    assert [(f.name, f.dataType) for f in back.schema] == [(f.name, f.dataType) for f in df.schema]
    assert pl.read_delta(lake.path("gold.empty")).height == 0


def test_append_enforces_schema(lake, spark):
    lake.write("silver.events", events(spark), partition_by=["event_date"])
    with pytest.raises(TableError, match="column 'price' has type string but the table has double"):
        lake.write("silver.events", events(spark).withColumn("price", F.col("price").cast("string")))
    with pytest.raises(TableError, match="column 'channel' is not in the table's schema"):
        lake.write("silver.events", events(spark).withColumn("channel", F.lit("web")))
    with pytest.raises(TableError, match="partitioned by"):
        lake.write("silver.events", events(spark), partition_by=["user_id"])
    assert lake.version("silver.events") == 0

    lake.write(
        "silver.events",
        events(spark, n=10, offset=900).withColumn("channel", F.lit("web")),
        merge_schema=True,
    )
    back = lake.read("silver.events")
    assert back.columns == ["event_id", "user_id", "price", "event_ts", "event_date", "channel"]
    assert back.filter("channel = 'web'").count() == 10 and back.filter("channel is null").count() == 600
    # a missing column is filled with nulls, columns come in the table's order
    lake.write(
        "silver.events",
        events(spark, n=5, offset=2000).drop("user_id").select("price", "event_id", "event_ts", "event_date"),
    )
    assert lake.read("silver.events").filter("event_id = 'e2000'").first().user_id is None
    assert "channel" in pl.read_delta(lake.path("silver.events")).columns


def test_partition_values_with_special_characters(lake, spark):
    values = ["a:b c", "x/y%z", "plain", "é=ü", None]
    df = spark.createDataFrame([(i, v) for i, v in enumerate(values)], "id long, category string")
    lake.write("silver.items", df, partition_by=["category"])
    assert sorted(lake.read("silver.items").collect()) == sorted(df.collect())
    via_polars = pl.read_delta(lake.path("silver.items")).sort("id")
    assert via_polars["category"].to_list() == values
    assert sorted(DeltaTable(lake.path("silver.items")).to_pandas()["category"].fillna("<null>")) == sorted(
        v or "<null>" for v in values
    )


def test_upsert_on_keys(lake, spark):
    first = spark.createDataFrame(
        [("u1", "north", 30), ("u2", "south", 40)], "user_id string, region string, age int"
    )
    second = spark.createDataFrame(
        [("u2", "east", 41), ("u3", "west", 22)], "user_id string, region string, age int"
    )
    lake.upsert("silver.users", first, keys=["user_id"])
    lake.upsert("silver.users", second, keys=["user_id"])
    rows = sorted(tuple(r) for r in lake.read("silver.users").collect())
    assert rows == [("u1", "north", 30), ("u2", "east", 41), ("u3", "west", 22)]
    assert sorted(pl.read_delta(lake.path("silver.users"))["user_id"].to_list()) == ["u1", "u2", "u3"]
    with pytest.raises(TableError, match="more than one row for key"):
        lake.upsert("silver.users", first.unionByName(first), keys=["user_id"])


def test_failed_write_changes_nothing(lake, spark):
    lake.write("silver.events", events(spark), partition_by=["event_date"])
    poisoned = events(spark).withColumn(
        "price", F.when(F.col("event_id") == "e599", F.raise_error(F.lit("boom"))).otherwise(F.col("price"))
    )
    with pytest.raises(Exception, match="boom"):
        lake.write("silver.events", poisoned)
    assert lake.version("silver.events") == 0
    assert lake.read("silver.events").count() == 600
    assert pl.read_delta(lake.path("silver.events")).height == 600


def test_table_names_are_layer_dot_name(lake):
    with pytest.raises(TableError, match="layer.name"):
        lake.path("../escape")
    with pytest.raises(TableError, match="does not exist"):
        lake.read("gold.missing")
    assert not lake.exists("gold.missing")


def test_compact_rewrites_small_files_into_fewer_with_the_same_rows(lake, spark):
    for offset in range(0, 400, 100):  # four appends: several small files per partition
        lake.write("silver.events", events(spark, n=100, days=2, offset=offset), partition_by=["event_date"])
    before = len(delta_files(lake, "silver.events"))
    expected = lake.read("silver.events")
    first_day = dt.date(2024, 1, 1)

    only_one = lake.compact("silver.events", partitions={"event_date": [first_day]})
    assert only_one.partitions == 1 and only_one.files_added == 1
    assert only_one.files_removed == len(
        [
            a
            for a in delta_files(lake, "silver.events", version=3).to_pylist()
            if a["partition.event_date"] == first_day
        ]
    )
    everything = lake.compact("silver.events")
    assert everything.partitions == 1 and everything.files_added == 1  # the first day was already compact
    assert len(delta_files(lake, "silver.events")) == 2 < before
    assert_df_equality(lake.read("silver.events"), expected, ignore_row_order=True, ignore_nullable=True)
    assert pl.read_delta(lake.path("silver.events")).height == 400


def test_expire_log_keeps_the_table_and_ends_time_travel_before_the_checkpoint(lake, spark):
    for offset in range(0, 300, 100):
        lake.write("gold.t", events(spark, n=100, days=1, offset=offset))
    log = os.path.join(lake.path("gold.t"), "_delta_log")
    assert lake.read("gold.t", version=0).count() == 100

    lake.checkpoint("gold.t")
    assert glob.glob(os.path.join(log, "*.checkpoint.parquet"))
    deleted = lake.expire_log("gold.t", retention_hours=0)

    assert deleted >= 3
    assert not glob.glob(os.path.join(log, "00000000000000000000.json"))
    assert lake.read("gold.t").count() == 300
    assert DeltaTable(lake.path("gold.t")).to_pyarrow_table().num_rows == 300
    with pytest.raises(Exception, match="(?i)version"):
        lake.read("gold.t", version=0).count()
    lake.write("gold.t", events(spark, n=10, days=1, offset=900))  # the table takes writes after
    assert pl.read_delta(lake.path("gold.t")).height == 310


def test_data_files_list_the_current_version_with_partitions_bytes_and_rows(lake, spark):
    lake.write("silver.events", events(spark, days=3), partition_by=["event_date"])
    files = lake.data_files("silver.events")
    assert sum(f.rows for f in files) == 600 and all(f.size > 0 for f in files)
    assert {dict(f.partition)["event_date"] for f in files} == {"2024-01-01", "2024-01-02", "2024-01-03"}
    per_day = lake.read("silver.events").groupBy("event_date").count().collect()
    rows = {str(r["event_date"]): r["count"] for r in per_day}
    for day, count in rows.items():
        assert sum(f.rows for f in files if dict(f.partition)["event_date"] == day) == count


def test_delete_partitions_removes_whole_partitions_in_one_commit(lake, spark):
    lake.write("silver.events", events(spark, days=3), partition_by=["event_date"])
    gone = dt.date(2024, 1, 1)
    result = lake.delete_partitions("silver.events", {"event_date": [gone, dt.date(2030, 1, 1)]})

    assert result.version == 1 and result.files_added == 0
    expected = events(spark, days=3).filter(F.col("event_date") != F.lit(gone))
    assert_df_equality(lake.read("silver.events"), expected, ignore_row_order=True, ignore_nullable=True)
    assert pl.read_delta(lake.path("silver.events")).height == expected.count()
    assert lake.read("silver.events", version=0).count() == 600  # removed, not rewritten: time travel holds
    assert lake.history("silver.events", 1)[0]["user_metadata"].get("marketlake.operation") == (
        "delete partitions"
    )
    # nothing left to delete: no commit
    assert lake.delete_partitions("silver.events", {"event_date": [gone]}).version == 1
    assert lake.version("silver.events") == 1
    with pytest.raises(TableError, match="partition columns"):
        lake.delete_partitions("silver.events", {"user_id": ["u1"]})


# ---- delta-rs specifics: staging, vacuum, concurrency ----------------------------------------------


@pytest.fixture()
def rs_lake(spark, config, lake_root):
    from marketlake.lake import Lake

    return Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), lake_root)


def test_write_killed_before_commit_is_invisible_and_vacuumed(rs_lake, spark):
    lake = rs_lake
    lake.write("silver.events", events(spark), partition_by=["event_date"])
    table = lake.path("silver.events")
    # A write that died after Spark wrote its files and after they were moved, but before the commit:
    schema = lake.read("silver.events").schema
    lake.engine._stage("silver.events", table, events(spark, offset=5000), schema, ["event_date"])
    # ... and one that died while Spark was still writing into the staging folder.
    os.makedirs(os.path.join(table, "_staging", "deadbeef"), exist_ok=True)
    with open(os.path.join(table, "_staging", "deadbeef", "part-0.parquet"), "wb") as handle:
        handle.write(b"half a file")
    on_disk = glob.glob(os.path.join(table, "event_date=*", "*.parquet"))
    assert len(on_disk) > len(delta_files(lake, "silver.events"))

    assert lake.read("silver.events").count() == 600
    assert pl.read_delta(table).height == 600
    assert lake.version("silver.events") == 0

    deleted = lake.vacuum("silver.events", retention_hours=0)
    assert deleted
    left = {os.path.relpath(p, table) for p in glob.glob(os.path.join(table, "event_date=*", "*.parquet"))}
    assert left == {a["path"] for a in delta_files(lake, "silver.events").to_pylist()}
    assert not os.path.exists(os.path.join(table, "_staging", "deadbeef"))
    assert lake.read("silver.events").count() == 600


def test_vacuum_of_removed_files_only_spares_a_write_in_flight(rs_lake, spark):
    lake = rs_lake
    lake.write("gold.t", events(spark, n=50, days=1))
    replaced = {a["path"] for a in delta_files(lake, "gold.t").to_pylist()}
    lake.write("gold.t", events(spark, n=20, days=1), mode="overwrite")
    table = lake.path("gold.t")
    # a concurrent writer's files, staged and moved in place, not committed yet
    schema = lake.read("gold.t").schema
    in_flight = lake.engine._stage("gold.t", table, events(spark, n=5, days=1, offset=900), schema, [])
    assert in_flight

    deleted = lake.vacuum("gold.t", retention_hours=0, removed_only=True)

    assert {os.path.basename(p) for p in deleted} == {os.path.basename(p) for p in replaced}
    assert all(os.path.exists(os.path.join(table, f.relative_path)) for f in in_flight)
    assert lake.read("gold.t").count() == 20


def test_vacuum_keeps_files_within_retention(rs_lake, spark):
    lake = rs_lake
    lake.write("gold.t", events(spark, n=50, days=1))
    lake.write("gold.t", events(spark, n=20, days=1), mode="overwrite")
    assert lake.vacuum("gold.t") == []  # default retention: a week; version 0 stays readable
    assert lake.read("gold.t", version=0).count() == 50


def test_overwrite_from_a_stale_snapshot_fails_clearly(rs_lake, spark):
    lake = rs_lake
    lake.write("gold.t", events(spark, n=50, days=1))
    lake.write("gold.t", events(spark, n=5, days=1, offset=100))  # another writer, meanwhile
    with pytest.raises(ConcurrentWriteError, match="another writer committed"):
        lake.engine.write(
            "gold.t",
            lake.path("gold.t"),
            events(spark, n=7, days=1),
            WriteOptions(mode="overwrite", operation="overwrite", expected_version=0),
        )
    assert lake.version("gold.t") == 1 and lake.read("gold.t").count() == 55
    leftovers = set(glob.glob(os.path.join(lake.path("gold.t"), "*.parquet")))
    assert len(leftovers) == len(delta_files(lake, "gold.t")), "the failed write removed its files"


def test_append_from_a_stale_snapshot_lands_unless_checked(rs_lake, spark):
    lake = rs_lake
    lake.write("gold.t", events(spark, n=50, days=1))
    lake.write("gold.t", events(spark, n=5, days=1, offset=100))
    with pytest.raises(ConcurrentWriteError):
        lake.engine.write(
            "gold.t",
            lake.path("gold.t"),
            events(spark, n=7, days=1, offset=200),
            WriteOptions(expected_version=0),
        )
    assert lake.version("gold.t") == 1
    lake.engine.write("gold.t", lake.path("gold.t"), events(spark, n=7, days=1, offset=200), WriteOptions())
    assert lake.version("gold.t") == 2 and lake.read("gold.t").count() == 62


def test_delete_partitions_beside_a_concurrent_append_loses_nothing(rs_lake, spark, config, lake_root):
    """An append that commits between the delete's snapshot and its commit: the delete is decided again
    on the new version, and both land."""
    from marketlake.lake import Lake

    lake = rs_lake
    other = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), lake_root)
    lake.write("silver.events", events(spark, n=60, days=3), partition_by=["event_date"])
    stage, raced = lake.engine._stage, []

    def stage_then_race(*args, **kwargs):
        staged = stage(*args, **kwargs)
        if not raced:  # another writer appends, into the partition being deleted and into another
            raced.append(other.write("silver.events", events(spark, n=10, days=2, offset=1000)))
        return staged

    lake.engine._stage = stage_then_race
    lake.delete_partitions("silver.events", {"event_date": [dt.date(2024, 1, 1)]})

    assert raced and lake.version("silver.events") == 2
    rows = lake.read("silver.events")
    assert rows.filter(F.col("event_date") == F.lit(dt.date(2024, 1, 1))).count() == 0
    appended = rows.filter(F.col("event_id").isin([f"e{i}" for i in range(1000, 1010)]))
    assert appended.count() == 5  # the appended day 2 rows: they landed (the day 1 ones went with their day)
    assert rows.count() == 40 + 5


# ---- the engine protocol, the table listing, session settings ---------------------------------------


def test_both_engines_have_the_engine_protocols_methods():
    import inspect

    from marketlake.lake.delta_rs import DeltaRsEngine
    from marketlake.lake.delta_spark import DeltaSparkEngine
    from marketlake.lake.engine import Engine

    wanted = {
        name: list(inspect.signature(member).parameters)
        for name, member in vars(Engine).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }
    assert {"write", "tables_under", "vacuum"} <= set(wanted)
    for engine in (DeltaRsEngine, DeltaSparkEngine):
        assert isinstance(engine.name, str)
        have = {
            name: list(inspect.signature(getattr(engine, name)).parameters)
            for name in wanted
            if hasattr(engine, name)
        }
        assert have == wanted, engine.__name__


def test_tables_lists_the_delta_tables_under_the_root_with_version_and_rows(lake, spark):
    lake.write("silver.events", events(spark), partition_by=["event_date"])
    lake.write("silver.events", events(spark, n=10, offset=1000))
    lake.write("gold.t", events(spark, n=5, days=1))
    os.makedirs(os.path.join(lake.root, "models", "m", "v1"))  # folders that are not tables
    os.makedirs(os.path.join(lake.root, "gold", "Not_A_Name", "_delta_log"))
    open(os.path.join(lake.root, "stray.txt"), "w").close()
    assert lake.tables() == [("gold.t", 0, 5), ("silver.events", 1, 610)]


def test_a_write_checks_the_session_settings_and_changes_none(rs_lake, spark):
    key = "spark.sql.parquet.outputTimestampType"
    spark.conf.set(key, "INT96")
    try:
        with pytest.raises(TableError, match=f"{key}=INT96"):
            rs_lake.write("gold.t", events(spark, n=5, days=1))
        assert spark.conf.get(key) == "INT96"
    finally:
        spark.conf.set(key, "TIMESTAMP_MICROS")
    assert not rs_lake.exists("gold.t") and not os.path.exists(
        os.path.join(rs_lake.path("gold.t"), "_staging")
    )

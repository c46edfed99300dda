from __future__ import annotations

import os
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable, Schema
from deltalake.transaction import AddAction, create_table_with_add_actions

from marketlake.lake import Lake

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_concurrent_appends_from_two_processes_all_land(tmp_path):
    root = str(tmp_path / "lake")
    env = {
        **os.environ,
        "MARKETLAKE_MASTER": "local[1]",
        "MARKETLAKE__SPARK__DRIVER_MEMORY": "1g",
        "PYSPARK_PYTHON": sys.executable,
    }
    writers = [
        subprocess.Popen(
            [sys.executable, os.path.join(HERE, "concurrent_appender.py"), root, str(w), "4"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (1, 2)
    ]
    for writer in writers:
        out, err = writer.communicate(timeout=600)
        assert writer.returncode == 0, err[-3000:]
    table = pl.read_delta(os.path.join(root, "bronze", "shared"))
    assert table.height == 2 * 4 * 100
    assert sorted(table.group_by("writer", "batch").len().rows()) == [
        (w, b, 100) for w in (1, 2) for b in range(4)
    ]
    assert DeltaTable(os.path.join(root, "bronze", "shared")).version() == 7  # 8 commits, none lost


def test_reads_tables_whose_paths_do_not_spell_partitions(spark, config, tmp_path):
    """A table written by another tool may keep files anywhere; partition values come from the log."""
    root = tmp_path / "lake"
    table_dir = root / "silver" / "foreign"
    (table_dir / "data").mkdir(parents=True)
    adds = []
    for i, region in enumerate(["north", "south", None]):
        path = table_dir / "data" / f"f{i}.parquet"
        pq.write_table(pa.table({"id": pa.array([i * 10, i * 10 + 1], pa.int64())}), path)
        stats = '{"numRecords": 2}'
        adds.append(AddAction(f"data/f{i}.parquet", path.stat().st_size, {"region": region}, 0, True, stats))
    schema = Schema.from_json(
        '{"type":"struct","fields":[{"name":"id","type":"long","nullable":true,"metadata":{}},'
        '{"name":"region","type":"string","nullable":true,"metadata":{}}]}'
    )
    create_table_with_add_actions(str(table_dir), schema, adds, mode="error", partition_by=["region"])
    lake = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), str(root))
    expected = spark.createDataFrame(
        [(0, "north"), (1, "north"), (10, "south"), (11, "south"), (20, None), (21, None)],
        "id long, region string",
    )
    assert_df_equality(lake.read("silver.foreign"), expected, ignore_row_order=True, ignore_nullable=True)


def test_append_joins_a_table_another_writer_created_meanwhile(spark, config, tmp_path, monkeypatch):
    from pyspark.sql import functions as F

    from marketlake.lake.delta_rs import DeltaRsEngine

    lake = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), str(tmp_path / "lake"))
    rows = spark.range(10).select("id", F.lit("a").alias("tag"))
    lake.write("bronze.race", rows)
    real = DeltaRsEngine._table
    calls = []

    def first_sees_no_table(self, uri, version=None):
        calls.append(uri)
        return None if len(calls) == 1 else real(self, uri, version)

    monkeypatch.setattr(DeltaRsEngine, "_table", first_sees_no_table)
    lake.write("bronze.race", rows)  # began when the table did not exist; another writer created it
    monkeypatch.undo()
    assert lake.read("bronze.race").count() == 20 and lake.version("bronze.race") == 1


def test_a_checked_write_on_a_stale_snapshot_commits_nothing(spark, config, tmp_path):
    from marketlake.errors import ConcurrentWriteError
    from marketlake.lake import NO_TABLE

    lake = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), str(tmp_path / "lake"))
    rows = spark.range(3).toDF("id")
    with pytest.raises(ConcurrentWriteError):
        lake.write("silver.keys", rows, partition_by=[], expected_version=0)  # no such version yet
    lake.write("silver.keys", rows, expected_version=NO_TABLE)
    with pytest.raises(ConcurrentWriteError):
        lake.write("silver.keys", rows, expected_version=NO_TABLE)  # created meanwhile
    lake.write("silver.keys", rows)  # version 1, by another writer
    for checked in (
        lambda: lake.write("silver.keys", rows, expected_version=0),
        lambda: lake.upsert("silver.keys", rows, keys=["id"], expected_version=0),
    ):
        with pytest.raises(ConcurrentWriteError):
            checked()
    assert lake.version("silver.keys") == 1 and lake.read("silver.keys").count() == 6
    assert lake.write("silver.keys", rows.limit(0), expected_version=1).version == 1  # no empty commit


def test_retry_on_conflict_decides_again_from_the_new_snapshot(spark, config, tmp_path):
    """A writer that de-duplicates against the table loses the race once, re-reads, and adds only what the
    concurrent writer did not: every key once."""
    lake = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), str(tmp_path / "lake"))
    lake.write("silver.keys", spark.range(1, 4).toDF("id"))
    incoming = spark.range(3, 8).toDF("id")
    seen_versions = []

    def attempt(version):
        held = lake.read_at("silver.keys", version)
        new = incoming.join(held, "id", "left_anti")
        if not seen_versions:  # a concurrent writer commits keys 4 and 5 between our read and our commit
            lake.write("silver.keys", spark.range(4, 6).toDF("id"))
        seen_versions.append(version)
        return lake.write("silver.keys", new, expected_version=version)

    lake.retry_on_conflict("silver.keys", attempt)
    assert seen_versions == [0, 1]
    assert sorted(r.id for r in lake.read("silver.keys").collect()) == [1, 2, 3, 4, 5, 6, 7]

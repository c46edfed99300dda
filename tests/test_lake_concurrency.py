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
        **os.environ, "MARKETLAKE_MASTER": "local[1]", "MARKETLAKE__SPARK__DRIVER_MEMORY": "1g",
        "PYSPARK_PYTHON": sys.executable,
    }
    writers = [
        subprocess.Popen([sys.executable, os.path.join(HERE, "concurrent_appender.py"), root, str(w), "4"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in (1, 2)
    ]
    for writer in writers:
        out, err = writer.communicate(timeout=600)
        assert writer.returncode == 0, err[-3000:]
    table = pl.read_delta(os.path.join(root, "bronze", "shared"))
    assert table.height == 2 * 4 * 100
    assert sorted(table.group_by("writer", "batch").len().rows()) == [(w, b, 100) for w in (1, 2) for b in range(4)]
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
    schema = Schema.from_json('{"type":"struct","fields":[{"name":"id","type":"long","nullable":true,"metadata":{}},'
                              '{"name":"region","type":"string","nullable":true,"metadata":{}}]}')
    create_table_with_add_actions(str(table_dir), schema, adds, mode="error", partition_by=["region"])
    lake = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), str(root))
    expected = spark.createDataFrame(
        [(0, "north"), (1, "north"), (10, "south"), (11, "south"), (20, None), (21, None)], "id long, region string"
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

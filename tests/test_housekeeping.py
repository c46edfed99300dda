"""The housekeeping job: retention by partition and by row, compaction, log clean-up, vacuum, old folders;
re-runs change nothing; concurrent appends land."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.config import RetentionConfig, load_config
from marketlake.errors import ConfigError
from marketlake.jobs import get_job
from marketlake.jobs.housekeeping import expired_partitions, partitions_to_compact, tidy
from marketlake.lake import DataFile, Lake
from marketlake.lake.schema import spark_schema
from marketlake.runner import job_arguments, run_job

RUN_DATE = dt.date(2024, 6, 30)
DAY = dt.timedelta(days=1)


def data_file(day: str | None, size: int, rows: int = 1) -> DataFile:
    return DataFile(path=f"x/{day}/{size}", partition=(("d", day),), size=size, rows=rows)


def test_partitions_before_the_cutoff_expire_with_their_rows():
    files = [data_file("2024-03-31", 10, 3), data_file("2024-03-31", 10, 4), data_file("2024-04-01", 10, 9)]
    files.append(data_file(None, 10, 5))
    assert expired_partitions(files, "d", dt.date(2024, 4, 1)) == {dt.date(2024, 3, 31): 7}


def test_compaction_picks_partitions_of_many_or_small_files():
    files = [data_file("a", 100)] * 5 + [data_file("b", 10)] * 2 + [data_file("c", 10)]
    files += [data_file("d", 1000)] * 2 + [data_file(None, 1)] * 9
    assert partitions_to_compact(files, max_files=4, small_bytes=50) == [(("d", "a"),), (("d", "b"),)]
    unpartitioned = [DataFile("p", (), 10, 1)] * 3
    assert partitions_to_compact(unpartitioned, max_files=8, small_bytes=50) == [()]


@pytest.mark.parametrize(
    "retention, message",
    [
        ({"layers": {"platinum": 3}}, "no layer 'platinum'"),
        ({"tables": {"gold.nope": 3}}, "no table 'gold.nope'"),
        ({"tables": {"silver.users": 30}}, "silver.users has no date partition"),
        ({"date_columns": {"ops.models": "path"}}, "ops.models.path must be a date or timestamp"),
        ({"layers": {"gold": 0}}, "at least 1"),
        ({"log_retention_hours": 24}, "below lake.vacuum_retention_hours"),
    ],
)
def test_retention_config_errors_name_the_problem(tmp_path, retention, message):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"retention": retention}))
    with pytest.raises(ConfigError, match=message):
        load_config(path, {})


def test_days_come_from_the_table_then_its_layer():
    settings = RetentionConfig(tables={"gold.user_features": None, "ops.job_runs": 30})
    assert settings.days("gold.user_features") is None and settings.days("gold.user_segments") == 400
    assert settings.days("ops.job_runs") == 30 and settings.days("ops.models") is None
    assert settings.days("bronze.events") == 90 and settings.days("silver.events") is None


# ---- the job on a small lake ------------------------------------------------------------------------


def raw_lines(spark, days: list[dt.date], per_day: int = 3, offset: int = 0):
    rows = [
        (f'{{"n": {offset + i}, "day": "{day}"}}', "f.json", 1, "b", None, day, None)
        for day in days
        for i in range(per_day)
    ]
    return spark.createDataFrame(rows, spark_schema(catalog.BRONZE_EVENTS))


def job_run_rows(spark, run_dates: list[dt.date]):
    when = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    rows = [
        (f"r{i}", "ingest", day, "succeeded", "", when, when, 1.0, {}, "{}", "delta-rs", "4", "h")
        for i, day in enumerate(run_dates)
    ]
    return spark.createDataFrame(rows, spark_schema(catalog.JOB_RUNS))


@pytest.fixture()
def setup(spark, config, tmp_path):
    """A lake with bronze.events over 100 days in three small appends, silver.events (kept for ever),
    ops.job_runs rows from two years, and export and report folders; housekeeping's config with a
    retention of 0 hours for vacuum and log, so that its effects show at once."""
    settings = config.model_copy(
        update={
            "lake": config.lake.model_copy(update={"engine": "delta-rs", "vacuum_retention_hours": 0}),
            "retention": RetentionConfig(log_retention_hours=0, compact_max_files=2),
        }
    )
    lake = Lake(spark, settings.lake, str(tmp_path / "lake"))
    days = [RUN_DATE - DAY * n for n in (100, 91, 90, 1, 0)]  # 100 and 91 days old expire at 90 days
    for batch in range(3):
        lake.write("bronze.events", raw_lines(spark, days, offset=10 * batch), partition_by=["ingest_date"])
    silver = raw_lines(spark, days).select("raw", F.col("ingest_date").alias("event_date"))
    for _ in range(3):
        lake.write("silver.events", silver, partition_by=["event_date"])
    lake.write(catalog.JOB_RUNS.name, job_run_rows(spark, [dt.date(2023, 5, 1), dt.date(2024, 6, 1)]))
    for folder in ("exports/c1/2024-05-01", "exports/c1/2024-06-29", "exports/_profiles/2024-05-01"):
        os.makedirs(os.path.join(lake.root, folder))
    for day in ("2023-05-01", "2024-06-29"):
        lake.files.write_text(lake.report_path(dt.date.fromisoformat(day)), "<html></html>")
    return lake, settings, days


def run_housekeeping(lake, settings, spark):
    job = get_job("housekeeping")
    args = job_arguments(job, run_date=RUN_DATE, lake=lake.root)
    assert run_job(job, args, spark, settings, lake) == 0
    last = lake.read(catalog.JOB_RUNS.name).filter("job = 'housekeeping'").orderBy(F.desc("ended_at")).first()
    return dict(last["counts"])


def test_housekeeping_expires_compacts_cleans_and_a_rerun_changes_nothing(setup, spark):
    lake, settings, days = setup
    kept_days = [d for d in days if d >= RUN_DATE - 90 * DAY]
    bronze_kept = lake.read("bronze.events").filter(F.col("ingest_date").isin(kept_days))
    bronze_expected = bronze_kept.toPandas()
    silver_before = lake.read("silver.events").toPandas()
    silver_files = len(lake.data_files("silver.events"))
    log = os.path.join(lake.path("bronze.events"), "_delta_log")

    counts = run_housekeeping(lake, settings, spark)

    bronze = lake.read("bronze.events")
    assert sorted({r["ingest_date"] for r in bronze.select("ingest_date").collect()}) == kept_days
    assert_df_equality(
        bronze, spark.createDataFrame(bronze_expected, bronze.schema), ignore_row_order=True
    )  # the partitions kept are row-equal
    assert counts["bronze.events.partitions_expired"] == 2 and counts["bronze.events.rows_expired"] == 18
    silver = lake.read("silver.events")
    assert_df_equality(silver, spark.createDataFrame(silver_before, silver.schema), ignore_row_order=True)
    assert len(lake.data_files("silver.events")) == len(days) < silver_files  # one file per day left
    assert counts["silver.events.files_compacted"] == silver_files
    assert "silver.events.partitions_expired" not in counts  # silver is kept for ever
    # old log entries went (a checkpoint stands in for them), and so did the unreferenced files
    assert not os.path.exists(os.path.join(log, "00000000000000000000.json"))
    assert counts["bronze.events.log_files_removed"] > 0 and counts["silver.events.files_vacuumed"] > 0
    on_disk = {
        os.path.relpath(os.path.join(folder, name), lake.path("silver.events"))
        for folder, _, names in os.walk(lake.path("silver.events"))
        if "_delta_log" not in folder
        for name in names
        if name.endswith(".parquet")
    }
    assert on_disk == {f.path for f in lake.data_files("silver.events")}
    # rows of ops.job_runs older than 400 days went; this run's own row and the recent one stay
    runs = lake.read(catalog.JOB_RUNS.name).select("run_date").collect()
    assert sorted({r["run_date"] for r in runs}) == [dt.date(2024, 6, 1), RUN_DATE]
    assert counts["ops.job_runs.rows_expired"] == 1
    # export folders older than 30 days and reports older than 400 days went
    left = sorted(
        os.path.relpath(os.path.join(folder, name), lake.root)
        for folder, names, _ in os.walk(lake.root)
        if os.path.relpath(folder, lake.root).startswith(("exports", "reports"))
        for name in names
        if name[:2] == "20"
    )
    assert left == ["exports/c1/2024-06-29", "reports/2024-06-29"]
    assert counts["folders_expired"] == 3

    versions = {t: lake.version(t) for t in ("bronze.events", "silver.events")}
    contents = lake.read("bronze.events").toPandas()
    again = run_housekeeping(lake, settings, spark)
    assert {t: lake.version(t) for t in versions} == versions  # nothing committed
    # (ops.job_runs holds the first run's own record, new since: it may be tidied in turn)
    assert {k: v for k, v in again.items() if v and "." in k and not k.startswith("ops.")} == {}
    assert again["partitions_expired"] == again["rows_expired"] == again["folders_expired"] == 0
    assert_df_equality(
        lake.read("bronze.events"), spark.createDataFrame(contents, bronze.schema), ignore_row_order=True
    )


def test_appends_that_land_while_housekeeping_decides_are_kept(setup, spark):
    """Another writer commits between housekeeping's snapshot and its commit, for each commit that removes
    files (partition delete, compaction, the row expiry's rewrite): every appended row is there after."""
    lake, settings, days = setup
    other = Lake(spark, settings.lake, lake.root)
    raced: list[str] = []
    compact, read_at, delete = lake.compact, lake.read_at, lake.delete_partitions

    def racing(table, frame, name):
        if name not in raced:
            raced.append(name)
            other.write(table, frame)

    def delete_racing(table, partitions):
        stage = lake.engine._stage

        def stage_then_append(*args, **kwargs):
            staged = stage(*args, **kwargs)
            racing("bronze.events", raw_lines(spark, [RUN_DATE], offset=500), "delete")
            return staged

        lake.engine._stage = stage_then_append
        try:
            return delete(table, partitions)
        finally:
            lake.engine._stage = stage

    def compact_racing(table, partitions, target):
        opened = lake.engine._open

        def open_then_append(*args, **kwargs):
            snapshot = opened(*args, **kwargs)  # compaction works from this snapshot
            if table.name == "silver.events":
                fresh = raw_lines(spark, [RUN_DATE], offset=700).select(
                    "raw", F.col("ingest_date").alias("event_date")
                )
                racing("silver.events", fresh, "compact")
            return snapshot

        lake.engine._open = open_then_append
        try:
            return compact(table, partitions, target)
        finally:
            lake.engine._open = opened

    def read_at_racing(table, version):
        frame = read_at(table, version)
        racing(table, job_run_rows(spark, [dt.date(2024, 6, 2)]), "expire rows")
        return frame

    lake.delete_partitions, lake.compact, lake.read_at = delete_racing, compact_racing, read_at_racing
    for table in (catalog.BRONZE_EVENTS, catalog.SILVER_EVENTS, catalog.JOB_RUNS):
        tidy(lake, table, settings.retention, RUN_DATE)

    assert raced == ["delete", "compact", "expire rows"]
    bronze = lake.read("bronze.events")
    assert bronze.filter(F.col("raw").contains('"n": 500,')).count() == 1  # the append during the delete
    assert bronze.filter(F.col("ingest_date") < F.lit(RUN_DATE - 90 * DAY)).count() == 0
    silver = lake.read("silver.events")
    assert silver.filter(F.col("raw").contains('"n": 700,')).count() == 1  # the append during compaction
    assert silver.count() == 3 * 15 + 3
    runs = lake.read(catalog.JOB_RUNS.name).select("run_date").collect()
    assert sorted(r["run_date"] for r in runs) == [dt.date(2024, 6, 1), dt.date(2024, 6, 2)]

from __future__ import annotations

import argparse
import datetime as dt
import glob
import os
import signal
import subprocess
import sys

import polars as pl
import pytest

from marketlake.errors import TableError
from marketlake.jobs import GENERATE, available_jobs, get_job, main, pipeline
from marketlake.lake import Lake
from marketlake.runner import ERROR_FILE_VARIABLE, Job, build_parser, job_arguments, print_error, run_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def job_runs(lake_root):
    return pl.read_delta(os.path.join(lake_root, "ops", "job_runs")).sort("started_at")


def test_pipeline_records_a_run(spark, lake_root, tmp_path, capsys):
    small = tmp_path / "small.yaml"
    small.write_text(
        "generate: {users: 40, items: 20, events: 1000, days: 5}\npropensity: {horizon_days: 1, models: [logistic_regression]}\n"
    )
    argv = ["--lake", lake_root, "--run-date", "2026-01-31", "--config", str(small), "--generate"]
    assert main("pipeline", argv) == 0
    runs = job_runs(lake_root).sort("ended_at")
    assert runs["job"].to_list() == [GENERATE, *available_jobs(), "pipeline"]
    assert set(runs["status"]) == {"succeeded"} and set(runs["run_date"]) == {dt.date(2026, 1, 31)}
    row = runs.row(runs.height - 1, named=True)
    assert row["seconds"] >= 0 and row["engine"] in ("delta-rs", "delta-spark")
    assert "silver.events" in capsys.readouterr().out  # the closing summary names the tables

    # A forced re-run of the run date re-runs every job and leaves the same table contents.
    before = table_contents(lake_root)
    assert main("pipeline", [*argv, "--force"]) == 0
    runs = job_runs(lake_root)
    assert runs.height == 2 * (len(available_jobs()) + 2) and set(runs["status"]) == {"succeeded"}
    after = table_contents(lake_root)
    assert sorted(after) == sorted(before)
    for table, frame in before.items():
        assert after[table].equals(frame), f"{table} changed on a forced re-run"
    assert_tables_match_the_catalog(lake_root)


def assert_tables_match_the_catalog(lake_root: str) -> None:
    """Every table the pipeline wrote has the catalog's columns, types, order and partitioning."""
    import json

    from deltalake import DeltaTable
    from pyspark.sql import types as T

    from marketlake import catalog
    from marketlake.lake.schema import spark_schema

    found = sorted(glob.glob(os.path.join(lake_root, "*", "*", "_delta_log")))
    assert len(found) >= 15
    for log_folder in found:
        folder = os.path.dirname(log_folder)
        entry = catalog.table(f"{os.path.basename(os.path.dirname(folder))}.{os.path.basename(folder)}")
        delta_table = DeltaTable(folder)
        written = T.StructType.fromJson(json.loads(delta_table.schema().to_json()))
        expected = spark_schema(entry)
        assert [(f.name, f.dataType) for f in written.fields] == [
            (f.name, f.dataType) for f in expected.fields
        ], entry.name
        assert tuple(delta_table.metadata().partition_columns) == entry.partition_by, entry.name


# Columns that say when or by which run a row was written, not what it is.
RUN_SPECIFIC = {"batch_id", "ingested_at", "run_id", "created_at", "started_at", "ended_at", "generated_at"}


def table_contents(lake_root) -> dict[str, pl.DataFrame]:
    """Every data table of the lake (ops logs left out), sorted, without run-specific columns."""
    contents = {}
    for log_folder in sorted(glob.glob(os.path.join(lake_root, "*", "*", "_delta_log"))):
        folder = os.path.dirname(log_folder)
        layer = os.path.basename(os.path.dirname(folder))
        if layer == "ops":
            continue
        frame = pl.read_delta(folder)
        frame = frame.drop([c for c in frame.columns if c in RUN_SPECIFIC])
        # every column, lists included: rows that tie on the scalar columns (rules with equal support,
        # confidence and lift) would otherwise keep the files' arbitrary order
        contents[f"{layer}.{os.path.basename(folder)}"] = frame.sort(frame.columns)
    return contents


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--run-date", "31/01/2026"], "not a date of the form YYYY-MM-DD"),
        (["--no-such-option"], "unrecognized arguments"),
        (["--config", "conf/missing.yaml"], "config file not found"),
        (["--only", "nosuchjob"], "no job named 'nosuchjob'"),
    ],
)
def test_usage_errors_exit_2_before_writing(spark, lake_root, capsys, argv, message):
    assert main("pipeline", ["--lake", lake_root, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not os.path.exists(lake_root)


def test_a_failure_during_the_run_exits_1_and_is_recorded(spark, config, lake_root, capsys):
    def explode(ctx, args):
        with ctx.step("load"):
            raise TableError("silver.events: something specific went wrong")

    job = Job(name="exploder", help="", run=explode)
    args = argparse.Namespace(run_date=dt.date(2026, 2, 1), config=None, lake=lake_root)
    lake = Lake(spark, config.lake, lake_root)
    assert run_job(job, args, spark, config, lake) == 1
    assert (
        capsys.readouterr().err.strip() == "marketlake exploder: silver.events: something specific went wrong"
    )
    row = job_runs(lake_root).row(0, named=True)
    assert row["status"] == "failed" and "something specific" in row["message"]


def test_steps_log_counts_and_seconds(spark, config, lake_root, caplog):
    def work(ctx, args):
        with ctx.step("count things") as step:
            step.rows = ctx.counts["things"] = spark.range(42).count()
        ctx.note("counted")

    job = Job(name="counter", help="", run=work)
    args = argparse.Namespace(run_date=dt.date(2026, 2, 1), config=None, lake=lake_root)
    with caplog.at_level("INFO", logger="marketlake"):
        assert run_job(job, args, spark, config, Lake(spark, config.lake, lake_root)) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("counter | count things | rows=42 ") and line.endswith("s") for line in lines)
    assert "counter | counted" in lines
    assert job_runs(lake_root).row(0, named=True)["counts"] == {"things": 42}


def test_pipeline_skips_done_steps_unless_forced_and_stops_at_a_failure(
    spark, config, lake_root, monkeypatch
):
    calls = []

    def ok(ctx, args):
        calls.append("a")

    def broken(ctx, args):
        calls.append("b")
        raise RuntimeError("disk on fire")

    jobs = {"a": Job(name="a", help="", run=ok), "b": Job(name="b", help="", run=broken)}
    monkeypatch.setattr(pipeline, "available_jobs", lambda: ["a", "b"])
    monkeypatch.setattr(pipeline, "get_job", lambda name: jobs[name])
    lake = Lake(spark, config.lake, lake_root)
    args = argparse.Namespace(
        run_date=dt.date(2026, 3, 1), config=None, lake=lake_root, force=False, only=None, generate=False
    )
    assert run_job(pipeline.JOB, args, spark, config, lake) == 1
    assert calls == ["a", "b"]
    assert "step b failed" in job_runs(lake_root).filter(pl.col("job") == "pipeline")["message"][0]

    jobs["b"] = Job(name="b", help="", run=ok)
    assert run_job(pipeline.JOB, args, spark, config, lake) == 0
    assert calls == ["a", "b", "a"]  # a was already done for this date: skipped
    args.force = True
    assert run_job(pipeline.JOB, args, spark, config, lake) == 0
    assert calls == ["a", "b", "a", "a", "a"]


def test_job_arguments_are_the_parsers_defaults_and_force_goes_where_accepted():
    day = dt.date(2026, 3, 1)
    ingest = job_arguments(get_job("ingest"), run_date=day, lake="/lake", force=True)
    assert (ingest.run_date, ingest.lake, ingest.config, ingest.force, ingest.source) == (
        day,
        "/lake",
        None,
        True,
        None,
    )
    assert job_arguments(get_job("ingest"), run_date=day).force is False
    features = job_arguments(get_job("features"), run_date=day, config="c.yaml", force=True)
    assert features.config == "c.yaml" and features.lookback_days is None and not hasattr(features, "force")


def spark_submit(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """./spark-submit.sh in its own process group, so that a timeout also stops its JVM and Python driver."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    env.pop(ERROR_FILE_VARIABLE, None)
    command = ["./spark-submit.sh", *argv]
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.slow
def test_spark_submit_script_runs_a_job(tmp_path):
    lake_root = str(tmp_path / "lake")
    small = tmp_path / "small.yaml"
    small.write_text(
        "generate: {users: 40, items: 20, events: 1000, days: 5}\npropensity: {horizon_days: 1, models: [logistic_regression]}\n"
    )
    out = spark_submit(
        "pipeline",
        "--master",
        "local[1]",
        "--conf",
        "spark.ui.enabled=false",
        "--config",
        str(small),
        "--lake",
        lake_root,
        "--run-date",
        "2026-01-31",
        "--generate",
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = job_runs(lake_root)
    assert set(runs["job"]) == {GENERATE, *available_jobs(), "pipeline"} and set(runs["status"]) == {
        "succeeded"
    }
    bad = spark_submit("nosuchjob")
    assert bad.returncode == 2 and "no job named 'nosuchjob'" in bad.stderr


def selected(*argv: str) -> list[str]:
    return pipeline._selected(build_parser(pipeline.JOB).parse_args(list(argv)))


def test_the_pipeline_runs_generate_only_when_asked_for():
    production = available_jobs()
    assert GENERATE not in production and production[0] == "ingest"
    assert selected() == production
    assert selected("--force") == production
    assert selected("--generate") == [GENERATE, *production]
    assert selected("--only", "report,generate,ingest") == [GENERATE, "ingest", "report"]
    assert selected("--only", "features", "--generate") == [GENERATE, "features"]


def test_a_production_pipeline_writes_no_shop(spark, lake_root, tmp_path, capsys):
    """Default flags on a lake whose landing folder is empty: ingest finds nothing, and no shop is made up."""
    small = tmp_path / "small.yaml"
    small.write_text(
        "generate: {users: 40, items: 20, events: 1000, days: 5}\npropensity: {horizon_days: 1, models: [logistic_regression]}\n"
    )
    assert main("pipeline", ["--lake", lake_root, "--run-date", "2026-01-31", "--config", str(small)]) == 2
    assert not os.path.exists(os.path.join(lake_root, "landing"))
    missing = os.path.join(lake_root, "landing", "shop", "items.csv")
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("marketlake ")]
    assert err == [f"marketlake pipeline: source not found: {missing}"]
    runs = job_runs(lake_root)
    assert runs.select("job", "status").rows() == [("pipeline", "failed")]


def test_the_failure_line_goes_to_the_file_spark_submit_sh_names(tmp_path, monkeypatch, capsys):
    error_file = tmp_path / "error"
    monkeypatch.setenv(ERROR_FILE_VARIABLE, str(error_file))
    print_error("marketlake ingest: first")
    print_error("marketlake pipeline: second")
    assert error_file.read_text() == "marketlake ingest: first\nmarketlake pipeline: second\n"
    assert capsys.readouterr().err == ""
    # A driver that cannot see the file (another machine, in cluster deploy mode) prints the line itself.
    monkeypatch.setenv(ERROR_FILE_VARIABLE, str(tmp_path / "elsewhere" / "error"))
    print_error("marketlake ingest: third")
    assert capsys.readouterr().err == "marketlake ingest: third\n"


def test_spark_submit_sh_puts_a_usage_error_on_stderr(tmp_path):
    """spark-submit's PythonRunner copies the driver's stderr to its stdout; the line must still reach stderr."""
    missing = str(tmp_path / "no-such-folder")
    out = spark_submit(
        "ingest", "--master", "local[1]", "--lake", str(tmp_path / "lake"), "--source", missing
    )
    line = f"marketlake ingest: source not found: {missing}"
    assert out.returncode == 2, out.stderr[-3000:]
    assert line in out.stderr.splitlines() and "marketlake ingest:" not in out.stdout
    assert not os.path.exists(tmp_path / "lake")  # nothing written: the job stopped before Spark started


@pytest.mark.slow
def test_spark_submit_sh_puts_a_failure_inside_the_job_on_stderr(tmp_path):
    """A production pipeline on an empty landing folder stops at its ingest step, after Spark has started."""
    lake_root = str(tmp_path / "lake")
    out = spark_submit(
        "pipeline",
        "--master",
        "local[1]",
        "--conf",
        "spark.ui.enabled=false",
        "--lake",
        lake_root,
        "--run-date",
        "2026-01-31",
    )
    line = f"marketlake pipeline: source not found: {os.path.join(lake_root, 'landing', 'shop', 'items.csv')}"
    assert out.returncode == 2, out.stderr[-3000:]
    assert line in out.stderr.splitlines() and "marketlake pipeline:" not in out.stdout
    assert job_runs(lake_root).select("job", "status").rows() == [("pipeline", "failed")]

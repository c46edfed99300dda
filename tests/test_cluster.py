"""Real cluster mode: a Spark standalone master and two workers (1 core each) on 127.0.0.1, started from
the pyspark installation, and the whole pipeline, the shop's generation included (`--generate`),
submitted to them through `spark-submit.sh --master spark://...`; then again while one worker (its JVM,
its executor and their Python workers) is killed with SIGKILL while its executor runs a task of `ingest`. That run must succeed through Spark's task
retry and write the same tables.

"The same tables", honestly: tables that are functions of the input (bronze, silver and quarantine
events, users, items, features, association rules, cross-sell) must be equal row for row, less the
columns that name the run (batch_id, ingested_at) and with the lake root taken out of paths; doubles
are compared to 1e-9 relative, since Spark may add partial sums in another order. Model outputs
(segments, recommendations, and what is built on them) may legitimately differ when partitions are
recomputed elsewhere: for them, the same users get rows and every job succeeded.

Slow (two pipeline runs, several minutes): deselected by default; `make test-cluster` runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from cluster_standalone import StandaloneCluster, free_port, get_json
from polars.testing import assert_frame_equal

from marketlake.jobs import GENERATE, available_jobs

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
RUN_DATE = "2024-06-30"
# A small shop, a segment search over fewer k and seeds, and ALS without its parameter search, so that a
# run takes a few minutes.
CONFIG = """\
generate: {users: 200, items: 50, events: 20000, days: 10}
segment: {k_max: 5, runs: 2}
recommend: {tune: false}
propensity: {horizon_days: 3, models: [logistic_regression, bgnbd]}
"""
RUN_COLUMNS = ["batch_id", "ingested_at"]
# Tables that are functions of the input, with the columns that order them.
DETERMINISTIC = {
    "bronze.events": ["source_file", "raw"],
    "silver.events": ["event_id"],
    "quarantine.events": ["source_file", "raw", "reason"],
    "silver.users": ["user_id"],
    "silver.items": ["item_id"],
    "gold.user_features": ["user_id"],
    "gold.association_rules": ["antecedent", "consequent"],
    "gold.item_cross_sell": ["item_id", "rank"],
}
TIMEOUT_S = 1200


def read(lake: Path, table: str) -> pl.DataFrame:
    return pl.read_delta(str(lake / table.replace(".", "/")))


def canonical(lake: Path, table: str) -> pl.DataFrame:
    """The table less run columns, paths relative to the lake, lists as text, in key order."""
    frame = read(lake, table).drop(RUN_COLUMNS, strict=False)
    if "source_file" in frame.columns:
        frame = frame.with_columns(pl.col("source_file").str.replace(str(lake), "<lake>", literal=True))
    lists = [name for name, dtype in frame.schema.items() if isinstance(dtype, pl.List)]
    frame = frame.with_columns(
        pl.col(name).list.sort().cast(pl.List(pl.String)).list.join(",") for name in lists
    )
    return frame.sort(DETERMINISTIC[table])


class Submission:
    """`./spark-submit.sh pipeline` against the cluster; its output goes to a log, line by line to `watch`."""

    def __init__(self, cluster: StandaloneCluster, folder: Path, watch=None):
        self.cluster, self.folder, self.watch = cluster, folder, watch
        self.lake = folder / "lake"
        self.log = folder / "submit.log"
        self.events = folder / "spark-events"
        self.events.mkdir()
        self.ui_port = free_port()
        self.seconds = 0.0

    def run(self) -> int:
        config = self.folder / "shop.yaml"
        config.write_text(CONFIG)
        command = [
            str(ROOT / "spark-submit.sh"),
            "pipeline",
            "--master",
            self.cluster.url,
            "--executor-memory",
            "1g",
            "--conf",
            "spark.driver.host=127.0.0.1",
            "--conf",
            "spark.ui.enabled=true",
            "--conf",
            f"spark.ui.port={self.ui_port}",
            "--conf",
            "spark.eventLog.enabled=true",
            "--conf",
            f"spark.eventLog.dir=file://{self.events}",
            "--conf",
            "spark.eventLog.compress=false",
            "--config",
            str(config),
            "--lake",
            str(self.lake),
            "--run-date",
            RUN_DATE,
            "--generate",
        ]
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        watchdog = threading.Timer(TIMEOUT_S, os.killpg, (process.pid, signal.SIGKILL))
        watchdog.start()
        try:
            with open(self.log, "w") as log:
                for line in process.stdout:
                    log.write(line)
                    if self.watch:
                        self.watch(line, self)
            return process.wait()
        finally:
            watchdog.cancel()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            self.seconds = time.monotonic() - started

    def task_ends(self) -> list[dict]:
        """Every task's end from Spark's event log: stage, partition, executor and reason."""
        ends = []
        for path in self.events.glob("*/events_*"):  # Spark 4 writes rolling logs, a folder per application
            for line in path.read_text().splitlines():
                if '"SparkListenerTaskEnd"' in line:
                    event = json.loads(line)
                    info = event["Task Info"]
                    ends.append(
                        {
                            "stage": event["Stage ID"],
                            "partition": info.get("Partition ID", info["Index"]),
                            "executor": info["Executor ID"],
                            "reason": event["Task End Reason"]["Reason"],
                            "finished": info["Finish Time"],
                        }
                    )
        return sorted(ends, key=lambda end: end["finished"])

    def executors(self) -> list[dict]:
        """The application's live executors, from the driver's REST API."""
        api = f"http://127.0.0.1:{self.ui_port}/api/v1/applications"
        app = get_json(api)[0]["id"]
        return [e for e in get_json(f"{api}/{app}/executors") if e["id"] != "driver"]


class WorkerKiller:
    """Once the log shows `ingest` reading the events, kill the worker whose executor runs a task."""

    TRIGGER = "ingest | events: list"

    def __init__(self):
        self.job = ""  # the job the log last started
        self.killed: dict | None = None
        self.thread: threading.Thread | None = None

    def __call__(self, line: str, submission: Submission) -> None:
        if " | start | " in line:
            self.job = line.split(" | ")[0].rsplit(" ", 1)[-1]
        if self.TRIGGER in line and self.thread is None:
            self.thread = threading.Thread(target=self.kill_a_busy_worker, args=(submission,), daemon=True)
            self.thread.start()

    def kill_a_busy_worker(self, submission: Submission) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.killed is None:
            try:
                busy = [e for e in submission.executors() if e["isActive"] and e["activeTasks"] > 0]
            except (OSError, IndexError, ValueError):
                busy = []
            if busy:
                worker = submission.cluster.worker_of(busy[0])
                worker.kill()
                self.killed = {
                    "worker": worker.name,
                    "executor": busy[0]["id"],
                    "job": self.job,
                    "active_tasks": busy[0]["activeTasks"],
                }
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from marketlake.java import ensure_java

    ensure_java()  # sets JAVA_HOME when the JDK comes from the jdk extra
    with StandaloneCluster(tmp_path_factory.mktemp("standalone"), workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def undisturbed(cluster, tmp_path_factory):
    submission = Submission(cluster, tmp_path_factory.mktemp("undisturbed"))
    code = submission.run()
    assert code == 0, submission.log.read_text()[-4000:]
    print(f"\nundisturbed cluster run: {submission.seconds:.0f}s")
    return submission


@pytest.fixture(scope="module")
def disturbed(cluster, undisturbed, tmp_path_factory):
    killer = WorkerKiller()
    submission = Submission(cluster, tmp_path_factory.mktemp("disturbed"), watch=killer)
    code = submission.run()
    assert killer.killed is not None, "no executor of the run was seen running a task after ingest began"
    assert code == 0, submission.log.read_text()[-4000:]
    print(f"\ndisturbed cluster run: {submission.seconds:.0f}s; killed {killer.killed}")
    return submission, killer.killed


def job_runs(lake: Path) -> pl.DataFrame:
    return read(lake, "ops.job_runs")


def test_the_pipeline_runs_on_the_cluster_and_writes_the_tables(cluster, undisturbed):
    lake = undisturbed.lake
    runs = job_runs(lake)
    assert sorted(runs["job"]) == sorted([GENERATE, *available_jobs(), "pipeline"])
    assert set(runs["status"]) == {"succeeded"}
    # Both workers' executors took part.
    app = next(a for a in cluster.state()["completedapps"] if a["name"] == "marketlake-pipeline")
    assert app["cores"] == 2

    truth = json.loads((lake / "landing" / "shop" / "truth" / "dirty_counts.json").read_text())["counts"]
    assert read(lake, "bronze.events").height == truth["events"]
    assert read(lake, "silver.events").height == truth["valid_events"]
    assert read(lake, "quarantine.events").height == truth["dirty"] - truth["dirty_exact_resend"]
    assert read(lake, "silver.users").height == truth["users"] == 200
    assert read(lake, "silver.items").height == truth["items"] == 50
    features = read(lake, "gold.user_features")
    assert features.height == 200 and features["user_id"].n_unique() == 200
    segments = read(lake, "gold.user_segments")
    assert segments["user_id"].sort().to_list() == features["user_id"].sort().to_list()
    assert read(lake, "gold.association_rules").height > 0


def test_a_worker_killed_mid_job_does_not_fail_the_run(cluster, disturbed):
    submission, killed = disturbed
    assert killed["job"] == "ingest" and killed["active_tasks"] > 0
    assert len(cluster.alive_workers()) == 1
    assert f"Lost executor {killed['executor']}" in submission.log.read_text()
    # The tasks the executor was running failed with it, and each ran again, successfully, on another one.
    ends = submission.task_ends()
    lost = [end for end in ends if end["reason"] == "ExecutorLostFailure"]
    assert lost and {end["executor"] for end in lost} == {killed["executor"]}
    for end in lost:
        assert any(
            later["reason"] == "Success"
            and later["executor"] != killed["executor"]
            and later["finished"] >= end["finished"]
            and (later["stage"], later["partition"]) == (end["stage"], end["partition"])
            for later in ends
        ), end
    runs = job_runs(submission.lake)
    assert set(runs["status"]) == {"succeeded"}
    assert sorted(runs["job"]) == sorted([GENERATE, *available_jobs(), "pipeline"])


@pytest.mark.parametrize("table", list(DETERMINISTIC))
def test_the_disturbed_run_writes_the_same_tables(undisturbed, disturbed, table):
    expected = canonical(undisturbed.lake, table)
    actual = canonical(disturbed[0].lake, table)
    assert expected.height > 0 or table == "gold.item_cross_sell"
    assert_frame_equal(actual, expected, check_exact=False, rel_tol=1e-9)


def test_model_outputs_cover_the_same_users(undisturbed, disturbed):
    lake, other = undisturbed.lake, disturbed[0].lake
    for table in ("gold.user_segments", "gold.user_recommendations"):
        if (lake / table.replace(".", "/")).exists():
            users = read(lake, table)["user_id"].unique().sort()
            assert_frame_equal(read(other, table)["user_id"].unique().sort().to_frame(), users.to_frame())
    tables = {
        path.relative_to(lake).as_posix() for path in lake.glob("*/*") if (path / "_delta_log").is_dir()
    }
    assert tables == {
        p.relative_to(other).as_posix() for p in other.glob("*/*") if (p / "_delta_log").is_dir()
    }

"""Faults: the stream killed with SIGKILL again and again (at random moments, and between a table's data
files and its commit through MARKETLAKE_FAULT_EXIT_BEFORE_COMMIT), restarted each time, files landing
between the rounds. At the end silver.events (and bronze, quarantine) equal a batch ingest of the same
files, with no event twice and none lost, and gold.realtime_recommendations equals an uninterrupted run's
(with the stand-in blend of tests/stream_support.py; updated_at aside, it is the batch's clock)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from stream_support import land, stand_in
from test_stream import EVENT_COLUMNS, context, stream_args

from marketlake import catalog
from marketlake.jobs import main
from marketlake.jobs.stream import run as run_stream
from marketlake.lake import Lake

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

ROOT = Path(__file__).resolve().parent.parent
REALTIME = catalog.REALTIME_RECOMMENDATIONS
# One round per entry: None is a SIGKILL at a random moment, "table:n" exits on the n-th write to the
# table after its files are written and before its commit.
ROUNDS = [
    "silver.events:2",
    None,
    "bronze.events:1",
    None,
    "quarantine.events:2",
    None,
    "ops.ingested_files:1",
]
FILES_PER_ROUND = 2


def stream_process(
    lake_root: str, landing: Path, fault: str | None, files_per_batch: int = 1
) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": f"{ROOT / 'lib'}:{ROOT / 'tests'}",
        "MARKETLAKE__STREAM__MAX_FILES_PER_TRIGGER": str(files_per_batch),
        "MARKETLAKE__STREAM__COMPACT_EVERY_BATCHES": "3",
        "MARKETLAKE_ENGINE": "delta-rs",
        "MARKETLAKE_MASTER": "local[2]",
    }
    env.pop("MARKETLAKE_FAULT_EXIT_BEFORE_COMMIT", None)
    if fault:
        env["MARKETLAKE_FAULT_EXIT_BEFORE_COMMIT"] = fault
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "stream_support.py"),
            "--lake",
            lake_root,
            "--source",
            str(landing),
            "--available-now",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def watch(process: subprocess.Popen, started: threading.Event, log: list[str] | None = None) -> None:
    """Drains the job's log (into `log`); sets `started` at its line saying the query started."""
    assert process.stderr is not None
    for line in process.stderr:
        if log is not None:
            log.append(line)
        if "| started marketlake-stream" in line:
            started.set()
    started.set()  # ended without starting


def kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_sigkill_at_random_moments_loses_nothing_and_doubles_nothing(spark, config, tmp_path):
    rng = random.Random(16)
    landing, lake_root = tmp_path / "landing", str(tmp_path / "lake")
    landed = 0
    killed = 0
    for fault in ROUNDS:
        for _ in range(FILES_PER_ROUND):
            land(landing, landed)
            landed += 1
        process = stream_process(lake_root, landing, fault)
        started = threading.Event()
        threading.Thread(target=watch, args=(process, started), daemon=True).start()
        if fault:
            code = process.wait(timeout=900)
            killed += code == 137  # the hook fired (else the run finished before that write)
            kill(process)  # the JVM child too
        else:
            # Once the query has started (Spark's start takes 15 s to minutes here), anywhere in the
            # micro-batches: reading files, between two tables' commits, in the merge, in maintenance.
            started.wait(timeout=900)
            deadline = time.monotonic() + rng.uniform(0, 10)
            while time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.1)
            killed += process.poll() is None
            kill(process)
    assert killed >= 5, f"only {killed} of {len(ROUNDS)} rounds killed the stream mid-run"

    final = stream_process(lake_root, landing, None, files_per_batch=4)  # the rest, in fewer batches
    log: list[str] = []
    threading.Thread(target=watch, args=(final, threading.Event(), log), daemon=True).start()
    assert final.wait(timeout=1800) == 0, "".join(log[-20:])

    engine = config.lake.model_copy(update={"engine": "delta-rs"})
    lake = Lake(spark, engine, lake_root)
    batch_root = str(tmp_path / "batch-lake")
    assert main("ingest", ["--lake", batch_root, "--source", str(landing)]) == 0
    batch = Lake(spark, engine, batch_root)

    silver = lake.read(catalog.SILVER_EVENTS).select(*EVENT_COLUMNS)
    assert silver.count() == silver.select("event_id").distinct().count()  # no event twice
    assert_df_equality(
        silver,
        batch.read(catalog.SILVER_EVENTS).select(*EVENT_COLUMNS),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    for table, columns in (
        ("bronze.events", ["raw", "source_file"]),
        ("quarantine.events", ["raw", "reason", "source_file"]),
    ):
        assert_df_equality(
            lake.read(table).select(*columns), batch.read(table).select(*columns), ignore_row_order=True
        )
    files = lake.read(catalog.INGESTED_FILES).select("source_file").distinct().count()
    assert files == landed

    # An uninterrupted stream over the same files, in-process. Its micro-batches may be cut otherwise: a
    # user's list is made from silver as it stands after the last batch holding that user's events.
    calm = Lake(spark, engine, str(tmp_path / "calm-lake"))
    settings = config.stream.model_copy(update={"max_files_per_trigger": 5})
    run_stream(
        context(spark, config.model_copy(update={"stream": settings}), calm),
        stream_args(landing),
        realtime=stand_in(),
    )
    assert_df_equality(
        lake.read(REALTIME).drop("updated_at"),
        calm.read(REALTIME).drop("updated_at"),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert lake.read(REALTIME).filter(F.col("rank") > 0).count() > 0

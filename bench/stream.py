"""Benchmark: the `stream` job's freshness, from an event file landing to its recommendation row committed.

A replayer writes generated shop events (users browsing and buying; timestamps are the wall clock) into a
landing folder at a fixed rate for a fixed time: every --interval seconds one JSON-lines file holding
rate x interval events, written under a hidden name and renamed into place (as a collector does); the
moment of the rename is the file's landing time. The stream job runs beside it as its own process, as a
supervisor would start it (long-running; SIGTERM at the end, which it answers by finishing its micro-batch).

Freshness of a file = the commit time of the gold.realtime_recommendations version that merged its
micro-batch (the Delta commit's timestamp, found by the commit's application transaction) minus the
file's landing time. Reported: p50/p95/max over the files, sustained events/s (events ingested over the
span from the first landing to the last commit), micro-batch sizes (files and events per batch), and the
data files the stream's tables reference at the end (with the log entries and what is on disk).

Phase 1 runs --rate events/s for --minutes. Phase 2 (the search; --search-rates, each for
--search-minutes on the same running stream, after the backlog drained) finds the highest rate whose p95
stays <= 10 s: `max_rate_p95_10s`. Baseline, in the same run: one batch `ingest` job (its own process,
as a scheduler would start it every few minutes) over phase 1's files: its wall seconds are the floor of
the freshness a scheduled batch ingest can give; ratio = that / the stream's p95.

The blend: marketlake.sessions.realtime_recommendations when this build has it, else a stand-in (the
session's most viewed items) so that freshness is still measured; the JSON says which.

    python bench/stream.py [--minutes 10] [--rate 50] [--search-rates 200,500,1000,2000] [--search-minutes 1]

Goal (issue 16): p95 <= 2 s at 50 events/s for 10 minutes; max_rate_p95_10s >= 1000. Last stdout line:
JSON with p50_s, p95_s, max_s, events_per_s, files_end, max_rate_p95_10s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from marketlake import catalog  # noqa: E402

REALTIME = catalog.REALTIME_RECOMMENDATIONS
STREAM_TABLES = [
    catalog.BRONZE_EVENTS,
    catalog.SILVER_EVENTS,
    catalog.QUARANTINE_EVENTS,
    catalog.INGESTED_FILES,
    REALTIME,
]
EVENT_TYPES = [("view", 0.7), ("click", 0.18), ("add_to_cart", 0.08), ("purchase", 0.04)]
GOAL_P95_S, SEARCH_P95_S, GOAL_RATE = 2.0, 10.0, 1000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Replayer:
    """Writes events into the landing folder; remembers each file's landing time and events."""

    def __init__(self, landing: Path, users: int, items: int, seed: int):
        self.landing, self.users, self.items = landing, users, items
        self.rng = random.Random(seed)
        self.landed: dict[str, tuple[float, int, str]] = {}  # file name -> (landed at, events, phase)
        self.number = 0

    def events(self, count: int) -> list[str]:
        now = dt.datetime.now(dt.timezone.utc)
        lines = []
        for _ in range(count):
            user = self.rng.randrange(self.users)
            category = user % 10 if self.rng.random() < 0.7 else self.rng.randrange(10)
            item = category * (self.items // 10) + self.rng.randrange(self.items // 10)
            kind = self.rng.choices([k for k, _ in EVENT_TYPES], [w for _, w in EVENT_TYPES])[0]
            event = {
                "event_id": f"{self.rng.getrandbits(64):016x}",
                "user_id": f"u{user}",
                "item_id": f"i{item}",
                "event_type": kind,
                "ts": now.isoformat(),
                "session_id": f"s{user}-{now:%Y%m%d%H}",
            }
            if kind in ("add_to_cart", "purchase"):
                event.update(quantity=1, price=round(5 + item % 50, 2), order_id=f"o{user}-{now:%H%M}")
            lines.append(json.dumps(event))
        return lines

    def write_file(self, count: int, phase: str) -> None:
        name = f"events-{self.number:07d}.json"
        self.number += 1
        hidden = self.landing / f".{name}.tmp"
        hidden.write_text("\n".join(self.events(count)) + "\n")
        os.rename(hidden, self.landing / name)
        self.landed[name] = (time.time(), count, phase)

    def replay(self, rate: float, seconds: float, interval: float, phase: str) -> None:
        per_file = max(1, round(rate * interval))
        start = time.monotonic()
        ticks = int(seconds / interval)
        for tick in range(ticks):
            wait = start + tick * interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.write_file(per_file, phase)


def stream_command(lake: str, landing: Path) -> list[str]:
    return [sys.executable, __file__, "--run-stream", "--lake", lake, "--source", str(landing)]


def run_stream(argv: list[str]) -> int:
    """The stream job with the real blend, or the stand-in when this build has no sessions module."""
    import functools
    from dataclasses import replace

    from marketlake.jobs.stream import JOB, run
    from marketlake.runner import run_cli
    from marketlake.stream import Realtime

    job = JOB  # its blend: marketlake.sessions'
    if os.environ.get("BENCH_STREAM_BLEND") == "stand-in":
        job = replace(JOB, run=functools.partial(run, realtime=Realtime(stand_in_blend, None, 30)))
    return run_cli(job, argv)


def stand_in_blend(session_events: Any, next_items: Any, daily: Any, settings: Any, updated_at: Any) -> Any:
    """The session's ten most viewed items: the cost of a blend, not its quality."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    counted = session_events.groupBy("user_id", "item_id").agg(
        F.count("*").cast("double").alias("score"), F.max("event_ts").alias("last_event_ts")
    )
    order = Window.partitionBy("user_id").orderBy(F.desc("score"), "item_id")
    last = Window.partitionBy("user_id")
    return (
        counted.withColumn("rank", F.row_number().over(order).cast("int"))
        .filter("rank <= 10")
        .withColumn("last_event_ts", F.max("last_event_ts").over(last))
        .select(
            "user_id",
            "rank",
            "item_id",
            "score",
            F.lit("session").alias("source"),
            F.lit(updated_at).cast("timestamp").alias("updated_at"),
            "last_event_ts",
        )
    )


def has_sessions_module() -> bool:
    import importlib.util

    return importlib.util.find_spec("marketlake.sessions") is not None


# ---- reading the results (deltalake only: no Spark in the bench process) ---------------------------


def read_results(lake: str) -> tuple[dict[str, str], dict[str, int], dict[int, float]]:
    """(file name -> batch id) from bronze, (batch -> events) from bronze, (batch -> realtime commit time)."""
    from deltalake import DeltaTable

    bronze = DeltaTable(catalog.BRONZE_EVENTS.location(lake)).to_pyarrow_table(
        columns=["source_file", "batch_id"]
    )
    file_batch: dict[str, str] = {}
    batch_events: dict[str, int] = {}
    for source_file, batch in zip(
        bronze.column("source_file").to_pylist(), bronze.column("batch_id").to_pylist(), strict=True
    ):
        file_batch[source_file.rsplit("/", 1)[-1]] = batch
        batch_events[batch] = batch_events.get(batch, 0) + 1
    committed: dict[int, float] = {}
    location = REALTIME.location(lake)
    if DeltaTable.is_deltatable(location):
        for entry in DeltaTable(location).history():
            txn = entry.get("marketlake.transaction")
            if txn:
                committed.setdefault(int(str(txn).rsplit(":", 1)[1]), entry["timestamp"] / 1000)
    return file_batch, batch_events, committed


def file_counts(lake: str) -> dict[str, int]:
    from deltalake import DeltaTable

    active = log_entries = 0
    for table in STREAM_TABLES:
        location = table.location(lake)
        if DeltaTable.is_deltatable(location):
            active += len(DeltaTable(location).file_uris())
            log_entries += len(os.listdir(f"{location}/_delta_log"))
    on_disk = sum(
        1
        for folder, _, names in os.walk(lake)
        for name in names
        if name.endswith(".parquet") and "_delta_log" not in folder and "_streams" not in folder
    )
    return {"files_end": active, "log_entries_end": log_entries, "parquet_files_on_disk": on_disk}


def phase_figures(
    replayer: Replayer, lake: str, phase: str, stopped_at: float | None = None
) -> dict[str, Any]:
    """Freshness of the phase's files. A file never merged counts as `stopped_at - landed` (a lower
    bound: the stream stopped before it) when `stopped_at` is given, else it is left out (and counted
    as missing)."""
    file_batch, batch_events, committed = read_results(lake)
    fresh: list[float] = []
    missing = 0
    batches: set[str] = set()
    events = 0
    last_commit = 0.0
    first_land = min(t for t, _, p in replayer.landed.values() if p == phase)
    for name, (landed, count, file_phase) in replayer.landed.items():
        if file_phase != phase:
            continue
        batch = file_batch.get(name)
        number = int(batch.rsplit(":", 1)[1]) if batch else None
        if number is None or number not in committed:
            missing += 1
            if stopped_at is not None:
                fresh.append(stopped_at - landed)
            continue
        fresh.append(committed[number] - landed)
        batches.add(batch or "")
        events += count
        last_commit = max(last_commit, committed[number])
    if not fresh:
        return {"phase": phase, "files": 0, "missing": missing}
    sizes = [batch_events[b] for b in batches] or [0]
    return {
        "phase": phase,
        "files": len(fresh),
        "missing": missing,
        "p50_s": round(percentile(fresh, 0.5), 2),
        "p95_s": round(percentile(fresh, 0.95), 2),
        "max_s": round(max(fresh), 2),
        "events_per_s": round(events / max(last_commit - first_land, 1e-9), 1) if events else 0.0,
        "batches": len(batches),
        "batch_events_median": statistics.median(sizes),
        "batch_events_max": max(sizes),
        "batch_files_median": statistics.median(
            [sum(1 for b in file_batch.values() if b == batch) for batch in batches] or [0]
        ),
    }


def wait_caught_up(replayer: Replayer, lake: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            file_batch, _, committed = read_results(lake)
        except Exception:  # the tables may not exist yet
            file_batch, committed = {}, {}
        done = [
            name
            for name in replayer.landed
            if name in file_batch and int(file_batch[name].rsplit(":", 1)[1]) in committed
        ]
        if len(done) == len(replayer.landed):
            return True
        time.sleep(1)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="events/s of phase 1")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two landed files")
    parser.add_argument("--search-rates", default="200,500,1000,2000", help="'' skips the search")
    parser.add_argument("--search-minutes", type=float, default=1.0)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument(
        "--drain-seconds", type=float, default=300.0, help="how long a phase's backlog may take to commit"
    )
    parser.add_argument("--keep", help="work in this folder and leave the lake there")
    parser.add_argument("--run-stream", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.run_stream:
        sys.exit(run_stream(rest))

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-stream-"))
    landing, lake = work / "landing", str(work / "lake")
    landing.mkdir(parents=True, exist_ok=True)
    blend = "sessions" if has_sessions_module() else "stand-in"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "lib"),
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
        "BENCH_STREAM_BLEND": blend,
    }
    load_before = os.getloadavg()
    log(f"stream bench in {work}: blend {blend}, load {load_before[0]:.1f}")
    stream_log = open(work / "stream.log", "w")  # noqa: SIM115 - open for the stream's whole life
    stream = subprocess.Popen(stream_command(lake, landing), env=env, stderr=stream_log, stdout=stream_log)
    replayer = Replayer(landing, args.users, args.items, seed=16)
    # Spark's start is not the stream's freshness: one warm-up file, then wait for its commit.
    replayer.write_file(10, "warm-up")
    if not wait_caught_up(replayer, lake, 600):
        stream.kill()
        sys.exit(f"the stream did not commit the warm-up file within 600 s; see {work / 'stream.log'}")
    log("warm-up committed; phase 1")
    replayer.replay(args.rate, args.minutes * 60, args.interval, "steady")
    wait_caught_up(replayer, lake, args.drain_seconds)
    steady = phase_figures(replayer, lake, "steady")
    log(f"steady at {args.rate:g} ev/s: {steady}")
    searched: list[dict[str, Any]] = []
    max_rate = 0.0
    for rate in [float(r) for r in args.search_rates.split(",") if r.strip()]:
        phase = f"rate-{rate:g}"
        replayer.replay(rate, args.search_minutes * 60, args.interval, phase)
        caught_up = wait_caught_up(replayer, lake, min(args.drain_seconds, 60))
        figures = phase_figures(replayer, lake, phase) | {"rate": rate, "caught_up": caught_up}
        searched.append(figures)
        log(f"search {rate:g} ev/s: {figures}")
        if figures.get("p95_s", float("inf")) <= SEARCH_P95_S and caught_up and not figures["missing"]:
            max_rate = rate
        else:
            break
    stopping = time.time()
    stream.send_signal(signal.SIGTERM)
    try:
        stream.wait(timeout=600)
    except subprocess.TimeoutExpired:
        stream.kill()
    stopped_at = time.time()
    # Final figures from the lake, with the batches that committed while the stream drained; files it
    # never merged count with the time to the stop request (a lower bound).
    steady = phase_figures(replayer, lake, "steady", stopping)
    log(f"steady at {args.rate:g} ev/s, final: {steady} (stream stopped in {stopped_at - stopping:.0f} s)")
    files = file_counts(lake)
    # Baseline: one scheduled batch ingest of the steady phase's files, in its own process.
    baseline_root = str(work / "batch-lake")
    started = time.monotonic()
    subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "ingest.py"), "--lake", baseline_root, "--source", str(landing)],
        env=env,
        check=True,
        capture_output=True,
    )
    baseline_s = time.monotonic() - started
    load_after = os.getloadavg()
    result = {
        "p50_s": steady.get("p50_s"),
        "p95_s": steady.get("p95_s"),
        "max_s": steady.get("max_s"),
        "events_per_s": steady.get("events_per_s"),
        "files_end": files["files_end"],
        "max_rate_p95_10s": max_rate,
        "rate": args.rate,
        "minutes": args.minutes,
        "steady": steady,
        "search": searched,
        **{k: v for k, v in files.items() if k != "files_end"},
        "baseline_batch_ingest_s": round(baseline_s, 1),
        "ratio_baseline_over_p95": round(baseline_s / steady["p95_s"], 1) if steady.get("p95_s") else None,
        "stream_exit_code": stream.returncode,
        "blend": blend,
        "load_1min_before_after": [round(load_before[0], 1), round(load_after[0], 1)],
        "cores": os.cpu_count(),
        "date": dt.date.today().isoformat(),
    }
    print(
        f"steady {args.rate:g} ev/s for {args.minutes:g} min: freshness p50 {result['p50_s']} s, "
        f"p95 {result['p95_s']} s (goal {GOAL_P95_S}), max {result['max_s']} s; "
        f"{result['events_per_s']} events/s sustained; max rate with p95 <= {SEARCH_P95_S:g} s: "
        f"{max_rate:g} ev/s (goal {GOAL_RATE}); files at the end {files['files_end']}"
    )
    print(
        f"baseline: one batch ingest of the same files took {baseline_s:.1f} s "
        f"({result['ratio_baseline_over_p95']}x the stream's p95); load {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

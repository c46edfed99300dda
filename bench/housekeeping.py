"""Benchmark: the `housekeeping` job on a 10^6-event demo lake, against rewriting the lake's tables, in one run.

Generates a synthetic shop once (the shop of bench/ingest.py: users = events / 100, 2,000 items, seed 7,
ending on 2024-06-30) and ingests its events, users and items with run date 2024-06-30 (bronze,
silver and quarantine tables, ops.ingested_files, ops.job_runs). Then, each on a fresh copy of that lake
and in the same Spark session:

- housekeeping: the real job (`run_job(get_job("housekeeping"), ...)`) with run date 2024-06-30 + 91 days,
  so that bronze and quarantine (90 days) expire whole, silver's event_date partitions (the ingest's small
  files) are compacted, and every table is vacuumed, checkpointed and its log cleaned;
- re-run: the job again on the same copy (nothing left to do: what a daily run costs when there is none);
- baseline: a plain Spark rewrite of every table's current files (`spark.read.parquet(files)
  .write.parquet(dir)`), what compacting by rewriting everything would cost.

ratio = baseline seconds / housekeeping seconds (above 1: housekeeping is cheaper than one rewrite). The
job's step lines (one per table) give the seconds per table. The machine is shared: read the figures with
the load printed beside them.

    python bench/housekeeping.py [--events N] [--keep DIR]

--keep DIR works in DIR and reuses a shop and ingested lake made there before for the same --events. The
last line of stdout is a JSON object: events, seconds, rerun_seconds, baseline_seconds, ratio,
files_before, files_after, partitions_expired, rows_expired, files_compacted, tables (seconds per table),
load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ingest import END_DATE, shop  # noqa: E402  (bench/ingest.py: the same shop)

RUN_DATE = END_DATE + dt.timedelta(days=91)
STEP_LINE = re.compile(r"^housekeeping \| (?P<step>[a-z_]+\.[a-z_]+) \|.* (?P<seconds>\d+\.\d+)s$")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class StepLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} {five:.1f} {fifteen:.1f}"


def build_lake(spark, config, events: int, work: str) -> str:
    """The ingested lake in `work` (made unless a lake for these events is there already)."""
    from marketlake.jobs import get_job
    from marketlake.lake import Lake
    from marketlake.runner import build_parser, run_job

    root = os.path.join(work, "lake")
    marker = os.path.join(work, "lake.json")
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == {"events": events}:
                log(f"reusing the lake in {root}")
                return root
    events_dir, _ = shop(spark, events, work)
    shutil.rmtree(root, ignore_errors=True)
    lake = Lake(spark, config.lake, root)
    folder = os.path.dirname(events_dir)
    for entity, source in (("items", "items.csv"), ("users", "users.csv"), ("events", "events")):
        args = build_parser(get_job("ingest")).parse_args(
            ["--source", os.path.join(folder, source), "--entity", entity, "--run-date", END_DATE.isoformat()]
        )
        started = time.perf_counter()
        if run_job(get_job("ingest"), args, spark, config, lake) != 0:
            raise SystemExit(f"ingest {entity} failed")
        log(f"ingested {entity} in {time.perf_counter() - started:.1f} s")
    with open(marker, "w") as f:
        json.dump({"events": events}, f)
    return root


def data_files(lake) -> int:
    return sum(len(lake.data_files(t.name)) for t in lake_tables(lake))


def lake_tables(lake):
    from marketlake import catalog

    return [t for t in catalog.TABLES if lake.exists(t)]


def run_housekeeping(spark, config, lake) -> tuple[float, dict[str, int], dict[str, float]]:
    from marketlake import catalog
    from marketlake.jobs import get_job
    from marketlake.runner import job_arguments, run_job

    job = get_job("housekeeping")
    args = job_arguments(job, run_date=RUN_DATE, lake=lake.root)
    lines = StepLines()
    logging.getLogger("marketlake").addHandler(lines)
    started = time.perf_counter()
    try:
        code = run_job(job, args, spark, config, lake)
    finally:
        logging.getLogger("marketlake").removeHandler(lines)
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"housekeeping exited with {code}")
    last = (
        lake.read(catalog.JOB_RUNS)
        .filter("job = 'housekeeping'")
        .orderBy("ended_at", ascending=False)
        .first()
    )
    steps = {m["step"]: float(m["seconds"]) for m in map(STEP_LINE.match, lines.lines) if m}
    return seconds, dict(last["counts"]), steps


def run_baseline(spark, lake, out: str) -> float:
    """Every table's current files read and written again as Parquet, partitioned as the table is."""
    started = time.perf_counter()
    for table in lake_tables(lake):
        frame = lake.read(table)
        writer = frame.write.mode("overwrite")
        if table.partition_by:
            writer = writer.partitionBy(*table.partition_by)
        writer.parquet(os.path.join(out, table.name))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", help="work in this folder and reuse its shop and lake")
    options = parser.parse_args(argv)

    from marketlake.config import load_config
    from marketlake.java import ensure_java
    from marketlake.lake import Lake
    from marketlake.runner import configure_logging
    from marketlake.spark import build_session

    configure_logging()
    ensure_java()
    config = load_config(None)
    spark = build_session(config)
    work = options.keep or tempfile.mkdtemp(prefix="bench-housekeeping-")
    os.makedirs(work, exist_ok=True)
    source = build_lake(spark, config, options.events, work)

    copy = os.path.join(work, "copy")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy)
    lake = Lake(spark, config.lake, copy)
    files_before = data_files(lake)
    baseline_load = load()
    baseline = run_baseline(spark, lake, os.path.join(work, "baseline"))
    shutil.rmtree(os.path.join(work, "baseline"), ignore_errors=True)

    first_load = load()
    seconds, counts, steps = run_housekeeping(spark, config, lake)
    files_after = data_files(lake)
    rerun_load = load()
    rerun, again, _ = run_housekeeping(spark, config, lake)
    if again.get("partitions_expired") or again.get("rows_expired"):
        raise SystemExit(f"the re-run found more to expire: {again}")

    print(f"housekeeping on a {options.events:,}-event lake, run date {RUN_DATE} (ingested {END_DATE})")
    print(f"  baseline (rewrite every table):  {baseline:8.1f} s   load {baseline_load}")
    print(f"  housekeeping:                    {seconds:8.1f} s   load {first_load}")
    print(f"  re-run (nothing to do):          {rerun:8.1f} s   load {rerun_load}")
    print(f"  ratio baseline / housekeeping:   {baseline / seconds:8.2f}")
    print(f"  data files {files_before} -> {files_after}; counts: {json.dumps(counts, sort_keys=True)}")
    for table, table_seconds in steps.items():
        print(f"    {table:<28} {table_seconds:6.1f} s")
    if not options.keep:
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "events": options.events,
        "seconds": round(seconds, 1),
        "rerun_seconds": round(rerun, 1),
        "baseline_seconds": round(baseline, 1),
        "ratio": round(baseline / seconds, 2),
        "files_before": files_before,
        "files_after": files_after,
        "partitions_expired": counts.get("partitions_expired", 0),
        "rows_expired": counts.get("rows_expired", 0),
        "files_compacted": counts.get("files_compacted", 0),
        "tables": steps,
        "load": first_load,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

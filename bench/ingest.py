"""Benchmark: the `ingest` job on the generator's JSON events against plain Spark, in one run.

Generates a synthetic shop once (`marketlake.demo.generate_shop`: users = events / 100, 2,000 items,
seed 7, ending on 2024-06-30), then times, on the same files and in the same Spark session:
- baseline: `spark.read.json(events_dir).write.parquet(dir)`, plain Spark with its schema inference, as a
  user would write it;
- ingest: the real job (`marketlake.runner.run_job(get_job("ingest"), ...)` with `--source events_dir
  --entity events --run-date 2024-06-30`) into a fresh, empty lake each time: bronze.events,
  silver.events, quarantine.events, ops.ingested_files and the ops.job_runs row;
- floor: the least a validating ingest does (`run_floor`): parse with the mapping's fields, type and
  validate, write the valid events as Parquet partitioned by event_date; no bronze, deduplication,
  quarantine or Delta commit. Its ratio bounds what any ingest built on these steps can reach.
- bare: the least any ingest that keeps a bronze copy and deduplicates must do, with no validation at
  all (`run_bare`): copy the lines as Parquet, parse them once with the known schema (Spark's JSON
  reader, no inference), cache, count every key, write the typed rows of unrepeated keys partitioned by
  date; no quarantine, reasons, counts, Delta commits or run records. Everything the job does beyond
  this has to fit in the difference between the bare side and the goal.

After an untimed warm-up of every side on one day's files, the sides alternate, in reversed order from
one repeat to the next (B F N I, I N F B, ...; N = bare); each figure is the median over --repeat runs.
The machine is shared, so compare the ratio, not the absolute seconds: ratio = ingest events/s /
baseline events/s, measured in the same run. The goal (the ingest issue) is a ratio of at least 0.7 at
10^6 events. Every ingest run must exit 0 and its counts in ops.job_runs must conserve records (read =
accepted + rejected + duplicates = the lines generated). The job's own step log (one line per step with
its seconds) is captured and shown as a breakdown of where ingest time goes.

    python bench/ingest.py [--events N] [--repeat R] [--keep DIR]

--keep DIR works in DIR and leaves the shop and the last lake there; a shop generated there before for
the same --events is reused. The last line of stdout is a JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

END_DATE = dt.date(2024, 6, 30)
ITEMS = 2_000
SEED = 7
GOAL = 0.7
# One step line of the job log: "ingest | events: read, validate, deduplicate | rows=123 11.55s".
STEP_LINE = re.compile(r"^ingest \| (?P<step>.+?) \|(?: rows=(?P<rows>\d+))?.*? (?P<seconds>\d+\.\d+)s$")
# Lines of the runner, not steps: the start line and the closing one with the whole run's seconds.
NOT_STEPS = ("start", "succeeded", "failed")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class IngestFailed(Exception):
    pass


class StepLog(logging.Handler):
    """Collects the job's step lines (logger "marketlake") and echoes every line to stderr."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.steps: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        log(f"    {record.name}: {message}")
        match = STEP_LINE.match(message)
        if match and match["step"] not in NOT_STEPS:
            step = match["step"]
            if step.startswith("events: list "):
                step = "events: list source files"
            self.steps.append((step, float(match["seconds"])))


def files_under(folder: str) -> tuple[int, int]:
    """(files, bytes) under `folder`, hidden names (_x, .x) excluded as Spark does."""
    files = size = 0
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
        for name in names:
            if not name.startswith(("_", ".")):
                files += 1
                size += os.path.getsize(os.path.join(parent, name))
    return files, size


def shop(spark, events: int, work: str) -> tuple[str, int]:
    """The shop's events folder and its number of lines; generates it unless `work` holds it already."""
    from marketlake.demo import ShopSpec, generate_shop

    spec = ShopSpec(users=max(10, events // 100), items=ITEMS, events=events, seed=SEED, end_date=END_DATE)
    out = os.path.join(work, "shop")
    marker = os.path.join(work, "shop.json")
    wanted = {
        "users": spec.users,
        "items": spec.items,
        "events": spec.events,
        "seed": spec.seed,
        "end_date": spec.end_date.isoformat(),
    }
    if os.path.exists(marker):
        with open(marker) as f:
            saved = json.load(f)
        if saved["spec"] == wanted:
            log(f"reusing the shop in {out}")
            return os.path.join(out, "events"), saved["lines"]
    log(f"generating the shop: {spec}")
    started = time.perf_counter()
    counts = generate_shop(spark, spec, out)
    log(f"generated {counts['events']:,} event lines in {time.perf_counter() - started:.1f} s")
    with open(marker, "w") as f:
        json.dump({"spec": wanted, "lines": counts["events"]}, f)
    return os.path.join(out, "events"), counts["events"]


def run_baseline(spark, events_dir: str, out: str) -> float:
    started = time.perf_counter()
    spark.read.json(events_dir).write.mode("overwrite").parquet(out)
    return time.perf_counter() - started


def run_floor(spark, config, events_dir: str, out: str) -> float:
    """The least any validating ingest does: parse the JSON with the mapping's fields, type and validate
    the events, and write the valid ones as Parquet partitioned by event_date. No bronze copy, no
    deduplication, no quarantine, no Delta commit, no manifest: its ratio bounds ingest's from above."""
    from marketlake.ingest import IngestRequest, validated_records
    from marketlake.ingest.sources import list_source_files
    from marketlake.ingest.transform import SILVER_EVENT_COLUMNS, is_valid
    from marketlake.mapping import load_mapping

    started = time.perf_counter()
    files = list_source_files(spark, events_dir)
    request = IngestRequest("events", events_dir, load_mapping("shop_events"), "json")
    valid = validated_records(spark, files, request, config.ingest, END_DATE).filter(is_valid())
    valid.select(*SILVER_EVENT_COLUMNS).write.mode("overwrite").partitionBy("event_date").parquet(out)
    return time.perf_counter() - started


# The generator's event fields with the types silver gives them: what a reader that knows the source
# (and so skips schema inference) asks Spark's JSON reader for.
BARE_SCHEMA = (
    "event_id string, user_id string, item_id string, event_type string, ts timestamp, session_id string, "
    "order_id string, quantity int, price double, channel string, campaign_id string, experiment_id string, "
    "variant string, rating double"
)


def run_bare(spark, events_dir: str, out: str, first_day: dt.date) -> float:
    """The least any ingest that keeps the raw lines and deduplicates must do, without validating: a bronze
    copy of the lines, one parse with the known schema, a count per key, and the typed rows of unrepeated
    keys (dated within the shop's days, so the dirty dates do not add partitions) partitioned by date."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    spark.read.text(events_dir).select("value", "_metadata.file_path").write.parquet(
        os.path.join(out, "bronze")
    )
    parsed = spark.read.schema(BARE_SCHEMA).json(events_dir).withColumn("event_date", F.to_date("ts"))
    parsed = parsed.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        repeated = parsed.groupBy("event_id").count().filter(F.col("count") > 1).select("event_id")
        kept = parsed.join(F.broadcast(repeated), "event_id", "left_anti").filter(
            F.col("event_date").between(F.lit(first_day), F.lit(END_DATE + dt.timedelta(days=1)))
        )
        kept.write.partitionBy("event_date").parquet(os.path.join(out, "silver"))
    finally:
        parsed.unpersist()
    return time.perf_counter() - started


def run_ingest(spark, config, events_dir: str, lake_root: str) -> tuple[float, dict[str, int], str]:
    """Seconds of one ingest run into a fresh lake, its counts from ops.job_runs, and what it printed."""
    from marketlake import catalog
    from marketlake.jobs import get_job
    from marketlake.lake import Lake
    from marketlake.runner import build_parser, run_job

    shutil.rmtree(lake_root, ignore_errors=True)
    job = get_job("ingest")
    args = build_parser(job).parse_args(
        [
            "--source",
            events_dir,
            "--entity",
            "events",
            "--run-date",
            END_DATE.isoformat(),
            "--lake",
            lake_root,
        ]
    )
    lake = Lake(spark, config.lake, lake_root)
    printed = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = run_job(job, args, spark, config, lake)
    seconds = time.perf_counter() - started
    if code != 0:
        raise IngestFailed(f"ingest exited with {code}")
    rows = lake.read(catalog.JOB_RUNS).select("counts").collect()
    if len(rows) != 1:
        raise IngestFailed(f"ops.job_runs holds {len(rows)} rows in a fresh lake, not 1")
    return seconds, dict(rows[0]["counts"]), printed.getvalue()


def check_counts(counts: dict[str, int], lines: int) -> None:
    read, accepted = counts["events.records_read"], counts["events.accepted"]
    rejected, duplicates = counts["events.rejected"], counts["events.duplicates"]
    if read != accepted + rejected + duplicates:
        raise IngestFailed(f"counts do not add up: {read} read != {accepted} + {rejected} + {duplicates}")
    if read + counts.get("events.blank_lines", 0) != lines:
        raise IngestFailed(f"ingest read {read} records, the generator wrote {lines} lines")


def step_table(runs: list[list[tuple[str, float]]], totals: list[float]) -> list[str]:
    """One line per step: its seconds in each ingest run, and its share of the median run."""
    middle = sorted(range(len(totals)), key=lambda k: totals[k])[(len(totals) - 1) // 2]
    other = "(outside the steps: ops.job_runs row)"
    names = [name for name, _ in runs[middle]]
    width = max(len(name) for name in [*names, other])
    table = {name: [dict(run).get(name, float("nan")) for run in runs] for name in names}
    table[other] = [total - sum(s for _, s in run) for run, total in zip(runs, totals, strict=True)]
    table["total"] = totals
    head = " ".join(f"{f'run {k + 1}':>8}" for k in range(len(totals)))
    lines = [f"  {'step':<{width}} {head}   share of run {middle + 1} (median)"]
    for name, seconds in table.items():
        share = f"   {100 * seconds[middle] / totals[middle]:6.1f} %" if name != "total" else ""
        lines.append(f"  {name:<{width}} " + " ".join(f"{s:8.2f}" for s in seconds) + share)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="event lines (default 1000000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each side (default 3)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.events < 1_000 or args.repeat < 1:
        parser.error("--events must be at least 1000 and --repeat at least 1")

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    import pyspark

    from marketlake.config import load_config
    from marketlake.java import ensure_java
    from marketlake.spark import build_session

    work = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="marketlake-bench-ingest-")
    os.makedirs(work, exist_ok=True)
    handler = StepLog()
    logger = logging.getLogger("marketlake")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    spark = None
    try:
        config = load_config(None)
        ensure_java()
        log(f"starting Spark (master {config.spark.master})")
        spark = build_session(config)
        events_dir, lines = shop(spark, args.events, work)
        files, size = files_under(events_dir)

        first_folder = sorted(os.listdir(events_dir))[0]  # date=YYYY-MM-DD, the shop's first day
        day = os.path.join(events_dir, first_folder)
        first_day = dt.date.fromisoformat(first_folder.split("=")[1])
        log(f"warm-up (untimed): both sides on {day}")
        run_baseline(spark, day, os.path.join(work, "warmup"))
        run_floor(spark, config, day, os.path.join(work, "warmup-floor"))
        run_bare(spark, day, os.path.join(work, "warmup-bare"), first_day)
        run_ingest(spark, config, day, os.path.join(work, "warmup-lake"))

        baseline: list[float] = []
        floor: list[float] = []
        bare: list[float] = []
        ingest: list[float] = []
        steps: list[list[tuple[str, float]]] = []
        counts: dict[str, int] = {}
        summary_text = ""
        for repeat in range(args.repeat):
            sides = ["baseline", "floor", "bare", "ingest"]
            sides = sides if repeat % 2 == 0 else sides[::-1]
            for side in sides:
                log(f"repeat {repeat + 1}: {side}")
                if side == "baseline":
                    seconds = run_baseline(spark, events_dir, os.path.join(work, "baseline"))
                    baseline.append(seconds)
                elif side == "floor":
                    seconds = run_floor(spark, config, events_dir, os.path.join(work, "floor"))
                    floor.append(seconds)
                elif side == "bare":
                    seconds = run_bare(spark, events_dir, os.path.join(work, "bare"), first_day)
                    bare.append(seconds)
                else:
                    handler.steps = []
                    lake_root = os.path.join(work, "lake")
                    seconds, counts, summary_text = run_ingest(spark, config, events_dir, lake_root)
                    check_counts(counts, lines)
                    ingest.append(seconds)
                    steps.append(handler.steps)
                log(f"repeat {repeat + 1}: {side} {seconds:.2f} s")
        baseline_rows = spark.read.parquet(os.path.join(work, "baseline")).count()
        cores, parallelism = os.cpu_count(), spark.sparkContext.defaultParallelism
        master = spark.sparkContext.master
    except IngestFailed as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    finally:
        logger.removeHandler(handler)
        if spark is not None:
            spark.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    b, i = statistics.median(baseline), statistics.median(ingest)
    ratio = (lines / i) / (lines / b)
    print(
        f"marketlake ingest benchmark: {lines:,} event lines in {files} JSON files ({size / 1e6:.1f} MB), "
        f"{cores} cores (os.cpu_count), master {master}, Spark default parallelism {parallelism}"
    )
    print(
        f"pyspark {pyspark.__version__}, Python {sys.version.split()[0]}; {args.repeat} repeats, medians; "
        f"baseline wrote {baseline_rows:,} rows"
    )
    print(summary_text.strip())
    print("  counts: " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    print()
    header = f"{'side':<10} {'median s':>9} {'events/s':>10}   all runs (s, in run order)"
    print(header)
    print("-" * len(header))
    for side, runs in (("baseline", baseline), ("floor", floor), ("bare", bare), ("ingest", ingest)):
        m = statistics.median(runs)
        print(f"{side:<10} {m:9.2f} {lines / m:10,.0f}   " + " ".join(f"{s:.2f}" for s in runs))
    print()
    verdict = "meets" if ratio >= GOAL else "below"
    print(f"ratio = ingest events/s / baseline events/s = {ratio:.2f} ({verdict} the goal of {GOAL})")
    best = min(baseline) / min(ingest)
    print(f"ratio from the fastest run of each side: {best:.2f}")
    f = statistics.median(floor)
    print(
        f"floor ratio = {b / f:.2f}: parse + validate + one partitioned Parquet write of the valid events, with no"
    )
    print(
        "  bronze copy, deduplication, quarantine or Delta commit, reaches this much of the baseline's events/s;"
    )
    print(f"  ingest reaches {f / i:.2f} of the floor's events/s")
    n = statistics.median(bare)
    print(
        f"bare ratio = {b / n:.2f}: the bronze copy, one parse with the known schema, a count per key and the"
    )
    print(
        "  typed rows partitioned by date, with no validation, quarantine, counts, Delta commit or run record;"
    )
    print(
        f"  at the goal, everything else must fit in {max(0.0, b / GOAL - n):.2f} s (ingest spends {i - n:.2f} s more than bare)"
    )
    print()
    print("where ingest time goes (seconds per step, from the job's step log):")
    for line in step_table(steps, ingest):
        print(line)
    summary = {
        "events": lines,
        "baseline_s": round(b, 3),
        "floor_s": round(f, 3),
        "ingest_s": round(i, 3),
        "bare_s": round(n, 3),
        "ratio": round(ratio, 4),
        "floor_ratio": round(b / f, 4),
        "bare_ratio": round(b / n, 4),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

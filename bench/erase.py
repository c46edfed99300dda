"""Benchmark: erase 100 subjects from a lake of 10^6 events (issue 18: goal <= 60 s on this machine).

Builds the lake once (generate with the landing folder under the lake root, then ingest events and users
and the features job), then in the same run measures:
- baseline: a plain full rewrite of every table's rows (read each table, write it as Parquet elsewhere),
  what erasing by rebuilding the lake would at least cost;
- erase: `erase --subjects FILE` with `--subjects` user ids drawn from the shop (every 2nd one by email).

ratio = baseline seconds / erase seconds (above 1: the erasure is cheaper than rewriting everything).
Seconds per table are the job's own step timings (rows: the rewrite; physical: vacuum and log cut).
The last line of stdout is JSON: seconds (the erase job, end to end), seconds_per_table, baseline_seconds,
ratio, events, subjects, rows_removed.

    python bench/erase.py [--events 1000000] [--subjects 100] [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time

RUN_DATE = "2024-06-30"
STEP = re.compile(r"^erase \| (rows|physical|files): (\S+) \|.* ([0-9.]+)s$")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Steps(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        found = STEP.match(record.getMessage())
        if found:
            kind, name, seconds = found.groups()
            key = name if kind != "files" else f"files:{name}"
            self.seconds[key] = round(self.seconds.get(key, 0.0) + float(seconds), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--out", help="where the lake goes (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the lake afterwards")
    parser.add_argument(
        "--offset", type=int, default=0, help="pick other subjects (to erase again from a kept lake)"
    )
    args = parser.parse_args()
    os.environ.setdefault("MARKETLAKE_ERASURE_KEY", "bench-erasure-key-0123456789abcdef")
    out = args.out or tempfile.mkdtemp(prefix="bench-erase-")
    root = os.path.join(out, "lake")

    from marketlake.jobs import main as job
    from marketlake.runner import configure_logging

    configure_logging()
    users = max(200, args.events // 100)
    if not os.path.exists(os.path.join(root, "silver", "events")):
        started = time.perf_counter()
        code = job(
            "generate",
            ["--lake", root, "--run-date", RUN_DATE, "--users", str(users), "--events", str(args.events)],
        )
        assert code == 0, "generate failed"
        shop = os.path.join(root, "landing", "shop")
        for entity, source in (("items", "items.csv"), ("users", "users.csv"), ("events", "events")):
            code = job(
                "ingest",
                ["--lake", root, "--run-date", RUN_DATE, "--entity", entity, "--source", f"{shop}/{source}"],
            )
            assert code == 0, f"ingest {entity} failed"
        assert job("features", ["--lake", root, "--run-date", RUN_DATE]) == 0
        log(f"lake built in {time.perf_counter() - started:.0f}s")

    import polars as pl

    people = pl.read_csv(os.path.join(root, "landing", "shop", "users.csv"))
    step = max(1, people.height // args.subjects)
    chosen = people[::step].head(args.subjects)
    lines = [
        (row["email"] if i % 2 else row["user_id"]) for i, row in enumerate(chosen.iter_rows(named=True))
    ]
    subjects = os.path.join(out, "subjects.txt")
    with open(subjects, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")

    from marketlake.config import load_config
    from marketlake.lake import Lake
    from marketlake.spark import build_session

    config = load_config(None).with_lake_root(root)
    spark = build_session(config)
    lake = Lake(spark, config.lake)
    copy = os.path.join(out, "baseline")
    started = time.perf_counter()
    for summary in lake.tables():
        lake.read(summary.table).write.mode("overwrite").parquet(os.path.join(copy, summary.table))
    baseline = time.perf_counter() - started
    shutil.rmtree(copy, ignore_errors=True)
    log(f"baseline: every table rewritten in {baseline:.1f}s")

    steps = Steps()
    logging.getLogger("marketlake").addHandler(steps)
    started = time.perf_counter()
    code = job("erase", ["--lake", root, "--run-date", RUN_DATE, "--subjects", subjects])
    seconds = time.perf_counter() - started
    assert code == 0, "erase failed"
    runs = pl.read_delta(os.path.join(root, "ops", "job_runs")).filter(pl.col("job") == "erase")
    last = runs.sort("started_at")["counts"].to_list()[-1]
    if isinstance(last, dict) and set(last) == {"key", "value"} and isinstance(last["key"], list):
        counts = dict(zip(last["key"], last["value"], strict=True))
    else:
        counts = dict(last) if isinstance(last, dict) else {e["key"]: e["value"] for e in last}
    load = os.getloadavg()
    print(f"erase {args.subjects} subjects from {args.events:,} events: {seconds:.1f}s (goal 60 s)")
    print(f"baseline (rewrite every table): {baseline:.1f}s; ratio baseline/erase {baseline / seconds:.2f}")
    print(f"rows removed {counts.get('rows_removed')}, files changed {counts.get('files_changed')}")
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    for name, value in sorted(steps.seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {name:40s} {value:8.2f}s")
    if not args.keep and not args.out:
        shutil.rmtree(out, ignore_errors=True)
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "seconds_per_table": steps.seconds,
                "baseline_seconds": round(baseline, 2),
                "ratio": round(baseline / seconds, 3),
                "events": args.events,
                "subjects": args.subjects,
                "rows_removed": counts.get("rows_removed"),
                "load_average": round(load[0], 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

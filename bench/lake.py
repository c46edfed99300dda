"""Benchmark: the delta-rs engine of `marketlake.lake` against plain Spark Parquet, in one run.

Measures, on the same cached events-like DataFrame and in the same Spark session:
- write: `lake.write(table, df, mode="overwrite", partition_by=["event_date"])` (Spark's Parquet writer
  into a staging folder, file moves, footer statistics, one Delta commit) against
  `df.write.mode("overwrite").partitionBy("event_date").parquet(dir)`;
- read: `lake.read(table)` (Delta snapshot through `deltalake`, then `spark.read.parquet(files)`)
  against `spark.read.parquet(dir)`, both forced through the same full-scan aggregate.

Each figure is the median of --repeats timed runs after one untimed warm-up; plain and lake runs
alternate order from one repeat to the next. The machine is shared, so compare the ratio, not the
absolute seconds: ratio = plain seconds / delta-rs seconds, measured in the same run. A ratio above 1
means the lake is faster than plain Parquet; the goal (issue 2) is a ratio of at least 0.9 both ways.

    python bench/lake.py [--rows N] [--repeats R] [--partitioned/--no-partitioned] [--out DIR]

With --partitioned (the default) the partitioned layout is the headline (and the closing JSON line),
and the unpartitioned layout is measured too and shown in the table; --no-partitioned measures only
the unpartitioned layout. The last line of stdout is a JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

START = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
DAYS = 30
EVENT_TYPES = ["view"] * 6 + ["click"] * 2 + ["add_to_cart", "purchase"]
CHANNELS = ["web", "web", "app", "app", "app", "email", "ads"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def events_frame(spark, rows: int):
    """An events-like DataFrame from Spark built-ins only (deterministic, no Python UDFs)."""
    from pyspark.sql import functions as F

    def draw(salt: int, modulus: int):
        return F.pmod(F.xxhash64(F.col("id"), F.lit(salt)), F.lit(modulus))

    def pick(values: list[str], salt: int):
        return F.element_at(F.array(*[F.lit(v) for v in values]), (draw(salt, len(values)) + 1).cast("int"))

    start_micros = int(START.timestamp()) * 1_000_000
    span_micros = DAYS * 86_400 * 1_000_000
    frame = spark.range(rows).select(
        F.md5(F.col("id").cast("string")).alias("event_id"),
        F.format_string("u%07d", draw(1, 200_000)).alias("user_id"),
        F.format_string("i%06d", draw(2, 50_000)).alias("item_id"),
        pick(EVENT_TYPES, 3).alias("event_type"),
        F.timestamp_micros(F.lit(start_micros) + draw(4, span_micros)).alias("event_ts"),
        (draw(5, 5) + 1).cast("int").alias("quantity"),
        F.round(F.lit(0.5) + draw(6, 50_000) / F.lit(100.0), 2).alias("price"),
        pick(CHANNELS, 7).alias("channel"),
    )
    return frame.select(
        "event_id",
        "user_id",
        "item_id",
        "event_type",
        "event_ts",
        F.to_date("event_ts").alias("event_date"),
        "quantity",
        "price",
        F.when(F.col("event_type") == "purchase", F.round(F.col("price") * F.col("quantity"), 2))
        .otherwise(F.lit(0.0))
        .alias("revenue"),
        "channel",
    )


def scan(frame) -> tuple:
    """The full-scan query both sides run: it touches every row, a data column and the partition column."""
    from pyspark.sql import functions as F

    row = frame.agg(
        F.count("*"),
        F.sum("revenue"),
        F.sum("quantity"),
        F.max("event_ts"),
        F.min("event_date"),
        F.max("event_date"),
    ).collect()[0]
    return tuple(row)


def same(a: tuple, b: tuple) -> bool:
    """Equal, with a relative tolerance for the floating sum (its order differs between scans)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-6):
                return False
        elif x != y:
            return False
    return True


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def disk_usage(path: str) -> tuple[int, int]:
    """(data files, bytes) of the Parquet files under `path`, hidden folders and files excluded."""
    files = size = 0
    for folder, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
        for name in names:
            if name.endswith(".parquet") and not name.startswith(("_", ".")):
                files += 1
                size += os.path.getsize(os.path.join(folder, name))
    return files, size


@dataclass
class Layout:
    name: str
    partitioned: bool
    write_plain: list[float] = field(default_factory=list)
    write_lake: list[float] = field(default_factory=list)
    read_plain: list[float] = field(default_factory=list)
    read_lake: list[float] = field(default_factory=list)
    plain_files: int = 0
    plain_bytes: int = 0
    lake_files: int = 0


class Mismatch(Exception):
    pass


def run_layout(spark, lake, df, expected: tuple, out: str, partitioned: bool, repeats: int) -> Layout:
    name = "partitioned" if partitioned else "unpartitioned"
    layout = Layout(name, partitioned)
    plain_dir = os.path.join(out, f"plain_{name}")
    table = f"bench.events_{name}"
    partition_by = ["event_date"] if partitioned else None

    def write_plain():
        writer = df.write.mode("overwrite")
        if partitioned:
            writer = writer.partitionBy("event_date")
        writer.parquet(plain_dir)

    def write_lake():
        return lake.write(table, df, mode="overwrite", partition_by=partition_by)

    def read_plain():
        return scan(spark.read.parquet(plain_dir))

    def read_lake():
        return scan(lake.read(table))

    def check(side: str, got: tuple) -> None:
        if not same(got, expected):
            raise Mismatch(f"{name} {side} read returned {got}, the source DataFrame gives {expected}")

    log(f"[{name}] warm-up (untimed)")
    write_plain()
    result = write_lake()
    check("plain", read_plain())
    check("delta-rs", read_lake())
    layout.lake_files = result.files_added

    for repeat in range(repeats):
        sides = [("plain", write_plain, read_plain), ("delta-rs", write_lake, read_lake)]
        if repeat % 2:
            sides.reverse()
        for side, write, _ in sides:
            seconds, result = timed(write)
            (layout.write_plain if side == "plain" else layout.write_lake).append(seconds)
            if side == "delta-rs":
                layout.lake_files = result.files_added
                if result.rows != expected[0]:
                    raise Mismatch(f"{name} delta-rs write reported {result.rows} rows, not {expected[0]}")
            log(f"[{name}] repeat {repeat + 1}: write {side:8s} {seconds:7.3f} s")
        for side, _, read in sides:
            seconds, got = timed(read)
            (layout.read_plain if side == "plain" else layout.read_lake).append(seconds)
            check(side, got)
            log(f"[{name}] repeat {repeat + 1}: read  {side:8s} {seconds:7.3f} s")
    layout.plain_files, layout.plain_bytes = disk_usage(plain_dir)
    return layout


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(
    layouts: list[Layout], rows: int, repeats: int, cores: int | None, parallelism: int, versions: str
) -> None:
    print(
        f"marketlake lake benchmark: {rows:,} rows, {repeats} repeats (median), "
        f"{cores} cores (os.cpu_count), Spark default parallelism {parallelism}"
    )
    print(versions)
    print("ratio = plain s / delta-rs s (>1: delta-rs faster; goal >= 0.90); medians over the repeats,")
    print("ratio(min) = the same from the fastest run of each side (less sensitive to a busy machine)")
    print()
    header = f"{'operation':<31} {'plain s':>9} {'delta-rs s':>11} {'plain rows/s':>14} {'delta-rs rows/s':>16} {'ratio':>7} {'ratio(min)':>11}"
    print(header)
    print("-" * len(header))
    for layout in layouts:
        for operation, plain, lake in (
            ("write", layout.write_plain, layout.write_lake),
            ("read (full scan)", layout.read_plain, layout.read_lake),
        ):
            p, q = median(plain), median(lake)
            label = f"{operation}, {layout.name}"
            goal = "" if p / q >= 0.9 else "  < goal"
            best = min(plain) / min(lake)
            print(
                f"{label:<31} {p:9.3f} {q:11.3f} {rows / p:14,.0f} {rows / q:16,.0f} {p / q:7.2f} {best:11.2f}{goal}"
            )
    print()
    print("absolute figures (seconds, in run order):")
    for layout in layouts:
        for label, values in (
            ("write plain", layout.write_plain),
            ("write delta-rs", layout.write_lake),
            ("read plain", layout.read_plain),
            ("read delta-rs", layout.read_lake),
        ):
            runs = " ".join(f"{v:7.3f}" for v in values)
            print(f"  {layout.name:<14} {label:<15} {runs}   min {min(values):7.3f}  max {max(values):7.3f}")
        print(
            f"  {layout.name:<14} files: plain {layout.plain_files} ({layout.plain_bytes / 1e6:.1f} MB), "
            f"delta-rs {layout.lake_files} per write"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the DataFrame (default 1000000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per operation (default 3)")
    parser.add_argument(
        "--partitioned",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="partition by event_date (default); also measures the unpartitioned layout",
    )
    parser.add_argument("--out", help="working directory (default: a temporary one, removed at the end)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeats < 1:
        parser.error("--rows and --repeats must be at least 1")

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    import deltalake
    import pyspark

    from marketlake.config import load_config
    from marketlake.lake import Lake
    from marketlake.spark import build_session

    out = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="marketlake-bench-")
    os.makedirs(out, exist_ok=True)
    spark = None
    try:
        config = load_config(None)
        log(f"starting Spark (master {config.spark.master})")
        spark = build_session(config)
        lake = Lake(
            spark, config.lake.model_copy(update={"engine": "delta-rs"}), root=os.path.join(out, "lake")
        )

        df = events_frame(spark, args.rows).cache()
        seconds, count = timed(df.count)
        log(f"built and cached {count:,} rows in {df.rdd.getNumPartitions()} partitions ({seconds:.1f} s)")
        expected = scan(df)

        layouts = []
        for partitioned in [True, False] if args.partitioned else [False]:
            layouts.append(run_layout(spark, lake, df, expected, out, partitioned, args.repeats))

        versions = (
            f"pyspark {pyspark.__version__}, deltalake {deltalake.__version__}, "
            f"Python {sys.version.split()[0]}, master {spark.sparkContext.master}"
        )
        report(
            layouts, args.rows, args.repeats, os.cpu_count(), spark.sparkContext.defaultParallelism, versions
        )
        head = layouts[0]
        summary = {
            "rows": args.rows,
            "partitioned": head.partitioned,
            "write_plain_s": round(median(head.write_plain), 4),
            "write_lake_s": round(median(head.write_lake), 4),
            "write_ratio": round(median(head.write_plain) / median(head.write_lake), 3),
            "read_plain_s": round(median(head.read_plain), 4),
            "read_lake_s": round(median(head.read_lake), 4),
            "read_ratio": round(median(head.read_plain) / median(head.read_lake), 3),
        }
    except Mismatch as exc:
        print(f"ERROR: results differ: {exc}", file=sys.stderr)
        return 1
    finally:
        if spark is not None:
            spark.stop()
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

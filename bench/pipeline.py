"""Benchmark: the whole pipeline, end to end, at several sizes on this machine.

For each size (default 10^5, 10^6 and 10^7 event lines; users = events / 100, 2,000 items, 30 days, 1%
dirty, seed 7) a fresh lake is made and `jobs/pipeline.py --generate` runs in its own process, as a
scheduler would start it: generate (asked for: a production pipeline starts at ingest), ingest, features,
segment, rules, recommend, activate, experiment, report. Beside it, in the same run, the baseline: plain
Spark reading the same generated JSON events and writing them as Parquet
(`spark.read.json(dir).write.parquet(out)`), in a process of its own with the same memory.

Printed per size: seconds per stage (from ops.job_runs), events per second of the pipeline without
generate, the peak memory of the driver (the Python process, its JVM and Python workers, as proportional
set size, sampled every 0.2 s) while each stage ran, and pipeline time / baseline time. Then the growth of
time from one size to the next (goal of the operations issue: from 10^6 to 10^7 events, at most 12x). The
last line is JSON.

    python bench/pipeline.py [--events 100000,1000000,10000000] [--driver-memory 8g] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_DATE = "2024-06-30"
ITEMS = 2_000
SEED = 7
GROWTH_GOAL = 12.0
START_LINE = re.compile(r" marketlake (?P<job>[a-z_]+) \| start \|")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def process_tree_memory(pid: int) -> int:
    """Bytes of memory held by `pid` and all its descendants: the sum of their proportional set sizes
    (Linux /proc/PID/smaps_rollup), so pages shared between processes (pyspark's forked Python workers
    share most of theirs) count once, not once per process as summed RSS would."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += proportional_set_size(current)
        stack.extend(children.get(current, []))
    return total


def proportional_set_size(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class Watch:
    """Runs a command, follows the job names in its log, and samples its memory per job."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]):
        self.stage = "startup"
        self.peaks: dict[str, int] = {}
        self.log_path = log_path
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.reader.start()
        self.sampler.start()

    def _read(self) -> None:
        with open(self.log_path, "w") as out:
            for line in self.process.stdout:
                out.write(line)
                match = START_LINE.search(line)
                if match and match["job"] != "pipeline":
                    self.stage = match["job"]

    def _sample(self) -> None:
        while self.process.poll() is None:
            held = process_tree_memory(self.process.pid)
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), held)
            time.sleep(0.2)

    def wait(self) -> int:
        code = self.process.wait()
        self.reader.join()
        self.sampler.join(timeout=1)
        return code


def job_seconds(lake: Path) -> dict[str, float]:
    from deltalake import DeltaTable

    runs = DeltaTable(str(lake / "ops" / "job_runs")).to_pandas()
    runs = runs.sort_values("started_at")
    failed = runs[runs["status"] != "succeeded"]
    if len(failed):
        raise SystemExit(
            f"bench: {len(failed)} job(s) failed: {failed[['job', 'message']].to_dict('records')}"
        )
    return {row.job: float(row.seconds) for row in runs.itertuples() if row.job != "pipeline"}


BASELINE = textwrap.dedent(
    """
    import sys, time
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master("local[*]").config("spark.driver.memory", sys.argv[3])
             .config("spark.ui.enabled", "false").getOrCreate())
    started = time.perf_counter()
    spark.read.json(sys.argv[1]).write.mode("overwrite").parquet(sys.argv[2])
    print("BASELINE_SECONDS", time.perf_counter() - started)
    """
)


def run_size(events: int, work: Path, driver_memory: str) -> dict:
    users = max(100, events // 100)
    lake, config = work / "lake", work / "bench.yaml"
    config.write_text(
        f"generate: {{users: {users}, items: {ITEMS}, events: {events}, seed: {SEED}, days: 30}}\n"
        f"spark: {{driver_memory: {driver_memory}}}\n"
    )
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    log(f"{events:,} events, {users:,} users: pipeline (log: {work / 'pipeline.log'})")
    started = time.perf_counter()
    watch = Watch(
        [
            sys.executable,
            "jobs/pipeline.py",
            "--generate",
            "--config",
            str(config),
            "--lake",
            str(lake),
            "--run-date",
            RUN_DATE,
        ],
        work / "pipeline.log",
        env,
    )
    code = watch.wait()
    wall = time.perf_counter() - started
    if code:
        tail = (work / "pipeline.log").read_text().splitlines()[-5:]
        raise SystemExit(f"bench: the pipeline failed at {events:,} events (exit {code}): {' / '.join(tail)}")
    stages = job_seconds(lake)

    log(f"{events:,} events: baseline read.json + write.parquet")
    baseline = subprocess.run(
        [
            sys.executable,
            "-c",
            BASELINE,
            str(lake / "landing" / "shop" / "events"),
            str(work / "baseline"),
            driver_memory,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    found = re.search(r"BASELINE_SECONDS (\S+)", baseline.stdout)
    if not found:
        raise SystemExit(f"bench: the baseline failed: {baseline.stderr[-2000:]}")
    without_generate = sum(seconds for job, seconds in stages.items() if job != "generate")
    return {
        "events": events,
        "users": users,
        "stages": stages,
        "wall_s": round(wall, 1),
        "pipeline_s": round(without_generate, 1),
        "events_per_s": round(events / without_generate),
        "baseline_s": round(float(found.group(1)), 1),
        "peak_mb": {k: round(v / 2**20) for k, v in watch.peaks.items()},
    }


def report(results: list[dict]) -> None:
    stages = list(dict.fromkeys(job for r in results for job in r["stages"]))
    width = 14
    print(
        f"marketlake pipeline benchmark: {os.cpu_count()} cores, run date {RUN_DATE}, seconds per stage (peak driver MB)"
    )
    print("stage".ljust(12) + "".join(f"{r['events']:>{width},}" for r in results))
    for stage in stages:
        cells = []
        for r in results:
            seconds = r["stages"].get(stage)
            memory = r["peak_mb"].get(stage)
            cells.append("-" if seconds is None else f"{seconds:.1f} ({memory or 0})")
        print(stage.ljust(12) + "".join(f"{c:>{width}}" for c in cells))
    rows = [
        ("without gen.", lambda r: f"{r['pipeline_s']:.1f}"),
        ("events/s", lambda r: f"{r['events_per_s']:,}"),
        ("baseline s", lambda r: f"{r['baseline_s']:.1f}"),
        ("x baseline", lambda r: f"{r['pipeline_s'] / r['baseline_s']:.1f}"),
        ("peak MB", lambda r: f"{max(r['peak_mb'].values()):,}"),
    ]
    for label, cell in rows:
        print(label.ljust(12) + "".join(f"{cell(r):>{width}}" for r in results))
    for before, after in zip(results, results[1:], strict=False):
        growth = after["pipeline_s"] / before["pipeline_s"]
        size = after["events"] / before["events"]
        verdict = ""
        if before["events"] == 10**6 and after["events"] == 10**7:
            verdict = f" (goal: at most {GROWTH_GOAL:.0f}x: {'met' if growth <= GROWTH_GOAL else 'NOT met'})"
        print(
            f"time growth {before['events']:,} -> {after['events']:,} events ({size:.0f}x): {growth:.1f}x{verdict}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", default="100000,1000000,10000000", help="comma-separated sizes in event lines"
    )
    parser.add_argument(
        "--driver-memory", default="8g", help="spark.driver.memory of the pipeline and the baseline"
    )
    parser.add_argument("--keep", help="work in this folder and leave the lakes there")
    args = parser.parse_args(argv)
    sizes = [int(float(size)) for size in args.events.split(",")]
    work = Path(args.keep or tempfile.mkdtemp(prefix="marketlake-bench-pipeline-"))
    results = []
    try:
        for events in sizes:
            folder = work / f"events-{events}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            results.append(run_size(events, folder, args.driver_memory))
            log(json.dumps(results[-1]))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(results)
    headline = {
        str(r["events"]): {
            "pipeline_s": r["pipeline_s"],
            "events_per_s": r["events_per_s"],
            "baseline_s": r["baseline_s"],
            "peak_mb": max(r["peak_mb"].values()),
        }
        for r in results
    }
    growth = {
        f"{a['events']}->{b['events']}": round(b["pipeline_s"] / a["pipeline_s"], 2)
        for a, b in zip(results, results[1:], strict=False)
    }
    print(json.dumps({"sizes": headline, "growth": growth}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

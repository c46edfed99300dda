"""Benchmark: the recommend job on the day it searches ALS params (day 1) against the next day, when it
reuses them from ops.models (day 2), on one generated shop.

A shop (default 10^6 event lines, users = events / 100, 2,000 items, 30 days, seed 7) is generated to end
on day 2 and ingested; then `jobs/recommend.py` runs in its own process for day 1 (2024-06-30: no search
recorded yet, so it searches) and for day 2 (2024-07-01: one more day of events, the search one day old,
so it reuses it), then once more for day 2 with `--retune` (a search on the same data as the reusing
run, measured right after it: on a busy machine the load drifts between runs). All runs evaluate on the
held-out split, so the quality of the reused params is shown beside the searched ones. Ratio = day 2
seconds / day 1 seconds (job seconds from ops.job_runs; below 1: day 2 faster); ratio_same_day = day 2
reusing / day 2 searching. The last line is JSON.

    python bench/recommend_reuse.py [--events 1000000] [--config conf/X.yaml] [--keep DIR]
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAY1, DAY2 = "2024-06-30", "2024-07-01"
ITEMS, SEED, DAYS = 2_000, 7, 30
STEP = re.compile(r"recommend \| (?P<step>[^|]+?) \|(?: rows=(?P<rows>\d+))?.*? (?P<s>[\d.]+)s$")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def job(name: str, lake: Path, config: Path, run_date: str, logfile: Path, *options: str) -> float:
    started = time.perf_counter()
    with logfile.open("a") as out:
        code = subprocess.call(
            [sys.executable, f"jobs/{name}.py", "--config", str(config), "--lake", str(lake)]
            + ["--run-date", run_date, *options],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYSPARK_PYTHON": sys.executable},
        )
    if code:
        tail = logfile.read_text().splitlines()[-5:]
        raise SystemExit(f"bench: {name} for {run_date} failed (exit {code}): {' / '.join(tail)}")
    return time.perf_counter() - started


def recommend_runs(lake: Path) -> list[dict]:
    from deltalake import DeltaTable

    runs = DeltaTable(str(lake / "ops" / "job_runs")).to_pandas()
    runs = runs[runs["job"] == "recommend"].sort_values("started_at")
    models = DeltaTable(str(lake / "ops" / "models")).to_pandas()
    models = models[models["model_name"] == "recommend_als"].sort_values("created_at")
    result = []
    for run, model in zip(runs.itertuples(), models.itertuples(), strict=True):
        counts, params, metrics = dict(run.counts), dict(model.params), dict(model.metrics)
        result.append(
            {
                "run_date": str(run.run_date),
                "seconds": round(float(run.seconds), 1),
                "interactions": int(counts["interactions"]),
                "trials": int(counts["trials"]),
                "params_source": json.loads(params["params_source"]),
                "params": {k: json.loads(params[k]) for k in ("rank", "reg_param", "alpha", "max_iter")},
                "budget_s": json.loads(params["tuning_budget_seconds"]),
                "ndcg@10": round(metrics.get("als_ndcg@10", float("nan")), 4),
                "precision@10": round(metrics.get("als_precision@10", float("nan")), 4),
                "popularity_ndcg@10": round(metrics.get("popularity_ndcg@10", float("nan")), 4),
            }
        )
    return result


def step_seconds(logfile: Path, run_date: str) -> dict[str, float]:
    """Seconds per step of the recommend run for `run_date`, from its log lines."""
    steps: dict[str, float] = {}
    current = False
    for line in logfile.read_text().splitlines():
        if " recommend | start |" in line:
            current = f"run date {run_date}" in line or run_date in line
        elif current and (found := STEP.search(line)):
            steps[found["step"].strip()] = float(found["s"])
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="event lines (default 10^6)")
    parser.add_argument("--config", help="YAML merged over the default config (also used by the jobs)")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="recommend-reuse-"))
    work.mkdir(parents=True, exist_ok=True)
    lake, config, logfile = work / "lake", work / "bench.yaml", work / "jobs.log"
    users = max(100, args.events // 100)
    extra = Path(args.config).read_text() if args.config else ""
    config.write_text(
        f"generate: {{users: {users}, items: {ITEMS}, events: {args.events}, seed: {SEED}, days: {DAYS}}}\n"
        + extra
    )
    try:
        log(f"{args.events:,} events, {users:,} users, {ITEMS:,} items ending {DAY2} (log: {logfile})")
        generate_s = job("generate", lake, config, DAY2, logfile)
        ingest_s = job("ingest", lake, config, DAY2, logfile)
        log(f"generate {generate_s:.0f} s, ingest {ingest_s:.0f} s; recommend for {DAY1} (searches)")
        job("recommend", lake, config, DAY1, logfile)
        log(f"recommend for {DAY2} (reuses)")
        job("recommend", lake, config, DAY2, logfile)
        steps1, steps2 = step_seconds(logfile, DAY1), step_seconds(logfile, DAY2)
        log(f"recommend for {DAY2} --retune (searches on day 2's data)")
        job("recommend", lake, config, DAY2, logfile, "--retune")
        day1, day2, retuned = recommend_runs(lake)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    ratio = day2["seconds"] / day1["seconds"]
    print(
        f"recommend job, {args.events:,} events ({users:,} users, {ITEMS:,} items, {DAYS} days), load {load()}"
    )
    print(
        f"{'run':<22} {'seconds':>8} {'interactions':>13} {'trials':>7} {'params':<36} {'nDCG@10':>8} {'P@10':>7}"
    )
    runs = (("day 1 (searches)", day1), ("day 2 (reuses)", day2), ("day 2 --retune", retuned))
    for name, day in runs:
        p = day["params"]
        described = f"{day['params_source']}: rank={p['rank']} reg={p['reg_param']:g} alpha={p['alpha']:g} iters={p['max_iter']}"
        print(
            f"{name + ' ' + day['run_date']:<22} {day['seconds']:>8.1f} {day['interactions']:>13,} {day['trials']:>7} "
            f"{described:<36} {day['ndcg@10']:>8.4f} {day['precision@10']:>7.4f}"
        )
    print(f"search step day 1: {steps1.get('tune ALS', 0.0):.1f} s within a budget of {day1['budget_s']} s")
    for name, steps in (("day 1", steps1), ("day 2", steps2)):
        print(f"{name} steps: " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in steps.items()))
    same_day = day2["seconds"] / retuned["seconds"]
    print(f"ratio day 2 / day 1: {ratio:.2f}; day 2 reusing / day 2 searching: {same_day:.2f}")
    print(
        json.dumps(
            {
                "events": args.events,
                "users": users,
                "day1_s": day1["seconds"],
                "day2_s": day2["seconds"],
                "ratio": round(ratio, 3),
                "day2_retune_s": retuned["seconds"],
                "ratio_same_day": round(same_day, 3),
                "day1_search_s": steps1.get("tune ALS"),
                "day1_budget_s": day1["budget_s"],
                "day1": day1,
                "day2": day2,
                "day2_retune": retuned,
                "load": load(),
            }
        )
    )
    return 0


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())

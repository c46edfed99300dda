"""Benchmark: does the segment job find the planted personas on generated shops it was not tuned on?

For each shop (users, events per user, seed): `generate_shop` writes it, `ingest` (items, users, events)
and `features` build gold.user_features, and the `segment` job runs with the default configuration. Then:

- k: the number of segments the job chose (planted: 5 personas);
- ARI: adjusted Rand index of gold.user_segments against truth/personas.csv;
- ceiling: 5-fold accuracy of a supervised classifier (scikit-learn RandomForest, 200 trees) predicting the
  persona from the same features the job clusters (segment.features, with the job's log1p): how separable
  the personas are in what the job sees. The goal holds where the ceiling is at least 0.95: k = 5 and
  ARI >= 0.9.

Generating and ingesting a shop costs far more than segmenting it, so each shop's gold.user_features (with
the persona) is kept in `--cache` (default: a temporary folder, removed at the end) under
`u<users>-e<events per user>-s<seed>.parquet`; a later run with the same cache segments the same rows.

    python bench/segment_robustness.py [--shops 2000:10:1 50000:100:2 ...] [--cache DIR]

A shop is `users:events_per_user:seed`. The default grid is 5 seeds x (2,000 users x 10 and 100 events,
10,000 x 30, 50,000 x 10 and 100). The last line of stdout is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd

END = "2024-06-30"
PLANTED_K = 5
DEFAULT_SHOPS = [
    f"{users}:{events}:{seed}"
    for users, events in ((2_000, 10), (2_000, 100), (10_000, 30), (50_000, 10), (50_000, 100))
    for seed in (1, 2, 3, 4, 5)
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_shop(text: str) -> tuple[int, int, int]:
    users, events, seed = (int(part) for part in text.split(":"))
    return users, events, seed


def shop_features(spark: Any, users: int, events_per_user: int, seed: int, cache: str, work: str) -> str:
    """The path of the shop's gold.user_features rows with a `persona` column (built once per cache)."""
    from marketlake import catalog
    from marketlake.config import load_config
    from marketlake.demo import ShopSpec, generate_shop
    from marketlake.jobs import main
    from marketlake.lake import Lake

    path = os.path.join(cache, f"u{users}-e{events_per_user}-s{seed}.parquet")
    if os.path.exists(path):
        return path
    shop, root = os.path.join(work, "shop"), os.path.join(work, "lake")
    for folder in (shop, root):
        shutil.rmtree(folder, ignore_errors=True)
    spec = ShopSpec(
        users=users,
        items=max(100, min(2_000, users // 10)),
        events=users * events_per_user,
        seed=seed,
        end_date=dt.date.fromisoformat(END),
    )
    generate_shop(spark, spec, shop)
    for entity, source in (("items", "items.csv"), ("users", "users.csv"), ("events", "events")):
        argv = ["--lake", root, "--run-date", END, "--entity", entity, "--source", os.path.join(shop, source)]
        if main("ingest", argv) != 0:
            raise RuntimeError(f"ingest {entity} failed")
    if main("features", ["--lake", root, "--run-date", END]) != 0:
        raise RuntimeError("features failed")
    features = Lake(spark, load_config().lake, root).read(catalog.USER_FEATURES.name)
    personas = spark.read.csv(os.path.join(shop, "truth", "personas.csv"), header=True)
    features.join(personas, "user_id").write.parquet(path)
    for folder in (shop, root):
        shutil.rmtree(folder, ignore_errors=True)
    return path


def ceiling(rows: pd.DataFrame, features: list[str], log_features: list[str]) -> float:
    """5-fold accuracy of a random forest predicting the persona from the job's features."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x = np.column_stack(
        [
            np.log1p(np.maximum(rows[c].fillna(0).to_numpy(float), 0))
            if c in log_features
            else rows[c].fillna(0).to_numpy(float)
            for c in features
        ]
    )
    forest = RandomForestClassifier(n_estimators=200, random_state=0, n_jobs=1)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(forest, x, rows.persona.to_numpy(), cv=folds).mean())


def segment_shop(spark: Any, path: str, work: str) -> dict[str, Any]:
    """Run the segment job on the shop's feature rows; k, ARI against the personas, seconds, the scores."""
    from pyspark.sql import functions as F
    from sklearn.metrics import adjusted_rand_score

    from marketlake import catalog
    from marketlake.config import load_config
    from marketlake.jobs import main
    from marketlake.lake import Lake

    root = os.path.join(work, "segment-lake")
    shutil.rmtree(root, ignore_errors=True)
    config = load_config()
    lake = Lake(spark, config.lake, root)
    rows = spark.read.parquet(path)
    lake.write(catalog.USER_FEATURES.name, rows.drop("persona"), partition_by=["as_of_date"])
    started = time.perf_counter()
    if main("segment", ["--lake", root, "--run-date", END]) != 0:
        raise RuntimeError("segment failed")
    seconds = time.perf_counter() - started
    segments = lake.read(catalog.USER_SEGMENTS.name).select("user_id", "segment_id")
    joined = segments.join(rows.select("user_id", "persona"), "user_id").toPandas()
    metrics = lake.read(catalog.MODELS.name).orderBy(F.desc("created_at")).first().metrics
    ks = sorted(int(key[len("silhouette_k") :]) for key in metrics if key.startswith("silhouette_k"))
    shutil.rmtree(root, ignore_errors=True)
    return {
        "k": int(metrics["k"]),
        "ari": round(float(adjusted_rand_score(joined.persona, joined.segment_id)), 4),
        "segment_seconds": round(seconds, 1),
        "sampled_users": int(metrics["sampled_users"]),
        "silhouette": {k: round(metrics[f"silhouette_k{k}"], 4) for k in ks},
        "stability": {k: round(metrics[f"stability_k{k}"], 4) for k in ks},
    }


def measure(spark: Any, shop: str, cache: str, work: str) -> dict[str, Any]:
    from marketlake.config import load_config

    users, events_per_user, seed = parse_shop(shop)
    log(f"shop {shop}: features")
    path = shop_features(spark, users, events_per_user, seed, cache, work)
    log(f"shop {shop}: segment")
    result = segment_shop(spark, path, work)
    settings = load_config().segment
    rows = pd.read_parquet(path, columns=["user_id", "persona", *settings.features])
    accuracy = ceiling(rows, settings.features, settings.log_features)
    separable = accuracy >= 0.95
    measured = {
        "users": users,
        "events_per_user": events_per_user,
        "seed": seed,
        "planted_k": PLANTED_K,
        **result,
        "ceiling": round(accuracy, 4),
        "separable": separable,
        "goal_met": (result["k"] == PLANTED_K and result["ari"] >= 0.9) if separable else None,
    }
    log(f"shop {shop}: {json.dumps(measured)}")
    return measured


def report(results: list[dict[str, Any]]) -> None:
    print("segment robustness: the segment job (default config) on generated shops, planted k = 5")
    print("ceiling = 5-fold accuracy of a random forest on the same features; goal where ceiling >= 0.95:")
    print("k = 5 and ARI >= 0.9")
    print()
    header = (
        f"{'users':>7} {'ev/user':>8} {'seed':>5} {'k':>3} {'ARI':>7} {'ceiling':>8} {'goal':>6} {'seg s':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        goal = {True: "met", False: "NOT", None: "n/a"}[r["goal_met"]]
        print(
            f"{r['users']:>7,} {r['events_per_user']:>8} {r['seed']:>5} {r['k']:>3} {r['ari']:>7.3f} "
            f"{r['ceiling']:>8.3f} {goal:>6} {r['segment_seconds']:>7.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shops", nargs="+", default=DEFAULT_SHOPS, help="users:events_per_user:seed ...")
    parser.add_argument("--cache", help="folder keeping each shop's feature rows (default: temporary)")
    args = parser.parse_args(argv)

    from marketlake.config import load_config
    from marketlake.java import ensure_java
    from marketlake.spark import build_session

    ensure_java()
    spark = build_session(load_config())
    work = tempfile.mkdtemp(prefix="marketlake-bench-segment-robustness-")
    cache = args.cache or os.path.join(work, "cache")
    os.makedirs(cache, exist_ok=True)
    try:
        results = [measure(spark, shop, cache, work) for shop in args.shops]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results)
    checked = [r for r in results if r["goal_met"] is not None]
    print(
        json.dumps(
            {
                "benchmark": "segment_robustness",
                "shops": len(results),
                "separable_shops": len(checked),
                "goal_met": sum(bool(r["goal_met"]) for r in checked),
                "results": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

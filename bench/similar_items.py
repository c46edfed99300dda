"""Benchmark: gold.similar_items' exact top-N (every pair, blocked) against the approximate one (pairs of
the same category, plus LSH candidates on the ALS factors across categories), on a generated catalogue, in
one run and one Spark session.

The catalogue (numpy, fixed seed): `--items` items in items/400 categories (at least 10); each category
has 6 of 60 brands, 25 words of its own and a base price; a title is a brand, one of 40 shared adjectives,
two words of its category and a word of its own (dropped: it is in one title only); 5% of the items are
inactive. 60% of the items have "ALS factors" (rank 32: their category's direction plus noise) and a
number of users (Zipf-like), so the hybrid blend is exercised as in the job.

Timed, per side, on the same cached comparison frame (content vectors from `item_content_model`, factors,
users, category), forced by a count of the ranked rows: exact (`similar_items(..., "exact")`) and the
approximate path for each `--lsh` setting of the factor LSH (bucket width / hashes per table / tables).
Recall of a setting = the share of the exact top-N that its top-N holds, averaged over the items;
tie-aware recall counts an approximate look-alike as a hit when its score reaches the exact list's N-th
score (ties make the exact list one of several).

    python bench/similar_items.py [--items 20000] [--top-n 10] [--lsh 2/4/0,2/4/10] [--seed 7]

The last line of stdout is JSON: items, exact_s, and per LSH setting its seconds, recall, tie-aware recall.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from typing import Any

import numpy as np

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from marketlake.config import ContentConfig, load_config  # noqa: E402
from marketlake.content import (  # noqa: E402
    active_items,
    comparison_frame,
    dimensions_of,
    item_content_model,
    item_vectors,
    similar_items,
)
from marketlake.spark import build_session  # noqa: E402

RUN_DATE = dt.date(2026, 12, 2)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def catalogue(spark: SparkSession, n: int, seed: int) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(items, factors, users) frames of a generated catalogue."""
    rng = np.random.default_rng(seed)
    categories = max(10, n // 400)
    category = rng.integers(0, categories, n)
    brands = rng.integers(0, 60, (categories, 6))
    brand = brands[category, rng.integers(0, 6, n)]
    adjective = rng.integers(0, 40, n)
    words = rng.integers(0, 25, (n, 2))
    base = rng.lognormal(3.0, 1.0, categories)
    price = np.round(base[category] * rng.lognormal(0.0, 0.4, n), 2)
    active = rng.random(n) >= 0.05
    ids = [f"i{i:06d}" for i in range(n)]
    titles = [
        f"brand{brand[i]} adj{adjective[i]} c{category[i]}w{words[i, 0]} c{category[i]}w{words[i, 1]} u{i}"
        for i in range(n)
    ]
    items = spark.createDataFrame(
        [
            (ids[i], f"cat{category[i]}", f"brand{brand[i]}", float(price[i]), titles[i], bool(active[i]))
            for i in range(n)
        ],
        "item_id string, category string, brand string, price double, title string, active boolean",
    )
    centres = rng.normal(0, 1, (categories, 32))
    warm = rng.random(n) < 0.6
    factors = centres[category] + rng.normal(0, 1.0, (n, 32))
    factor_rows = [(ids[i], [float(v) for v in factors[i]]) for i in range(n) if warm[i]]
    users = rng.zipf(1.6, n).clip(1, 5000)
    return (
        items,
        spark.createDataFrame(factor_rows, "item_id string, factors array<double>"),
        spark.createDataFrame(
            [(ids[i], int(users[i])) for i in range(n) if warm[i]], "item_id string, users bigint"
        ),
    )


def timed_rows(
    frame: DataFrame, settings: ContentConfig, method: str, items: int, dims: int
) -> tuple[float, DataFrame]:
    started = time.perf_counter()
    rows = similar_items(frame, settings, "bench", RUN_DATE, method, items, dims).persist()
    rows.count()
    return time.perf_counter() - started, rows


def recall(exact: DataFrame, approx: DataFrame, n: int) -> tuple[float, float]:
    """(plain recall, tie-aware recall) of approx against exact, averaged over the items of exact."""
    last = exact.groupBy("item_id").agg(F.min("score").alias("_nth"), F.count("*").alias("_k"))
    hits = exact.select("item_id", "similar_item_id").join(
        approx.select("item_id", "similar_item_id"), ["item_id", "similar_item_id"]
    )
    plain = hits.groupBy("item_id").count().withColumnRenamed("count", "_hits")
    tie = (
        approx.join(last, "item_id")
        .filter(F.col("score") >= F.col("_nth") - 1e-6)
        .groupBy("item_id")
        .count()
        .withColumnRenamed("count", "_tie_hits")
    )
    joined = last.join(plain, "item_id", "left").join(tie, "item_id", "left").fillna(0)
    row = joined.agg(
        F.avg(F.col("_hits") / F.col("_k")).alias("plain"),
        F.avg(F.least(F.col("_tie_hits"), F.col("_k")) / F.col("_k")).alias("tie"),
    ).first()
    assert row is not None
    return float(row["plain"]), float(row["tie"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--top-n", type=int, default=10)
    parser.add_argument("--lsh", default="2/4/0", help="bucket_width/hashes_per_table/hash_tables,...")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    config = load_config(
        None, {"MARKETLAKE_MASTER": "local[2]", "MARKETLAKE__SPARK__SHUFFLE_PARTITIONS": "8"}
    )
    spark = build_session(config)
    settings = config.recommend.content.model_copy(update={"top_n": args.top_n})
    items, factors, users = catalogue(spark, args.items, args.seed)
    started = time.perf_counter()
    model = item_content_model(items, settings)
    frame = comparison_frame(item_vectors(model, active_items(items)), factors, users, items).persist()
    count, dims = frame.count(), dimensions_of(frame)
    log(
        f"similar_items | {count} active items, {dims} dimensions, features {time.perf_counter() - started:.1f}s"
    )
    exact_s, exact = timed_rows(frame, settings, "exact", count, dims)
    log(f"similar_items | exact {exact_s:.1f}s, {exact.count()} rows")
    result: dict[str, Any] = {
        "items": count,
        "dimensions": dims,
        "top_n": args.top_n,
        "exact_s": round(exact_s, 1),
    }
    for spec in args.lsh.split(","):
        width, per_table, tables = spec.split("/")
        lsh_settings = settings.model_copy(
            update={
                "lsh_bucket_width": float(width),
                "lsh_hashes_per_table": int(per_table),
                "lsh_hash_tables": int(tables),
            }
        )
        lsh_s, approx = timed_rows(frame, lsh_settings, "lsh", count, dims)
        plain, tie = recall(exact, approx, args.top_n)
        log(f"similar_items | lsh {spec}: {lsh_s:.1f}s, recall@{args.top_n} {plain:.3f}, tie-aware {tie:.3f}")
        result[f"lsh_{spec}"] = {
            "seconds": round(lsh_s, 1),
            "recall": round(plain, 3),
            "tie_aware_recall": round(tie, 3),
        }
        approx.unpersist()
    print(json.dumps(result))
    spark.stop()


if __name__ == "__main__":
    main()

"""Benchmark: next-item quality of the sessions job's model on MovieLens 100k, against popularity,
co-occurrence, sequential rules from the last item and session-kNN, all measured in the same run.

Protocol: each user's ratings, ordered by time (then movie id), split into sessions where more than
`--gap-minutes` (30) pass; sessions of one rating are dropped; the last `--test-fraction` (10%) of
sessions by start time are the test part, the rest train every model. For every test session and every
prefix of it (its first k ratings, k = 1..n-1) each method ranks 20 movies, without the prefix's own
movies (a user rates a movie once), topped up from the 220 most popular training movies where it has
fewer than 20; the next rating's movie is the target. HR@20: the share of prefixes whose target is listed;
MRR@20: the mean of 1 / its rank (0 when not listed).

Methods:

- popularity: movies by the number of training sessions holding them;
- co-occurrence: the last movie's neighbours within 10 steps in either order, by count;
- sequential rules (SR): the last movie's rules (1 / distance, within 10 steps), Ludewig et al. 2021;
- session-kNN (SKNN): the 100 training sessions most similar to the prefix (binary cosine), each movie
  scored by the summed similarity of the neighbours holding it;
- marketlake (what the job ships): gold.next_items as the sessions job builds it from the training
  sessions (`sequential_rules`, then `next_items`: normalised per movie, the top `top_n`
  of the config's `sessions` section) and scored as the real-time list scores a live session
  (`session_candidates`: every movie of the prefix, weighted 1 / (1 + recency)).

    python bench/session_movielens.py [--data PATH] [--config conf/X.yaml] [--test-fraction 0.1]

The last line of stdout is JSON for marketlake's method (`hr@20`, `mrr@20`) with the baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "movielens-100k", "u.data")
K = 20
NEIGHBOURS = 100
WINDOW = 10
# The top-up list holds this many popular movies beyond K, for prefixes that have seen some of them.
TOP_UP_SEEN = 200


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ratings_as_events(spark, path: str):
    from pyspark.sql import functions as F

    raw = spark.read.csv(path, sep="\t", schema="user long, item long, rating double, unix_ts long")
    ts = F.timestamp_seconds("unix_ts")
    return raw.select(
        F.col("user").cast("string").alias("user_id"),
        F.col("item").cast("string").alias("item_id"),
        F.lit("rating").alias("event_type"),
        ts.alias("event_ts"),
        F.to_date(ts).alias("event_date"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="MovieLens 100k u.data")
    parser.add_argument("--config", help="YAML merged over the default config (its sessions section is used)")
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--gap-minutes", type=float, default=30.0)
    parser.add_argument(
        "--skip-sknn",
        action="store_true",
        help="leave session-kNN out (the slowest baseline, about 15 min under load)",
    )
    args = parser.parse_args(argv)

    from marketlake.config import load_config
    from marketlake.spark import build_session

    config = load_config(args.config)
    spark = build_session(config)
    spark.sparkContext.setLogLevel("ERROR")
    started = time.perf_counter()
    results = run(spark, args, config.sessions)
    seconds = time.perf_counter() - started
    base_hr, base_mrr = results["sequential rules (last item)"]
    hr, mrr = results["marketlake"]
    print(f"\n{'method':<30} {'HR@20':>7} {'MRR@20':>7}")
    for name, (h, m) in results.items():
        print(f"{name:<30} {h:7.3f} {m:7.3f}")
    print(
        f"\nmarketlake / sequential rules: HR@20 x{hr / base_hr:.2f}, MRR@20 x{mrr / base_mrr:.2f}; "
        f"{seconds:.0f} s, load {os.getloadavg()[0]:.1f}"
    )
    print(
        json.dumps(
            {
                "hr@20": round(hr, 4),
                "mrr@20": round(mrr, 4),
                "baselines": {name: [round(h, 4), round(m, 4)] for name, (h, m) in results.items()},
                "test_fraction": args.test_fraction,
                "seconds": round(seconds, 1),
            }
        )
    )
    return 0


def run(spark, args, settings) -> dict[str, tuple[float, float]]:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from marketlake.sessions import SESSION, next_items, sequential_rules, session_candidates, session_steps

    steps = (
        ratings_as_events(spark, args.data)
        .transform(session_steps(None, args.gap_minutes))
        .withColumn("length", F.count("*").over(Window.partitionBy(SESSION)))
        .filter(F.col("length") >= 2)
        .withColumn("start", F.min("event_ts").over(Window.partitionBy(SESSION)))
        .persist()
    )
    starts = steps.select(SESSION, "start").distinct()
    n_sessions = starts.count()
    n_test = round(n_sessions * args.test_fraction)
    order = Window.orderBy(F.desc("start"), F.desc(SESSION))
    test_keys = (
        starts.withColumn("_n", F.row_number().over(order)).filter(F.col("_n") <= n_test).select(SESSION)
    )
    train = (
        steps.join(test_keys, SESSION, "left_anti").select(SESSION, "user_id", "step", "item_id").persist()
    )
    test = steps.join(test_keys, SESSION).select(SESSION, "user_id", "step", "item_id", "length")
    # One row per (test session, prefix length k) and step of the prefix; the target is step k + 1.
    prefix_key = F.concat(F.col(SESSION), F.lit("@"), F.col("k").cast("string"))
    cut = (
        test.select(SESSION, "length")
        .distinct()
        .select(SESSION, F.explode(F.sequence(F.lit(1), F.col("length") - 1)).alias("k"))
    )
    prefixes = (
        test.join(cut, SESSION)
        .filter(F.col("step") <= F.col("k"))
        .select(prefix_key.alias("prefix"), "step", "item_id")
        .persist()
    )
    targets = (
        test.join(cut, SESSION)
        .filter(F.col("step") == F.col("k") + 1)
        .select(prefix_key.alias("prefix"), F.col("item_id").alias("target"))
        .persist()
    )
    n_prefixes = targets.count()
    log(f"{n_sessions:,} sessions, {n_test:,} for test, {n_prefixes:,} next-item predictions")

    popular = (
        train.select(SESSION, "item_id")
        .distinct()
        .groupBy("item_id")
        .agg(F.count("*").alias("score"))
        .orderBy(F.desc("score"), "item_id")
        .limit(K + TOP_UP_SEEN)
        # Below any method's score (all are positive): a top-up only.
        .withColumn("score", F.col("score") / F.lit(1e9) - 1)
    )

    def evaluate(candidates) -> tuple[float, float]:
        """candidates (prefix, item_id, score): the ranked lists topped up with popular movies, the prefix's
        own movies left out, scored against the targets."""
        topped = candidates.unionByName(prefixes.select("prefix").distinct().crossJoin(popular))
        best = topped.groupBy("prefix", "item_id").agg(F.max("score").alias("score"))
        seen = prefixes.select("prefix", "item_id")
        ranked = (
            best.join(seen, ["prefix", "item_id"], "left_anti")
            .withColumn(
                "rank", F.row_number().over(Window.partitionBy("prefix").orderBy(F.desc("score"), "item_id"))
            )
            .filter(F.col("rank") <= K)
        )
        hits = targets.join(ranked, (targets.prefix == ranked.prefix) & (F.col("target") == F.col("item_id")))
        row = hits.agg(F.count("*").alias("hits"), F.sum(1.0 / F.col("rank")).alias("rr")).first()
        return row["hits"] / n_prefixes, (row["rr"] or 0.0) / n_prefixes

    def last_step(frame):
        last = F.max("step").over(Window.partitionBy("prefix"))
        return frame.withColumn("_last", last).filter(F.col("step") == F.col("_last")).drop("_last")

    results: dict[str, tuple[float, float]] = {}
    # As the sessions job builds gold.next_items from session steps.
    model = train.transform(sequential_rules(settings.steps)).transform(
        next_items(settings.top_n, settings.min_sessions)
    )
    shipped = prefixes.withColumnRenamed("prefix", SESSION).transform(session_candidates(model))
    shipped_result = evaluate(shipped.withColumnRenamed(SESSION, "prefix"))
    log(f"marketlake {shipped_result}")
    results["popularity"] = evaluate(spark.createDataFrame([], "prefix string, item_id string, score double"))
    log(f"popularity {results['popularity']}")

    rules = train.transform(sequential_rules(WINDOW)).persist()
    reverse = rules.select(
        F.col("next_item_id").alias("item_id"), F.col("item_id").alias("next_item_id"), "sessions"
    )
    co = (
        rules.select("item_id", "next_item_id", "sessions")
        .unionByName(reverse)
        .groupBy("item_id", "next_item_id")
        .agg(F.sum("sessions").alias("score"))
    )
    results["co-occurrence (last item)"] = evaluate(_from_item(last_step(prefixes), co))
    log(f"co-occurrence {results['co-occurrence (last item)']}")
    results["sequential rules (last item)"] = evaluate(
        _from_item(last_step(prefixes), rules.withColumnRenamed("weight", "score"))
    )
    log(f"SR {results['sequential rules (last item)']}")
    if not args.skip_sknn:
        results["session-kNN"] = evaluate(_sknn(prefixes, train))
        log(f"SKNN {results['session-kNN']}")

    results["marketlake"] = shipped_result
    return results


def _from_item(last, scores):
    """The candidates of each prefix's last movie, by the scores (item_id, next_item_id, score)."""
    from pyspark.sql import functions as F

    return last.join(scores, "item_id").select("prefix", F.col("next_item_id").alias("item_id"), "score")


def _sknn(prefixes, train):
    """Session-kNN: the NEIGHBOURS training sessions most similar to each prefix (binary cosine)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from marketlake.sessions import SESSION

    items = train.select(SESSION, "item_id").distinct()
    sizes = items.groupBy(SESSION).agg(F.count("*").alias("n_size"))
    prefix_items = prefixes.select("prefix", "item_id").distinct()
    prefix_sizes = prefix_items.groupBy("prefix").agg(F.count("*").alias("p_size"))
    overlap = prefix_items.join(items, "item_id").groupBy("prefix", SESSION).agg(F.count("*").alias("common"))
    similar = (
        overlap.join(sizes, SESSION)
        .join(prefix_sizes, "prefix")
        .withColumn("similarity", F.col("common") / F.sqrt(F.col("n_size") * F.col("p_size")))
        .withColumn(
            "_n", F.row_number().over(Window.partitionBy("prefix").orderBy(F.desc("similarity"), SESSION))
        )
        .filter(F.col("_n") <= NEIGHBOURS)
    )
    return similar.join(items, SESSION).groupBy("prefix", "item_id").agg(F.sum("similarity").alias("score"))


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: recommending movies nobody has rated yet (item cold start) on MovieLens 100k, with
marketlake.coldstart (the recommend job's code).

Cold part, per seed (0-4 by default): 20% of the movies (a seeded draw) are held out entirely; ALS and the
cold model see only the ratings of the other 80%. A rating >= 4 is a positive. Figures over the held-out
movies, averaged over users:
- AUC over rated pairs (the LightFM paper's protocol): per user with a positive and a negative among the
  held-out movies they rated, the share of (positive, negative) pairs the score orders right (ties 1/2);
- P@10 and nDCG@10 (binary, ideal DCG over min(10, positives)) of the user's ranking of all held-out
  movies, per user with a positive among them.
Interactions read the rating as strength (the job with `rating_value: true`: strength = log1p(rating)), so
the user content profile and the appeal prior can tell "liked" from "watched"; ALS uses the config's
untuned parameters (rank, reg_param, alpha, max_iter). The blend is fitted on a validation split of the
training movies, never on the held-out ones.

Warm part: the usual split of bench/recommend_movielens.py (each user's ratings 75/25 at random, seed 42,
every rated test item relevant, weight-1 ratings as the default config makes them), today's ALS (tuned
by marketlake.recommend.tune on the training part) against the same ALS with the cold merge: movies with no
rating in the training part are the cold items, at most `recommend.cold_start.max_per_list` per list.

Baselines printed: random scores; popularity among cold items is undefined (none has a rating); the user
content profile alone. Items: ../shared/data/movielens-100k/items.tsv as the movielens_items mapping shapes
it (title "Toy Story (1995) | Animation Children's Comedy", the first genre the category), plus tags (every
genre, the year's bucket); content vectors from the job's pipeline (marketlake.content, config
recommend.content).

    python bench/cold_start_movielens.py [--seeds 0 1 2 3 4] [--config conf/X.yaml] [--tuning-budget S]

The last line of stdout is JSON: cold_auc, cold_ndcg@10, cold_p@10 (means over the seeds), warm_ndcg@10,
warm_ndcg@10_als.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import numpy as np
from recommend_movielens import ratings_as_events  # bench/ is on sys.path when a bench runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "movielens-100k")
K = 10
COLD_FRACTION = 0.2
POSITIVE = 4.0
YEAR_EDGES = (1940, 1960, 1970, 1980, 1990, 1994, 1995, 1996, 1997)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_items(spark, path: str):
    """items.tsv -> silver.items-shaped frame as the movielens_items mapping makes it (title "Toy Story
    (1995) | Animation Children's Comedy", category the first genre, no brand or price), plus tags: every
    genre and the year's bucket."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            item_id, title, year, genres = (line.rstrip("\n").split("\t") + ["", "", ""])[:4]
            bucket = sum(int(year) >= edge for edge in YEAR_EDGES) if year.isdigit() else -1
            names = genres.split()
            full = f"{title} ({year}) | {' '.join(names)}"
            tags = [f"genre:{g.lower()}" for g in names] + [f"year{bucket}"]
            rows.append((item_id, full, names[0] if names else None, None, None, tags))
    return spark.createDataFrame(
        rows,
        "item_id string, title string, category string, brand string, price double, tags array<string>",
    )


def per_user_metrics(users, items, scores, ratings) -> dict[str, float]:
    """AUC over rated pairs, P@K and nDCG@K; scores: user x item matrix, ratings: same shape (0: unrated)."""
    aucs, ndcgs, precisions = [], [], []
    discount = 1 / np.log2(np.arange(2, K + 2))
    for u in range(len(users)):
        s, r = scores[u], ratings[u]
        positive, negative = s[r >= POSITIVE], s[(r > 0) & (r < POSITIVE)]
        if len(positive) and len(negative):
            d = positive[:, None] - negative[None, :]
            aucs.append(float(((d > 0) + 0.5 * (d == 0)).mean()))
        relevant = r >= POSITIVE
        if relevant.any():
            top = np.lexsort((items, -s))[:K]  # score descending, ties by item id
            hits = relevant[top]
            ideal = discount[: min(K, int(relevant.sum()))].sum()
            ndcgs.append(float((hits * discount[: len(hits)]).sum() / ideal))
            precisions.append(float(hits.sum() / K))
    return {"auc": float(np.mean(aucs)), "ndcg": float(np.mean(ndcgs)), "p": float(np.mean(precisions))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DATA, help="folder with u.data and items.tsv")
    parser.add_argument("--config", help="YAML merged over the default config (its recommend section)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--tuning-budget", type=float, help="seconds for today's ALS search (default: config)"
    )
    parser.add_argument("--no-warm", action="store_true", help="skip the warm part")
    args = parser.parse_args(argv)
    for name in ("u.data", "items.tsv"):
        if not os.path.isfile(os.path.join(args.data, name)):
            print(f"cold_start_movielens: no such file: {os.path.join(args.data, name)}", file=sys.stderr)
            return 2

    from marketlake.config import load_config
    from marketlake.java import ensure_java
    from marketlake.recommend import checkpoints
    from marketlake.spark import build_session

    config = load_config(args.config)
    settings = config.recommend.model_copy(update={"half_life_days": None, "lookback_days": None})
    if args.tuning_budget:
        settings = settings.model_copy(update={"tuning_budget_seconds": args.tuning_budget})
    ensure_java()
    spark = build_session(config)
    spark.sparkContext.setLogLevel("ERROR")
    with tempfile.TemporaryDirectory(prefix="cold-bench-") as scratch, checkpoints(spark, f"{scratch}/cp"):
        return run(spark, args, settings, config.recommend.content)


def run(spark, args, settings, content) -> int:
    from pyspark.sql import functions as F

    from marketlake.content import item_content_model, item_vectors
    from marketlake.recommend import interactions, window_events

    started = time.perf_counter()
    events = ratings_as_events(spark, os.path.join(args.data, "u.data")).persist()
    run_date = events.agg(F.max("event_date")).first()[0]
    items = read_items(spark, os.path.join(args.data, "items.tsv"))
    vectors = item_vectors(item_content_model(items, content), items).persist()
    dims = vectors.first()["features"].size
    rated = settings.model_copy(update={"rating_value": True})
    pairs = (
        events.transform(window_events(None, run_date))
        .transform(interactions(rated, run_date))
        .join(events.select("user_id", "item_id", "rating"), ["user_id", "item_id"])
        .persist()
    )
    log(f"MovieLens: {pairs.count():,} ratings, {vectors.count():,} movies, content vectors of {dims} dims")
    blocks = settings.blocks or spark.sparkContext.defaultParallelism
    item_ids = sorted(r["item_id"] for r in items.select("item_id").collect())
    per_seed = {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        per_seed[seed] = cold_seed(spark, pairs, vectors, item_ids, settings, blocks, seed)
        log(f"seed {seed}: {time.perf_counter() - t0:.0f} s " + json.dumps(per_seed[seed]))
    warm = None if args.no_warm else warm_part(spark, events, vectors, settings, blocks, run_date)
    report(per_seed, warm, settings, dims, time.perf_counter() - started)
    mean = {
        name: float(np.mean([per_seed[s]["blend"][name] for s in per_seed])) for name in ("auc", "ndcg", "p")
    }
    result = {
        "cold_auc": round(mean["auc"], 4),
        "cold_ndcg@10": round(mean["ndcg"], 4),
        "cold_p@10": round(mean["p"], 4),
        "warm_ndcg@10": round(warm["hybrid"], 4) if warm else None,
        "warm_ndcg@10_als": round(warm["als"], 4) if warm else None,
    }
    print(json.dumps(result))
    return 0


def cold_seed(spark, pairs, vectors, item_ids, settings, blocks, seed) -> dict:
    from pyspark.sql import functions as F

    from marketlake.coldstart import cold_scores, fit_cold_model, full_regression
    from marketlake.recommend import ITEM, ITEM_INDEX, USER, USER_INDEX, default_params, dense_index, fit

    cold_ids = sorted(random.Random(seed).sample(item_ids, int(len(item_ids) * COLD_FRACTION)))
    cold = spark.createDataFrame([(i,) for i in cold_ids], "item_id string")
    warm_pairs = pairs.join(F.broadcast(cold), ITEM, "left_anti").persist()
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    users = dense_index(warm_pairs, USER, USER_INDEX, partitions).persist()
    items = dense_index(warm_pairs, ITEM, ITEM_INDEX, partitions).persist()
    params = default_params(settings)

    def fit_factors(indexed):
        return fit(indexed, params, settings.seed, blocks)

    indexed = warm_pairs.join(users, USER).join(items, ITEM).select(USER_INDEX, ITEM_INDEX, "strength")
    model = fit_factors(indexed)
    cold_model = fit_cold_model(
        spark, warm_pairs, vectors, users, items, fit_factors, settings.cold_start, seed
    )
    regression = full_regression(warm_pairs, vectors, model, users, items, settings.cold_start)
    scores = cold_scores(
        spark, cold_model.blend, regression, warm_pairs, vectors, model, users, items, cold
    ).toPandas()
    ratings = pairs.join(F.broadcast(cold), ITEM, "left_semi").select(USER, ITEM, "rating").toPandas()
    user_ids = sorted(scores[USER].unique())
    item_order = sorted(scores[ITEM].unique())
    ui = {u: n for n, u in enumerate(user_ids)}
    ii = {i: n for n, i in enumerate(item_order)}
    shape = (len(user_ids), len(item_order))
    matrix = {}
    for column in ("score", "profile", "als_score", "popularity", "appeal"):
        m = np.zeros(shape)
        m[scores[USER].map(ui), scores[ITEM].map(ii)] = scores[column].to_numpy()
        matrix[column] = m
    truth = np.zeros(shape)
    known = ratings[ratings[USER].isin(ui) & ratings[ITEM].isin(ii)]
    truth[known[USER].map(ui), known[ITEM].map(ii)] = known["rating"].to_numpy()
    order = np.array([int(i) for i in item_order])
    if os.environ.get("COLD_BENCH_DUMP"):  # the score matrices, for looking into what limits the blend
        np.savez(f"{os.environ['COLD_BENCH_DUMP']}/seed{seed}.npz", truth=truth, items=order, **matrix)
    out = {
        "blend": per_user_metrics(user_ids, order, matrix["score"], truth),
        "random": per_user_metrics(user_ids, order, np.random.default_rng(seed).random(shape), truth),
        "profile": per_user_metrics(user_ids, order, matrix["profile"], truth),
        "als_score": per_user_metrics(user_ids, order, matrix["als_score"], truth),
        "popularity_prior": per_user_metrics(user_ids, order, matrix["popularity"], truth),
        "blend_weights": {
            "interacts": [*cold_model.blend.interacts.coefficients, cold_model.blend.interacts.intercept],
            "engages": [*cold_model.blend.engages.coefficients, cold_model.blend.engages.intercept],
        },
    }
    for frame in (warm_pairs, users, items):
        frame.unpersist()
    return out


def warm_part(spark, events, vectors, settings, blocks, run_date) -> dict:
    from pyspark.sql import functions as F

    from marketlake.coldstart import cold_scores, fit_cold_model, full_regression, merge_cold
    from marketlake.recommend import (
        ITEM,
        ITEM_INDEX,
        USER,
        USER_INDEX,
        als_top,
        dense_index,
        evaluate,
        fit,
        interactions,
        split_random,
        to_indexes,
        tune,
        window_events,
    )

    pairs = events.transform(window_events(None, run_date)).transform(interactions(settings, run_date))
    split = split_random(pairs, 0.25, 42)
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    users = dense_index(pairs, USER, USER_INDEX, partitions).persist()
    items = dense_index(pairs, ITEM, ITEM_INDEX, partitions).persist()
    train = to_indexes(split.train, users, items).persist()
    test = to_indexes(split.test, users, items).select(USER_INDEX, ITEM_INDEX).persist()
    catalogue = train.select(ITEM_INDEX).distinct().count()
    t0 = time.perf_counter()
    tuned = tune(train, settings, blocks)
    log(f"warm: tuned in {time.perf_counter() - t0:.0f} s: {tuned.chosen.describe()}")
    model = fit(train, tuned.chosen, settings.seed, blocks)
    top = als_top(model, K, exclude=train).persist()
    als = evaluate("als", top, test, K, catalogue)

    train_pairs = split.train.persist()
    cold = vectors.select(ITEM).join(train_pairs.select(ITEM).distinct(), ITEM, "left_anti").persist()
    cold_count = cold.count()
    cold_model = fit_cold_model(
        spark,
        train_pairs,
        vectors,
        users,
        items,
        lambda indexed: fit(indexed, tuned.chosen, settings.seed, blocks),
        settings.cold_start,
        settings.seed,
    )
    regression = full_regression(train_pairs, vectors, model, users, items, settings.cold_start)
    scores = cold_scores(spark, cold_model.blend, regression, train_pairs, vectors, model, users, items, cold)
    rows = (
        top.join(users, USER_INDEX)
        .join(items, ITEM_INDEX)
        .select(
            USER,
            F.col("rank").cast("int").alias("rank"),
            ITEM,
            "score",
            F.lit("als").alias("source"),
            F.lit("bench").alias("model_version"),
            F.lit(run_date).alias("as_of_date"),
        )
    )
    merged = merge_cold(
        rows, scores, train_pairs.select(USER, ITEM), settings.cold_start.max_per_list, K
    ).persist()
    entered = merged.filter(F.col("source") == "content")
    lists_with_cold = entered.select(USER).distinct().count()
    hybrid = evaluate("hybrid", to_indexes(merged, users, items), test, K, catalogue)
    return {
        "als": als.metrics["ndcg"],
        "hybrid": hybrid.metrics["ndcg"],
        "users": als.users,
        "cold_items": cold_count,
        "cold_rows": entered.count(),
        "lists_with_cold": lists_with_cold,
        "lists": merged.select(USER).distinct().count(),
        "chosen": tuned.chosen.describe(),
    }


def report(per_seed: dict, warm: dict | None, settings, dims: int, seconds: float) -> None:
    print(
        f"MovieLens 100k item cold start: {COLD_FRACTION:.0%} of movies held out, rating >= {POSITIVE:.0f} positive, "
        f"content vectors of {dims} dims, {len(per_seed)} seeds, {seconds:.0f} s"
    )
    header = f"{'seed':>4} {'method':<22} {'AUC':>6} {'P@10':>6} {'nDCG@10':>8}"
    print(header)
    print("-" * len(header))
    methods = ("random", "profile", "popularity_prior", "als_score", "blend")
    for seed, result in per_seed.items():
        for method in methods:
            m = result[method]
            print(f"{seed:>4} {method:<22} {m['auc']:>6.3f} {m['p']:>6.3f} {m['ndcg']:>8.3f}")
        print(f"     blend weights (a, b, intercept): {json.dumps(result['blend_weights'])}")
    print("mean over seeds (popularity among cold items: none, no cold item has a rating):")
    mean = {}
    for method in methods:
        mean[method] = {
            k: float(np.mean([r[method][k] for r in per_seed.values()])) for k in ("auc", "p", "ndcg")
        }
        m = mean[method]
        print(f"{'mean':>4} {method:<22} {m['auc']:>6.3f} {m['p']:>6.3f} {m['ndcg']:>8.3f}")
    blend = mean["blend"]
    for base in ("random", "profile"):
        b = mean[base]
        print(
            f"blend / {base}: nDCG@10 x{blend['ndcg'] / b['ndcg']:.2f}, P@10 x{blend['p'] / b['p']:.2f}, AUC {blend['auc'] - b['auc']:+.3f}"
        )
    if warm:
        print(
            f"warm (75/25 split, {warm['users']} users; ALS {warm['chosen']}): today's ALS nDCG@10 {warm['als']:.4f}, "
            f"with the cold merge {warm['hybrid']:.4f} ({warm['hybrid'] / warm['als'] - 1:+.2%}); "
            f"{warm['cold_items']} cold items, {warm['cold_rows']} cold rows in {warm['lists_with_cold']} of {warm['lists']} lists"
        )


if __name__ == "__main__":
    sys.exit(main())

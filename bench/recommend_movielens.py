"""Benchmark: recommendation quality on MovieLens 100k with the published protocol (Microsoft Recommenders'
benchmark table, quoted in ../shared/data/README.md): each user's ratings split 75/25 at random with a
fixed seed, top 10 per user, items the user rated in the training part excluded, every rated test item
relevant. Three models on the same split, in one run:

- Spark ALS on explicit ratings (rank 10, regParam 0.05, 15 iterations, as in that benchmark): a check of
  the protocol, which should land near the published nDCG@10 of 0.040;
- popularity: the items most users rated in the training part (the baseline for the ratio);
- marketlake: implicit ALS tuned by `marketlake.recommend.tune` with the config's `recommend` section
  (its search space, the job's budget for the training part's interactions (`tuning_budget`), and its
  validation split, on the training part only), refitted on the whole
  training part; the test part is used once, for the table.

Interactions come from the ratings the way the recommend job makes them from events: a rating is an event of
type `rating` with the config's weight (its value ignored unless `rating_value` is set) and strength =
log1p of the weight. Time decay is off here (`--half-life` sets it): MovieLens has no run date, and the
protocol's split is random in time.

    python bench/recommend_movielens.py [--data PATH] [--config conf/X.yaml] [--half-life DAYS] [--seed 42]

Metrics are those of `marketlake.recommend` (Spark's RankingEvaluator, the standard definitions: MAP@10
divides by min(10, relevant items); the published table's MAP column used the older division by all
relevant items, so it is not comparable). train_s is the final fit on the training part; recommend_s is
scoring the top 10 of every user (Spark's blocked recommendForAllUsers, exclusions, ranking); tune_s is
the search. The last line of stdout is JSON for marketlake's model.

The header names the BLAS Spark ML loaded: VectorBLAS (Java) by default, JNIBLAS when a native
libblas.so.3 is found (`apt-get install libopenblas0`, or `LD_LIBRARY_PATH` pointing at an unpacked
copy). The figures are the same either way; only the seconds change. ALS checkpoints into a temporary
folder (many iterations need it; see `marketlake.recommend.checkpoints`).

    make bench BENCH=recommend_movielens
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "movielens-100k", "u.data")
K = 10
TEST_FRACTION = 0.25
PUBLISHED = {  # ../shared/data/README.md (Microsoft Recommenders' benchmark; MAP by its older definition)
    "Spark ALS explicit (published)": (0.0399, 0.0438, 0.0146, 0.0042),
    "NCF on GPU (published)": (0.3961, 0.3473, 0.1808, 0.1077),
}


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
        "rating",
    )


def timed(action):
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="MovieLens u.data (default: ../shared/data/movielens-100k/u.data)",
    )
    parser.add_argument(
        "--config", help="YAML merged over the default config (its recommend section is used)"
    )
    parser.add_argument("--half-life", type=float, help="time decay in days (default: none, see above)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the 75/25 split (default 42)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.data):
        print(f"recommend_movielens: no such file: {args.data}", file=sys.stderr)
        return 2

    from marketlake.config import load_config
    from marketlake.java import ensure_java
    from marketlake.recommend import checkpoints
    from marketlake.spark import build_session

    config = load_config(args.config)
    settings = config.recommend.model_copy(update={"half_life_days": args.half_life, "lookback_days": None})
    ensure_java()
    spark = build_session(config)
    spark.sparkContext.setLogLevel("ERROR")
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    blocks = settings.blocks or spark.sparkContext.defaultParallelism

    with (
        tempfile.TemporaryDirectory(prefix="recommend-bench-") as scratch,
        checkpoints(spark, f"{scratch}/checkpoints"),
    ):
        return run(spark, args, settings, partitions, blocks)


def run(spark, args, settings, partitions: int, blocks: int) -> int:
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

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
        item_popularity,
        popular_top,
        split_random,
        to_indexes,
        tune,
        tuning_budget,
        window_events,
    )

    events = ratings_as_events(spark, args.data)
    run_date = events.agg(F.max("event_date")).first()[0]
    pairs = events.transform(window_events(None, run_date)).transform(interactions(settings, run_date))
    pairs = pairs.join(events.select(USER, ITEM, "rating"), [USER, ITEM])  # the explicit model's rating
    split = split_random(pairs, TEST_FRACTION, args.seed)
    # Numbered over all pairs, so that test items never rated in training stay relevant (and unreachable).
    users = dense_index(pairs, USER, USER_INDEX, partitions).persist()
    items = dense_index(pairs, ITEM, ITEM_INDEX, partitions).persist()
    train = to_indexes(split.train, users, items).persist()
    test = to_indexes(split.test, users, items).select(USER_INDEX, ITEM_INDEX).persist()
    catalogue = train.select(ITEM_INDEX).distinct().count()
    log(
        f"MovieLens: {pairs.count():,} ratings, {users.count():,} users, {items.count():,} items; "
        f"train {train.count():,}, test {test.count():,}; run date {run_date}"
    )
    rows = {}

    explicit = ALS(
        userCol=USER_INDEX,
        itemCol=ITEM_INDEX,
        ratingCol="rating",
        rank=10,
        regParam=0.05,
        maxIter=15,
        seed=settings.seed,
        coldStartStrategy="drop",
        numUserBlocks=blocks,
        numItemBlocks=blocks,
    )
    model, train_s = timed(lambda: explicit.fit(train))
    top, recommend_s = timed(lambda: _materialise(als_top(model, K, exclude=train)))
    rows["Spark ALS explicit"] = (evaluate("als-explicit", top, test, K, catalogue), train_s, recommend_s)
    top.unpersist()

    def popularity():
        return _materialise(
            popular_top(
                item_popularity(train, ITEM_INDEX, USER_INDEX), train.select(USER_INDEX), K, exclude=train
            )
        )

    top, recommend_s = timed(popularity)
    rows["popularity"] = (evaluate("popularity", top, test, K, catalogue), 0.0, recommend_s)
    top.unpersist()

    # The job's budget for this many interactions (it scales with the data).
    budget = tuning_budget(settings, train.count())
    settings = settings.model_copy(update={"tuning_budget_seconds": budget})
    log(f"tuning: up to {settings.tuning_max_trials} trials within {budget:.0f} s")
    tuned, tune_s = timed(lambda: tune(train, settings, blocks))
    model, train_s = timed(lambda: fit(train, tuned.chosen, settings.seed, blocks))
    top, recommend_s = timed(lambda: _materialise(als_top(model, K, exclude=train)))
    ours = evaluate("als", top, test, K, catalogue)
    rows["marketlake implicit ALS (tuned)"] = (ours, train_s, recommend_s)

    report(rows, tuned, tune_s, settings, blocks, blas(spark))
    m = ours.metrics
    print(
        json.dumps(
            {
                "ndcg@10": round(m["ndcg"], 4),
                "precision@10": round(m["precision"], 4),
                "recall@10": round(m["recall"], 4),
                "map@10": round(m["map"], 4),
                "train_s": round(train_s, 1),
                "recommend_s": round(recommend_s, 1),
            }
        )
    )
    return 0


def _materialise(frame):
    frame = frame.persist()
    frame.count()
    return frame


def blas(spark) -> str:
    """The BLAS Spark ML uses: JNIBLAS when a native library (libblas.so.3, for example OpenBLAS) loads,
    else VectorBLAS or JavaBLAS (pure Java)."""
    try:
        return spark._jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName()
    except Exception:  # Spark Connect, or another Spark layout
        return "unknown"


def report(rows: dict, tuned, tune_s: float, settings, blocks: int, blas_name: str) -> None:
    popularity_ndcg = rows["popularity"][0].metrics["ndcg"]
    print(
        f"MovieLens 100k, per-user random 75/25 split, top {K}, training items excluded; ALS blocks {blocks}, BLAS {blas_name}"
    )
    header = f"{'model':<34} {'nDCG@10':>8} {'P@10':>7} {'R@10':>7} {'MAP@10':>7} {'cover':>6} {'users':>6} {'train_s':>8} {'recommend_s':>12} {'nDCG/pop':>9}"
    print(header)
    print("-" * len(header))
    for name, (result, train_s, recommend_s) in rows.items():
        m = result.metrics
        print(
            f"{name:<34} {m['ndcg']:>8.4f} {m['precision']:>7.4f} {m['recall']:>7.4f} {m['map']:>7.4f} {m['coverage']:>6.3f} "
            f"{result.users:>6} {train_s:>8.1f} {recommend_s:>12.1f} {m['ndcg'] / popularity_ndcg:>9.2f}"
        )
    for name, (ndcg, precision, recall, map_) in PUBLISHED.items():
        print(
            f"{name:<34} {ndcg:>8.4f} {precision:>7.4f} {recall:>7.4f} {map_:>7.4f}  (MAP: older definition)"
        )
    print()
    print(
        f"tuning: {len(tuned.trials)} trials in {tune_s:.1f} s (budget {settings.tuning_budget_seconds:.0f} s) on a validation split of the training part "
        f"({tuned.users} users){'; ' + tuned.reason if tuned.reason else ''}"
    )
    for number, trial in enumerate(tuned.trials, 1):
        print(
            f"  {number:>2}. {trial.params.describe():<40} validation nDCG@{settings.k} {trial.ndcg:.4f}  {trial.seconds:.1f} s"
        )
    print(
        f"chosen: {tuned.chosen.describe()} (strength {settings.strength}, half-life {settings.half_life_days})"
    )


if __name__ == "__main__":
    sys.exit(main())

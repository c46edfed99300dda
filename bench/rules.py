"""Benchmark: the rules job's FPGrowth + association rules (Spark MLlib) against mlxtend's fpgrowth +
association_rules on the same synthetic baskets, in one run, at 10^5 and 10^6 baskets by default.

Baskets: `--items` items with Zipf-like popularity, 1 + Poisson(2.5) picks per basket, and 20 planted
bundles (when a basket holds a bundle's anchor, its other items are added with the bundle's rate), made
with numpy from a fixed seed. Both sides get them already in memory and untimed: Spark as a cached
DataFrame of item arrays, mlxtend as a sparse one-hot DataFrame (its faster input).

Timed, per side:
- spark: `marketlake.rules.mine_rules` (the items counted, the baskets coded as integer arrays of their
  frequent items, FPGrowth fit, its frequent itemsets cached and counted, its associationRules decoded
  to item names, the lift filter and sorted antecedents: what the job runs before writing), forced with
  a count;
- mlxtend: `fpgrowth` + `association_rules` (metric confidence), then the same lift filter and the
  restriction to one consequent item that Spark's FPGrowth has by construction (mlxtend also builds the
  rules with several consequent items, so its side does a little more rule work).
The guard (`estimate_itemsets`, counting the items itself; the job counts them once for the guard
and the fit) is timed apart and shown, not counted in the ratio. After timing, the
two sides' frequent itemset counts and rule sets are compared, rule for rule (support, confidence,
lift to 1e-9); a mismatch is an error.

ratio = mlxtend seconds / Spark seconds (> 1: Spark faster), from the same run; the machine may be
shared, so the ratio means more than the absolute seconds. The last line of stdout is JSON.

    python bench/rules.py [--sizes 100000,1000000] [--items 300] [--min-support 0.001]
                          [--min-confidence 0.1] [--min-lift 1.0] [--repeats 1] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from marketlake.rules import mine_rules

BUNDLES = 20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synthetic_baskets(n: int, items: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR form of n baskets: (indptr, item indices sorted within each basket), distinct items."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / (np.arange(items) + 1.0) ** 0.8
    popularity /= popularity.sum()
    sizes = 1 + rng.poisson(2.5, n)
    basket = np.repeat(np.arange(n), sizes)
    item = rng.choice(items, size=len(basket), p=popularity)
    # Bundles: an anchor among the 100 most popular items, 1-2 partners, a rate of 0.5-0.9.
    chosen = rng.choice(min(items, 100), size=3 * BUNDLES, replace=False)
    anchors, partners = chosen[:BUNDLES], chosen[BUNDLES:].reshape(BUNDLES, 2)
    sizes_of = rng.integers(1, 3, BUNDLES)
    rates = rng.uniform(0.5, 0.9, BUNDLES)
    bundle_of = np.full(items, -1)
    bundle_of[anchors] = np.arange(BUNDLES)
    hit = bundle_of[item]
    taken = (hit >= 0) & (rng.random(len(item)) < rates[np.maximum(hit, 0)])
    extra_basket, extra_item = [], []
    for slot in range(2):
        with_partner = taken & (sizes_of[np.maximum(hit, 0)] > slot)
        extra_basket.append(basket[with_partner])
        extra_item.append(partners[hit[with_partner], slot])
    keys = np.unique(np.concatenate([basket, *extra_basket]) * items + np.concatenate([item, *extra_item]))
    rows, cols = keys // items, keys % items
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    return indptr, cols


def item_names(items: int) -> np.ndarray:
    return np.array([f"i{i:05d}" for i in range(items)])


def spark_frame(spark, indptr: np.ndarray, cols: np.ndarray, names: np.ndarray):
    import pandas as pd
    from pyspark.sql import functions as F

    lists = np.split(names[cols], indptr[1:-1])
    frame = spark.createDataFrame(pd.DataFrame({"items": [x.tolist() for x in lists]}), "items array<string>")
    return frame.withColumn("basket_id", F.monotonically_increasing_id())  # estimate_itemsets wants an id


def onehot_frame(indptr: np.ndarray, cols: np.ndarray, names: np.ndarray):
    import pandas as pd
    from scipy.sparse import csr_matrix

    matrix = csr_matrix((np.ones(len(cols), dtype=bool), cols, indptr), shape=(len(indptr) - 1, len(names)))
    with warnings.catch_warnings():  # pandas deprecates the fill value it picks itself for bool
        warnings.simplefilter("ignore", FutureWarning)
        return pd.DataFrame.sparse.from_spmatrix(matrix, columns=names.tolist())


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def spark_rules(frame, thresholds: tuple[float, float, float]) -> int:
    with mine_rules(frame, *thresholds) as mined:
        return mined.rules.count()


def mlxtend_rules(onehot, min_support: float, min_confidence: float, min_lift: float):
    from mlxtend.frequent_patterns import association_rules, fpgrowth

    itemsets = fpgrowth(onehot, min_support=min_support, use_colnames=True)
    rules = association_rules(
        itemsets, num_itemsets=len(onehot), metric="confidence", min_threshold=min_confidence
    )
    rules = rules[(rules.lift >= min_lift) & (rules.consequents.map(len) == 1)]
    return itemsets, rules


def compare(rules, theirs) -> float:
    """Max abs difference of support, confidence and lift over the same rules; raises on other rules."""
    ours = {
        (tuple(r.antecedent), r.consequent[0]): (r.support, r.confidence, r.lift) for r in rules.collect()
    }
    other = {
        (tuple(sorted(a)), next(iter(c))): (s, conf, lift)
        for a, c, s, conf, lift in zip(
            theirs.antecedents,
            theirs.consequents,
            theirs.support,
            theirs.confidence,
            theirs.lift,
            strict=True,
        )
    }
    if ours.keys() != other.keys():
        raise SystemExit(
            f"ERROR: rule sets differ: {len(ours.keys() - other.keys())} only in Spark, "
            f"{len(other.keys() - ours.keys())} only in mlxtend"
        )
    worst = max((abs(a - b) for key in ours for a, b in zip(ours[key], other[key], strict=True)), default=0.0)
    if worst > 1e-9:
        raise SystemExit(f"ERROR: values differ by {worst:.3g}")
    return worst


def run_size(spark, n: int, args) -> dict[str, Any]:
    from marketlake.rules import estimate_itemsets

    names = item_names(args.items)
    seconds, (indptr, cols) = timed(lambda: synthetic_baskets(n, args.items, args.seed))
    log(
        f"{n:,} baskets, {len(cols):,} basket items ({len(cols) / n:.2f} per basket), made in {seconds:.1f} s"
    )
    frame = spark_frame(spark, indptr, cols, names).cache()
    frame.count()
    onehot = onehot_frame(indptr, cols, names)
    thresholds = args.min_support, args.min_confidence, args.min_lift

    spark_s, mlxtend_s = [], []
    for repeat in range(args.repeats):
        seconds, n_rules = timed(lambda: spark_rules(frame, thresholds))
        spark_s.append(seconds)
        log(f"  spark   run {repeat + 1}: {seconds:8.2f} s  {n_rules:,} rules")
        seconds, (itemsets, theirs) = timed(
            lambda: mlxtend_rules(onehot, args.min_support, args.min_confidence, args.min_lift)
        )
        mlxtend_s.append(seconds)
        log(
            f"  mlxtend run {repeat + 1}: {seconds:8.2f} s  {len(theirs):,} rules, {len(itemsets):,} itemsets"
        )
    guard_s, estimate = timed(lambda: estimate_itemsets(frame, n, args.min_support, 10**6))
    with mine_rules(frame, *thresholds) as mined:
        if mined.itemsets != len(itemsets):
            raise SystemExit(
                f"ERROR: {mined.itemsets:,} frequent itemsets in Spark, {len(itemsets):,} in mlxtend"
            )
        worst = compare(mined.rules, theirs)
    frame.unpersist()
    spark_median, mlxtend_median = statistics.median(spark_s), statistics.median(mlxtend_s)
    return {
        "baskets": n,
        "itemsets": len(itemsets),
        "rules": len(theirs),
        "spark_s": round(spark_median, 3),
        "mlxtend_s": round(mlxtend_median, 3),
        "ratio": round(mlxtend_median / spark_median, 3),
        "guard_s": round(guard_s, 3),
        "itemsets_bound": estimate.bound,
        "max_abs_diff": worst,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="basket counts, comma-separated")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--min-support", type=float, default=0.001)
    parser.add_argument("--min-confidence", type=float, default=0.1)
    parser.add_argument("--min-lift", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side and size (median)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    import mlxtend
    import pyspark

    from marketlake.config import load_config
    from marketlake.spark import build_session

    config = load_config(None)
    log(f"starting Spark (master {config.spark.master})")
    spark = build_session(config)
    try:
        log("warm-up (untimed): 10,000 baskets")
        warm = spark_frame(
            spark, *synthetic_baskets(10_000, args.items, args.seed + 1), item_names(args.items)
        )
        spark_rules(warm, (args.min_support, args.min_confidence, args.min_lift))
        results = [run_size(spark, n, args) for n in sizes]
        master = spark.sparkContext.master
    finally:
        spark.stop()

    print(
        f"marketlake rules benchmark: {args.items} items, min support {args.min_support:g}, min confidence "
        f"{args.min_confidence:g}, min lift {args.min_lift:g}, {args.repeats} run(s) per side (median)"
    )
    print(
        f"pyspark {pyspark.__version__} (master {master}), mlxtend {mlxtend.__version__}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} cores"
    )
    print(
        "ratio = mlxtend s / Spark s (> 1: Spark faster); guard = the job's itemset estimate, not in the ratio"
    )
    print()
    header = f"{'baskets':>10} {'itemsets':>9} {'rules':>7} {'spark s':>9} {'mlxtend s':>10} {'ratio':>7} {'guard s':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['baskets']:>10,} {r['itemsets']:>9,} {r['rules']:>7,} {r['spark_s']:>9.2f} {r['mlxtend_s']:>10.2f} "
            f"{r['ratio']:>7.2f} {r['guard_s']:>8.2f}"
        )
    print()
    print(json.dumps({"items": args.items, "min_support": args.min_support, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the segment job's model selection in Spark against scikit-learn's full search, in one run.

- Spark: `marketlake.segment.fit`, exactly what the segment job runs: log1p, VectorAssembler and
  StandardScaler fitted on everyone; the k search on a sample of `segment.sample_size` users (for every k
  of 2..8: `runs` KMeans runs, the lowest-cost run's silhouette, and `stability_splits` halvings of the
  sample with a fit per half); the chosen k (the highest silhouette among the stable k's); then one
  KMeans fit (`final_runs`) on everyone. Rows read from Parquet, partitioned and ordered as the job does.
- scikit-learn: the full search on everyone, as the job did before issue 21: numpy log1p,
  StandardScaler, KMeans(init="k-means++", n_init=1, max_iter=the same, random_state=each of the same
  `runs` seeds) for every k on all rows, the lowest-cost run kept per k, and the silhouette (squared
  Euclidean) of each kept run by its closed form: the mean distance from a point to a cluster is
  |x|^2 - 2 x.mean_c + mean(|y|^2 over c), so it costs O(n k) -- the formula of Spark's
  ClusteringEvaluator. sklearn's own silhouette_score is O(n^2) (10^12 distances at 10^6 users), so it is
  used only to check the closed form on a sample. The highest silhouette picks k.

The goal (issue 21): segments of the same quality -- adjusted Rand index against the planted groups within
0.01 of scikit-learn's -- in no more time than scikit-learn's search (`quality_met`, `time_met`). Spark's
time is split into prepare (counts, preprocessing), search (on the sample) and final (the fit on
everyone) in `spark_profile_seconds`.

The rows are synthetic feature rows (the columns of gold.user_features the job clusters: recency_days,
frequency, monetary, views, clicks, carts, purchases, ctr, purchase_rate, tenure_days), drawn for five planted
customer groups shaped like the generator's personas. They are not computed from events: generating and
ingesting events for 10^6 users (about 10^8 events) is beyond this 2-core machine, and the bench measures
the modelling, not the features job.

    python bench/segment.py [--users 100000 1000000] [--runs 3] [--k-min 2] [--k-max 8] [--out DIR]

Times are seconds of one run per side and size (the machine is shared: compare the ratio, taken in the same
run). ratio = Spark seconds / scikit-learn seconds (above 1: Spark slower). "load" is reading the Parquet
rows into memory (Spark: read, partition, cache; sklearn: pandas to numpy); "fit" is the work above. The
last line of stdout is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pandas as pd

FEATURES = [
    "recency_days",
    "frequency",
    "monetary",
    "views",
    "clicks",
    "carts",
    "purchases",
    "ctr",
    "purchase_rate",
    "tenure_days",
]
# name: (share, mean recency days, mean orders, mean views, click prob, cart prob per click, spend per order)
GROUPS = {
    "champions": (0.15, 0.4, 17.0, 75.0, 0.68, 0.80, 150.0),
    "loyal": (0.25, 1.0, 5.0, 49.0, 0.48, 0.65, 90.0),
    "new": (0.15, 0.8, 1.6, 13.0, 0.55, 0.60, 95.0),
    "at_risk": (0.20, 21.0, 2.7, 31.0, 0.40, 0.60, 100.0),
    "window_shoppers": (0.25, 3.0, 0.0, 90.0, 0.22, 0.08, 0.0),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synthetic_rows(users: int, seed: int = 42) -> pd.DataFrame:
    """Feature rows for `users` users in the planted GROUPS (column `group`), deterministic per seed."""
    rng = np.random.default_rng(seed)
    shares = np.array([g[0] for g in GROUPS.values()])
    group = rng.choice(len(GROUPS), size=users, p=shares / shares.sum())
    recency_m, orders_m, views_m, click_p, cart_p, spend = (
        np.array([g[i] for g in GROUPS.values()])[group] for i in range(1, 7)
    )
    orders = np.where(orders_m > 0, 1 + rng.poisson(np.maximum(orders_m - 1, 0)), 0)
    views = 1 + rng.poisson(views_m)
    clicks = rng.binomial(views, click_p)
    carts = rng.binomial(clicks, cart_p) + orders
    purchases = orders * (1 + rng.poisson(0.8, users))
    sessions = np.maximum(orders, 1 + rng.poisson(views_m / 8))
    return pd.DataFrame(
        {
            "user_id": [f"u{i:07d}" for i in range(users)],
            "group": np.array(list(GROUPS))[group],
            "recency_days": np.round(recency_m * rng.gamma(6.0, 1 / 6.0, users), 3),
            "frequency": orders,
            "monetary": np.round(orders * spend * rng.gamma(4.0, 0.25, users), 2),
            "views": views,
            "clicks": clicks,
            "carts": carts,
            "purchases": purchases,
            "ctr": clicks / views,
            "purchase_rate": orders / sessions,
            # New customers signed up in the last days; the others long ago.
            "tenure_days": np.round(
                np.where(
                    np.array(list(GROUPS))[group] == "new",
                    rng.uniform(0, 6, users),
                    rng.uniform(30, 800, users),
                ),
                3,
            ),
        }
    )


# ---- scikit-learn -----------------------------------------------------------------------------------


def silhouette_sqeuclidean(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette with squared Euclidean distances, in O(n k) (the formula Spark uses)."""
    k = labels.max() + 1
    counts = np.bincount(labels, minlength=k).astype(float)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    norms = np.einsum("ij,ij->i", x, x)
    norm_sums = np.bincount(labels, weights=norms, minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_distance = norms[:, None] - 2 * (x @ (sums / counts[:, None]).T) + (norm_sums / counts)[None, :]
    own = mean_distance[np.arange(len(x)), labels]
    own_count = counts[labels]
    a = np.where(own_count > 1, own * own_count / np.maximum(own_count - 1, 1), 0.0)
    mean_distance[np.arange(len(x)), labels] = np.inf
    mean_distance[:, counts == 0] = np.inf
    b = mean_distance.min(axis=1)
    s = np.where(own_count > 1, (b - a) / np.maximum(a, b), 0.0)
    return float(s.mean())


def sklearn_fit(raw: pd.DataFrame, features, log_features, ks, seeds, max_iter) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    distinct = len(np.unique(raw[features].to_numpy(), axis=0))
    x = np.column_stack(
        [np.log1p(raw[c].to_numpy(float)) if c in log_features else raw[c].to_numpy(float) for c in features]
    )
    x = StandardScaler().fit_transform(x)
    trials = {}
    for k in ks:
        runs = [
            KMeans(k, init="k-means++", n_init=1, max_iter=max_iter, random_state=seed).fit(x)
            for seed in seeds
        ]
        best = min(runs, key=lambda m: m.inertia_)
        trials[k] = (best.inertia_, silhouette_sqeuclidean(x, best.labels_), best.labels_)
    chosen = max(ks, key=lambda k: (round(trials[k][1], 9), -k))
    return {"distinct": distinct, "x": x, "trials": trials, "chosen": chosen}


def check_closed_form(x: np.ndarray, labels: np.ndarray, sample: int = 3000) -> tuple[float, float]:
    """(closed form, sklearn.metrics.silhouette_score) on the same sample: they must agree."""
    from sklearn.metrics import silhouette_score

    rows = np.random.default_rng(0).choice(len(x), size=min(sample, len(x)), replace=False)
    _, sub_labels = np.unique(labels[rows], return_inverse=True)
    return silhouette_sqeuclidean(x[rows], sub_labels), float(
        silhouette_score(x[rows], sub_labels, metric="sqeuclidean")
    )


# ---- one size -----------------------------------------------------------------------------------------


def measure(spark, settings, users: int, workdir: str) -> dict:
    from pyspark.sql import functions as F
    from sklearn.metrics import adjusted_rand_score

    from marketlake.segment import CLUSTER, candidate_ks, fit

    rows = synthetic_rows(users)
    path = os.path.join(workdir, f"features-{users}.parquet")
    rows.to_parquet(path, index=False)
    truth = rows.set_index("user_id").group
    del rows
    seeds = list(range(settings.seed, settings.seed + settings.runs))

    started = time.perf_counter()
    raw = pd.read_parquet(path, columns=["user_id", *settings.features])
    sk_load = time.perf_counter() - started
    ks = candidate_ks(settings, len(raw), len(raw))
    log(f"{users:,} users: scikit-learn, k {ks[0]}..{ks[-1]}, seeds {seeds[0]}..{seeds[-1]}")
    started = time.perf_counter()
    sk = sklearn_fit(raw, settings.features, settings.log_features, ks, seeds, settings.max_iter)
    sk_fit = time.perf_counter() - started

    log(f"{users:,} users: Spark")
    started = time.perf_counter()
    partitions = max(1, min(int(spark.conf.get("spark.sql.shuffle.partitions")), math.ceil(users / 50_000)))
    data = (
        spark.read.parquet(path).repartition(partitions, "user_id").sortWithinPartitions("user_id").persist()
    )
    data.count()
    spark_load = time.perf_counter() - started
    workers = min(8, spark.sparkContext.defaultParallelism)
    started = time.perf_counter()
    fitted = fit(data, settings, workers)
    spark_fit = time.perf_counter() - started
    spark_labels = (
        fitted.model.transform(data)
        .select("user_id", F.col(CLUSTER))
        .toPandas()
        .set_index("user_id")[CLUSTER]
    )
    data.unpersist()

    chosen_labels = sk["trials"][sk["chosen"]][2]
    closed, reference = check_closed_form(sk["x"], chosen_labels)
    spark_ari = adjusted_rand_score(truth.loc[spark_labels.index], spark_labels)
    sklearn_ari = adjusted_rand_score(truth.to_numpy(), chosen_labels)
    return {
        "users": users,
        "partitions": partitions,
        "parallel_fits": workers,
        "fits": len(ks) * len(seeds),
        "spark_fits": len(ks) * (settings.runs + 2 * settings.stability_splits * settings.stability_runs)
        + settings.final_runs,
        "sample_size": fitted.sampled,
        "spark_profile_seconds": {key: round(value, 2) for key, value in fitted.seconds.items()},
        "spark_seconds": round(spark_fit, 2),
        "sklearn_seconds": round(sk_fit, 2),
        "ratio": round(spark_fit / sk_fit, 2),
        "spark_load_seconds": round(spark_load, 2),
        "sklearn_load_seconds": round(sk_load, 2),
        "chosen_k": {"spark": fitted.chosen.k, "sklearn": sk["chosen"]},
        "silhouette": {
            "spark": {t.k: round(t.silhouette, 4) for t in fitted.trials},
            "sklearn": {k: round(v[1], 4) for k, v in sk["trials"].items()},
        },
        "ari_vs_planted": {"spark": round(spark_ari, 4), "sklearn": round(sklearn_ari, 4)},
        "ari_gap": round(spark_ari - sklearn_ari, 4),
        # The goal: segments of the same quality (ARI within 0.01 of scikit-learn's full search), no slower.
        "quality_met": bool(spark_ari >= sklearn_ari - 0.01),
        "time_met": bool(spark_fit <= sk_fit),
        "closed_form_check": {
            "closed_form": round(closed, 6),
            "sklearn_silhouette_score": round(reference, 6),
        },
    }


def report(results: list[dict], settings) -> None:
    print(
        f"marketlake segment benchmark: k {settings.k_min}..{settings.k_max}, {settings.runs} seeds per k "
        f"(from {settings.seed}), max_iter {settings.max_iter}; features {', '.join(settings.features)}"
    )
    print("ratio = Spark s / scikit-learn s for the same work (above 1: Spark slower); one run each")
    print()
    header = f"{'users':>10} {'fits':>5} {'spark s':>9} {'sklearn s':>10} {'ratio':>7} {'k spark/skl':>12} {'ARI spark/skl':>14} {'load spark/skl s':>17}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['users']:>10,} {r['fits']:>5} {r['spark_seconds']:>9.2f} {r['sklearn_seconds']:>10.2f} {r['ratio']:>7.2f} "
            f"{r['chosen_k']['spark']:>6}/{r['chosen_k']['sklearn']:<5} "
            f"{r['ari_vs_planted']['spark']:>7.3f}/{r['ari_vs_planted']['sklearn']:<6.3f} "
            f"{r['spark_load_seconds']:>8.2f}/{r['sklearn_load_seconds']:<8.2f}"
        )
    print()
    for r in results:
        profile = ", ".join(f"{key} {value:.1f} s" for key, value in r["spark_profile_seconds"].items())
        print(
            f"{r['users']:,} users: Spark searched k on {r['sample_size']:,} users ({r['spark_fits']} fits, "
            f"{profile}); ARI gap {r['ari_gap']:+.4f} (quality {'met' if r['quality_met'] else 'NOT met'}), "
            f"time {'met' if r['time_met'] else 'NOT met'}"
        )
    for r in results:
        print(f"silhouette by k at {r['users']:,} users:")
        for side in ("spark", "sklearn"):
            print(f"  {side:<8} " + "  ".join(f"k={k}: {v:.4f}" for k, v in r["silhouette"][side].items()))
        check = r["closed_form_check"]
        print(
            f"  closed form {check['closed_form']:.6f} = sklearn silhouette_score {check['sklearn_silhouette_score']:.6f} (3,000-row sample)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--users", type=int, nargs="+", default=[100_000, 1_000_000], help="sizes (default 10^5 10^6)"
    )
    parser.add_argument("--runs", type=int, help="seeds per k (default: config segment.runs)")
    parser.add_argument("--k-min", type=int, help="default: config segment.k_min")
    parser.add_argument("--k-max", type=int, help="default: config segment.k_max")
    parser.add_argument("--out", help="working directory (default: a temporary one, removed at the end)")
    args = parser.parse_args(argv)

    from marketlake.config import load_config
    from marketlake.java import ensure_java
    from marketlake.spark import build_session

    config = load_config()
    updates = {
        key: value
        for key, value in (("runs", args.runs), ("k_min", args.k_min), ("k_max", args.k_max))
        if value
    }
    settings = config.segment.model_copy(update=updates)
    ensure_java()
    spark = build_session(config)
    workdir = args.out or tempfile.mkdtemp(prefix="marketlake-bench-segment-")
    os.makedirs(workdir, exist_ok=True)
    try:
        results = [measure(spark, settings, users, workdir) for users in args.users]
    finally:
        if not args.out:
            shutil.rmtree(workdir, ignore_errors=True)
    report(results, settings)
    summary = {
        "benchmark": "segment",
        "spark": spark.version,
        "settings": {
            "k_min": settings.k_min,
            "k_max": settings.k_max,
            "runs": settings.runs,
            "seed": settings.seed,
            "max_iter": settings.max_iter,
            "sample_size": settings.sample_size,
            "stability_splits": settings.stability_splits,
            "stability_runs": settings.stability_runs,
            "min_stability": settings.min_stability,
            "final_runs": settings.final_runs,
        },
        "results": results,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

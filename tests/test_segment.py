"""Segments: the planted personas of the demo shop are recovered (adjusted Rand index, the chosen k), the
profiles are named after them, the model is saved and recorded; re-runs are identical; small and
degenerate inputs; the naming rules and the choice of k on their own."""

from __future__ import annotations

import datetime as dt
import random
import shutil

import numpy as np
import pandas as pd
import pytest
from chispa import assert_df_equality
from conftest import DEMO_END
from pyspark.ml import PipelineModel
from pyspark.sql import functions as F
from pyspark.sql import types as T
from sklearn.metrics import adjusted_rand_score, silhouette_score

from marketlake.config import SegmentConfig
from marketlake.features import NUMERIC
from marketlake.jobs import main
from marketlake.lake import Lake
from marketlake.models import model_version
from marketlake.segment import (
    AT_RISK,
    DORMANT,
    EVERYONE,
    HIGH_VALUE_LOYAL,
    LOYAL,
    NEW,
    OCCASIONAL,
    STRATEGIES,
    WINDOW_SHOPPERS,
    Trial,
    adjusted_rand,
    candidate_ks,
    choice_reason,
    choose_k,
    name_segments,
    silhouette_sq,
)

PERSONA_NAMES = {
    "champions": HIGH_VALUE_LOYAL,
    "loyal": LOYAL,
    "new": NEW,
    "at_risk": AT_RISK,
    "window_shoppers": WINDOW_SHOPPERS,
}


@pytest.fixture(scope="module")
def demo(spark, config, demo_shop, tmp_path_factory):
    """The demo shop's lake, copied, with features and segments for its run date (default configuration)."""
    shop, _, root = demo_shop
    lake_root = str(tmp_path_factory.mktemp("segment-demo") / "lake")
    shutil.copytree(root, lake_root)
    for job in ("features", "segment"):
        assert main(job, ["--lake", lake_root, "--run-date", DEMO_END]) == 0, f"{job} failed"
    personas = pd.read_csv(shop / "truth" / "personas.csv")
    return Lake(spark, config.lake, lake_root), personas


def latest_model(lake: Lake):
    return lake.read("ops.models").orderBy(F.desc("created_at")).first()


def test_segments_recover_the_planted_personas(demo):
    lake, personas = demo
    segments = lake.read("gold.user_segments").select("user_id", "segment_id").toPandas()
    assert len(segments) == len(personas) == lake.read("gold.user_features").count()
    joined = segments.merge(personas, on="user_id", validate="one_to_one")
    assert adjusted_rand_score(joined.persona, joined.segment_id) >= 0.9
    model = latest_model(lake)
    assert model.metrics["k"] == personas.persona.nunique() == 5


def test_the_most_distinct_stable_k_is_chosen_and_every_k_is_recorded(demo):
    lake, _ = demo
    model = latest_model(lake)

    def by_k(prefix):
        return {
            int(key.split("_k")[1]): value for key, value in model.metrics.items() if key.startswith(prefix)
        }

    silhouettes, stabilities = by_k("silhouette_k"), by_k("stability_k")
    assert sorted(silhouettes) == sorted(stabilities) == list(range(2, 9))
    stable_ks = [k for k, value in stabilities.items() if value >= SegmentConfig().min_stability]
    assert 5 in stable_ks and max(stable_ks, key=silhouettes.get) == model.metrics["k"]
    assert model.metrics["silhouette"] == silhouettes[5] > 0.5
    assert model.metrics["sampled_users"] == 2000  # the demo shop is below the sample size: all of it
    assert model.features == SegmentConfig().features and model.params["runs"] == "3"
    profiles = lake.read("gold.segment_profiles").collect()
    assert {p.silhouette for p in profiles} == {round(silhouettes[5], 6)} and {p.k for p in profiles} == {5}


def test_profiles_are_named_after_the_personas(demo):
    lake, personas = demo
    profiles = lake.read("gold.segment_profiles").orderBy("segment_id").toPandas()
    assert profiles.segment_id.tolist() == list(range(5)) and profiles.segment_name.is_unique
    assert profiles["size"].sum() == len(personas) and abs(profiles.share.sum() - 1) < 1e-9
    assert profiles.mean_monetary.is_monotonic_decreasing
    assert (profiles.strategy == profiles.segment_name.map(STRATEGIES)).all()
    segments = lake.read("gold.user_segments").select("user_id", "segment_name").toPandas()
    majority = (
        segments.merge(personas, on="user_id").groupby("persona").segment_name.agg(lambda s: s.mode()[0])
    )
    assert majority.to_dict() == PERSONA_NAMES
    # Means are in the features' own units.
    features = (
        lake.read("gold.user_features").select("user_id", *NUMERIC).toPandas().merge(segments, on="user_id")
    )
    means = features.groupby("segment_name")[["frequency", "monetary", "views"]].mean()
    by_name = profiles.set_index("segment_name")
    for column in ("frequency", "monetary", "views"):
        assert (means[column] - by_name[f"mean_{column}"]).abs().max() < 1e-3
    assert (
        by_name.loc[WINDOW_SHOPPERS, "mean_frequency"] == 0
        and by_name.loc[WINDOW_SHOPPERS, "buyer_share"] == 0
    )


def test_the_saved_model_reloads_and_assigns_the_same_segments(demo):
    lake, _ = demo
    model = latest_model(lake)
    segments = lake.read("gold.user_segments")
    assert {r.model_version for r in segments.select("model_version").distinct().collect()} == {
        model.model_version
    }
    assert model.model_version.startswith(f"{DEMO_END}-") and model.path.endswith(
        f"/models/segment_kmeans/{model.model_version}"
    )
    pipeline = PipelineModel.load(model.path)
    assert len(pipeline.stages) == 4 and pipeline.stages[-1].getK() == 5
    features = lake.read("gold.user_features").filter(
        F.col("as_of_date") == F.lit(dt.date.fromisoformat(DEMO_END))
    )
    clusters = pipeline.transform(features).select("user_id", "_cluster").join(segments, "user_id")
    # Each reloaded cluster maps onto exactly one segment.
    assert (
        clusters.groupBy("_cluster").agg(F.count_distinct("segment_id").alias("n")).filter("n != 1").count()
        == 0
    )
    assert clusters.select("_cluster").distinct().count() == 5


# ---- small hand-made feature tables -----------------------------------------------------------------

RUN = dt.date(2024, 3, 31)
FEATURE_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        *[
            T.StructField(
                c,
                T.LongType()
                if c in ("frequency", "views", "clicks", "carts", "purchases", "sessions", "active_days")
                else T.DoubleType(),
            )
            for c in NUMERIC
        ],
        T.StructField("as_of_date", T.DateType()),
    ]
)
# Three groups of 20 users: (recency, frequency, monetary, views, tenure) around these centres.
GROUPS = {
    "big": (0.5, 10, 1000.0, 60, 400),
    "browsers": (2.0, 0, 0.0, 50, 400),
    "lapsed": (20.0, 2, 100.0, 10, 400),
}


def blob_rows(groups=GROUPS, per_group=20, seed=7):
    rng = random.Random(seed)
    rows = []
    for name, (recency, frequency, monetary, views, tenure) in groups.items():
        for i in range(per_group):
            f = max(0, frequency + rng.choice([-1, 0, 1])) if frequency else 0
            m = monetary * rng.uniform(0.9, 1.1) if f else 0.0
            v = views + rng.randint(-3, 3)
            row = {
                "recency_days": recency * rng.uniform(0.8, 1.2),
                "days_since_purchase": recency if f else None,
                "frequency": f,
                "monetary": m,
                "avg_order_value": m / f if f else 0.0,
                "views": v,
                "clicks": v // 3,
                "carts": f * 2,
                "purchases": f * 2,
                "sessions": f + 3,
                "ctr": (v // 3) / v,
                "cart_rate": f * 2 / v,
                "purchase_rate": f / (f + 3),
                "active_days": f + 2,
                "tenure_days": float(tenure + rng.randint(-30, 30)),
            }
            rows.append((f"{name}-{i:02d}", *[row[c] for c in NUMERIC], RUN))
    return rows


def features_lake(spark, config, root, rows) -> Lake:
    lake = Lake(spark, config.lake, root)
    lake.write("gold.user_features", spark.createDataFrame(rows, FEATURE_SCHEMA), partition_by=["as_of_date"])
    return lake


def test_reruns_with_the_same_seed_are_identical(spark, config, lake_root, tmp_path):
    lake = features_lake(spark, config, lake_root, blob_rows())
    small = tmp_path / "small.yaml"
    small.write_text("segment: {k_max: 4, runs: 2}\n")
    argv = ["--lake", lake_root, "--run-date", RUN.isoformat(), "--config", str(small)]
    assert main("segment", argv) == 0
    segments, profiles = (lake.read(t).cache() for t in ("gold.user_segments", "gold.segment_profiles"))
    got = segments.toPandas()
    assert adjusted_rand_score(got.user_id.str.split("-").str[0], got.segment_id) == 1.0
    names = dict(zip(got.user_id.str.split("-").str[0], got.segment_name, strict=False))
    assert names == {"big": HIGH_VALUE_LOYAL, "browsers": WINDOW_SHOPPERS, "lapsed": AT_RISK}

    assert main("segment", argv) == 0
    assert_df_equality(lake.read("gold.user_segments"), segments, ignore_row_order=True)
    assert_df_equality(lake.read("gold.segment_profiles"), profiles, ignore_row_order=True)
    models = lake.read("ops.models").collect()
    assert len(models) == 2 and len({m.model_version for m in models}) == 1  # a log: one row per run


def test_too_few_distinct_users_make_one_segment(spark, config, lake_root, caplog):
    same = blob_rows({"big": GROUPS["big"]}, per_group=1) * 3
    rows = [(f"u{i}", *row[1:]) for i, row in enumerate(same)]
    lake = features_lake(spark, config, lake_root, rows)
    with caplog.at_level("INFO", logger="marketlake"):
        assert main("segment", ["--lake", lake_root, "--run-date", RUN.isoformat()]) == 0
    assert any(
        "too few distinct users to segment (1 distinct of 3)" in r.getMessage() for r in caplog.records
    )
    segments = lake.read("gold.user_segments").collect()
    assert {(s.segment_id, s.segment_name, s.model_version) for s in segments} == {(0, EVERYONE, None)}
    profile = lake.read("gold.segment_profiles").first()
    assert (profile.size, profile.share, profile.silhouette, profile.strategy) == (
        3,
        1.0,
        None,
        STRATEGIES[EVERYONE],
    )
    assert not lake.exists("ops.models")


def test_bad_settings_and_missing_features_stop_with_exit_2(spark, lake_root, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("segment: {features: [recency_days, days_since_purchase]}\n")
    assert main("segment", ["--lake", lake_root, "--config", str(bad)]) == 2
    assert "segment.features: days_since_purchase not among" in capsys.readouterr().err
    assert main("segment", ["--lake", lake_root, "--k", "1"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "marketlake segment: --k: Input should be greater than or equal to 2 (got 1)"
    )
    assert main("segment", ["--lake", lake_root, "--run-date", RUN.isoformat()]) == 2
    assert "gold.user_features does not exist" in capsys.readouterr().err


# ---- pure parts ------------------------------------------------------------------------------------


def test_candidate_ks_are_capped_by_the_data():
    auto, fixed = SegmentConfig(), SegmentConfig(k=6)
    assert candidate_ks(auto, users=2000, distinct=2000) == [2, 3, 4, 5, 6, 7, 8]
    assert candidate_ks(auto, users=40, distinct=4) == [2, 3, 4]
    assert candidate_ks(auto, users=3, distinct=3) == [2]
    assert candidate_ks(auto, users=2, distinct=2) == [] and candidate_ks(auto, users=50, distinct=1) == []
    assert candidate_ks(fixed, users=2000, distinct=2000) == [6] and candidate_ks(
        fixed, users=4, distinct=4
    ) == [3]
    assert candidate_ks(SegmentConfig(k_min=5, k_max=8), users=4, distinct=4) == [3]


def profile(cluster, size, recency, frequency, monetary, buyers=1.0, tenure=400.0):
    return {
        "_cluster": cluster,
        "size": size,
        "buyer_share": buyers,
        "mean_recency_days": recency,
        "mean_frequency": frequency,
        "mean_monetary": monetary,
        "mean_tenure_days": tenure,
        **{
            f"mean_{c}": 1.0
            for c in NUMERIC
            if c not in ("recency_days", "frequency", "monetary", "tenure_days")
        },
    }


def test_segment_names_follow_the_profile_rules():
    named = name_segments(
        [
            profile(0, 100, recency=2, frequency=1, monetary=50),  # buys, but less often than average
            profile(1, 100, recency=1, frequency=12, monetary=1500),
            profile(2, 100, recency=30, frequency=0, monetary=0, buyers=0.1),
            profile(3, 100, recency=3, frequency=0, monetary=0, buyers=0.0),
            profile(4, 100, recency=25, frequency=2, monetary=120),
            profile(5, 100, recency=1, frequency=2, monetary=90, tenure=5),
            profile(6, 100, recency=1, frequency=4, monetary=400),
        ]
    )
    by_cluster = {p["_cluster"]: (p["segment_id"], p["segment_name"]) for p in named}
    assert by_cluster == {
        1: (0, HIGH_VALUE_LOYAL),
        6: (1, LOYAL),
        4: (2, AT_RISK),
        5: (3, NEW),
        0: (4, OCCASIONAL),
        3: (5, WINDOW_SHOPPERS),
        2: (6, DORMANT),
    }
    twins = name_segments([profile(0, 10, 1, 3, 300), profile(1, 10, 1, 3, 200), profile(2, 10, 1, 1, 10)])
    assert [p["segment_name"] for p in twins] == [LOYAL, f"{LOYAL} 2", OCCASIONAL]
    assert twins[1]["strategy"] == STRATEGIES[LOYAL]


def test_the_model_version_is_the_run_date_and_a_hash_of_the_params():
    params = SegmentConfig().model_dump()
    version = model_version(RUN, params)
    assert version == model_version(RUN, dict(reversed(params.items()))) and version.startswith("2024-03-31-")
    assert model_version(RUN, {**params, "seed": 1}) != version != model_version(dt.date(2024, 4, 1), params)


def test_k_is_the_highest_silhouette_among_the_stable_ks():
    trials = [Trial(4, 42, 1.0, 0.70, 0.99), Trial(5, 42, 1.0, 0.69, 1.0), Trial(6, 42, 1.0, 0.71, 0.8)]
    assert choose_k(trials, 0.9).k == 4
    assert choice_reason(trials, 0.9) == (
        "the highest silhouette among the stable k's (4, 5: stability >= 0.9); "
        "k=6 had a higher silhouette but stability 0.800"
    )
    assert choose_k(trials, 0.995).k == 5
    # No stable k: the highest silhouette; nan stability (not measured) is never stable.
    assert choose_k(trials, 1.1).k == 6 and "no k reached stability" in choice_reason(trials, 1.1)
    assert choose_k([Trial(2, 42, 1.0, 0.5), Trial(3, 42, 1.0, 0.6)], 0.9).k == 3
    tie = [Trial(3, 42, 1.0, 0.6, 1.0), Trial(2, 42, 1.0, 0.6, 1.0)]
    assert choose_k(tie, 0.9).k == 2
    assert choose_k([Trial(2, 42, 1.0, float("nan"))], 0.9).k == 2
    assert choose_k([Trial(2, 42, 1.0, float("nan")), Trial(3, 42, 1.0, float("nan"))], 0.9) is None


def test_the_scores_agree_with_scikit_learn():
    rng = np.random.default_rng(3)
    x = np.vstack([rng.normal(c, 1.0, size=(60, 3)) for c in (0.0, 4.0, 9.0)])
    labels = np.repeat([2, 0, 1], 60)
    assert silhouette_sq(x, labels) == pytest.approx(silhouette_score(x, labels, metric="sqeuclidean"))
    noisy = np.where(rng.random(len(labels)) < 0.3, rng.integers(0, 4, len(labels)), labels)
    assert adjusted_rand(labels, noisy) == pytest.approx(adjusted_rand_score(labels, noisy))
    assert adjusted_rand(labels, labels + 7) == 1.0
    assert np.isnan(silhouette_sq(x, np.zeros(len(x), dtype=int)))

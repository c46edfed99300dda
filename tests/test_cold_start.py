"""Cold start on a tiny hand-built shop: four categories of five items, eight users per category who engage
with their category's items (and glance at one item of the next category); brand-new items with no events
are scored from their content and merged into the ALS lists."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from marketlake.coldstart import (
    CONTENT_SOURCE,
    cold_scores,
    fit_cold_model,
    full_regression,
    merge_cold,
)
from marketlake.config import ColdStartConfig, ContentConfig
from marketlake.content import item_content_model, item_vectors
from marketlake.recommend import (
    ITEM,
    ITEM_INDEX,
    USER,
    USER_INDEX,
    AlsParams,
    als_top,
    dense_index,
    fit,
)

CATEGORIES = ("garden", "kitchen", "toys", "books")
PER_CATEGORY, USERS_PER_CATEGORY, TOP_N = 5, 8, 7
NEW = {"garden-new-1": "garden", "garden-new-2": "garden", "garden-new-3": "garden", "toys-new": "toys"}
PARAMS = AlsParams(rank=4, reg_param=0.1, alpha=3.0, max_iter=10)


def category_of_user(user_id: str) -> str:
    return user_id.split("-")[0]


def shop(spark):
    items = [
        (f"{c}-{n}", f"{c} thing number {n}", c, f"brand-{c}", None)
        for c in CATEGORIES
        for n in range(PER_CATEGORY)
    ]
    items += [(item, f"{c} novelty", c, f"brand-{c}", None) for item, c in NEW.items()]
    catalogue = spark.createDataFrame(
        items, "item_id string, title string, category string, brand string, price double"
    )
    pairs = []
    for position, c in enumerate(CATEGORIES):
        following = CATEGORIES[(position + 1) % len(CATEGORIES)]
        for u in range(USERS_PER_CATEGORY):
            user = f"{c}-user{u}"
            for n in range(PER_CATEGORY):
                pairs.append((user, f"{c}-{n}", 1.0 + ((u + n) % 3)))  # engages more with some than others
            pairs.append((user, f"{following}-{u % PER_CATEGORY}", 0.5))
    frame = spark.createDataFrame(pairs, "user_id string, item_id string, strength double")
    return catalogue, frame


def run_cold_start(spark, touched_extra=(), max_per_list=2):
    catalogue, pairs = shop(spark)
    users = dense_index(pairs, USER, USER_INDEX, 4)
    items = dense_index(pairs, ITEM, ITEM_INDEX, 4)
    settings = ColdStartConfig(max_per_list=max_per_list, validation_fraction=0.25)
    vectors = item_vectors(item_content_model(catalogue, ContentConfig()), catalogue)

    def fit_factors(indexed):
        return fit(indexed, PARAMS, 42, 2)

    indexed = pairs.join(users, USER).join(items, ITEM).select(USER_INDEX, ITEM_INDEX, "strength")
    model = fit_factors(indexed)
    cold_items = catalogue.select(ITEM).join(items, ITEM, "left_anti")
    cold = fit_cold_model(spark, pairs, vectors, users, items, fit_factors, settings, 42)
    regression = full_regression(pairs, vectors, model, users, items, settings)
    scores = cold_scores(spark, cold.blend, regression, pairs, vectors, model, users, items, cold_items)
    warm = (
        als_top(model, TOP_N)
        .join(users, USER_INDEX)
        .join(items, ITEM_INDEX)
        .select(
            USER,
            F.col("rank").cast("int").alias("rank"),
            ITEM,
            "score",
            F.lit("als").alias("source"),
            F.lit("v1").alias("model_version"),
            F.to_date(F.lit("2024-06-30")).alias("as_of_date"),
        )
    )
    touched = pairs.select(USER, ITEM).unionByName(
        spark.createDataFrame(list(touched_extra), "user_id string, item_id string")
    )
    merged = merge_cold(warm, scores, touched, settings.max_per_list, TOP_N)
    return warm.toPandas(), merged


@pytest.fixture(scope="module")
def result(spark):
    warm, merged = run_cold_start(spark, touched_extra=[("garden-user0", "garden-new-1")])
    return warm, merged.persist(), merged.toPandas()


def lists(frame):
    return {u: list(g.sort_values("rank")[ITEM]) for u, g in frame.groupby(USER)}


def test_a_new_item_reaches_the_users_of_its_category(result):
    _, _, rows = result
    content = rows[rows["source"] == CONTENT_SOURCE]
    assert set(content[ITEM]) <= set(NEW)
    by_user = lists(rows)
    for user, listed in by_user.items():
        own = [i for i in listed if i.startswith(category_of_user(user) + "-") and i not in NEW]
        for item, category in NEW.items():
            if item not in listed:
                continue
            if category == category_of_user(user):
                continue
            # Another category's new item never outranks the user's own category.
            assert all(listed.index(item) > listed.index(i) for i in own), (user, listed)
    toys_users = [u for u in by_user if category_of_user(u) == "toys"]
    assert all("toys-new" in by_user[u] for u in toys_users)
    garden_users = [u for u in by_user if category_of_user(u) == "garden"]
    assert all(any(i.startswith("garden-new") for i in by_user[u]) for u in garden_users)


def test_at_most_max_per_list_cold_items_and_never_an_item_the_user_touched(result):
    _, _, rows = result
    content = rows[rows["source"] == CONTENT_SOURCE]
    assert content.groupby(USER).size().max() <= 2
    assert not ((content[USER] == "garden-user0") & (content[ITEM] == "garden-new-1")).any()
    assert rows.groupby(USER)["rank"].apply(lambda r: sorted(r) == list(range(1, len(r) + 1))).all()
    assert rows.groupby(USER).size().max() <= TOP_N
    assert not rows.duplicated([USER, ITEM]).any()


def test_warm_rows_keep_their_order_and_scores(result):
    warm, _, rows = result
    before, after = lists(warm), lists(rows[rows["source"] == "als"])
    for user, listed in after.items():
        assert listed == before[user][: len(listed)]
    kept = rows[rows["source"] == "als"].merge(warm, on=[USER, ITEM], suffixes=("", "_warm"))
    assert (kept["score"] == kept["score_warm"]).all()


def test_cap_of_one_and_zero(spark):
    _, one = run_cold_start(spark, max_per_list=1)
    content = one.filter(F.col("source") == CONTENT_SOURCE).groupBy(USER).count()
    assert content.agg(F.max("count")).first()[0] == 1
    warm, none = run_cold_start(spark, max_per_list=0)
    assert none.filter(F.col("source") == CONTENT_SOURCE).count() == 0


def test_identical_reruns(spark, result):
    _, first, _ = result
    _, again = run_cold_start(spark, touched_extra=[("garden-user0", "garden-new-1")])
    assert_df_equality(first, again, ignore_row_order=True)

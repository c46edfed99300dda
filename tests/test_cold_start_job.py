"""The recommend job with cold start on a hand-built shop: brand-new items (no events) reach, through their
content, the lists of the users whose taste matches their category, never more than the cap per list.

The shop: four categories; garden has 4 items and its users have bought 3 of them (bought items are not
recommended), so their lists have room below their own category; the other categories have 9 items and
their users bought 2, so their lists are full of their own category. Three new garden items and one new
books item have no events; one more new garden item is inactive."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.jobs import main
from marketlake.lake import Lake
from marketlake.lake.schema import spark_schema

RUN = dt.date(2024, 6, 30)
TOP_N = 5
SIZES = {"garden": 4, "kitchen": 9, "books": 9, "toys": 9}
BOUGHT = {"garden": 3, "kitchen": 2, "books": 2, "toys": 2}
USERS_PER_CATEGORY = 6
NEW_GARDEN = ("garden-new-1", "garden-new-2", "garden-new-3")
NEW_BOOKS, RETIRED_NEW = "books-new", "garden-new-retired"
WORDS = {
    "garden": "hose rake shovel planter",
    "kitchen": "pan knife kettle grater",
    "books": "novel atlas poetry memoir",
    "toys": "puzzle kite robot marble",
}


def shop_items(spark, with_new: bool = True):
    rows = []
    for category, size in SIZES.items():
        words = WORDS[category].split()
        for n in range(size):
            title = f"{category} {words[n % 4]} {words[(n + 1) % 4]} {n}"
            rows.append((f"{category}-{n}", category, f"{category}-brand", 10.0 + n, title, True))
    if with_new:
        for n, item in enumerate(NEW_GARDEN):
            rows.append((item, "garden", "garden-brand", 12.0 + n, f"garden {WORDS['garden']} new", True))
        rows.append((NEW_BOOKS, "books", "books-brand", 11.0, f"books {WORDS['books']} new", True))
        rows.append((RETIRED_NEW, "garden", "garden-brand", 11.0, f"garden {WORDS['garden']} new", False))
    frame = spark.createDataFrame(
        rows, "item_id string, category string, brand string, price double, title string, active boolean"
    )
    schema = spark_schema(catalog.SILVER_ITEMS)
    return frame.select(
        *[
            F.col(c) if c in frame.columns else F.lit(None).cast(schema[c].dataType).alias(c)
            for c in schema.fieldNames()
        ]
    )


def shop_events(spark):
    """Each user views every item of their category (some twice) and buys BOUGHT of them."""
    rows = []
    for category, size in SIZES.items():
        for u in range(USERS_PER_CATEGORY):
            user = f"{category}-user{u}"
            for n in range(size):
                item = f"{category}-{(n + u) % size}"
                day = dt.datetime(2024, 6, 1 + (n + 3 * u) % 28, 12, tzinfo=dt.timezone.utc)
                kinds = ["view"] * (1 + (n + u) % 2) + (["purchase"] if n < BOUGHT[category] else [])
                rows += [(user, item, kind, day + dt.timedelta(minutes=i)) for i, kind in enumerate(kinds)]
    frame = spark.createDataFrame(
        rows, "user_id string, item_id string, event_type string, event_ts timestamp"
    )
    frame = frame.select(
        F.concat_ws("-", "user_id", "item_id", "event_type", F.col("event_ts").cast("string")).alias(
            "event_id"
        ),
        "*",
        F.to_date("event_ts").alias("event_date"),
    )
    schema = spark_schema(catalog.SILVER_EVENTS)
    return frame.select(
        *[
            F.col(c) if c in frame.columns else F.lit(None).cast(schema[c].dataType).alias(c)
            for c in schema.fieldNames()
        ]
    )


def build_lake(spark, config, root: str, with_new: bool = True) -> Lake:
    lake = Lake(spark, config.lake, root)
    lake.write("silver.items", shop_items(spark, with_new), "overwrite")
    lake.write("silver.events", shop_events(spark), "overwrite", partition_by=["event_date"])
    return lake


def run_recommend(root: str, config_file: str | None = None) -> int:
    argv = [
        "--lake",
        root,
        "--run-date",
        RUN.isoformat(),
        "--no-tune",
        "--no-evaluate",
        "--top-n",
        str(TOP_N),
    ]
    return main("recommend", argv + (["--config", config_file] if config_file else []))


def config_file(tmp_path, cold_start: dict) -> str:
    path = tmp_path / "cold.yaml"
    path.write_text(json.dumps({"recommend": {"cold_start": cold_start}}))  # JSON is YAML
    return str(path)


def lists(lake):
    return lake.read_as_of("gold.user_recommendations", RUN).toPandas()


@pytest.fixture(scope="module")
def shop(spark, config, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cold-shop") / "lake")
    lake = build_lake(spark, config, root)
    assert run_recommend(root) == 0
    return lake, root, lists(lake)


def test_new_items_reach_the_users_of_their_category_and_no_others(shop):
    _, _, rows = shop
    taste = rows.user_id.str.split("-").str[0]
    content = rows[rows.source == "content"]
    assert set(content.item_id) <= {*NEW_GARDEN, NEW_BOOKS}
    garden_users = set(rows.user_id[taste == "garden"])
    assert len(garden_users) == USERS_PER_CATEGORY
    # Every garden user gets new garden items (two: the cap), placed before the other categories' items.
    for user in garden_users:
        listed = rows[rows.user_id == user].sort_values("rank")
        new = listed[listed.source == "content"]
        assert set(new.item_id) <= set(NEW_GARDEN) and len(new) == 2, listed
        others = listed[~listed.item_id.str.startswith("garden-")]
        assert new["rank"].max() < others["rank"].min(), listed
    # Nobody else gets a new garden item, and the inactive new item reaches nobody.
    assert set(content.user_id[content.item_id.isin(NEW_GARDEN)]) == garden_users
    assert RETIRED_NEW not in set(rows.item_id)


def test_lists_keep_their_shape_and_the_cold_model_is_saved_and_logged(shop, spark):
    lake, _, rows = shop
    assert list(rows.columns) == catalog.USER_RECOMMENDATIONS.column_names
    assert rows.groupby("user_id")["rank"].apply(lambda r: sorted(r) == list(range(1, len(r) + 1))).all()
    assert rows.groupby("user_id").size().max() == TOP_N
    assert not rows.duplicated(["user_id", "item_id"]).any()
    models = lake.read("ops.models").filter(F.col("model_name") == "recommend_cold_start").collect()
    assert len(models) == 1
    model = models[0]
    assert model.metrics["cold_items"] == 4  # three new garden items and the new book; not the inactive one
    assert model.metrics["cold_rows"] == (rows.source == "content").sum() == 2 * USERS_PER_CATEGORY
    saved = json.loads(lake.files.read_text(f"{model.path}/cold_start.json"))
    assert set(saved) == {"interacts", "engages", "rank", "weights"}
    assert json.loads(model.params["als_model_version"]) == rows.model_version.iloc[0]


def test_an_identical_rerun_writes_identical_lists(shop, spark):
    lake, root, rows = shop
    assert run_recommend(root) == 0
    again = lists(lake)
    key = ["user_id", "rank"]
    assert_df_equality(
        spark.createDataFrame(again.sort_values(key)),
        spark.createDataFrame(rows.sort_values(key)),
        ignore_row_order=True,
    )
    assert lake.read("gold.user_recommendations").count() == len(rows)


@pytest.mark.slow
def test_the_cap_holds_and_warm_lists_are_unchanged_without_cold_items(shop, spark, config, tmp_path):
    _, root, rows = shop
    copy = str(tmp_path / "capped")
    shutil.copytree(root, copy)
    assert run_recommend(copy, config_file(tmp_path, {"max_per_list": 1})) == 0
    capped = lists(Lake(spark, config.lake, copy))
    content = capped[capped.source == "content"]
    assert content.groupby("user_id").size().max() == 1 and len(content) == USERS_PER_CATEGORY
    # Off, on the same lake: the ALS rows of the cold-start run, in order, are a prefix of the lists without.
    assert run_recommend(copy, config_file(tmp_path, {"enabled": False})) == 0
    off = lists(Lake(spark, config.lake, copy))
    assert (off.source != "content").all()
    for user, listed in rows.groupby("user_id"):
        warm = list(listed[listed.source != "content"].sort_values("rank").item_id)
        assert warm == list(off[off.user_id == user].sort_values("rank").item_id)[: len(warm)], user
    # A catalogue without new items, cold start on: the same lists as with cold start off.
    plain = str(tmp_path / "plain")
    build_lake(spark, config, plain, with_new=False)
    assert run_recommend(plain) == 0
    same = lists(Lake(spark, config.lake, plain))
    columns = ["user_id", "rank", "item_id", "score", "source"]
    assert (
        same[columns]
        .sort_values(columns)
        .reset_index(drop=True)
        .equals(off[columns].sort_values(columns).reset_index(drop=True))
    )

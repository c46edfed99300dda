"""The `movielens_items` mapping over MovieLens 100k's items.tsv: every movie in silver.items, the first
genre as its category, the year and the whole genre list in its title; the ids are the ratings' ids.

The expected figures are read from the file with plain Python."""

from __future__ import annotations

import csv

import pytest
from conftest import SHARED_DATA
from pyspark.sql import functions as F

from marketlake.jobs import main
from marketlake.lake import Lake
from marketlake.mapping import load_mapping

MOVIELENS = SHARED_DATA / "movielens-100k"
ITEMS = MOVIELENS / "items.tsv"
RUN_DATE = ["--run-date", "2024-06-30"]


@pytest.fixture(scope="module")
def movies() -> dict[str, list[str]]:
    """item id -> [title, year, genres] as the file has them."""
    with ITEMS.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows[0] == ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"]
    return {row[0]: row[1:] for row in rows[1:]}


@pytest.fixture(scope="module")
def lake(spark, config, tmp_path_factory) -> Lake:
    root = str(tmp_path_factory.mktemp("movielens-items-lake"))
    args = [
        "--lake",
        root,
        *RUN_DATE,
        "--entity",
        "items",
        "--source",
        str(ITEMS),
        "--mapping",
        "movielens_items",
    ]
    assert main("ingest", args) == 0
    return Lake(spark, config.lake, root)


def test_every_movie_is_one_item(lake, movies):
    assert len(movies) == 1682
    silver = lake.read("silver.items")
    assert silver.count() == len(movies)
    assert {row.item_id for row in silver.select("item_id").collect()} == set(movies)
    runs = lake.read("ops.job_runs").filter(F.col("job") == "ingest").first()
    counts = dict(runs["counts"])
    assert counts["items.records_read"] == counts["items.accepted"] == len(movies), counts
    assert counts["items.rejected"] == counts["items.duplicates"] == 0
    # every rated movie of u.data has its item
    with (MOVIELENS / "u.data").open() as handle:
        rated = {line.split("\t")[1] for line in handle}
    assert rated <= set(movies)


def test_category_is_the_first_genre_and_the_title_holds_year_and_genres(lake, movies):
    silver = {row.item_id: row for row in lake.read("silver.items").collect()}
    for item_id, (title, year, genres) in movies.items():
        item = silver[item_id]
        assert item.category == genres.split()[0], item_id
        assert item.title == f"{title} ({year}) | {genres}", item_id
        assert item.active is True and item.brand is None and item.price is None
    assert silver["1"].title == "Toy Story (1995) | Animation Children's Comedy"
    assert silver["1"].category == "Animation"
    categories = {row.category for row in silver.values()}
    assert {"Drama", "Comedy", "Action", "unknown"} <= categories and len(categories) == 19


def test_the_mapping_ships_in_the_package_and_in_conf():
    assert load_mapping("movielens_items") == load_mapping("conf/sources/movielens_items.yaml")
    assert load_mapping("movielens_items").entity == "items"

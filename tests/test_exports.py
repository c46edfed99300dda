"""activate's user-profile exports, from the hand-made gold inputs of test_activate plus item titles (some of
them formula-like) and scores: the flat CSV files (one row per user, titles, offers, scores; split below a
tiny size limit, every file with its header; safe in a spreadsheet), gold.user_profile_sync (a JSON payload
equal to the flat row), and re-runs (nothing changes when nothing changed; a changed title re-stamps only
the users who have that item)."""

from __future__ import annotations

import csv
import datetime as dt
import glob
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pyspark.sql import functions as F
from test_activate import CAMPAIGNS, RUN_DATE, SALT, SCORED_USERS, USERS, activate, write_inputs, write_scores
from test_export_safety import FORMULA_CHARACTERS, TRICKY, value

from marketlake.activate import TREATMENT
from marketlake.lake import Lake

ITEMS = 4  # fewer than the 6 recommendations per user of write_inputs
MAX_FILE_BYTES = 20_000
TEXT = ["external_id", "segment_name", "rfm_label"]
OFFERS = [f"offer_{c['id']}" for c in CAMPAIGNS]
ITEM_COLUMNS = [f"item_{i}" for i in range(1, ITEMS + 1)]
TITLE_COLUMNS = [f"item_{i}_title" for i in range(1, ITEMS + 1)]
COLUMNS = ["external_id", "segment_name", "rfm_label", "p_purchase", "propensity_decile", *OFFERS]
COLUMNS += ITEM_COLUMNS + TITLE_COLUMNS
STRINGS = [*TEXT, *OFFERS, *ITEM_COLUMNS, *TITLE_COLUMNS]


def title(n: int) -> str | None:
    """Every third item has a tricky title (formulas, quotes, newlines, empty, null)."""
    return TRICKY[n // 3 % len(TRICKY)] if n % 3 == 0 else f"Item {n}, size M"


def write_items(spark, lake: Lake, titles=title) -> None:
    rows = [(f"i{n:02d}", "c", "b", 1.0, titles(n), True) for n in range(50)]
    schema = "item_id string, category string, brand string, price double, title string, active boolean"
    lake.write("silver.items", spark.createDataFrame(rows, schema), "overwrite")


def write_config(tmp_path) -> str:
    path = tmp_path / "profiles.yaml"
    contacts = str(tmp_path / "contacts.csv")
    profiles = {"items": ITEMS, "max_file_bytes": MAX_FILE_BYTES}
    activate_section = {"salt": SALT, "contacts": contacts, "campaigns": CAMPAIGNS, "profiles": profiles}
    path.write_text(yaml.safe_dump({"activate": activate_section}))
    return str(path)


def profile_files(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "exports", "_profiles", RUN_DATE.isoformat(), "*")))


def file_bytes(root: str) -> dict[str, bytes]:
    return {os.path.basename(path): Path(path).read_bytes() for path in profile_files(root)}


def read_profiles(root: str) -> pd.DataFrame:
    """The CSV files as one frame, text decoded (one leading ' dropped), null and empty text both ""."""
    frames = [pd.read_csv(path, dtype=str, keep_default_na=False) for path in profile_files(root)]
    profiles = pd.concat(frames, ignore_index=True)
    profiles[STRINGS] = profiles[STRINGS].map(value)
    return profiles


def sync_table(lake: Lake) -> pd.DataFrame:
    return lake.read("gold.user_profile_sync").toPandas().sort_values("EXTERNAL_ID").reset_index(drop=True)


@pytest.fixture(scope="module")
def profiled(spark, config, tmp_path_factory):
    """activate run twice for RUN_DATE on the same inputs: (lake, root, audience, scores, sync table and file
    bytes after the first run, sync table version after the first run)."""
    tmp_path = tmp_path_factory.mktemp("profiles")
    root = str(tmp_path / "lake")
    lake = Lake(spark, config.lake, root)
    write_inputs(spark, lake, tmp_path)
    write_scores(spark, lake)
    write_items(spark, lake)
    conf = write_config(tmp_path)
    assert activate(root, conf) == 0
    first = {
        "sync": sync_table(lake),
        "version": lake.version("gold.user_profile_sync"),
        "files": file_bytes(root),
    }
    assert activate(root, conf) == 0
    audience = lake.read("gold.campaign_audience").filter(F.col("as_of_date") == RUN_DATE).toPandas()
    scores = lake.read("gold.purchase_propensity").toPandas().set_index("user_id")
    return lake, root, conf, audience, scores, first


def test_one_row_per_user_with_flat_attributes(profiled):
    _, root, _, audience, scores, _ = profiled
    profiles = read_profiles(root)
    assert list(profiles.columns) == COLUMNS
    assert len(profiles) == USERS and profiles.external_id.is_unique
    assert profiles.external_id.tolist() == sorted(f"u{n:05d}" for n in range(USERS))  # across the files
    n = profiles.external_id.str[1:].astype(int)
    assert (
        profiles.segment_name == n.mod(3).map(dict(enumerate(["loyal", "at risk", "window shoppers"])))
    ).all()
    scored = profiles[n < SCORED_USERS].set_index("external_id")
    assert scored.p_purchase.astype(float).tolist() == scores.loc[scored.index, "p_purchase"].tolist()
    assert scored.propensity_decile.astype(int).tolist() == scores.loc[scored.index, "decile"].tolist()
    assert (profiles[n >= SCORED_USERS][["p_purchase", "propensity_decile"]] == "").all().all()
    # offer_<campaign>: the offer in that campaign's treatment group, nothing for control or untargeted users.
    indexed = profiles.set_index("external_id")
    for campaign, column in zip(CAMPAIGNS, OFFERS, strict=True):
        rows = audience[audience.campaign_id == campaign["id"]]
        treated = rows[rows.group == TREATMENT].set_index("user_id").offer
        assert len(treated) < len(rows) or campaign["control_share"] == 0
        assert indexed.loc[treated.index, column].tolist() == treated.tolist()
        assert (indexed.drop(index=treated.index)[column] == "").all()


def test_items_are_the_first_recommendations_with_their_titles(profiled):
    _, root, _, _, _, _ = profiled
    profiles = read_profiles(root)
    n = profiles.external_id.str[1:].astype(int)
    for rank in range(1, ITEMS + 1):
        item = (n + rank) % 50
        assert (profiles[f"item_{rank}"] == item.map("i{:02d}".format)).all()
        assert (profiles[f"item_{rank}_title"] == item.map(lambda i: title(i) or "")).all()
    assert "item_5" not in profiles.columns


def test_files_split_below_the_limit_each_with_its_header(profiled):
    _, root, _, _, _, _ = profiled
    paths = profile_files(root)
    names = [os.path.basename(p) for p in paths]
    assert len(names) > 3 and names == [f"profiles-{i:05d}.csv" for i in range(1, len(names) + 1)]
    header = ",".join(COLUMNS) + "\n"
    sizes = []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        sizes.append(len(data))
        assert data.decode("utf-8").startswith(header)
        with open(path, newline="", encoding="utf-8") as f:
            assert len(list(csv.DictReader(f))) > 0
    assert max(sizes) <= MAX_FILE_BYTES
    # The split is not wasteful: every file but the last holds more than half the limit.
    assert min(sizes[:-1]) > MAX_FILE_BYTES / 2, sizes


def test_no_text_cell_starts_a_formula(profiled):
    _, root, _, _, _, _ = profiled
    tricky_titles = 0
    for path in profile_files(root):
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for column in STRINGS:
                    assert not row[column].startswith(FORMULA_CHARACTERS), (column, row[column])
                tricky_titles += row["item_1_title"].startswith("'")
    assert tricky_titles > 0  # formula-like titles were there, and were neutralised


def test_the_sync_payload_is_the_flat_row(profiled):
    lake, root, _, _, _, _ = profiled
    profiles = read_profiles(root).set_index("external_id")
    sync = sync_table(lake)
    assert list(lake.read("gold.user_profile_sync").columns) == ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"]
    assert sync.EXTERNAL_ID.tolist() == profiles.index.tolist()
    for row in sync.itertuples():
        payload = json.loads(row.PAYLOAD)
        assert list(payload) == COLUMNS[1:]  # every attribute, in file order, null ones included
        flat = profiles.loc[row.EXTERNAL_ID]
        for column, cell in flat.items():
            if column == "p_purchase":
                assert payload[column] == (float(cell) if cell else None)
            elif column == "propensity_decile":
                assert payload[column] == (int(cell) if cell else None)
            else:  # the CSV reads a null and an empty text alike, as ""
                assert (payload[column] or "") == cell, (column, payload[column], cell)
    assert sync.UPDATED_AT.nunique() == 1


def test_a_rerun_changes_nothing(profiled):
    lake, root, _, _, _, first = profiled
    assert lake.version("gold.user_profile_sync") == first["version"]  # nothing committed
    pd.testing.assert_frame_equal(sync_table(lake), first["sync"])
    files = file_bytes(root)
    assert files == first["files"]


def test_a_changed_title_restamps_only_the_users_who_have_the_item(spark, profiled):
    """Runs last in this module: it changes the inputs."""
    lake, root, conf, _, _, first = profiled
    write_items(spark, lake, lambda n: "New title" if n == 7 else title(n))
    assert activate(root, conf) == 0
    before, after = first["sync"], sync_table(lake)
    changed = after.UPDATED_AT != before.UPDATED_AT
    holders = (
        after.EXTERNAL_ID.str[1:]
        .astype(int)
        .map(lambda n: any((n + rank) % 50 == 7 for rank in range(1, ITEMS + 1)))
    )
    assert changed.tolist() == holders.tolist() and holders.any()
    assert (after.UPDATED_AT[changed] > before.UPDATED_AT[changed]).all()
    assert (after.PAYLOAD[~changed] == before.PAYLOAD[~changed]).all()
    assert all("New title" in payload for payload in after.PAYLOAD[changed])


def test_an_older_run_date_leaves_the_sync_table_alone(spark, profiled, tmp_path):
    lake, root, conf, _, _, _ = profiled
    older = RUN_DATE - dt.timedelta(days=1)
    for table in ("gold.user_features", "gold.user_segments", "gold.user_recommendations"):
        rows = lake.read(table).filter(F.col("as_of_date") == RUN_DATE)
        lake.write(table, rows.withColumn("as_of_date", F.lit(older)), "append", partition_by=["as_of_date"])
    version = lake.version("gold.user_profile_sync")
    write_items(spark, lake, lambda n: "Older title")  # would change every payload
    assert activate(root, conf, older) == 0
    assert lake.version("gold.user_profile_sync") == version
    assert len(glob.glob(os.path.join(root, "exports", "_profiles", older.isoformat(), "*.csv"))) > 1

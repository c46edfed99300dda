"""Ingestion against hostile input: bytes that are not UTF-8 (JSON lines, CSV, Parquet), fields too long to
be data, sources rejecting most of what they hold, header-only files, odd file names, a missing pseudonym
key. Every table stays readable by deltalake, polars, duckdb and Spark; a failing run writes nothing;
lineage joins across the manifest, bronze, silver and quarantine.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import random
import re
import uuid
from collections import Counter
from pathlib import Path

import deltalake
import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA
from pyspark.sql import functions as F

from marketlake.errors import ConfigError
from marketlake.ingest import Batch, IngestRequest, RejectRateExceeded, check_reject_rate, ingest
from marketlake.jobs import main
from marketlake.lake import Lake
from marketlake.mapping import load_mapping
from marketlake.runner import JobContext

END = dt.date(2024, 6, 30)
RUN_DATE = ["--run-date", END.isoformat()]
ONLINE_RETAIL = SHARED_DATA / "online-retail-sample" / "OnlineRetail.csv"
EVENT = {"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "2024-06-30T10:00:00Z"}


def event_line(event_id: str, **fields) -> bytes:
    return json.dumps({"event_id": event_id, **EVENT, **fields}).encode()


def lines_as_spark_splits_them(data: bytes) -> list[bytes]:
    """The records of a text file: lines ended by LF, CR or CRLF (Hadoop's LineReader), blank ones aside."""
    return [line for line in re.split(rb"\r\n|\r|\n", data) if line.strip(b" ")]


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def tables_of(root: Path) -> list[str]:
    return sorted(f"{log.parent.parent.name}.{log.parent.name}" for log in root.glob("*/*/_delta_log"))


def read_with_every_reader(spark, lake: Lake, table: str) -> int:
    """Reads the whole table with deltalake, polars, duckdb (over deltalake's dataset) and Spark; returns
    the row count they agree on."""
    path = lake.path(table)
    delta_table = deltalake.DeltaTable(path)
    rows = delta_table.to_pyarrow_table().num_rows
    assert pl.read_delta(path).height == rows, table
    dataset = delta_table.to_pyarrow_dataset()
    with duckdb.connect() as con:
        con.register("t", dataset)
        assert len(con.execute("SELECT * FROM t").fetchall()) == rows, table
    assert len(lake.read(table).collect()) == rows, table
    return rows


def run_counts(lake: Lake) -> dict[str, int]:
    rows = lake.read("ops.job_runs").orderBy(F.col("started_at").desc()).limit(1).collect()
    return dict(rows[0]["counts"])


# ---- one hostile batch of events, ingested once --------------------------------------------------

INVALID_LINES = [
    event_line("e7", channel="web").replace(b'"web"', b'"w\xffb"'),  # a stray byte in a value
    event_line("e8").replace(b'"u1"', b'"u\xe4\xb8"'),  # a multi-byte character cut short
    b'{"event_id": "e9", \xc0\xaf}',  # an overlong encoding, and not JSON either
]
LONG_CHANNEL = "x" * 100_000  # more than the default max_field_bytes (65,536)


@pytest.fixture(scope="module")
def hostile(spark, config, tmp_path_factory):
    """Valid events, invalid UTF-8, a long field, a duplicate and 200 KB of random bytes, ingested once
    with the reject rate allowed to reach 1: (source folder, lake, printed summary)."""
    source = tmp_path_factory.mktemp("hostile-source")
    good = [
        event_line("e1"),
        event_line("e2", channel="app"),
        event_line("e1"),
        event_line("e5", channel=LONG_CHANNEL),
    ]
    (source / "events.json").write_bytes(b"\n".join([*good[:2], *INVALID_LINES, *good[2:], b""]))
    (source / "random.json").write_bytes(random.Random(13).randbytes(200_000))
    root = str(tmp_path_factory.mktemp("hostile-lake"))
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setenv("MARKETLAKE__INGEST__MAX_REJECT_RATE", "1")
        assert main("ingest", ["--lake", root, *RUN_DATE, "--source", str(source)]) == 0
    return source, Lake(spark, config.lake, root), printed.getvalue()


def test_invalid_utf8_is_quarantined_with_its_bytes_and_raw_stays_valid_text(hostile):
    source, lake, _ = hostile
    random_lines = lines_as_spark_splits_them((source / "random.json").read_bytes())
    quarantined = lake.read("quarantine.events").collect()
    with_bytes = [row for row in quarantined if row.raw_bytes is not None]
    assert {bytes(row.raw_bytes) for row in with_bytes} == set(INVALID_LINES) | {
        line for line in random_lines if not is_utf8(line)
    }
    assert all(row.reason == "invalid_utf8" for row in with_bytes)
    assert all(row.reason != "invalid_utf8" for row in quarantined if row.raw_bytes is None)
    # The raw text keeps every valid character (the invalid bytes become U+FFFD).
    (e7,) = [row for row in with_bytes if bytes(row.raw_bytes) == INVALID_LINES[0]]
    assert e7.raw == INVALID_LINES[0].decode("utf-8", errors="replace")

    # bronze.events holds every record's exact bytes: raw_bytes where they were not UTF-8, raw otherwise.
    bronze = lake.read("bronze.events").filter(F.col("source_file").endswith("/random.json")).collect()
    exact = Counter(bytes(row.raw_bytes) if row.raw_bytes is not None else row.raw.encode() for row in bronze)
    assert exact == Counter(random_lines)
    assert sum(row.raw_bytes is not None for row in bronze) == sum(not is_utf8(line) for line in random_lines)


def test_every_table_stays_readable_by_every_reader(spark, hostile):
    _, lake, _ = hostile
    tables = tables_of(Path(lake.root))
    assert {"bronze.events", "silver.events", "quarantine.events", "ops.ingested_files"} <= set(tables)
    for table in tables:
        assert read_with_every_reader(spark, lake, table) > 0


def test_a_field_longer_than_max_field_bytes_is_quarantined(hostile):
    _, lake, _ = hostile
    assert [r.event_id for r in lake.read("silver.events").orderBy("event_id").collect()] == ["e1", "e2"]
    (long,) = lake.read("quarantine.events").filter(F.col("raw").contains(LONG_CHANNEL)).collect()
    assert long.reason == "field_too_long:channel"


def test_lineage_joins_and_the_manifest_counts_each_files_records(hostile):
    source, lake, printed = hostile
    manifest = lake.read("ops.ingested_files")
    lineage = ["source_file", "batch_id", "ingested_at"]
    for table in ("bronze.events", "silver.events", "quarantine.events"):
        rows = lake.read(table)
        assert rows.count() > 0
        assert rows.join(manifest.select(*lineage), lineage, "left_anti").count() == 0, table
    bronze_per_file = {
        r.source_file: r["count"] for r in lake.read("bronze.events").groupBy("source_file").count().collect()
    }
    recorded = {r.source_file: r.records for r in manifest.collect()}
    assert recorded == bronze_per_file
    assert recorded == {
        (source / name).resolve().as_uri().replace("file:///", "file:/"): len(
            lines_as_spark_splits_them((source / name).read_bytes())
        )
        for name in ("events.json", "random.json")
    }
    # Conservation, in the counts and in the printed summary.
    counts = {k.removeprefix("events."): v for k, v in run_counts(lake).items()}
    assert (
        counts["records_read"]
        == sum(recorded.values())
        == counts["accepted"] + counts["rejected"] + counts["duplicates"]
    )
    assert (counts["accepted"], counts["duplicates"]) == (2, 1)
    assert (
        f"{counts['records_read']:,} records read = 2 accepted + {counts['rejected']:,} rejected + 1 duplicates"
        in printed
    )


# ---- the reject-rate policy ------------------------------------------------------------------------


def test_a_source_rejecting_too_much_fails_the_run_and_writes_nothing(spark, config, tmp_path, capsys):
    source = tmp_path / "events"
    source.mkdir()
    (source / "a-good.json").write_bytes(b"\n".join([event_line("e1"), event_line("e2")]))
    garbage = random.Random(5).randbytes(20_000)
    (source / "b-garbage.json").write_bytes(garbage)
    root = tmp_path / "lake"
    assert main("ingest", ["--lake", str(root), *RUN_DATE, "--source", str(source)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    garbage_lines = len(lines_as_spark_splits_them(garbage))
    assert f"{garbage_lines:,} of {garbage_lines + 2:,} records read were rejected" in err
    assert f"b-garbage.json ({garbage_lines:,}/{garbage_lines:,} rejected)" in err
    assert "max_reject_rate 0.5" in err and "top reasons: invalid_utf8 " in err
    assert tables_of(root) == ["ops.job_runs"]
    (run,) = Lake(spark, config.lake, str(root)).read("ops.job_runs").collect()
    assert run.status == "failed" and run.counts["events.records_read"] == garbage_lines + 2


def test_the_reject_rate_limit_comes_from_the_mapping_or_else_the_config(config, tmp_path):
    mapping_file = tmp_path / "lenient.yaml"
    mapping_file.write_text("name: lenient\nentity: events\nformat: json\nmax_reject_rate: 0.9\n")
    lenient, default = load_mapping(str(mapping_file)), load_mapping("shop_events")
    tally = [
        {"_source_file": "file:/in/a.json", "_outcome": "accepted", "_reason": None, "count": 2},
        {"_source_file": "file:/in/b.json", "_outcome": "rejected", "_reason": "malformed_json", "count": 5},
        {"_source_file": "file:/in/b.json", "_outcome": "rejected", "_reason": "invalid_utf8", "count": 1},
        {"_source_file": "file:/in/b.json", "_outcome": "blank", "_reason": None, "count": 4},
    ]
    counts = {
        "records_read": 8,
        "accepted": 2,
        "rejected": 6,
        "duplicates": 0,
        "rejected.malformed_json": 5,
        "rejected.invalid_utf8": 1,
    }

    def batch(mapping):
        return Batch(IngestRequest("events", "/in", mapping, "json"), [], counts, tally)

    check_reject_rate(batch(lenient), config.ingest, [])  # 6/8 = 0.75, within the mapping's 0.9
    with pytest.raises(RejectRateExceeded) as failed:
        check_reject_rate(batch(default), config.ingest, [])  # above the config's 0.5
    assert (
        "Most rejected: file:/in/b.json (6/6 rejected); top reasons: malformed_json 5, invalid_utf8 1"
        in str(failed.value)
    )
    strict = config.ingest.model_copy(update={"max_reject_rate": 0.8})
    check_reject_rate(batch(default), strict, [])


def test_no_request_of_a_run_writes_until_every_request_is_read_and_checked(spark, config, tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item_id,category,price\ni1,toys,2.5\ni2,books,9\n")
    garbage = tmp_path / "events"
    garbage.mkdir()
    (garbage / "x.json").write_bytes(random.Random(3).randbytes(5_000))
    csv_events = tmp_path / "events.csv"
    csv_events.write_text("id,who\n1,u1\n")
    missing_column = tmp_path / "bad.yaml"
    missing_column.write_text("name: bad\nformat: csv\ncolumns:\n  user_id: NoSuchColumn\n")
    lake = Lake(spark, config.lake, str(tmp_path / "lake"))
    ctx = JobContext("ingest", spark, config, lake, END, uuid.uuid4().hex)
    items_request = IngestRequest("items", str(items), load_mapping("shop_items"), "csv")

    with pytest.raises(RejectRateExceeded):
        ingest(
            ctx,
            [items_request, IngestRequest("events", str(garbage), load_mapping("shop_events"), "json")],
            config.ingest,
        )
    with pytest.raises(ConfigError, match="'NoSuchColumn' is not in the source"):
        ingest(
            ctx,
            [
                items_request,
                IngestRequest("events", str(csv_events), load_mapping(str(missing_column)), "csv"),
            ],
            config.ingest,
        )
    assert tables_of(tmp_path / "lake") == []


# ---- checks before anything is written -------------------------------------------------------------


def test_a_missing_pseudonym_key_exits_2_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MARKETLAKE__INGEST__PSEUDONYMISE_USER_IDS", "true")
    monkeypatch.delenv("MARKETLAKE_PSEUDONYM_KEY", raising=False)
    root = tmp_path / "lake"
    shop = root / "landing" / "shop"
    (shop / "events").mkdir(parents=True)
    (shop / "items.csv").write_text("item_id,category\ni1,toys\n")
    (shop / "users.csv").write_text("user_id,region\nu1,north\n")
    (shop / "events" / "day.json").write_bytes(event_line("e1") + b"\n")
    for argv in ([], ["--source", str(shop / "events")]):  # all three entities (items first), events alone
        assert main("ingest", ["--lake", str(root), *RUN_DATE, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "MARKETLAKE_PSEUDONYM_KEY is not set" in err and len(err.splitlines()) == 1
        assert tables_of(root) == []


def test_a_header_only_csv_is_nothing_to_ingest(spark, config, tmp_path, capsys):
    source = tmp_path / "OnlineRetail-empty.csv"
    source.write_text(ONLINE_RETAIL.read_text().splitlines()[0] + "\n")
    root = tmp_path / "lake"
    assert main("ingest", ["--lake", str(root), "--source", str(source), "--mapping", "online_retail"]) == 0
    out = capsys.readouterr().out
    assert "events: nothing to ingest: the 1 new file(s) hold no records" in out
    assert tables_of(root) == ["ops.job_runs"]
    counts = run_counts(Lake(spark, config.lake, str(root)))
    assert (counts["events.files_new"], counts["events.records_read"]) == (1, 0)


# ---- CSV and Parquet -------------------------------------------------------------------------------


def test_csv_and_parquet_with_invalid_bytes_are_quarantined_as_invalid_utf8(spark, config, tmp_path):
    users = tmp_path / "users.csv"
    users.write_bytes(
        b"user_id,email,region\nu1,a@example.com,north\nu2,b@example.com,s\xffd\nu3,c@example.com,\xc3\xa9ast\n"
    )
    items = tmp_path / "items.parquet"
    category = pa.array([b"toys", b"b\xffks", b"games"], pa.binary()).view(
        pa.string()
    )  # not checked by pyarrow
    thumbnail = pa.array([b"\x89PNG\r\n\x1a\n\x00", None, b"\xff\xd8\xff"], pa.binary())  # bytes, not text
    pq.write_table(
        pa.table({"item_id": ["i1", "i2", "i3"], "category": category, "thumbnail": thumbnail}), items
    )
    root = str(tmp_path / "lake")
    for entity, source, fmt in (("users", users, "csv"), ("items", items, "parquet")):
        argv = ["--lake", root, *RUN_DATE, "--entity", entity, "--source", str(source), "--format", fmt]
        assert main("ingest", argv) == 0
    lake = Lake(spark, config.lake, root)

    (user,) = lake.read("quarantine.users").collect()
    assert (user.reason, user.raw, bytes(user.raw_bytes)) == (
        "invalid_utf8",
        '{"user_id":"u2","region":"s\ufffdd"}',
        b'{"user_id":"u2","region":"s\xffd"}',
    )
    regions = {r.user_id: r.region for r in lake.read("silver.users").collect()}
    assert regions == {"u1": "north", "u3": "\u00e9ast"}

    (item,) = lake.read("quarantine.items").collect()
    assert item.reason == "invalid_utf8" and b'"category":"b\xffks"' in bytes(item.raw_bytes)
    assert json.loads(item.raw) == {"item_id": "i2", "category": "b\ufffdks"}
    assert sorted(r.item_id for r in lake.read("silver.items").collect()) == ["i1", "i3"]
    for table in tables_of(Path(root)):
        read_with_every_reader(spark, lake, table)


# ---- file names ------------------------------------------------------------------------------------


def test_odd_file_names_are_read_and_spelled_alike_everywhere(spark, config, tmp_path):
    source = tmp_path / "in dir [1]"
    source.mkdir()
    (source / "day #1 {a}*.json").write_bytes(
        b"\n".join([event_line("e1"), event_line("e2", event_type="nope")])
    )
    root = str(tmp_path / "lake")
    assert main("ingest", ["--lake", root, *RUN_DATE, "--source", str(source)]) == 0
    lake = Lake(spark, config.lake, root)
    (manifest,) = lake.read("ops.ingested_files").collect()
    assert manifest.source_file.startswith("file:/") and not manifest.source_file.startswith("file://")
    assert manifest.source_file.endswith("/in%20dir%20%5B1%5D/day%20%231%20%7Ba%7D*.json")
    assert manifest.records == 2
    for table in ("bronze.events", "silver.events", "quarantine.events"):
        assert {r.source_file for r in lake.read(table).collect()} == {manifest.source_file}, table

    # Runs before this one spelled local files file:///...: their files still count as ingested.
    old_spelling = lake.read("ops.ingested_files").withColumn(
        "source_file", F.regexp_replace("source_file", "^file:/", "file:///")
    )
    lake.write("ops.ingested_files", old_spelling, mode="overwrite")
    assert main("ingest", ["--lake", root, *RUN_DATE, "--source", str(source)]) == 0
    assert run_counts(lake)["events.files_new"] == 0

"""The erase job: every trace of a subject gone from every file under the lake root (the residue scanner),
every other row unchanged, an idempotent re-run, and suppression of a re-sent file."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality

from marketlake.erase import (
    TOKEN,
    as_bytes,
    mention,
    scrub_csv,
    scrub_lines,
    scrub_parquet,
    without_subjects,
)
from marketlake.ingest.pseudonym import pseudonym

RUN_DATE = "2024-06-30"
KEY = "an-erasure-key-for-tests-0123456789"


@pytest.fixture(autouse=True)
def erasure_key(monkeypatch):
    monkeypatch.setenv("MARKETLAKE_ERASURE_KEY", KEY)


# ---- the residue scanner ---------------------------------------------------------------------------


def _pattern(tokens: set[str]) -> re.Pattern[bytes]:
    words = "|".join(
        re.escape(t.encode("utf-8")).decode("latin-1") for t in sorted(tokens, key=len, reverse=True)
    )
    return re.compile(rf"(?<![A-Za-z0-9_])(?:{words})(?![A-Za-z0-9_])".encode("latin-1"), re.IGNORECASE)


def residue(root: str, tokens: set[str]) -> list[str]:
    """Every file under `root` (raw bytes; Parquet also decoded) that holds one of `tokens` as a word:
    '<file>: <how>' per finding. Tokens are never printed, only which of them (by position) was found."""
    pattern = _pattern(tokens)
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            data = Path(path).read_bytes()
            if pattern.search(data):
                found.append(f"{os.path.relpath(path, root)}: raw bytes")
            if name.endswith(".parquet"):
                try:
                    table = pq.read_table(io.BytesIO(data))
                except Exception:  # noqa: BLE001 - a file that is not Parquet after all was scanned as bytes
                    continue
                text = json.dumps(table.to_pylist(), default=str).encode("utf-8")
                if pattern.search(text):
                    found.append(f"{os.path.relpath(path, root)}: decoded Parquet")
    return found


def test_the_scanner_finds_a_word_and_not_a_longer_id(tmp_path):
    (tmp_path / "a.json").write_text('{"user_id":"u000123"}\n')
    (tmp_path / "b.json").write_text('{"user_id":"u0001234"}\n')
    pq.write_table(__import__("pyarrow").table({"user_id": ["x", "U000123"]}), tmp_path / "c.parquet")
    found = residue(str(tmp_path), {"u000123"})
    assert "a.json: raw bytes" in found and "c.parquet: decoded Parquet" in found  # (any case: stricter)
    assert not [f for f in found if f.startswith("b.json")]


# ---- pure parts ------------------------------------------------------------------------------------


def test_scrub_csv_removes_whole_records_and_keeps_the_others_byte_for_byte():
    data = b'user_id,email,note\nu1,a@x.org,"two\nlines"\nu10,b@x.org,plain\n"u2",C@X.org,"say ""u1"""\n'
    out, removed = scrub_csv(data, as_bytes(["u1", "c@x.org"]))
    assert removed == 2
    assert out == b"user_id,email,note\nu10,b@x.org,plain\n"


def test_scrub_lines_matches_words_not_substrings():
    data = b'{"user_id":"u1","x":1}\n{"user_id":"u10"}\r\n{"user_id":"U1"}\n'
    out, removed = scrub_lines(data, as_bytes(["u1"]))
    assert removed == 1
    assert out == b'{"user_id":"u10"}\r\n{"user_id":"U1"}\n'


def test_scrub_parquet_drops_rows_by_text_list_and_factor_id():
    import pyarrow as pa

    table = pa.table(
        {"id": [0, 1, 2, 3], "user_id": ["u1", "u2", "u3", "u4"], "items": [["a"], ["u2"], [], None]}
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    out, removed = scrub_parquet(sink.getvalue(), ["u1", "u2"], drop_ids={3})
    assert removed == 3
    assert pq.read_table(io.BytesIO(out)).column("user_id").to_pylist() == ["u3"]


def test_mention_finds_a_subject_in_every_kind_of_column(spark):
    rows = [
        ("u1", None, None, None, "keep"),
        ("u10", '{"user_id":"u1"}', None, None, "raw"),
        ("u10", '{"user_id":"u10"}', None, ["i1", "u1"], "array"),
        ("u10", None, bytearray(b'\xff"user_id":"u1"'), None, "bytes"),
        ("u10", '{"email":"Ann@Example.org"}', None, None, "email"),
        ("u10", '{"user_id":"u10"}', None, ["i1"], "none"),
    ]
    frame = spark.createDataFrame(
        rows, "user_id string, raw string, raw_bytes binary, items array<string>, why string"
    )
    marked = {r["why"]: r[TOKEN] for r in frame.transform(mention(["u1", "ann@example.org"])).collect()}
    assert marked == {
        "keep": "u1",
        "raw": "u1",
        "array": "u1",
        "bytes": "u1",
        "email": "ann@example.org",
        "none": None,
    }
    kept = frame.transform(without_subjects(["u1", "ann@example.org"]))
    assert_df_equality(kept, frame.filter("why = 'none'"), ignore_row_order=True)


def test_suppressed_marks_an_erased_subjects_records(spark):
    from marketlake.ingest.transform import ERASED_SUBJECT, suppressed
    from marketlake.privacy import ErasedHashes

    key = KEY.encode()
    frame = spark.createDataFrame(
        [("u1", None), ("u2", "unparseable_ts"), ("u3", None)], "user_id string, _reason string"
    )
    erased = ErasedHashes(key, frozenset({pseudonym(key, "u1"), pseudonym(key, "u2")}))
    reasons = {r["user_id"]: r["_reason"] for r in suppressed(frame, erased).collect()}
    assert reasons == {"u1": ERASED_SUBJECT, "u2": ERASED_SUBJECT, "u3": None}
    assert suppressed(frame, None) is frame


def test_subjects_file_and_usage_errors(tmp_path, config):
    from marketlake.errors import UsageError
    from marketlake.jobs import get_job
    from marketlake.jobs.erase import subject_lines, validate
    from marketlake.runner import build_parser

    assert subject_lines("u1\n\n# a comment\n Ann@Example.org \nu1\n") == ["u1", "ann@example.org"]
    parser = build_parser(get_job("erase"))
    with pytest.raises(UsageError, match="give --subjects"):
        validate(parser.parse_args([]), config)
    empty = tmp_path / "none.txt"
    empty.write_text("\n# nobody\n")
    with pytest.raises(UsageError, match="names no subject"):
        validate(parser.parse_args(["--subjects", str(empty)]), config)
    with pytest.raises(UsageError, match="no such file"):
        validate(parser.parse_args(["--subjects", str(tmp_path / "missing.txt")]), config)


# ---- a small hand-made lake: the job end to end (fast) ---------------------------------------------


def _small_lake(spark, root: str) -> None:
    from marketlake.config import LakeConfig
    from marketlake.lake import Lake

    lake = Lake(spark, LakeConfig(engine="delta-rs"), root)
    day = dt.date(2024, 6, 30)
    lines = [f'{{"event_id":"e{i}","user_id":"u{i % 4}","item_id":"i{i % 3}"}}' for i in range(12)]
    bronze = spark.createDataFrame(
        [(line, "file:/x/events.json", 999, "b1", dt.datetime(2024, 6, 30), day, None) for line in lines],
        "raw string, source_file string, source_size bigint, batch_id string, ingested_at timestamp, "
        "ingest_date date, raw_bytes binary",
    )
    lake.write("bronze.events", bronze, partition_by=["ingest_date"])
    features = spark.createDataFrame(
        [(f"u{u}", float(u), d) for u in range(4) for d in (day, day - dt.timedelta(days=1))],
        "user_id string, recency_days double, as_of_date date",
    )
    lake.write("gold.user_features", features, partition_by=["as_of_date"])
    # Two more versions of the features, so that old files and log entries hold u1 too.
    lake.overwrite_as_of("gold.user_features", features.filter(f"as_of_date = '{day}'"), day)


def test_erase_on_a_small_lake_leaves_no_residue_and_is_idempotent(spark, tmp_path):
    import polars as pl

    from marketlake.jobs import main

    root = str(tmp_path / "lake")
    _small_lake(spark, root)
    assert residue(root, {"u1"})  # the scanner sees the subject before
    before = pl.read_delta(f"{root}/gold/user_features")

    assert main("erase", ["--lake", root, "--run-date", RUN_DATE, "--user-id", "u1"]) == 0
    assert residue(root, {"u1"}) == []
    after = pl.read_delta(f"{root}/gold/user_features")
    assert after.sort(["user_id", "as_of_date"]).equals(
        before.filter(pl.col("user_id") != "u1").sort(["user_id", "as_of_date"])
    )
    assert pl.read_delta(f"{root}/bronze/events").height == 9

    erasures = pl.read_delta(f"{root}/ops/erasures")
    assert erasures.height == 1
    row = erasures.row(0, named=True)
    assert row["status"] == "erased" and "u1" not in json.dumps(row, default=str)
    assert dict(row["rows_removed"]) == {"bronze.events": 3, "gold.user_features": 2}

    # The run's own record withholds the id.
    runs = pl.read_delta(f"{root}/ops/job_runs")
    assert "u1" not in runs.filter(pl.col("job") == "erase")["arguments"][0]

    # A re-run finds nothing, records nothing, and leaves every table at its version.
    versions = {t: _version(root, t) for t in ("bronze/events", "gold/user_features", "ops/erasures")}
    assert main("erase", ["--lake", root, "--run-date", RUN_DATE, "--user-id", "u1"]) == 0
    assert {t: _version(root, t) for t in versions} == versions
    runs = pl.read_delta(f"{root}/ops/job_runs").filter(pl.col("job") == "erase").sort("started_at")
    assert _counts(runs["counts"].to_list()[-1])["subjects_already_erased"] == 1


def _counts(value) -> dict:
    """A map column as polars hands it over: a dict, or a list of key/value structs."""
    if isinstance(value, dict):
        if set(value) == {"key", "value"} and isinstance(value["key"], list):
            return dict(zip(value["key"], value["value"], strict=True))
        return dict(value)
    return {e["key"]: e["value"] for e in value}


def _version(root: str, table: str) -> int:
    from deltalake import DeltaTable

    return DeltaTable(f"{root}/{table}").version()


# ---- the demo lake: the whole pipeline, then erasure (slow) ---------------------------------------


@pytest.fixture(scope="module")
def demo_lake(spark, tmp_path_factory):
    """A tiny shop, generated into the lake's landing folder and run through the whole pipeline."""
    from marketlake.jobs import main

    base = tmp_path_factory.mktemp("erase-demo")
    small = base / "small.yaml"
    small.write_text(
        "generate: {users: 60, items: 25, events: 2500, days: 10}\n"
        "propensity: {horizon_days: 1, models: [logistic_regression]}\n"
    )
    root = str(base / "lake")
    os.environ["MARKETLAKE_ERASURE_KEY"] = KEY
    code = main("pipeline", ["--lake", root, "--run-date", RUN_DATE, "--config", str(small), "--generate"])
    assert code == 0
    return root, str(small)


def _users(root: str) -> list[tuple[str, str]]:
    import polars as pl

    users = pl.read_csv(f"{root}/landing/shop/users.csv")
    return list(zip(users["user_id"].to_list(), users["email"].to_list(), strict=True))


def _contents(root: str) -> dict[str, list[tuple[str, ...]]]:
    """Every table's rows as sorted tuples of text (polars, independent of the job's own Spark code)."""
    import polars as pl

    tables = {}
    for layer in sorted(os.listdir(root)):
        if layer in ("landing", "exports", "reports", "models", "_checkpoints"):
            continue
        for name in sorted(os.listdir(f"{root}/{layer}")):
            frame = pl.read_delta(f"{root}/{layer}/{name}")
            tables[f"{layer}.{name}"] = (
                [
                    tuple(json.dumps(v, default=str, sort_keys=True) for v in row.values())
                    for row in frame.to_dicts()
                ],
                frame.columns,
            )
    return tables


@pytest.mark.slow
def test_erasure_of_a_demo_lake(spark, demo_lake, tmp_path):
    import polars as pl

    from marketlake.jobs import main

    source, config = demo_lake
    root = str(tmp_path / "lake")
    shutil.copytree(source, root)
    users = _users(root)
    # Two subjects by id (the second by its email too), one by email only; and one who bought.
    (id_a, email_a), (id_b, email_b), (id_c, email_c) = users[3], users[7], users[11]
    subjects = tmp_path / "subjects.txt"
    subjects.write_text(f"{id_a}\n{id_b}\n{email_b}\n{email_c}\n")
    tokens = {id_a, id_b, id_c, email_a, email_b, email_c}
    assert residue(root, tokens), "the subjects should be in the demo lake before the erasure"
    before = _contents(root)
    resent = tmp_path / "resent"
    shutil.copytree(f"{root}/landing/shop/events", resent)

    assert (
        main(
            "erase", ["--lake", root, "--run-date", RUN_DATE, "--config", config, "--subjects", str(subjects)]
        )
        == 0
    )

    # The scanner finds nothing anywhere under the lake root.
    assert residue(root, tokens) == []

    # Every other row is unchanged: each table is what it held minus the rows naming a subject (bronze and
    # the manifest: the rewritten landing files' sizes aside; ops: the erasure's own rows aside).
    after = _contents(root)
    word = _pattern(tokens)
    for table, (rows, columns) in before.items():
        if table in ("ops.job_runs", "ops.erasures"):
            continue
        expected = sorted(r for r in rows if not any(word.search(v.encode()) for v in r))
        got = sorted(after[table][0])
        if table in ("bronze.events", "ops.ingested_files"):
            size = columns.index("source_size" if table == "bronze.events" else "size")
            expected = sorted(r[:size] + r[size + 1 :] for r in expected)
            got = sorted(r[:size] + r[size + 1 :] for r in got)
        assert got == expected, f"{table}: other rows changed"
    erasures = pl.read_delta(f"{root}/ops/erasures")
    assert erasures.height == 4 and set(erasures["status"]) == {"erased"}

    # Idempotent: a re-run changes no table (but for its own ops.job_runs row).
    tables = [t.replace(".", "/") for t in before if t != "ops.job_runs"]
    versions = {t: _version(root, t) for t in tables}
    assert (
        main(
            "erase", ["--lake", root, "--run-date", RUN_DATE, "--config", config, "--subjects", str(subjects)]
        )
        == 0
    )
    assert {t: _version(root, t) for t in tables} == versions
    assert residue(root, tokens) == []

    # Suppression: the old events files, sent again, bring the subjects back nowhere.
    code = main(
        "ingest", ["--lake", root, "--run-date", RUN_DATE, "--config", config, "--source", str(resent)]
    )
    assert code == 0
    run = (
        pl.read_delta(f"{root}/ops/job_runs")
        .filter(pl.col("job") == "ingest")
        .sort("started_at")
        .row(-1, named=True)
    )
    counts = _counts(run["counts"])
    assert counts["events.erased_subject"] > 0
    assert residue(root, tokens) == []

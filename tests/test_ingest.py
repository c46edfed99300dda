"""Ingestion: conservation, quarantine reasons, deduplication across runs, idempotence, PII, mappings.

A small dirty shop (300 users, 30,000 events, 3% dirty lines) is generated once for the module and
ingested once through the `ingest` command; the expected figures come from the generator's truth files
(truth/dirty/ lists every dirty line with its reason), read with plain Python.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from chispa import assert_df_equality
from conftest import SHARED_DATA
from pyspark.sql import functions as F

from marketlake.demo import ShopSpec, generate_shop
from marketlake.jobs import main
from marketlake.lake import Lake

END = dt.date(2024, 6, 30)
SPEC = ShopSpec(users=300, items=60, events=30_000, seed=5, dirty_rate=0.03, end_date=END)
RUN_DATE = ["--run-date", END.isoformat()]
ONLINE_RETAIL = SHARED_DATA / "online-retail-sample" / "OnlineRetail.csv"
MOVIELENS = SHARED_DATA / "movielens-100k" / "u.data"


@pytest.fixture(scope="module")
def shop(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("dirty-shop")
    counts = generate_shop(spark, SPEC, str(out))
    return out, counts


@pytest.fixture(scope="module")
def ingested(spark, config, shop, tmp_path_factory):
    """The shop ingested once (events, users, items) into a fresh lake."""
    out, _ = shop
    root = str(tmp_path_factory.mktemp("ingest-lake"))
    for entity, source in (("items", "items.csv"), ("users", "users.csv"), ("events", "events")):
        assert (
            main("ingest", ["--lake", root, *RUN_DATE, "--entity", entity, "--source", str(out / source)])
            == 0
        )
    return Lake(spark, config.lake, root)


def run_counts(lake: Lake, last: int = 1) -> dict[str, int]:
    rows = (
        lake.read("ops.job_runs")
        .filter(F.col("job") == "ingest")
        .orderBy(F.col("started_at").desc())
        .limit(last)
    )
    return dict(rows.collect()[-1]["counts"])


def truth_dirty(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(out.glob("truth/dirty/date=*/*.json"))
        for line in path.read_text().splitlines()
    ]


def table_state(lake: Lake, table: str):
    return lake.read(table).drop("batch_id", "ingested_at")


# ---- generated dirty data ------------------------------------------------------------------------


def test_conservation_matches_the_planted_dirt(ingested, shop):
    out, truth = shop
    counts = run_counts(ingested)
    assert counts["events.records_read"] == truth["events"]
    assert counts["events.records_read"] == (
        counts["events.accepted"] + counts["events.rejected"] + counts["events.duplicates"]
    )
    assert counts["events.accepted"] == truth["valid_events"]
    assert counts["events.duplicates"] == truth["dirty_exact_resend"]
    assert counts["events.rejected"] == truth["dirty"] - truth["dirty_exact_resend"]


def test_every_dirty_line_is_quarantined_with_its_reason(ingested, shop):
    out, _ = shop
    expected = Counter((d["raw"], d["reason"]) for d in truth_dirty(out) if d["kind"] != "exact_resend")
    quarantined = Counter(
        (r.raw, r.reason) for r in ingested.read("quarantine.events").select("raw", "reason").collect()
    )
    assert quarantined == expected
    kinds = {reason.split(":")[0] for _, reason in expected}
    assert kinds == {
        "malformed_json",
        "missing",
        "unknown_event_type",
        "negative_price",
        "unparseable_ts",
        "future_ts",
        "conflicting_duplicate",
    }
    files = {
        r.source_file for r in ingested.read("quarantine.events").select("source_file").distinct().collect()
    }
    assert files and all(re.search(r"/events/date=\d{4}-\d\d-\d\d/part-\d+\.json$", f) for f in files)


def test_silver_events_are_unique_typed_and_in_their_own_date(ingested, shop):
    _, truth = shop
    silver = ingested.read("silver.events")
    assert silver.count() == truth["valid_events"] == silver.select("event_id").distinct().count()
    types = dict(silver.dtypes)
    assert (types["event_ts"], types["event_date"], types["quantity"], types["price"], types["revenue"]) == (
        "timestamp",
        "date",
        "int",
        "double",
        "double",
    )
    assert silver.filter(F.col("event_date") != F.to_date("event_ts")).count() == 0
    purchases = silver.filter(F.col("event_type") == "purchase")
    assert purchases.filter(F.abs(F.col("revenue") - F.col("quantity") * F.col("price")) > 1e-9).count() == 0
    assert silver.filter((F.col("event_type") != "purchase") & (F.col("revenue") != 0)).count() == 0
    assert purchases.count() > 0 and purchases.filter(F.col("order_id").isNull()).count() == 0
    # Late events arrive in the next day's file and land in the date they happened.
    file_date = F.to_date(F.regexp_extract("source_file", r"date=(\d{4}-\d\d-\d\d)", 1))
    assert silver.filter(F.col("event_date") < file_date).count() == truth["late_events"]
    assert silver.filter(F.col("event_date") > file_date).count() == 0


def test_a_conflicting_duplicate_keeps_the_first_arrival(ingested, shop):
    out, _ = shop
    conflicts = [d for d in truth_dirty(out) if d["kind"] == "conflicting_duplicate"][:20]
    silver = {
        r.event_id: r
        for r in ingested.read("silver.events")
        .filter(F.col("event_id").isin([d["event_id"] for d in conflicts]))
        .collect()
    }
    for dirty in conflicts:
        late = json.loads(dirty["raw"])
        kept = silver[dirty["event_id"]]
        differs = (
            kept.event_ts
            != dt.datetime.fromisoformat(late["ts"]).astimezone(dt.timezone.utc).replace(tzinfo=None)
            or kept.price != late.get("price")
            or kept.channel != late.get("channel")
        )
        assert differs, dirty


def test_a_second_ingest_is_a_no_op_and_a_forced_one_keeps_the_contents(spark, ingested, shop):
    out, _ = shop
    tables = ["bronze.events", "silver.events", "quarantine.events", "silver.users", "silver.items"]
    versions = {t: ingested.version(t) for t in tables}
    before = {t: table_state(ingested, t).cache() for t in tables}
    for t in tables:
        before[t].count()

    assert main("ingest", ["--lake", ingested.root, *RUN_DATE, "--source", str(out / "events")]) == 0
    assert {t: ingested.version(t) for t in tables} == versions
    again = run_counts(ingested)
    assert again["events.files_new"] == 0 and again["events.records_read"] == 0

    for entity, source in (("users", "users.csv"), ("events", "events")):
        assert (
            main(
                "ingest",
                [
                    "--lake",
                    ingested.root,
                    *RUN_DATE,
                    "--entity",
                    entity,
                    "--source",
                    str(out / source),
                    "--force",
                ],
            )
            == 0
        )
    forced = run_counts(ingested)
    assert forced["events.accepted"] == 0 and forced["events.quarantined_new"] == 0
    assert forced["events.records_read"] == forced["events.duplicates"] + forced["events.rejected"]
    for t in tables:
        assert_df_equality(
            table_state(ingested, t), before[t], ignore_row_order=True, ignore_column_order=True
        )
        before[t].unpersist()


def test_no_pii_reaches_silver(ingested, shop):
    out, _ = shop
    emails = set(pd.read_csv(out / "users.csv")["email"])
    assert emails and all("@" in e for e in emails)
    for table in ("silver.users", "silver.items", "silver.events"):
        frame = ingested.read(table)
        assert "email" not in frame.columns
        strings = [name for name, kind in frame.dtypes if kind == "string"]
        assert (
            frame.filter(
                F.greatest(*[F.coalesce(F.col(c).contains("@"), F.lit(False)) for c in strings])
            ).count()
            == 0
        )


def test_pii_columns_stay_out_of_quarantined_rows(spark, config, tmp_path):
    source = tmp_path / "users.csv"
    source.write_text(
        "user_id,email,Phone,region\nu1,a@example.com,555-0101,north\n,b@example.com,555-0102,south\n"
    )
    root = str(tmp_path / "lake")
    assert main("ingest", ["--lake", root, "--entity", "users", "--source", str(source)]) == 0
    lake = Lake(spark, config.lake, root)
    (row,) = lake.read("quarantine.users").collect()
    assert row.reason == "missing:user_id" and json.loads(row.raw) == {"region": "south"}
    assert lake.read("silver.users").columns[:5] == ["user_id", "signup_date", "age", "gender", "region"]


def test_users_and_items_are_typed(ingested, shop):
    out, _ = shop
    users = ingested.read("silver.users")
    assert users.count() == SPEC.users == users.select("user_id").distinct().count()
    assert dict(users.dtypes)["signup_date"] == "date" and dict(users.dtypes)["age"] == "int"
    items = ingested.read("silver.items").toPandas().set_index("item_id").sort_index()
    source = pd.read_csv(out / "items.csv").set_index("item_id").sort_index()
    assert list(items.index) == list(source.index)
    assert (items["price"] - source["price"]).abs().max() < 1e-9
    assert list(items["active"]) == list(source["active"].astype(bool))


def test_user_updates_replace_and_unchanged_users_are_skipped(spark, config, shop, tmp_path):
    out, _ = shop
    root = str(tmp_path / "lake")
    assert (
        main("ingest", ["--lake", root, *RUN_DATE, "--entity", "users", "--source", str(out / "users.csv")])
        == 0
    )
    users = pd.read_csv(out / "users.csv", dtype=str)
    users.loc[0, "region"] = "atlantis"
    changed = tmp_path / "users-changed.csv"
    users.to_csv(changed, index=False)
    assert main("ingest", ["--lake", root, *RUN_DATE, "--entity", "users", "--source", str(changed)]) == 0
    lake = Lake(spark, config.lake, root)
    counts = run_counts(lake)
    assert (counts["users.accepted"], counts["users.duplicates"]) == (1, SPEC.users - 1)
    silver = lake.read("silver.users")
    assert silver.count() == SPEC.users
    assert silver.filter(F.col("user_id") == users.loc[0, "user_id"]).first().region == "atlantis"


def test_user_ids_can_be_pseudonymised_with_a_secret_key(spark, shop, tmp_path, monkeypatch, caplog):
    out, _ = shop
    key = "correct-horse-battery-staple-42"
    monkeypatch.setenv("MARKETLAKE__INGEST__PSEUDONYMISE_USER_IDS", "true")
    monkeypatch.setenv("MARKETLAKE_PSEUDONYM_KEY", key)
    root = str(tmp_path / "lake")
    caplog.set_level("DEBUG")
    for entity, source in (("users", "users.csv"), ("events", "events/date=2024-06-30")):
        assert (
            main("ingest", ["--lake", root, *RUN_DATE, "--entity", entity, "--source", str(out / source)])
            == 0
        )
    from marketlake.config import load_config

    lake = Lake(spark, load_config().lake, root)
    original = pd.read_csv(out / "users.csv", dtype=str)["user_id"]
    expected = {hmac.new(key.encode(), u.encode(), hashlib.sha256).hexdigest()[:32] for u in original}
    users = {r.user_id for r in lake.read("silver.users").select("user_id").collect()}
    assert users == expected
    event_users = {r.user_id for r in lake.read("silver.events").select("user_id").distinct().collect()}
    assert event_users and event_users <= expected  # events join to users through the pseudonym
    assert key not in caplog.text
    assert all(key not in str(row) for row in lake.read("ops.job_runs").collect())


def test_pseudonymising_without_a_key_is_a_usage_error(shop, tmp_path, monkeypatch, capsys):
    out, _ = shop
    monkeypatch.setenv("MARKETLAKE__INGEST__PSEUDONYMISE_USER_IDS", "true")
    monkeypatch.delenv("MARKETLAKE_PSEUDONYM_KEY", raising=False)
    root = tmp_path / "lake"
    assert main("ingest", ["--lake", str(root), "--entity", "users", "--source", str(out / "users.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "MARKETLAKE_PSEUDONYM_KEY is not set" in err and len(err.splitlines()) == 1
    assert not (root / "silver").exists()


# ---- hand-made inputs ----------------------------------------------------------------------------


def test_a_half_good_file_gives_its_good_rows(spark, config, tmp_path, monkeypatch):
    monkeypatch.setenv("MARKETLAKE__INGEST__MAX_REJECT_RATE", "1")  # 6 of its 10 records are rejected
    source = tmp_path / "in"
    source.mkdir()
    good = {
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "view",
        "ts": "2024-06-30T10:00:00Z",
    }
    lines = [
        json.dumps(good),
        "",
        "\x00\x01 binary garbage",
        json.dumps(
            {
                **good,
                "event_id": "e2",
                "event_type": "purchase",
                "price": 9.5,
                "quantity": 2,
                "order_id": "o1",
            }
        ),
        json.dumps({**good, "event_id": "e3", "event_type": "purchase", "quantity": 1}),
        json.dumps({**good, "event_id": "e4", "event_type": "add_to_cart", "quantity": 0, "price": 1}),
        json.dumps({**good, "event_id": "e5", "quantity": "two"}),
        "[1, 2, 3]",
        json.dumps({**good, "event_id": "e6", "ts": "2024-07-02T00:00:01Z"}),  # beyond the run date + 24 h
        json.dumps({**good, "event_id": "e7", "ts": "2024-07-01T23:59:00+00:00"}),  # within the tolerance
        json.dumps({**good, "event_id": "e8", "event_type": " VIEW "}),
    ]
    (source / "events.json").write_text("\n".join(lines) + "\n")
    root = str(tmp_path / "lake")
    assert main("ingest", ["--lake", root, *RUN_DATE, "--source", str(source)]) == 0
    lake = Lake(spark, config.lake, root)
    reasons = {r.raw: r.reason for r in lake.read("quarantine.events").collect()}
    assert sorted(reasons.values()) == sorted(
        [
            "malformed_json",
            "missing:price",
            "invalid:quantity",
            "invalid:quantity",
            "malformed_json",
            "future_ts",
        ]
    )
    accepted = lake.read("silver.events").orderBy("event_id")
    assert [r.event_id for r in accepted.collect()] == ["e1", "e2", "e7", "e8"]
    assert accepted.filter(F.col("event_id") == "e2").first().revenue == 19.0
    assert accepted.filter(F.col("event_id") == "e8").first().event_type == "view"
    counts = run_counts(lake)
    assert (counts["events.records_read"], counts["events.blank_lines"]) == (10, 1)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "source not found"),
        (lambda p: p.mkdir(), "no input files under"),
        (
            lambda p: (p.mkdir(), (p / "_SUCCESS").write_text(""), (p / ".hidden").write_text("{}")),
            "no input files under",
        ),
        (
            lambda p: (p.mkdir(), (p / "a.json").write_text(""), (p / "b.json").write_text("")),
            "input is empty",
        ),
    ],
)
def test_bad_sources_exit_2_before_writing(tmp_path, capsys, setup, message):
    source = tmp_path / "source"
    setup(source)
    root = tmp_path / "lake"
    assert main("ingest", ["--lake", str(root), "--source", str(source)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not root.exists()


def test_a_mapping_naming_a_missing_column_exits_2(tmp_path, capsys):
    mapping = tmp_path / "bad.yaml"
    mapping.write_text("name: bad\nformat: csv\ncolumns:\n  user_id: NoSuchColumn\n")
    root = tmp_path / "lake"
    code = main("ingest", ["--lake", str(root), "--source", str(ONLINE_RETAIL), "--mapping", str(mapping)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "'NoSuchColumn' is not in the source" in err and len(err.splitlines()) == 1
    assert not (root / "silver").exists()


# ---- source mappings over real datasets ---------------------------------------------------------

NON_PRODUCT = {"POST", "DOT", "M", "m", "D", "C2", "CRUK", "S", "B", "PADS", "AMAZONFEE", "BANK CHARGES"}


def online_retail_expectation() -> Counter:
    """What ingesting the Online Retail sample should give, counted with pandas alone."""
    raw = pd.read_csv(ONLINE_RETAIL, dtype=str, keep_default_na=False)
    outcome = Counter()
    accepted_keys = set()
    for row in raw.itertuples(index=False):
        customer = re.sub(r"[.]0+$", "", row.CustomerID.strip())
        if row.InvoiceNo.startswith("C"):
            outcome["rejected.excluded:cancellation"] += 1
        elif row.StockCode in NON_PRODUCT:
            outcome["rejected.excluded:non_product"] += 1
        elif not customer:
            outcome["rejected.missing:user_id"] += 1
        elif float(row.UnitPrice) < 0:
            outcome["rejected.negative_price"] += 1
        elif int(float(row.Quantity)) <= 0:
            outcome["rejected.invalid:quantity"] += 1
        else:
            key = (row.InvoiceNo, row.StockCode, row.Quantity, row.InvoiceDate, row.UnitPrice, row.CustomerID)
            outcome["duplicates" if key in accepted_keys else "accepted"] += 1
            accepted_keys.add(key)
    outcome["records_read"] = len(raw)
    return outcome


def test_online_retail_ingests_through_its_mapping_as_pandas_counts(spark, config, tmp_path):
    root = str(tmp_path / "lake")
    args = [
        "--lake",
        root,
        "--run-date",
        "2026-11-23",
        "--source",
        str(ONLINE_RETAIL),
        "--mapping",
        "conf/sources/online_retail.yaml",
    ]
    assert main("ingest", args) == 0
    lake = Lake(spark, config.lake, root)
    counts = {k.removeprefix("events."): v for k, v in run_counts(lake).items()}
    expected = online_retail_expectation()
    assert {k: counts.get(k, 0) for k in expected} == dict(expected)
    assert counts["rejected"] == sum(v for k, v in expected.items() if k.startswith("rejected."))
    silver = lake.read("silver.events")
    assert silver.count() == expected["accepted"]
    # 2011-10-06 16:20 in London (summer time) is 15:20 UTC; the float-typed CustomerID loses its ".0".
    row = silver.filter((F.col("order_id") == "569901") & (F.col("item_id") == "23256")).first()
    assert (row.user_id, row.event_ts, row.quantity, row.price, row.revenue) == (
        "12923",
        dt.datetime(2011, 10, 6, 15, 20),
        2,
        4.15,
        8.3,
    )


def test_online_retail_timestamp_formats_of_its_copies_parse(spark):
    from marketlake.ingest.transform import parse_timestamp
    from marketlake.mapping import load_mapping

    mapping = load_mapping("online_retail")
    texts = [
        "2010-12-01 08:26:00",
        "12/1/2010 8:26",
        "01-12-2010 08:26",
        "2010-12-01T08:26:00",
        "2011-06-01 08:26:00",
    ]
    frame = spark.createDataFrame([(t,) for t in texts], "ts string").select(
        parse_timestamp(F.col("ts"), mapping).alias("utc")
    )
    winter = dt.datetime(2010, 12, 1, 8, 26)  # London is on UTC in December
    assert [r.utc for r in frame.collect()] == [winter] * 4 + [dt.datetime(2011, 6, 1, 7, 26)]


def test_online_retail_customers_ingest_as_users(spark, config, tmp_path):
    root = str(tmp_path / "lake")
    assert (
        main("ingest", ["--lake", root, "--source", str(ONLINE_RETAIL), "--mapping", "online_retail_users"])
        == 0
    )
    raw = pd.read_csv(ONLINE_RETAIL, dtype=str, keep_default_na=False)
    with_customer = raw[raw.CustomerID != ""]
    lake = Lake(spark, config.lake, root)
    assert lake.read("silver.users").count() == with_customer.CustomerID.nunique()
    counts = run_counts(lake)
    # The first line of a customer (in file order) wins; later lines naming another country conflict.
    first_country = with_customer.groupby("CustomerID")["Country"].transform("first")
    conflicting = int((with_customer.Country != first_country).sum())
    assert counts.get("users.rejected.conflicting_duplicate", 0) == conflicting
    assert counts["users.duplicates"] == len(with_customer) - conflicting - with_customer.CustomerID.nunique()
    assert counts["users.rejected.missing:user_id"] == len(raw) - len(with_customer)


def test_movielens_ratings_become_interactions(spark, config, tmp_path):
    root = str(tmp_path / "lake")
    assert main("ingest", ["--lake", root, "--source", str(MOVIELENS), "--mapping", "movielens"]) == 0
    lake = Lake(spark, config.lake, root)
    silver = lake.read("silver.events")
    ratings = pd.read_csv(MOVIELENS, sep="\t", names=["user", "item", "rating", "ts"])
    assert silver.count() == len(ratings)
    assert silver.filter(F.col("event_type") != "rating").count() == 0
    stats = silver.agg(F.sum("rating").alias("total"), F.min("event_ts").alias("first")).first()
    assert stats.total == ratings.rating.sum()
    assert stats.first == dt.datetime.fromtimestamp(ratings.ts.min(), dt.timezone.utc).replace(tzinfo=None)


# ---- the generate job ----------------------------------------------------------------------------


def test_generate_job_writes_a_shop_ending_on_the_run_date(tmp_path):
    out = tmp_path / "shop"
    args = [
        "--lake",
        str(tmp_path / "lake"),
        "--run-date",
        "2025-03-31",
        "--out",
        str(out),
        "--users",
        "20",
        "--items",
        "10",
        "--events",
        "400",
        "--seed",
        "3",
        "--days",
        "7",
        "--new-item-share",
        "0.2",
    ]
    assert main("generate", args) == 0
    days = sorted(p.name for p in (out / "events").iterdir())
    assert days[-1] == "date=2025-03-31" and days[0] >= "date=2025-03-25"
    assert (out / "users.csv").exists() and (out / "truth" / "personas.csv").exists()
    assert len(pd.read_csv(out / "truth" / "new_items.csv")) == 2  # 0.2 of 10 items
    runs = pl.read_delta(str(tmp_path / "lake" / "ops" / "job_runs"))
    assert runs["job"].to_list() == ["generate"] and runs["status"][0] == "succeeded"


def test_generate_rejects_a_bad_size_with_exit_2(tmp_path, capsys):
    assert main("generate", ["--lake", str(tmp_path / "lake"), "--users", "5"]) == 2
    assert "--users: Input should be greater than or equal to 10 (got 5)" in capsys.readouterr().err
    assert not (tmp_path / "lake").exists()


def test_the_shop_layout_is_the_default_source(spark, config, tmp_path, shop):
    out, truth = shop
    root = tmp_path / "lake"
    shutil.copytree(out, root / "landing" / "shop")
    assert main("ingest", ["--lake", str(root), *RUN_DATE]) == 0
    lake = Lake(spark, config.lake, str(root))
    counts = run_counts(lake)
    assert (counts["items.accepted"], counts["users.accepted"], counts["events.accepted"]) == (
        SPEC.items,
        SPEC.users,
        truth["valid_events"],
    )

"""rules: baskets, FPGrowth rules against mlxtend on real data, planted bundles, cross-sell, the guard, CLI.

Online Retail: the sample is ingested once through its mapping; the rules job runs on it, and mlxtend
(fpgrowth + association_rules) runs on baskets built from the CSV with pandas alone. Spark's FPGrowth
makes rules with one consequent item only, so mlxtend's rules are restricted the same way. Both count
the same baskets (checked), so support, confidence and lift are the same ratios of the same counts and
agree to rounding.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
import shutil

import pandas as pd
import pytest
from chispa import assert_df_equality
from conftest import DEMO_END, SHARED_DATA
from pyspark.sql import functions as F

from marketlake import rules as rules_module
from marketlake.jobs import main
from marketlake.lake import Lake
from marketlake.rules import baskets, cross_sell, frequent_items, level_bound, min_count, mine_rules

ONLINE_RETAIL = SHARED_DATA / "online-retail-sample" / "OnlineRetail.csv"
NON_PRODUCT = {"POST", "DOT", "M", "m", "D", "C2", "CRUK", "S", "B", "PADS", "AMAZONFEE", "BANK CHARGES"}
OR_DATE = "2026-11-23"
# Itemsets in at least ceil(0.0001 x 11,208) = 2 invoices; a confidence floor no rule can sit on (a rule
# with confidence 0.01 would need an antecedent in 200 invoices; no item is in more than 150).
OR_ARGS = ["--min-support", "0.0001", "--min-confidence", "0.01"]
TOLERANCE = 1e-9


def rules_of(lake: Lake, run_date: str) -> pd.DataFrame:
    frame = lake.read("gold.association_rules").filter(
        F.col("as_of_date") == F.lit(dt.date.fromisoformat(run_date))
    )
    rules = frame.toPandas()
    rules["antecedent"] = rules["antecedent"].map(tuple)
    rules["consequent"] = rules["consequent"].map(lambda c: c[0])
    return rules.set_index(["antecedent", "consequent"]).sort_index()


def by_rule(rules: pd.DataFrame) -> dict:
    return dict(zip(rules.index, rules.itertuples(), strict=True))


def last_counts(lake: Lake) -> dict[str, int]:
    runs = lake.read("ops.job_runs").filter(F.col("job") == "rules").orderBy(F.col("started_at").desc())
    return dict(runs.first()["counts"])


def online_retail_baskets() -> pd.Series:
    """Invoices as sets of StockCodes, with pandas alone: what the online_retail mapping accepts."""
    raw = pd.read_csv(ONLINE_RETAIL, dtype=str, keep_default_na=False)
    kept = raw[
        ~raw.InvoiceNo.str.startswith("C")
        & ~raw.StockCode.isin(NON_PRODUCT)
        & (raw.CustomerID.str.strip() != "")
        & (raw.UnitPrice.astype(float) >= 0)
        & (raw.Quantity.astype(float) > 0)
    ]
    return kept.groupby("InvoiceNo").StockCode.agg(frozenset)


def mlxtend_rules(invoices: pd.Series, min_support: float, min_confidence: float, min_lift: float):
    """(all of mlxtend's rules, those with one consequent item, indexed like `rules_of`, frequent itemsets)."""
    from mlxtend.frequent_patterns import association_rules, fpgrowth
    from mlxtend.preprocessing import TransactionEncoder

    encoder = TransactionEncoder()
    onehot = pd.DataFrame(
        encoder.fit([sorted(b) for b in invoices]).transform([sorted(b) for b in invoices]),
        columns=encoder.columns_,
    )
    itemsets = fpgrowth(onehot, min_support=min_support, use_colnames=True)
    rules = association_rules(
        itemsets, num_itemsets=len(onehot), metric="confidence", min_threshold=min_confidence
    )
    rules = rules[rules.lift >= min_lift]
    single = rules[rules.consequents.map(len) == 1].copy()
    single["antecedent"] = single.antecedents.map(lambda a: tuple(sorted(a)))
    single["consequent"] = single.consequents.map(lambda c: next(iter(c)))
    return (
        rules,
        single.set_index(["antecedent", "consequent"])[["support", "confidence", "lift"]].sort_index(),
        itemsets,
    )


@pytest.fixture(scope="module")
def online_retail(spark, config, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rules-online-retail"))
    assert (
        main(
            "ingest",
            [
                "--lake",
                root,
                "--run-date",
                OR_DATE,
                "--source",
                str(ONLINE_RETAIL),
                "--mapping",
                "online_retail",
            ],
        )
        == 0
    )
    assert main("rules", ["--lake", root, "--run-date", OR_DATE, *OR_ARGS]) == 0
    lake = Lake(spark, config.lake, root)
    return lake, last_counts(lake)


def test_online_retail_rules_equal_mlxtend_rule_for_rule(online_retail):
    lake, counts = online_retail
    ours = rules_of(lake, OR_DATE)
    invoices = online_retail_baskets()
    assert counts["baskets"] == len(invoices)  # the same denominator on both sides
    everything, theirs, itemsets = mlxtend_rules(invoices, 0.0001, 0.01, 1.0)

    assert len(ours) > 3000 and ours.index.get_level_values("antecedent").map(len).max() >= 3
    assert list(ours.index) == list(theirs.index)
    difference = (ours[["support", "confidence", "lift"]] - theirs).abs().max()
    assert (difference <= TOLERANCE).all(), difference
    # Spark's FPGrowth has no rules with several consequent items; mlxtend does.
    assert (everything.consequents.map(len) > 1).sum() > 0
    # No rule sits within the tolerance of a threshold, so rounding cannot decide whether it is kept.
    assert (ours.confidence - 0.01).min() > TOLERANCE and (ours.lift - 1.0).min() > TOLERANCE
    assert counts["itemsets"] == len(itemsets)
    # The guard's bound holds and is not loose here.
    assert len(itemsets) <= counts["itemsets_bound"] <= 2 * len(itemsets)


def test_command_line_overrides_apply_and_other_dates_stay(online_retail):
    lake, _ = online_retail
    before = rules_of(lake, OR_DATE)
    later = "2026-11-24"  # the same invoices (all from 2010-2011), other thresholds, another partition
    assert (
        main(
            "rules",
            [
                "--lake",
                lake.root,
                "--run-date",
                later,
                *OR_ARGS,
                "--min-confidence",
                "0.5",
                "--min-lift",
                "200",
                "--top-n",
                "1",
            ],
        )
        == 0
    )
    expected = before[(before.confidence >= 0.5) & (before.lift >= 200)]
    assert 0 < len(expected) < len(before)
    pd.testing.assert_frame_equal(
        rules_of(lake, later).drop(columns="as_of_date"), expected.drop(columns="as_of_date")
    )
    pd.testing.assert_frame_equal(rules_of(lake, OR_DATE), before)
    cross_sell_rows = lake.read("gold.item_cross_sell").filter(
        F.col("as_of_date") == F.lit(dt.date.fromisoformat(later))
    )
    assert cross_sell_rows.groupBy("item_id").count().filter("count > 1").count() == 0


# ---- planted bundles -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_rules(spark, config, demo_shop, tmp_path_factory):
    shop, _, root = demo_shop
    lake_root = str(tmp_path_factory.mktemp("rules-demo") / "lake")
    shutil.copytree(root, lake_root)
    # Bundle rules have a support of about (anchor share) x rate, 0.008-0.025 here: 0.005 keeps them all.
    assert main("rules", ["--lake", lake_root, "--run-date", DEMO_END, "--min-support", "0.005"]) == 0
    lake = Lake(spark, config.lake, lake_root)
    return lake, last_counts(lake), pd.read_csv(shop / "truth" / "bundles.csv")


def test_every_planted_bundle_is_a_rule_with_its_rate(demo_rules):
    """For a bundle (anchor, m1[, m2]), anchor -> m has a confidence of about the planted rate: the share
    of the anchor's orders to which the bundle was added. The check allows four binomial standard errors
    of a share over the anchor's orders (n = 105-280, so 0.11-0.18): a tolerance from the basket counts,
    not from this seed, that a correct job fails for fewer than 1 in 1,000 bundles."""
    lake, counts, bundles = demo_rules
    rules = by_rule(rules_of(lake, DEMO_END))
    checked = 0
    for bundle in bundles.itertuples():
        anchor, *others = bundle.item_ids.split("|")
        for other in others:
            rule = rules[((anchor,), other)]
            anchor_orders = round(rule.support / rule.confidence * counts["baskets"])
            error = math.sqrt(bundle.rate * (1 - bundle.rate) / anchor_orders)
            assert abs(rule.confidence - bundle.rate) <= 4 * error, (bundle.bundle_id, other, rule.confidence)
            checked += 1
        if len(others) == 2:  # the other two are added together, so given one the other is (nearly) certain
            assert rules[(tuple(sorted([anchor, others[0]])), others[1])].confidence >= 0.9
    assert checked == bundles["size"].sum() - len(bundles)


def test_an_anchors_cross_sell_starts_with_its_bundle(demo_rules):
    lake, _, bundles = demo_rules
    table = lake.read("gold.item_cross_sell").toPandas()
    for bundle in bundles.itertuples():
        anchor, *others = bundle.item_ids.split("|")
        top = table[(table.item_id == anchor) & (table["rank"] <= len(others))]
        assert set(top.recommended_item_id) == set(others), bundle.bundle_id
    ranks = table.groupby("item_id")["rank"].agg(["min", "max", "count"])
    assert (ranks["min"] == 1).all() and (ranks["max"] == ranks["count"]).all() and (ranks["max"] <= 10).all()


def test_a_rerun_gives_the_same_tables(spark, demo_rules):
    lake, _, _ = demo_rules
    before = {table: lake.read(table).cache() for table in ("gold.association_rules", "gold.item_cross_sell")}
    for frame in before.values():
        frame.count()
    assert main("rules", ["--lake", lake.root, "--run-date", DEMO_END, "--min-support", "0.005"]) == 0
    for table, frame in before.items():
        assert_df_equality(lake.read(table), frame, ignore_row_order=True)
        frame.unpersist()


# ---- hand-made examples --------------------------------------------------------------------------


EVENT_SCHEMA = (
    "event_id string, item_id string, event_type string, event_date date, session_id string, order_id string"
)
D1, D2, D3 = dt.date(2024, 6, 1), dt.date(2024, 6, 2), dt.date(2024, 6, 3)


def events(spark, rows):
    return spark.createDataFrame([(f"e{n}", *row) for n, row in enumerate(rows)], EVENT_SCHEMA)


def test_baskets_are_orders_or_sessions_up_to_the_run_date(spark):
    frame = events(
        spark,
        [
            ("b", "purchase", D1, "s1", "o1"),
            ("a", "purchase", D1, "s1", "o1"),
            ("a", "purchase", D1, "s1", "o1"),
            ("c", "add_to_cart", D1, "s1", None),
            ("x", "exposure", D1, "s1", None),
            ("d", "view", D1, "s1", None),
            ("c", "purchase", D2, "s2", "o2"),
            ("e", "purchase", D3, "s3", "o3"),
            ("f", "view", D2, None, None),
        ],
    )
    orders = frame.transform(baskets(D2, "order"))
    expected = spark.createDataFrame(
        [("o1", ["a", "b"]), ("o2", ["c"])], "basket_id string, items array<string>"
    )
    assert_df_equality(orders, expected, ignore_row_order=True, ignore_nullable=True)
    sessions = frame.transform(baskets(D2, "session", ["view", "click", "add_to_cart", "purchase"]))
    expected = spark.createDataFrame(
        [("s1", ["a", "b", "c", "d"]), ("s2", ["c"])], "basket_id string, items array<string>"
    )
    assert_df_equality(sessions, expected, ignore_row_order=True, ignore_nullable=True)


def test_rules_over_item_codes_equal_rules_over_item_names(spark, monkeypatch):
    """FPGrowth over the frequent items' integer codes gives the same rules as over the names: the
    infrequent items (z*) are dropped, the baskets left empty still count, antecedents decode in order."""
    data = [
        ["a", "b", "c"],
        ["a", "b"],
        ["a", "c", "z1"],
        ["b", "c"],
        ["a", "b", "c", "z2"],
        ["z3"],
        ["d", "a"],
    ]
    frame = spark.createDataFrame(
        [(i, items) for i, items in enumerate(data)], "basket_id long, items array<string>"
    )
    items = frequent_items(frame, len(data), 0.25, 100)
    assert items.names == ("a", "b", "c") and items.min_count == 2 and items.codable

    def mined(**kwargs):
        with mine_rules(frame, 0.25, 0.1, 0.0, **kwargs) as result:
            return result.itemsets, sorted(tuple(r) for r in result.rules.collect())

    coded = mined(items=items)
    assert coded == mined()
    monkeypatch.setattr(rules_module, "MAX_CODED_ITEMS", 0)  # too many to code: FPGrowth over the names
    assert not items.codable
    by_name = mined()
    assert coded == by_name and coded[0] == 7  # a, b, c, ab, ac, bc, abc
    assert (["a", "b"], ["c"], 2 / 7, 2 / 3, (2 / 3) / (4 / 7)) in by_name[1]


def test_cross_sell_ranks_single_item_rules_by_lift_then_confidence(spark):
    rules = spark.createDataFrame(
        [
            (["a"], ["b"], 0.1, 0.5, 3.0),
            (["a"], ["c"], 0.1, 0.6, 3.0),
            (["a"], ["d"], 0.1, 0.6, 3.0),
            (["a"], ["e"], 0.2, 0.9, 4.0),
            (["a"], ["f"], 0.1, 0.3, 1.5),
            (["a", "b"], ["g"], 0.1, 0.9, 9.0),
            (["g"], ["a"], 0.1, 0.2, 1.1),
        ],
        "antecedent array<string>, consequent array<string>, support double, confidence double, lift double",
    )
    expected = spark.createDataFrame(
        [
            ("a", 1, "e", 0.9, 4.0, 0.2),
            ("a", 2, "c", 0.6, 3.0, 0.1),
            ("a", 3, "d", 0.6, 3.0, 0.1),
            ("a", 4, "b", 0.5, 3.0, 0.1),
            ("g", 1, "a", 0.2, 1.1, 0.1),
        ],
        "item_id string, rank int, recommended_item_id string, confidence double, lift double, support double",
    )
    assert_df_equality(rules.transform(cross_sell(4)), expected, ignore_row_order=True, ignore_nullable=True)


def hand_made_lake(spark, config, root: str, rows) -> Lake:
    lake = Lake(spark, config.lake, root)
    lake.write("silver.events", events(spark, rows), partition_by=["event_date"])
    return lake


def test_the_guard_stops_before_an_explosion_and_names_the_knobs(spark, config, tmp_path, capsys):
    # 12 orders of the same 22 items: each of their 4,194,303 subsets is in 12 of the 112 orders; the other
    # 100 orders hold two of seven other items.
    big = [(f"i{i:02d}", "purchase", D1, f"s{o}", f"o{o}") for o in range(12) for i in range(22)]
    small = [(f"j{(o + d) % 7}", "purchase", D1, f"t{o}", f"p{o}") for o in range(100) for d in (0, 1)]
    root = str(tmp_path / "lake")
    lake = hand_made_lake(spark, config, root, big + small)
    assert main("rules", ["--lake", root, "--run-date", "2024-06-01", "--min-support", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "more than 1,000,000 frequent itemsets" in err
    assert "raise --min-support" in err and "--max-itemsets" in err
    assert not lake.exists("gold.association_rules")
    assert last_counts(lake)["itemsets_bound"] > 1_000_000  # the failed run's row says why
    # Above 12/112, the big orders' items are not frequent: the same data passes.
    assert main("rules", ["--lake", root, "--run-date", "2024-06-01", "--min-support", "0.12"]) == 0
    assert last_counts(lake)["rules"] > 0


def test_the_guards_bounds_hold_on_dense_random_baskets():
    """level_bound over items per basket (and over the clique bound from frequent pairs, as the guard
    computes it) is never below the true number of frequent itemsets, counted by brute force."""
    rng = random.Random(7)
    for _ in range(150):
        items = rng.randint(3, 9)
        base = [frozenset(rng.sample(range(items), rng.randint(1, items))) for _ in range(rng.randint(2, 6))]
        data = [
            rng.choice(base) | frozenset(rng.sample(range(items), rng.randint(0, 2)))
            for _ in range(rng.randint(3, 25))
        ]
        m = min_count(rng.choice([0.05, 0.1, 0.2, 0.3]), len(data))
        counts: dict[frozenset, int] = {}
        for basket in data:
            for size in range(1, len(basket) + 1):
                for subset in itertools.combinations(sorted(basket), size):
                    counts[frozenset(subset)] = counts.get(frozenset(subset), 0) + 1
        true = sum(1 for c in counts.values() if c >= m)
        frequent = {i for i in range(items) if counts.get(frozenset([i]), 0) >= m}
        per_size: dict[int, int] = {}
        cliques: dict[int, int] = {}
        pairs = {s for s, c in counts.items() if len(s) == 2 and c >= m}
        for basket in data:
            k = len(basket & frequent)
            per_size[k] = per_size.get(k, 0) + 1
            edges = sum(1 for p in itertools.combinations(sorted(basket), 2) if frozenset(p) in pairs)
            x = math.ceil((1 + math.sqrt(1 + 8 * edges)) / 2)
            cliques[x] = cliques.get(x, 0) + 1
        assert true <= level_bound(per_size, m, len(frequent), 1, 10**12)
        assert true <= len(frequent) + len(pairs) + level_bound(cliques, m, len(frequent), 3, 10**12)


def test_no_baskets_write_empty_partitions(spark, config, tmp_path):
    root = str(tmp_path / "lake")
    lake = hand_made_lake(spark, config, root, [("a", "view", D1, "s1", None), ("b", "view", D1, "s1", None)])
    assert main("rules", ["--lake", root, "--run-date", "2024-06-01"]) == 0  # orders: none, browse-only data
    assert last_counts(lake)["baskets"] == 0
    assert lake.read("gold.association_rules").count() == 0 and lake.read("gold.item_cross_sell").count() == 0
    assert (
        main(
            "rules", ["--lake", root, "--run-date", "2024-06-01", "--basket", "session", "--min-support", "1"]
        )
        == 0
    )
    found = lake.read("gold.association_rules").select("antecedent", "consequent").collect()
    assert sorted(tuple(row) for row in found) == [(["a"], ["b"]), (["b"], ["a"])]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--min-support", "0"], "--min-support: Input should be greater than 0"),
        (["--min-confidence", "1.5"], "--min-confidence: Input should be less than or equal to 1"),
        (["--top-n", "0"], "--top-n: Input should be greater than or equal to 1"),
        (["--basket", "cart"], "argument --basket: invalid choice"),
    ],
)
def test_bad_options_exit_2_before_writing(tmp_path, capsys, argv, message):
    root = str(tmp_path / "lake")
    assert main("rules", ["--lake", root, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "lake").exists()


def test_a_lake_without_events_is_a_usage_error(spark, tmp_path, capsys):
    assert main("rules", ["--lake", str(tmp_path / "lake")]) == 2
    assert "silver.events does not exist" in capsys.readouterr().err

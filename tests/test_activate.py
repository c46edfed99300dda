"""activate: audiences from hand-made gold inputs (so these tests do not depend on the recommend or propensity
jobs): the control share, stability and independence of the groups, the cap, offers, item and cross-sell
lists, the exports (treatment only, PII only there), idempotence, targeting by propensity decile and days
without a purchase, and bad configuration."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os

import pandas as pd
import pytest
import yaml
from chispa import assert_df_equality
from pyspark.sql import functions as F

from marketlake.activate import AUDIENCE_COLUMNS, CONTROL, TREATMENT, group_draw
from marketlake.config import CampaignConfig
from marketlake.errors import ConfigError
from marketlake.jobs import main
from marketlake.lake import Lake

RUN_DATE = dt.date(2024, 6, 30)
USERS = 3000
SEGMENT_NAMES = ["loyal", "at risk", "window shoppers"]
RFM = ["Champions", "Loyal", "Hibernating", "Prospects"]
SALT = "test-salt"
CAMPAIGNS = [
    {
        "id": "everyone-a",
        "segments": SEGMENT_NAMES,
        "control_share": 0.3,
        "items": 3,
        "cross_sell": 2,
        "offers": {"loyal": "L-offer", "at risk": "R-offer"},
        "default_offer": "D-offer",
        "export_columns": {"email": "email", "home_region": "region"},
    },
    {
        "id": "everyone-b",
        "rfm_labels": RFM,
        "control_share": 0.5,
        "items": 0,
        "cross_sell": 0,
        "default_offer": "B",
    },
    {
        "id": "capped",
        "segments": ["at risk"],
        "rfm_labels": ["Champions"],
        "max_audience": 200,
        "control_share": 0.2,
        "offers": {"at risk": "risk", "Champions": "champ"},
        "channel": "ads",
    },
]


def user(n: int) -> str:
    return f"u{n:05d}"


def write_inputs(spark, lake: Lake, tmp_path) -> str:
    """Gold features, segments, recommendations and cross-sell, silver events and users, and a contacts
    file with emails; returns the contacts path."""
    users = spark.range(USERS).select(
        F.format_string("u%05d", "id").alias("user_id"),
        F.element_at(F.array(*[F.lit(x) for x in SEGMENT_NAMES]), (F.col("id") % 3 + 1).cast("int")).alias(
            "segment_name"
        ),
        F.element_at(F.array(*[F.lit(x) for x in RFM]), (F.col("id") % 4 + 1).cast("int")).alias("rfm_label"),
        # Ties in recency on purpose: monetary, then user_id must break them.
        (F.col("id") % 97).cast("double").alias("recency_days"),
        ((F.col("id") * 7919) % 1000).cast("double").alias("monetary"),
        # 0, 0.25, ... 60 days (30.0 and 30.25 around a 30-day filter); null (no purchase) for every 7th user.
        F.when(F.col("id") % 7 != 0, (F.col("id") % 241) / 4).alias("days_since_purchase"),
    )
    partitions = {"partition_by": ["as_of_date"]}
    dated = users.withColumn("as_of_date", F.lit(RUN_DATE))
    lake.write("gold.user_features", dated.drop("segment_name"), "append", **partitions)
    lake.write(
        "gold.user_segments",
        dated.select(
            "user_id",
            F.lit(0).alias("segment_id"),
            "segment_name",
            F.lit("v1").alias("model_version"),
            "as_of_date",
        ),
        "append",
        **partitions,
    )
    ranks = spark.range(1, 7).select(F.col("id").cast("int").alias("rank"))
    recommendations = (
        users.select("user_id")
        .crossJoin(ranks)
        .select(
            "user_id",
            "rank",
            F.format_string("i%02d", (F.substring("user_id", 2, 5).cast("int") + F.col("rank")) % 50).alias(
                "item_id"
            ),
            (1.0 / F.col("rank")).alias("score"),
            F.lit("als").alias("source"),
            F.lit("r1").alias("model_version"),
            F.lit(RUN_DATE).alias("as_of_date"),
        )
    )
    lake.write("gold.user_recommendations", recommendations, "append", **partitions)
    cross_sell = (
        spark.createDataFrame(
            [
                ("i01", 1, "i02", 0.9, 9.0),
                ("i01", 2, "i03", 0.8, 8.0),
                ("i01", 3, "i04", 0.7, 7.0),
                ("i02", 1, "i05", 0.9, 8.5),
                ("i02", 2, "i01", 0.9, 8.4),
                ("i09", 1, "i10", 0.9, 20.0),
            ],
            "item_id string, rank int, recommended_item_id string, confidence double, lift double",
        )
        .withColumn("support", F.lit(0.01))
        .withColumn("as_of_date", F.lit(RUN_DATE))
    )
    lake.write("gold.item_cross_sell", cross_sell, "append", **partitions)
    ts = dt.datetime(2024, 6, 1, 12, tzinfo=dt.timezone.utc)
    events = spark.createDataFrame(
        [
            # u00000: an older order of i09, then a last order of i01 and i02 (its cross-sell: i05, i03, i04).
            ("e1", user(0), "i09", "purchase", ts, "o1"),
            ("e2", user(0), "i01", "purchase", ts + dt.timedelta(days=3), "o2"),
            ("e3", user(0), "i02", "purchase", ts + dt.timedelta(days=3), "o2"),
            ("e4", user(0), "i09", "view", ts + dt.timedelta(days=4), None),
            # u00001: one purchase without an order id, after the run date too (ignored).
            ("e5", user(1), "i09", "purchase", ts, None),
            ("e6", user(1), "i01", "purchase", dt.datetime(2024, 7, 2, tzinfo=dt.timezone.utc), "o3"),
        ],
        "event_id string, user_id string, item_id string, event_type string, event_ts timestamp, order_id string",
    ).withColumn("event_date", F.to_date("event_ts"))
    lake.write("silver.events", events, "append")
    lake.write(
        "silver.users",
        users.select(
            "user_id",
            F.element_at(
                F.array(F.lit("north"), F.lit("south")),
                (F.substring("user_id", 2, 5).cast("int") % 2 + 1).cast("int"),
            ).alias("region"),
        ),
        "append",
    )
    contacts = tmp_path / "contacts.csv"
    pd.DataFrame(
        {
            "user_id": [user(n) for n in range(USERS)],
            "email": [f"{user(n)}@example.com" for n in range(USERS)],
        }
    ).to_csv(contacts, index=False)
    return str(contacts)


def write_config(tmp_path, contacts: str, campaigns=CAMPAIGNS) -> str:
    path = tmp_path / f"activate-{len(os.listdir(tmp_path))}.yaml"
    path.write_text(
        yaml.safe_dump({"activate": {"salt": SALT, "contacts": contacts, "campaigns": campaigns}})
    )
    return str(path)


def activate(root: str, config: str, date: dt.date = RUN_DATE) -> int:
    return main("activate", ["--lake", root, "--config", config, "--run-date", date.isoformat()])


@pytest.fixture(scope="module")
def activated(spark, config, tmp_path_factory):
    """The job run twice for RUN_DATE: the audience of the second run, and the table version of the first."""
    tmp_path = tmp_path_factory.mktemp("activate")
    root = str(tmp_path / "lake")
    lake = Lake(spark, config.lake, root)
    contacts = write_inputs(spark, lake, tmp_path)
    conf = write_config(tmp_path, contacts)
    assert activate(root, conf) == 0
    first_version = lake.version("gold.campaign_audience")
    assert activate(root, conf) == 0
    audience = lake.read("gold.campaign_audience")
    frame = audience.filter(F.col("as_of_date") == RUN_DATE).toPandas()
    return lake, root, frame, first_version


def by_campaign(frame: pd.DataFrame, campaign_id: str) -> pd.DataFrame:
    return frame[frame.campaign_id == campaign_id]


def test_control_share_is_close_to_the_configured_share(activated):
    _, _, frame, _ = activated
    for campaign in CAMPAIGNS:
        rows = by_campaign(frame, campaign["id"])
        n, share = len(rows), campaign["control_share"]
        controls = (rows.group == CONTROL).sum()
        assert set(rows.group) == {CONTROL, TREATMENT}
        assert abs(controls - n * share) <= 4 * math.sqrt(n * share * (1 - share)), (
            campaign["id"],
            controls,
            n,
        )
        assert set(rows.control_share) == {share}


def test_groups_are_the_documented_hash_of_salt_campaign_and_user_only(activated):
    """Nothing else (run date, segment, rank) enters the draw, so a user keeps their group on every run."""
    _, _, frame, _ = activated
    expected = [
        CONTROL
        if int(hashlib.sha256(f"{SALT}|{c}|{u}".encode()).hexdigest()[:13], 16) / 16**13 < s
        else TREATMENT
        for c, u, s in zip(frame.campaign_id, frame.user_id, frame.control_share, strict=True)
    ]
    assert frame.group.tolist() == expected


def test_groups_are_independent_across_campaigns(activated):
    _, _, frame, _ = activated
    a = by_campaign(frame, "everyone-a").set_index("user_id").group == CONTROL
    b = by_campaign(frame, "everyone-b").set_index("user_id").group == CONTROL
    assert len(a) == len(b) == USERS
    both = (a & b.reindex(a.index)).sum()
    p = 0.3 * 0.5  # independent groups: P(control in both) is the product of the shares
    assert abs(both - USERS * p) <= 4 * math.sqrt(USERS * p * (1 - p)), both


def test_the_cap_keeps_the_most_recently_active_then_highest_spending(spark, activated):
    lake, _, frame, _ = activated
    rows = by_campaign(frame, "capped").sort_values("audience_rank")
    assert len(rows) == 200 and rows.audience_rank.tolist() == list(range(1, 201))
    features = lake.read("gold.user_features").filter(F.col("as_of_date") == RUN_DATE).toPandas()
    segments = lake.read("gold.user_segments").filter(F.col("as_of_date") == RUN_DATE).toPandas()
    joined = features.merge(segments[["user_id", "segment_name"]], on="user_id")
    eligible = joined[(joined.segment_name == "at risk") | (joined.rfm_label == "Champions")]
    expected = eligible.assign(neg_monetary=-eligible.monetary).sort_values(
        ["recency_days", "neg_monetary", "user_id"]
    )
    assert rows.user_id.tolist() == expected.user_id.head(200).tolist()


def test_offers_targets_and_channel(activated):
    _, _, frame, _ = activated
    a = by_campaign(frame, "everyone-a")
    assert (
        a.offer
        == a.segment_name.map({"loyal": "L-offer", "at risk": "R-offer", "window shoppers": "D-offer"})
    ).all()
    capped = by_campaign(frame, "capped")
    assert ((capped.segment_name == "at risk") | (capped.rfm_label == "Champions")).all()
    # The segment's offer wins over the RFM label's; a Champion outside "at risk" gets the label's offer.
    assert (capped.offer == capped.segment_name.map({"at risk": "risk"}).fillna("champ")).all()
    assert set(capped.channel) == {"ads"} and set(a.channel) == {"email"}
    assert len(by_campaign(frame, "everyone-b")) == USERS and set(by_campaign(frame, "everyone-b").offer) == {
        "B"
    }


def test_item_and_cross_sell_lists(activated):
    _, _, frame, _ = activated
    a = by_campaign(frame, "everyone-a").set_index("user_id")
    n = 123
    assert list(a.loc[user(n), "items"]) == [f"i{(n + rank) % 50:02d}" for rank in (1, 2, 3)]
    # Last order {i01, i02}: candidates i03 (lift 8), i04 (7), i05 (8.5); i02 and i01 are in the order.
    assert list(a.loc[user(0), "cross_sell"]) == ["i05", "i03"]
    # A purchase after the run date is ignored; a purchase without an order id is its own order.
    assert list(a.loc[user(1), "cross_sell"]) == ["i10"]
    assert list(a.loc[user(2), "cross_sell"]) == []
    assert all(len(items) == 0 for items in by_campaign(frame, "everyone-b")["items"])
    assert all(len(items) == 5 for items in by_campaign(frame, "capped")["items"])


def test_no_pii_in_gold_and_the_exports_hold_the_treatment_only(activated):
    lake, root, frame, _ = activated
    assert lake.read("gold.campaign_audience").columns == AUDIENCE_COLUMNS
    text_columns = [
        c for c in AUDIENCE_COLUMNS if frame[c].dtype == object and c not in ("items", "cross_sell")
    ]
    assert not frame[text_columns].apply(lambda column: column.astype(str).str.contains("@")).any().any()
    for campaign in CAMPAIGNS:
        folder = os.path.join(root, "exports", campaign["id"], RUN_DATE.isoformat())
        assert sorted(os.listdir(folder)) == ["audience.csv", "audience.parquet"]
        exported = pd.read_csv(os.path.join(folder, "audience.csv"), dtype=str, keep_default_na=False)
        parquet = pd.read_parquet(os.path.join(folder, "audience.parquet"))
        treatment = by_campaign(frame, campaign["id"])
        treatment = treatment[treatment.group == TREATMENT].sort_values("audience_rank")
        assert exported.user_id.tolist() == parquet.user_id.tolist() == treatment.user_id.tolist()
        settings = CampaignConfig(**campaign)
        flat = [f"item_{i}" for i in range(1, settings.items + 1)] + [
            f"cross_sell_{i}" for i in range(1, settings.cross_sell + 1)
        ]
        mapped = list(settings.export_columns)
        assert (
            list(exported.columns)
            == list(parquet.columns)
            == [
                "campaign_id",
                "user_id",
                "segment_name",
                "rfm_label",
                "offer",
                "channel",
                "audience_rank",
                *flat,
                *mapped,
            ]
        )
    exported = pd.read_parquet(
        os.path.join(root, "exports", "everyone-a", RUN_DATE.isoformat(), "audience.parquet")
    )
    assert (exported.email == exported.user_id + "@example.com").all()
    assert (
        exported.home_region == exported.user_id.str[1:].astype(int).mod(2).map({0: "north", 1: "south"})
    ).all()
    row = by_campaign(frame, "everyone-a").set_index("user_id").loc[exported.user_id.iloc[0]]
    assert exported.item_1.iloc[0] == row["items"][0]


def test_a_rerun_gives_the_same_table_and_export(spark, activated):
    lake, _, frame, first_version = activated
    first = lake.read("gold.campaign_audience", version=first_version).filter(F.col("as_of_date") == RUN_DATE)
    latest = lake.read("gold.campaign_audience").filter(F.col("as_of_date") == RUN_DATE)
    order = ["campaign_id", "user_id"]
    assert_df_equality(first.orderBy(order), latest.orderBy(order))
    assert len(frame) == latest.count()


def test_group_draw_is_uniform_enough(spark):
    draws = (
        spark.range(20_000)
        .select(F.lit("c").alias("campaign_id"), F.col("id").cast("string").alias("user_id"))
        .select(group_draw("s").alias("u"))
        .agg(F.min("u"), F.max("u"), F.avg("u"), F.sum((F.col("u") < 0.1).cast("int")))
        .first()
    )
    low, high, mean, below = draws
    assert 0 <= low < 0.001 and 0.999 < high < 1
    assert abs(mean - 0.5) < 4 * math.sqrt(1 / 12 / 20_000)
    assert abs(below - 2_000) <= 4 * math.sqrt(20_000 * 0.1 * 0.9)


@pytest.mark.parametrize(
    ("campaign", "message"),
    [
        ({"id": "x", "segments": ["loyall"], "default_offer": "o"}, "'loyall' is not a segment name"),
        ({"id": "x", "rfm_labels": ["Champion"], "default_offer": "o"}, "'Champion' is not an RFM label"),
        (
            {"id": "x", "segments": ["loyal"], "default_offer": "o", "export_columns": {"phone": "phone"}},
            "phone is neither in silver.users nor in the contacts file",
        ),
        (
            {"id": "x", "segments": ["loyal"], "default_offer": "o", "export_columns": {"offer": "email"}},
            "offer is already an export column",
        ),
        ({"id": "x", "segments": ["loyal"]}, "no offer for loyal and no default_offer"),
        ({"id": "Bad Id", "segments": ["loyal"], "default_offer": "o"}, "activate.campaigns.0.id"),
        (
            {"id": "x", "propensity_deciles": [0, 3], "default_offer": "o"},
            "deciles run from 1 (the most likely buyers) to 10: 0 is not one",
        ),
        (
            {"id": "x", "segments": ["loyal"], "propensity_deciles": [10, 11], "default_offer": "o"},
            "deciles run from 1 (the most likely buyers) to 10: 11 is not one",
        ),
        (
            {"id": "x", "propensity_deciles": [1]},
            "targets by propensity_deciles only, so needs a default_offer",
        ),
        (
            {"id": "x", "no_purchase_days": 30, "default_offer": "o"},
            "targets nobody: give segments, rfm_labels or propensity_deciles",
        ),
        (
            {"id": "x", "segments": ["loyal"], "no_purchase_days": 0, "default_offer": "o"},
            "activate.campaigns.0.no_purchase_days",
        ),
        (
            # The lake of `activated` has no scores: a campaign that needs them says which job to run.
            {"id": "x", "propensity_deciles": [1, 2], "default_offer": "o"},
            "gold.purchase_propensity does not exist in this lake; run propensity first",
        ),
    ],
)
def test_bad_campaigns_exit_2_before_writing(activated, tmp_path, capsys, campaign, message):
    lake, root, _, _ = activated
    before = lake.version("gold.campaign_audience")
    contacts = os.path.join(os.path.dirname(root), "contacts.csv")
    assert activate(root, write_config(tmp_path, contacts, [campaign])) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert lake.version("gold.campaign_audience") == before


def test_campaign_config_rejects_offers_for_untargeted_and_repeated_ids():
    with pytest.raises(ValueError, match="offers for Champions, which it does not target"):
        CampaignConfig(id="x", segments=["loyal"], offers={"Champions": "o"}, default_offer="d")
    from marketlake.config import load_config

    with pytest.raises(ConfigError, match="campaign ids must be unique: x repeated"):
        load_config(
            None,
            {
                "MARKETLAKE__ACTIVATE__CAMPAIGNS": "[{id: x, segments: [loyal], default_offer: o}, {id: x, segments: [loyal], default_offer: o}]"
            },
        )


SCORED_USERS = 2900  # users u02900.. have no score
PROPENSITY_CAMPAIGNS = [
    # Persuadables among two segments: the middle deciles, capped (the highest p_purchase first).
    {
        "id": "persuadables",
        "segments": ["loyal", "at risk"],
        "propensity_deciles": [4, 5, 6, 7],
        "offers": {"loyal": "L"},
        "default_offer": "D",
        "max_audience": 150,
        "control_share": 0.2,
        "items": 2,
        "cross_sell": 0,
    },
    # Lapsed members of a segment: no scores involved.
    {
        "id": "lapsed-loyal",
        "segments": ["loyal"],
        "no_purchase_days": 30,
        "default_offer": "we miss you",
        "items": 0,
        "cross_sell": 0,
    },
    # Likely buyers who are lapsing, whatever their segment.
    {
        "id": "lapsing-likely",
        "propensity_deciles": [3, 1, 2],
        "no_purchase_days": 30,
        "default_offer": "come back",
        "items": 0,
        "cross_sell": 0,
    },
    CAMPAIGNS[2],  # "capped": no propensity, same inputs: the same rows as without scores
]


def write_scores(spark, lake: Lake, date: dt.date = RUN_DATE) -> None:
    """gold.purchase_propensity for the first SCORED_USERS users: deciles spread over the segments, and
    five p_purchase levels per decile, so that ties are common (as isotonic calibration makes them)."""
    decile = (F.floor(F.col("id") * 13 / 10) % 10 + 1).cast("int")
    scores = spark.range(SCORED_USERS).select(
        F.format_string("u%05d", "id").alias("user_id"),
        ((F.lit(11) - decile) / 11 + F.col("id") % 5 / 1000).alias("p_purchase"),
        decile.alias("decile"),
        F.lit(None).cast("double").alias("expected_purchases"),
        F.lit(None).cast("double").alias("p_alive"),
        F.lit("gbt").alias("model"),
        F.lit("p1").alias("model_version"),
        F.lit(30).alias("horizon_days"),
        F.lit(date).alias("as_of_date"),
    )
    lake.write("gold.purchase_propensity", scores, "append", partition_by=["as_of_date"])


@pytest.fixture(scope="module")
def scored(spark, config, tmp_path_factory):
    """The job on a lake with scores and PROPENSITY_CAMPAIGNS: (lake, root, audience, users with their
    segment, features and scores)."""
    tmp_path = tmp_path_factory.mktemp("scored")
    root = str(tmp_path / "lake")
    lake = Lake(spark, config.lake, root)
    contacts = write_inputs(spark, lake, tmp_path)
    write_scores(spark, lake)
    assert activate(root, write_config(tmp_path, contacts, PROPENSITY_CAMPAIGNS)) == 0
    frame = lake.read("gold.campaign_audience").filter(F.col("as_of_date") == RUN_DATE).toPandas()
    features = lake.read("gold.user_features").filter(F.col("as_of_date") == RUN_DATE).toPandas()
    segments = lake.read("gold.user_segments").filter(F.col("as_of_date") == RUN_DATE).toPandas()
    scores = lake.read("gold.purchase_propensity").toPandas()
    users = features.merge(segments[["user_id", "segment_name"]], on="user_id").merge(
        scores[["user_id", "p_purchase", "decile"]], on="user_id", how="left"
    )
    return lake, root, frame, users


def lapsed(users: pd.DataFrame, days: int) -> pd.Series:
    return users.days_since_purchase.isna() | (users.days_since_purchase > days)


def cap_order(users: pd.DataFrame, by_score: bool) -> pd.DataFrame:
    """`users` in the documented cap order."""
    keys = pd.DataFrame(
        {
            "neg_p": -users.p_purchase if by_score else 0.0,
            "recency_days": users.recency_days,
            "neg_monetary": -users.monetary,
            "user_id": users.user_id,
        }
    )
    return users.loc[keys.sort_values(list(keys.columns)).index]


def test_deciles_filter_the_targeted_segments_and_rank_the_cap_by_p_purchase(scored):
    _, _, frame, users = scored
    rows = by_campaign(frame, "persuadables").sort_values("audience_rank")
    wanted = users[users.segment_name.isin(["loyal", "at risk"]) & users.decile.between(4, 7)]
    assert len(wanted) > 150  # the cap bites
    expected = cap_order(wanted, by_score=True).head(150)
    assert rows.user_id.tolist() == expected.user_id.tolist()
    assert rows.audience_rank.tolist() == list(range(1, 151))
    assert rows.p_purchase.tolist() == expected.p_purchase.tolist()
    # Ties in p_purchase are broken by recency, as the documented order says, and the cap keeps decile 4.
    assert rows.p_purchase.duplicated().any() and set(expected.decile) == {4}
    assert (rows.offer == rows.segment_name.map({"loyal": "L"}).fillna("D")).all()


def test_no_purchase_days_keeps_those_without_a_purchase_in_the_last_n_days(scored):
    _, _, frame, users = scored
    rows = by_campaign(frame, "lapsed-loyal")
    wanted = users[(users.segment_name == "loyal") & lapsed(users, 30)]
    assert sorted(rows.user_id) == sorted(wanted.user_id)
    kept = users.set_index("user_id").loc[rows.user_id]
    # 30.25 days passes a 30-day filter, 30.0 does not; never bought passes.
    assert (kept.days_since_purchase == 30.25).any() and kept.days_since_purchase.isna().any()
    assert not (kept.days_since_purchase <= 30).any()
    # No propensity in this campaign: no score, and the usual cap order.
    assert rows.p_purchase.isna().all()
    ordered = rows.sort_values("audience_rank")
    assert ordered.user_id.tolist() == cap_order(wanted, by_score=False).user_id.tolist()


def test_a_propensity_only_campaign_with_no_purchase_days_takes_lapsing_likely_buyers(scored):
    _, _, frame, users = scored
    rows = by_campaign(frame, "lapsing-likely")
    wanted = users[users.decile.isin([1, 2, 3]) & lapsed(users, 30)]
    assert sorted(rows.user_id) == sorted(wanted.user_id)
    assert set(wanted.segment_name) == set(SEGMENT_NAMES)  # every segment: no segment targeted
    assert (rows.user_id < user(SCORED_USERS)).all()  # a user without a score has no decile
    assert set(rows.offer) == {"come back"}
    scores = users.set_index("user_id").p_purchase
    assert rows.set_index("user_id").p_purchase.equals(scores.loc[rows.user_id].rename("p_purchase"))
    ordered = rows.sort_values("audience_rank")
    assert ordered.user_id.tolist() == cap_order(wanted, by_score=True).user_id.tolist()


def test_campaigns_without_propensity_are_unchanged_by_scores(activated, scored):
    _, _, without, _ = activated
    _, _, frame, _ = scored

    def rows(audience: pd.DataFrame) -> pd.DataFrame:
        rows = by_campaign(audience, "capped").sort_values("user_id").reset_index(drop=True)
        return rows.assign(items=rows["items"].map(list), cross_sell=rows.cross_sell.map(list))

    before, after = rows(without), rows(frame)
    assert after.p_purchase.isna().all()
    pd.testing.assert_frame_equal(before, after)


def test_exports_of_propensity_campaigns_keep_the_export_columns(scored):
    _, root, frame, _ = scored
    folder = os.path.join(root, "exports", "persuadables", RUN_DATE.isoformat())
    exported = pd.read_parquet(os.path.join(folder, "audience.parquet"))
    assert list(exported.columns) == [
        "campaign_id",
        "user_id",
        "segment_name",
        "rfm_label",
        "offer",
        "channel",
        "audience_rank",
        "item_1",
        "item_2",
    ]
    treatment = by_campaign(frame, "persuadables")
    treatment = treatment[treatment.group == TREATMENT].sort_values("audience_rank")
    assert exported.user_id.tolist() == treatment.user_id.tolist()


def test_scores_missing_for_the_run_date_exit_2(spark, scored, tmp_path, capsys):
    lake, root, _, _ = scored
    later = RUN_DATE + dt.timedelta(days=1)
    for table in ("gold.user_features", "gold.user_segments"):
        rows = lake.read(table).filter(F.col("as_of_date") == RUN_DATE).limit(10)
        lake.write(table, rows.withColumn("as_of_date", F.lit(later)), "append", partition_by=["as_of_date"])
    before = lake.version("gold.campaign_audience")
    contacts = os.path.join(os.path.dirname(root), "contacts.csv")
    assert activate(root, write_config(tmp_path, contacts, PROPENSITY_CAMPAIGNS[2:3]), later) == 2
    err = capsys.readouterr().err.strip()
    assert "gold.purchase_propensity has no rows for 2024-07-01; run propensity for that date first" in err
    assert len(err.splitlines()) == 1, err
    assert lake.version("gold.campaign_audience") == before

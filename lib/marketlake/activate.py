"""Campaign audiences: who each configured campaign reaches, with what, and who is held out as control.

Definitions (the README's "activate" section says the same for readers of the table):

- Eligible: users of gold.user_features for the run date whose segment_name (gold.user_segments, same date)
  is one of the campaign's `segments`, or whose rfm_label is one of its `rfm_labels`; everyone when the
  campaign has neither (it then has `propensity_deciles`). Two filters, both applied when given, narrow that:
  `propensity_deciles` keeps the users whose decile of gold.purchase_propensity (same date; 1 = the 10% most
  likely to buy) is listed, so a user without a score is left out; `no_purchase_days` = N keeps the users
  with no purchase in the N days ending with the run date: days_since_purchase > N, or null (no purchase in
  the features' lookback window).
- p_purchase: the user's calibrated score for a campaign with `propensity_deciles`, null for any other
  campaign (its audience does not depend on the scores, nor on whether the propensity job ran).
- Offer: the offer of the user's segment name, else of their RFM label, else the campaign's default_offer.
- Cap: with `max_audience`, the eligible users are ranked by p_purchase (highest first; campaigns with
  `propensity_deciles` only, the key is null for the others), then recency_days (most recently active
  first), then monetary (highest first), then user_id, and the first `max_audience` are kept
  (`audience_rank`). Both first keys stand for "most likely to respond": where a calibrated score is at
  hand it is the better estimate; recency breaks its ties (isotonic calibration makes many).
  The cap applies before the split, to treatment and control together, so both groups come from the same
  users and the comparison stays fair; the treatment is then about (1 - control_share) x max_audience.
- Group: u = the first 13 hex digits of SHA-256("<salt>|<campaign id>|<user id>") read as a number and
  divided by 16^13 (uniform in [0, 1)); control when u < control_share, else treatment. It depends on
  nothing else, so a user keeps their group on every run and run date, and, the campaign id being part of
  the hash, groups are independent across campaigns. Any SQL engine or Python's hashlib can recompute it.
- items: the user's top `items` recommendations (gold.user_recommendations of the run date, by rank).
- cross_sell: for the items of the user's last order (the latest purchase up to the run date; a purchase
  without an order_id is its own order), their cross-sell items (gold.item_cross_sell of the run date)
  that are not in that order, best first by lift, then confidence, then item_id; the first `cross_sell`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake.config import CampaignConfig

TREATMENT, CONTROL = "treatment", "control"
HASH_HEX_DIGITS = 13  # 52 bits: exact in a double
AUDIENCE_COLUMNS = [
    "campaign_id",
    "user_id",
    "segment_name",
    "rfm_label",
    "p_purchase",
    "offer",
    "channel",
    "items",
    "cross_sell",
    "group",
    "control_share",
    "audience_rank",
    "as_of_date",
]

CAMPAIGN_SCHEMA = T.StructType(
    [
        T.StructField("campaign_id", T.StringType()),
        T.StructField("channel", T.StringType()),
        T.StructField("control_share", T.DoubleType()),
        T.StructField("max_audience", T.LongType()),
        T.StructField("items_n", T.IntegerType()),
        T.StructField("cross_sell_n", T.IntegerType()),
        T.StructField("offers", T.MapType(T.StringType(), T.StringType())),
        T.StructField("default_offer", T.StringType()),
        T.StructField("deciles", T.ArrayType(T.IntegerType())),
        T.StructField("no_purchase_days", T.IntegerType()),
    ]
)
TARGET_SCHEMA = "campaign_id string, target_kind string, target string"


def campaigns_frame(spark: SparkSession, campaigns: list[CampaignConfig]) -> DataFrame:
    """One row per campaign with the settings the transformations need."""
    rows = [
        (
            c.id,
            c.channel,
            float(c.control_share),
            c.max_audience,
            c.items,
            c.cross_sell,
            dict(c.offers),
            c.default_offer,
            sorted(set(c.propensity_deciles)),
            c.no_purchase_days,
        )
        for c in campaigns
    ]
    return spark.createDataFrame(rows, CAMPAIGN_SCHEMA)


def targets_frame(spark: SparkSession, campaigns: list[CampaignConfig]) -> DataFrame:
    """(campaign_id, target_kind: segment | rfm | everyone, target) for every target of every campaign;
    a campaign without segments and RFM labels has one `everyone` row (target null)."""
    rows: list[tuple[str, str, str | None]] = [(c.id, "segment", s) for c in campaigns for s in c.segments]
    rows += [(c.id, "rfm", label) for c in campaigns for label in c.rfm_labels]
    rows += [(c.id, "everyone", None) for c in campaigns if not c.segments and not c.rfm_labels]
    return spark.createDataFrame(rows, TARGET_SCHEMA)


def users_as_of(
    segments: DataFrame, run_date: dt.date, scores: DataFrame | None = None
) -> Callable[[DataFrame], DataFrame]:
    """gold.user_features -> (user_id, rfm_label, recency_days, monetary, days_since_purchase, segment_name,
    p_purchase, decile) of the run date; the last two from `scores` (gold.purchase_propensity), null
    without it."""

    def transform(features: DataFrame) -> DataFrame:
        of_date = F.col("as_of_date") == F.lit(run_date)
        named = segments.filter(of_date).select("user_id", "segment_name")
        users = (
            features.filter(of_date)
            .select("user_id", "rfm_label", "recency_days", "monetary", "days_since_purchase")
            .join(named, "user_id", "left")
        )
        if scores is None:
            return users.withColumns(
                {"p_purchase": F.lit(None).cast("double"), "decile": F.lit(None).cast("int")}
            )
        scored = scores.filter(of_date).select("user_id", "p_purchase", "decile")
        return users.join(scored, "user_id", "left")

    return transform


def eligible(targets: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """users -> one row per (campaign, user) whose segment name or RFM label the campaign targets, and
    every user for a campaign that targets everyone."""

    def transform(users: DataFrame) -> DataFrame:
        def of_kind(kind: str) -> DataFrame:
            return targets.filter(F.col("target_kind") == kind)

        def matching(kind: str, column: str) -> DataFrame:
            wanted = of_kind(kind).select("campaign_id", F.col("target").alias(column))
            return users.join(F.broadcast(wanted), column)

        by_segment = matching("segment", "segment_name")
        by_rfm = matching("rfm", "rfm_label")
        everyone = users.crossJoin(F.broadcast(of_kind("everyone").select("campaign_id")))
        return by_segment.unionByName(by_rfm).unionByName(everyone).dropDuplicates(["campaign_id", "user_id"])

    return transform


def filtered(audience: DataFrame) -> DataFrame:
    """Keeps the users that pass their campaign's `deciles` and `no_purchase_days` filters (an empty list, a
    null: no filter); p_purchase stays only where the campaign filters by decile."""
    by_decile = F.size("deciles") > 0
    # array_contains(.., null) is null, which drops a user without a score from a decile campaign.
    in_deciles = ~by_decile | F.array_contains("deciles", F.col("decile"))
    days = F.col("days_since_purchase")
    lapsed = F.col("no_purchase_days").isNull() | days.isNull() | (days > F.col("no_purchase_days"))
    return audience.filter(in_deciles & lapsed).withColumn(
        "p_purchase", F.when(by_decile, F.col("p_purchase"))
    )


def with_settings(campaigns: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Adds the campaign's channel, control share, list lengths and the user's offer."""

    def transform(audience: DataFrame) -> DataFrame:
        offer = F.coalesce(
            F.col("offers")[F.col("segment_name")],
            F.col("offers")[F.col("rfm_label")],
            F.col("default_offer"),
        )
        return (
            audience.join(F.broadcast(campaigns), "campaign_id")
            .withColumn("offer", offer)
            .drop("offers", "default_offer")
        )

    return transform


def capped(audience: DataFrame) -> DataFrame:
    """Ranks each campaign's users (highest p_purchase, then most recently active, then highest monetary,
    then user_id) and keeps the first max_audience of them (all when max_audience is null)."""
    order = Window.partitionBy("campaign_id").orderBy(
        F.col("p_purchase").desc_nulls_last(),
        F.col("recency_days").asc_nulls_last(),
        F.col("monetary").desc_nulls_last(),
        F.col("user_id"),
    )
    ranked = audience.withColumn("audience_rank", F.row_number().over(order))
    return ranked.filter(F.col("max_audience").isNull() | (F.col("audience_rank") <= F.col("max_audience")))


def group_draw(salt: str) -> Column:
    """u in [0, 1) from SHA-256 of "<salt>|<campaign_id>|<user_id>" (see the module docstring)."""
    digest = F.sha2(F.concat_ws("|", F.lit(salt), F.col("campaign_id"), F.col("user_id")), 256)
    leading = F.conv(F.substring(digest, 1, HASH_HEX_DIGITS), 16, 10).cast("double")
    return leading / F.lit(float(16**HASH_HEX_DIGITS))


def assign_groups(salt: str) -> Callable[[DataFrame], DataFrame]:
    """Adds `group`: control when the user's draw is below the campaign's control_share, else treatment."""

    def transform(audience: DataFrame) -> DataFrame:
        is_control = group_draw(salt) < F.col("control_share")
        return audience.withColumn("group", F.when(is_control, CONTROL).otherwise(TREATMENT))

    return transform


def top_items(recommendations: DataFrame, run_date: dt.date, n: int) -> DataFrame:
    """gold.user_recommendations -> (user_id, items): the item_ids of the run date's first n ranks, in order."""
    ranked = recommendations.filter((F.col("as_of_date") == F.lit(run_date)) & (F.col("rank") <= n))
    ordered = F.sort_array(F.collect_list(F.struct("rank", "item_id")))
    return ranked.groupBy("user_id").agg(F.transform(ordered, lambda r: r["item_id"]).alias("items"))


def last_order_items(run_date: dt.date) -> Callable[[DataFrame], DataFrame]:
    """silver.events -> (user_id, item_id): the distinct items of each user's last order up to the run date."""

    def transform(events: DataFrame) -> DataFrame:
        purchases = events.filter(
            (F.col("event_type") == "purchase") & (F.col("event_date") <= F.lit(run_date))
        ).select("user_id", "item_id", "event_ts", F.coalesce("order_id", "event_id").alias("order_key"))
        last = purchases.groupBy("user_id").agg(
            F.max_by("order_key", F.struct("event_ts", "order_key")).alias("order_key")
        )
        return purchases.join(last, ["user_id", "order_key"]).select("user_id", "item_id").distinct()

    return transform


def cross_sell_for(cross_sell: DataFrame, run_date: dt.date, n: int) -> Callable[[DataFrame], DataFrame]:
    """(user_id, item_id) of last orders -> (user_id, cross_sell): the first n (>= 1) cross-sell items of
    those items that are not in the order, by lift, confidence, then item_id."""

    def transform(bought: DataFrame) -> DataFrame:
        lists = cross_sell.filter(F.col("as_of_date") == F.lit(run_date)).select(
            "item_id", F.col("recommended_item_id").alias("candidate"), "lift", "confidence"
        )
        candidates = (
            bought.join(lists, "item_id")
            .join(bought.withColumnRenamed("item_id", "candidate"), ["user_id", "candidate"], "left_anti")
            .groupBy("user_id", "candidate")
            .agg(F.max("lift").alias("lift"), F.max("confidence").alias("confidence"))
        )
        # Ascending sort of (-lift, -confidence, item) puts the best first and breaks ties by item_id.
        best = F.sort_array(
            F.collect_list(F.struct(-F.col("lift"), -F.col("confidence"), F.col("candidate")))
        )
        picked = F.slice(F.transform(best, lambda s: s["candidate"]), 1, n)
        return candidates.groupBy("user_id").agg(picked.alias("cross_sell"))

    return transform


def with_lists(items: DataFrame | None, cross_sell: DataFrame | None) -> Callable[[DataFrame], DataFrame]:
    """Adds `items` and `cross_sell` (empty arrays when a user, or the whole input, has none), each cut to
    the campaign's own length."""
    empty = F.array().cast("array<string>")

    def transform(audience: DataFrame) -> DataFrame:
        for name, lists, length in (("items", items, "items_n"), ("cross_sell", cross_sell, "cross_sell_n")):
            if lists is None:
                audience = audience.withColumn(name, empty)
            else:
                audience = audience.join(lists, "user_id", "left").withColumn(
                    name, F.slice(F.coalesce(F.col(name), empty), 1, F.col(length))
                )
        return audience

    return transform


def as_audience(run_date: dt.date) -> Callable[[DataFrame], DataFrame]:
    def transform(audience: DataFrame) -> DataFrame:
        return audience.withColumn("as_of_date", F.lit(run_date)).select(*AUDIENCE_COLUMNS)

    return transform


def export_frame(
    campaign: CampaignConfig, contact_columns: DataFrame | None
) -> Callable[[DataFrame], DataFrame]:
    """One campaign's audience rows -> its treatment rows as flat columns for email and ad tools: item_1..,
    cross_sell_1.. and the mapped columns of `contact_columns` (user_id plus the export names)."""

    def transform(audience: DataFrame) -> DataFrame:
        rows = audience.filter((F.col("campaign_id") == campaign.id) & (F.col("group") == TREATMENT))
        flat = [
            *[F.get("items", i).alias(f"item_{i + 1}") for i in range(campaign.items)],
            *[F.get("cross_sell", i).alias(f"cross_sell_{i + 1}") for i in range(campaign.cross_sell)],
        ]
        rows = rows.select(
            "campaign_id", "user_id", "segment_name", "rfm_label", "offer", "channel", "audience_rank", *flat
        )
        if contact_columns is not None:
            rows = rows.join(contact_columns, "user_id", "left").select(
                *rows.columns, *campaign.export_columns
            )
        return rows

    return transform


# OWASP's CSV-injection triggers (=, +, -, @, tab, CR), and the quote itself, so that dropping one leading '
# from a text cell always gives the value back (a value "'=x" is written "''=x", not left looking neutralised).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def neutralise_formulas(frame: DataFrame) -> DataFrame:
    """Prefixes ' to each text cell that starts with one of FORMULA_STARTS, so a spreadsheet shows it as text.

    Only string columns: OWASP's advice concerns text a user can inject. A number is rendered by Spark (digits,
    sign, point, exponent) and can start with "-" only as a negative number, which spreadsheets read as a number,
    not a formula; a ' would turn it into text and the CSV would no longer hold the number of the Parquet file."""

    def neutralised(field: T.StructField) -> Column:
        column = F.col(field.name)
        if not isinstance(field.dataType, T.StringType):
            return column
        starts_a_formula = F.substring(column, 1, 1).isin(*FORMULA_STARTS)
        return F.when(starts_a_formula, F.concat(F.lit("'"), column)).otherwise(column).alias(field.name)

    return frame.select(*[neutralised(field) for field in frame.schema.fields])


def as_csv_cells(frame: DataFrame) -> DataFrame:
    """Export rows -> the cells of audience.csv: arrays, maps and structs as JSON text (the CSV writer takes
    none of them), then text cells neutralised (`neutralise_formulas`)."""
    nested = (T.ArrayType, T.MapType, T.StructType)
    as_text = [
        F.to_json(field.name).alias(field.name) if isinstance(field.dataType, nested) else F.col(field.name)
        for field in frame.schema.fields
    ]
    return neutralise_formulas(frame.select(*as_text))

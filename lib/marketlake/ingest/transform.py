"""Pure transformations of ingestion: source records -> canonical, typed, validated, deduplicated rows.

Records enter as read by `marketlake.ingest.sources.read_records`: the record as received (`_raw`, and
`_raw_bytes` when its bytes were not valid UTF-8), where it came from (`_source_file`, `_source_size`),
its arrival order (`_arrival_*`), whether it could be parsed at all (`_malformed`), whether it is an
empty line (`_blank`), and its source fields as top-level text columns. They leave `classify` with an `_outcome` (accepted, duplicate, rejected) and a machine-readable
`_reason` for the rejected ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from marketlake.ingest.pseudonym import keyed_hash
from marketlake.mapping import CANONICAL, KEYS, SourceMapping

if TYPE_CHECKING:
    from marketlake.privacy import ErasedHashes

META = [
    "_raw",
    "_raw_bytes",
    "_source_file",
    "_source_size",
    "_arrival_block",
    "_arrival_row",
    "_malformed",
    "_blank",
]
# Arrival order: file path, then the split's offset in the file, then the row's position in the split.
ARRIVAL = ["_source_file", "_arrival_block", "_arrival_row"]

ACCEPTED, DUPLICATE, REJECTED, BLANK = "accepted", "duplicate", "rejected", "blank"
# A record of a subject the erase job removed: neither stored (bronze, silver, quarantine) nor quarantined,
# only counted (ops.erasures' user_hashes is the suppression list).
ERASED, ERASED_SUBJECT = "erased", "erased_subject"
CONFLICTING_DUPLICATE = "conflicting_duplicate"
INVALID_UTF8 = "invalid_utf8"
# The reason of a record its reader could not parse, by the mapping's format.
MALFORMED = {"json": "malformed_json", "text": "malformed_line"}

# Silver's columns per entity, in order (events: the text ts becomes event_ts and event_date).
SILVER_EVENT_COLUMNS = [
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "event_ts",
    "event_date",
    "session_id",
    "order_id",
    "quantity",
    "price",
    "revenue",
    "channel",
    "campaign_id",
    "experiment_id",
    "variant",
    "rating",
]
SILVER_USER_COLUMNS = ["user_id", "signup_date", "age", "gender", "region"]
SILVER_ITEM_COLUMNS = ["item_id", "category", "brand", "price", "title", "active"]
SILVER_COLUMNS = {"events": SILVER_EVENT_COLUMNS, "users": SILVER_USER_COLUMNS, "items": SILVER_ITEM_COLUMNS}
# The columns whose values make an event (or user, item) what it is; two records with the same key and
# the same content are one record received twice.
CONTENT_COLUMNS = {
    "events": [c for c in SILVER_EVENT_COLUMNS if c not in ("event_date", "revenue")],
    "users": SILVER_USER_COLUMNS,
    "items": SILVER_ITEM_COLUMNS,
}

TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0")
# An ISO-8601 string that names its zone: Z, +hh:mm, +hhmm or +hh at the end.
ZONE_SUFFIX = r"(Z|z|[+-]\d\d(:?\d\d)?)$"


def text(column: Column) -> Column:
    """Trimmed text, with the empty string as null."""
    return F.nullif(F.trim(column.cast("string")), F.lit(""))


# ---- mapping -------------------------------------------------------------------------------------


def map_columns(
    mapping: SourceMapping,
    source_columns: list[str],
    id_hash: Callable[[list[Column]], Column],
    max_field_bytes: int,
) -> Callable[[DataFrame], DataFrame]:
    """Source fields -> the entity's canonical columns as text (plus `ts` for events), `_excluded`: the
    first matching exclusion rule of the mapping as `excluded:<reason>`, and `_too_long`: the first
    canonical column longer than `max_field_bytes` (in UTF-8) as `field_too_long:<column>`.

    id_hash: how a derived event id is hashed from the mapping's `event_id` columns."""
    available = set(source_columns)

    def source(canonical: str) -> Column:
        given = mapping.source_of(canonical)
        if given is None:
            return F.col(f"`{canonical}`") if canonical in available else F.lit(None).cast("string")
        if given.column is not None:
            return F.col(f"`{given.column}`")
        if given.expr is not None:
            return F.expr(given.expr)
        return F.lit(given.value)

    def transform(records: DataFrame) -> DataFrame:
        columns: dict[str, Column] = {}
        for canonical in CANONICAL[mapping.entity]:
            value = text(source(canonical))
            translations = mapping.values.get(canonical)
            if translations:
                lookup = F.create_map(*[F.lit(part) for pair in translations.items() for part in pair])
                value = F.coalesce(lookup[value], value)
            columns[canonical] = value
        if mapping.entity == "events" and mapping.source_of("ts") is None:
            ts_column = mapping.timestamp.column
            columns["ts"] = (
                text(F.col(f"`{ts_column}`")) if ts_column in available else F.lit(None).cast("string")
            )
        if mapping.entity == "events" and mapping.event_id:
            parts = [text(F.col(f"`{name}`")) for name in mapping.event_id]
            columns["event_id"] = F.when(F.coalesce(*parts).isNotNull(), id_hash(parts))
        excluded = F.lit(None).cast("string")
        for rule in reversed(mapping.exclude):  # the first matching rule names the reason
            excluded = F.when(
                F.coalesce(F.expr(rule.when), F.lit(False)), F.lit(f"excluded:{rule.reason}")
            ).otherwise(excluded)
        too_long = F.lit(None).cast("string")
        for name, value in reversed(columns.items()):  # the first long column names the reason
            too_long = F.when(
                F.octet_length(value) > max_field_bytes, F.lit(f"field_too_long:{name}")
            ).otherwise(too_long)
        named = [value.alias(name) for name, value in columns.items()]
        mapped = records.select(*META, *named, excluded.alias("_excluded"), too_long.alias("_too_long"))
        if mapping.entity == "events" and mapping.event_id and mapping.identical_records == "distinct":
            mapped = mapped.transform(rank_identical(id_hash))
        return mapped

    return transform


def rank_identical(id_hash: Callable[[list[Column]], Column]) -> Callable[[DataFrame], DataFrame]:
    """Gives the 2nd, 3rd... record of a file with one derived event_id an id of its own: the hash of the
    id and its rank in arrival order. The first keeps its id, and a file read again gets the same ids.

    Only the ids repeated within a file are gathered, with their arrivals, and joined back (a broadcast
    when small), so the records themselves are not shuffled."""
    arrival = F.struct("_arrival_block", "_arrival_row")

    def transform(mapped: DataFrame) -> DataFrame:
        repeated = (
            mapped.filter(F.col("event_id").isNotNull())
            .groupBy("_source_file", "event_id")
            .agg(F.sort_array(F.collect_list(arrival)).alias("_arrivals"))
            .filter(F.size("_arrivals") > 1)
        )
        rank = F.array_position("_arrivals", arrival)  # null for an id not repeated
        return (
            mapped.join(repeated, ["_source_file", "event_id"], "left")
            .withColumn(
                "event_id",
                F.when(rank > 1, id_hash([F.col("event_id"), rank.cast("string")])).otherwise(
                    F.col("event_id")
                ),
            )
            .drop("_arrivals")
        )

    return transform


def derived_id(parts: list[Column]) -> Column:
    """An id from source values: 128 bits of SHA-256 over their JSON array (nulls kept apart from '')."""
    return F.substring(F.sha2(F.to_json(F.array(*parts)), 256), 1, 32)


# ---- typing and validation -------------------------------------------------------------------------


def parse_timestamp(ts: Column, mapping: SourceMapping) -> Column:
    """Text -> UTC timestamp (null when it does not parse)."""
    options = mapping.timestamp
    if options.unit is not None:
        number = ts.try_cast("double")
        factor = 1 if options.unit == "seconds" else 1000
        return F.when(number.isNotNull(), F.timestamp_micros((number * (1_000_000 / factor)).cast("long")))
    parsed = (
        F.coalesce(*[F.try_to_timestamp(ts, F.lit(fmt)) for fmt in options.formats])
        if options.formats
        else F.try_to_timestamp(ts)
    )
    if options.timezone:
        parsed = F.when(ts.rlike(ZONE_SUFFIX), parsed).otherwise(F.to_utc_timestamp(parsed, options.timezone))
    return parsed


def integral(value: Column) -> Column:
    """Text -> int when it is a whole number (2, 2.0), else null."""
    number = value.try_cast("double")
    return F.when((number == F.floor(number)) & (F.abs(number) < 2**31), number.cast("int"))


def first_reason(*checks: tuple[Column, Column | str]) -> Column:
    """The reason of the first failing check, or null when all pass."""
    reason = F.lit(None).cast("string")
    for failed, why in reversed(checks):
        why_column = F.lit(why) if isinstance(why, str) else why
        reason = F.when(F.coalesce(failed, F.lit(False)), why_column).otherwise(reason)
    return reason


def missing_checks(names: list[str]) -> list[tuple[Column, str]]:
    return [(F.col(name).isNull(), f"missing:{name}") for name in names]


def record_checks(mapping: SourceMapping) -> list[tuple[Column, Column | str]]:
    """The checks of a record as a whole, before its fields' (every entity, in this order)."""
    return [
        (F.col("_raw_bytes").isNotNull(), INVALID_UTF8),
        (F.col("_malformed"), MALFORMED.get(mapping.format, "malformed_record")),
        (F.col("_too_long").isNotNull(), F.col("_too_long")),
        (F.col("_excluded").isNotNull(), F.col("_excluded")),
    ]


def validate_events(
    mapping: SourceMapping, event_types: list[str], run_date: dt.date, future_tolerance_hours: float
) -> Callable[[DataFrame], DataFrame]:
    """Canonical event text -> typed silver columns and `_reason` (null for a valid event)."""
    end_of_run_date = dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    cutoff = end_of_run_date + dt.timedelta(hours=future_tolerance_hours)  # aware: any session time zone

    def transform(mapped: DataFrame) -> DataFrame:
        event_type = F.lower(F.col("event_type"))
        event_ts = parse_timestamp(F.col("ts"), mapping)
        quantity, price, rating = (
            integral(F.col("quantity")),
            F.col("price").try_cast("double"),
            F.col("rating").try_cast("double"),
        )
        buys = event_type.isin("purchase", "add_to_cart")
        reason = first_reason(
            *record_checks(mapping),
            *missing_checks(["event_id", "user_id", "item_id", "event_type", "ts"]),
            (~event_type.isin(*event_types), F.concat(F.lit("unknown_event_type:"), event_type)),
            (event_ts.isNull(), "unparseable_ts"),
            (event_ts > F.lit(cutoff), "future_ts"),
            (F.col("quantity").isNotNull() & quantity.isNull(), "invalid:quantity"),
            (F.col("price").isNotNull() & (price.isNull() | F.isnan(price)), "invalid:price"),
            (F.col("rating").isNotNull() & (rating.isNull() | F.isnan(rating)), "invalid:rating"),
            (price < 0, "negative_price"),
            ((event_type == "purchase") & price.isNull(), "missing:price"),
            (buys & quantity.isNull(), "missing:quantity"),
            (buys & (quantity <= 0), "invalid:quantity"),
        )
        return mapped.select(
            *META,
            "event_id",
            "user_id",
            "item_id",
            event_type.alias("event_type"),
            event_ts.alias("event_ts"),
            F.to_date(event_ts).alias("event_date"),
            "session_id",
            "order_id",
            quantity.alias("quantity"),
            price.alias("price"),
            F.when(event_type == "purchase", quantity * price).otherwise(F.lit(0.0)).alias("revenue"),
            "channel",
            "campaign_id",
            "experiment_id",
            "variant",
            rating.alias("rating"),
            reason.alias("_reason"),
        )

    return transform


def validate_users(mapping: SourceMapping) -> Callable[[DataFrame], DataFrame]:
    def transform(mapped: DataFrame) -> DataFrame:
        signup = F.coalesce(
            F.try_to_date(F.col("signup_date")), F.to_date(F.try_to_timestamp(F.col("signup_date")))
        )
        age = integral(F.col("age"))
        reason = first_reason(
            *record_checks(mapping),
            *missing_checks(["user_id"]),
            (F.col("signup_date").isNotNull() & signup.isNull(), "invalid:signup_date"),
            (F.col("age").isNotNull() & (age.isNull() | (age < 0) | (age > 130)), "invalid:age"),
        )
        return mapped.select(
            *META,
            "user_id",
            signup.alias("signup_date"),
            age.alias("age"),
            "gender",
            "region",
            reason.alias("_reason"),
        )

    return transform


def validate_items(mapping: SourceMapping) -> Callable[[DataFrame], DataFrame]:
    def transform(mapped: DataFrame) -> DataFrame:
        price = F.col("price").try_cast("double")
        word = F.lower(F.col("active"))
        active = F.when(word.isin(*TRUE_WORDS), True).when(word.isin(*FALSE_WORDS), False)
        reason = first_reason(
            *record_checks(mapping),
            *missing_checks(["item_id"]),
            (F.col("price").isNotNull() & (price.isNull() | F.isnan(price)), "invalid:price"),
            (price < 0, "negative_price"),
            (F.col("active").isNotNull() & active.isNull(), "invalid:active"),
        )
        return mapped.select(
            *META,
            "item_id",
            "category",
            "brand",
            price.alias("price"),
            "title",
            # An item is active unless the source says otherwise.
            F.coalesce(active, F.lit(True)).alias("active"),
            reason.alias("_reason"),
        )

    return transform


def suppressed(records: DataFrame, erased_hashes: ErasedHashes | None) -> DataFrame:
    """Validated records -> the same, with `_reason` erased_subject on every record whose user_id's keyed
    hash is on the suppression list (whatever else was wrong with it: an erased subject's record is not
    quarantined either). classify makes them `erased`; nothing stores them."""
    if erased_hashes is None or not erased_hashes.hashes or "user_id" not in records.columns:
        return records
    hashed = keyed_hash(erased_hashes.key)(F.col("user_id"))
    return records.withColumn(
        "_reason",
        F.when(hashed.isin(*sorted(erased_hashes.hashes)), F.lit(ERASED_SUBJECT)).otherwise(F.col("_reason")),
    )


# ---- deduplication ---------------------------------------------------------------------------------


def content_hash(entity: str) -> Column:
    """A 64-bit hash of a row's content: equal content, equal hash (it only ever compares rows that share
    a key, so a collision would need two different versions of one event to collide)."""
    return F.xxhash64(*[F.col(name) for name in CONTENT_COLUMNS[entity]])


def is_valid() -> Column:
    return ~F.col("_blank") & F.col("_reason").isNull()


def key_facts(entity: str, existing: DataFrame | None) -> Callable[[DataFrame], DataFrame]:
    """Validated rows -> one narrow row per key that needs a decision beyond "accept": keys held by more
    than one valid row of the batch (`_n`, the first arrival and its content hash), and keys the silver
    table `existing` already holds (their content hash there). Usually a small fraction of the keys, so
    `classify` can join it to the rows without shuffling them."""
    key = KEYS[entity]

    def transform(validated: DataFrame) -> DataFrame:
        valid = validated.filter(is_valid())
        # One aggregation over every valid row (measured at 10^6 events: as fast as counting alone, and
        # faster than counting first and then aggregating the repeated keys' rows through a join).
        repeated = (
            valid.select(key, F.struct(*ARRIVAL).alias("_arrival"), content_hash(entity).alias("_hash"))
            .groupBy(key)
            .agg(
                F.count("*").alias("_n"),
                F.min("_arrival").alias("_first_arrival"),
                F.min_by("_hash", "_arrival").alias("_first_hash"),
            )
            .filter(F.col("_n") > 1)
        )
        if existing is None:
            return repeated.withColumn("_existing_hash", F.lit(None).cast("long"))
        known = existing.join(valid.select(key).distinct(), key, "left_semi").select(
            key, content_hash(entity).alias("_existing_hash")
        )
        return repeated.join(known, key, "full_outer")

    return transform


def classify(
    entity: str, facts: DataFrame, conflicts_with_existing: bool, broadcast: bool
) -> Callable[[DataFrame], DataFrame]:
    """Adds `_outcome` to validated rows: blank lines are `blank`; invalid rows are rejected with their
    reason; of the valid rows sharing a key, the first to arrive is accepted, later ones with the same
    content are duplicates and later ones with other content are rejected as conflicting_duplicate.

    facts: `key_facts` of the same rows. A key already in silver makes a row a duplicate when its content
    is equal; otherwise a conflicting duplicate (events: first arrival wins), or an accepted update
    (`conflicts_with_existing=False`: users and items, whose later versions replace earlier ones).
    broadcast: join the facts to every executor (no shuffle of the rows, which keeps their file order)."""
    key = KEYS[entity]

    def transform(validated: DataFrame) -> DataFrame:
        rows = validated.join(F.broadcast(facts) if broadcast else facts, key, "left")
        own_hash = F.when(is_valid(), content_hash(entity))
        in_silver = F.col("_existing_hash").isNotNull()
        first = F.col("_n").isNull() | (F.struct(*ARRIVAL) == F.col("_first_arrival"))
        outcome = (
            F.when(F.col("_blank"), BLANK)
            .when(F.col("_reason") == ERASED_SUBJECT, ERASED)
            .when(F.col("_reason").isNotNull(), REJECTED)
            .when(in_silver & (own_hash == F.col("_existing_hash")), DUPLICATE)
            .when(in_silver & F.lit(conflicts_with_existing), REJECTED)
            .when(first, ACCEPTED)
            .when(own_hash == F.col("_first_hash"), DUPLICATE)
            .otherwise(REJECTED)
        )
        reason = F.coalesce(F.col("_reason"), F.when(outcome == REJECTED, F.lit(CONFLICTING_DUPLICATE)))
        return (
            rows.withColumn("_outcome", outcome)
            .withColumn("_reason", reason)
            .drop("_n", "_first_arrival", "_first_hash", "_existing_hash")
        )

    return transform

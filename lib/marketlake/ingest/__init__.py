"""Ingestion: raw files -> bronze (as received), silver (typed, valid, unique) and quarantine (rejected,
with a reason), for events, users and items.

One run reads the files under a source that no earlier run ingested (`ops.ingested_files` lists them by
path, size and modification time), or all of them with `force`. Every table write is idempotent by
content, so a re-run, a forced re-ingest or a re-run after a crash between two commits leaves the same
tables:

- bronze.events skips files whose (path, size) it already holds;
- silver.events keeps the first arrival of each event_id: a later record with equal content is a
  duplicate (counted, not stored), one with other content is quarantined as conflicting_duplicate;
- silver.users / silver.items take later versions of a key as updates (upsert) and skip equal ones;
- quarantine.<entity> skips records (file, raw text, reason) it already holds;
- ops.ingested_files is written last, so a crash before it makes the next run read the files again.

Conservation, per entity: records read = accepted + rejected + duplicates (blank lines are counted apart).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake.config import IngestConfig
from marketlake.ingest.pseudonym import keyed_hash, load_key
from marketlake.ingest.sources import SourceFile, list_source_files, read_records
from marketlake.ingest.transform import (
    ACCEPTED,
    BLANK,
    DUPLICATE,
    REJECTED,
    SILVER_COLUMNS,
    classify,
    derived_id,
    key_facts,
    map_columns,
    validate_events,
    validate_items,
    validate_users,
)
from marketlake.mapping import KEYS, SourceMapping

log = logging.getLogger("marketlake.ingest")

MANIFEST = "ops.ingested_files"
LINEAGE = ["source_file", "batch_id", "ingested_at"]
# Up to this many keys to decide (repeated in the batch or already in silver) are joined to the records
# by broadcast, keeping them unshuffled; more (a forced re-ingest of a large batch) take a shuffle join.
BROADCAST_KEYS = 500_000
# How many distinct rejection reasons the counts name one by one (the rest are summed as "other").
REASONS_NAMED = 20


@dataclass(frozen=True)
class IngestRequest:
    entity: str
    source: str
    mapping: SourceMapping
    format: str
    force: bool = False


@dataclass
class IngestResult:
    entity: str
    counts: dict[str, int]

    def conservation(self) -> str:
        c = self.counts
        if not c.get("records_read") and not c.get("files_new"):
            return f"{self.entity}: nothing new ({c.get('files', 0)} file(s) already ingested; --force re-reads them)"
        return (
            f"{self.entity}: {c['records_read']:,} records read = {c['accepted']:,} accepted + "
            f"{c['rejected']:,} rejected + {c['duplicates']:,} duplicates"
            + (f" ({c['blank_lines']:,} blank lines skipped)" if c.get("blank_lines") else "")
        )


def silver_table(entity: str) -> str:
    return f"silver.{entity}"


def quarantine_table(entity: str) -> str:
    return f"quarantine.{entity}"


def ingest(ctx, request: IngestRequest, settings: IngestConfig) -> IngestResult:
    """Ingest one entity from one source (see the module's docstring); returns its counts."""
    spark, lake, entity, mapping = ctx.spark, ctx.lake, request.entity, request.mapping
    with ctx.step(f"{entity}: list {request.source}") as step:
        files = list_source_files(spark, request.source)
        done = set() if request.force else ingested_files(lake, entity, mapping.name)
        new = [f for f in files if (f.path, f.size, f.modified_ms) not in done]
        step.rows = len(new)
        step.detail = f"new of {len(files)} files" + (" (forced)" if request.force else "")
    counts = {"files": len(files), "files_new": len(new), "records_read": 0, "accepted": 0, "rejected": 0, "duplicates": 0}
    if not new:
        return IngestResult(entity, counts)

    ingested_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    lineage = {"batch_id": F.lit(ctx.run_id), "ingested_at": F.lit(ingested_at).cast("timestamp"),
               "ingest_date": F.lit(ctx.run_date)}  # fmt: skip
    records, source_columns = read_records(spark, new, mapping, request.format, settings.pii_columns)
    if entity == "events":
        with ctx.step("events: bronze.events") as step:
            step.rows = write_bronze(lake, records.withColumns(lineage))
    # Cached: every later step reads these rows. Only what they need: not the file sizes (bronze's), nor
    # `_malformed` (folded into `_reason`), nor the lineage constants (added on the way out).
    validated = (
        records.transform(validate_records(source_columns, request, settings, ctx.run_date))
        .drop("_source_size", "_malformed")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    facts = None
    try:
        with ctx.step(f"{entity}: read, validate, deduplicate") as step:
            table = silver_table(entity)
            existing = lake.read(table) if lake.exists(table) else None
            facts = validated.transform(key_facts(entity, existing)).persist(StorageLevel.MEMORY_AND_DISK)
            keys_to_decide = facts.count()
            classified = validated.transform(
                classify(entity, facts, conflicts_with_existing=entity == "events", broadcast=keys_to_decide <= BROADCAST_KEYS)
            ).withColumns(lineage)
            # One row per file, outcome and reason: the counts, and the records of each file.
            tally = classified.groupBy("_source_file", "_outcome", "_reason").count().collect()
            counts.update(summarise(tally))
            step.rows = counts["records_read"]
            step.detail = f"records ({keys_to_decide:,} keys repeated or already in {table})"
        with ctx.step(f"{entity}: {silver_table(entity)}") as step:
            accepted = classified.filter(F.col("_outcome") == ACCEPTED)
            step.rows = write_silver(lake, entity, accepted) if counts["accepted"] else 0
        with ctx.step(f"{entity}: {quarantine_table(entity)}") as step:
            rejected = classified.filter(F.col("_outcome") == REJECTED)
            step.rows = write_quarantine(lake, entity, rejected) if counts["rejected"] else 0
            counts["quarantined_new"] = step.rows
        with ctx.step(f"{entity}: {MANIFEST}") as step:
            per_file: dict[str, int] = {}
            for row in tally:
                if row["_outcome"] != BLANK:
                    per_file[row["_source_file"]] = per_file.get(row["_source_file"], 0) + row["count"]
            step.rows = record_files(spark, lake, per_file, new, entity, mapping.name, ctx.run_id, ctx.run_date, ingested_at)
    finally:
        validated.unpersist()
        if facts is not None:
            facts.unpersist()
    return IngestResult(entity, counts)


def validated_records(spark, files: list[SourceFile], request: IngestRequest, settings: IngestConfig, run_date: dt.date) -> DataFrame:
    """The records of `files`, mapped to the entity's canonical columns, typed and validated."""
    records, source_columns = read_records(spark, files, request.mapping, request.format, settings.pii_columns)
    return records.transform(validate_records(source_columns, request, settings, run_date))


def validate_records(
    source_columns: list[str], request: IngestRequest, settings: IngestConfig, run_date: dt.date
) -> Callable[[DataFrame], DataFrame]:
    """Records as read -> the entity's canonical columns, typed and validated: the pure part of ingestion
    before deduplication, composed."""
    entity, mapping = request.entity, request.mapping
    id_hash = derived_id
    pseudonymise = None
    if settings.pseudonymise_user_ids:
        pseudonymise = keyed_hash(load_key(settings.pseudonym_key_env))
        id_hash = lambda parts: pseudonymise(F.to_json(F.array(*parts)))  # noqa: E731 - the ids name users
    validate = {
        "events": lambda: validate_events(mapping, settings.event_types, run_date, settings.future_tolerance_hours),
        "users": lambda: validate_users(mapping),
        "items": lambda: validate_items(mapping),
    }[entity]()

    def transform(records: DataFrame) -> DataFrame:
        mapped = records.transform(map_columns(mapping, source_columns, id_hash))
        if pseudonymise is not None and entity in ("events", "users"):
            mapped = mapped.withColumn("user_id", pseudonymise(F.col("user_id")))
        return mapped.transform(validate)

    return transform


def summarise(tally) -> dict[str, int]:
    """Counts by outcome, and rejections by reason (the most frequent REASONS_NAMED by name)."""
    by_outcome: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for row in tally:
        by_outcome[row["_outcome"]] = by_outcome.get(row["_outcome"], 0) + row["count"]
        if row["_outcome"] == REJECTED:
            reasons[row["_reason"]] = reasons.get(row["_reason"], 0) + row["count"]
    counts = {
        "accepted": by_outcome.get(ACCEPTED, 0),
        "rejected": by_outcome.get(REJECTED, 0),
        "duplicates": by_outcome.get(DUPLICATE, 0),
        "blank_lines": by_outcome.get(BLANK, 0),
    }
    counts["records_read"] = counts["accepted"] + counts["rejected"] + counts["duplicates"]
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    for reason, count in ranked[:REASONS_NAMED]:
        counts[f"rejected.{reason}"] = count
    if len(ranked) > REASONS_NAMED:
        counts["rejected.other"] = sum(count for _, count in ranked[REASONS_NAMED:])
    return counts


# ---- writes ----------------------------------------------------------------------------------------


def write_bronze(lake, records: DataFrame) -> int:
    """Every record as received (blank lines aside), except those of file versions bronze already holds."""
    rows = records.filter(~F.col("_blank")).select(
        F.col("_raw").alias("raw"), F.col("_source_file").alias("source_file"),
        F.col("_source_size").alias("source_size"), "batch_id", "ingested_at", "ingest_date",
    )  # fmt: skip
    if lake.exists("bronze.events"):
        held = lake.read("bronze.events").select("source_file", "source_size").distinct()
        rows = rows.join(F.broadcast(held), ["source_file", "source_size"], "left_anti")
    return lake.write("bronze.events", rows, partition_by=["ingest_date"]).rows


def write_silver(lake, entity: str, accepted: DataFrame) -> int:
    rows = accepted.select(*SILVER_COLUMNS[entity], F.col("_source_file").alias("source_file"), "batch_id", "ingested_at")
    table = silver_table(entity)
    if entity == "events":
        return lake.write(table, rows, partition_by=["event_date"]).rows
    return lake.upsert(table, rows, keys=[KEYS[entity]]).rows


def write_quarantine(lake, entity: str, rejected: DataFrame) -> int:
    """Rejected records with their reason, except those (file, raw, reason) already quarantined."""
    rows = rejected.select(
        F.col("_raw").alias("raw"), F.col("_reason").alias("reason"), F.col("_source_file").alias("source_file"),
        "batch_id", "ingested_at", "ingest_date",
    )  # fmt: skip
    table = quarantine_table(entity)
    if lake.exists(table):
        held = lake.read(table).select("source_file", "raw", "reason")
        rows = rows.join(held, ["source_file", "raw", "reason"], "left_anti")
    return lake.write(table, rows, partition_by=["ingest_date"]).rows


MANIFEST_SCHEMA = T.StructType([
    T.StructField("source_file", T.StringType()), T.StructField("size", T.LongType()),
    T.StructField("modified_ms", T.LongType()), T.StructField("entity", T.StringType()),
    T.StructField("mapping", T.StringType()), T.StructField("records", T.LongType()),
    T.StructField("batch_id", T.StringType()), T.StructField("run_date", T.DateType()),
    T.StructField("ingested_at", T.TimestampType()),
])  # fmt: skip


def ingested_files(lake, entity: str, mapping: str) -> set[tuple[str, int, int]]:
    """(path, size, modified_ms) of the files earlier runs ingested for this entity and mapping."""
    if not lake.exists(MANIFEST):
        return set()
    rows = (
        lake.read(MANIFEST).filter((F.col("entity") == entity) & (F.col("mapping") == mapping))
        .select("source_file", "size", "modified_ms").distinct().collect()  # one row per file: metadata
    )
    return {(r.source_file, r.size, r.modified_ms) for r in rows}


def record_files(spark, lake, per_file: dict[str, int], files: list[SourceFile], entity: str, mapping: str,
                 batch_id: str, run_date: dt.date, ingested_at: dt.datetime) -> int:  # fmt: skip
    rows = [
        (f.path, f.size, f.modified_ms, entity, mapping, per_file.get(f.path, 0), batch_id, run_date, ingested_at)
        for f in files
    ]
    return lake.write(MANIFEST, spark.createDataFrame(rows, MANIFEST_SCHEMA)).rows

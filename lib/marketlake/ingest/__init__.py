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

A run reads, validates and counts the new records of every request first, then checks each source's
share of rejected records against its max_reject_rate, and only then writes: a bad mapping, a missing
source or a source rejecting too much fails the run with every table as it was. New files without a
single record (a header-only CSV) are nothing to ingest: no commit, no manifest row.

Lineage (source_file, batch_id, ingested_at) is spelled alike in bronze, silver, quarantine and the
manifest, which counts the records each file held. Raw text is valid UTF-8 in every table; a record
whose bytes were not keeps them in bronze's and quarantine's `raw_bytes` (quarantined as invalid_utf8).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.config import IngestConfig
from marketlake.errors import MarketlakeError
from marketlake.ingest.pseudonym import keyed_hash, load_key
from marketlake.ingest.sources import SourceFile, file_uri, list_source_files, read_records
from marketlake.ingest.transform import (
    ACCEPTED,
    ARRIVAL,
    BLANK,
    DUPLICATE,
    ERASED,
    ERASED_SUBJECT,
    REJECTED,
    SILVER_COLUMNS,
    classify,
    derived_id,
    key_facts,
    map_columns,
    suppressed,
    validate_events,
    validate_items,
    validate_users,
)
from marketlake.lake import NO_TABLE, Lake
from marketlake.lake.schema import spark_schema
from marketlake.mapping import KEYS, SourceMapping
from marketlake.privacy import ErasedHashes, erased_hashes

if TYPE_CHECKING:
    from marketlake.runner import JobContext

log = logging.getLogger("marketlake.ingest")

MANIFEST, BRONZE = catalog.INGESTED_FILES.name, catalog.BRONZE_EVENTS.name
LINEAGE = ["source_file", "batch_id", "ingested_at"]
# Up to this many keys to decide (repeated in the batch or already in silver) are joined to the records
# by broadcast, keeping them unshuffled; more (a forced re-ingest of a large batch) take a shuffle join.
BROADCAST_KEYS = 500_000
# How many distinct rejection reasons the counts name one by one (the rest are summed as "other").
REASONS_NAMED = 20
# How many reasons the one line of a failed reject-rate check names.
REASONS_SHOWN = 3


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
        if not c.get("records_read"):
            return f"{self.entity}: nothing to ingest: the {c['files_new']:,} new file(s) hold no records" + (
                f" ({c['blank_lines']:,} blank lines)" if c.get("blank_lines") else ""
            )
        return (
            f"{self.entity}: {c['records_read']:,} records read = {c['accepted']:,} accepted + "
            f"{c['rejected']:,} rejected + {c['duplicates']:,} duplicates"
            + (f" + {c[ERASED_SUBJECT]:,} of erased subjects" if c.get(ERASED_SUBJECT) else "")
            + (f" ({c['blank_lines']:,} blank lines skipped)" if c.get("blank_lines") else "")
        )


class RejectRateExceeded(MarketlakeError):
    """A source whose run rejects more than its max_reject_rate of the records read: nothing is written."""

    def __init__(self, message: str, results: list[IngestResult]):
        super().__init__(message)
        self.results = results


@dataclass(frozen=True)
class Lineage:
    """What every row a run writes says of the run (the manifest's run_date is the ingest_date)."""

    batch_id: str
    ingested_at: dt.datetime
    ingest_date: dt.date

    def columns(self) -> dict[str, Column]:
        return {
            "batch_id": F.lit(self.batch_id),
            "ingested_at": F.lit(self.ingested_at).cast("timestamp"),
            "ingest_date": F.lit(self.ingest_date),
        }


@dataclass
class Batch:
    """One request's new files, read, validated, classified and counted: everything but the writes."""

    request: IngestRequest
    files: list[SourceFile]
    counts: dict[str, int]
    tally: list[Row] = field(default_factory=list)  # rows of (_source_file, _outcome, _reason, count)
    records: DataFrame | None = None  # as read (bronze's own pass over the lines)
    validated: DataFrame | None = None  # cached
    classified: DataFrame | None = None
    # The silver version `classified` was decided against (duplicates, conflicts, updates): the silver write
    # commits only while silver is still at it, else the batch is decided again (see write_batch).
    silver_version: int = NO_TABLE
    facts: DataFrame | None = None  # key_facts of that decision (cached)
    cached: list[DataFrame] = field(default_factory=list)

    @property
    def result(self) -> IngestResult:
        return IngestResult(self.request.entity, self.counts)

    @property
    def has_records(self) -> bool:
        return self.counts["records_read"] > 0

    def release(self) -> None:
        for frame in self.cached:
            frame.unpersist()


def silver_table(entity: str) -> str:
    return catalog.silver(entity).name


def quarantine_table(entity: str) -> str:
    return catalog.quarantine(entity).name


def ingest(ctx: JobContext, requests: list[IngestRequest], settings: IngestConfig) -> list[IngestResult]:
    """Ingest each request (see the module's docstring); returns their counts. Every request is read,
    validated and counted before anything is written, so a bad mapping, a missing source or a source
    rejecting too much (RejectRateExceeded) leaves every table as it was."""
    lineage = Lineage(ctx.run_id, dt.datetime.now(dt.timezone.utc).replace(microsecond=0), ctx.run_date)
    batches: list[Batch] = []
    try:
        for request in requests:
            batches.append(read_and_validate(ctx, request, settings, lineage))
        for batch in batches:
            check_reject_rate(batch, settings, [b.result for b in batches])
        for batch in batches:
            if batch.has_records:
                write_batch(ctx, batch, lineage)
    finally:
        for batch in batches:
            batch.release()
    return [batch.result for batch in batches]


def read_and_validate(
    ctx: JobContext, request: IngestRequest, settings: IngestConfig, lineage: Lineage
) -> Batch:
    """The request's new files as records, validated and classified (cached for the writes), and counted."""
    spark, lake, entity, mapping = ctx.spark, ctx.lake, request.entity, request.mapping
    with ctx.step(f"{entity}: list {request.source}") as step:
        files = list_source_files(spark, request.source)
        done = set() if request.force else ingested_files(lake, entity, mapping.name)
        new = [f for f in files if (f.uri, f.size, f.modified_ms) not in done]
        step.rows = len(new)
        step.detail = f"new of {len(files)} files" + (" (forced)" if request.force else "")
    return validate_files(ctx, request, new, settings, lineage, files_listed=len(files))


def validate_files(
    ctx: JobContext,
    request: IngestRequest,
    new: list[SourceFile],
    settings: IngestConfig,
    lineage: Lineage,
    files_listed: int | None = None,
) -> Batch:
    """`new` files of the request as records, validated and classified (cached for the writes), and
    counted: what batch ingest does with the files it found new, and the stream with a micro-batch's."""
    spark, lake, entity, mapping = ctx.spark, ctx.lake, request.entity, request.mapping
    counts = {
        "files": len(new) if files_listed is None else files_listed,
        "files_new": len(new),
        "records_read": 0,
        "accepted": 0,
        "rejected": 0,
        "duplicates": 0,
    }
    batch = Batch(request, new, counts)
    if not new:
        return batch
    batch.records, source_columns = read_records(spark, new, mapping, request.format, settings.pii_columns)
    # Cached: every later step reads these rows. Only what they need: not the file sizes (bronze's), nor
    # `_malformed` (folded into `_reason`), nor the lineage constants (added on the way out).
    erased = erased_hashes(lake, ctx.config)
    validated = (
        batch.records.transform(validate_records(source_columns, request, settings, ctx.run_date, erased))
        .drop("_source_size", "_malformed")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    batch.cached.append(validated)
    batch.validated = validated
    with ctx.step(f"{entity}: read, validate, deduplicate") as step:
        keys_to_decide = decide(lake, batch, lake.snapshot_version(silver_table(entity)), lineage)
        step.rows = counts["records_read"]
        step.detail = f"records ({keys_to_decide:,} keys repeated or already in {silver_table(entity)})"
    return batch


def decide(lake: Lake, batch: Batch, silver_version: int, lineage: Lineage) -> int:
    """Classify the batch's validated rows against silver at `silver_version` (accepted, duplicate,
    rejected) and count them; returns how many keys needed a decision beyond "accept"."""
    entity, validated = batch.request.entity, batch.validated
    assert validated is not None  # read_and_validate sets it before any decision
    facts = validated.transform(key_facts(entity, lake.read_at(silver_table(entity), silver_version)))
    if batch.facts is not None:  # an earlier decision's, against an older silver version
        batch.facts.unpersist()
        batch.cached.remove(batch.facts)
    batch.facts = facts = facts.persist(StorageLevel.MEMORY_AND_DISK)
    batch.cached.append(facts)
    keys_to_decide = facts.count()
    batch.classified = validated.transform(
        classify(
            entity,
            facts,
            conflicts_with_existing=entity == "events",
            broadcast=keys_to_decide <= BROADCAST_KEYS,
        )
    ).withColumns(lineage.columns())
    # One row per file, outcome and reason: the counts, and the records of each file.
    batch.tally = batch.classified.groupBy("_source_file", "_outcome", "_reason").count().collect()
    stale_reasons = [key for key in batch.counts if key.startswith("rejected.")]  # an earlier decision's
    for key in stale_reasons:
        del batch.counts[key]
    batch.counts.update(summarise(batch.tally))
    batch.silver_version = silver_version
    return keys_to_decide


def records_per_file(tally: list[Row], outcome: str | None = None) -> dict[str, int]:
    """Records per source file in a tally: those with `outcome`, or all records (blank lines aside)."""
    per_file: dict[str, int] = {}
    for row in tally:
        if (row["_outcome"] == outcome) if outcome else (row["_outcome"] != BLANK):
            per_file[row["_source_file"]] = per_file.get(row["_source_file"], 0) + row["count"]
    return per_file


def check_reject_rate(batch: Batch, settings: IngestConfig, results: list[IngestResult]) -> None:
    """RejectRateExceeded when the batch rejects more than its source's max_reject_rate of its records."""
    mapping, counts = batch.request.mapping, batch.counts
    limit = settings.max_reject_rate if mapping.max_reject_rate is None else mapping.max_reject_rate
    if not batch.has_records or counts["rejected"] <= limit * counts["records_read"]:
        return
    read, rejected = records_per_file(batch.tally), records_per_file(batch.tally, REJECTED)
    worst = min(rejected, key=lambda uri: (-rejected[uri], uri))
    reasons = sorted(
        ((key.removeprefix("rejected."), n) for key, n in counts.items() if key.startswith("rejected.")),
        key=lambda item: (-item[1], item[0]),
    )[:REASONS_SHOWN]
    raise RejectRateExceeded(
        f"{batch.request.entity}: {counts['rejected']:,} of {counts['records_read']:,} records read were rejected "
        f"({counts['rejected'] / counts['records_read']:.1%}), more than max_reject_rate {limit:g} of mapping "
        f"{mapping.name}; nothing was written. Most rejected: {worst} ({rejected[worst]:,}/{read[worst]:,} rejected); "
        f"top reasons: {', '.join(f'{reason} {n:,}' for reason, n in reasons)}",
        results,
    )


def write_batch(ctx: JobContext, batch: Batch, lineage: Lineage) -> None:
    """The batch's rows into bronze (events), silver and quarantine, then its files into the manifest.

    Each table write is decided from the table's snapshot (what bronze and quarantine already hold, which
    keys silver has) and commits only if no other writer committed since; otherwise it is decided again
    from the new snapshot (Lake.retry_on_conflict). So concurrent runs over the same files store each record
    once, and the run that loses a race counts what the other committed as duplicates.

    A lake carrying an application transaction (a stream's micro-batch, `Lake.with_app_transaction`)
    skips each table that already holds it: the batch is a replay after a crash, committed there before."""
    lake, request, counts, entity = ctx.lake, batch.request, batch.counts, batch.request.entity
    # A batch with records was read (records) and decided (classified) by read_and_validate.
    assert batch.records is not None and batch.classified is not None
    tables = [BRONZE] if entity == "events" else []
    tables += [silver_table(entity), quarantine_table(entity), MANIFEST]
    replayed = [table for table in tables if lake.committed(table)]
    if replayed:
        ctx.note(f"{entity}: {', '.join(replayed)} already hold this batch (a replay): not written again")
        counts["tables_replayed"] = len(replayed)
    if BRONZE in tables and BRONZE not in replayed:
        with ctx.step(f"events: {BRONZE}") as step:
            records = batch.records.withColumns(lineage.columns())
            if counts.get(ERASED_SUBJECT):  # an erased subject's raw lines are not kept either
                erased = batch.classified.filter(F.col("_outcome") == ERASED).select(*ARRIVAL)
                records = records.join(F.broadcast(erased), ARRIVAL, "left_anti")
            step.rows = lake.retry_on_conflict(BRONZE, lambda version: write_bronze(lake, records, version))
    if silver_table(entity) not in replayed:
        write_accepted(ctx, batch, lineage)
    if quarantine_table(entity) not in replayed:
        with ctx.step(f"{entity}: {quarantine_table(entity)}") as step:
            rejected = batch.classified.filter(F.col("_outcome") == REJECTED)
            step.rows = (
                lake.retry_on_conflict(
                    quarantine_table(entity), lambda v: write_quarantine(lake, entity, rejected, v)
                )
                if counts["rejected"]
                else 0
            )
            counts["quarantined_new"] = step.rows
    if MANIFEST not in replayed:
        with ctx.step(f"{entity}: {MANIFEST}") as step:
            step.rows = record_files(
                ctx.spark,
                lake,
                records_per_file(batch.tally),
                batch.files,
                entity,
                request.mapping.name,
                lineage.batch_id,
                lineage.ingest_date,
                lineage.ingested_at,
            )


def write_accepted(ctx: JobContext, batch: Batch, lineage: Lineage) -> None:
    """The batch's accepted rows into silver, decided again when another run committed there meanwhile."""
    lake, counts, entity = ctx.lake, batch.counts, batch.request.entity
    with ctx.step(f"{entity}: {silver_table(entity)}") as step:
        decided_at = batch.silver_version

        def attempt(version: int) -> int:
            if version != batch.silver_version:  # another run committed to silver since: decide again
                decide(lake, batch, version, lineage)
            assert batch.classified is not None  # decide sets it
            accepted = batch.classified.filter(F.col("_outcome") == ACCEPTED)
            return write_silver(lake, entity, accepted, version) if counts["accepted"] else 0

        step.rows = lake.retry_on_conflict(silver_table(entity), attempt)
        if batch.silver_version != decided_at:
            counts["decided_again"] = counts.get("decided_again", 0) + 1
            step.detail = "decided again: another run committed to the table meanwhile"


def validated_records(
    spark: SparkSession,
    files: list[SourceFile],
    request: IngestRequest,
    settings: IngestConfig,
    run_date: dt.date,
) -> DataFrame:
    """The records of `files`, mapped to the entity's canonical columns, typed and validated."""
    records, source_columns = read_records(
        spark, files, request.mapping, request.format, settings.pii_columns
    )
    return records.transform(validate_records(source_columns, request, settings, run_date))


def validate_records(
    source_columns: list[str],
    request: IngestRequest,
    settings: IngestConfig,
    run_date: dt.date,
    erased: ErasedHashes | None = None,
) -> Callable[[DataFrame], DataFrame]:
    """Records as read -> the entity's canonical columns, typed and validated: the pure part of ingestion
    before deduplication, composed. `erased`: the suppression list (`suppressed`)."""
    entity, mapping = request.entity, request.mapping
    id_hash = derived_id
    pseudonymise = None
    if settings.pseudonymise_user_ids:
        pseudonymise = keyed_hash(load_key(settings.pseudonym_key_env))
        id_hash = lambda parts: pseudonymise(F.to_json(F.array(*parts)))  # noqa: E731 - the ids name users
    validate = {
        "events": lambda: validate_events(
            mapping, settings.event_types, run_date, settings.future_tolerance_hours
        ),
        "users": lambda: validate_users(mapping),
        "items": lambda: validate_items(mapping),
    }[entity]()

    def transform(records: DataFrame) -> DataFrame:
        mapped = records.transform(map_columns(mapping, source_columns, id_hash, settings.max_field_bytes))
        if pseudonymise is not None and entity in ("events", "users"):
            mapped = mapped.withColumn("user_id", pseudonymise(F.col("user_id")))
        return suppressed(mapped.transform(validate), erased)

    return transform


def summarise(tally: list[Row]) -> dict[str, int]:
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
    if by_outcome.get(ERASED):
        counts[ERASED_SUBJECT] = by_outcome[ERASED]
        counts["records_read"] += by_outcome[ERASED]
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    for reason, count in ranked[:REASONS_NAMED]:
        counts[f"rejected.{reason}"] = count
    if len(ranked) > REASONS_NAMED:
        counts["rejected.other"] = sum(count for _, count in ranked[REASONS_NAMED:])
    return counts


# ---- writes ----------------------------------------------------------------------------------------


def write_bronze(lake: Lake, records: DataFrame, version: int) -> int:
    """Every record as received (blank lines aside), except those of file versions bronze holds at
    `version`; commits only while bronze is at that version."""
    # raw_bytes last: where bronze predates it, the column was added at the end, and both stay alike.
    rows = records.filter(~F.col("_blank")).select(
        F.col("_raw").alias("raw"),
        F.col("_source_file").alias("source_file"),
        F.col("_source_size").alias("source_size"),
        "batch_id",
        "ingested_at",
        "ingest_date",
        F.col("_raw_bytes").alias("raw_bytes"),
    )
    held = lake.read_at(BRONZE, version)
    if held is not None:
        held = held.select("source_file", "source_size").distinct()
        rows = rows.join(F.broadcast(held), ["source_file", "source_size"], "left_anti")
    return lake.write(
        BRONZE, rows, partition_by=["ingest_date"], merge_schema=True, expected_version=version
    ).rows


def write_silver(lake: Lake, entity: str, accepted: DataFrame, version: int) -> int:
    """The accepted rows (decided against silver at `version`), committed only while silver is at it."""
    rows = accepted.select(
        *SILVER_COLUMNS[entity], F.col("_source_file").alias("source_file"), "batch_id", "ingested_at"
    )
    table = silver_table(entity)
    if entity == "events":
        return lake.write(table, rows, partition_by=["event_date"], expected_version=version).rows
    return lake.upsert(table, rows, keys=[KEYS[entity]], expected_version=version).rows


def write_quarantine(lake: Lake, entity: str, rejected: DataFrame, version: int) -> int:
    """Rejected records with their reason, except those (file, raw, reason) quarantined at `version`;
    commits only while the table is at that version."""
    rows = rejected.select(
        F.col("_raw").alias("raw"),
        F.col("_reason").alias("reason"),
        F.col("_source_file").alias("source_file"),
        "batch_id",
        "ingested_at",
        "ingest_date",
        F.col("_raw_bytes").alias("raw_bytes"),  # last, as in tables that predate it
    )
    table = quarantine_table(entity)
    held = lake.read_at(table, version)
    if held is not None:
        rows = rows.join(
            held.select("source_file", "raw", "reason"), ["source_file", "raw", "reason"], "left_anti"
        )
    return lake.write(
        table, rows, partition_by=["ingest_date"], merge_schema=True, expected_version=version
    ).rows


MANIFEST_SCHEMA = spark_schema(catalog.INGESTED_FILES)


def ingested_files(lake: Lake, entity: str, mapping: str) -> set[tuple[str, int, int]]:
    """(path, size, modified_ms) of the files earlier runs ingested for this entity and mapping."""
    if not lake.exists(MANIFEST):
        return set()
    rows = (
        lake.read(MANIFEST)
        .filter((F.col("entity") == entity) & (F.col("mapping") == mapping))
        .select("source_file", "size", "modified_ms")
        .distinct()
        .collect()  # one row per file: metadata
    )
    return {
        (file_uri(r.source_file), r.size, r.modified_ms) for r in rows
    }  # earlier runs spelled some file:///


def record_files(
    spark: SparkSession,
    lake: Lake,
    per_file: dict[str, int],
    files: list[SourceFile],
    entity: str,
    mapping: str,
    batch_id: str,
    run_date: dt.date,
    ingested_at: dt.datetime,
) -> int:
    rows = [
        (
            f.uri,
            f.size,
            f.modified_ms,
            entity,
            mapping,
            per_file.get(f.uri, 0),
            batch_id,
            run_date,
            ingested_at,
        )
        for f in files
    ]
    return lake.write(MANIFEST, spark.createDataFrame(rows, MANIFEST_SCHEMA)).rows

"""The stream: Spark Structured Streaming over a landing folder (or a Kafka topic), one micro-batch at a
time into bronze, silver and quarantine through batch ingest's own code (`marketlake.ingest.validate_files`
and `write_batch`), then one MERGE into gold.realtime_recommendations for the users active in it.

Exactly once. Spark's checkpoint (offsets, commits) fixes which files make micro-batch N, also when N is
run again after a crash. Every commit of batch N records the Delta application transaction
(`marketlake-stream:<id>`, N); before writing a table, the batch asks the table's `transaction_version`
and skips the table when it already holds N (deltalake records the transaction but does not skip by
itself). Beneath that, ingest's writes are idempotent by content (bronze skips files it holds, silver keeps
first arrivals, quarantine skips records it holds), so even a write the check cannot see (a crash after a
commit's files were written, before the commit) is not doubled.

Stopping. SIGTERM sets `stopping`: the micro-batch in flight finishes and commits; the next one raises
`StopRequested` before writing anything and is run again, whole, by the next start. `--available-now`
processes what is there and stops.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake import catalog
from marketlake.config import Config, IngestConfig, RealtimeConfig, StreamConfig
from marketlake.errors import ConcurrentWriteError, MarketlakeError, UsageError
from marketlake.ingest import (
    BRONZE,
    MANIFEST,
    Batch,
    IngestRequest,
    Lineage,
    quarantine_table,
    silver_table,
    validate_files,
    write_batch,
)
from marketlake.ingest.sources import GLOB_CHARACTERS, SourceFile, file_uri
from marketlake.ingest.transform import ACCEPTED, DUPLICATE
from marketlake.lake import Lake
from marketlake.lake.schema import spark_schema
from marketlake.sessions import realtime_recommendations

if TYPE_CHECKING:
    from pyspark.sql.streaming.query import StreamingQuery

    from marketlake.runner import JobContext

log = logging.getLogger("marketlake.stream")

REALTIME = catalog.REALTIME_RECOMMENDATIONS
SILVER_EVENTS = catalog.SILVER_EVENTS
DAILY = catalog.USER_RECOMMENDATIONS
NEXT_ITEMS = catalog.NEXT_ITEMS


# What the file source hands each micro-batch: the files' metadata (the content is read by ingest).
FILE_COLUMNS = ["path", "length", "modificationTime"]
BINARY_FILE_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType()),
        T.StructField("modificationTime", T.TimestampType()),
        T.StructField("length", T.LongType()),
        T.StructField("content", T.BinaryType()),
    ]
)

# blend(session_events, next_items, daily, settings, updated_at) -> REALTIME's columns: the signature of
# marketlake.sessions.realtime_recommendations.
Blend = Callable[[DataFrame, DataFrame, DataFrame, RealtimeConfig, dt.datetime], DataFrame]


class StopRequested(MarketlakeError):
    """Raised at the start of a micro-batch after SIGTERM: nothing of it is written; the next start runs it."""


@dataclass(frozen=True)
class Realtime:
    """How the stream makes each active user's list: the blend, its settings, the session gap."""

    blend: Blend
    settings: RealtimeConfig

    @property
    def session_gap_minutes(self) -> float:
        return self.settings.session_gap_minutes


def session_blend(config: Config) -> Realtime:
    """The blend of the live session with the daily list (`marketlake.sessions.realtime_recommendations`,
    config section `realtime`)."""
    return Realtime(realtime_recommendations, config.realtime)


def app_id(stream_id: str) -> str:
    return f"marketlake-stream:{stream_id}"


# ---- pure parts --------------------------------------------------------------------------------------


def source_files(files: DataFrame) -> list[SourceFile]:
    """The file source's rows (path, length, modificationTime) as ingest's SourceFile, in path order:
    one row per file, metadata only."""
    rows = files.select("path", "length", F.unix_millis("modificationTime").alias("modified_ms")).collect()
    found = [
        SourceFile(
            file_uri(row["path"]),
            int(row["length"]),
            int(row["modified_ms"]),
            GLOB_CHARACTERS.sub(r"\\\1", row["path"]),
        )
        for row in rows
    ]
    return sorted(found, key=lambda f: f.uri)


def active_users(classified: DataFrame) -> DataFrame:
    """Users with a valid event in the micro-batch: accepted, or a duplicate of one silver holds (a replay
    of a batch whose silver commit landed before a crash sees its own events as duplicates)."""
    valid = classified.filter(F.col("_outcome").isin(ACCEPTED, DUPLICATE))
    return valid.select("user_id").distinct()


def session_events(events: DataFrame, users: DataFrame, gap_minutes: float) -> DataFrame:
    """The current session of each of `users`: their events no more than `gap_minutes` before their
    latest event."""
    own = events.join(F.broadcast(users), "user_id")
    latest = own.groupBy("user_id").agg(F.max("event_ts").alias("_latest"))
    start = F.col("_latest") - F.make_dt_interval(secs=F.lit(gap_minutes * 60.0))
    return own.join(latest, "user_id").filter(F.col("event_ts") >= start).drop("_latest")


def latest_as_of(frame: DataFrame) -> DataFrame:
    """The rows of the latest as_of_date."""
    return frame.filter(F.col("as_of_date") == frame.select(F.max("as_of_date")).collect()[0][0])


# ---- one micro-batch -----------------------------------------------------------------------------


@dataclass
class StreamState:
    """What the stream keeps between micro-batches (one thread runs them, in order)."""

    batches: int = 0
    touched: dict[str, set[Any]] = field(default_factory=dict)  # table -> partition values since compaction
    inputs: dict[str, tuple[int, DataFrame]] = field(default_factory=dict)  # table -> (version, rows)


class MicroBatch:
    """The foreachBatch function: micro-batch `batch_id` of the files `frame` lists."""

    def __init__(
        self,
        ctx: JobContext,
        request: IngestRequest,
        ingest_settings: IngestConfig,
        settings: StreamConfig,
        realtime: Realtime | None,
        stopping: threading.Event | None = None,
    ):
        self.ctx, self.request, self.ingest_settings = ctx, request, ingest_settings
        self.settings, self.realtime = settings, realtime
        self.stopping = stopping or threading.Event()
        self.state = StreamState()
        self.app_id = app_id(settings.id)

    def __call__(self, frame: DataFrame, batch_id: int) -> None:
        if self.stopping.is_set():
            raise StopRequested(f"stopping before micro-batch {batch_id}; the next start runs it")
        started = time.perf_counter()
        files = source_files(frame)
        if not files:
            return
        self.process(files, batch_id)
        self.state.batches += 1
        if self.state.batches % self.settings.compact_every_batches == 0:
            self.maintain()
        counts = self.ctx.counts
        counts["batches"] = counts.get("batches", 0) + 1
        self.ctx.note(f"batch {batch_id} | files={len(files)} {time.perf_counter() - started:.2f}s")

    def process(self, files: list[SourceFile], batch_id: int) -> None:
        """Ingest the files as micro-batch `batch_id` (every commit carries the batch's application
        transaction; tables holding it are skipped), then merge the active users' lists."""
        now = dt.datetime.now(dt.timezone.utc)
        lake = self.ctx.lake.with_app_transaction(self.app_id, batch_id)
        # The batch's lineage and run date are its own: a long-running stream crosses midnight.
        ctx = dataclasses.replace(self.ctx, lake=lake, run_date=now.date(), counts={})
        lineage = Lineage(f"stream:{self.settings.id}:{batch_id}", now.replace(microsecond=0), now.date())
        batch = validate_files(ctx, self.request, files, self.ingest_settings, lineage)
        try:
            if batch.has_records:
                write_batch(ctx, batch, lineage)
                self.note_touched(batch, lineage)
                if self.realtime is not None and self.settings.realtime:
                    self.merge_realtime(ctx, batch, now)
        finally:
            batch.release()
        for key, value in batch.counts.items():
            name = f"{self.request.entity}.{key}"
            self.ctx.counts[name] = self.ctx.counts.get(name, 0) + value
        c = batch.counts
        self.ctx.note(
            f"batch {batch_id} | {c['records_read']} records read = {c['accepted']} accepted + "
            f"{c['rejected']} rejected + {c['duplicates']} duplicates"
        )

    def note_touched(self, batch: Batch, lineage: Lineage) -> None:
        assert batch.classified is not None
        entity = self.request.entity
        dates = {
            row[0]
            for row in batch.classified.filter(F.col("_outcome") == ACCEPTED)
            .select("event_date")
            .distinct()
            .collect()
        }
        touched = self.state.touched
        touched.setdefault(silver_table(entity), set()).update(dates)
        for table in (BRONZE, quarantine_table(entity)):
            touched.setdefault(table, set()).add(lineage.ingest_date)
        touched.setdefault(MANIFEST, set())

    def merge_realtime(self, ctx: JobContext, batch: Batch, now: dt.datetime) -> None:
        """One MERGE of the active users' blended lists into gold.realtime_recommendations."""
        realtime, lake = self.realtime, ctx.lake
        assert realtime is not None and batch.classified is not None
        if lake.committed(REALTIME):
            ctx.note(f"{REALTIME.name} already holds this batch (a replay): not merged again")
            return
        with ctx.step(f"{REALTIME.name}: merge") as step:
            users = active_users(batch.classified).cache()
            first_date = (
                batch.classified.filter(F.col("_outcome").isin(ACCEPTED, DUPLICATE))
                .agg(F.min("event_date"))
                .collect()[0][0]
            )
            if first_date is None:
                users.unpersist()
                return
            # A session window ends at the user's latest event, which is at or after the batch's
            # earliest: no event before that day less the gap can be in it.
            since = first_date - dt.timedelta(days=int(realtime.session_gap_minutes // 1440) + 1)
            events = lake.read(SILVER_EVENTS).filter(F.col("event_date") >= F.lit(since))
            current = session_events(events, users, realtime.session_gap_minutes)
            rows = realtime.blend(
                current, self.input(NEXT_ITEMS.name), self.input(DAILY.name), realtime.settings, now
            ).select(*REALTIME.column_names)
            step.rows = lake.retry_on_conflict(
                REALTIME, lambda _: lake.replace_groups(REALTIME, rows, "user_id", list(REALTIME.keys)).rows
            )
            users.unpersist()
        self.state.touched.setdefault(REALTIME.name, set())

    def input(self, table: str) -> DataFrame:
        """The latest as_of_date of a daily table the blend reads, cached until the table changes (the
        daily jobs write a new date); an empty frame while the lake has no such table."""
        lake, spark = self.ctx.lake, self.ctx.spark
        version = lake.snapshot_version(table)
        held = self.state.inputs.get(table)
        if held is not None and held[0] == version:
            return held[1]
        if held is not None:
            held[1].unpersist()
        if version < 0:
            frame = spark.createDataFrame([], _schema_of(table))
        else:
            frame = latest_as_of(lake.read(table)).cache()
        self.state.inputs[table] = (version, frame)
        return frame

    def maintain(self) -> None:
        """Compact what the last batches touched, checkpoint and expire the log of each table: the file
        and log-entry counts stay bounded however long the stream runs."""
        lake, settings = self.ctx.lake, self.settings
        with self.ctx.step("maintenance: compact, checkpoint, expire log") as step:
            compacted = 0
            for table, values in sorted(self.state.touched.items()):
                if not lake.exists(table):
                    continue
                column = _partition_column(table)
                partitions = {column: sorted(values)} if column and values else None
                try:
                    compacted += lake.compact(table, partitions).files_removed
                    lake.expire_log(table, settings.log_retention_hours)
                except ConcurrentWriteError as exc:  # a batch ingest committed meanwhile: next time
                    self.ctx.note(f"maintenance of {table} put off: {exc}")
            step.rows = compacted
            step.detail = "files compacted"
            self.state.touched.clear()


def _partition_column(table: str) -> str | None:
    partitions = catalog.table(table).partition_by
    return partitions[0] if partitions else None


def _schema_of(table: str) -> T.StructType:
    return spark_schema(catalog.table(table))


# ---- the query ---------------------------------------------------------------------------------------


def file_source(spark: SparkSession, path: str, settings: StreamConfig) -> DataFrame:
    """New files under `path` (recursively; hidden names skipped), as metadata rows: the content is read by
    ingest, so the file source only decides which files make each micro-batch."""
    return (
        spark.readStream.format("binaryFile")
        .schema(BINARY_FILE_SCHEMA)
        .option("recursiveFileLookup", "true")
        .option("maxFilesPerTrigger", settings.max_files_per_trigger)
        .load(path)
        .select(*FILE_COLUMNS)
    )


def kafka_source(spark: SparkSession, settings: StreamConfig) -> DataFrame:
    """A Kafka topic's values (one record each). Needs the spark-sql-kafka jars (`--packages
    org.apache.spark:spark-sql-kafka-0-10_2.13:<spark version>`); untested here: none can be had."""
    from marketlake.lake.jvm import class_loads

    if not class_loads(spark, "org.apache.spark.sql.kafka010.KafkaSourceProvider"):
        raise UsageError(
            "stream.source kafka needs the Kafka connector on the classpath: "
            "--packages org.apache.spark:spark-sql-kafka-0-10_2.13:" + spark.version
        )
    kafka = settings.kafka
    if not kafka.bootstrap_servers or not kafka.topic:
        raise UsageError("stream.source kafka needs stream.kafka.bootstrap_servers and stream.kafka.topic")
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", kafka.bootstrap_servers)
        .option("subscribe", kafka.topic)
        .options(**kafka.options)
        .load()
        .select(F.col("value").cast("string").alias("value"))
    )


def kafka_to_files(landing: str, handler: MicroBatch) -> Callable[[DataFrame, int], None]:
    """Kafka micro-batch N is first written as one JSON-lines folder `<landing>/batch=N` (replaced when N
    runs again), then ingested as files, so both sources share one code path and bronze keeps a file to
    name. Untested here (no Kafka jars)."""

    def run(frame: DataFrame, batch_id: int) -> None:
        if handler.stopping.is_set():
            raise StopRequested(f"stopping before micro-batch {batch_id}; the next start runs it")
        folder = f"{landing}/batch={batch_id:012d}"
        frame.coalesce(1).write.mode("overwrite").text(folder)
        spark = frame.sparkSession
        listed = spark.read.format("binaryFile").schema(BINARY_FILE_SCHEMA).load(folder).select(*FILE_COLUMNS)
        handler(listed, batch_id)

    return run


def start(
    spark: SparkSession,
    lake: Lake,
    handler: MicroBatch,
    path: str,
    available_now: bool,
) -> StreamingQuery:
    settings = handler.settings
    checkpoint = lake.stream_checkpoint_dir(settings.id)
    if settings.source == "kafka":
        frame = kafka_source(spark, settings)
        function: Callable[[DataFrame, int], None] = kafka_to_files(path, handler)
    else:
        frame = file_source(spark, path, settings)
        function = handler
    writer = (
        frame.writeStream.foreachBatch(function)
        .option("checkpointLocation", checkpoint)
        .queryName(f"marketlake-stream-{settings.id}")
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{settings.trigger_seconds} seconds")
    return writer.start()


def run_until_stopped(query: StreamingQuery, stopping: threading.Event, poll_seconds: int = 1) -> None:
    """Wait for the query to end: by itself (available-now), by a failure (raised), or after `stopping`
    is set (the batch in flight finishes; the next one stops the query with StopRequested)."""
    from pyspark.errors import StreamingQueryException

    try:
        while query.isActive:
            query.awaitTermination(poll_seconds)
            if stopping.is_set() and not query.status["isTriggerActive"]:
                query.stop()  # between batches: nothing in flight
        query.awaitTermination()
    except StreamingQueryException as exc:
        if stopping.is_set() and "StopRequested" in str(exc):
            return
        raise

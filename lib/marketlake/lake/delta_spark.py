"""The delta-spark engine: `format("delta")` and the DeltaTable API; needs the io.delta jars."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake.errors import ConcurrentWriteError, TableError
from marketlake.lake.engine import (
    DELTA_LOG,
    LOG_RETENTION,
    NO_TABLE,
    AppTransaction,
    CompactResult,
    DataFile,
    PartitionValue,
    TableSummary,
    WriteOptions,
    WriteResult,
    log_retention,
    table_folders,
)
from marketlake.lake.files import Files
from marketlake.lake.jvm import class_loads, delta_log
from marketlake.lake.schema import align_to_table, check_partition_columns

if TYPE_CHECKING:
    from delta.tables import DeltaTable


def delta_spark_available(spark: SparkSession) -> tuple[bool, str]:
    """Whether the delta-spark classes load in this session's JVM and the session is set up for them."""
    no_jars = "the delta-spark jars (io.delta:delta-spark_2.13) are not on the session's classpath"
    if not class_loads(spark, "io.delta.tables.DeltaTable"):
        return False, no_jars
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "io.delta.sql.DeltaSparkSessionExtension" not in extensions:
        return False, "the session lacks spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension"
    return True, "delta-spark classes load in this session"


class DeltaSparkEngine:
    name = "delta-spark"

    def __init__(self, spark: SparkSession, storage_options: dict[str, str] | None = None):
        from delta.tables import DeltaTable  # the Python half; the JVM half must be on the classpath

        self.spark = spark
        self.DeltaTable = DeltaTable
        # Only for listing the lake's folders: Spark reaches the tables with its own Hadoop settings.
        self.files = Files(storage_options)

    def exists(self, uri: str) -> bool:
        return bool(self.DeltaTable.isDeltaTable(self.spark, uri))

    def _open(self, table: str, uri: str) -> DeltaTable:
        if not self.exists(uri):
            raise TableError(f"table {table} does not exist at {uri}")
        return self.DeltaTable.forPath(self.spark, uri)

    def version(self, table: str, uri: str) -> int:
        return int(_first(self._open(table, uri).history(1).select("version"))[0])

    def schema(self, table: str, uri: str) -> tuple[T.StructType, list[str]] | None:
        if not self.exists(uri):
            return None
        detail = _first(self._open(table, uri).detail().select("partitionColumns"))
        return self.spark.read.format("delta").load(uri).schema, list(detail[0])

    def history(self, table: str, uri: str, limit: int | None = None) -> list[dict[str, Any]]:
        frame = self._open(table, uri).history(limit) if limit else self._open(table, uri).history()
        return [
            {
                "version": row["version"],
                "timestamp": int(row["timestamp"].timestamp() * 1000),
                "operation": row["operation"],
                "parameters": dict(row["operationParameters"] or {}),
                "metrics": dict(row["operationMetrics"] or {}),
                "user_metadata": {"marketlake.operation": row["userMetadata"]} if row["userMetadata"] else {},
            }
            for row in frame.collect()  # the log's history: one small row per commit
        ]

    def tables_under(self, root: str) -> list[TableSummary]:
        """Every Delta table at `<root>/<layer>/<name>`, with its version and rows. Delta answers an
        unfiltered count from the statistics in its log (no data file is read)."""
        return [
            TableSummary(table, self.version(table, uri), self.spark.read.format("delta").load(uri).count())
            for table, uri in table_folders(self.files, root)
            if self.exists(uri)
        ]

    def data_files(self, table: str, uri: str) -> list[DataFile]:
        """The current version's data files. delta-spark has no Python API for its file list, so Spark's
        file metadata column names each file of a scan (a metadata-only scan: no data column is read)."""
        _, partition_columns = self.schema(table, uri) or (None, [])
        frame = self.read(table, uri).select(
            F.col("_metadata.file_path").alias("path"),
            F.col("_metadata.file_size").alias("size"),
            *[F.col(f"`{c}`").cast("string").alias(c) for c in partition_columns],
        )
        return [
            DataFile(
                path=row["path"],
                partition=tuple((c, row[c]) for c in partition_columns),
                size=int(row["size"]),
                rows=int(row["count"]),
            )
            for row in frame.groupBy("path", "size", *partition_columns).count().collect()  # one per file
        ]

    def read(self, table: str, uri: str, version: int | None = None) -> DataFrame:
        self._open(table, uri)
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(uri)

    def write(self, table: str, uri: str, df: DataFrame, options: WriteOptions) -> WriteResult:
        mode, partition_by, partitions = options.mode, options.partition_by, options.partitions
        expected_version = options.expected_version
        self._check_expected(table, uri, expected_version)
        current = self.schema(table, uri)
        if current is None:
            check_partition_columns(table, df.schema, list(partition_by or []))
        elif not (mode == "overwrite" and options.overwrite_schema and partitions is None):
            table_schema, table_partitions = current
            if partition_by is not None and list(partition_by) != table_partitions:
                raise TableError(
                    f"{table}: the table is partitioned by {table_partitions}, not {list(partition_by)}"
                )
            partition_by = table_partitions
            df, _ = align_to_table(table, df, table_schema, options.merge_schema)
        writer = df.write.format("delta").mode(mode).option("userMetadata", options.operation)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if options.app_transaction is not None:
            # The caller's application transaction (a stream's micro-batch): delta-spark records it and
            # skips a write whose version it already holds. Untested here (no jars); it takes the place of
            # the marker below, and the expected version is still checked before and after.
            txn = options.app_transaction
            writer = writer.option("txnAppId", txn.app_id).option("txnVersion", txn.version)
            writer = writer.option("userMetadata", f"{options.operation} {txn.app_id}:{txn.version}")
        elif expected_version is not None:
            # Delta's idempotent-write marker under one application id per table: a concurrent checked
            # write to the same table commits a transaction with the same id, which delta-spark's conflict
            # check refuses (ConcurrentTransactionException); a marker already at or past ours skips the write.
            writer = writer.option("txnAppId", f"marketlake:{table}").option(
                "txnVersion", expected_version + 2
            )
        if options.merge_schema:
            writer = writer.option("mergeSchema", "true")
        if options.overwrite_schema and mode == "overwrite":
            writer = writer.option("overwriteSchema", "true")
        if partitions == "dynamic":
            writer = writer.option("partitionOverwriteMode", "dynamic")
        elif partitions:
            writer = writer.option("replaceWhere", _replace_where(partitions))
        try:
            writer.save(uri)
        except Exception as exc:  # delta-spark's concurrency exceptions arrive through py4j
            if "Concurrent" in type(exc).__name__ or "ConcurrentModification" in str(exc)[:300]:
                raise ConcurrentWriteError(f"{table}: {str(exc).splitlines()[0]}") from None
            raise
        result = self._result(table, uri)
        if expected_version is not None and result.version != expected_version + 1:
            raise ConcurrentWriteError(f"{table}: another writer committed first (version {result.version})")
        return result

    def _check_expected(self, table: str, uri: str, expected_version: int | None) -> None:
        if expected_version is None:
            return
        current = self.version(table, uri) if self.exists(uri) else NO_TABLE
        if current != expected_version:
            raise ConcurrentWriteError(f"{table}: at version {current}, not the expected {expected_version}")

    def upsert(
        self,
        table: str,
        uri: str,
        df: DataFrame,
        keys: list[str],
        partition_by: list[str] | None,
        expected_version: int | None = None,
        app_transaction: AppTransaction | None = None,
    ) -> WriteResult:
        if not self.exists(uri):
            return self.write(
                table,
                uri,
                df,
                WriteOptions(
                    mode="append",
                    partition_by=partition_by,
                    operation="upsert",
                    expected_version=expected_version,
                    app_transaction=app_transaction,
                ),
            )
        # MERGE reads the table: delta-spark refuses its commit when a concurrent one touched the same files.
        self._check_expected(table, uri, expected_version)
        target = self._open(table, uri)
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        merge = (
            target.alias("t").merge(df.alias("s"), condition).withSchemaEvolution()
        )  # new columns: this merge only
        merge.whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
        return self._result(table, uri)

    def replace_groups(
        self,
        table: str,
        uri: str,
        df: DataFrame,
        group: str,
        keys: list[str],
        app_transaction: AppTransaction | None = None,
    ) -> WriteResult:
        """As the delta-rs engine's: one MERGE; a target row of a group in `df` that `df` lacks is deleted.
        Thin and untested here (no jars): the DeltaTable API has no per-merge application transaction, so
        the stream's skip-by-transaction check does not cover this table on delta-spark."""
        if not self.exists(uri):
            return self.write(
                table, uri, df, WriteOptions(operation="merge", app_transaction=app_transaction)
            )
        target = self._open(table, uri)
        groups = df.select(group).distinct()
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        (
            target.alias("t")
            .merge(df.alias("s"), condition)
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .whenNotMatchedBySourceDelete(F.col(f"t.`{group}`").isin([row[0] for row in groups.collect()]))
            .execute()
        )
        return self._result(table, uri)

    def transaction_version(self, table: str, uri: str, app_id: str) -> int | None:
        """From the JVM DeltaLog's snapshot (untested here: no jars)."""
        if not self.exists(uri):
            return None
        self._open(table, uri)  # brings the log up to date
        snapshot = delta_log(self.spark, uri).unsafeVolatileSnapshot()
        found = snapshot.transactions().get(app_id)
        return int(found.get()) if found.isDefined() else None

    def vacuum(self, table: str, uri: str, retention_hours: int, removed_only: bool = False) -> list[str]:
        # delta-spark has no per-call way past its retention check (a retention under the table's
        # deletedFileRetentionDuration is refused unless this session conf is off), so it is turned off for
        # this call only and restored after. LITE (Delta 3.3+) deletes only what the log names as removed.
        with _session_conf(self.spark, "spark.databricks.delta.retentionDurationCheck.enabled", "false"):
            if removed_only:
                self._open(table, uri)
                self.spark.sql(f"VACUUM delta.`{uri}` LITE RETAIN {int(retention_hours)} HOURS")
            else:
                self._open(table, uri).vacuum(float(retention_hours))
        return []  # delta-spark reports the count in its own log, not the paths

    def compact(
        self,
        table: str,
        uri: str,
        partitions: Mapping[str, Sequence[PartitionValue]] | None,
        target_bytes: int,
    ) -> CompactResult:
        builder = self._open(table, uri).optimize()
        if partitions:
            builder = builder.where(_replace_where(partitions))
        with _session_conf(self.spark, "spark.databricks.delta.optimize.maxFileSize", str(target_bytes)):
            metrics = _first(builder.executeCompaction().select("metrics"))[0]
        return CompactResult(
            files_removed=int(metrics["numFilesRemoved"]),
            files_added=int(metrics["numFilesAdded"]),
            partitions=int(metrics["partitionsOptimized"]),
        )

    def checkpoint(self, table: str, uri: str) -> None:
        # No Python API; the JVM DeltaLog writes one (delta-spark also checkpoints every 10 commits by itself).
        self._open(table, uri)
        delta_log(self.spark, uri).checkpoint()

    def expire_log(self, table: str, uri: str, retention_hours: int) -> int:
        # delta-spark deletes expired log entries when it writes a checkpoint.
        self._open(table, uri)
        log = uri.rstrip("/") + "/" + DELTA_LOG
        before = {entry.uri for entry in self.files.list(log)}
        self.spark.sql(
            f"ALTER TABLE delta.`{uri}` SET TBLPROPERTIES ('{LOG_RETENTION}' = '{log_retention(retention_hours)}')"
        )
        self.checkpoint(table, uri)
        return len(before - {entry.uri for entry in self.files.list(log)})

    def _result(self, table: str, uri: str) -> WriteResult:
        last = _first(self._open(table, uri).history(1))
        metrics: dict[str, str] = dict(last["operationMetrics"] or {})
        return WriteResult(
            version=int(last["version"]),
            files_added=int(metrics.get("numFiles", metrics.get("numTargetFilesAdded", 0))),
            files_removed=int(metrics.get("numRemovedFiles", metrics.get("numTargetFilesRemoved", 0))),
            rows=int(metrics.get("numOutputRows", 0)),
        )


@contextmanager
def _session_conf(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def _first(frame: DataFrame) -> Row:
    row = frame.first()
    assert row is not None  # the history or detail of a table that exists: never empty
    return row


def _replace_where(partitions: Mapping[str, Sequence[PartitionValue]]) -> str:
    def literal(value: PartitionValue) -> str:
        return "'" + str(value).replace("'", "\\'") + "'"

    return " AND ".join(
        f"`{c}` IN ({', '.join(literal(v) for v in values)})" for c, values in partitions.items()
    )

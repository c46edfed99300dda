"""The delta-rs engine: Spark writes and reads the Parquet files, the `deltalake` package keeps the log.

A write goes in three steps:
1. executors write Parquet files with Spark's own writer into `<table>/_staging/<write id>/`
   (a hidden folder: no Delta reader looks there);
2. the driver moves each file into the table's partition folders and reads its footer for the Delta
   statistics (metadata only; no data row reaches the driver);
3. the driver commits one Delta transaction with the add actions (and, for an overwrite, the removes
   the `deltalake` package derives from the replaced partitions).
A write that dies before step 3 leaves files no snapshot references; `vacuum` removes them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Schema, Transaction
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake.errors import ConcurrentWriteError, TableError
from marketlake.lake.engine import (
    DELTA_LOG,
    LOG_RETENTION,
    NO_TABLE,
    SESSION_SETTINGS,
    AppTransaction,
    CompactResult,
    DataFile,
    Partitions,
    PartitionValue,
    TableSummary,
    WriteOptions,
    WriteResult,
    log_retention,
    table_folders,
)
from marketlake.lake.files import Files, store_uri
from marketlake.lake.schema import align_to_table, as_nullable, check_partition_columns
from marketlake.lake.stats import file_stats

if TYPE_CHECKING:
    from deltalake.schema import Field
    from deltalake.table import FilterConjunctionType

STAGING = "_staging"
DRIVER_LISTING_LIMIT = 20_000
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
# Table features this engine can read and write faithfully; anything else is refused, not ignored.
SUPPORTED_FEATURES = {"appendOnly", "invariants", "timestampNtz"}
# Fault injection for tests (tests/test_stream_faults.py): `<table>:<n>` makes the process exit at once on
# its n-th write to <table>, after the data files are in place and before the commit: the moment a crash
# leaves written files that no version references.
FAULT_BEFORE_COMMIT = "MARKETLAKE_FAULT_EXIT_BEFORE_COMMIT"
_writes_seen: dict[str, int] = {}


def _fault_point(table: str) -> None:
    wanted = os.environ.get(FAULT_BEFORE_COMMIT)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != table:
        return
    _writes_seen[table] = _writes_seen.get(table, 0) + 1
    if _writes_seen[table] == int(nth or 1):
        os._exit(137)


@dataclass(frozen=True)
class StagedFile:
    relative_path: str  # as on disk, relative to the table root
    partition_values: dict[str, str | None]
    size: int
    modification_time: int
    stats: str
    rows: int


class DeltaRsEngine:
    name = "delta-rs"

    def __init__(self, spark: SparkSession, storage_options: dict[str, str] | None = None):
        self.spark = spark
        self.storage_options = dict(storage_options or {}) or None
        self.files = Files(storage_options)

    # ---- snapshot access -------------------------------------------------------------------------

    def _table(self, uri: str, version: int | None = None) -> DeltaTable | None:
        try:
            return DeltaTable(store_uri(uri), version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def _open(self, table: str, uri: str, version: int | None = None) -> DeltaTable:
        delta_table = self._table(uri, version)
        if delta_table is None:
            if version is not None and self.exists(uri):
                raise TableError(
                    f"version {version} of {table} is no longer readable: its log entries were expired "
                    "(housekeeping or an erasure); time travel reaches back only to the oldest checkpoint kept"
                )
            raise TableError(f"table {table} does not exist at {uri}")
        _check_features(table, delta_table)
        return delta_table

    def exists(self, uri: str) -> bool:
        return DeltaTable.is_deltatable(store_uri(uri), storage_options=self.storage_options)

    def version(self, table: str, uri: str) -> int:
        return self._open(table, uri).version()

    def schema(self, table: str, uri: str) -> tuple[T.StructType, list[str]] | None:
        delta_table = self._table(uri)
        if delta_table is None:
            return None
        return _spark_schema(delta_table), list(delta_table.metadata().partition_columns)

    def history(self, table: str, uri: str, limit: int | None = None) -> list[dict[str, Any]]:
        return [
            {
                "version": entry.get("version"),
                "timestamp": entry.get("timestamp"),
                "operation": entry.get("operation"),
                "parameters": entry.get("operationParameters", {}),
                "metrics": entry.get("operationMetrics", {}),
                "user_metadata": {k: v for k, v in entry.items() if k.startswith("marketlake.")},
            }
            for entry in self._open(table, uri).history(limit)
        ]

    def tables_under(self, root: str) -> list[TableSummary]:
        """Every Delta table at `<root>/<layer>/<name>`, with its version and rows, from the logs alone."""
        found = []
        for table, uri in table_folders(self.files, root):
            delta_table = self._table(uri) if self.files.is_dir(f"{uri}/_delta_log") else None
            if delta_table is None:
                continue
            actions = pa.table(delta_table.get_add_actions(flatten=True))
            rows = sum(n or 0 for n in actions.column("num_records").to_pylist()) if actions.num_rows else 0
            found.append(TableSummary(table, delta_table.version(), rows))
        return found

    def data_files(self, table: str, uri: str) -> list[DataFile]:
        """The current version's data files, from the log alone."""
        delta_table = self._open(table, uri)
        columns = list(delta_table.metadata().partition_columns)
        actions = pa.table(delta_table.get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return []
        values = {c: actions.column(f"partition.{c}").to_pylist() for c in columns}
        return [
            DataFile(
                path=urllib.parse.unquote(path),
                partition=tuple((c, _hive_value(values[c][i])) for c in columns),
                size=int(size),
                rows=int(rows or 0),
            )
            for i, (path, size, rows) in enumerate(
                zip(
                    actions.column("path").to_pylist(),
                    actions.column("size_bytes").to_pylist(),
                    actions.column("num_records").to_pylist(),
                    strict=True,
                )
            )
        ]

    # ---- read ------------------------------------------------------------------------------------

    def read(self, table: str, uri: str, version: int | None = None) -> DataFrame:
        delta_table = self._open(table, uri, version)
        schema = _spark_schema(delta_table)
        partition_columns = list(delta_table.metadata().partition_columns)
        actions = pa.table(delta_table.get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return self.spark.createDataFrame([], schema)
        relative = [urllib.parse.unquote(path) for path in actions.column("path").to_pylist()]
        files = [_join(uri, path) for path in relative]
        with self._listing_in_driver(uri, len(files)):
            return self._scan(schema, partition_columns, uri, files, relative, actions)

    def _scan(
        self,
        schema: T.StructType,
        partition_columns: list[str],
        uri: str,
        files: list[str],
        relative: list[str],
        actions: pa.Table,
    ) -> DataFrame:
        if not partition_columns:
            return self.spark.read.schema(schema).parquet(*files)
        columns = {c: actions.column(f"partition.{c}").to_pylist() for c in partition_columns}
        values = [{c: columns[c][i] for c in partition_columns} for i in range(len(files))]
        if all(
            _hive_values(path, partition_columns) == _as_hive(v)
            for path, v in zip(relative, values, strict=True)
        ):
            frame = self.spark.read.schema(schema).option("basePath", uri).parquet(*files)
            return frame.select(*[F.col(f"`{f.name}`") for f in schema.fields])
        return self._read_by_partition(schema, partition_columns, files, values)

    @contextlib.contextmanager
    def _listing_in_driver(self, uri: str, files: int) -> Iterator[None]:
        """The Delta log already lists the files; past 32 paths Spark would start a distributed job just
        to look them up again. On local and HDFS roots the driver does it faster (read when the
        DataFrame is created, so the setting is restored right after)."""
        key = "spark.sql.sources.parallelPartitionDiscovery.threshold"
        previous = self.spark.conf.get(key, None)
        cheap_lookups = not uri.startswith(("s3", "gs:", "abfs", "wasb", "oss:"))
        if cheap_lookups and files < DRIVER_LISTING_LIMIT:
            self.spark.conf.set(key, str(max(files + 1, int(previous or 32))))
        try:
            yield
        finally:
            if previous is None:
                self.spark.conf.unset(key)
            else:
                self.spark.conf.set(key, previous)

    def _read_by_partition(
        self,
        schema: T.StructType,
        partition_columns: list[str],
        files: list[str],
        values: list[dict[str, Any]],
    ) -> DataFrame:
        """Tables whose file paths do not spell their partition values: one scan per partition."""
        data_schema = T.StructType([f for f in schema.fields if f.name not in partition_columns])
        groups: dict[tuple[Any, ...], list[str]] = {}
        for path, value in zip(files, values, strict=True):
            groups.setdefault(tuple(value[c] for c in partition_columns), []).append(path)
        types = {f.name: f.dataType for f in schema.fields}
        frames = [
            self.spark.read.schema(data_schema)
            .parquet(*paths)
            .select(
                "*", *[F.lit(v).cast(types[c]).alias(c) for c, v in zip(partition_columns, key, strict=True)]
            )
            for key, paths in groups.items()
        ]
        result = frames[0]
        for frame in frames[1:]:
            result = result.unionByName(frame)
        return result.select(*[F.col(f"`{f.name}`") for f in schema.fields])

    # ---- write -----------------------------------------------------------------------------------

    def write(self, table: str, uri: str, df: DataFrame, options: WriteOptions) -> WriteResult:
        """options.expected_version: commit only if the table is still at this version (NO_TABLE: does not
        exist yet); otherwise ConcurrentWriteError and nothing is committed. None: appends rebase on
        whatever landed meanwhile, and overwrites fail if anything did."""
        current = self._snapshot(table, uri, options.expected_version)
        if current is not None:
            _check_features(table, current)
        schema, partition_by, df, new_columns = _plan_schema(
            table,
            current,
            df,
            options.mode,
            options.partition_by,
            options.partitions,
            options.merge_schema,
            options.overwrite_schema,
        )
        staged = self._stage(table, uri, df, schema, partition_by)
        _fault_point(table)
        try:
            filters = _partition_filters(table, options.partitions, partition_by, staged)
            return self._commit(
                table,
                uri,
                current,
                schema,
                partition_by,
                staged,
                options.mode,
                filters,
                new_columns,
                options.overwrite_schema,
                options.operation,
                checked=options.checked,
                app_transaction=options.app_transaction,
            )
        except BaseException:
            self._discard(uri, staged)
            raise

    def _stage(
        self, table: str, uri: str, df: DataFrame, schema: T.StructType, partition_by: list[str]
    ) -> list[StagedFile]:
        write_id = uuid.uuid4().hex
        staging = _join(uri, f"{STAGING}/{write_id}")
        _check_session(self.spark)
        writer = df.write.mode("errorifexists")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(staging)
        filesystem, staging_path = self.files.resolve(staging)
        _, table_path = self.files.resolve(uri)
        found = [
            info
            for info in filesystem.get_file_info(pafs.FileSelector(staging_path, recursive=True))
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith((".", "_"))
        ]
        data_schema = T.StructType([f for f in schema.fields if f.name not in partition_by])

        def place(info: pafs.FileInfo) -> StagedFile | None:
            relative = info.path[len(staging_path) :].lstrip("/")
            metadata = pq.read_metadata(info.path, filesystem=filesystem)
            if metadata.num_rows == 0:
                return None
            target = f"{table_path}/{relative}"
            filesystem.create_dir(os.path.dirname(target), recursive=True)
            filesystem.move(info.path, target)
            return StagedFile(
                relative_path=relative,
                partition_values=_hive_values(relative, partition_by),
                size=info.size,
                modification_time=int(info.mtime_ns // 1_000_000) if info.mtime_ns else 0,
                stats=file_stats(metadata, data_schema),
                rows=metadata.num_rows,
            )

        with ThreadPoolExecutor(max_workers=8) as pool:
            staged = [s for s in pool.map(place, found) if s is not None]
        filesystem.delete_dir(staging_path)
        return staged

    def _snapshot(self, table: str, uri: str, expected_version: int | None) -> DeltaTable | None:
        if expected_version is None:
            return self._table(uri)
        if expected_version == NO_TABLE:
            if self.exists(uri):
                raise ConcurrentWriteError(f"{table}: another writer created the table meanwhile")
            return None
        try:
            snapshot = self._table(uri, expected_version)
        except Exception:  # a version the log does not hold (yet)
            snapshot = None
        if snapshot is None:
            raise ConcurrentWriteError(f"{table}: version {expected_version} is not in the table's log")
        return snapshot

    def _commit(
        self,
        table: str,
        uri: str,
        current: DeltaTable | None,
        schema: T.StructType,
        partition_by: list[str],
        staged: list[StagedFile],
        mode: Literal["append", "overwrite"],
        filters: FilterConjunctionType | None,
        new_columns: list[T.StructField],
        overwrite_schema: bool,
        operation: str,
        checked: bool,
        app_transaction: AppTransaction | None = None,
    ) -> WriteResult:
        adds = [
            AddAction(s.relative_path, s.size, s.partition_values, s.modification_time, True, s.stats)
            for s in staged
        ]
        if current is not None and mode == "append" and not adds and not new_columns:
            return WriteResult(current.version(), 0, 0, 0)  # nothing to add: no empty commit
        delta_schema = Schema.from_json(json.dumps(as_nullable(schema).jsonValue()))
        # Blind appends may rebase on commits that landed meanwhile; anything that read the table first
        # (overwrite, upsert, a checked append) must not, or it would act on a stale snapshot.
        retries = None if mode == "append" and not checked else 0
        properties = _commit_properties(operation, retries, app_transaction)
        removed = 0
        if current is None and mode == "append":
            if checked:
                self._create(table, uri, delta_schema, partition_by, adds, properties)
                return WriteResult(
                    self._open(table, uri).version(), len(adds), 0, sum(s.rows for s in staged)
                )
            current = self._create_or_join(table, uri, delta_schema, schema, partition_by, adds, properties)
            if current is None:
                return WriteResult(
                    self._open(table, uri).version(), len(adds), 0, sum(s.rows for s in staged)
                )
        try:
            if current is None or (mode == "overwrite" and overwrite_schema and filters is None):
                if current is not None:
                    removed = len(current.file_uris())
                create_table_with_add_actions(
                    store_uri(uri),
                    delta_schema,
                    adds,
                    mode="overwrite" if current is not None else "append",
                    partition_by=partition_by or None,
                    storage_options=self.storage_options,
                    commit_properties=properties,
                )
            else:
                if new_columns:
                    current.alter.add_columns(
                        [_delta_field(field) for field in new_columns],
                        commit_properties=CommitProperties(
                            max_commit_retries=retries,
                            custom_metadata={"marketlake.operation": "add columns"},
                        ),
                    )
                if mode == "overwrite":
                    removed = _count_replaced(current, filters)
                current.create_write_transaction(
                    list(adds),  # a new list, of deltalake's type list[AddAction | RemoveAction]
                    mode,
                    delta_schema,
                    partition_by=partition_by or None,
                    partition_filters=filters,
                    commit_properties=properties,
                )
        except CommitFailedError as exc:
            raise ConcurrentWriteError(
                f"{table}: another writer committed to the table while this {mode} ran; "
                f"nothing was committed, run it again ({' '.join(str(exc).split())})"
            ) from None
        version = self._open(table, uri).version()
        return WriteResult(version, len(adds), removed, sum(s.rows for s in staged))

    def _create(
        self,
        table: str,
        uri: str,
        delta_schema: Schema,
        partition_by: list[str],
        adds: list[AddAction],
        properties: CommitProperties,
    ) -> None:
        """Create the table with these files; if another writer created it first, nothing is committed."""
        try:
            create_table_with_add_actions(
                store_uri(uri),
                delta_schema,
                adds,
                mode="error",
                partition_by=partition_by or None,
                storage_options=self.storage_options,
                commit_properties=properties,
            )
        except Exception as exc:
            if not self.exists(uri):
                raise
            raise ConcurrentWriteError(
                f"{table}: another writer created the table while this write ran; nothing was committed"
            ) from exc

    def _create_or_join(
        self,
        table: str,
        uri: str,
        delta_schema: Schema,
        schema: T.StructType,
        partition_by: list[str],
        adds: list[AddAction],
        properties: CommitProperties,
    ) -> DeltaTable | None:
        """Create the table with this append; if another writer created it meanwhile, return it so the
        append lands there (when the schemas agree). None means the table was created here."""
        try:
            self._create(table, uri, delta_schema, partition_by, adds, properties)
            return None
        except ConcurrentWriteError:
            existing = self._table(uri)
            if existing is None:
                raise
        _check_features(table, existing)
        theirs = _spark_schema(existing)
        if [(f.name, f.dataType) for f in theirs] != [
            (f.name, f.dataType) for f in as_nullable(schema)
        ] or list(existing.metadata().partition_columns) != list(partition_by):
            raise ConcurrentWriteError(
                f"{table}: another writer created the table meanwhile with another schema"
            )
        return existing

    def _discard(self, uri: str, staged: list[StagedFile]) -> None:
        for s in staged:
            with contextlib.suppress(OSError):  # vacuum removes what is left
                self.files.delete(_join(uri, s.relative_path))

    # ---- upsert ----------------------------------------------------------------------------------

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
        """Rows of `df` replace the table's rows with the same keys; the rest are kept.

        The table is rewritten from the snapshot it was read at (or `expected_version`), and the commit
        fails if anyone committed since (dimension tables are small; this keeps the engine free of a
        driver-side merge).
        """
        current = self._snapshot(table, uri, expected_version)
        if current is None:
            return self.write(
                table,
                uri,
                df,
                WriteOptions(
                    mode="append",
                    partition_by=partition_by,
                    operation="upsert",
                    expected_version=NO_TABLE if expected_version is not None else None,
                    app_transaction=app_transaction,
                ),
            )
        read_version = current.version()
        existing = self.read(table, uri, read_version)
        aligned, _ = align_to_table(table, df, existing.schema, merge_schema=True)
        kept = existing.join(aligned.select(*keys).distinct(), on=keys, how="left_anti")
        merged = kept.unionByName(aligned, allowMissingColumns=True)
        return self.write(
            table,
            uri,
            merged,
            WriteOptions(
                mode="overwrite",
                partition_by=list(current.metadata().partition_columns) or partition_by,
                merge_schema=True,
                operation="upsert",
                expected_version=read_version,
                app_transaction=app_transaction,
            ),
        )

    def replace_groups(
        self,
        table: str,
        uri: str,
        df: DataFrame,
        group: str,
        keys: list[str],
        app_transaction: AppTransaction | None = None,
    ) -> WriteResult:
        """Every `group` value in `df` ends up with exactly df's rows (keyed by `keys`): one Delta MERGE
        through the `deltalake` package, which rewrites only the files holding those groups. Rows of a
        group beyond its new ones are deleted: the source carries a tombstone for each key of the group
        that the table holds and `df` does not. The source (a micro-batch's worth of rows) and the table's
        key columns pass through the driver as Arrow."""
        current = self._table(uri)
        if current is None:
            return self.write(
                table,
                uri,
                df,
                WriteOptions(operation="merge", expected_version=NO_TABLE, app_transaction=app_transaction),
            )
        _check_features(table, current)
        schema = _spark_schema(current)
        aligned, _ = align_to_table(table, df, schema, merge_schema=False)
        source = _arrow_of(aligned, schema)
        # The table's keys, filtered here rather than in the scan: files deltalake wrote hold strings as
        # string_view, and pyarrow's filter pushdown then fails comparing them with string statistics.
        # Reads the key columns of the whole table (users x list length: small for this table).
        held = current.to_pyarrow_dataset().to_table(columns=keys).cast(source.select(keys).schema)
        held = held.filter(pc.is_in(held.column(group), value_set=pc.unique(source.column(group))))
        tombstones = held.join(source.select(keys), keys=keys, join_type="left anti")
        dropped = pa.array([False] * source.num_rows + [True] * tombstones.num_rows)
        padded = pa.concat_tables(
            [source, _with_nulls(tombstones.select(keys), source.schema)]
        ).append_column("_drop", dropped)
        on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        columns = {f"`{name}`": f"s.`{name}`" for name in schema.names}
        properties = _commit_properties("merge", 0, app_transaction)
        try:
            metrics = (
                current.merge(padded, on, source_alias="s", target_alias="t", commit_properties=properties)
                .when_matched_delete(predicate="s._drop")
                .when_matched_update(columns, predicate="NOT s._drop")
                .when_not_matched_insert(columns, predicate="NOT s._drop")
                .execute()
            )
        except CommitFailedError as exc:
            raise ConcurrentWriteError(
                f"{table}: another writer committed to the table during the merge; nothing was committed "
                f"({' '.join(str(exc).split())})"
            ) from None
        return WriteResult(
            self._open(table, uri).version(),
            int(metrics.get("num_target_files_added", 0)),
            int(metrics.get("num_target_files_removed", 0)),
            source.num_rows,
        )

    def transaction_version(self, table: str, uri: str, app_id: str) -> int | None:
        """The last version of application `app_id` committed to the table (None: none, or no table)."""
        delta_table = self._table(uri)
        return None if delta_table is None else delta_table.transaction_version(app_id)

    # ---- vacuum ----------------------------------------------------------------------------------

    def vacuum(self, table: str, uri: str, retention_hours: int, removed_only: bool = False) -> list[str]:
        """Delete files no snapshot within the retention needs, and staged files of writes that died
        (removed_only: the files the log's tombstones name, nothing else)."""
        delta_table = self._open(table, uri)

        def vacuum(dry_run: bool) -> list[str]:
            return delta_table.vacuum(
                retention_hours=retention_hours,
                dry_run=dry_run,
                enforce_retention_duration=False,
                full=not removed_only,
            )

        # deltalake names the removed files it still knows of from the log even when they are gone already,
        # and records every vacuum in two commits: ask first, and vacuum only when a file is really there.
        deleted = [p for p in vacuum(True) if self.files.exists(_join(uri, urllib.parse.unquote(p)))]
        if deleted:
            vacuum(False)
        if removed_only:
            return deleted
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=retention_hours)
        for write in self.files.list(_join(uri, STAGING), recursive=False):
            newest = max([write.mtime] + [e.mtime for e in self.files.list(write.uri)], key=_as_utc)
            if _as_utc(newest) <= cutoff:
                self.files.delete(write.uri)
                deleted.append(write.uri)
        return list(deleted)

    def compact(
        self,
        table: str,
        uri: str,
        partitions: Mapping[str, Sequence[PartitionValue]] | None,
        target_bytes: int,
    ) -> CompactResult:
        """Rewrite the small files of the table (or of the given partitions) into files of about
        `target_bytes`, in one commit; the replaced files stay for time travel until a vacuum."""
        delta_table = self._open(table, uri)
        filters: FilterConjunctionType | None = None
        if partitions:
            filters = [
                (column, "in", sorted({_hive_value(v) for v in values}))
                for column, values in partitions.items()
            ]
        try:
            metrics = delta_table.optimize.compact(partition_filters=filters, target_size=target_bytes)
        except CommitFailedError as exc:
            raise ConcurrentWriteError(
                f"{table}: another writer committed during compaction ({exc})"
            ) from exc
        return CompactResult(
            files_removed=int(metrics.get("numFilesRemoved", 0)),
            files_added=int(metrics.get("numFilesAdded", 0)),
            partitions=int(metrics.get("partitionsOptimized", 0)),
        )

    def checkpoint(self, table: str, uri: str) -> None:
        """Write a checkpoint of the current version, so readers need not replay the whole log."""
        self._open(table, uri).create_checkpoint()

    def expire_log(self, table: str, uri: str, retention_hours: int) -> int:
        """Checkpoint, then delete the log entries before the checkpoint older than `retention_hours`
        (time travel to those versions ends). Returns the number of log files deleted."""
        delta_table = self._open(table, uri)
        before = self._log_entries(uri)  # a property commit may already clean up expired entries
        wanted = log_retention(retention_hours)
        if delta_table.metadata().configuration.get(LOG_RETENTION) != wanted:
            delta_table.alter.set_table_properties({LOG_RETENTION: wanted})
            delta_table.update_incremental()
        delta_table.create_checkpoint()
        delta_table.cleanup_metadata()
        return len(before - self._log_entries(uri))

    def _log_entries(self, uri: str) -> set[str]:
        return {entry.uri for entry in self.files.list(_join(uri, DELTA_LOG))}


def _commit_properties(
    operation: str, retries: int | None, app_transaction: AppTransaction | None
) -> CommitProperties:
    metadata = {"marketlake.operation": operation}
    if app_transaction is None:
        return CommitProperties(max_commit_retries=retries, custom_metadata=metadata)
    return CommitProperties(
        max_commit_retries=retries,
        custom_metadata={**metadata, **app_transaction.metadata},
        app_transactions=[Transaction(app_transaction.app_id, app_transaction.version)],
    )


def _arrow_of(df: DataFrame, schema: T.StructType) -> pa.Table:
    """A small DataFrame (a micro-batch's merge source) as an Arrow table of the table's types."""
    table = df.toArrow()
    return table.cast(_arrow_schema(schema)) if table.num_rows else _arrow_schema(schema).empty_table()


def _arrow_schema(schema: T.StructType) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema, timezone="UTC")


def _with_nulls(keys: pa.Table, schema: pa.Schema) -> pa.Table:
    """`keys` with the other columns of `schema` as nulls, in schema order."""
    return pa.table(
        {
            name: keys.column(name)
            if name in keys.column_names
            else pa.nulls(keys.num_rows, schema.field(name).type)
            for name in schema.names
        },
        schema=schema,
    )


def _join(uri: str, relative: str) -> str:
    return uri.rstrip("/") + "/" + relative


def _as_utc(moment: dt.datetime | None) -> dt.datetime:
    """A file's modification time, comparable with any other (a store may not report one: the oldest)."""
    if moment is None:
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc) if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _check_session(spark: SparkSession) -> None:
    """The session must have the settings the lake's files depend on (SESSION_SETTINGS: microsecond
    timestamps, which carry Delta statistics; Spark's default INT96 has none). The session gets them when
    it is built (marketlake.spark.build_session); a write checks, and never changes them."""
    for key, wanted in SESSION_SETTINGS.items():
        value = spark.conf.get(key, None)
        if value != wanted:
            raise TableError(
                f"the Spark session has {key}={value}, the lake needs {wanted} (build the session with "
                "marketlake.spark.build_session, or set it)"
            )


def _spark_schema(delta_table: DeltaTable) -> T.StructType:
    return T.StructType.fromJson(json.loads(delta_table.schema().to_json()))


def _delta_field(field: T.StructField) -> Field:
    from deltalake.schema import Field

    return Field.from_json(json.dumps(as_nullable(T.StructType([field])).jsonValue()["fields"][0]))


def _check_features(table: str, delta_table: DeltaTable) -> None:
    protocol = delta_table.protocol()
    features = set(protocol.reader_features or []) | set(protocol.writer_features or [])
    unsupported = sorted(features - SUPPORTED_FEATURES)
    if unsupported or protocol.min_reader_version > 3:
        raise TableError(
            f"{table}: the table uses Delta features {', '.join(unsupported) or protocol} that the delta-rs "
            "engine does not handle; use engine delta-spark"
        )


def _hive_values(relative_path: str, partition_by: list[str]) -> dict[str, str | None]:
    """Partition values spelled by a Hive-style path (`col=value/...`), unescaped as Spark escapes them."""
    folders = relative_path.split("/")[:-1]
    values: dict[str, str | None] = {}
    for folder in folders:
        name, sep, value = folder.partition("=")
        if sep:
            value = urllib.parse.unquote(value)
            values[urllib.parse.unquote(name)] = None if value == HIVE_NULL else value
    return {c: values.get(c, "\0missing") for c in partition_by}


def _as_hive(values: dict[str, Any]) -> dict[str, str | None]:
    return {c: _hive_value(v) for c, v in values.items()}


@overload
def _hive_value(value: None) -> None: ...


@overload
def _hive_value(value: PartitionValue) -> str: ...


def _hive_value(value: Any) -> str | None:
    """A partition value as a Hive-style path spells it (None: the null partition)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if hasattr(value, "isoformat"):
        spelled: str = value.isoformat()
        return spelled
    return str(value)


def _plan_schema(
    table: str,
    current: DeltaTable | None,
    df: DataFrame,
    mode: Literal["append", "overwrite"],
    partition_by: list[str] | None,
    partitions: Partitions,
    merge_schema: bool,
    overwrite_schema: bool,
) -> tuple[T.StructType, list[str], DataFrame, list[T.StructField]]:
    """The schema to commit, the partition columns, the aligned DataFrame and any new columns."""
    if current is None or (mode == "overwrite" and overwrite_schema and partitions is None):
        schema = as_nullable(df.schema)
        partition_by = list(partition_by or [])
        check_partition_columns(table, schema, partition_by)
        return schema, partition_by, df, []
    table_schema = _spark_schema(current)
    table_partitions = list(current.metadata().partition_columns)
    if partition_by is not None and list(partition_by) != table_partitions:
        raise TableError(f"{table}: the table is partitioned by {table_partitions}, not {list(partition_by)}")
    aligned, merged = align_to_table(table, df, table_schema, merge_schema)
    new_columns = merged.fields[len(table_schema.fields) :]
    return merged, table_partitions, aligned, new_columns


def _partition_filters(
    table: str, partitions: Partitions, partition_by: list[str], staged: list[StagedFile]
) -> FilterConjunctionType | None:
    """deltalake partition filters for an overwrite of selected partitions (None: the whole table)."""
    if partitions is None:
        return None
    if partitions == "dynamic":
        if len(partition_by) != 1:
            raise TableError(f"{table}: a dynamic partition overwrite needs exactly one partition column")
        column = partition_by[0]
        present = sorted({s.partition_values[column] for s in staged}, key=str)
        if any(value is None for value in present):
            raise TableError(
                f"{table}: a dynamic partition overwrite cannot replace the null partition of '{column}'"
            )
        if not present:
            return [(column, "in", ["\0none"])]  # nothing written, nothing replaced
        return [(column, "in", present)]
    if not partitions:
        raise TableError(f"{table}: name the partitions to overwrite")
    filters: FilterConjunctionType = []
    for column, values in partitions.items():
        if column not in partition_by:
            raise TableError(f"{table}: '{column}' is not a partition column (the table has {partition_by})")
        wanted = sorted({_hive_value(v) for v in values})
        filters.append((column, "in", wanted))
        outside = {s.partition_values[column] for s in staged} - set(wanted)
        if outside:
            raise TableError(
                f"{table}: the data has rows for {column}={sorted(outside, key=str)[0]}, "
                "outside the partitions being overwritten"
            )
    return filters


def _count_replaced(delta_table: DeltaTable, filters: FilterConjunctionType | None) -> int:
    if filters is None:
        return len(delta_table.file_uris())
    return len(delta_table.file_uris(filters))

"""marketlake.lake: the one place that knows where tables live and how they are read and written, and
where everything else under the lake root goes.

A table named `layer.name` lives at `<lake root>/<layer>/<name>` and is a real Delta table. Jobs call
`Lake.read`, `Lake.write`, `Lake.upsert`; no job builds a path or names a format. What is not a table has
its place too (`Layout`): models at `<root>/models/<name>/<version>`, ALS checkpoints at
`<root>/_checkpoints/<run id>`, campaign exports at `<root>/exports/<campaign id>/<run date>`, user
profiles at `<root>/exports/_profiles/<run date>`, the report at
`<root>/reports/<run date>/marketlake-report.html`; `lake.files` does the file-system calls.

Engines (see docs/design.md): `delta-spark` (format("delta"), needs the io.delta jars), `delta-rs`
(Spark's Parquet writer plus a commit through the `deltalake` package), `auto` (delta-spark when its
classes load in the session, otherwise delta-rs).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.config import LakeConfig
from marketlake.errors import ConcurrentWriteError, StorageError, TableError, UsageError, storage_problem
from marketlake.lake.delta_rs import DeltaRsEngine
from marketlake.lake.delta_spark import DeltaSparkEngine, delta_spark_available
from marketlake.lake.engine import (
    NO_TABLE,
    TABLE_NAME,
    AppTransaction,
    CompactResult,
    DataFile,
    Engine,
    Partitions,
    PartitionValue,
    TableSummary,
    WriteOptions,
    WriteResult,
)
from marketlake.lake.files import Files, absolute

__all__ = [
    "NO_TABLE",
    "AppTransaction",
    "CompactResult",
    "DataFile",
    "DatedFolder",
    "Engine",
    "Files",
    "Lake",
    "Layout",
    "TableSummary",
    "WriteOptions",
    "WriteResult",
    "delta_spark_available",
    "resolve_engine",
]

log = logging.getLogger("marketlake.lake")
T_ = TypeVar("T_")
REPORT_FILE = "marketlake-report.html"
PROFILE_EXPORTS = "_profiles"
TableRef = str | catalog.Table
# What compaction aims for: Delta's usual target file size.
DEFAULT_FILE_BYTES = 128 * 1024 * 1024


def table_name(table: TableRef) -> str:
    return table.name if isinstance(table, catalog.Table) else table


def resolve_engine(spark: SparkSession, wanted: str, storage_options: dict[str, str] | None = None) -> Engine:
    """The engine object for `wanted` (auto, delta-spark, delta-rs) in this session."""
    if wanted == "delta-rs":
        return DeltaRsEngine(spark, storage_options)
    available, why = delta_spark_available(spark)
    if wanted == "delta-spark":
        if not available:
            raise UsageError(
                f"engine delta-spark: {why}; add --packages io.delta:delta-spark_2.13:4.4.1 "
                "(or use engine delta-rs)"
            )
        return DeltaSparkEngine(spark, storage_options)
    if available:
        return DeltaSparkEngine(spark, storage_options)
    log.info("engine auto: delta-rs, because %s", why)
    return DeltaRsEngine(spark, storage_options)


@dataclass(frozen=True)
class DatedFolder:
    """A folder of one run date that is not a table: a campaign's exports, the profile exports or a report."""

    kind: Literal["exports", "reports"]
    run_date: dt.date
    uri: str


class Layout:
    """Where what is not a table lives under a lake root (same folders and names on every engine)."""

    def __init__(self, root: str):
        self.root = absolute(root)

    def model_path(self, name: str, version: str) -> str:
        """A fitted model (Spark ML's own format), replaced when the same version is saved again."""
        return f"{self.root}/models/{name}/{version}"

    def checkpoint_dir(self, run_id: str) -> str:
        """Spark checkpoints of one run (removed at its end, with the _checkpoints folder when left empty:
        `marketlake.recommend.checkpoints`)."""
        return f"{self.root}/_checkpoints/{run_id}"

    def export_dir(self, campaign_id: str, run_date: dt.date) -> str:
        """A campaign's exported files for a run date (replaced whole by a re-run)."""
        return f"{self.root}/exports/{campaign_id}/{run_date.isoformat()}"

    def profile_export_dir(self, run_date: dt.date) -> str:
        """The user-profile CSV files of a run date (replaced whole by a re-run); the leading _ keeps the
        folder apart from every campaign's (campaign ids start with a letter or digit)."""
        return f"{self.root}/exports/{PROFILE_EXPORTS}/{run_date.isoformat()}"

    def report_path(self, run_date: dt.date) -> str:
        """The HTML report of a run date."""
        return f"{self.root}/reports/{run_date.isoformat()}/{REPORT_FILE}"

    def dated_folders(self, files: Files) -> list[DatedFolder]:
        """Every export folder (`exports/<campaign id or _profiles>/<run date>`) and report folder
        (`reports/<run date>`) there is, found with `files`; other names (a replace's staging folder) are
        not run dates and are left out."""
        found: list[DatedFolder] = []
        exports = [e.uri for e in files.list(f"{self.root}/exports", recursive=False) if e.is_dir]
        places: list[tuple[Literal["exports", "reports"], str]] = [("exports", uri) for uri in exports]
        places.append(("reports", f"{self.root}/reports"))
        for kind, parent in places:
            for entry in files.list(parent, recursive=False):
                try:
                    run_date = dt.date.fromisoformat(entry.relative)
                except ValueError:
                    continue
                if entry.is_dir:
                    found.append(DatedFolder(kind, run_date, entry.uri))
        return found

    def stream_checkpoint_dir(self, stream_id: str) -> str:
        """A streaming query's checkpoint (Spark's offsets and commits: which files each micro-batch
        holds); kept across restarts, since a restart resumes from it."""
        return f"{self.root}/_streams/{stream_id}/checkpoint"


class Lake(Layout):
    def __init__(self, spark: SparkSession, config: LakeConfig, root: str | None = None):
        super().__init__(root or config.root)
        self.spark = spark
        self.config = config
        self.files = Files(config.storage_options)
        self.engine = resolve_engine(spark, config.engine, config.storage_options)
        # Recorded with every write and upsert through this object (see with_app_transaction).
        self.app_transaction: AppTransaction | None = None

    def with_app_transaction(self, app_id: str, version: int) -> Lake:
        """This lake, but every write, upsert and merge through the returned object records the Delta
        application transaction (app_id, version) in its commit: a stream's micro-batch. `committed`
        says which tables already hold it."""
        bound = copy.copy(self)
        bound.app_transaction = AppTransaction(app_id, version)
        return bound

    def transaction_version(self, table: TableRef, app_id: str) -> int | None:
        """The last version of application `app_id` committed to `table` (None: none yet)."""
        table = table_name(table)
        return self.engine.transaction_version(table, self.path(table), app_id)

    def committed(self, table: TableRef) -> bool:
        """True when this lake carries an application transaction that `table` already holds (the same
        or a later version): the write is a replay and must be skipped. deltalake records the
        transaction but does not skip a repeated version by itself."""
        txn = self.app_transaction
        if txn is None:
            return False
        done = self.transaction_version(table, txn.app_id)
        return done is not None and done >= txn.version

    @property
    def engine_name(self) -> str:
        return self.engine.name

    def path(self, table: TableRef) -> str:
        table = table_name(table)
        if not TABLE_NAME.match(table):
            raise TableError(f"table name '{table}' is not of the form layer.name (lower case)")
        layer, name = table.split(".")
        return f"{self.root}/{layer}/{name}"

    def exists(self, table: TableRef) -> bool:
        table = table_name(table)
        return self.engine.exists(self.path(table))

    def tables(self) -> list[TableSummary]:
        """(table, version, rows) for every Delta table under the root, sorted by table, as the engine
        reads them."""
        return sorted(self.engine.tables_under(self.root))

    def require(self, table: TableRef) -> None:
        """UsageError (before anything is written) when `table` does not exist yet, naming the job that
        writes it."""
        table = table_name(table)
        if not self.exists(table):
            raise UsageError(
                f"{table} does not exist in this lake; run {catalog.table(table).made_by()} first"
            )

    def read_if_exists(self, table: TableRef) -> DataFrame | None:
        table = table_name(table)
        return self.read(table) if self.exists(table) else None

    def read_as_of(self, table: TableRef, run_date: dt.date, column: str = "as_of_date") -> DataFrame:
        """The run date's slice of a table partitioned by date."""
        table = table_name(table)
        return self.read(table).filter(F.col(column) == F.lit(run_date))

    def overwrite_as_of(
        self,
        table: TableRef,
        df: DataFrame,
        run_date: dt.date,
        column: str = "as_of_date",
        merge_schema: bool = False,
    ) -> WriteResult:
        """Replace the run date's partition with `df` (every row of which belongs to it); other dates stay."""
        table = table_name(table)
        return self.write(
            table,
            df,
            "overwrite",
            partition_by=[column],
            partitions={column: [run_date]},
            merge_schema=merge_schema,
        )

    def version(self, table: TableRef) -> int:
        table = table_name(table)
        return self.engine.version(table, self.path(table))

    def read(self, table: TableRef, version: int | None = None) -> DataFrame:
        """The table at its latest version, or at `version` (time travel)."""
        table = table_name(table)
        return self.engine.read(table, self.path(table), version)

    def write(
        self,
        table: TableRef,
        df: DataFrame,
        mode: Literal["append", "overwrite"] = "append",
        partition_by: list[str] | None = None,
        partitions: Partitions = None,
        merge_schema: bool = False,
        overwrite_schema: bool = False,
        expected_version: int | None = None,
    ) -> WriteResult:
        """Append, overwrite the whole table, or overwrite selected partitions, in one commit.

        partitions: None (with overwrite: the whole table), "dynamic" (the partitions present in `df`),
        or {column: [values]} (exactly those; rows outside them are an error).
        merge_schema: add new columns of `df` as nullable columns instead of failing.
        overwrite_schema: with a whole-table overwrite, replace the table's schema by `df`'s.
        expected_version: commit only if the table is still at this version (`NO_TABLE`: it must not exist
        yet), else ConcurrentWriteError with nothing committed; see `retry_on_conflict`.
        """
        table = table_name(table)
        if mode not in ("append", "overwrite"):
            raise TableError(f"{table}: write mode must be append or overwrite, not {mode!r}")
        if partitions is not None and mode != "overwrite":
            raise TableError(f"{table}: partitions= goes with mode='overwrite'")
        options = WriteOptions(
            mode=mode,
            partition_by=partition_by,
            partitions=partitions,
            merge_schema=merge_schema,
            overwrite_schema=overwrite_schema,
            operation=mode if partitions is None else f"{mode} partitions",
            expected_version=expected_version,
            app_transaction=self.app_transaction,
        )
        with self._storage_errors(table):
            return self.engine.write(table, self.path(table), df, options)

    def upsert(
        self,
        table: TableRef,
        df: DataFrame,
        keys: list[str],
        partition_by: list[str] | None = None,
        expected_version: int | None = None,
    ) -> WriteResult:
        """Insert rows with new keys, replace rows whose keys exist (dimension tables). Keys must be
        unique in `df`: a duplicate key would make the result depend on row order, so it is an error.
        expected_version: as for `write`."""
        table = table_name(table)
        duplicate = df.groupBy(*keys).count().filter("count > 1").limit(1).collect()
        if duplicate:
            example = ", ".join(f"{k}={duplicate[0][k]!r}" for k in keys)
            raise TableError(f"{table}: upsert data has more than one row for key {example}")
        with self._storage_errors(table):
            return self.engine.upsert(
                table, self.path(table), df, keys, partition_by, expected_version, self.app_transaction
            )

    def replace_groups(self, table: TableRef, df: DataFrame, group: str, keys: list[str]) -> WriteResult:
        """One MERGE: for every value of `group` in `df` (a user), the table's rows of that group become
        exactly df's (keyed by `keys`, unique in `df`): changed rows are updated, new ones inserted, and
        rows df no longer has (a shorter list) deleted. Other groups are untouched."""
        table = table_name(table)
        duplicate = df.groupBy(*keys).count().filter("count > 1").limit(1).collect()
        if duplicate:
            example = ", ".join(f"{k}={duplicate[0][k]!r}" for k in keys)
            raise TableError(f"{table}: merge data has more than one row for key {example}")
        with self._storage_errors(table):
            return self.engine.replace_groups(table, self.path(table), df, group, keys, self.app_transaction)

    def snapshot_version(self, table: TableRef) -> int:
        """The table's current version, or NO_TABLE when it does not exist yet."""
        table = table_name(table)
        return self.version(table) if self.exists(table) else NO_TABLE

    def read_at(self, table: TableRef, version: int) -> DataFrame | None:
        """The table at `version` (from `snapshot_version`), or None for NO_TABLE."""
        table = table_name(table)
        return None if version == NO_TABLE else self.read(table, version)

    def retry_on_conflict(
        self, table: TableRef, attempt: Callable[[int], T_], attempts: int | None = None
    ) -> T_:
        """Optimistic concurrency: run `attempt(version)` with the table's current version; the attempt
        reads the table at that version and commits with `expected_version=version`. When another writer
        committed first, nothing was committed: run it again against the new version (jittered back-off).
        Two writers deciding from one snapshot can thus never both commit."""
        table = table_name(table)
        attempts = attempts or self.config.commit_attempts
        for tried in range(1, attempts + 1):
            version = self.snapshot_version(table)
            try:
                return attempt(version)
            except ConcurrentWriteError as exc:
                if tried == attempts:
                    raise ConcurrentWriteError(
                        f"{table}: {attempts} attempts lost to concurrent writers; nothing was committed "
                        f"by the last one, run it again ({exc})"
                    ) from exc
                log.info(
                    "%s | version %s moved on under a concurrent writer; attempt %d of %d",
                    table,
                    version,
                    tried + 1,
                    attempts,
                )
                time.sleep(random.uniform(0.05, 0.5) * tried)
        raise AssertionError("unreachable")

    @contextmanager
    def _storage_errors(self, table: str) -> Iterator[None]:
        """A full disk or a permission error while writing `table` becomes one clear StorageError."""
        try:
            yield
        except TableError:
            raise
        except Exception as exc:
            problem = storage_problem(exc)
            if problem is None:
                raise
            raise StorageError(f"cannot write {table} at {self.path(table)}: {problem}") from exc

    def history(self, table: TableRef, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits, newest first: version, timestamp (ms), operation, parameters, metrics."""
        table = table_name(table)
        return self.engine.history(table, self.path(table), limit)

    def vacuum(
        self, table: TableRef, retention_hours: int | None = None, removed_only: bool = False
    ) -> list[str]:
        """Delete files that no version within the retention needs (and staged files of dead writes).
        removed_only: only files a commit removed (the log's tombstones), never a file no commit names yet,
        which may be a concurrent write's before its commit: safe at any retention beside running writers."""
        table = table_name(table)
        hours = self.config.vacuum_retention_hours if retention_hours is None else retention_hours
        return self.engine.vacuum(table, self.path(table), hours, removed_only)

    def compact(
        self,
        table: TableRef,
        partitions: Mapping[str, Sequence[PartitionValue]] | None = None,
        target_bytes: int = DEFAULT_FILE_BYTES,
    ) -> CompactResult:
        """Rewrite small files into files of about `target_bytes` (the whole table, or the given partitions),
        in one commit; contents and version history are unchanged, only the file count falls."""
        table = table_name(table)
        with self._storage_errors(table):
            return self.engine.compact(table, self.path(table), partitions, target_bytes)

    def data_files(self, table: TableRef) -> list[DataFile]:
        """The data files of the table's current version, with their partition values, bytes and rows."""
        table = table_name(table)
        return self.engine.data_files(table, self.path(table))

    def delete_partitions(
        self, table: TableRef, partitions: Mapping[str, Sequence[PartitionValue]]
    ) -> WriteResult:
        """Remove whole partitions ({column: [values]}) in one commit that only removes files (an overwrite
        of those partitions by nothing). The commit is checked: when another writer committed first it is
        decided again on the new version, so a concurrent append is never lost. Values not present are
        ignored; with none present nothing is committed. The partition values go into the commit's
        parameters (the overwrite's filter); partition dates are not personal data, so that is acceptable
        here (an erasure must not delete this way by a personal value)."""
        table = table_name(table)
        uri = self.path(table)
        found = self.engine.schema(table, uri)
        if found is None:
            raise TableError(f"table {table} does not exist at {uri}")
        schema, partition_columns = found
        unknown = sorted(set(partitions) - set(partition_columns))
        if unknown or not partitions:
            raise TableError(
                f"{table}: delete_partitions needs partition columns ({partition_columns}), not {unknown}"
            )
        wanted = {c: {_spelled(v) for v in values} for c, values in partitions.items()}

        def attempt(version: int) -> WriteResult:
            present: dict[str, set[str]] = {c: set() for c in wanted}
            for file in self.engine.data_files(table, uri):
                values = dict(file.partition)
                if all(values.get(c) in wanted[c] for c in wanted):
                    for c in wanted:
                        present[c].add(str(values[c]))
            if not all(present.values()):
                return WriteResult(version, 0, 0, 0)
            options = WriteOptions(
                mode="overwrite",
                partitions={c: sorted(v) for c, v in present.items()},
                operation="delete partitions",
            )
            with self._storage_errors(table):
                return self.engine.write(table, uri, self.spark.createDataFrame([], schema), options)

        return self.retry_on_conflict(table, attempt)

    def checkpoint(self, table: TableRef) -> None:
        """Write a Delta checkpoint of the current version (readers stop replaying the log before it)."""
        table = table_name(table)
        with self._storage_errors(table):
            self.engine.checkpoint(table, self.path(table))

    def expire_log(self, table: TableRef, retention_hours: int) -> int:
        """Checkpoint and delete log entries older than `retention_hours` before it: time travel to those
        versions stops working. The retention is kept as the table's `delta.logRetentionDuration`, which
        both Delta implementations also apply when they checkpoint on their own later. Returns how many log
        files went."""
        table = table_name(table)
        with self._storage_errors(table):
            return self.engine.expire_log(table, self.path(table), retention_hours)


def _spelled(value: PartitionValue) -> str:
    """A partition value as DataFile.partition spells it (Hive-style)."""
    if isinstance(value, bool):
        return str(value).lower()
    return value.isoformat() if isinstance(value, dt.date) else str(value)

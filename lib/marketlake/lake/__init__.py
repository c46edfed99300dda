"""marketlake.lake: the one place that knows where tables live and how they are read and written.

A table named `layer.name` lives at `<lake root>/<layer>/<name>` and is a real Delta table. Jobs call
`Lake.read`, `Lake.write`, `Lake.upsert`; no job builds a path or names a format.

Engines (see docs/DESIGN.md): `delta-spark` (format("delta"), needs the io.delta jars), `delta-rs`
(Spark's Parquet writer plus a commit through the `deltalake` package), `auto` (delta-spark when its
classes load in the session, otherwise delta-rs).
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from pyspark.sql import DataFrame, SparkSession

from marketlake.config import LakeConfig
from marketlake.errors import ConcurrentWriteError, StorageError, TableError, UsageError, storage_problem
from marketlake.lake.delta_rs import NO_TABLE, DeltaRsEngine, WriteResult, store_uri
from marketlake.lake.delta_spark import DeltaSparkEngine, delta_spark_available

__all__ = ["NO_TABLE", "Lake", "WriteResult", "resolve_engine"]

log = logging.getLogger("marketlake.lake")
TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
Partitions = dict[str, list] | Literal["dynamic"] | None
T_ = TypeVar("T_")


def resolve_engine(spark: SparkSession, wanted: str, storage_options: dict[str, str] | None = None):
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
        return DeltaSparkEngine(spark)
    if available:
        return DeltaSparkEngine(spark)
    log.info("engine auto: delta-rs, because %s", why)
    return DeltaRsEngine(spark, storage_options)


def absolute_root(root: str) -> str:
    """Local roots become absolute paths; URIs (s3a://, hdfs://, file:/...) stay as they are."""
    if "://" in root or root.startswith("file:"):
        return root.rstrip("/")
    return os.path.abspath(root)


class Lake:
    def __init__(self, spark: SparkSession, config: LakeConfig, root: str | None = None):
        self.spark = spark
        self.config = config
        self.root = absolute_root(root or config.root)
        self.engine = resolve_engine(spark, config.engine, config.storage_options)

    @property
    def engine_name(self) -> str:
        return self.engine.name

    def path(self, table: str) -> str:
        if not TABLE_NAME.match(table):
            raise TableError(f"table name '{table}' is not of the form layer.name (lower case)")
        layer, name = table.split(".")
        return f"{self.root}/{layer}/{name}"

    def exists(self, table: str) -> bool:
        return self.engine.exists(self.path(table))

    def tables(self) -> list[tuple[str, int, int]]:
        """(table, version, rows) for every Delta table under the root, from the logs alone."""
        import pyarrow as pa
        import pyarrow.fs as pafs
        from deltalake import DeltaTable

        filesystem, root = pafs.FileSystem.from_uri(store_uri(self.root))
        found = []
        for layer in filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
            if layer.type != pafs.FileType.Directory:
                continue
            for entry in filesystem.get_file_info(pafs.FileSelector(layer.path)):
                table = f"{layer.base_name}.{entry.base_name}"
                if entry.type != pafs.FileType.Directory or not TABLE_NAME.match(table):
                    continue
                if filesystem.get_file_info(f"{entry.path}/_delta_log").type != pafs.FileType.Directory:
                    continue
                delta_table = DeltaTable(store_uri(self.path(table)), storage_options=self.config.storage_options or None)
                actions = pa.table(delta_table.get_add_actions(flatten=True))
                rows = sum(n or 0 for n in actions.column("num_records").to_pylist()) if actions.num_rows else 0
                found.append((table, delta_table.version(), rows))
        return sorted(found)

    def version(self, table: str) -> int:
        return self.engine.version(table, self.path(table))

    def read(self, table: str, version: int | None = None) -> DataFrame:
        """The table at its latest version, or at `version` (time travel)."""
        return self.engine.read(table, self.path(table), version)

    def write(
        self,
        table: str,
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
        if mode not in ("append", "overwrite"):
            raise TableError(f"{table}: write mode must be append or overwrite, not {mode!r}")
        if partitions is not None and mode != "overwrite":
            raise TableError(f"{table}: partitions= goes with mode='overwrite'")
        operation = f"{mode}" if partitions is None else f"{mode} partitions"
        with self._storage_errors(table):
            return self.engine.write(
                table, self.path(table), df, mode, partition_by, partitions, merge_schema, overwrite_schema,
                operation, expected_version,
            )

    def upsert(
        self,
        table: str,
        df: DataFrame,
        keys: list[str],
        partition_by: list[str] | None = None,
        expected_version: int | None = None,
    ) -> WriteResult:
        """Insert rows with new keys, replace rows whose keys exist (dimension tables). Keys must be
        unique in `df`: a duplicate key would make the result depend on row order, so it is an error.
        expected_version: as for `write`."""
        duplicate = df.groupBy(*keys).count().filter("count > 1").limit(1).collect()
        if duplicate:
            example = ", ".join(f"{k}={duplicate[0][k]!r}" for k in keys)
            raise TableError(f"{table}: upsert data has more than one row for key {example}")
        with self._storage_errors(table):
            return self.engine.upsert(table, self.path(table), df, keys, partition_by, expected_version)

    def snapshot_version(self, table: str) -> int:
        """The table's current version, or NO_TABLE when it does not exist yet."""
        return self.version(table) if self.exists(table) else NO_TABLE

    def read_at(self, table: str, version: int) -> DataFrame | None:
        """The table at `version` (from `snapshot_version`), or None for NO_TABLE."""
        return None if version == NO_TABLE else self.read(table, version)

    def retry_on_conflict(self, table: str, attempt: Callable[[int], T_], attempts: int | None = None) -> T_:
        """Optimistic concurrency: run `attempt(version)` with the table's current version; the attempt
        reads the table at that version and commits with `expected_version=version`. When another writer
        committed first, nothing was committed: run it again against the new version (jittered back-off).
        Two writers deciding from one snapshot can thus never both commit."""
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
                log.info("%s | version %s moved on under a concurrent writer; attempt %d of %d", table,
                         version, tried + 1, attempts)
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

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits, newest first: version, timestamp (ms), operation, parameters, metrics."""
        return self.engine.history(table, self.path(table), limit)

    def vacuum(self, table: str, retention_hours: int | None = None) -> list[str]:
        """Delete files that no version within the retention needs (and staged files of dead writes)."""
        hours = self.config.vacuum_retention_hours if retention_hours is None else retention_hours
        return self.engine.vacuum(table, self.path(table), hours)

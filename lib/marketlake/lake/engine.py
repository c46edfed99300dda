"""What the lake asks of an engine: the `Engine` protocol both engines satisfy, and the types and
constants they share (`WriteOptions`, `WriteResult`, `TableSummary`, `NO_TABLE`).

The engines (delta_rs.py, delta_spark.py) import from here and never from each other, so either loads
without the other's package.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from marketlake.lake.files import Files

# The expected version of a table that must not exist yet (a checked write that creates it).
NO_TABLE = -1
# `layer.name`, lower case: the table lives at `<lake root>/<layer>/<name>`.
TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
# A value of a partition column (string, date, integer or boolean; see schema.PARTITION_TYPES).
PartitionValue = str | int | dt.date
Partitions = Mapping[str, Sequence[PartitionValue]] | Literal["dynamic"] | None
# Session settings the lake's files depend on, set when the session is built (marketlake.spark), never by
# a write: Delta readers and statistics want INT64 microsecond timestamps, not Spark's default INT96.
SESSION_SETTINGS = {"spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS"}
DELTA_LOG = "_delta_log"
# The table property both Delta implementations read to decide which log entries have expired.
LOG_RETENTION = "delta.logRetentionDuration"


def log_retention(hours: int) -> str:
    """The value of LOG_RETENTION for `hours` (Delta's interval syntax)."""
    return f"interval {hours} hours"


@dataclass(frozen=True)
class WriteResult:
    version: int
    files_added: int
    files_removed: int
    rows: int


@dataclass(frozen=True)
class AppTransaction:
    """A Delta application transaction recorded with a commit (`txn` action): `version` of application
    `app_id` is in the table. A writer that replays its work (a stream's micro-batch after a restart) asks
    `transaction_version` first and skips what the table already holds."""

    app_id: str
    version: int

    @property
    def metadata(self) -> dict[str, str]:
        """Also in the commit's info, where `history` shows it (commit time of a batch)."""
        return {"marketlake.transaction": f"{self.app_id}:{self.version}"}


@dataclass(frozen=True)
class WriteOptions:
    """How `Engine.write` commits a DataFrame (see `Lake.write` for the meaning of each)."""

    mode: Literal["append", "overwrite"] = "append"
    partition_by: list[str] | None = None
    partitions: Partitions = None
    merge_schema: bool = False
    overwrite_schema: bool = False
    operation: str = "append"  # recorded in the commit as marketlake.operation
    expected_version: int | None = None
    app_transaction: AppTransaction | None = None

    @property
    def checked(self) -> bool:
        return self.expected_version is not None


@dataclass(frozen=True)
class CompactResult:
    """What a compaction did: files rewritten into fewer, larger ones (0 and 0 when nothing was small)."""

    files_removed: int
    files_added: int
    partitions: int


@dataclass(frozen=True)
class DataFile:
    """One data file of a table's current version: its partition values as a Hive-style path spells them
    (column, value; None is the null partition), its bytes and rows."""

    path: str  # as the engine names it: relative to the table (delta-rs) or a URI (delta-spark)
    partition: tuple[tuple[str, str | None], ...]
    size: int
    rows: int


class TableSummary(NamedTuple):
    table: str
    version: int
    rows: int


class Engine(Protocol):
    """A Delta engine: reads and commits the table at `uri`; `table` (layer.name) is for messages."""

    name: str

    def exists(self, uri: str) -> bool: ...

    def version(self, table: str, uri: str) -> int: ...

    def schema(self, table: str, uri: str) -> tuple[T.StructType, list[str]] | None: ...

    def history(self, table: str, uri: str, limit: int | None = None) -> list[dict[str, Any]]: ...

    def read(self, table: str, uri: str, version: int | None = None) -> DataFrame: ...

    def write(self, table: str, uri: str, df: DataFrame, options: WriteOptions) -> WriteResult: ...

    def upsert(
        self,
        table: str,
        uri: str,
        df: DataFrame,
        keys: list[str],
        partition_by: list[str] | None,
        expected_version: int | None = None,
        app_transaction: AppTransaction | None = None,
    ) -> WriteResult: ...

    def replace_groups(
        self,
        table: str,
        uri: str,
        df: DataFrame,
        group: str,
        keys: list[str],
        app_transaction: AppTransaction | None = None,
    ) -> WriteResult: ...

    def transaction_version(self, table: str, uri: str, app_id: str) -> int | None: ...

    def vacuum(self, table: str, uri: str, retention_hours: int, removed_only: bool = False) -> list[str]: ...

    def compact(
        self,
        table: str,
        uri: str,
        partitions: Mapping[str, Sequence[PartitionValue]] | None,
        target_bytes: int,
    ) -> CompactResult: ...

    def checkpoint(self, table: str, uri: str) -> None: ...

    def expire_log(self, table: str, uri: str, retention_hours: int) -> int: ...

    def data_files(self, table: str, uri: str) -> list[DataFile]: ...

    def tables_under(self, root: str) -> list[TableSummary]: ...


def table_folders(files: Files, root: str) -> list[tuple[str, str]]:
    """(layer.name, folder) for every `<root>/<layer>/<name>` folder whose names make a table name;
    whether it holds a Delta table is for the engine to say."""
    found: list[tuple[str, str]] = []
    for layer in files.list(root, recursive=False):
        if not layer.is_dir:
            continue
        for entry in files.list(layer.uri, recursive=False):
            table = f"{layer.relative}.{entry.relative}"
            if entry.is_dir and TABLE_NAME.match(table):
                found.append((table, entry.uri))
    return sorted(found)

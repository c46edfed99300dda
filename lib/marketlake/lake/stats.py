"""Delta per-file statistics (numRecords, minValues, maxValues, nullCount) from a Parquet footer.

Only the footer is read, never data pages. Values follow the Delta protocol's JSON encoding: dates as
`YYYY-MM-DD`, timestamps as ISO-8601 in UTC truncated to milliseconds (the maximum rounded up, so that
file skipping never drops a file that holds a matching row), strings cut to a prefix (a cut maximum is
left out for the same reason).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
from pyspark.sql import types as T

STRING_PREFIX = 32
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_FLOATING = (T.FloatType, T.DoubleType)
_UNIT_PER_SECOND = {"milliseconds": 1_000, "microseconds": 1_000_000, "nanoseconds": 1_000_000_000}


def file_stats(metadata: pq.FileMetaData, schema: T.StructType) -> str:
    """The Delta `stats` JSON string of one Parquet file, for the data columns of `schema`."""
    chunks = _column_chunks(metadata)
    minimum: dict[str, Any] = {}
    maximum: dict[str, Any] = {}
    nulls: dict[str, Any] = {}
    for path, data_type in _leaf_columns(schema):
        columns = chunks.get(".".join(path))
        if not columns:
            continue
        statistics = [column.statistics for column in columns]
        if all(s is not None and s.has_null_count for s in statistics):
            _put(nulls, path, sum(s.null_count for s in statistics))
        low, high = _min_max(columns, data_type)
        if low is not None:
            _put(minimum, path, low)
        if high is not None:
            _put(maximum, path, high)
    return json.dumps(
        {"numRecords": metadata.num_rows, "minValues": minimum, "maxValues": maximum, "nullCount": nulls},
        separators=(",", ":"),
    )


def _column_chunks(metadata: pq.FileMetaData) -> dict[str, list[pq.ColumnChunkMetaData]]:
    chunks: dict[str, list[pq.ColumnChunkMetaData]] = {}
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        if row_group.num_rows == 0:
            continue
        for index in range(row_group.num_columns):
            column = row_group.column(index)
            chunks.setdefault(column.path_in_schema, []).append(column)
    return chunks


def _leaf_columns(
    schema: T.StructType, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], T.DataType]]:
    """Primitive columns reachable through structs only (arrays and maps carry no min/max in Delta)."""
    for field in schema.fields:
        path = (*prefix, field.name)
        if isinstance(field.dataType, T.StructType):
            yield from _leaf_columns(field.dataType, path)
        elif not isinstance(field.dataType, (T.ArrayType, T.MapType)):
            yield path, field.dataType


def _put(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _min_max(columns: list[pq.ColumnChunkMetaData], data_type: T.DataType) -> tuple[Any, Any]:
    statistics = [column.statistics for column in columns]
    if not all(s is not None and s.has_min_max for s in statistics):
        return None, None
    if isinstance(data_type, _INTEGRAL):
        return min(s.min for s in statistics), max(s.max for s in statistics)
    if isinstance(data_type, _FLOATING):
        low, high = min(s.min for s in statistics), max(s.max for s in statistics)
        return (None, None) if not (math.isfinite(low) and math.isfinite(high)) else (low, high)
    if isinstance(data_type, T.DateType) and columns[0].physical_type == "INT32":
        low, high = min(s.min_raw for s in statistics), max(s.max_raw for s in statistics)
        return _date(low), _date(high)
    if isinstance(data_type, T.TimestampType) and columns[0].physical_type == "INT64":
        unit = getattr(statistics[0].logical_type, "unit", None) or "microseconds"
        per_second = _UNIT_PER_SECOND.get(str(unit).lower())
        if per_second is None:
            return None, None
        low, high = min(s.min_raw for s in statistics), max(s.max_raw for s in statistics)
        per_milli = per_second // 1_000
        return _timestamp(low // per_milli), _timestamp(-(-high // per_milli))
    if isinstance(data_type, T.StringType):
        low = min(s.min_raw for s in statistics).decode("utf-8", errors="ignore")
        high = max(s.max_raw for s in statistics).decode("utf-8", errors="ignore")
        return low[:STRING_PREFIX], (high if len(high) <= STRING_PREFIX else None)
    return None, None


def _date(days: int) -> str:
    return (EPOCH + dt.timedelta(days=days)).date().isoformat()


def _timestamp(millis: int) -> str:
    moment = EPOCH + dt.timedelta(milliseconds=millis)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

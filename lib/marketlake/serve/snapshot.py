"""In-memory snapshots of the tables `serve` answers from, and the poller that swaps in new versions.

A table is read at one pinned Delta version (its newest `as_of_date` partition when it has one) into a
`Grouped`: the distinct keys sorted as fixed-width UTF-8 bytes (found with a binary search), and every
column as one numpy array in key-then-rank order, strings as codes into their distinct values. That keeps
10^6 users x 10 recommendations to a few hundred bytes per user, and none of it is an object the garbage
collector walks. A `Snapshot` holds one `Loaded` table per source and is never changed: a refresh builds a
new one and swaps it in with one assignment, so a request that took a snapshot answers from it alone.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
from deltalake import DeltaTable

from marketlake import catalog

log = logging.getLogger("marketlake.serve")

# marketlake.recommend.GLOBAL_POPULAR (that module imports Spark; tests/test_serve.py checks they agree).
GLOBAL_POPULAR = "global_popular"
# An unknown user's popular items beyond the recommend job's global list: the items recommended to most users.
MOST_RECOMMENDED = "most_recommended"
AS_OF_DATE = "as_of_date"
LOADER_NICENESS = 10  # added to the loading process's niceness
BLOCK_ROWS = 65_536  # rows per step when turning strings into fixed-width bytes (bounds the scratch memory)


@dataclass(frozen=True)
class Labels:
    """A string column as codes into its distinct values; a null is the code len(values) - 1 when there is
    one (values then ends with None)."""

    codes: np.ndarray
    values: tuple[str | None, ...]


Column = np.ndarray | Labels


@dataclass(frozen=True)
class Grouped:
    """Rows grouped by a key: the rows of keys[i] are starts[i]:starts[i + 1] of every column, in rank order."""

    keys: np.ndarray  # sorted distinct keys, UTF-8 bytes (numpy S)
    starts: np.ndarray  # int64, len(keys) + 1
    columns: Mapping[str, Column]

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def rows(self) -> int:
        return int(self.starts[-1])

    def find(self, key: bytes) -> slice | None:
        """The rows of `key` (UTF-8 bytes without a trailing NUL), or None when the key is not there."""
        at = int(np.searchsorted(self.keys, key))
        if at < len(self.keys) and self.keys[at] == key and self.starts[at] < self.starts[at + 1]:
            return slice(int(self.starts[at]), int(self.starts[at + 1]))
        return None  # (a key without rows: a Parquet dictionary may hold values no row has)

    def values(self, column: str, rows: slice) -> list[Any]:
        data = self.columns[column]
        if isinstance(data, Labels):
            return [data.values[code] for code in data.codes[rows].tolist()]
        return list(data[rows].tolist())


@dataclass(frozen=True)
class Source:
    """A table serve reads: its key, the column that orders a key's rows, and the columns kept."""

    name: str
    table: catalog.Table
    key: str
    labels: tuple[str, ...]
    numbers: tuple[str, ...]
    order: str | None = "rank"

    @property
    def latest_partition_only(self) -> bool:
        return AS_OF_DATE in self.table.partition_by


DAILY = Source(
    "daily",
    catalog.USER_RECOMMENDATIONS,
    key="user_id",
    labels=("item_id", "source", "model_version"),
    numbers=("rank", "score"),
)
REALTIME = Source(
    "realtime",
    catalog.REALTIME_RECOMMENDATIONS,
    key="user_id",
    labels=("item_id", "source"),
    numbers=("rank", "score", "updated_at"),
)
SIMILAR = Source(
    "similar",
    catalog.SIMILAR_ITEMS,
    key="item_id",
    labels=("similar_item_id", "source", "model_version"),
    numbers=("rank", "score"),
)
SEGMENTS = Source(
    "segments",
    catalog.USER_SEGMENTS,
    key="user_id",
    labels=("segment_name", "model_version"),
    numbers=("segment_id",),
    order=None,
)
SOURCES: tuple[Source, ...] = (DAILY, REALTIME, SIMILAR, SEGMENTS)


@dataclass(frozen=True)
class PopularItem:
    item_id: str
    score: float
    source: str


@dataclass(frozen=True)
class Loaded:
    """One table at one version, in memory."""

    source: Source
    version: int
    committed_at: float  # seconds since the epoch, the commit of `version`
    loaded_at: float
    as_of_date: str | None
    rows: Grouped
    load_seconds: float
    popular: tuple[PopularItem, ...] = ()  # of the daily recommendations: what unknown users get


@dataclass(frozen=True)
class Snapshot:
    """What one request answers from; never changed after it is built."""

    tables: Mapping[str, Loaded] = field(default_factory=dict)
    built_at: float = 0.0

    def get(self, source: Source) -> Loaded | None:
        return self.tables.get(source.name)

    @property
    def popular(self) -> tuple[PopularItem, ...]:
        daily = self.get(DAILY)
        return daily.popular if daily is not None else ()


# ---- reading a table into a Grouped ------------------------------------------------------------------------


def read_table(
    root: str, storage_options: Mapping[str, str], source: Source, version: int
) -> tuple[pa.Table, str | None, float]:
    """(the source's columns at `version`, the as_of_date read, the commit's time). Only the newest
    as_of_date partition's files are read when the table has that partition; strings come out of Parquet
    as dictionaries, never as 10^7 separate strings."""
    table = DeltaTable(table_uri(root, source.table), version=version, storage_options=dict(storage_options))
    as_of_date = None
    pruning = None
    if source.latest_partition_only:
        dates = [p[AS_OF_DATE] for p in table.partitions() if p.get(AS_OF_DATE) is not None]
        as_of_date = max(dates) if dates else None
        pruning = [(AS_OF_DATE, "=", as_of_date)] if as_of_date is not None else None
    options = pds.ParquetReadOptions(dictionary_columns=[source.key, *source.labels])
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=pruning, parquet_read_options=options)
    data = dataset.to_table(columns=[source.key, *source.labels, *source.numbers])
    return data, as_of_date, _commit_seconds(table, version)


def group_rows(table: pa.Table, source: Source) -> Grouped:
    """`table`'s rows grouped by the source's key (rows with a null key are left out), each key's rows in
    `order`."""
    if table[source.key].null_count:
        table = table.filter(pc.is_valid(table[source.key]))
    # pyarrow releases the GIL: the string columns are encoded side by side, the key on this thread.
    with ThreadPoolExecutor(max(1, len(source.labels))) as pool:
        encoded = {name: pool.submit(_encode, table[name]) for name in source.labels}
        key_codes, key_values = _encode(table[source.key])
        return _grouped(
            table, source, key_codes, key_values, {name: job.result() for name, job in encoded.items()}
        )


def _grouped(
    table: pa.Table,
    source: Source,
    key_codes: np.ndarray,
    key_values: pa.Array,
    encoded: Mapping[str, tuple[np.ndarray, pa.Array]],
) -> Grouped:
    order_of_keys = pc.sort_indices(key_values).to_numpy()
    position = np.empty(len(key_values), np.int32)
    position[order_of_keys] = np.arange(len(key_values), dtype=np.int32)
    row_key = position[key_codes]
    sort_keys = {"key": row_key}
    if source.order is not None:
        sort_keys["order"] = _numbers(table[source.order])
    permutation = pc.sort_indices(
        pa.table(sort_keys), sort_keys=[(name, "ascending") for name in sort_keys]
    ).to_numpy()
    starts = np.zeros(len(key_values) + 1, np.int64)
    np.cumsum(np.bincount(row_key, minlength=len(key_values)), out=starts[1:])
    columns: dict[str, Column] = {}
    for name in source.labels:
        codes, values = encoded[name]
        labels = tuple(values.to_pylist())
        if len(codes) and codes.max(initial=-1) == len(labels):
            labels = (*labels, None)
        columns[name] = Labels(_narrow(codes[permutation], len(labels)), labels)
    for name in source.numbers:
        values = _numbers(table[name])[permutation]
        columns[name] = _narrow(values, 0) if name == source.order else values
    return Grouped(fixed_width(key_values.take(pa.array(order_of_keys))), starts, columns)


def _encode(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(codes, distinct values) of a string column; nulls get the code len(values)."""
    chunks = [
        chunk if pa.types.is_dictionary(chunk.type) else pc.dictionary_encode(chunk)
        for chunk in column.chunks
        if len(chunk)
    ]
    if not chunks:
        return np.empty(0, np.int32), pa.array([], pa.string())
    unified = pa.chunked_array(chunks).unify_dictionaries()
    values = unified.chunk(0).dictionary
    codes = np.concatenate(
        [
            (chunk.indices.fill_null(len(values)) if chunk.null_count else chunk.indices).to_numpy()
            for chunk in unified.chunks
        ]
    ).astype(np.int32, copy=False)
    return codes, values


def _narrow(values: np.ndarray, count: int) -> np.ndarray:
    """Integers in the smallest type that holds them (and `count`): codes of 3 sources take 1 byte each."""
    if not np.issubdtype(values.dtype, np.integer) or not len(values):
        return values
    low, high = min(int(values.min()), 0), max(int(values.max()), count)
    for kind in (np.int8, np.int16, np.int32):
        if np.iinfo(kind).min <= low and high <= np.iinfo(kind).max:
            return values.astype(kind)
    return values


def _numbers(column: pa.ChunkedArray) -> np.ndarray:
    """A numeric or timestamp column as numpy: timestamps as microseconds since the epoch (UTC), nulls as
    NaN (floats) or the type's smallest value (integers, timestamps), which sorts first."""
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.timestamp("us", tz=column.type.tz)).cast(pa.int64())
    if pa.types.is_integer(column.type):
        smallest = np.iinfo(column.type.to_pandas_dtype()).min
        column = column.fill_null(smallest)
    if column.num_chunks == 0:
        return np.empty(0, column.type.to_pandas_dtype())
    return np.asarray(column.to_numpy())


def fixed_width(strings: pa.Array) -> np.ndarray:
    """Strings as numpy fixed-width UTF-8 bytes (dtype S, as wide as the longest), in numpy alone."""
    data = strings.cast(pa.large_binary())
    count = len(data)
    if count == 0:
        return np.empty(0, "S1")
    _, offsets_buffer, data_buffer = data.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int64, count=count + 1, offset=data.offset * 8)
    content = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    lengths = np.diff(offsets)
    width = max(int(lengths.max()), 1)
    out = np.zeros((count, width), np.uint8)
    for first in range(0, count, BLOCK_ROWS):
        block = slice(first, min(first + BLOCK_ROWS, count))
        block_lengths = lengths[block]
        rows = np.repeat(np.arange(block.start, block.stop), block_lengths)
        within = np.arange(int(block_lengths.sum())) - np.repeat(
            np.cumsum(block_lengths) - block_lengths, block_lengths
        )
        out[rows, within] = content[np.repeat(offsets[block.start : block.stop], block_lengths) + within]
    return out.view(f"S{width}").ravel()


# ---- popular items for unknown users ------------------------------------------------------------------------


def popular_items(daily: Grouped, n: int) -> tuple[PopularItem, ...]:
    """The list an unknown user gets: the recommend job's global popularity list (its `global_popular`
    rows; score = share of all users with the item), then, when that list is shorter than n, the items
    recommended to the most users (score = share of users whose list has the item). Ties: item id."""
    items = daily.columns["item_id"]
    sources = daily.columns["source"]
    assert isinstance(items, Labels) and isinstance(sources, Labels)
    scores = np.asarray(daily.columns["score"], np.float64)
    chosen: list[PopularItem] = []
    if GLOBAL_POPULAR in sources.values:
        rows = sources.codes == sources.values.index(GLOBAL_POPULAR)
        best: dict[int, float] = {}
        for code, score in zip(items.codes[rows].tolist(), scores[rows].tolist(), strict=True):
            if code not in best or score > best[code]:
                best[code] = score
        by_score = sorted(best.items(), key=lambda pair: (_descending(pair[1]), items.values[pair[0]] or ""))
        for code, score in by_score:
            item = items.values[code]
            if item is not None and len(chosen) < n:
                chosen.append(PopularItem(item, score, GLOBAL_POPULAR))
    if len(chosen) < n and len(daily):
        counts = np.bincount(items.codes, minlength=len(items.values))
        taken = {popular.item_id for popular in chosen}
        ranked = sorted(
            (code for code in np.flatnonzero(counts).tolist() if items.values[code] is not None),
            key=lambda code: (-counts[code], items.values[code]),
        )
        for code in ranked:
            item = items.values[code]
            if item is None or item in taken:
                continue
            chosen.append(PopularItem(item, round(float(counts[code]) / len(daily), 6), MOST_RECOMMENDED))
            if len(chosen) == n:
                break
    return tuple(chosen)


def _descending(score: float) -> float:
    return -score if score == score else float("inf")  # NaN (a null score) last


# ---- the store: the current snapshot, refreshed from the Delta logs -------------------------------------------


def table_uri(root: str, table: catalog.Table) -> str:
    """The table's location as deltalake spells it (Hadoop's s3a:// is s3:// to it)."""
    uri = table.location(root)
    return "s3://" + uri[len("s3a://") :] if uri.startswith("s3a://") else uri


class Store:
    """The current snapshot of every source, and the means to bring it up to date.

    `refresh` (the poller's, one at a time) asks each table's Delta log for its newest version, loads the
    tables whose version changed, and swaps in a new Snapshot; a table that fails to load keeps its old
    version in the new snapshot and the failure is logged once per table, version and message."""

    def __init__(
        self,
        root: str,
        storage_options: Mapping[str, str] | None = None,
        popular_n: int = 100,
        sources: Sequence[Source] = SOURCES,
        clock: Callable[[], float] = time.time,
        isolate: bool = True,
    ):
        self.root = root.rstrip("/")
        self._children = ChildLoader() if isolate else None
        self.storage_options = dict(storage_options or {})
        self.popular_n = popular_n
        self.sources = tuple(sources)
        self.clock = clock
        self._snapshot = Snapshot()
        self._handles: dict[str, DeltaTable] = {}
        self._latest: dict[str, int | None] = {}
        self._failures: dict[str, str] = {}
        self._refreshing = threading.Lock()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def latest_versions(self) -> dict[str, int | None]:
        """The newest version of each source's table the last refresh saw (None: not in the lake)."""
        return dict(self._latest)

    def refresh(self) -> bool:
        """Load what changed and swap it in; True when a new snapshot was swapped in."""
        with self._refreshing:
            current = self._snapshot
            tables = dict(current.tables)
            changed = False
            for source in self.sources:
                try:
                    version = self._newest_version(source)
                except Exception as exc:  # an unreadable log: keep what is served
                    self._failed(source, None, exc)
                    continue
                self._latest[source.name] = version
                served = current.get(source)
                if version is None:
                    if served is not None:
                        log.warning(
                            "serve: %s is no longer in the lake; keeping version %d",
                            source.table.name,
                            served.version,
                        )
                    continue
                if served is not None and served.version == version:
                    continue
                try:
                    tables[source.name] = self._load(source, version)
                except Exception as exc:  # a failed load keeps the old version
                    self._failed(source, version, exc)
                    continue
                self._failures.pop(source.name, None)
                changed = True
            if not changed:
                return False
            self._snapshot = Snapshot(tables, self.clock())
            return True

    def close(self) -> None:
        """Stop the child process waiting for the next load."""
        if self._children is not None:
            self._children.close()

    def _newest_version(self, source: Source) -> int | None:
        handle = self._handles.get(source.name)
        if handle is None:
            uri = table_uri(self.root, source.table)
            if not DeltaTable.is_deltatable(uri, self.storage_options):
                return None
            handle = DeltaTable(uri, storage_options=self.storage_options)
            self._handles[source.name] = handle
        else:
            handle.update_incremental()
        return int(handle.version())

    def _load(self, source: Source, version: int) -> Loaded:
        started = time.perf_counter()
        arguments = (self.root, self.storage_options, source.name, version, self.popular_n)
        loaded = self._children.load(*arguments) if self._children is not None else load(*arguments)
        loaded = replace(loaded, loaded_at=self.clock())
        log.info(
            "serve: loaded %s version %d%s: %d keys, %d rows in %.2f s (%.2f s reading and sorting)",
            source.table.name,
            version,
            f" ({AS_OF_DATE} {loaded.as_of_date})" if loaded.as_of_date else "",
            len(loaded.rows),
            loaded.rows.rows,
            time.perf_counter() - started,
            loaded.load_seconds,
        )
        return loaded

    def _failed(self, source: Source, version: int | None, exc: Exception) -> None:
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        said = f"{version}:{message}"
        if self._failures.get(source.name) != said:
            self._failures[source.name] = said
            at = f" version {version}" if version is not None else ""
            log.error(
                "serve: cannot load %s%s (%s); still serving the version loaded before",
                source.table.name,
                at,
                message,
            )


def load(
    root: str, storage_options: Mapping[str, str], source_name: str, version: int, popular_n: int
) -> Loaded:
    """One source's table at `version`, in memory (the Store runs it in a child process)."""
    started = time.perf_counter()
    source = next(s for s in SOURCES if s.name == source_name)
    data, as_of_date, committed_at = read_table(root, storage_options, source, version)
    rows = group_rows(data, source)
    popular = popular_items(rows, popular_n) if source is DAILY else ()
    seconds = time.perf_counter() - started
    return Loaded(source, version, committed_at, time.time(), as_of_date, rows, seconds, popular)


class ChildLoader:
    """Runs `load` in child processes, a fresh one per load, with the next one started ahead.

    Reading and sorting 10^7 rows in the server would hold the GIL for seconds (every request waiting)
    and leave the allocators' high-water mark in the long-running process. A child gets the arguments on
    stdin and pickles the result into a file the server reads. The next child is started right after a
    load, so its interpreter and imports (numpy, pyarrow, deltalake: seconds on a busy machine) are done
    before the next version arrives; it waits on stdin and exits when the server does."""

    def __init__(self) -> None:
        self._next: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        library = str(Path(__file__).resolve().parents[2])
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [library, os.environ.get("PYTHONPATH")])),
        }
        return subprocess.Popen(
            [sys.executable, "-c", f"from {__name__} import child_main; child_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=environment,
        )

    def load(self, *arguments: Any) -> Loaded:
        child, self._next = self._next or self._start(), None
        with tempfile.TemporaryDirectory(prefix="marketlake-serve-") as folder:
            result = Path(folder) / "loaded.pickle"
            _, errors = child.communicate(pickle.dumps((str(result), arguments)))
            self._next = self._start()
            if child.returncode != 0:
                lines = errors.decode(errors="replace").strip().splitlines() or [
                    f"exit code {child.returncode}"
                ]
                raise RuntimeError(f"the loading process failed: {lines[-1]}")
            with result.open("rb") as handle:
                loaded: Loaded = pickle.load(handle)
        return loaded

    def close(self) -> None:
        if self._next is not None:
            self._next.kill()
            self._next.communicate()
            self._next = None


def child_main() -> None:
    """The loading process: arguments from stdin, the Loaded pickled into the file named there."""
    # Below the server's priority: when the cores are busy, answering requests comes before loading.
    if hasattr(os, "nice"):
        os.nice(LOADER_NICENESS)
    request = sys.stdin.buffer.read()
    if not request:  # the server stopped before it needed this child
        os._exit(0)
    path, arguments = pickle.loads(request)
    with open(path, "wb") as handle:
        pickle.dump(load(*arguments), handle, protocol=5)
    # The result is written; skip the interpreter's teardown, where the deltalake and pyarrow thread pools
    # can abort the process ("terminate called without an active exception").
    os._exit(0)


def _commit_seconds(table: DeltaTable, version: int) -> float:
    for commit in table.history(limit=1):
        if commit.get("version") == version and commit.get("timestamp") is not None:
            return float(commit["timestamp"]) / 1000.0
    return time.time()


class Poller:
    """A daemon thread that refreshes the store every `seconds`."""

    def __init__(self, store: Store, seconds: float):
        self.store = store
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="marketlake-serve-poller", daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.store.close()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.store.refresh()
            except Exception as exc:  # the poller outlives any one failure
                log.error("serve: refresh failed (%s); still serving the snapshot loaded before", exc)


def iso_time(seconds: float) -> str:
    return (
        dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )

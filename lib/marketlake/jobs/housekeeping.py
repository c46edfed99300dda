"""housekeeping: retention and upkeep of every table in the catalog that exists, relative to the run date:
delete the partitions older than the table's retention (config `retention`; unpartitioned tables lose rows
by a configured date column, or nothing), compact partitions of many small files, vacuum files no version
within lake.vacuum_retention_hours needs, checkpoint the log and delete log entries older than
retention.log_retention_hours; then delete export and report folders older than their retention. One
log line per table; a re-run finds nothing left to do and commits nothing. Safe beside running writers:
every commit that removes files is checked and decided again when another writer committed first."""

from __future__ import annotations

import argparse
import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.config import RetentionConfig
from marketlake.lake import DataFile, Lake
from marketlake.runner import Job, JobContext

Partition = tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class Tidied:
    """What housekeeping did to one table."""

    partitions_expired: int = 0
    rows_expired: int = 0
    files_compacted: int = 0  # small files rewritten ...
    files_written: int = 0  # ... into these
    log_files_removed: int = 0
    files_vacuumed: int = 0

    def describe(self) -> str:
        return " ".join(f"{key}={value}" for key, value in asdict(self).items())


def cutoff(run_date: dt.date, days: int) -> dt.date:
    """The oldest date kept: everything dated before it has expired."""
    return run_date - dt.timedelta(days=days)


def expired_partitions(files: Sequence[DataFile], column: str, oldest: dt.date) -> dict[dt.date, int]:
    """The partitions of `column` dated before `oldest`, with their rows (the null partition never expires)."""
    expired: Counter[dt.date] = Counter()
    for file in files:
        value = dict(file.partition).get(column)
        if value is not None and dt.date.fromisoformat(value) < oldest:
            expired[dt.date.fromisoformat(value)] += file.rows
    return dict(sorted(expired.items()))


def partitions_to_compact(files: Sequence[DataFile], max_files: int, small_bytes: int) -> list[Partition]:
    """Partitions (the empty tuple: an unpartitioned table) with more than `max_files` files, or with two or
    more whose average size is under `small_bytes`. Compacted, a partition has one file (or several of about
    the target size), so it does not qualify again. The null partition is left alone (a partition filter
    cannot name it)."""
    groups: dict[Partition, list[int]] = {}
    for file in files:
        groups.setdefault(file.partition, []).append(file.size)
    return sorted(
        (
            partition
            for partition, sizes in groups.items()
            if all(value is not None for _, value in partition)
            and (len(sizes) > max_files or (len(sizes) >= 2 and sum(sizes) / len(sizes) < small_bytes))
        ),
        key=str,
    )


def rows_kept(df: DataFrame, column: str, oldest: dt.date) -> DataFrame:
    """The rows dated on or after `oldest` (rows without a date are kept)."""
    return df.filter(F.col(column).isNull() | (F.col(column) >= F.lit(oldest)))


def expire_rows(lake: Lake, table: str, column: str, oldest: dt.date) -> int:
    """Rewrite an unpartitioned table without its rows dated before `oldest`, committed only against the
    version it was read at (decided again when another writer, such as a job's run record, came first)."""

    def attempt(version: int) -> int:
        current = lake.read_at(table, version)
        assert current is not None  # the table exists
        expired = current.filter(F.col(column) < F.lit(oldest)).count()
        if expired:
            lake.write(table, rows_kept(current, column, oldest), "overwrite", expected_version=version)
        return expired

    return lake.retry_on_conflict(table, attempt)


def tidy(lake: Lake, table: catalog.Table, settings: RetentionConfig, run_date: dt.date) -> Tidied:
    """Expire, compact, clean the log of and vacuum one existing table."""
    days = settings.days(table.name)
    partitions_expired = rows_expired = 0
    column = table.date_partition
    if days is not None and column is not None:
        expired = expired_partitions(lake.data_files(table), column, cutoff(run_date, days))
        if expired:
            lake.delete_partitions(table, {column: list(expired)})
            partitions_expired, rows_expired = len(expired), sum(expired.values())
    elif days is not None and table.name in settings.date_columns:
        rows_expired = expire_rows(
            lake, table.name, settings.date_columns[table.name], cutoff(run_date, days)
        )

    files_compacted = files_written = 0
    small = partitions_to_compact(
        lake.data_files(table), settings.compact_max_files, settings.compact_small_file_bytes
    )
    if small:
        selected: dict[str, list[str]] | None = None
        if table.partition_by:
            selected = {}
            for partition in small:
                for name, value in partition:
                    assert value is not None  # partitions_to_compact leaves the null partition out
                    selected.setdefault(name, []).append(value)
        compacted = lake.retry_on_conflict(
            table, lambda _version: lake.compact(table, selected, settings.compact_target_bytes)
        )
        files_compacted, files_written = compacted.files_removed, compacted.files_added

    # Vacuum first: it records itself in the log, which the checkpoint then covers (a re-run commits nothing).
    files_vacuumed = len(lake.vacuum(table))
    log_files_removed = lake.expire_log(table, settings.log_retention_hours)  # checkpoints first
    return Tidied(
        partitions_expired, rows_expired, files_compacted, files_written, log_files_removed, files_vacuumed
    )


def expire_folders(lake: Lake, settings: RetentionConfig, run_date: dt.date) -> int:
    """Delete export and report folders of run dates older than their retention; returns how many went."""
    deleted = 0
    for folder in lake.dated_folders(lake.files):
        days = settings.exports_days if folder.kind == "exports" else settings.reports_days
        if days is not None and folder.run_date < cutoff(run_date, days):
            deleted += lake.files.delete(folder.uri)
    return deleted


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    settings = ctx.config.retention
    totals: Counter[str] = Counter()
    tables = [table for table in catalog.TABLES if ctx.lake.exists(table)]
    for table in tables:
        days = settings.days(table.name)
        kept = "kept for ever" if days is None else f"{days} days"
        if days is not None and table.date_partition is None and table.name not in settings.date_columns:
            kept = "kept for ever (no date partition or date column)"
        with ctx.step(table.name) as step:
            done = tidy(ctx.lake, table, settings, ctx.run_date)
            step.rows = done.rows_expired
            step.detail = f"{kept}; {done.describe()}"
        for key, value in asdict(done).items():
            totals[key] += value
            if value:
                ctx.counts[f"{table.name}.{key}"] = value
    with ctx.step("export and report folders") as step:
        folders = expire_folders(ctx.lake, settings, ctx.run_date)
        step.detail = (
            f"expired={folders} (exports {settings.exports_days} days, reports {settings.reports_days})"
        )
    ctx.counts.update(tables=len(tables), folders_expired=folders, **totals)


JOB = Job(name="housekeeping", help=__doc__.strip(), run=run)

"""Remove every trace of subjects (user ids or emails) from the lake: tables, landing files, exports, reports,
saved models and checkpoints; then vacuum and cut the logs so that no old file or log entry holds them.

Run on demand (never by the pipeline or the DAG): `--subjects FILE` (one user id or email per line) or
`--user-id ID`. ops.erasures gets one row per subject (a keyed hash, never the id); a request already done
finds nothing, changes nothing and says so. See docs/jobs/erase.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import Column
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.config import Config, landing_root
from marketlake.erase import (
    TOKEN,
    Subject,
    as_bytes,
    mention,
    mentions_bytes,
    scrub_csv,
    scrub_lines,
    scrub_parquet,
    tokens_of,
)
from marketlake.errors import MarketlakeError, UsageError
from marketlake.ingest.pseudonym import pseudonym
from marketlake.lake import Lake
from marketlake.lake.schema import spark_schema
from marketlake.privacy import ERASURES, check_key_location, erasure_key, normal_subject, subject_hash
from marketlake.runner import Job, JobContext

BRONZE = catalog.BRONZE_EVENTS.name
MANIFEST = catalog.INGESTED_FILES.name
JOB_RUNS = catalog.JOB_RUNS.name
ERASED, NOTHING_FOUND = "erased", "nothing_found"
# Folders under the lake root that are not tables, and what the erasure does in each.
EXPORTS, REPORTS, MODELS, CHECKPOINTS, LANDING = "exports", "reports", "models", "_checkpoints", "landing"
MAX_SUBJECTS = 100_000


class ErasureFailed(MarketlakeError):
    """A failure during an erasure, worded without the subjects (a Spark message may quote the query)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--subjects", help="a file with one user id or email per line")
    given.add_argument("--user-id", help="one user id (or email) to erase; not recorded in ops.job_runs")


def validate(args: argparse.Namespace, config: Config) -> None:
    if not args.subjects and not args.user_id:
        raise UsageError("give --subjects FILE or --user-id ID")
    if args.subjects:
        path = Path(args.subjects)
        if not path.is_file():
            raise UsageError(f"--subjects {args.subjects}: no such file")
        try:
            lines = subject_lines(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--subjects {args.subjects}: cannot read it ({type(exc).__name__})") from None
        if not lines:
            raise UsageError(f"--subjects {args.subjects}: the file names no subject")
        if len(lines) > MAX_SUBJECTS:
            raise UsageError(
                f"--subjects {args.subjects}: more than {MAX_SUBJECTS:,} subjects; split the file"
            )
    elif not args.user_id.strip():
        raise UsageError("--user-id is empty")
    check_key_location(config.privacy, config.lake.root)


def subject_lines(text: str) -> list[str]:
    """The subjects of a --subjects file: one per line, blank lines and # comments skipped, each once."""
    found = [normal_subject(line) for line in text.splitlines()]
    return list(dict.fromkeys(s for s in found if s and not s.startswith("#")))


@dataclass
class Outcome:
    """What one erasure run removed: rows per table per subject, files per folder."""

    rows: dict[str, Counter[int]] = field(default_factory=dict)  # table -> subject index -> rows
    files: Counter[str] = field(default_factory=Counter)  # folder -> files rewritten or deleted
    lines: Counter[str] = field(default_factory=Counter)  # folder -> records removed from files

    @property
    def anything(self) -> bool:
        return any(self.rows.values()) or any(self.files.values())


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    texts = (
        subject_lines(Path(args.subjects).read_text(encoding="utf-8"))
        if args.subjects
        else [normal_subject(args.user_id)]
    )
    key = erasure_key(ctx.config.privacy, create=True)
    assert key is not None  # created when missing
    try:
        erase(ctx, texts, key)
    except MarketlakeError:
        raise
    except Exception as exc:  # the message may quote the subjects: keep it out of ops.job_runs and stderr
        raise ErasureFailed(f"the erasure failed ({type(exc).__name__}); run it again, it resumes") from exc


def erase(ctx: JobContext, texts: list[str], key: bytes) -> None:
    lake = ctx.lake
    with ctx.step("subjects") as step:
        subjects = resolve_subjects(ctx, texts, key)
        step.rows = len(subjects)
        step.detail = f"{sum(len(s.user_ids) for s in subjects)} user ids, {sum(len(s.tokens) for s in subjects)} spellings"
    by_token = tokens_of(subjects)
    tokens = sorted(by_token)
    token_bytes = as_bytes(tokens)
    outcome = Outcome()
    with ctx.step("plan landing files") as step:
        landing = plan_landing(lake, landing_root(ctx.config), token_bytes, tokens)
        step.rows = len(landing)
        step.detail = "files to rewrite"
    sizes = {path: len(data) for path, (data, _) in landing.items()}
    for summary in lake.tables():
        with ctx.step(f"rows: {summary.table}") as step:
            removed = scrub_table(lake, summary.table, tokens, fixes(summary.table, sizes))
            outcome.rows[summary.table] = Counter(
                {i: n for token, n in removed.items() for i in by_token.get(token, [])}
            )
            step.rows = sum(removed.values())
            step.detail = "rows removed"
    scrubs: list[tuple[str, Callable[[], tuple[int, int]]]] = [
        (EXPORTS, lambda: scrub_folder(lake, f"{lake.root}/{EXPORTS}", token_bytes, tokens)),
        (MODELS, lambda: scrub_models(lake, token_bytes, tokens)),
        (CHECKPOINTS, lambda: clear_checkpoints(lake, token_bytes)),
        (REPORTS, lambda: rerender_reports(ctx, token_bytes)),
        (LANDING, lambda: write_landing(lake, landing)),
    ]
    for folder, scrub in scrubs:
        with ctx.step(f"files: {folder}") as step:
            files, records = scrub()
            outcome.files[folder] += files
            outcome.lines[folder] += records
            step.rows = files
            step.detail = f"files rewritten or deleted ({records} records removed)"
    previous = erased_before(lake, subjects)
    if outcome.anything:
        make_physical(ctx)
    record(ctx, subjects, outcome, previous)


# ---- subjects --------------------------------------------------------------------------------------


def resolve_subjects(ctx: JobContext, texts: list[str], key: bytes) -> list[Subject]:
    """Each subject with every spelling that names it: the user ids (an email maps to them through the
    contacts file activate exports from), their emails, and their pseudonyms when the pseudonym key is set."""
    contacts = contact_rows(ctx, texts)
    pseudonym_key = os.environ.get(ctx.config.ingest.pseudonym_key_env, "").encode("utf-8") or None
    subjects = []
    for text in texts:
        if "@" in text:
            ids = sorted({uid for uid, email in contacts if email == text})
            emails = {text}
        else:
            ids = [text]
            emails = {email for uid, email in contacts if uid == text}
        pseudonyms = [pseudonym(pseudonym_key, uid) for uid in ids] if pseudonym_key else []
        stored = pseudonyms if ctx.config.ingest.pseudonymise_user_ids else ids
        seen_by_ingest = sorted(set(ids) | set(pseudonyms))
        subjects.append(
            Subject(
                text=text,
                hash=subject_hash(key, text),
                user_ids=tuple(stored),
                tokens=frozenset({*ids, *pseudonyms, *emails}),
                user_hashes=tuple(pseudonym(key, uid) for uid in seen_by_ingest),
            )
        )
    return subjects


def contact_rows(ctx: JobContext, texts: list[str]) -> list[tuple[str, str]]:
    """(user id, email in lower case) of the contacts file rows naming a subject."""
    from marketlake.jobs.activate import contacts_file, contacts_path

    path = contacts_path(ctx.config)
    if not ctx.lake.files.exists(path):
        return []
    contacts = contacts_file(ctx.spark, path)
    if "user_id" not in contacts.columns or "email" not in contacts.columns:
        return []
    ids = [t for t in texts if "@" not in t]
    emails = [t for t in texts if "@" in t]
    email = F.lower(F.trim(F.col("email").cast("string")))
    user_id = F.trim(F.col("user_id").cast("string"))
    rows = (
        contacts.select(user_id.alias("u"), email.alias("e"))
        .filter(F.col("u").isin(*ids) | F.col("e").isin(*emails))
        .distinct()
        .collect()
    )
    return [(row["u"], row["e"]) for row in rows if row["u"]]


# ---- tables ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fix:
    """Rows to rewrite although they mention nobody (`where`), with new values for some columns."""

    where: Column
    values: dict[str, Column]


def fixes(table: str, sizes: dict[str, int]) -> Fix | None:
    """Landing files rewritten without the subjects' lines have a new size: bronze (which skips a file
    version it holds) and the ingest manifest (which lists file versions) learn it, so ingest does not take
    the rewritten file for a new one."""
    if not sizes or table not in (BRONZE, MANIFEST):
        return None
    path = F.regexp_replace(F.col("source_file"), "^file:/+", "/")
    lookup = F.create_map(*[F.lit(part) for pair in sorted(sizes.items()) for part in pair])
    size_column = "source_size" if table == BRONZE else "size"
    return Fix(path.isin(*sizes), {size_column: lookup[path].cast("bigint")})


def scrub_table(lake: Lake, table: str, tokens: list[str], fix: Fix | None) -> Counter[str]:
    """Rewrite the partitions of `table` that hold rows mentioning a token, without those rows (and with
    `fix` applied), in one commit against the version read. The commit records only the partitions it
    replaced, never a predicate naming a subject. Returns the rows removed per token."""
    described = lake.engine.schema(table, lake.path(table))
    if described is None:
        return Counter()
    _, partition_by = described
    if len(partition_by) > 1:
        raise ErasureFailed(f"{table}: tables partitioned by more than one column are not supported")

    def attempt(version: int) -> Counter[str]:
        current = lake.read(table, version)
        marked = current.transform(mention(tokens))
        to_fix = fix.where if fix is not None else F.lit(False)
        summary = (
            marked.filter(F.col(TOKEN).isNotNull() | to_fix).groupBy(TOKEN, *partition_by).count().collect()
        )
        if not summary:
            return Counter()
        kept = marked.filter(F.col(TOKEN).isNull()).drop(TOKEN)
        if fix is not None:
            kept = kept.withColumns(
                {name: F.when(fix.where, value).otherwise(F.col(name)) for name, value in fix.values.items()}
            )
        if partition_by:
            column = partition_by[0]
            values = sorted({row[column] for row in summary}, key=str)
            kept = kept.filter(F.col(column).isin(*values))
            lake.write(table, kept, "overwrite", partitions={column: values}, expected_version=version)
        else:
            lake.write(table, kept, "overwrite", expected_version=version)
        removed: Counter[str] = Counter()
        for row in summary:
            if row[TOKEN] is not None:
                removed[row[TOKEN]] += row["count"]
        return removed

    return lake.retry_on_conflict(table, attempt)


# ---- files -----------------------------------------------------------------------------------------


def _read(lake: Lake, uri: str) -> bytes:
    filesystem, path = lake.files.resolve(uri)
    with filesystem.open_input_stream(path) as stream:
        data: bytes = stream.read()
        return data


def scrubbed(name: str, data: bytes, token_bytes: frozenset[bytes], tokens: list[str]) -> tuple[bytes, int]:
    """What a file becomes without the subjects (by its kind), and how many records went."""
    if name.endswith(".parquet"):
        return scrub_parquet(data, tokens)
    if not mentions_bytes(data, token_bytes):
        return data, 0
    if name.endswith(".csv"):
        return scrub_csv(data, token_bytes)
    return scrub_lines(data, token_bytes)


def _is_checksum(name: str) -> bool:
    return name.endswith(".crc")


def plan_landing(
    lake: Lake, root: str, token_bytes: frozenset[bytes], tokens: list[str]
) -> dict[str, tuple[bytes, int]]:
    """Landing files that mention a subject -> (their content without those records, records removed).
    Written only after the tables (write_landing), so a failure in between leaves the files ingest knows."""
    planned: dict[str, tuple[bytes, int]] = {}
    for entry in lake.files.list(root):
        if entry.is_dir or _is_checksum(entry.relative):
            continue
        data = _read(lake, entry.uri)
        new, removed = scrubbed(entry.relative, data, token_bytes, tokens)
        if removed:
            planned[_local(entry.uri)] = (new, removed)
    return planned


def _local(uri: str) -> str:
    return "/" + uri.removeprefix("file:").lstrip("/") if uri.startswith(("file:", "/")) else uri


def _replace_file(lake: Lake, uri: str, data: bytes) -> None:
    """Replace a file's content, keeping its modification time (ingest knows a file by path, size and
    time), and drop a Hadoop checksum beside it, which would no longer match."""
    local = uri.startswith(("/", "file:"))
    before = os.stat(_local(uri)).st_mtime_ns if local else None
    lake.files.write_bytes(uri, data)
    if before is not None:
        os.utime(_local(uri), ns=(before, before))
    folder, _, name = uri.rpartition("/")
    lake.files.delete(f"{folder}/.{name}.crc")


def write_landing(lake: Lake, planned: dict[str, tuple[bytes, int]]) -> tuple[int, int]:
    for path, (data, _) in sorted(planned.items()):
        _replace_file(lake, path, data)
    return len(planned), sum(removed for _, removed in planned.values())


def scrub_folder(
    lake: Lake, root: str, token_bytes: frozenset[bytes], tokens: list[str], drop_ids: set[int] | None = None
) -> tuple[int, int]:
    """Rewrite every file under `root` that mentions a subject (CSV records, Parquet rows, text lines)."""
    files = records = 0
    for entry in lake.files.list(root):
        if entry.is_dir or _is_checksum(entry.relative):
            continue
        data = _read(lake, entry.uri)
        ids = drop_ids if drop_ids and "userFactors" in entry.relative else None
        new, removed = (
            scrub_parquet(data, tokens, ids) if ids else scrubbed(entry.relative, data, token_bytes, tokens)
        )
        if removed:
            _replace_file(lake, entry.uri, new)
            files, records = files + 1, records + removed
    return files, records


def scrub_models(lake: Lake, token_bytes: frozenset[bytes], tokens: list[str]) -> tuple[int, int]:
    """Saved models: the subjects' rows of an ALS model's id numbering (user_ids) and the factors numbered
    by them (als/userFactors, by `id`); any other Parquet row or text line naming them. The model stays
    loadable and scores the remaining users as before."""
    import io

    import pyarrow.parquet as pq

    wanted = set(tokens)
    files = records = 0
    root = f"{lake.root}/{MODELS}"
    for name in lake.files.list(root, recursive=False):
        for version in lake.files.list(name.uri, recursive=False):
            if not version.is_dir:
                continue
            indexes: set[int] = set()
            for entry in lake.files.list(f"{version.uri}/user_ids"):
                if entry.relative.endswith(".parquet"):
                    table = pq.read_table(io.BytesIO(_read(lake, entry.uri)))
                    for uid, index in zip(
                        table.column("user_id").to_pylist(),
                        table.column("user_index").to_pylist(),
                        strict=True,
                    ):
                        if uid in wanted:
                            indexes.add(int(index))
            found = scrub_folder(lake, version.uri, token_bytes, tokens, indexes)
            files, records = files + found[0], records + found[1]
    return files, records


def clear_checkpoints(lake: Lake, token_bytes: frozenset[bytes]) -> tuple[int, int]:
    """ALS checkpoint folders: those of finished runs (their run id is in ops.job_runs; a run removes its
    own at the end, so these are left by crashes) and any other that mentions a subject are deleted."""
    root = f"{lake.root}/{CHECKPOINTS}"
    folders = [e for e in lake.files.list(root, recursive=False) if e.is_dir]
    if not folders:
        return 0, 0
    finished = set()
    if lake.exists(JOB_RUNS):
        finished = {r["run_id"] for r in lake.read(JOB_RUNS).select("run_id").distinct().collect()}
    deleted = 0
    for folder in folders:
        mentions = any(
            mentions_bytes(_read(lake, e.uri), token_bytes)
            for e in lake.files.list(folder.uri)
            if not e.is_dir
        )
        if folder.relative in finished or mentions:
            lake.files.delete(folder.uri)
            deleted += 1
    return deleted, 0


def rerender_reports(ctx: JobContext, token_bytes: frozenset[bytes]) -> tuple[int, int]:
    """A report that names a subject is rendered again for its date from the (already erased) gold tables."""
    from marketlake.jobs.report import run as render_report

    lake = ctx.lake
    rendered = 0
    for entry in lake.files.list(f"{lake.root}/{REPORTS}"):
        if entry.is_dir or not entry.relative.endswith(".html"):
            continue
        if not mentions_bytes(_read(lake, entry.uri), token_bytes):
            continue
        run_date = dt.date.fromisoformat(entry.relative.split("/")[0])
        report_ctx = JobContext("report", ctx.spark, ctx.config, lake, run_date, ctx.run_id)
        render_report(report_ctx, argparse.Namespace(run_date=run_date))
        rendered += 1
    return rendered, 0


# ---- making it physical, and the record ------------------------------------------------------------


def make_physical(ctx: JobContext) -> None:
    """Every table: files a commit removed are deleted (vacuum of the log's tombstones at 0 hours), files no
    commit names are deleted once older than `privacy.orphan_hours` (a write that died; a younger one may be
    a concurrent writer's before its commit, which must not lose its files), the log is checkpointed and cut
    to the current version (expire_log at 0 hours: the commits that held the removed files' statistics go),
    then the configured log retention is set back. Time travel to versions before the erasure ends."""
    lake = ctx.lake
    retention = ctx.config.retention.log_retention_hours
    orphans = ctx.config.privacy.orphan_hours
    for summary in lake.tables():
        with ctx.step(f"physical: {summary.table}") as step:
            deleted = lake.vacuum(summary.table, 0, removed_only=True)
            deleted += lake.vacuum(summary.table, orphans)
            expired = lake.expire_log(summary.table, 0)
            lake.expire_log(summary.table, retention)
            step.rows = len(deleted)
            step.detail = f"files deleted, {expired} log files deleted, log retention back to {retention} h"


def erased_before(lake: Lake, subjects: list[Subject]) -> set[str]:
    """The subject hashes ops.erasures already holds."""
    if not lake.exists(ERASURES):
        return set()
    hashes = [s.hash for s in subjects]
    rows = lake.read(ERASURES).filter(F.col("subject_hash").isin(*hashes)).select("subject_hash").distinct()
    return {row["subject_hash"] for row in rows.collect()}


def record(ctx: JobContext, subjects: list[Subject], outcome: Outcome, previous: set[str]) -> None:
    """One ops.erasures row per subject that was not erased before or had something removed now."""
    now = dt.datetime.now(dt.timezone.utc)
    files = {folder: n for folder, n in outcome.files.items() if n}
    rows = []
    for index, subject in enumerate(subjects):
        removed = {table: counts[index] for table, counts in outcome.rows.items() if counts.get(index)}
        found = bool(removed) or bool(files)
        if subject.hash in previous and not found:
            continue
        rows.append(
            (
                subject.hash,
                now,
                ctx.run_id,
                ERASED if found else NOTHING_FOUND,
                sorted(removed),
                removed,
                files,
                list(subject.user_hashes),
            )
        )
    already = sum(1 for s in subjects if s.hash in previous)
    ctx.counts.update(
        subjects=len(subjects),
        subjects_already_erased=already,
        rows_removed=sum(sum(c.values()) for c in outcome.rows.values()),
        tables_touched=sum(1 for c in outcome.rows.values() if c),
        files_changed=sum(outcome.files.values()),
        erasures_recorded=len(rows),
    )
    if not outcome.anything:
        ctx.note(
            f"nothing found: {already} of {len(subjects)} subject(s) erased before, nothing changed in any table or file"
        )
    if rows:
        frame = ctx.spark.createDataFrame(rows, spark_schema(catalog.ERASURES))
        ctx.lake.write(ERASURES, frame, mode="append")


JOB = Job(
    name="erase",
    help=__doc__.strip(),
    run=run,
    add_arguments=add_arguments,
    validate=validate,
    private_arguments=("user_id",),
)

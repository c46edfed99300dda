"""Erasure: the pure parts of the erase job (docs/jobs/erase.md).

A subject (a user id or an email) becomes a set of tokens: the user ids it maps to, their pseudonyms (when
a pseudonym key is at hand) and their emails. A row mentions the subject when a token is one of its values
(text columns), an element of an array, or a word of its raw text (`TEXT_COLUMNS`, binary and nested
columns, split into words by `WORD_SEPARATORS`). Files get the same test on their lines (text), CSV
records (RFC 4180) or Parquet rows.

Nothing here writes: `mention` marks rows, `scrub_lines` / `scrub_csv` / `scrub_parquet` return what a file
becomes. The job (`marketlake.jobs.erase`) decides and commits.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

# Characters that never occur inside an id or an email: raw JSON, CSV and log text splits into words there.
WORD_SEPARATORS = r"[^A-Za-z0-9_.@+\-]+"
_WORDS = re.compile(WORD_SEPARATORS.encode("ascii"))
# Text columns that hold whole records or free text rather than one value (bronze and quarantine raw lines,
# a profile's JSON payload, a run's message and arguments): matched word by word.
TEXT_COLUMNS = frozenset({"raw", "PAYLOAD", "message", "arguments"})
TOKEN = "_erase_token"


@dataclass(frozen=True)
class Subject:
    """One erasure request. `text` is never logged or stored: `hash` stands for it."""

    text: str
    hash: str
    user_ids: tuple[str, ...]  # as stored in silver and gold (pseudonyms when ingest pseudonymises)
    tokens: frozenset[str]  # every spelling that names the subject: raw ids, pseudonyms, emails
    user_hashes: tuple[str, ...]  # keyed hashes of the ids ingest will see again (the suppression list)


def match_form(token: str) -> str:
    """How a token is compared: emails in lower case (one person however spelled), ids exactly."""
    return token.lower() if "@" in token else token


def tokens_of(subjects: Iterable[Subject]) -> dict[str, list[int]]:
    """Every token (match form) -> the indexes of the subjects it names."""
    found: dict[str, list[int]] = {}
    for index, subject in enumerate(subjects):
        for token in subject.tokens:
            found.setdefault(match_form(token), []).append(index)
    return found


# ---- tables ----------------------------------------------------------------------------------------


def _words(text: Column) -> Column:
    words = F.split(text, WORD_SEPARATORS)
    return F.transform(words, lambda w: F.when(F.instr(w, "@") > 0, F.lower(w)).otherwise(w))


def _first(found: Column) -> Column:
    return F.try_element_at(found, F.lit(1))


def first_token(schema: T.StructType, tokens: list[str]) -> Column:
    """The first token of `tokens` (match form) that a row mentions, null when none: exact values of text
    columns, elements of text arrays, words of raw text, binary and nested values."""
    wanted = sorted(tokens)

    def named(values: Column) -> Column:
        # A filter with IN (a hash set built once per task), not array_intersect (a set per row).
        return _first(F.filter(values, lambda word: word.isin(*wanted)))

    found: list[Column] = []
    for field in schema.fields:
        column, kind = F.col(f"`{field.name}`"), field.dataType
        if isinstance(kind, T.StringType) and field.name not in TEXT_COLUMNS:
            value = F.when(F.instr(column, "@") > 0, F.lower(column)).otherwise(column)
            found.append(F.when(value.isin(*tokens), value))
        elif isinstance(kind, T.StringType):
            found.append(named(_words(column)))
        elif isinstance(kind, T.BinaryType):
            found.append(named(_words(column.cast("string"))))
        elif isinstance(kind, T.ArrayType) and isinstance(kind.elementType, T.StringType):
            found.append(named(column))
        elif isinstance(kind, (T.ArrayType, T.MapType, T.StructType)):
            found.append(named(_words(F.to_json(column))))
    return F.coalesce(*found) if found else F.lit(None).cast("string")


def mention(tokens: list[str]) -> Callable[[DataFrame], DataFrame]:
    """DataFrame -> the same rows with TOKEN: the first token each mentions (null: none)."""

    def transform(frame: DataFrame) -> DataFrame:
        return frame.withColumn(TOKEN, first_token(frame.schema, tokens))

    return transform


def without_subjects(tokens: list[str]) -> Callable[[DataFrame], DataFrame]:
    """DataFrame -> its rows that mention none of the tokens (the other rows, unchanged)."""

    def transform(frame: DataFrame) -> DataFrame:
        return frame.transform(mention(tokens)).filter(F.col(TOKEN).isNull()).drop(TOKEN)

    return transform


# ---- files -----------------------------------------------------------------------------------------


def mentions_bytes(data: bytes, tokens: frozenset[bytes]) -> bool:
    """Does `data` hold one of `tokens` (match form, UTF-8) as a word?"""
    for word in _WORDS.split(data):
        if word and (word in tokens or (b"@" in word and word.lower() in tokens)):
            return True
    return False


def as_bytes(tokens: Iterable[str]) -> frozenset[bytes]:
    return frozenset(match_form(t).encode("utf-8") for t in tokens)


def scrub_lines(data: bytes, tokens: frozenset[bytes]) -> tuple[bytes, int]:
    """Text with one record per line -> without the lines that mention a token; and how many went."""
    kept: list[bytes] = []
    removed = 0
    for line in data.splitlines(keepends=True):
        if mentions_bytes(line, tokens):
            removed += 1
        else:
            kept.append(line)
    return b"".join(kept), removed


def csv_records(data: bytes) -> Iterator[bytes]:
    """RFC 4180 records with their line ends, as bytes (a quoted cell may hold line breaks)."""
    record: list[bytes] = []
    quotes = 0
    for line in data.splitlines(keepends=True):
        record.append(line)
        quotes += line.count(b'"')
        if quotes % 2 == 0:
            yield b"".join(record)
            record, quotes = [], 0
    if record:
        yield b"".join(record)


def scrub_csv(data: bytes, tokens: frozenset[bytes]) -> tuple[bytes, int]:
    """CSV with a header -> without the records that mention a token (others byte for byte); how many went."""
    records = csv_records(data)
    kept = [next(records, b"")]
    removed = 0
    for record in records:
        if mentions_bytes(record, tokens):
            removed += 1
        else:
            kept.append(record)
    return b"".join(kept), removed


def _text_mask(column: pa.ChunkedArray | pa.Array, tokens: list[str]) -> pa.Array | None:
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        lowered = pc.if_else(pc.match_substring(column, "@"), pc.utf8_lower(column), column)
        return pc.fill_null(pc.is_in(lowered, pa.array(tokens)), False)
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_string(kind.value_type):
        flat = pc.list_flatten(column)
        parents = pc.list_parent_indices(column)
        hit = pc.fill_null(pc.is_in(flat, pa.array(tokens)), False)
        rows = set(pc.filter(parents, hit).to_pylist())
        return pa.array([i in rows for i in range(len(column))], type=pa.bool_())
    return None


def scrub_parquet(data: bytes, tokens: list[str], drop_ids: set[int] | None = None) -> tuple[bytes, int]:
    """A Parquet file -> without the rows that mention a token in a text or text-array column (and, with
    `drop_ids`, the rows whose `id` is one of them: ALS factors numbered by a removed user); how many went.
    The schema, its metadata included, stays."""
    table = pq.read_table(io.BytesIO(data))
    remove = pa.array([False] * table.num_rows, type=pa.bool_())
    for name in table.column_names:
        mask = _text_mask(table.column(name), tokens)
        if mask is not None:
            remove = pc.or_(remove, mask)
    if drop_ids and "id" in table.column_names:
        remove = pc.or_(remove, pc.fill_null(pc.is_in(table.column("id"), pa.array(sorted(drop_ids))), False))
    removed = pc.sum(pc.cast(remove, pa.int64())).as_py() or 0
    if not removed:
        return data, 0
    out = io.BytesIO()
    pq.write_table(table.filter(pc.invert(remove)), out)
    return out.getvalue(), removed

"""Finding input files and reading them as records: the input edge of ingestion.

A record is one line of newline-delimited JSON or of text (split into fields by the mapping's pattern),
or one row of CSV or Parquet. Every record keeps its text as received (`_raw`: the line; for CSV and
Parquet rows the row as a JSON object), its file, and its arrival order (file path, then position in the
file), which decides which of two records with one key came first.

Bytes are data, and text is UTF-8 for every reader of the lake: `_raw` and the source fields are valid
UTF-8 (invalid sequences replaced by U+FFFD, as Spark's make_valid_utf8 does), and a record whose bytes
were not valid UTF-8 keeps them in `_raw_bytes` (null otherwise). Spark's text reader hands lines over
as bytes unchecked; its CSV reader would decode them itself, replacing invalid bytes so that nobody can
tell, so UTF-8 CSV is read as ISO-8859-1 (one character per byte) and decoded here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake.errors import ConfigError, UsageError
from marketlake.lake.jvm import hadoop_files
from marketlake.mapping import CANONICAL, CsvOptions, SourceMapping, TextOptions

# Names Spark and Hadoop skip, and we too: _SUCCESS, .crc files, _staging folders, hidden files.
HIDDEN = re.compile(r"^[._]")
CORRUPT = "_corrupt_record"
IDENTIFIER = re.compile(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*)")
# Characters Spark's readers take for a glob pattern in a path; a backslash makes them literal.
GLOB_CHARACTERS = re.compile(r"([\\{}\[\]*?])")
# The charset that maps each byte to one character and back, so decoding it loses nothing.
BYTES_AS_TEXT = "ISO-8859-1"


@dataclass(frozen=True)
class SourceFile:
    uri: str  # as every lineage column spells it (see file_uri)
    size: int
    modified_ms: int
    location: str  # as the readers are given it: a Hadoop path, glob characters escaped


def file_uri(uri: str) -> str:
    """One spelling of a file's URI: Spark's `_metadata.file_path` (`file:/data/x.json`, percent-encoded),
    where Hadoop's listing says `file:///data/x.json`."""
    return "file:/" + uri[len("file:///") :] if uri.startswith("file:///") else uri


def file_uri_column(uri: Column) -> Column:
    """`file_uri` of a column of URIs."""
    return F.regexp_replace(uri, "^file:///", "file:/")


def is_local(path: str) -> bool:
    return "://" not in path and not path.startswith("file:")


def check_local_source(source: str) -> None:
    """Before Spark starts: a local source must exist, hold files, not all empty, all readable."""
    if not is_local(source):
        return
    if not os.path.exists(source):
        raise UsageError(f"source not found: {source}")
    files = (
        [source]
        if os.path.isfile(source)
        else [
            os.path.join(folder, name)
            for folder, dirs, names in os.walk(source)
            for name in names
            if not HIDDEN.match(name)
            and not any(
                HIDDEN.match(part) for part in os.path.relpath(folder, source).split(os.sep) if part != "."
            )
        ]
    )
    if not files:
        raise UsageError(f"no input files under {source}")
    unreadable = [path for path in files if not os.access(path, os.R_OK)]
    if unreadable:
        raise UsageError(
            f"cannot read {unreadable[0]}: permission denied ({len(unreadable)} unreadable file(s))"
        )
    if all(os.path.getsize(path) == 0 for path in files):
        raise UsageError(f"input is empty: {len(files)} file(s) under {source}, all of 0 bytes")


def list_source_files(spark: SparkSession, source: str) -> list[SourceFile]:
    """The files under `source` (a file, or a folder searched recursively), with Hadoop's view of their
    size and modification time, sorted by path. Hidden names (_x, .x) are skipped, as Spark does."""
    listed = hadoop_files(spark, source, lambda part: bool(HIDDEN.match(part)))
    if listed is None:
        raise UsageError(f"source not found: {source}")
    found = [
        SourceFile(file_uri(f.uri), f.size, f.modified_ms, GLOB_CHARACTERS.sub(r"\\\1", f.path))
        for f in listed
    ]
    if not found:
        raise UsageError(f"no input files under {source}")
    if all(f.size == 0 for f in found):
        raise UsageError(f"input is empty: {len(found)} file(s) under {source}, all of 0 bytes")
    return sorted(found, key=lambda f: f.uri)


def referenced_columns(mapping: SourceMapping) -> tuple[list[str], list[str]]:
    """(source columns the mapping names directly, identifiers in its expressions). The first must exist
    in the source; the second may (they could be function names)."""
    direct: list[str] = []
    loose: list[str] = []
    for canonical in CANONICAL[mapping.entity]:
        given = mapping.source_of(canonical)
        if given is None:
            loose.append(canonical)
        elif given.column is not None:
            direct.append(given.column)
        elif given.expr is not None:
            loose += _identifiers(given.expr)
    if mapping.entity == "events":
        (loose if mapping.source_of("ts") else direct).append(mapping.timestamp.column)
        direct += mapping.event_id or []
    for rule in mapping.exclude:
        loose += _identifiers(rule.when)
    return list(dict.fromkeys(direct)), [c for c in dict.fromkeys(loose) if c not in direct]


def _identifiers(expression: str) -> list[str]:
    without_strings = re.sub(r"'(?:[^'\\]|\\.)*'", "''", expression)
    return [quoted or bare for quoted, bare in IDENTIFIER.findall(without_strings)]


def read_records(
    spark: SparkSession, files: list[SourceFile], mapping: SourceMapping, fmt: str, pii_columns: list[str]
) -> tuple[DataFrame, list[str]]:
    """One row per record of `files`: the META columns of marketlake.ingest.transform and the source
    fields as text columns; returns it with the names of the source columns. The raw text of a CSV or
    Parquet row leaves out the columns named in `pii_columns` (any case)."""
    paths = [f.location for f in files]
    direct, loose = referenced_columns(mapping)
    if fmt == "text":
        if mapping.text is None:
            raise ConfigError(f"mapping {mapping.name}: format text needs text: {{pattern: ...}}")
        return _read_text(spark, paths, mapping.name, mapping.text, direct)
    if fmt == "json":
        fields = list(dict.fromkeys(direct + loose))
        schema = T.StructType(
            [T.StructField(name, T.StringType()) for name in fields]
            + [T.StructField(CORRUPT, T.StringType())]
        )
        lines = _with_arrival(spark.read.text(paths)).withColumn("_line", F.make_valid_utf8("value"))
        parsed = lines.withColumn(
            "_fields",
            F.from_json("_line", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}),
        )
        malformed = F.col("_fields").isNull() | F.col(f"_fields.{CORRUPT}").isNotNull()
        records = parsed.select(
            F.col("_line").alias("_raw"),
            _bytes_if_invalid(F.col("value").cast("binary"), ~F.is_valid_utf8("value")),
            *_meta_columns(),
            malformed.alias("_malformed"),
            _blank(F.col("_line")),
            *[F.col("_fields").getField(name).alias(name) for name in fields],
        )
        return records, fields
    if fmt == "csv":
        frame, names, field_bytes = _read_csv(spark, paths, mapping.csv)
    elif fmt == "parquet":
        frame = spark.read.parquet(*paths)
        names = frame.columns
        field_bytes = {name: _parquet_bytes(frame.schema[name]) for name in names}
        frame = frame.withColumn(CORRUPT, F.lit(None).cast("string"))
        field_bytes[CORRUPT] = F.col(CORRUPT).cast("binary")
    else:
        raise UsageError(f"unknown format {fmt!r}; formats: json, csv, parquet, text")
    _check_columns(mapping.name, direct, names)
    frame = _with_arrival(frame).select(
        *_meta_columns(), *[field_bytes[name].alias(name) for name in [*names, CORRUPT]]
    )  # every field as the bytes the file holds, for now
    private = {name.lower() for name in pii_columns}
    # The row as a JSON object of its fields' bytes: JSON built over one character per byte, then encoded
    # back, leaves each value's bytes as they were.
    as_json = F.encode(
        F.to_json(
            F.struct(
                *[
                    F.decode(F.col(f"`{n}`"), BYTES_AS_TEXT).alias(n.encode("utf-8").decode(BYTES_AS_TEXT))
                    for n in names
                    if n.lower() not in private
                ]
            )
        ),
        BYTES_AS_TEXT,
    )
    raw = F.coalesce(F.col(CORRUPT), as_json)
    invalid = F.greatest(
        *[
            F.coalesce(~F.is_valid_utf8(F.col(f"`{n}`").cast("string")), F.lit(False))
            for n in [*names, CORRUPT]
        ]
    )
    records = frame.select(
        F.make_valid_utf8(raw.cast("string")).alias("_raw"),
        _bytes_if_invalid(raw, invalid),
        *_meta_columns(),
        F.col(CORRUPT).isNotNull().alias("_malformed"),
        F.lit(False).alias("_blank"),  # the CSV reader skips empty lines; a Parquet row is never blank
        *[F.make_valid_utf8(F.col(f"`{n}`").cast("string")).alias(n) for n in names],
    )
    return records, list(names)


def _check_columns(mapping: str, direct: list[str], names: list[str]) -> None:
    missing = [name for name in direct if name not in names]
    if missing:
        raise ConfigError(
            f"mapping {mapping}: column {missing[0]!r} is not in the source (columns: {', '.join(names)})"
        )


def _read_text(
    spark: SparkSession, paths: list[str], mapping: str, options: TextOptions, direct: list[str]
) -> tuple[DataFrame, list[str]]:
    """Lines of text, split into fields by the named groups of a pattern that must match the whole line
    (a line it does not match is malformed); the first `header_lines` of every file are no records."""
    names, pattern = options.columns, options.java_pattern()
    _check_columns(mapping, direct, names)
    _check_pattern(spark, mapping, options)
    lines = _with_arrival(spark.read.text(paths))
    if options.header_lines:
        lines = _without_first_lines(lines, options.header_lines)
    lines = lines.withColumn("_line", F.make_valid_utf8("value"))
    matches = F.col("_line").rlike(pattern)
    records = lines.select(
        F.col("_line").alias("_raw"),
        _bytes_if_invalid(F.col("value").cast("binary"), ~F.is_valid_utf8("value")),
        *_meta_columns(),
        (~matches).alias("_malformed"),
        _blank(F.col("_line")),
        # Each field is the line with the whole match replaced by the field's group (`${g1}`, ...).
        *[
            F.when(matches, F.regexp_replace("_line", pattern, f"${{g{number}}}")).alias(name)
            for number, name in enumerate(names, start=1)
        ],
    )
    return records, names


def _check_pattern(spark: SparkSession, mapping: str, options: TextOptions) -> None:
    """ConfigError, in one line, when Java does not take the pattern (tried on an empty string)."""
    try:
        spark.range(1).select(F.regexp_replace(F.lit(""), options.java_pattern(), "")).collect()
    except PySparkException:  # Spark's message names the pattern, not Java's reason
        raise ConfigError(
            f"mapping {mapping}: text.pattern is not a valid Java regular expression: {options.pattern!r}"
        ) from None


def _without_first_lines(lines: DataFrame, count: int) -> DataFrame:
    """`lines` (with arrival columns) less the first `count` lines of every file: the rows of the file's
    first split (block 0) whose arrival row is below the split's first plus `count`. A task numbers its
    rows one by one, so one split's rows carry consecutive arrival rows, whatever files share its task."""
    firsts = (
        lines.filter(F.col("_arrival_block") == 0)
        .groupBy("_source_file")
        .agg(F.min("_arrival_row").alias("_first_row"))
    )
    header = (F.col("_arrival_block") == 0) & (F.col("_arrival_row") < F.col("_first_row") + count)
    return (
        lines.join(F.broadcast(firsts), "_source_file", "left")
        .filter(~F.coalesce(header, F.lit(False)))
        .drop("_first_row")
    )


def _read_csv(
    spark: SparkSession, paths: list[str], options: CsvOptions
) -> tuple[DataFrame, list[str], dict[str, Column]]:
    """The CSV rows with every field (and the malformed line, CORRUPT) as text, their column names, and
    each field's bytes as a column."""
    delimiter, quote, charset = options.delimiter, options.quote, options.encoding
    # UTF-8 is decoded here rather than by the reader (see the module's docstring). Splitting the bytes as
    # ISO-8859-1 text splits them where UTF-8 text would: the delimiter and quote, spelled as ISO-8859-1,
    # are their own bytes, and no byte of a multi-byte UTF-8 character is an ASCII one.
    as_bytes = charset.replace("-", "").replace("_", "").lower() == "utf8" and quote.isascii()
    if as_bytes:
        delimiter, charset = delimiter.encode("utf-8").decode(BYTES_AS_TEXT), BYTES_AS_TEXT
    reader = spark.read.options(sep=delimiter, quote=quote, encoding=charset, escape=quote)
    names = options.names or _csv_header(reader, paths[0], as_bytes)
    schema = T.StructType(
        [T.StructField(name, T.StringType()) for name in names] + [T.StructField(CORRUPT, T.StringType())]
    )
    frame = (
        reader.options(header=options.header, mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT)
        .schema(schema)
        .csv(paths)
    )
    field_bytes = {
        name: F.encode(F.col(f"`{name}`"), BYTES_AS_TEXT) if as_bytes else F.col(f"`{name}`").cast("binary")
        for name in [*names, CORRUPT]
    }
    return frame, names, field_bytes


def _csv_header(reader: Any, path: str, as_bytes: bool) -> list[str]:
    first = reader.option("header", True).csv(path).columns
    if as_bytes:
        first = [name.encode(BYTES_AS_TEXT).decode("utf-8", errors="replace") for name in first]
    return [name.strip() for name in first]


def _parquet_bytes(field: T.StructField) -> Column:
    """A Parquet column as the bytes of its text: strings as stored (which no reader had to check),
    binary values in base64 (bytes, not text), other types as Spark spells them."""
    column = F.col(f"`{field.name}`")
    if isinstance(field.dataType, T.BinaryType):
        return F.base64(column).cast("binary")
    return column.cast("string").cast("binary")


def _bytes_if_invalid(raw_bytes: Column, invalid: Column) -> Column:
    """The record's bytes when they are not valid UTF-8 (its `_raw` then lost some), else null."""
    return F.when(invalid, raw_bytes).alias("_raw_bytes")


def _with_arrival(frame: DataFrame) -> DataFrame:
    """Adds the file and position of each record, taken at the scan (before any shuffle): within a
    file split rows keep their order, and monotonically_increasing_id grows along a task's rows."""
    return frame.select(
        "*",
        file_uri_column(F.col("_metadata.file_path")).alias("_source_file"),
        F.col("_metadata.file_size").alias("_source_size"),
        F.col("_metadata.file_block_start").alias("_arrival_block"),
        F.monotonically_increasing_id().alias("_arrival_row"),
    )


def _blank(line: Column) -> Column:
    """An empty line of a JSON or text file: not a record."""
    return (F.trim(line) == "").alias("_blank")


def _meta_columns() -> list[Column]:
    return [F.col("_source_file"), F.col("_source_size"), F.col("_arrival_block"), F.col("_arrival_row")]

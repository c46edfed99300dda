"""Schema enforcement shared by both engines: the table's schema wins, mismatches name the column."""

from __future__ import annotations

from typing import overload

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake import catalog
from marketlake.errors import TableError

PARTITION_TYPES = (
    T.StringType,
    T.DateType,
    T.ByteType,
    T.ShortType,
    T.IntegerType,
    T.LongType,
    T.BooleanType,
)


@overload
def as_nullable(data_type: T.StructType) -> T.StructType: ...


@overload
def as_nullable(data_type: T.DataType) -> T.DataType: ...


def as_nullable(data_type: T.DataType) -> T.DataType:
    """Delta tables created by marketlake declare every column nullable, as delta-spark does."""
    if isinstance(data_type, T.StructType):
        return T.StructType(
            [T.StructField(f.name, as_nullable(f.dataType), True, f.metadata) for f in data_type]
        )
    if isinstance(data_type, T.ArrayType):
        return T.ArrayType(as_nullable(data_type.elementType), True)
    if isinstance(data_type, T.MapType):
        return T.MapType(data_type.keyType, as_nullable(data_type.valueType), True)
    return data_type


def type_name(data_type: T.DataType) -> str:
    return data_type.simpleString()


def check_partition_columns(table: str, schema: T.StructType, partition_by: list[str]) -> None:
    fields = {field.name: field for field in schema.fields}
    for column in partition_by:
        if column not in fields:
            raise TableError(f"{table}: partition column '{column}' is not in the data")
        if not isinstance(fields[column].dataType, PARTITION_TYPES):
            raise TableError(
                f"{table}: partition column '{column}' has type {type_name(fields[column].dataType)}; "
                "use a string, date, integer or boolean column"
            )
    if len(partition_by) == len(schema.fields):
        raise TableError(f"{table}: a table needs at least one column that is not a partition column")


def align_to_table(
    table: str, df: DataFrame, table_schema: T.StructType, merge_schema: bool
) -> tuple[DataFrame, T.StructType]:
    """Return `df` in the table's column order and types, and the (possibly widened) table schema.

    A column of another type is an error; a column the table lacks is an error unless `merge_schema`,
    which adds it as nullable; a table column the data lacks is filled with nulls.
    """
    table_fields = {field.name.lower(): field for field in table_schema.fields}
    data_fields = {field.name.lower(): field for field in df.schema.fields}
    for key, field in data_fields.items():
        known = table_fields.get(key)
        if known is None:
            if not merge_schema:
                raise TableError(
                    f"{table}: column '{field.name}' is not in the table's schema "
                    "(write with merge_schema=True to add it)"
                )
        elif type_name(known.dataType) != type_name(field.dataType):
            raise TableError(
                f"{table}: column '{field.name}' has type {type_name(field.dataType)} "
                f"but the table has {type_name(known.dataType)}"
            )
    added = [T.StructField(f.name, f.dataType, True) for k, f in data_fields.items() if k not in table_fields]
    merged = T.StructType([*table_schema.fields, *added])
    columns = [
        F.col(data_fields[f.name.lower()].name).alias(f.name)
        if f.name.lower() in data_fields
        else F.lit(None).cast(f.dataType).alias(f.name)
        for f in merged.fields
    ]
    return df.select(*columns), merged


SIMPLE_TYPES: dict[str, T.DataType] = {
    "string": T.StringType(),
    "binary": T.BinaryType(),
    "boolean": T.BooleanType(),
    "int": T.IntegerType(),
    "bigint": T.LongType(),
    "double": T.DoubleType(),
    "date": T.DateType(),
    "timestamp": T.TimestampType(),
}


def parse_type(text: str) -> T.DataType:
    """A catalog column type (Spark SQL: string, bigint, array<string>, map<string,bigint>, ...) as a
    DataType, without a Spark session (the catalog's types only)."""
    text = text.strip()
    if text in SIMPLE_TYPES:
        return SIMPLE_TYPES[text]
    if text.startswith("array<") and text.endswith(">"):
        return T.ArrayType(parse_type(text[len("array<") : -1]))
    if text.startswith("map<") and text.endswith(">"):
        key, value = _split_top_level(text[len("map<") : -1])
        return T.MapType(parse_type(key), parse_type(value))
    raise ValueError(f"catalog column type {text!r} is not one marketlake parses")


def _split_top_level(text: str) -> tuple[str, str]:
    depth = 0
    for position, char in enumerate(text):
        depth += {"<": 1, ">": -1}.get(char, 0)
        if char == "," and depth == 0:
            return text[:position], text[position + 1 :]
    raise ValueError(f"not a key,value pair of types: {text!r}")


def spark_schema(table: catalog.Table) -> T.StructType:
    """The catalog's columns of `table` as a Spark schema (all nullable, as Delta stores them)."""
    return T.StructType([T.StructField(name, parse_type(kind)) for name, kind in table.columns])

"""Schema enforcement shared by both engines: the table's schema wins, mismatches name the column."""

from __future__ import annotations

from typing import overload

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake.errors import TableError

PARTITION_TYPES = (T.StringType, T.DateType, T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.BooleanType)


@overload
def as_nullable(data_type: T.StructType) -> T.StructType: ...


@overload
def as_nullable(data_type: T.DataType) -> T.DataType: ...


def as_nullable(data_type: T.DataType) -> T.DataType:
    """Delta tables created by marketlake declare every column nullable, as delta-spark does."""
    if isinstance(data_type, T.StructType):
        return T.StructType([T.StructField(f.name, as_nullable(f.dataType), True, f.metadata) for f in data_type])
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

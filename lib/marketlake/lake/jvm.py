"""The one module that reaches into Spark's JVM through py4j: whether a class loads (the delta-spark
probe), the DeltaLog of delta-spark (checkpoints, transactions), and listing input files through Hadoop's FileSystem, which sees every store Spark reads (s3a,
hdfs, abfs, gs, file) the way Spark itself will. Classic sessions only (Spark Connect has no JVM)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession


@dataclass(frozen=True)
class HadoopFile:
    uri: str  # the qualified URI, as Hadoop spells it (file:/..., s3a://...)
    path: str  # Hadoop's Path text, as Spark's readers take it
    size: int
    modified_ms: int


def _jvm(spark: SparkSession) -> Any:
    jvm = spark.sparkContext._jvm
    if jvm is None:
        raise RuntimeError("this Spark session has no JVM gateway (Spark Connect?)")
    return jvm


def delta_log(spark: SparkSession, uri: str) -> Any:
    """delta-spark's DeltaLog of the table at `uri` (the jars must be on the classpath)."""
    return _jvm(spark).org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, uri)


def class_loads(spark: SparkSession, name: str) -> bool:
    """Whether the JVM class `name` is on the session's classpath."""
    try:
        _jvm(spark).java.lang.Class.forName(name)
    except Exception:  # py4j wraps ClassNotFoundException; no JVM at all is a no too
        return False
    return True


def hadoop_files(spark: SparkSession, source: str, hidden: Callable[[str], bool]) -> list[HadoopFile] | None:
    """The files under `source` (a file, or a folder searched recursively), skipping those with a path
    part for which `hidden(part)` holds; None when `source` does not exist."""
    jvm = _jvm(spark)
    hadoop_path = jvm.org.apache.hadoop.fs.Path(source)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(hadoop_path):
        return None
    root = fs.getFileStatus(hadoop_path)
    statuses = []
    if root.isFile():
        statuses.append(root)
    else:
        iterator = fs.listFiles(hadoop_path, True)
        base = len(fs.makeQualified(hadoop_path).toUri().getPath().rstrip("/"))
        while iterator.hasNext():
            status = iterator.next()
            relative = status.getPath().toUri().getPath()[base:]
            if not any(hidden(part) for part in relative.split("/") if part):
                statuses.append(status)
    found = []
    for status in statuses:
        path = fs.makeQualified(status.getPath())
        found.append(
            HadoopFile(
                path.toUri().toString(), path.toString(), status.getLen(), status.getModificationTime()
            )
        )
    return found

"""The Spark session factory: defaults sized for a small machine, never overriding spark-submit (except
the few settings the lake's files depend on, `SESSION_SETTINGS`)."""

from __future__ import annotations

import logging
import os
import sys

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from marketlake.config import Config
from marketlake.lake.engine import SESSION_SETTINGS

log = logging.getLogger("marketlake.spark")
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def session_defaults(config: Config, submitted: dict[str, str] | None = None) -> dict[str, str]:
    """Settings marketlake wants, each applied only where nobody (spark-submit, a caller) set it."""
    submitted = submitted or {}
    spark = config.spark
    defaults = {
        "spark.master": spark.master,
        "spark.app.name": spark.app_name,
        "spark.driver.memory": spark.driver_memory,
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.ui.enabled": str(spark.ui).lower(),
        "spark.ui.showConsoleProgress": str(sys.stderr.isatty()).lower(),
        "spark.sql.session.timeZone": "UTC",
        **SESSION_SETTINGS,  # see apply_lake_settings
        "spark.sql.sources.partitionOverwriteMode": "static",
        # Jobs cache what they read several times (ingest's validated records); building an uncompressed
        # cache measured 1.3-2x faster at 10^6 events for ~7% more memory, and later scans cost the same.
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
        # marketlake writes no _SUCCESS markers into table directories.
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    }
    if config.lake.engine == "delta-spark" or _delta_jars_requested(submitted):
        defaults["spark.sql.extensions"] = DELTA_EXTENSION
        defaults["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    defaults.update(spark.conf)
    return defaults


def submitted_settings() -> dict[str, str]:
    """What spark-submit already set. Under spark-submit the JVM is up (PYSPARK_GATEWAY_PORT) and
    SparkConf reads its settings; under plain `python` nothing is set yet, and asking would start the
    JVM before spark.driver.memory could be applied."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return {}
    SparkContext._ensure_initialized()  # connects to spark-submit's JVM; SparkConf then reads its settings
    return dict(SparkConf().getAll())


def _delta_jars_requested(submitted: dict[str, str]) -> bool:
    """True when spark-submit (or PYSPARK_SUBMIT_ARGS) brings the delta-spark jars."""
    wanted = " ".join(submitted.get(key, "") for key in ("spark.jars.packages", "spark.jars"))
    wanted += " " + os.environ.get("PYSPARK_SUBMIT_ARGS", "")
    return "delta-spark" in wanted or "delta-core" in wanted


def build_session(config: Config) -> SparkSession:
    """Get or create the session; what is already set (spark-submit, an existing session) wins, except
    SESSION_SETTINGS, which the lake needs."""
    active = SparkSession.getActiveSession()
    if active is not None:
        active.sparkContext.setLogLevel(config.spark.log_level)
        apply_lake_settings(active)
        return active
    submitted = submitted_settings()
    if submitted.get("spark.master", config.spark.master).startswith("local"):
        # Local Python workers run the driver's interpreter (the venv with marketlake), not python3 on PATH;
        # PySpark reads this variable when the context starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in session_defaults(config, submitted).items():
        if key not in submitted:
            builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(config.spark.log_level)
    apply_lake_settings(session)
    return session


def apply_lake_settings(session: SparkSession) -> None:
    """SESSION_SETTINGS on the session, whoever built it: the lake's writes check them and never set
    them, so they are set here, once."""
    for key, value in SESSION_SETTINGS.items():
        current = session.conf.get(key, None)
        if current != value:
            log.info("spark: %s was %s; set to %s, which the lake's tables need", key, current, value)
            session.conf.set(key, value)

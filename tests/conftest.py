"""One local SparkSession for the whole test run (Spark takes ~10 s to start)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def config():
    from marketlake.config import load_config

    return load_config(
        None,
        {
            "MARKETLAKE_MASTER": "local[2]",
            "MARKETLAKE__SPARK__SHUFFLE_PARTITIONS": "4",
            "MARKETLAKE__SPARK__DRIVER_MEMORY": "2g",
        },
    )


@pytest.fixture(scope="session")
def spark(config):
    from marketlake.java import ensure_java
    from marketlake.spark import build_session

    ensure_java()
    session = build_session(config)
    yield session
    session.stop()


@pytest.fixture()
def lake_root(tmp_path) -> str:
    return str(tmp_path / "lake")


@pytest.fixture(params=["delta-rs", "delta-spark"])
def lake(request, spark, config, lake_root):
    """A Lake on each engine available here; the delta-spark half skips, saying why, without the jars."""
    from marketlake.lake import Lake
    from marketlake.lake.delta_spark import delta_spark_available

    if request.param == "delta-spark":
        available, why = delta_spark_available(spark)
        if not available:
            pytest.skip(f"delta-spark engine: {why} (Maven is unreachable here, so the jars cannot be had)")
    return Lake(spark, config.lake.model_copy(update={"engine": request.param}), lake_root)

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
    from marketlake.lake import Lake, delta_spark_available

    if request.param == "delta-spark":
        available, why = delta_spark_available(spark)
        if not available:
            pytest.skip(f"delta-spark engine: {why} (Maven is unreachable here, so the jars cannot be had)")
    return Lake(spark, config.lake.model_copy(update={"engine": request.param}), lake_root)


DEMO_END = "2024-06-30"


@pytest.fixture(scope="session")
def demo_shop(spark, tmp_path_factory):
    """The demo shop (2,000 users, 300 items, 200,000 events ending 2024-06-30, seed 42), generated and
    ingested once for the whole run: (shop folder with truth/, generator counts, lake root).

    Shared: tests must not write into this lake. A test that runs a job copies it first
    (`shutil.copytree(root, tmp_path / "lake")`), or builds its own in a module fixture."""
    import datetime as dt

    from marketlake.demo import ShopSpec, generate_shop
    from marketlake.jobs import main

    shop = tmp_path_factory.mktemp("demo-shop")
    counts = generate_shop(spark, ShopSpec.demo(end_date=dt.date.fromisoformat(DEMO_END)), str(shop))
    root = tmp_path_factory.mktemp("demo-lake")
    for entity, source in (("items", "items.csv"), ("users", "users.csv"), ("events", "events")):
        code = main(
            "ingest",
            ["--lake", str(root), "--run-date", DEMO_END, "--entity", entity, "--source", str(shop / source)],
        )
        assert code == 0, f"ingest {entity} failed"
    return shop, counts, str(root)

"""Concurrent writers: several ingests of overlapping files at once store each event once, lose nothing and
tell the truth in their summaries; two pipelines of different jobs at once leave what running them one
after the other leaves. Each run is its own process (its own Spark driver), as under a scheduler."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys

import polars as pl
import pytest
from conftest import ROOT
from deltalake import DeltaTable

from marketlake.jobs import main

RUN_DATE = "2024-06-30"
SUMMARY_COUNTS = ("records_read", "accepted", "rejected", "duplicates")


def start(job: str, *argv: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "MARKETLAKE_MASTER": "local[1]",
        "MARKETLAKE__SPARK__DRIVER_MEMORY": "1g",
        "MARKETLAKE__SPARK__SHUFFLE_PARTITIONS": "2",
        "PYSPARK_PYTHON": sys.executable,
    }
    return subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--run-date", RUN_DATE, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(processes: list[subprocess.Popen]) -> list[str]:
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-3000:]
        outputs.append(out)
    return outputs


def silver(root: str, table: str = "events") -> pl.DataFrame:
    frame = pl.read_delta(os.path.join(root, "silver", table))
    return frame.drop("source_file", "batch_id", "ingested_at").sort(
        "event_id" if table == "events" else frame.columns
    )


@pytest.fixture(scope="module")
def overlapping_sources(spark, tmp_path_factory):
    """Three folders over one small shop's event files, each pair sharing a third of them (copies: other
    paths, same lines, so the same events arrive through different files)."""
    from marketlake.demo import ShopSpec, generate_shop

    shop = tmp_path_factory.mktemp("shop")
    spec = ShopSpec(users=60, items=30, events=6000, seed=3, days=6, end_date=dt.date.fromisoformat(RUN_DATE))
    generate_shop(spark, spec, str(shop))
    files = sorted((shop / "events").rglob("*.json*"))
    assert len(files) >= 3
    thirds = [files[i::3] for i in range(3)]
    base = tmp_path_factory.mktemp("sources")
    folders = []
    for name, parts in (
        ("a", thirds[0] + thirds[1]),
        ("b", thirds[1] + thirds[2]),
        ("c", thirds[2] + thirds[0]),
    ):
        folder = base / name
        for path in parts:
            target = folder / path.relative_to(shop / "events")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        folders.append(str(folder))
    return shop, folders


@pytest.mark.slow
def test_three_ingests_at_once_store_each_event_once(overlapping_sources, tmp_path):
    shop, folders = overlapping_sources
    reference = str(tmp_path / "reference")
    assert (
        main("ingest", ["--lake", reference, "--run-date", RUN_DATE, "--source", str(shop / "events")]) == 0
    )

    lake = str(tmp_path / "lake")
    outputs = finish([start("ingest", "--lake", lake, "--source", folder) for folder in folders])

    together, alone = silver(lake), silver(reference)
    assert together["event_id"].n_unique() == together.height  # no event twice
    assert together["event_id"].to_list() == alone["event_id"].to_list()  # nothing lost, nothing extra
    # The same content, but where one event id came in two versions (the shop plants such conflicts): the
    # first committed version wins, which a single run decides by file order and concurrent runs by who
    # committed first. Either way the other version is quarantined as a conflicting duplicate.
    conflicting = (
        pl.read_delta(os.path.join(lake, "quarantine", "events"))
        .filter(pl.col("reason") == "conflicting_duplicate")["raw"]
        .str.extract(r'"event_id":\s*"([^"]+)"')
    )
    assert conflicting.null_count() == 0
    unconflicted = ~pl.col("event_id").is_in(conflicting.implode())
    assert together.filter(unconflicted).equals(alone.filter(unconflicted))
    # Every run's summary is true: read = accepted + rejected + duplicates, and what they accepted is silver.
    runs = DeltaTable(os.path.join(lake, "ops", "job_runs")).to_pyarrow_table().to_pylist()
    runs = [run for run in runs if run["job"] == "ingest"]
    assert len(runs) == 3 and {run["status"] for run in runs} == {"succeeded"}
    counts = [dict(run["counts"]) for run in runs]
    for run in counts:
        read, accepted, rejected, duplicates = (run[f"events.{name}"] for name in SUMMARY_COUNTS)
        assert read == accepted + rejected + duplicates
    assert sum(run["events.accepted"] for run in counts) == together.height
    for out in outputs:
        assert " accepted + " in out
    quarantine = pl.read_delta(os.path.join(lake, "quarantine", "events"))
    assert quarantine.select("source_file", "raw", "reason").is_duplicated().sum() == 0


@pytest.mark.slow
def test_two_pipelines_of_different_jobs_at_once(demo_shop, tmp_path):
    """features + segment beside rules, each a pipeline of its own, on one lake: the tables equal those of
    running the two one after the other, and ops.job_runs holds every run."""
    _, _, demo_root = demo_shop
    together, apart = str(tmp_path / "together"), str(tmp_path / "apart")
    shutil.copytree(demo_root, together)
    shutil.copytree(demo_root, apart)
    for only in (
        "features,segment",
        "rules",
    ):  # the same settings as the concurrent runs: KMeans follows partitioning
        finish([start("pipeline", "--lake", apart, "--only", only)])
    finish([start("pipeline", "--lake", together, "--only", only) for only in ("features,segment", "rules")])

    for table in (
        "gold/user_features",
        "gold/user_segments",
        "gold/segment_profiles",
        "gold/association_rules",
        "gold/item_cross_sell",
    ):
        left, right = (pl.read_delta(os.path.join(root, table)) for root in (together, apart))
        assert left.sort(left.columns).equals(right.sort(right.columns)), table
    runs = pl.read_delta(os.path.join(together, "ops", "job_runs"))
    assert sorted(
        runs.filter(pl.col("run_date") == dt.date.fromisoformat(RUN_DATE))["job"].to_list()
    ) == sorted(["ingest"] * 3 + ["features", "segment", "rules", "pipeline", "pipeline"])

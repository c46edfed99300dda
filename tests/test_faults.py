"""Faults: a job killed (SIGKILL) in the middle of a table write, a full disk, a permission error.

A small shop (200 users, 20,000 events over 4 days) is generated once. The killed job and the permission
test run as their own processes (`python jobs/ingest.py`, `python jobs/features.py`), as a scheduler
would start them; the full-disk test puts a lake on a tiny tmpfs (mounting needs root: skipped otherwise).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from chispa import assert_df_equality

from marketlake.demo import ShopSpec, generate_shop
from marketlake.jobs import main
from marketlake.lake import Lake

ROOT = Path(__file__).resolve().parent.parent
END = dt.date(2024, 6, 30)
RUN_DATE = ["--run-date", END.isoformat()]
SPEC = ShopSpec(users=200, items=40, events=20_000, seed=11, days=4, end_date=END)
UNPRIVILEGED = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shop(spark, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fault-shop")
    generate_shop(spark, SPEC, str(out))
    return out


def ingest(root: str, source: Path, entity: str = "events") -> int:
    return main("ingest", ["--lake", root, *RUN_DATE, "--entity", entity, "--source", str(source)])


def first_day(shop: Path) -> Path:
    return sorted((shop / "events").glob("date=*"))[0]


def job_process(job: str, argv: list[str], prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*prefix, sys.executable, str(ROOT / "jobs" / f"{job}.py"), *argv],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when_writing(process: subprocess.Popen, table_dir: Path, timeout: float = 300) -> None:
    """SIGKILL the job's whole process group (driver and JVM) as soon as a write into `table_dir` has
    started: its staging folder exists. Fails if the job ends first."""
    staging = table_dir / "_staging"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if staging.is_dir() and any(staging.iterdir()):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return
        if process.poll() is not None:
            pytest.fail(f"the job ended (exit {process.returncode}) before a write to {table_dir} was caught")
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"no write to {table_dir} started within {timeout} s")


def contents(lake: Lake, table: str, drop: tuple[str, ...] = ("batch_id", "ingested_at")):
    frame = lake.read(table).drop(*drop)
    return frame.orderBy(*frame.columns)


def test_a_job_killed_mid_write_leaves_the_last_version_and_a_rerun_matches_an_uninterrupted_run(
    spark, config, shop, tmp_path
):
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    for root in (reference, killed):
        assert ingest(root, first_day(shop)) == 0
    assert ingest(reference, shop / "events") == 0

    lake = Lake(spark, config.lake, killed)
    version = lake.version("silver.events")
    before = pl.read_delta(lake.path("silver.events")).sort("event_id")

    process = job_process(
        "ingest", ["--lake", killed, *RUN_DATE, "--entity", "events", "--source", str(shop / "events")]
    )
    kill_when_writing(process, Path(lake.path("silver.events")))

    # The killed write committed nothing: the table is at its last version, whole, for any Delta reader.
    assert lake.version("silver.events") == version
    assert pl.read_delta(lake.path("silver.events")).sort("event_id").equals(before)
    assert lake.read("silver.events").count() == before.height

    # Running the job again gives what one uninterrupted run gives.
    assert ingest(killed, shop / "events") == 0
    expected = Lake(spark, config.lake, reference)
    for table in ("silver.events", "quarantine.events"):
        assert_df_equality(contents(lake, table), contents(expected, table))
    bronze = ("batch_id", "ingested_at", "ingest_date")
    assert_df_equality(contents(lake, "bronze.events", bronze), contents(expected, "bronze.events", bronze))


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs; skips where this process may not mount one."""
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to fill a disk ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_gives_one_clear_line(spark, config, shop, tiny_disk, capsys):
    root = str(tiny_disk / "lake")
    assert ingest(root, shop / "events") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("marketlake ingest: ") and "no space left on device" in err
    assert "cannot write bronze.events" in err  # the first table written, named with its path
    assert "Traceback" not in err and "\tat " not in err


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to start the job without the power to override file permissions",
)
def test_a_permission_error_gives_one_clear_line(spark, config, shop, tmp_path):
    root = tmp_path / "lake"
    assert ingest(str(root), shop / "events") == 0
    # The lake may be read, not written; the job runs without CAP_DAC_OVERRIDE, so that being root does
    # not override that (tests here run as root).
    folders = [root, *[path for path in root.rglob("*") if path.is_dir()]]
    for folder in folders:
        folder.chmod(0o555)
    try:
        process = job_process("features", ["--lake", str(root), *RUN_DATE], prefix=UNPRIVILEGED)
        _, err = process.communicate(timeout=300)
    finally:
        for folder in folders:
            folder.chmod(0o755)
    ours = [line for line in err.splitlines() if line.startswith("marketlake features: ")]
    assert process.returncode == 1, err[-3000:]
    assert len(ours) == 1, err[-3000:]
    assert (
        "cannot write gold.user_features" in ours[0]
        and "permission denied (cannot create folders in" in ours[0]
    )
    assert not (root / "gold" / "user_features" / "_delta_log").exists()


def test_storage_problems_are_recognised_in_java_rust_and_python_errors():
    from marketlake.errors import storage_problem

    java = RuntimeError(
        "An error occurred while calling o81.parquet.\n: java.io.IOException: No space left on device\n\tat x"
    )
    rust = OSError(
        "Generic LocalFileSystem error: Unable to open file /l/x.parquet: Permission denied (os error 13)"
    )
    assert storage_problem(java) == "no space left on device (the disk is full)"
    assert storage_problem(rust) == "permission denied"
    try:
        try:
            raise OSError(30, "Read-only file system")
        except OSError as inner:
            raise ValueError("while committing") from inner
    except ValueError as outer:
        assert storage_problem(outer) == "read-only file system"
    assert storage_problem(ValueError("something else")) is None
    hadoop = RuntimeError(
        ": java.io.IOException: Mkdirs failed to create file:/proc/1/no/such/dir (exists=false)"
    )
    assert storage_problem(hadoop) == "permission denied (cannot create folders in /proc/1)"

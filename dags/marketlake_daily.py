"""marketlake_daily: one Airflow task per marketlake job and run date, each through `spark-submit.sh`.

Each run covers one finished UTC day: the data interval runs from 02:30 UTC on the run date to
02:30 UTC the next day (the 2.5 hours give late events time to land), so `{{ ds }}`, the interval's
start date, is the day the jobs are run for (`--run-date`). The jobs are idempotent per run date, so
retries and re-runs of a date are safe.

The task graph follows the tables each job reads: rules, sessions and experiment run beside features ->
segment -> recommend, report waits for what it shows, and housekeeping (which reads no table in the
catalog's sense, so waits for every job before it) runs last. The job list comes from the marketlake checkout
(`PIPELINE_ORDER` in lib/marketlake/jobs/__init__.py, those whose files exist), read as text:
this file imports neither marketlake nor Spark, so the Airflow environment needs neither. That order
starts at ingest, which reads the landing folder: the synthetic shop generator (`generate`) is for demos
and tests and is never a task here, so a scheduled run cannot put a made-up shop beside real data.

Settings, from the environment of the DAG processor and the workers (read when this file is parsed):

  MARKETLAKE_HOME        the marketlake checkout with spark-submit.sh (default: the folder above dags/);
                         tasks run in it, so relative paths resolve against it
  MARKETLAKE_CONFIG      passed as --config to every job, for example conf/cluster.yaml
  MARKETLAKE_SPARK_ARGS  spark-submit options for every job, for example
                         "--master yarn --packages io.delta:delta-spark_2.13:4.4.1"
  MARKETLAKE_SKIP_JOBS   comma-separated jobs to leave out, for example "experiment" where no A/B test runs
  MARKETLAKE_RETRIES     retries of a failed task (default 2, 5 minutes apart, then longer)

The lake root comes from the config or from MARKETLAKE_LAKE in the workers' environment.
"""

from __future__ import annotations

import ast
import datetime as dt
import importlib.util
import os
import shlex
import sys
from pathlib import Path
from types import ModuleType

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronDataIntervalTimetable

DAG_ID = "marketlake_daily"
# A job is there when both its entry point (what spark-submit.sh runs) and its library module are.
JOB_FOLDERS = ("jobs", "lib/marketlake/jobs")


def marketlake_home() -> Path:
    home = Path(os.environ.get("MARKETLAKE_HOME") or Path(__file__).resolve().parent.parent)
    if not (home / "spark-submit.sh").is_file():
        raise RuntimeError(
            f"{DAG_ID}: no spark-submit.sh in {home}: set MARKETLAKE_HOME to the marketlake checkout"
        )
    return home


def table_catalog(home: Path) -> ModuleType:
    """lib/marketlake/catalog.py of the checkout: which job writes and which jobs read each table. It
    imports only the standard library, so it loads here without marketlake's dependencies."""
    path = home / "lib" / "marketlake" / "catalog.py"
    spec = importlib.util.spec_from_file_location("marketlake_catalog", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"{DAG_ID}: cannot load the table catalog {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def reads(home: Path, order: list[str]) -> dict[str, list[str]]:
    """For each job that reads tables, the jobs that write them (from the catalog). A job missing from the
    DAG (skipped, or not in this version) is replaced by what it reads; a job the catalog knows no reads
    of waits for every job before it in pipeline order. Writers outside the pipeline (erase, stream: run on
    request or beside it) are no tasks and no edges."""
    catalog = table_catalog(home)
    jobs = {job for table in catalog.TABLES for job in table.read_by}
    return {job: [w for w in catalog.upstream_jobs(job) if w in order] for job in order if job in jobs}


def pipeline_order(home: Path) -> list[str]:
    """PIPELINE_ORDER of the checkout's lib/marketlake/jobs/__init__.py."""
    module = ast.parse((home / "lib" / "marketlake" / "jobs" / "__init__.py").read_text())
    return list(
        next(
            ast.literal_eval(node.value)
            for node in module.body
            if isinstance(node, ast.Assign)
            and any(getattr(t, "id", None) == "PIPELINE_ORDER" for t in node.targets)
        )
    )


def pipeline_jobs(home: Path) -> list[str]:
    """PIPELINE_ORDER of the checkout, restricted to the jobs it has, less MARKETLAKE_SKIP_JOBS."""
    order = pipeline_order(home)
    skipped = {name.strip() for name in os.environ.get("MARKETLAKE_SKIP_JOBS", "").split(",") if name.strip()}
    return [
        name
        for name in order
        if name not in skipped and all((home / folder / f"{name}.py").is_file() for folder in JOB_FOLDERS)
    ]


def reads_from(job: str, jobs: list[str]) -> list[str]:
    """The jobs in `jobs` whose tables `job` reads."""
    if job not in READS_FROM:
        return jobs[: jobs.index(job)]
    found: list[str] = []
    for name in READS_FROM[job]:
        if name in jobs:
            found.append(name)
        elif name in READS_FROM:
            found += reads_from(name, jobs)
    return list(dict.fromkeys(found))


def dependencies(jobs: list[str]) -> dict[str, list[str]]:
    """For each job, the jobs it waits for directly: no edge that a longer path already implies."""
    direct = {job: reads_from(job, jobs) for job in jobs}
    ancestors: dict[str, set[str]] = {}
    for job in jobs:  # pipeline order: what a job reads comes before it
        ancestors[job] = set(direct[job]).union(*(ancestors[name] for name in direct[job]))
    return {
        job: [name for name in direct[job] if not any(name in ancestors[other] for other in direct[job])]
        for job in jobs
    }


def submit_command(home: Path, job: str) -> str:
    words = [str(home / "spark-submit.sh"), job, *shlex.split(os.environ.get("MARKETLAKE_SPARK_ARGS", ""))]
    if os.environ.get("MARKETLAKE_CONFIG"):
        words += ["--config", os.environ["MARKETLAKE_CONFIG"]]
    # Ends with the template, never with ".sh": BashOperator would read a command ending so as a file.
    return shlex.join(words) + " --run-date {{ ds }}"


checkout = marketlake_home()
job_names = pipeline_jobs(checkout)
READS_FROM = reads(checkout, pipeline_order(checkout))

with DAG(
    dag_id=DAG_ID,
    description="marketlake: events to Delta tables for marketing, one task per job",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("30 2 * * *", timezone="UTC"),
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    # Concurrent writers are safe (checked commits, retried), but runs for two dates at once would only
    # contend for the same tables and the cluster: one date at a time, in order.
    max_active_runs=1,
    default_args={
        "owner": "marketlake",
        "retries": int(os.environ.get("MARKETLAKE_RETRIES", "2")),
        "retry_delay": dt.timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=30),
        "execution_timeout": dt.timedelta(hours=4),
    },
    tags=["marketlake", "spark"],
) as dag:
    tasks = {
        job: BashOperator(task_id=job, bash_command=submit_command(checkout, job), cwd=str(checkout))
        for job in job_names
    }
    for job, upstream in dependencies(job_names).items():
        for name in upstream:
            tasks[name] >> tasks[job]

"""The Airflow DAG, dags/marketlake_daily.py.

Without Airflow (the project's own environment: Airflow's pins conflict with the project's), the DAG file
is loaded against small stand-ins for the three Airflow names it imports, which record the tasks, their
commands, the edges and the DAG's arguments. `make dag-check` runs this file again in a separate virtualenv
with Airflow installed, where the cases below that need Airflow load the file with Airflow's own DagBag and
run the whole DAG through `airflow dags test` on a tiny shop.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

from marketlake.jobs import PIPELINE_ORDER, available_jobs

ROOT = Path(__file__).resolve().parent.parent
DAG_FILE = ROOT / "dags" / "marketlake_daily.py"
SETTINGS = ("MARKETLAKE_HOME", "MARKETLAKE_CONFIG", "MARKETLAKE_SPARK_ARGS", "MARKETLAKE_SKIP_JOBS")


class StubDAG:
    active: StubDAG | None = None

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.tasks: dict[str, StubBashOperator] = {}

    def __enter__(self):
        StubDAG.active = self
        return self

    def __exit__(self, *exc):
        StubDAG.active = None


class StubBashOperator:
    def __init__(self, *, task_id: str, bash_command: str, cwd: str | None = None, **kwargs):
        self.task_id, self.bash_command, self.cwd, self.kwargs = task_id, bash_command, cwd, kwargs
        self.upstream: set[str] = set()
        StubDAG.active.tasks[task_id] = self

    def __rshift__(self, other: StubBashOperator) -> StubBashOperator:
        other.upstream.add(self.task_id)
        return other


class StubTimetable:
    def __init__(self, cron: str, timezone: str):
        self.cron, self.timezone = cron, timezone


@pytest.fixture()
def load_dag(monkeypatch):
    """load_dag(**settings) -> the DAG module, loaded against stand-ins for Airflow, with these settings."""
    names = {
        "airflow": {},
        "airflow.providers": {},
        "airflow.providers.standard": {},
        "airflow.providers.standard.operators": {},
        "airflow.providers.standard.operators.bash": {"BashOperator": StubBashOperator},
        "airflow.sdk": {"DAG": StubDAG, "CronDataIntervalTimetable": StubTimetable},
    }
    for name, attributes in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)

    def load(**settings):
        for name in SETTINGS:
            monkeypatch.delenv(name, raising=False)
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        spec = importlib.util.spec_from_file_location("marketlake_daily_under_test", DAG_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def rendered(command: str, ds: str) -> list[str]:
    return shlex.split(command.replace("{{ ds }}", ds))


def test_one_task_per_job_through_spark_submit_with_the_run_date_templated(load_dag):
    dag = load_dag().dag
    assert list(dag.tasks) == available_jobs()
    for job, task in dag.tasks.items():
        assert rendered(task.bash_command, "2024-06-30") == [
            str(ROOT / "spark-submit.sh"),
            job,
            "--run-date",
            "2024-06-30",
        ]
        assert task.cwd == str(ROOT)
    assert dag.kwargs["dag_id"] == "marketlake_daily" and dag.kwargs["max_active_runs"] == 1
    assert (
        dag.kwargs["default_args"]["retries"] == 2 and dag.kwargs["default_args"]["retry_exponential_backoff"]
    )
    timetable = dag.kwargs["schedule"]
    assert (timetable.cron, timetable.timezone) == ("30 2 * * *", "UTC")


def test_the_synthetic_shop_generator_is_never_a_task(load_dag):
    """A scheduled run is a production run: it ingests what landed and never writes a made-up shop there."""
    dag = load_dag().dag
    assert "generate" not in dag.tasks
    assert dag.tasks["ingest"].upstream == set()
    assert all(task.upstream for job, task in dag.tasks.items() if job != "ingest")


def test_the_graph_follows_the_tables_each_job_reads(load_dag):
    module = load_dag()
    edges = module.dependencies(PIPELINE_ORDER)
    assert edges == {
        "ingest": [],
        "features": ["ingest"],
        "propensity": ["ingest"],
        "segment": ["features"],
        "rules": ["ingest"],
        "sessions": ["ingest"],
        "recommend": ["segment"],
        "activate": ["rules", "recommend", "propensity"],
        "experiment": ["ingest"],
        "report": ["activate", "experiment"],
        # it reads no table in the catalog's sense: it waits for every job (the ends of the graph)
        "housekeeping": ["sessions", "report"],
    }
    # This version's DAG: the same graph, less the jobs it does not have.
    tasks = module.dag.tasks
    assert {job: task.upstream for job, task in tasks.items()} == {
        job: set(module.dependencies(list(tasks))[job]) for job in tasks
    }


def test_missing_jobs_are_bridged_by_what_they_read(load_dag):
    module = load_dag()
    jobs = [job for job in PIPELINE_ORDER if job not in ("recommend", "experiment")]
    assert module.dependencies(jobs) == {
        "ingest": [],
        "features": ["ingest"],
        "propensity": ["ingest"],
        "segment": ["features"],
        "rules": ["ingest"],
        "sessions": ["ingest"],
        "activate": ["segment", "rules", "propensity"],
        "report": ["activate"],
        "housekeeping": ["sessions", "report"],
    }
    # A job the DAG has no reads for waits for every job before it.
    assert module.dependencies(["ingest", "churn", "features"]) == {
        "ingest": [],
        "churn": ["ingest"],
        "features": ["ingest"],
    }


def test_reads_name_only_earlier_jobs_of_the_pipeline(load_dag):
    module = load_dag()
    for job, reads in module.READS_FROM.items():
        assert job in PIPELINE_ORDER
        assert all(PIPELINE_ORDER.index(name) < PIPELINE_ORDER.index(job) for name in reads), job


def test_settings_from_the_environment(load_dag, tmp_path):
    dag = load_dag(
        MARKETLAKE_CONFIG="conf/cluster.yaml",
        MARKETLAKE_SPARK_ARGS="--master yarn --conf 'spark.driver.extraJavaOptions=-Da=1 -Db=2'",
        MARKETLAKE_SKIP_JOBS="experiment, rules",
        MARKETLAKE_RETRIES="0",
    ).dag
    assert dag.kwargs["default_args"]["retries"] == 0
    assert list(dag.tasks) == [job for job in available_jobs() if job not in ("experiment", "rules")]
    assert dag.tasks["ingest"].upstream == set()
    assert rendered(dag.tasks["ingest"].bash_command, "2026-01-31") == [
        str(ROOT / "spark-submit.sh"),
        "ingest",
        "--master",
        "yarn",
        "--conf",
        "spark.driver.extraJavaOptions=-Da=1 -Db=2",
        "--config",
        "conf/cluster.yaml",
        "--run-date",
        "2026-01-31",
    ]

    with pytest.raises(RuntimeError, match="set MARKETLAKE_HOME to the marketlake checkout"):
        load_dag(MARKETLAKE_HOME=str(tmp_path))


def test_the_dag_file_needs_neither_marketlake_nor_spark():
    imports = [line for line in DAG_FILE.read_text().splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in imports if "marketlake" in line or "spark" in line], imports


# Under Airflow itself: `make dag-check`.


@pytest.fixture(scope="module")
def airflow_dag():
    pytest.importorskip(
        "airflow.sdk", reason="Airflow is not installed here: `make dag-check` runs these cases"
    )
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.dags["marketlake_daily"]


def test_airflow_loads_the_dag(airflow_dag):
    assert [task.task_id for task in airflow_dag.tasks] == available_jobs()
    for task in airflow_dag.tasks:
        assert task.retries == 2
        command = task.render_template(task.bash_command, {"ds": "2024-06-30"})
        assert shlex.split(command) == [
            str(ROOT / "spark-submit.sh"),
            task.task_id,
            "--run-date",
            "2024-06-30",
        ]
    stubbed = {job: set(upstream) for job, upstream in _stub_edges().items()}
    assert {task.task_id: set(task.upstream_task_ids) for task in airflow_dag.tasks} == stubbed


def _stub_edges() -> dict[str, list[str]]:
    spec = importlib.util.spec_from_file_location("marketlake_daily_edges", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dependencies(available_jobs())


def test_airflow_schedules_the_finished_day(airflow_dag):
    import pendulum
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    previous = DataInterval(
        pendulum.datetime(2024, 6, 29, 2, 30, tz="UTC"), pendulum.datetime(2024, 6, 30, 2, 30, tz="UTC")
    )
    restriction = TimeRestriction(earliest=pendulum.datetime(2024, 1, 1, tz="UTC"), latest=None, catchup=True)
    run = coerce_to_core_timetable(airflow_dag.timetable).next_dagrun_info(
        last_automated_data_interval=previous, restriction=restriction
    )
    # The run that starts at 02:30 on July 1st is for June 30th: its {{ ds }} is the interval's start date.
    assert run.run_after == pendulum.datetime(2024, 7, 1, 2, 30, tz="UTC")
    assert run.data_interval.start.to_date_string() == "2024-06-30"


@pytest.mark.slow
def test_airflow_runs_the_dag_on_a_tiny_shop(airflow_dag, tmp_path):
    """`airflow dags test` runs every task, in dependency order, each through spark-submit.sh."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "generate: {users: 40, items: 20, events: 1000, days: 5}\nspark: {master: 'local[1]'}\n"
        "propensity: {horizon_days: 1, models: [logistic_regression]}\n"
    )
    # conftest points PySpark at this interpreter, which has Airflow but no marketlake: the tasks must use
    # the project's (spark-submit.sh picks .venv's).
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYSPARK_")}
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
            "MARKETLAKE_CONFIG": str(config),
            "MARKETLAKE_LAKE": str(tmp_path / "lake"),
            "MARKETLAKE_RETRIES": "0",
        }
    )
    # The shop lands before the run, as real tracking files would: the DAG has no generate task. Generated
    # with the project's environment (this one has Airflow, not marketlake), into the lake's landing folder.
    project = {name: value for name, value in env.items() if not name.startswith("AIRFLOW")}
    subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            str(ROOT / "jobs" / "generate.py"),
            "--config",
            str(config),
            "--run-date",
            "2024-06-30",
        ],
        env=project,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    out = subprocess.run(
        [*airflow, "dags", "test", "marketlake_daily", "2024-06-30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    (tmp_path / "airflow-dags-test.log").write_text(out.stdout + out.stderr)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    # ops.job_runs, read with the project's environment (this one has Airflow, not deltalake).
    read = (
        "import json, sys, deltalake; frame = deltalake.DeltaTable(sys.argv[1]).to_pandas();"
        "print(json.dumps(frame[['job', 'status', 'run_date']].astype(str).to_dict('records')))"
    )
    table = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", read, str(tmp_path / "lake" / "ops" / "job_runs")],
        check=True,
        capture_output=True,
        text=True,
    )
    runs = json.loads(table.stdout)
    assert sorted(run["job"] for run in runs) == sorted(["generate", *available_jobs()])
    assert {(run["status"], run["run_date"]) for run in runs} == {("succeeded", "2024-06-30")}

"""The jobs: the pipeline's in order, and those that answer a question (QUESTIONS). A job lives in
`marketlake.jobs.<name>` and defines `JOB`; `main(name)` is the entry point of `jobs/<name>.py`."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from marketlake.errors import UsageError
from marketlake.runner import Job, print_error, run_cli

# What a production run does, in order: it starts from the files already in the landing folder.
PIPELINE_ORDER = [
    "ingest",
    "features",
    "propensity",
    "segment",
    "rules",
    "sessions",
    "recommend",
    "activate",
    "experiment",
    "report",
    "housekeeping",
]
# The synthetic shop, written into the landing folder ingest reads: run only when asked for (`pipeline
# --generate`, as `make demo` does, or `--only generate,...`), never by a default pipeline, since on a
# real lake it would add a made-up shop to the real data.
GENERATE = "generate"
# Jobs that answer a question rather than build tables: run on their own, never by the pipeline or the DAG.
QUESTIONS = ["plan"]
# Jobs run on request, never by the pipeline or the DAG: erase removes subjects (docs/jobs/erase.md).
ON_DEMAND = ["erase"]
# Jobs that run beside the pipeline, started by a supervisor or a scheduler, never by the pipeline.
SERVICES = ["stream"]
ALL_JOBS = [GENERATE, *PIPELINE_ORDER, "pipeline", *QUESTIONS, *ON_DEMAND, *SERVICES]


def _present(names: list[str]) -> list[str]:
    return [name for name in names if importlib.util.find_spec(f"marketlake.jobs.{name}") is not None]


def available_jobs() -> list[str]:
    """The jobs of PIPELINE_ORDER that this version of marketlake has (generate is not one of them)."""
    return _present(PIPELINE_ORDER)


def get_job(name: str) -> Job:
    if name not in ALL_JOBS or importlib.util.find_spec(f"marketlake.jobs.{name}") is None:
        raise UsageError(
            f"no job named {name!r}; jobs: {', '.join(['pipeline', *_present([GENERATE, *PIPELINE_ORDER, *QUESTIONS, *ON_DEMAND, *SERVICES])])}"
        )
    job: Job = importlib.import_module(f"marketlake.jobs.{name}").JOB
    return job


def main(name: str, argv: Sequence[str] | None = None) -> int:
    """Run the job `name` from the command line (`argv`, default sys.argv[1:]); returns the exit code."""
    try:
        job = get_job(name)
    except UsageError as exc:
        print_error(f"marketlake {name}: {exc}")
        return exc.exit_code
    return run_cli(job, argv)

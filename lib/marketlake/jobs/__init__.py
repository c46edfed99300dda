"""The jobs, in pipeline order. A job lives in `marketlake.jobs.<name>` and defines `JOB`."""

from __future__ import annotations

import importlib

from marketlake.errors import UsageError

PIPELINE_ORDER = [
    "generate", "ingest", "features", "segment", "rules", "recommend", "activate", "experiment", "report",
]
ALL_JOBS = [*PIPELINE_ORDER, "pipeline"]


def available_jobs() -> list[str]:
    """The jobs of PIPELINE_ORDER that this version of marketlake has."""
    return [name for name in PIPELINE_ORDER if importlib.util.find_spec(f"marketlake.jobs.{name}") is not None]


def get_job(name: str):
    if name not in ALL_JOBS or importlib.util.find_spec(f"marketlake.jobs.{name}") is None:
        raise UsageError(f"no job named {name!r}; jobs: {', '.join(['pipeline', *available_jobs()])}")
    return importlib.import_module(f"marketlake.jobs.{name}").JOB

"""The jobs, in pipeline order. A job lives in `marketlake.jobs.<name>` and defines `JOB`."""

from __future__ import annotations

import importlib.util

from marketlake.errors import UsageError

# What a production run does, in order: it starts from the files already in the landing folder.
PIPELINE_ORDER = ["ingest", "features", "segment", "rules", "recommend", "activate", "experiment", "report"]
# The synthetic shop, written into the landing folder ingest reads: run only when asked for (`pipeline
# --generate`, as `make demo` does, or `--only generate,...`), never by a default pipeline, since on a
# real lake it would add a made-up shop to the real data.
GENERATE = "generate"
ALL_JOBS = [GENERATE, *PIPELINE_ORDER, "pipeline"]


def _present(names: list[str]) -> list[str]:
    return [name for name in names if importlib.util.find_spec(f"marketlake.jobs.{name}") is not None]


def available_jobs() -> list[str]:
    """The jobs of PIPELINE_ORDER that this version of marketlake has (generate is not one of them)."""
    return _present(PIPELINE_ORDER)


def get_job(name: str):
    if name not in ALL_JOBS or importlib.util.find_spec(f"marketlake.jobs.{name}") is None:
        raise UsageError(f"no job named {name!r}; jobs: {', '.join(['pipeline', *_present([GENERATE, *PIPELINE_ORDER])])}")
    return importlib.import_module(f"marketlake.jobs.{name}").JOB

"""The job runner: shared arguments, one log line per step, one ops.job_runs row per run, exit codes.

Every job module in `marketlake.jobs` defines `JOB = Job(...)`; the file `jobs/NAME.py` is only
`sys.exit(main("NAME"))` with `marketlake.jobs.main`, which finds the job and calls `run_cli`. A job's
`run` puts its counts in `ctx.counts` (recorded in ops.job_runs, failed runs included) and returns None.
Exit codes: 0 success; 2 bad arguments, configuration or input paths (found before anything is written);
1 a failure during the run. Failures print one line on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from marketlake import catalog
from marketlake.config import Config, load_config
from marketlake.errors import MarketlakeError, UsageError, storage_problem

if TYPE_CHECKING:  # both load Spark: imported when a job runs, not when the runner is
    from pyspark.sql import SparkSession

    from marketlake.lake import Lake

log = logging.getLogger("marketlake")

JOB_RUNS = catalog.JOB_RUNS.name
# What ops.job_runs records for the value of a private argument.
WITHHELD = "<withheld>"
# Set by spark-submit.sh: a file for the failure line, which it copies to the caller's stderr (see print_error).
ERROR_FILE_VARIABLE = "MARKETLAKE_ERROR_FILE"


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """A job without options of its own."""


def no_checks(args: argparse.Namespace, config: Config) -> None:
    """A job with nothing to check before Spark starts."""


@dataclass(frozen=True)
class Job:
    name: str
    help: str
    # Does the work; counts go in ctx.counts.
    run: Callable[[JobContext, argparse.Namespace], None]
    add_arguments: Callable[[argparse.ArgumentParser], None] = no_arguments
    # Checks arguments and input paths before Spark starts; raises UsageError.
    validate: Callable[[argparse.Namespace, Config], None] = no_checks
    # Runs after the ops.job_runs row is written, on success only (for example, a closing summary).
    finish: Callable[[JobContext], None] | None = None
    # Has a --force option that the pipeline's --force is passed on to (job_arguments).
    accepts_force: bool = False
    # Arguments whose values name a person (erase's --user-id): ops.job_runs records only that one was given.
    private_arguments: tuple[str, ...] = ()


@dataclass
class Step:
    name: str
    rows: int | None = None
    detail: str = ""


@dataclass
class JobContext:
    job: str
    spark: SparkSession
    config: Config
    lake: Lake
    run_date: dt.date
    run_id: str
    counts: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Time a step and log one line: job | step | rows | seconds."""
        step = Step(name)
        started = time.perf_counter()
        yield step
        seconds = time.perf_counter() - started
        rows = "" if step.rows is None else f" rows={step.rows}"
        detail = f" {step.detail}" if step.detail else ""
        log.info("%s | %s |%s%s %.2fs", self.job, name, rows, detail, seconds)

    def note(self, text: str) -> None:
        """Log one line in the steps' format, for something decided rather than done (no rows, no time)."""
        log.info("%s | %s", self.job, text)


def parse_run_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date of the form YYYY-MM-DD: {text!r}") from None


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:  # noqa: D401 - argparse's name
        raise UsageError(f"{message} (see --help)")


def build_parser(job: Job) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"marketlake {job.name}", description=job.help)
    parser.add_argument("--config", help="YAML config merged over the embedded default (conf/local.yaml)")
    parser.add_argument("--lake", help="lake root; overrides the config and MARKETLAKE_LAKE")
    parser.add_argument(
        "--run-date",
        type=parse_run_date,
        default=dt.datetime.now(dt.timezone.utc).date(),
        help="the date this run is for, YYYY-MM-DD (default: today, UTC)",
    )
    job.add_arguments(parser)
    return parser


def job_arguments(
    job: Job, *, run_date: dt.date, lake: str | None = None, config: str | None = None, force: bool = False
) -> argparse.Namespace:
    """The arguments of `job` run from another job (the pipeline): its parser's defaults, with the run
    date, lake root and config file given, and `force` for a job that accepts --force."""
    args = build_parser(job).parse_args([])
    args.run_date, args.lake, args.config = run_date, lake, config
    if job.accepts_force:
        args.force = force
    return args


def configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(name)s %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
    logging.getLogger("py4j").setLevel(logging.WARNING)


def run_cli(job: Job, argv: Sequence[str] | None = None) -> int:
    """Run `job` from the command line: parse, validate, start Spark, run, record; returns the exit code."""
    configure_logging()
    try:
        args = build_parser(job).parse_args(sys.argv[1:] if argv is None else argv)
        config = load_config(args.config)
        if args.lake:
            config = config.with_lake_root(args.lake)
        job.validate(args, config)
        from marketlake.java import ensure_java

        ensure_java()
    except UsageError as exc:
        print_error(f"marketlake {job.name}: {exc}")
        return exc.exit_code

    from marketlake.lake import Lake
    from marketlake.spark import build_session

    spark = build_session(config)
    try:
        lake = Lake(spark, config.lake)
    except UsageError as exc:
        print_error(f"marketlake {job.name}: {exc}")
        return exc.exit_code
    return run_job(job, args, spark, config, lake)


def run_job(job: Job, args: argparse.Namespace, spark: SparkSession, config: Config, lake: Lake) -> int:
    """Run one job in an existing session and record it in ops.job_runs; returns the exit code."""
    ctx = JobContext(job.name, spark, config, lake, args.run_date, uuid.uuid4().hex)
    started_at = dt.datetime.now(dt.timezone.utc)
    started = time.perf_counter()
    log.info(
        "%s | start | run_date=%s lake=%s engine=%s", job.name, args.run_date, lake.root, lake.engine_name
    )
    status, message, code = "succeeded", "", 0
    try:
        job.run(ctx, args)
    except MarketlakeError as exc:
        status, message, code = "failed", str(exc), exc.exit_code
    except Exception as exc:  # a failure during the run: one line on stderr, the trace in the log
        log.debug("%s", traceback.format_exc())
        problem = storage_problem(exc)
        summary = f"cannot write: {problem}" if problem else type(exc).__name__
        status, message, code = "failed", f"{summary}: {_first_line(exc)}", 1
    seconds = time.perf_counter() - started
    try:
        record_run(ctx, args, status, message, started_at, seconds, job.private_arguments)
    except Exception as exc:  # the run's own outcome matters more than its bookkeeping
        log.warning("%s | could not append to %s: %s", job.name, JOB_RUNS, _first_line(exc))
    counts_text = " ".join(f"{k}={v}" for k, v in ctx.counts.items())
    log.info("%s | %s | %s %.2fs", job.name, status, counts_text, seconds)
    if code:
        print_error(f"marketlake {job.name}: {message}")
    elif job.finish is not None:
        job.finish(ctx)
    return code


def print_error(line: str) -> None:
    """The one line a failure prints on stderr.

    Under spark-submit the driver's stderr is not the caller's: Spark's PythonRunner merges the Python
    process's stderr into its stdout (redirectErrorStream) and copies that to its own stdout. So
    spark-submit.sh names a file in MARKETLAKE_ERROR_FILE; the line goes there, and the script copies it
    to stderr once spark-submit exits. Where that file cannot be written (a driver on another machine, in
    cluster deploy mode), the line goes to stderr as without spark-submit.sh.
    """
    error_file = os.environ.get(ERROR_FILE_VARIABLE)
    if error_file:
        try:
            with open(error_file, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
            return
        except OSError:
            pass
    print(line, file=sys.stderr, flush=True)


def record_run(
    ctx: JobContext,
    args: argparse.Namespace,
    status: str,
    message: str,
    started_at: dt.datetime,
    seconds: float,
    private: tuple[str, ...] = (),
) -> None:
    from marketlake.lake.schema import spark_schema

    schema = spark_schema(catalog.JOB_RUNS)
    arguments = {
        k: WITHHELD if k in private else str(v)
        for k, v in vars(args).items()
        if v is not None and k != "func"
    }
    row = (
        ctx.run_id,
        ctx.job,
        ctx.run_date,
        status,
        message[:2000],
        started_at,
        dt.datetime.now(dt.timezone.utc),
        round(seconds, 3),
        {k: int(v) for k, v in ctx.counts.items()},
        json.dumps(arguments, sort_keys=True),
        ctx.lake.engine_name,
        ctx.spark.version,
        socket.gethostname(),
    )
    ctx.lake.write(JOB_RUNS, ctx.spark.createDataFrame([row], schema), mode="append")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

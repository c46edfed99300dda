"""pipeline: every job in order for one run date (ingest to housekeeping), skipping those already done unless
--force. The synthetic shop generator runs first only when asked for: --generate, or generate in --only."""

from __future__ import annotations

import argparse

from pyspark.sql import functions as F

from marketlake.config import Config
from marketlake.errors import MarketlakeError, UsageError
from marketlake.jobs import GENERATE, ON_DEMAND, QUESTIONS, available_jobs, get_job
from marketlake.runner import JOB_RUNS, Job, JobContext, job_arguments, run_job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="re-run steps already done for this run date")
    parser.add_argument("--only", help="comma-separated subset of jobs to run, in pipeline order")
    parser.add_argument(
        "--generate",
        action="store_true",
        help="first write the synthetic demo shop into the landing folder (the generate job); demos and tests only",
    )


def validate(args: argparse.Namespace, config: Config) -> None:
    for name in _selected(args):
        get_job(name)


def _selected(args: argparse.Namespace) -> list[str]:
    """The jobs to run, in order: generate first when asked for, then those of the production order."""
    jobs = available_jobs()
    wanted: list[str] = []
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        for name in wanted:
            get_job(name)
            if name in QUESTIONS:
                raise UsageError(
                    f"--only: {name} answers a question and is no pipeline step; run it on its own"
                )
            if name in ON_DEMAND:
                raise UsageError(f"--only: {name} runs on request and is no pipeline step; run it on its own")
        jobs = [name for name in jobs if name in wanted]
    if args.generate or GENERATE in wanted:
        jobs = [GENERATE, *jobs]
    return jobs


def done_for(ctx: JobContext) -> set[str]:
    """Jobs with a succeeded run for this run date."""
    if not ctx.lake.exists(JOB_RUNS):
        return set()
    rows = (
        ctx.lake.read(JOB_RUNS)
        .filter((F.col("run_date") == F.lit(ctx.run_date)) & (F.col("status") == "succeeded"))
        .select("job")
        .distinct()
        .collect()  # at most one row per job name
    )
    return {row.job for row in rows}


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    jobs = _selected(args)
    done = set() if args.force else done_for(ctx)
    ran = 0
    for name in jobs:
        if name in done:
            ctx.counts[f"skipped_{name}"] = 1
            ctx.note(f"{name} (already done for {ctx.run_date}; --force re-runs it)")
            continue
        job = get_job(name)
        # --force goes on to the jobs that have it (ingest re-reads its files).
        job_args = job_arguments(
            job, run_date=ctx.run_date, lake=ctx.lake.root, config=args.config, force=args.force
        )
        job.validate(job_args, ctx.config)
        code = run_job(job, job_args, ctx.spark, ctx.config, ctx.lake)
        if code:
            raise MarketlakeError(f"step {name} failed (exit {code}); later steps were not run")
        ran += 1
    ctx.counts["jobs_run"] = ran


def print_tables(ctx: JobContext) -> None:
    tables = ctx.lake.tables()
    lines = [
        f"\nmarketlake: {len(tables)} Delta tables under {ctx.lake.root} (engine {ctx.lake.engine_name})"
    ]
    for table, version, rows in tables:
        lines.append(f"  {table:<28} version {version:<4} {rows:>12,} rows   {ctx.lake.path(table)}")
    example = ctx.lake.path(tables[0][0]) if tables else f"{ctx.lake.root}/ops/job_runs"
    lines += [
        "Look at them with any Delta reader, for example:",
        f"  .venv/bin/python -c \"from deltalake import DeltaTable; print(DeltaTable('{example}').to_pandas())\"",
        f"  .venv/bin/python -c \"import polars as pl; print(pl.read_delta('{example}'))\"   # with the dev extra",
        "",
    ]
    report = ctx.lake.report_path(ctx.run_date)
    if ctx.lake.files.is_file(report):
        lines += [f"The report for {ctx.run_date}: {report}", ""]
    print("\n".join(lines), flush=True)


JOB = Job(
    name="pipeline",
    help=__doc__.strip(),
    run=run,
    add_arguments=add_arguments,
    validate=validate,
    finish=print_tables,
)

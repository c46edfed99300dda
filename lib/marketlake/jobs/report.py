"""report: one self-contained HTML file for the run date, at <lake root>/reports/<run date>/marketlake-report.html
(replaced on a re-run): segment sizes and profiles, silhouette by k, the RFM distribution, top association
rules, recommendation quality against the popularity baseline, who will buy (purchase propensity: gain and
calibration, the candidates' test metrics, scores by decile), campaign audiences and experiment results
(the intervals and p-values of the test that decided them), each section with what a marketer can do with
it, a glossary of its terms, amounts in report.currency. Every number comes from the gold tables of the run
date; a section whose table is missing says so and names the job that makes it. Prints the file's path at
the end."""

from __future__ import annotations

import argparse
import datetime as dt

from marketlake.report import Display, Money, build, gather, render
from marketlake.runner import Job, JobContext


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    with ctx.step("read the gold tables"):
        data = gather(ctx.lake, ctx.run_date, ctx.config.report.top_rules)
    with ctx.step("charts and tables") as step:
        display = Display(Money(ctx.config.report.currency), 1 - ctx.config.experiment.alpha)
        sections = build(data, display)
        missing = [section.title for section in sections if section.missing]
        step.rows = len(sections)
        step.detail = f"incomplete: {', '.join(missing)}" if missing else "all sections complete"
    html = render(data, sections, dt.datetime.now(dt.timezone.utc))
    path = ctx.lake.report_path(ctx.run_date)
    with ctx.step(f"write {path}") as step:
        ctx.lake.files.write_text(path, html)
        step.detail = f"{len(html) / 1024:,.0f} KiB"
    ctx.counts.update(
        sections=len(sections), incomplete_sections=len(missing), charts=sum(len(s.charts) for s in sections)
    )


def print_path(ctx: JobContext) -> None:
    print(f"report: {ctx.lake.report_path(ctx.run_date)}", flush=True)


JOB = Job(name="report", help=__doc__.strip(), run=run, finish=print_path)

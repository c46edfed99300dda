"""The marketing report: one self-contained HTML file per run date, built from the gold tables alone.

`gather` (data.py) reads the lake into a typed `ReportData`: every figure is a small Spark aggregate of a
gold (or ops) table filtered to the run date, brought to the driver as a pandas frame. `build`
(sections.py) turns each section's data into a `Section` of facts, tables and matplotlib charts
(charts.py: PNG, inlined as base64 so the file needs nothing beside it; values written by format.py), and
`render` fills the jinja2 template. A table that is absent, or has no rows for the run date, makes its
section say so and name the job that writes it, instead of failing the report.
"""

from __future__ import annotations

import datetime as dt

import jinja2

from marketlake.lake import Files, Layout
from marketlake.report.charts import Chart
from marketlake.report.data import Absent, Frame, ReportData, gather
from marketlake.report.format import Display, Money, count
from marketlake.report.glossary import TERMS
from marketlake.report.sections import RUNS, Section, Table, build, runs_table

__all__ = [
    "Absent",
    "Chart",
    "Display",
    "Frame",
    "Money",
    "ReportData",
    "Section",
    "Table",
    "build",
    "gather",
    "render",
    "report_exists",
    "report_path",
]

# The headline cards after "customers": facts of the sections, by label.
HEADLINE = ["segments", "rules", "expected buyers", "campaigns", "to contact", "experiments"]


def report_path(root: str, run_date: dt.date) -> str:
    """`lake.report_path(run_date)` for callers that hold only the lake root."""
    return Layout(root).report_path(run_date)


def report_exists(path: str) -> bool:
    """Whether the report file is there (on the lake's own store, `lake.files.is_file` is the same)."""
    return Files().is_file(path)


def render(data: ReportData, sections: list[Section], generated_at: dt.datetime) -> str:
    """The report's HTML page."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("marketlake", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    facts = {label: value for section in sections for label, value in section.facts}
    labels = data.rfm.labels
    headline = [
        ("customers", "-" if isinstance(labels, Absent) else count(labels.users.sum())),
        *[(label, facts.get(label, "-")) for label in HEADLINE],
    ]
    return environment.get_template("report.html.j2").render(
        run_date=data.run_date.isoformat(),
        lake_root=data.lake_root,
        generated_at=generated_at.strftime("%Y-%m-%d %H:%M UTC"),
        sections=sections,
        headline=headline,
        missing=[(section, message) for section in sections for message in section.missing],
        runs=None if isinstance(data.runs, Absent) else runs_table(data.runs),
        runs_absent=data.runs.message if isinstance(data.runs, Absent) else "",
        runs_heading=RUNS,
        glossary=TERMS,
    )

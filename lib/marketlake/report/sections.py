"""The report's sections, each built from its typed data.

A section is a `Heading` (id, title, lead sentence, source note) and one or more parts: a part is a
function that turns the frames it needs into `Content` (facts, charts, tables, notes). `Heading.section`
is the one place that puts a section together and handles missing data: a part whose frames are not
all there adds the `Absent` message to the section's missing box instead of its content.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from marketlake import catalog
from marketlake.features import INACTIVE, PROSPECTS, RFM_GRID
from marketlake.report import charts
from marketlake.report.charts import Chart
from marketlake.report.data import (
    AUDIENCE,
    CROSS_SELL,
    EVALUATION,
    EXPERIMENTS,
    FEATURES,
    MODELS,
    PROFILES,
    RECOMMENDATIONS,
    RULES,
    SEGMENT_MODEL,
    Absent,
    AudiencesData,
    ExperimentsData,
    Frame,
    RecommendationsData,
    ReportData,
    RfmData,
    RulesData,
    SegmentsData,
    SilhouetteData,
)
from marketlake.report.format import (
    Formatter,
    count,
    fixed,
    money,
    number,
    number_or_count,
    p_value,
    probability,
    share,
    signed,
    signed_share,
    timestamp,
    with_interval,
)

RFM_ORDER = [label for label, _, _ in RFM_GRID] + [PROSPECTS, INACTIVE]


@dataclass(frozen=True)
class Table:
    id: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...]
    caption: str = ""


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    intro: str
    source: str
    missing: tuple[str, ...] = ()
    facts: tuple[tuple[str, str], ...] = ()
    charts: tuple[Chart, ...] = ()
    tables: tuple[Table, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Content:
    """What one part of a section shows."""

    facts: tuple[tuple[str, str], ...] = ()
    charts: tuple[Chart, ...] = ()
    tables: tuple[Table, ...] = ()
    notes: tuple[str, ...] = ()


def part(make: Callable[..., Content], *frames: Frame) -> Content | Absent:
    """`make(*frames)`, or the first of the frames that is absent."""
    for frame in frames:
        if isinstance(frame, Absent):
            return frame
    return make(*frames)


@dataclass(frozen=True)
class Heading:
    id: str
    title: str
    intro: str  # the lead sentence: what the section shows and how to read it
    source: str  # where its figures come from

    def section(self, *parts: Content | Absent) -> Section:
        """The section under this heading: the parts' content in order, and why each absent part is missing."""
        filled = [p for p in parts if isinstance(p, Content)]
        return Section(
            self.id,
            self.title,
            self.intro,
            self.source,
            missing=tuple(p.message for p in parts if isinstance(p, Absent)),
            facts=tuple(fact for p in filled for fact in p.facts),
            charts=tuple(chart for p in filled for chart in p.charts),
            tables=tuple(t for p in filled for t in p.tables),
            notes=tuple(note for p in filled for note in p.notes),
        )


def source_note(*tables: catalog.Table, detail: str = "") -> str:
    """Where a section's figures come from: 'gold.x, gold.y (x job)'."""
    names = ", ".join(t.name for t in tables) + (f", {detail}" if detail else "")
    return f"{names} ({tables[0].written_by[0]} job)"


def table(
    id: str, frame: pd.DataFrame, columns: dict[str, tuple[str, Formatter | None]], caption: str = ""
) -> Table:
    """A Table from a frame: columns maps frame column -> (heading, formatter); a column with a formatter is
    set as a number (right-aligned, unbroken), one with None as text."""
    rows = tuple(
        tuple(
            str(value) if format_ is None else format_(value)
            for value, (_, format_) in zip(record, columns.values(), strict=True)
        )
        for record in frame[list(columns)].itertuples(index=False, name=None)
    )
    return Table(
        id,
        tuple(heading for heading, _ in columns.values()),
        rows,
        tuple(f is not None for _, f in columns.values()),
        caption,
    )


# ---- customer segments -------------------------------------------------------------------------------

SEGMENTS = Heading(
    "segments",
    "Customer segments",
    "KMeans segments of the customers' behaviour, largest first in the chart; the table gives each segment's "
    "average customer and the strategy suggested for it.",
    source_note(PROFILES),
)


def segments_section(data: SegmentsData) -> Section:
    return SEGMENTS.section(part(segments_content, data.profiles))


def segments_content(profiles: pd.DataFrame) -> Content:
    return Content(
        facts=(
            ("segments", count(len(profiles))),
            ("customers", count(profiles["size"].sum())),
            ("silhouette", number(profiles.silhouette.iloc[0], 3)),
            ("model", str(profiles.model_version.iloc[0])),
        ),
        charts=(charts.segment_sizes(profiles), charts.segment_profiles(profiles)),
        tables=(
            table(
                "segment-profiles",
                profiles,
                {
                    "segment_name": ("segment", None),
                    "size": ("customers", count),
                    "share": ("share", share),
                    "buyer_share": ("buyers", share),
                    "mean_recency_days": ("days since visit", fixed(1)),
                    "mean_frequency": ("orders", fixed(2)),
                    "mean_monetary": ("revenue", money),
                    "mean_avg_order_value": ("order value", money),
                    "mean_purchase_rate": ("session conversion", share),
                    "strategy": ("strategy", None),
                },
            ),
        ),
    )


# ---- silhouette by k ---------------------------------------------------------------------------------

SILHOUETTE = Heading(
    "silhouette",
    "Silhouette by number of segments",
    "How well separated the segments are for each number of segments tried (higher is better, at most 1); "
    "the highest was chosen.",
    f"{MODELS.name}, model {SEGMENT_MODEL} (segment job)",
)


def silhouette_section(data: SilhouetteData) -> Section:
    return SILHOUETTE.section(part(silhouette_content, data.scores))


def silhouette_content(scores: pd.DataFrame) -> Content:
    return Content(
        charts=(charts.silhouette_by_k(scores),),
        tables=(
            table(
                "silhouette-by-k",
                scores.assign(pick=scores.chosen.map({True: "chosen", False: ""})),
                {"k": ("k", count), "silhouette": ("silhouette", number), "pick": ("", None)},
            ),
        ),
    )


# ---- RFM distribution --------------------------------------------------------------------------------

RFM = Heading(
    "rfm",
    "RFM distribution",
    "Customers by RFM label (recency and frequency scores 1-5 among buyers); the grid counts buyers by their "
    "two scores. Prospects browsed without buying; Inactive had no events in the window.",
    source_note(FEATURES),
)


def rfm_section(data: RfmData) -> Section:
    return RFM.section(part(rfm_content, data.labels, data.grid))


def rfm_content(labels: pd.DataFrame, grid: pd.DataFrame) -> Content:
    order = {label: i for i, label in enumerate(RFM_ORDER)}
    labels = labels.assign(order=labels.rfm_label.map(order).fillna(len(order))).sort_values(
        ["order", "rfm_label"]
    )
    total = labels.users.sum()
    labels = labels.assign(share=labels.users / total)
    return Content(
        facts=(("customers", count(total)), ("buyers", count(int(grid["count"].sum())))),
        charts=(charts.rfm_labels_and_grid(labels, grid),),
        tables=(
            table(
                "rfm-labels",
                labels,
                {
                    "rfm_label": ("RFM label", None),
                    "users": ("customers", count),
                    "share": ("share", share),
                    "orders": ("orders (mean)", fixed(2)),
                    "revenue": ("revenue (mean)", money),
                },
            ),
        ),
    )


# ---- association rules -------------------------------------------------------------------------------

RULES_HEADING = Heading(
    "rules",
    "Top association rules",
    "Items bought together, strongest first by lift (how many times likelier the second item is in a basket "
    "that has the first). Support: share of baskets with both; confidence: share of the first item's "
    "baskets that also have the second.",
    source_note(RULES, CROSS_SELL),
)


def rules_section(data: RulesData) -> Section:
    make = functools.partial(rules_content, cross_sell_items=data.cross_sell_items, names=data.item_names)
    return RULES_HEADING.section(part(make, data.rules, data.summary))


def rules_content(
    rules: pd.DataFrame, summary: pd.DataFrame, *, cross_sell_items: Frame, names: dict[str, str]
) -> Content:
    totals = summary.iloc[0]
    facts = [
        ("rules", count(totals.rules)),
        ("highest lift", number(totals.max_lift, 1)),
        ("mean confidence", share(totals.mean_confidence)),
    ]
    if not isinstance(cross_sell_items, Absent):
        facts.append(("items with cross-sell", count(cross_sell_items["items"].iloc[0])))
    if rules.empty:
        return Content(facts=tuple(facts), notes=("No rule met the thresholds on this date.",))

    def named(text: str) -> str:
        return " + ".join(
            f"{item} ({names[item]})" if names.get(item) else item for item in text.split(" + ")
        )

    shown = rules.assign(antecedent=rules.antecedent.map(named), consequent=rules.consequent.map(named))
    return Content(
        facts=tuple(facts),
        tables=(
            table(
                "top-rules",
                shown,
                {
                    "antecedent": ("customers who buy", None),
                    "consequent": ("also buy", None),
                    "support": ("support", number),
                    "confidence": ("confidence", share),
                    "lift": ("lift", fixed(2)),
                },
            ),
        ),
    )


# ---- recommendation quality --------------------------------------------------------------------------

RECOMMENDATIONS_HEADING = Heading(
    "recommendations",
    "Recommendation quality",
    "Held-out evaluation of the ALS recommendations against the popularity baseline (the same items for "
    "everyone) at each cut-off k; higher is better.",
    source_note(EVALUATION, RECOMMENDATIONS),
)


def recommendations_section(data: RecommendationsData) -> Section:
    return RECOMMENDATIONS_HEADING.section(
        part(evaluation_content, data.evaluation), part(sources_content, data.sources)
    )


def evaluation_content(evaluation: pd.DataFrame) -> Content:
    wide = evaluation.pivot_table(
        index=["metric", "k"], columns="model", values="value", aggfunc="first"
    ).reset_index()
    for model in ("als", "popularity"):
        if model not in wide:
            wide[model] = math.nan
    users = evaluation.groupby(["metric", "k"]).users.max().rename("users").reset_index()
    splits = evaluation.groupby(["metric", "k"]).split.first().rename("split").reset_index()
    wide = (
        wide.merge(users, on=["metric", "k"]).merge(splits, on=["metric", "k"]).sort_values(["metric", "k"])
    )
    wide["ratio"] = wide.als / wide.popularity.where(wide.popularity != 0)
    versions = sorted({str(v) for v in evaluation.model_version.dropna()})
    return Content(
        facts=(("model", ", ".join(versions)),) if versions else (),
        charts=(charts.recommendation_quality(wide),),
        tables=(
            table(
                "recommendation-evaluation",
                wide,
                {
                    "metric": ("metric", None),
                    "k": ("k", count),
                    "als": ("ALS", number),
                    "popularity": ("popularity", number),
                    "ratio": ("ALS / popularity", fixed(2)),
                    "users": ("users", count),
                    "split": ("split", None),
                },
            ),
        ),
    )


def sources_content(sources: pd.DataFrame) -> Content:
    return Content(
        tables=(
            table(
                "recommendation-sources",
                sources,
                {"source": ("source", None), "users": ("users", count), "rows": ("recommendations", count)},
                caption="Where the recommendations come from: ALS, or the fallbacks for users ALS cannot score.",
            ),
        ),
    )


# ---- campaign audiences ------------------------------------------------------------------------------

AUDIENCES = Heading(
    "audiences",
    "Campaign audiences",
    "Who each campaign reaches: the treatment gets the message, the control is held out at random to "
    "measure what the campaign adds.",
    source_note(AUDIENCE),
)


def audiences_section(data: AudiencesData) -> Section:
    return AUDIENCES.section(part(audiences_content, data.audience, data.offers))


def audiences_content(audience: pd.DataFrame, offers: pd.DataFrame) -> Content:
    if audience.empty:
        return Content(notes=("No campaign had an audience on this date.",))
    audience = audience.assign(actual_share=audience.control / audience.audience)
    return Content(
        facts=(
            ("campaigns", count(len(audience))),
            ("to contact", count(audience.treatment.sum())),
            ("held out", count(audience.control.sum())),
        ),
        charts=(charts.audience_sizes(audience),),
        tables=(
            table(
                "audiences",
                audience,
                {
                    "campaign_id": ("campaign", None),
                    "channel": ("channel", None),
                    "audience": ("audience", count),
                    "treatment": ("treatment", count),
                    "control": ("control", count),
                    "actual_share": ("control share", share),
                    "control_share": ("configured", share),
                    "with_items": ("with recommendations", count),
                    "with_cross_sell": ("with cross-sell", count),
                },
            ),
            table(
                "offers",
                offers,
                {"campaign_id": ("campaign", None), "offer": ("offer", None), "users": ("customers", count)},
                caption="Offers per campaign (treatment and control).",
            ),
        ),
    )


# ---- experiment results ------------------------------------------------------------------------------

EXPERIMENTS_HEADING = Heading(
    "experiments",
    "Experiment results",
    "Each variant against its control: the lift with its 95% confidence interval (a bar that crosses 0 is "
    "not a clear win or loss), the p-value adjusted for multiple comparisons, the probability that the "
    "variant beats the control (P(better)), and a sample-ratio check.",
    source_note(EXPERIMENTS),
)


def experiments_section(data: ExperimentsData) -> Section:
    return EXPERIMENTS_HEADING.section(part(experiments_content, data.results))


def experiments_content(results: pd.DataFrame) -> Content:
    # CUPED rows repeat a metric with adjusted figures: say so wherever the metric is named.
    results = results.assign(
        metric=[
            f"{m} (CUPED)" if pd.notna(c) and bool(c) else m
            for m, c in zip(results.metric, results.cuped, strict=True)
        ]
    )
    variants = results[~results.is_control.astype(bool)]
    control = results.is_control.astype(bool)
    shown = results.assign(
        variant=[
            f"{v} (control)" if c and v != "control" else str(v)
            for v, c in zip(results.variant, control, strict=True)
        ],
        lift_ci=[
            with_interval(v, lo, hi, signed)
            for v, lo, hi in zip(results.lift, results.ci_low, results.ci_high, strict=True)
        ],
        relative_ci=[
            with_interval(v, lo, hi, signed_share)
            for v, lo, hi in zip(results.lift_relative, results.rel_ci_low, results.rel_ci_high, strict=True)
        ],
        srm_flag=results.srm.map(lambda v: "mismatch" if v is True or v == 1 else "ok"),
        decision=results.decision.fillna("-"),  # a control row has none unless the split is off
    )
    mismatches = results.drop_duplicates(["experiment_id", "source"]).srm.fillna(False).astype(bool).sum()
    return Content(
        facts=(
            ("experiments", count(results.experiment_id.nunique())),
            ("sample-ratio mismatches", count(mismatches)),
        ),
        charts=() if variants.empty else (charts.lift_forest(variants),),
        tables=(
            table(
                "experiment-results",
                shown,
                {
                    "experiment_id": ("experiment", None),
                    "metric": ("metric", None),
                    "variant": ("variant", None),
                    "users": ("users", count),
                    "conversions": ("conversions", number_or_count),
                    "rate": ("rate", number),
                    "lift_ci": ("lift (95% CI)", str),
                    "relative_ci": ("relative (95% CI)", str),
                    "p_value_adjusted": ("p (adjusted)", p_value),
                    "prob_beat_control": ("P(better)", probability),
                    "srm_flag": ("sample ratio", None),
                    "decision": ("decision", None),
                },
            ),
        ),
    )


# ---- the whole report --------------------------------------------------------------------------------


def build(data: ReportData) -> list[Section]:
    """The report's sections, in page order."""
    return [
        segments_section(data.segments),
        silhouette_section(data.silhouette),
        rfm_section(data.rfm),
        rules_section(data.rules),
        recommendations_section(data.recommendations),
        audiences_section(data.audiences),
        experiments_section(data.experiments),
    ]


def runs_table(runs: pd.DataFrame) -> Table:
    """The latest run of each job for the date."""
    return table(
        "job-runs",
        runs,
        {
            "job": ("job", None),
            "status": ("status", None),
            "ended_at": ("finished (UTC)", timestamp),
            "seconds": ("seconds", fixed(1)),
        },
    )

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
from marketlake.config import PROPENSITY_BASELINE
from marketlake.experiment import CONVERSION, REVENUE
from marketlake.features import INACTIVE, PROSPECTS, RFM_GRID
from marketlake.report import charts
from marketlake.report.charts import Chart
from marketlake.report.data import (
    AUDIENCE,
    CROSS_SELL,
    EVALUATION,
    EXPERIMENTS,
    FEATURES,
    JOB_RUNS,
    MODELS,
    PROFILES,
    PROPENSITY_DECILES,
    PROPENSITY_EVALUATION,
    RECOMMENDATIONS,
    RULES,
    SCORES,
    SEGMENT_MODEL,
    Absent,
    AudiencesData,
    ExperimentsData,
    Frame,
    PropensityData,
    RecommendationsData,
    ReportData,
    RfmData,
    RulesData,
    SegmentsData,
    SilhouetteData,
)
from marketlake.report.format import (
    Display,
    Formatter,
    Money,
    count,
    fixed,
    number,
    one_in,
    p_value,
    percent,
    points,
    probability,
    share,
    signed_share,
    times,
    timestamp,
    with_interval,
)
from marketlake.report.glossary import TERMS

RFM_ORDER = [label for label, _, _ in RFM_GRID] + [PROSPECTS, INACTIVE]


@dataclass(frozen=True)
class Table:
    id: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...]
    caption: str = ""
    # Per column: the glossary term its heading links to (None: none), and the heading's tooltip (what the
    # term means and the column it comes from, for the data engineers).
    terms: tuple[str | None, ...] = ()
    tooltips: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    intro: str
    action: str
    source: str
    terms: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    facts: tuple[tuple[str, str], ...] = ()
    findings: tuple[str, ...] = ()
    charts: tuple[Chart, ...] = ()
    tables: tuple[Table, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Content:
    """What one part of a section shows: findings are the plain sentences to read first, notes the fine
    print."""

    facts: tuple[tuple[str, str], ...] = ()
    findings: tuple[str, ...] = ()
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
    action: str  # one plain sentence: what a marketer can do with it
    source: str  # where its figures come from
    terms: tuple[str, ...] = ()  # the glossary terms the section uses, linked under its intro

    def section(self, *parts: Content | Absent) -> Section:
        """The section under this heading: the parts' content in order, and why each absent part is missing."""
        filled = [p for p in parts if isinstance(p, Content)]
        return Section(
            self.id,
            self.title,
            self.intro,
            self.action,
            self.source,
            terms=self.terms,
            missing=tuple(p.message for p in parts if isinstance(p, Absent)),
            facts=tuple(fact for p in filled for fact in p.facts),
            findings=tuple(line for p in filled for line in p.findings),
            charts=tuple(chart for p in filled for chart in p.charts),
            tables=tuple(t for p in filled for t in p.tables),
            notes=tuple(note for p in filled for note in p.notes),
        )


def source_note(*tables: catalog.Table, detail: str = "") -> str:
    """Where a section's figures come from: 'gold.x, gold.y (x job)'."""
    names = ", ".join(t.name for t in tables) + (f", {detail}" if detail else "")
    return f"{names} ({tables[0].written_by[0]} job)"


def table(
    id: str,
    frame: pd.DataFrame,
    columns: dict[str, tuple[str, Formatter | None]],
    caption: str = "",
    terms: dict[str, str] | None = None,
    technical: dict[str, str] | None = None,
) -> Table:
    """A Table from a frame: columns maps frame column -> (heading, formatter); a column with a formatter is
    set as a number (right-aligned, unbroken), one with None as text. terms: frame column -> the glossary
    term its heading links to; technical: frame column -> the table columns it shows (default: its own
    name), for the heading's tooltip."""
    terms, technical = terms or {}, technical or {}
    rows = tuple(
        tuple(
            str(value) if format_ is None else format_(value)
            for value, (_, format_) in zip(record, columns.values(), strict=True)
        )
        for record in frame[list(columns)].itertuples(index=False, name=None)
    )

    def tooltip(column: str) -> str:
        term = terms.get(column)
        source = f"column: {technical.get(column, column)}"
        return f"{TERMS[term].plain} ({source})" if term else source

    return Table(
        id,
        tuple(heading for heading, _ in columns.values()),
        rows,
        tuple(f is not None for _, f in columns.values()),
        caption,
        tuple(terms.get(column) for column in columns),
        tuple(tooltip(column) for column in columns),
    )


# ---- customer segments -------------------------------------------------------------------------------

SEGMENTS = Heading(
    "segments",
    "Customer segments",
    "Customers grouped by how they behave (how recently and how often they visit and buy, how much they "
    "spend), largest group first in the chart; the table gives each segment's average customer and a "
    "suggested strategy.",
    "Give each segment its own message and offer (the strategy column suggests one), and pick campaign "
    "targets by segment.",
    source_note(PROFILES),
    ("segment", "silhouette"),
)


def segments_section(data: SegmentsData, money: Money) -> Section:
    return SEGMENTS.section(part(functools.partial(segments_content, money=money), data.profiles))


def segments_content(profiles: pd.DataFrame, *, money: Money) -> Content:
    return Content(
        facts=(
            ("segments", count(len(profiles))),
            ("customers", count(profiles["size"].sum())),
            ("silhouette", number(profiles.silhouette.iloc[0], 3)),
            ("model", str(profiles.model_version.iloc[0])),
        ),
        charts=(charts.segment_sizes(profiles), charts.segment_profiles(profiles, money.currency)),
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
                caption="Each segment's average customer: revenue is what they spent in the window, order "
                "value what they spent per order; session conversion is the share of their visits with a "
                "purchase.",
                terms={"segment_name": "segment"},
            ),
        ),
    )


# ---- silhouette by k ---------------------------------------------------------------------------------

SILHOUETTE = Heading(
    "silhouette",
    "How distinct the segments are",
    "How clearly the customer groups are apart (the silhouette, at most 1) and how stable they are (the "
    "stability: how far two models fitted on different halves of the customers agree, at most 1) for each "
    "number of segments tried; the clearest among the stable ones (stability at least 0.9) was chosen.",
    "Use it to judge how far to trust the segments: above about 0.5 treat them as distinct customer types, "
    "below about 0.25 as rough groupings only.",
    f"{MODELS.name}, model {SEGMENT_MODEL} (segment job)",
    ("silhouette", "segment"),
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
                {
                    "k": ("k", count),
                    "silhouette": ("silhouette", number),
                    **({"stability": ("stability", number)} if scores.stability.notna().any() else {}),
                    "pick": ("", None),
                },
                terms={"silhouette": "silhouette"},
                technical={"k": "k (number of segments)", "pick": "chosen"},
            ),
        ),
    )


# ---- RFM distribution --------------------------------------------------------------------------------

RFM = Heading(
    "rfm",
    "Customers by recency and frequency (RFM)",
    "Customers by RFM label: buyers are scored 1 to 5 on how recently and how often they bought, and the "
    "grid counts buyers by those two scores. Prospects browsed without buying; Inactive had no activity in "
    "the window.",
    "Reward Champions and Loyal customers, win back those At Risk or Hibernating before they lapse, and "
    "turn Prospects into buyers with a first-purchase offer.",
    source_note(FEATURES),
    ("rfm",),
)


def rfm_section(data: RfmData, money: Money) -> Section:
    return RFM.section(part(functools.partial(rfm_content, money=money), data.labels, data.grid))


def rfm_content(labels: pd.DataFrame, grid: pd.DataFrame, *, money: Money) -> Content:
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
                terms={"rfm_label": "rfm"},
                technical={"orders": "mean of frequency", "revenue": "mean of monetary"},
            ),
        ),
    )


# ---- association rules -------------------------------------------------------------------------------

RULES_HEADING = Heading(
    "rules",
    "Items bought together",
    "Pairs of items that land in the same baskets, strongest link first (lift: how many times likelier the "
    "second item is in a basket that has the first).",
    "Use the pairs for cross-selling: show the second item on the first one's page, in the basket or in a "
    "follow-up email, and bundle the strongest pairs.",
    source_note(RULES, CROSS_SELL),
    ("rule-lift", "support", "confidence"),
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
                terms={"support": "support", "confidence": "confidence", "lift": "rule-lift"},
            ),
        ),
    )


# ---- recommendation quality --------------------------------------------------------------------------

RECOMMENDATIONS_HEADING = Heading(
    "recommendations",
    "Recommendation quality",
    "How well the personal recommendations (ALS) found what customers went on to buy or use in a held-out "
    "period, against recommending the best-sellers to everyone (the popularity baseline), for lists of k "
    "items; higher is better.",
    "Use personal recommendations in emails and on the site where they beat the best-sellers (ratio above "
    "1); where they do not, the best-sellers do as well.",
    source_note(EVALUATION, RECOMMENDATIONS),
    ("als", "popularity-baseline", "precision-at-k", "recall-at-k", "ndcg", "map", "coverage"),
)
# The evaluation's metric names, in plain words (the technical name kept in brackets).
METRIC_LABELS = {
    "precision": "hits among the k (precision@k)",
    "recall": "purchases found (recall@k)",
    "ndcg": "ranking quality (nDCG)",
    "map": "ranking quality (MAP)",
    "coverage": "catalogue recommended (coverage)",
}


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
    shown = wide.assign(label=wide.metric.map(lambda m: METRIC_LABELS.get(m, m)))
    return Content(
        facts=(("model", ", ".join(versions)),) if versions else (),
        charts=(charts.recommendation_quality(wide),),
        tables=(
            table(
                "recommendation-evaluation",
                shown,
                {
                    "label": ("measure", None),
                    "k": ("k", count),
                    "als": ("ALS", number),
                    "popularity": ("best-sellers", number),
                    "ratio": ("ALS / best-sellers", fixed(2)),
                    "users": ("users", count),
                    "split": ("held-out period", None),
                },
                caption="Each measure for lists of k items: personal recommendations (ALS) against the "
                "best-sellers for everyone; the measures are explained in the glossary.",
                terms={"als": "als", "popularity": "popularity-baseline"},
                technical={"label": "metric", "popularity": "model popularity", "als": "model als"},
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
                caption="Where the recommendations come from: ALS, or the fallbacks (best-sellers) for users "
                "ALS cannot score.",
            ),
        ),
    )


# ---- campaign audiences ------------------------------------------------------------------------------

AUDIENCES = Heading(
    "audiences",
    "Campaign audiences",
    "Who each campaign reaches: the treatment gets the message, the control group is held out at random to "
    "measure what the campaign adds.",
    "Send each campaign to its treatment only (the exports hold it) and leave the control group out, so "
    "that the campaign's effect can be measured against it.",
    source_note(AUDIENCE),
    ("control-group",),
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
                terms={"control": "control-group", "actual_share": "control-group"},
                technical={"actual_share": "control / audience", "control_share": "control_share (config)"},
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
    "Each variant against its control: how many users saw it and what they did (buyers and conversion "
    "rate, or revenue and revenue per user), the difference with its interval, the p-value, and the "
    "decision with its reason.",
    "Act on the decision: roll out the variants marked ship, drop those marked do not ship, leave those "
    "marked keep running on; an experiment whose split check fails must be fixed and restarted.",
    source_note(EXPERIMENTS),
    (
        "conversion-rate",
        "revenue-per-user",
        "lift",
        "percentage-points",
        "interval",
        "p-value",
        "sequential",
        "fixed-horizon",
        "prob-beat-control",
        "cuped",
        "srm",
        "value-cap",
        "control-group",
    ),
)
SEQUENTIAL, FIXED = "sequential", "fixed"
# Each test's figures in gold.experiment_results: interval of the difference, of the relative difference,
# and the adjusted p-value. A row shows those of its decision_test only.
TEST_COLUMNS = {
    SEQUENTIAL: (
        "sequential_ci_low",
        "sequential_ci_high",
        "sequential_rel_ci_low",
        "sequential_rel_ci_high",
        "sequential_p_value_adjusted",
    ),
    FIXED: ("ci_low", "ci_high", "rel_ci_low", "rel_ci_high", "p_value_adjusted"),
}
TEST_NAMES = {SEQUENTIAL: "sequential", FIXED: "fixed-horizon"}
TEST_TERMS = {SEQUENTIAL: "sequential", FIXED: "fixed-horizon"}
TEST_NOTES = {
    SEQUENTIAL: "These figures stay valid however often you look; stop when the decision is ship or do not "
    "ship.",
    FIXED: "Read these figures only at the planned end of the experiment: looking every day and stopping at "
    "the first significant result makes false winners several times likelier (in simulated two-week "
    "experiments without any effect: 22% called a winner when read daily, 5% when read once).",
}
SHOWN_FIGURES = ("low", "high", "rel_low", "rel_high", "p_shown")  # TEST_COLUMNS as the report names them
LATER_COLUMNS = (
    *TEST_COLUMNS[SEQUENTIAL],
    "sequential_p_value",
    "decision_test",
    "decision_reason",
    "value_cap",
    "capped_users",
)


@dataclass(frozen=True)
class MetricLabels:
    """How the report names a metric's figures: `conversions` holds the total and `rate` the per-user
    figure (for revenue_per_user the revenue and revenue per user)."""

    id: str  # in the table's id
    name: str  # the metric in a sentence
    total: str
    per_user: str
    term: str  # the glossary term of the per-user figure
    amounts: bool  # revenue: totals, per-user figures and differences are amounts of the currency


METRICS = {
    CONVERSION: MetricLabels(
        "conversion", "conversion rate", "buyers", "conversion rate", "conversion-rate", False
    ),
    REVENUE: MetricLabels(
        "revenue", "revenue per user", "revenue", "revenue per user", "revenue-per-user", True
    ),
}


def metric_labels(metric: str) -> MetricLabels:
    """The labels of a metric; one the report does not know is named by its own name."""
    return METRICS.get(metric, MetricLabels(metric, metric, "total", "per user", "lift", False))


def experiments_section(data: ExperimentsData, display: Display) -> Section:
    return EXPERIMENTS_HEADING.section(
        part(functools.partial(experiments_content, display=display), data.results)
    )


def with_decision_test(results: pd.DataFrame) -> pd.DataFrame:
    """The results with the columns of issue 19 (null when the table predates them) and decision_test filled:
    rows without one were decided by the fixed-horizon test, the only one there was."""
    filled: pd.DataFrame = results.copy()
    for column in LATER_COLUMNS:
        if column not in filled:
            filled[column] = None
    filled["decision_test"] = filled.decision_test.where(filled.decision_test.notna(), FIXED)
    return filled


def experiments_content(results: pd.DataFrame, *, display: Display) -> Content:
    results = with_decision_test(results)
    control = results.is_control.astype(bool)
    cuped = results.cuped.fillna(False).astype(bool)
    results = results.assign(
        shown_variant=[
            f"{v} (control)" if c and v != "control" else str(v)
            for v, c in zip(results.variant, control, strict=True)
        ],
        figures=cuped.map({False: "as measured", True: "adjusted (CUPED)"}),
        split_check=results.srm.map(lambda v: "off" if v is True or v == 1 else "ok"),
        decision=results.decision.fillna("-"),  # a control row has none unless the split is off
        decision_reason=results.decision_reason.fillna("-"),
    )
    # Each row's figures are those of the test that decided it.
    sequential = results.decision_test == SEQUENTIAL
    results = results.assign(
        **{
            name: results[sequential_column].where(sequential, results[fixed_column])
            for name, sequential_column, fixed_column in zip(
                SHOWN_FIGURES, TEST_COLUMNS[SEQUENTIAL], TEST_COLUMNS[FIXED], strict=True
            )
        }
    )
    mismatches = results.drop_duplicates(["experiment_id", "source"]).srm.fillna(False).astype(bool).sum()
    tests = list(dict.fromkeys(results.decision_test))
    metric_order = {metric: i for i, metric in enumerate(METRICS)}
    groups = sorted(
        dict.fromkeys(zip(results.metric, results.decision_test, strict=True)),
        key=lambda group: metric_order.get(group[0], len(metric_order)),
    )  # conversion, then revenue, then any other metric; within one, the tests as they come
    tables = tuple(
        experiment_table(
            results[(results.metric == metric) & (results.decision_test == test)], metric, test, display
        )
        for metric, test in groups
    )
    variants = results[~control]
    chart_rows = variants.assign(
        metric=[
            f"{metric_labels(m).name}{' (CUPED)' if c else ''}"
            for m, c in zip(variants.metric, variants.cuped.fillna(False).astype(bool), strict=True)
        ],
        ci_low=variants.low,
        ci_high=variants.high,
        rel_ci_low=variants.rel_low,
        rel_ci_high=variants.rel_high,
    )
    return Content(
        facts=(
            ("experiments", count(results.experiment_id.nunique())),
            ("split problems (SRM)", count(mismatches)),
            ("decided by", " and ".join(f"{TEST_NAMES.get(t, t)} test" for t in tests)),
        ),
        findings=tuple(experiment_findings(variants, display)),
        charts=()
        if variants.empty
        else (
            charts.lift_forest(chart_rows, display.level, " and ".join(TEST_NAMES.get(t, t) for t in tests)),
        ),
        tables=tables,
    )


def experiment_table(rows: pd.DataFrame, metric: str, test: str, display: Display) -> Table:
    """One metric's rows decided by one test: the metric's own labels, that test's figures."""
    labels, money = metric_labels(metric), display.money
    amount: Formatter = money if labels.amounts else count
    per_user: Formatter = money if labels.amounts else share
    difference: Formatter = money.signed if labels.amounts else points
    capped = labels.amounts and rows.value_cap.notna().any()
    shown = rows.assign(
        difference=[
            with_interval(v, lo, hi, difference)
            for v, lo, hi in zip(rows.lift, rows.low, rows.high, strict=True)
        ],
        relative=[
            with_interval(v, lo, hi, signed_share)
            for v, lo, hi in zip(rows.lift_relative, rows.rel_low, rows.rel_high, strict=True)
        ],
    )
    low, high, rel_low, rel_high, p_column = TEST_COLUMNS[test]
    name = TEST_NAMES.get(test, test)
    columns: dict[str, tuple[str, Formatter | None]] = {
        "experiment_id": ("experiment", None),
        "shown_variant": ("variant", None),
        "figures": ("figures", None),
        "users": ("users", count),
        "conversions": (labels.total, amount),
        "rate": (f"{labels.per_user} (capped)" if capped else labels.per_user, per_user),
        "difference": (f"difference ({display.level} interval)", str),
        "relative": (f"relative difference ({display.level} interval)", str),
        "p_shown": (f"p-value ({name})", p_value),
    }
    if metric == CONVERSION and test == FIXED:
        # A fixed-sample Bayesian figure, as prone to peeking as the fixed test: beside a sequential decision
        # it would invite acting on a day's look (GrowthBook does not show the two together either).
        columns["prob_beat_control"] = ("chance to beat control", probability)
    if capped:
        columns["capped_users"] = ("users capped", count)
    columns.update(
        {
            "split_check": ("split check", None),
            "decision": ("decision", None),
            "decision_reason": ("why", None),
        }
    )
    caption = f"{labels.per_user.capitalize()}, decided by the {name} test. {TEST_NOTES.get(test, '')}"
    if labels.amounts:
        caption += " " + " ".join(cap_sentences(rows, money))
    return table(
        f"experiment-{labels.id}-{test}",
        shown,
        columns,
        caption=caption.strip(),
        terms={
            "figures": "cuped",
            "rate": labels.term,
            "difference": "lift",
            "relative": "interval",
            "p_shown": "p-value",
            "prob_beat_control": "prob-beat-control",
            "capped_users": "value-cap",
            "split_check": "srm",
            "decision": TEST_TERMS.get(test, "p-value"),
        },
        technical={
            "shown_variant": "variant, is_control",
            "figures": "cuped",
            "conversions": f"conversions (for {metric}: {labels.total})",
            "rate": f"rate (for {metric}: {labels.per_user}; CUPED rows adjusted)",
            "difference": f"lift [{low}, {high}]",
            "relative": f"lift_relative [{rel_low}, {rel_high}]",
            "p_shown": p_column,
            "split_check": "srm, srm_p_value",
            "decision": "decision, decision_test",
        },
    )


def cap_sentences(rows: pd.DataFrame, money: Money) -> list[str]:
    """Per experiment (and source) of a revenue table: the cap on each user's revenue and how many users it
    capped (on the rows as measured: CUPED rows repeat the same users)."""
    plain = rows[~rows.cuped.fillna(False).astype(bool)]
    plain = plain if len(plain) else rows
    several_sources = plain.groupby("experiment_id").source.nunique().max() > 1
    sentences = []
    for (experiment, source), group in plain.groupby(["experiment_id", "source"], sort=True):
        name = f"{experiment} ({source})" if several_sources else str(experiment)
        caps = group.value_cap.dropna()
        if caps.empty:
            sentences.append(f"{name}: revenue per user, not capped.")
            continue
        users = int(group.capped_users.fillna(0).sum())
        sentences.append(
            f"{name}: revenue per user, capped at {money(caps.iloc[0])} per user: "
            f"{count(users)} user{'' if users == 1 else 's'} capped."
        )
    return sentences


def experiment_findings(variants: pd.DataFrame, display: Display) -> list[str]:
    """One sentence per decided variant row: the decision, why, and the relative difference with the
    interval of the test that decided."""
    sentences = []
    for row in variants.itertuples(index=False):
        if row.decision == "-":
            continue
        adjusted = " (adjusted, CUPED)" if row.figures != "as measured" else ""
        relative = with_interval(row.lift_relative, row.rel_low, row.rel_high, signed_share)
        test = TEST_NAMES.get(str(row.decision_test), str(row.decision_test))
        sentences.append(
            f"{row.experiment_id}, {metric_labels(str(row.metric)).name}{adjusted}, {row.variant}: {row.decision}, "
            f"{row.decision_reason}; relative difference {relative} ({display.level} interval, {test} test)."
        )
    return sentences


# ---- who will buy (purchase propensity) --------------------------------------------------------------

PROPENSITY = Heading(
    "propensity",
    "Who will buy",
    "Each customer's chance of buying in the coming days. The models were trained on older data and tested "
    "on a later period they had not seen, so the figures below are what the scores achieved on real past "
    "purchases; the chosen model scored today's customers.",
    "Send reminders and offers to the customers most likely to buy (deciles 1-3), keep the least likely "
    "out of paid channels, and size the budget with the expected buyers.",
    source_note(SCORES, PROPENSITY_EVALUATION, PROPENSITY_DECILES),
    (
        "decile",
        "top-decile-lift",
        "gain",
        "calibration",
        "auc",
        "average-precision",
        "brier",
        "precision-recall",
        "bgnbd",
    ),
)
BASELINE = PROPENSITY_BASELINE
MODEL_NAMES: dict[str, str] = {
    "logistic_regression": "logistic regression",
    "random_forest": "random forest",
    "gbt": "gradient-boosted trees",
    PROPENSITY_BASELINE: "BG/NBD baseline",
}


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def reached(deciles: pd.DataFrame, last: int) -> float:
    """The share of buyers in deciles 1..last (NaN when none of them has rows)."""
    shares = deciles[deciles.decile <= last].cumulative_buyer_share
    return float(shares.max()) if len(shares) else math.nan


def propensity_section(data: PropensityData) -> Section:
    return PROPENSITY.section(
        part(validation_content, data.evaluation, data.deciles), part(scores_content, data.scores)
    )


def validation_content(evaluation: pd.DataFrame, deciles: pd.DataFrame) -> Content:
    flagged = evaluation[evaluation.chosen.fillna(False).astype(bool)]
    best = (flagged if len(flagged) else evaluation).iloc[0]
    chosen, horizon = str(best.model), int(best.horizon_days)
    gains = deciles[deciles.model == chosen].sort_values("decile")
    baseline = evaluation[evaluation.model == BASELINE]
    candidates = evaluation.assign(
        name=evaluation.model.map(model_name),
        pick=evaluation.model.map(lambda m: "chosen" if m == chosen else ""),
        top_10=[reached(deciles[deciles.model == m], 1) for m in evaluation.model],
        top_30=[reached(deciles[deciles.model == m], 3) for m in evaluation.model],
    )
    tested = (
        f"the customers of {best.validation_cutoff}: {count(best.users)}, of whom {count(best.buyers)} "
        f"({percent(best.base_rate)}) bought in the {horizon} days after"
    )
    facts = (
        ("chosen model", model_name(chosen)),
        ("horizon", f"{horizon} days"),
        ("AUC", number(best.auc, 3)),
        ("top-decile lift", times(best.lift_top_decile)),
    )
    metrics = table(
        "propensity-models",
        candidates,
        {
            "name": ("model", None),
            "pick": ("", None),
            "auc": ("AUC", fixed(3)),
            "average_precision": ("average precision", fixed(3)),
            "brier": ("Brier", number),
            "log_loss": ("log-loss", number),
            "top_10": ("top 10% hold", percent),
            "lift_top_decile": ("top-decile lift", times),
            "top_30": ("top 30% hold", percent),
            "threshold": ("F1 threshold", share),
            "precision": ("precision", share),
            "recall": ("recall", share),
            "f1": ("F1", fixed(3)),
        },
        caption=f"Every candidate, tested on {tested}. "
        "“Top 10% hold”: the share of those buyers among the tenth of customers the model ranked highest.",
        terms={
            "auc": "auc",
            "average_precision": "average-precision",
            "brier": "brier",
            "log_loss": "brier",
            "top_10": "decile",
            "lift_top_decile": "top-decile-lift",
            "threshold": "precision-recall",
            "precision": "precision-recall",
            "recall": "precision-recall",
            "f1": "precision-recall",
        },
        technical={"name": "model", "top_10": "cumulative_buyer_share at decile 1", "top_30": "at decile 3"},
    )
    if gains.empty:
        return Content(
            facts=facts,
            findings=(choice_sentence(evaluation, chosen),),
            tables=(metrics,),
            notes=(f"{PROPENSITY_DECILES.name} has no deciles for {chosen} on this date.",),
        )
    top = gains.iloc[0]
    middle = gains.iloc[(len(gains) - 1) // 2]
    findings = (
        f"In the test, the top 10% of customers by score held {percent(top.cumulative_buyer_share)} of the next {horizon} "
        f"days' buyers ({top.lift:.1f} times the average); the top 30% held {percent(reached(gains, 3))}.",
        f"Of customers scored about {percent(top.mean_predicted)} (decile 1), {one_in(top.observed_rate)} "
        f"bought ({percent(top.observed_rate)}); of those scored about {percent(middle.mean_predicted)} "
        f"(decile {middle.decile}), {one_in(middle.observed_rate)} ({percent(middle.observed_rate)}).",
        choice_sentence(evaluation, chosen),
        f"What to do: send reminders and offers to deciles 1-3 ({percent(reached(gains, 3))} of the buyers in "
        f"30% of the customers) and leave deciles 9-10 out of paid channels (they held "
        f"{percent(1 - reached(gains, 8))} of the buyers). Many in the top deciles would buy anyway: whether "
        "a campaign adds purchases is for an experiment with a control group to tell.",
    )
    base_gains = None
    if chosen != BASELINE and not baseline.empty:
        base_gains = deciles[deciles.model == BASELINE].sort_values("decile")
    return Content(
        facts=facts,
        findings=findings,
        charts=(
            charts.gain_and_calibration(
                gains, model_name(chosen), None if base_gains is None or base_gains.empty else base_gains
            ),
        ),
        tables=(
            metrics,
            table(
                "propensity-deciles",
                gains,
                {
                    "decile": ("decile", count),
                    "users": ("customers", count),
                    "buyers": ("bought", count),
                    "mean_predicted": ("predicted", share),
                    "observed_rate": ("bought (share)", share),
                    "lift": ("lift", times),
                    "cumulative_buyer_share": ("buyers reached", share),
                },
                caption=f"The chosen model ({model_name(chosen)}) by decile on the test period: predicted "
                "chance against the share who bought, and the share of all buyers reached down to each decile.",
                terms={"decile": "decile", "mean_predicted": "calibration", "lift": "top-decile-lift"},
            ),
        ),
    )


def choice_sentence(evaluation: pd.DataFrame, chosen: str) -> str:
    """Which model scores the customers, against the BG/NBD baseline (which needs repeat buyers to be fitted)."""
    by_model = evaluation.set_index("model")
    best = by_model.loc[chosen]
    tried = f"{len(evaluation)} model{'s' if len(evaluation) > 1 else ''} tried"
    if chosen == BASELINE:
        return (
            f"Chosen: the BG/NBD baseline itself (average precision {number(best.average_precision, 3)}, "
            f"{tried}): it ranks customers by their purchase history alone, and no classifier beat it."
        )
    against = (
        f"the BG/NBD baseline, which ranks customers by purchase history alone, reached "
        f"{number(by_model.loc[BASELINE].average_precision, 3)}"
        if BASELINE in by_model.index
        else "the BG/NBD baseline could not be fitted (too few repeat buyers)"
    )
    return (
        f"Chosen: {model_name(chosen)}, the best at putting buyers first ({tried}; average precision "
        f"{number(best.average_precision, 3)}, where picking at random gives {number(best.base_rate, 3)}); "
        f"{against}."
    )


def scores_content(scores: pd.DataFrame) -> Content:
    horizon = int(scores.horizon_days.iloc[0])
    total = float(scores.expected_buyers.sum())
    scores = scores.assign(
        range=[f"{share(low)} - {share(high)}" for low, high in zip(scores.min_p, scores.max_p, strict=True)],
        cumulative=scores.expected_buyers.cumsum(),
    )
    top = scores[scores.decile <= 3]
    models = ", ".join(model_name(m) for m in sorted(set(scores.model)))
    return Content(
        facts=(
            ("customers scored", count(scores.users.sum())),
            ("expected buyers", count(round(total))),
        ),
        findings=(
            f"Deciles 1-3 ({count(top.users.sum())} customers) should bring about "
            f"{count(round(top.expected_buyers.sum()))} of the {count(round(total))} buyers expected in the "
            f"next {horizon} days.",
        ),
        tables=(
            table(
                "propensity-scores",
                scores,
                {
                    "decile": ("decile", count),
                    "users": ("customers", count),
                    "mean_p": ("mean chance", share),
                    "range": ("range", str),
                    "expected_buyers": ("expected buyers", fixed(1)),
                    "cumulative": ("deciles 1 to this", fixed(1)),
                },
                caption=f"Today's scores ({models}) by decile: the expected number of buyers in the next "
                f"{horizon} days is the sum of the customers' chances, to size a budget.",
                terms={"decile": "decile"},
                technical={
                    "mean_p": "mean of p_purchase",
                    "range": "min and max of p_purchase",
                    "expected_buyers": "sum of p_purchase",
                },
            ),
        ),
    )


# ---- the whole report --------------------------------------------------------------------------------


def build(data: ReportData, display: Display) -> list[Section]:
    """The report's sections, in page order."""
    return [
        segments_section(data.segments, display.money),
        silhouette_section(data.silhouette),
        rfm_section(data.rfm, display.money),
        rules_section(data.rules),
        recommendations_section(data.recommendations),
        propensity_section(data.propensity),
        audiences_section(data.audiences),
        experiments_section(data.experiments, display),
    ]


RUNS = Heading(
    "runs",
    "Pipeline runs",
    "The latest run of each job for this date.",
    "If a job failed or did not run for this date, the sections built from its tables are missing or out of "
    "date: ask the data team before acting on them.",
    f"{JOB_RUNS.name} (every job)",
)


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

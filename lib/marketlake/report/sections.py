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
    Formatter,
    count,
    fixed,
    money,
    number,
    number_or_count,
    one_in,
    p_value,
    percent,
    probability,
    share,
    signed,
    signed_share,
    times,
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


# ---- who will buy (purchase propensity) --------------------------------------------------------------

PROPENSITY = Heading(
    "propensity",
    "Who will buy",
    "Each customer's chance of buying in the coming days. The models were trained on older data and tested "
    "on a later period they had not seen, so the figures below are what the scores achieved on real past "
    "purchases; the chosen model scored today's customers.",
    source_note(SCORES, PROPENSITY_EVALUATION, PROPENSITY_DECILES),
)
BASELINE = PROPENSITY_BASELINE
MODEL_NAMES: dict[str, str] = {
    "logistic_regression": "logistic regression",
    "random_forest": "random forest",
    "gbt": "gradient-boosted trees",
    PROPENSITY_BASELINE: "BG/NBD baseline",
}
METRICS_GLOSSARY = (
    "AUC: the chance that a buyer is scored above a non-buyer (0.5 is a coin toss, 1 is perfect). "
    "Average precision: how well buyers are packed at the top of the list (picking at random gives the "
    "base rate, 1 is perfect). Brier score: the mean squared gap between the predicted chance and what "
    "happened (lower is better); log-loss is its stricter cousin that punishes confident mistakes hardest. "
    "Precision, recall and F1 are for calling everyone scored at or above the F1 threshold a buyer: "
    "precision is the share of them who bought, recall the share of buyers they include."
)


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
    )
    if gains.empty:
        return Content(
            facts=facts,
            findings=(choice_sentence(evaluation, chosen),),
            tables=(metrics,),
            notes=(f"{PROPENSITY_DECILES.name} has no deciles for {chosen} on this date.", METRICS_GLOSSARY),
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
            ),
        ),
        notes=(METRICS_GLOSSARY,),
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
        propensity_section(data.propensity),
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

"""The marketing report: one self-contained HTML file per run date, built from the gold tables alone.

Two halves. `gather` reads the lake: every figure is a small Spark aggregate of a gold (or ops) table
filtered to the run date, brought to the driver as a pandas frame (a table's rows never are). `build`
turns those frames into sections of tables and matplotlib charts (PNG, inlined as base64 so the file needs
nothing beside it), and `render` fills the jinja2 template. A table that is absent, or has no rows for the
run date, makes its section say so and name the job that writes it, instead of failing the report.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2
import pandas as pd
from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.features import INACTIVE, PROSPECTS, RFM_GRID
from marketlake.lake import Files, Layout

RFM_ORDER = [label for label, _, _ in RFM_GRID] + [PROSPECTS, INACTIVE]
SEGMENT_MODEL = "segment_kmeans"
# (table, the job that writes it)
PROFILES, FEATURES = catalog.SEGMENT_PROFILES, catalog.USER_FEATURES
RULES, CROSS_SELL = catalog.ASSOCIATION_RULES, catalog.ITEM_CROSS_SELL
EVALUATION, RECOMMENDATIONS = catalog.RECOMMENDATION_EVALUATION, catalog.USER_RECOMMENDATIONS
AUDIENCE, EXPERIMENTS = catalog.CAMPAIGN_AUDIENCE, catalog.EXPERIMENT_RESULTS
MODELS, JOB_RUNS, ITEMS = catalog.MODELS, catalog.JOB_RUNS, catalog.SILVER_ITEMS


def source_note(*tables: catalog.Table, detail: str = "") -> str:
    """Where a section's figures come from: 'gold.x, gold.y (x job)'."""
    names = ", ".join(t.name for t in tables) + (f", {detail}" if detail else "")
    return f"{names} ({tables[0].written_by[0]} job)"

BLUE, GREY, GREEN, RED, ORANGE = "#2f6db5", "#9aa5b1", "#2e8b57", "#c0392b", "#e08e0b"


def report_path(root: str, run_date: dt.date) -> str:
    """`lake.report_path(run_date)` for callers that hold only the lake root."""
    return Layout(root).report_path(run_date)


def report_exists(path: str) -> bool:
    """Whether the report file is there (on the lake's own store, `lake.files.is_file` is the same)."""
    return Files().is_file(path)


# ---- reading the lake --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Absent:
    """Why a section has no data: the table is missing, or has no rows for the run date."""

    message: str


Data = pd.DataFrame | Absent


def dated(lake, source: catalog.Table, run_date: dt.date) -> DataFrame | Absent:
    """The table's rows for the run date, or why there are none."""
    table, job = source.name, source.written_by[0]
    if not lake.exists(table):
        return Absent(f"{table} is absent from this lake: the {job} job makes it (./spark-submit.sh {job} --run-date {run_date}).")
    frame = lake.read(table).filter(F.col("as_of_date") == F.lit(run_date))
    if frame.limit(1).count() == 0:
        latest = lake.read(table).agg(F.max("as_of_date")).first()[0]
        where = f"its latest date is {latest}" if latest else "it is empty"
        return Absent(f"{table} has no rows for {run_date} ({where}): run {job} for {run_date}.")
    return frame


def small(frame: DataFrame | Absent, make: Callable[[DataFrame], DataFrame]) -> Data:
    """Apply an aggregate and bring its (few) rows to the driver."""
    return frame if isinstance(frame, Absent) else make(frame).toPandas()


def gather(lake, run_date: dt.date, top_rules: int = 15) -> dict[str, Any]:
    """Every figure the report shows, as small pandas frames (or Absent) keyed by name."""
    data: dict[str, Any] = {"run_date": run_date, "lake_root": lake.root}
    profiles = dated(lake, PROFILES, run_date)
    data["profiles"] = small(profiles, lambda f: f.orderBy("segment_id"))
    data["silhouettes"] = silhouettes(lake, data["profiles"], run_date)
    features = dated(lake, FEATURES, run_date)
    data["rfm"] = small(
        features,
        lambda f: f.groupBy("rfm_label").agg(
            F.count("*").alias("users"), F.avg("frequency").alias("orders"), F.avg("monetary").alias("revenue")
        ),
    )
    data["rfm_grid"] = small(
        features, lambda f: f.filter(F.col("r_score").isNotNull()).groupBy("r_score", "f_score").count()
    )
    rules = dated(lake, RULES, run_date)
    data["rules"] = small(
        rules,
        lambda f: f.orderBy(F.desc("lift"), F.desc("confidence"), F.desc("support"), F.col("antecedent").cast("string"))
        .limit(top_rules)
        .select(F.array_join("antecedent", " + ").alias("antecedent"), F.array_join("consequent", " + ").alias("consequent"), "support", "confidence", "lift"),
    )  # fmt: skip
    data["rules_summary"] = small(
        rules, lambda f: f.agg(F.count("*").alias("rules"), F.max("lift").alias("max_lift"), F.avg("confidence").alias("mean_confidence"))
    )  # fmt: skip
    data["cross_sell_items"] = small(
        dated(lake, CROSS_SELL, run_date), lambda f: f.agg(F.countDistinct("item_id").alias("items"))
    )
    data["item_names"] = item_names(lake, data["rules"])
    data["evaluation"] = small(dated(lake, EVALUATION, run_date), lambda f: f.drop("as_of_date"))
    data["sources"] = small(
        dated(lake, RECOMMENDATIONS, run_date),
        lambda f: f.groupBy("source").agg(F.countDistinct("user_id").alias("users"), F.count("*").alias("rows")).orderBy("source"),
    )  # fmt: skip
    audience = dated(lake, AUDIENCE, run_date)
    data["audience"] = small(
        audience,
        lambda f: f.groupBy("campaign_id", "channel", "control_share").agg(
            F.count("*").alias("audience"),
            F.sum((F.col("group") == "treatment").cast("long")).alias("treatment"),
            F.sum((F.col("group") == "control").cast("long")).alias("control"),
            F.sum((F.size("items") > 0).cast("long")).alias("with_items"),
            F.sum((F.size("cross_sell") > 0).cast("long")).alias("with_cross_sell"),
        ).orderBy("campaign_id"),
    )
    data["offers"] = small(
        audience, lambda f: f.groupBy("campaign_id", "offer").agg(F.count("*").alias("users")).orderBy("campaign_id", F.desc("users"), "offer")
    )  # fmt: skip
    data["experiments"] = small(
        dated(lake, EXPERIMENTS, run_date), lambda f: f.orderBy("experiment_id", "cuped", "metric", F.desc("is_control"), "variant")
    )  # fmt: skip
    data["runs"] = job_runs(lake, run_date)
    return data


def silhouettes(lake, profiles: Data, run_date: dt.date) -> Data:
    """(k, silhouette, chosen) of the segment model the run date's profiles came from (ops.models)."""
    if isinstance(profiles, Absent):
        return profiles
    versions = [v for v in profiles.model_version.dropna().unique()]
    if not versions:
        return Absent("the segments of this date come from no model (too few distinct users to segment).")
    if not lake.exists(MODELS):
        return Absent(f"{MODELS.name} is absent from this lake: the segment job records its models there.")
    row = (
        lake.read(MODELS)
        .filter((F.col("model_name") == SEGMENT_MODEL) & (F.col("model_version") == versions[0]))
        .orderBy(F.desc("created_at"))
        .select("metrics")
        .first()
    )
    if row is None:
        return Absent(f"{MODELS.name} has no row for model {SEGMENT_MODEL} {versions[0]}: run segment for {run_date}.")
    metrics = row.metrics
    ks = sorted(int(key[len("silhouette_k"):]) for key in metrics if key.startswith("silhouette_k"))
    return pd.DataFrame(
        {"k": ks, "silhouette": [metrics[f"silhouette_k{k}"] for k in ks], "chosen": [k == metrics.get("k") for k in ks]}
    )


def item_names(lake, rules: Data) -> dict[str, str]:
    """Titles (or category) of the items in the listed rules, from silver.items."""
    if isinstance(rules, Absent) or rules.empty or not lake.exists(ITEMS):
        return {}
    ids = sorted({item for column in ("antecedent", "consequent") for text in rules[column] for item in text.split(" + ")})
    items = lake.read(ITEMS).filter(F.col("item_id").isin(ids))
    title = F.coalesce(*[F.col(c) for c in ("title", "category") if c in items.columns], F.lit(""))
    return {row.item_id: row.name for row in items.select("item_id", title.alias("name")).collect()}  # a few dozen


def job_runs(lake, run_date: dt.date) -> Data:
    """The latest run of each job for the run date."""
    table = JOB_RUNS.name
    if not lake.exists(table):
        return Absent(f"{table} is absent from this lake.")
    runs = lake.read(table).filter(F.col("run_date") == F.lit(run_date))
    latest = runs.groupBy("job").agg(F.max_by(F.struct("status", "ended_at", "seconds"), "ended_at").alias("last"))
    return latest.select("job", "last.status", "last.ended_at", "last.seconds").orderBy("ended_at").toPandas()


# ---- building the sections ---------------------------------------------------------------------------


@dataclass
class Table:
    id: str
    columns: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    caption: str = ""


@dataclass
class Chart:
    title: str
    alt: str
    png: str  # base64


@dataclass
class Section:
    id: str
    title: str
    intro: str
    source: str
    missing: list[str] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def count(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{int(value):,}"


def share(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.1%}"


def number(value, digits: int = 4) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:,.{digits}f}"


def signed(value, digits: int = 4) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:+.{digits}f}"


def with_interval(value, low, high, format_: Callable[[Any], str]) -> str:
    """"+0.0200 [+0.0080, +0.0320]"; "-" without a value."""
    if value is None or pd.isna(value):
        return "-"
    if low is None or pd.isna(low) or high is None or pd.isna(high):
        return format_(value)
    return f"{format_(value)} [{format_(low)}, {format_(high)}]"


def table(id: str, frame: pd.DataFrame, columns: dict[str, tuple[str, Callable[[Any], str] | None]], caption: str = "") -> Table:
    """A Table from a frame: columns maps frame column -> (heading, formatter); a column with a formatter is
    set as a number (right-aligned, unbroken), one with None as text."""
    rows = [
        [str(value) if format_ is None else format_(value) for value, (_, format_) in zip(record, columns.values(), strict=True)]
        for record in frame[list(columns)].itertuples(index=False, name=None)
    ]  # fmt: skip
    return Table(id, [heading for heading, _ in columns.values()], rows, [f is not None for _, f in columns.values()], caption)


def png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure


def tidy(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=9)


def segments_section(data: dict[str, Any]) -> Section:
    section = Section(
        "segments", "Customer segments",
        "KMeans segments of the customers' behaviour, largest first in the chart; the table gives each segment's "
        "average customer and the strategy suggested for it.",
        source_note(PROFILES),
    )  # fmt: skip
    profiles = data["profiles"]
    if isinstance(profiles, Absent):
        section.missing.append(profiles.message)
        return section
    section.facts = [
        ("segments", count(len(profiles))),
        ("customers", count(profiles["size"].sum())),
        ("silhouette", number(profiles.silhouette.iloc[0], 3)),
        ("model", str(profiles.model_version.iloc[0])),
    ]
    ordered = profiles.sort_values("size")
    figure = new_figure(8, 0.45 * len(profiles) + 1.0)
    ax = figure.subplots()
    bars = ax.barh(ordered.segment_name, ordered["size"], color=BLUE)
    ax.bar_label(bars, labels=[f"{s:,} ({p:.1%})" for s, p in zip(ordered["size"], ordered.share, strict=True)], padding=4, fontsize=9)
    ax.set_xlabel("customers")
    ax.set_xlim(0, ordered["size"].max() * 1.25)
    tidy(ax)
    section.charts.append(Chart("Segment sizes", "horizontal bars: customers per segment", png(figure)))

    figure = new_figure(9, 2.8)
    axes = figure.subplots(1, 3)
    for ax, (column, label) in zip(
        axes, [("mean_recency_days", "days since last visit"), ("mean_frequency", "orders"), ("mean_monetary", "revenue")], strict=True
    ):
        ax.bar(profiles.segment_name, profiles[column], color=BLUE)
        ax.set_title(f"average {label}", fontsize=10)
        ax.tick_params(axis="x", rotation=35)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
        tidy(ax)
    section.charts.append(Chart("Segment profiles", "bars per segment: mean recency, orders and revenue", png(figure)))
    section.tables.append(
        table("segment-profiles", profiles, {
            "segment_name": ("segment", None), "size": ("customers", count), "share": ("share", share),
            "buyer_share": ("buyers", share), "mean_recency_days": ("days since visit", lambda v: number(v, 1)),
            "mean_frequency": ("orders", lambda v: number(v, 2)), "mean_monetary": ("revenue", lambda v: number(v, 2)),
            "mean_avg_order_value": ("order value", lambda v: number(v, 2)), "mean_purchase_rate": ("session conversion", share),
            "strategy": ("strategy", None),
        })
    )  # fmt: skip
    return section


def silhouette_section(data: dict[str, Any]) -> Section:
    section = Section(
        "silhouette", "Silhouette by number of segments",
        "How well separated the segments are for each number of segments tried (higher is better, at most 1); "
        "the highest was chosen.",
        f"{MODELS.name}, model {SEGMENT_MODEL} (segment job)",
    )  # fmt: skip
    scores = data["silhouettes"]
    if isinstance(scores, Absent):
        section.missing.append(scores.message)
        return section
    figure = new_figure(7, 3.2)
    ax = figure.subplots()
    ax.plot(scores.k, scores.silhouette, marker="o", color=BLUE)
    chosen = scores[scores.chosen]
    ax.scatter(chosen.k, chosen.silhouette, s=160, facecolors="none", edgecolors=ORANGE, linewidths=2, label="chosen", zorder=3)
    ax.set_xlabel("k (number of segments)")
    ax.set_ylabel("silhouette")
    ax.set_xticks(list(scores.k))
    ax.legend(frameon=False)
    tidy(ax)
    section.charts.append(Chart("Silhouette by k", "line: silhouette for each k, the chosen k circled", png(figure)))
    section.tables.append(
        table("silhouette-by-k", scores.assign(pick=scores.chosen.map({True: "chosen", False: ""})),
              {"k": ("k", count), "silhouette": ("silhouette", number), "pick": ("", None)})
    )  # fmt: skip
    return section


def rfm_section(data: dict[str, Any]) -> Section:
    section = Section(
        "rfm", "RFM distribution",
        "Customers by RFM label (recency and frequency scores 1-5 among buyers); the grid counts buyers by their "
        "two scores. Prospects browsed without buying; Inactive had no events in the window.",
        source_note(FEATURES),
    )  # fmt: skip
    rfm = data["rfm"]
    if isinstance(rfm, Absent):
        section.missing.append(rfm.message)
        return section
    order = {label: i for i, label in enumerate(RFM_ORDER)}
    rfm = rfm.assign(order=rfm.rfm_label.map(order).fillna(len(order))).sort_values(["order", "rfm_label"])
    total = rfm.users.sum()
    rfm = rfm.assign(share=rfm.users / total)
    figure = new_figure(9, 4.0)
    bars_ax, grid_ax = figure.subplots(1, 2, width_ratios=[3, 2])
    bars = bars_ax.barh(rfm.rfm_label[::-1], rfm.users[::-1], color=BLUE)
    bars_ax.bar_label(bars, labels=[f"{u:,}" for u in rfm.users[::-1]], padding=3, fontsize=8)
    bars_ax.set_xlabel("customers")
    bars_ax.set_xlim(0, rfm.users.max() * 1.18)
    tidy(bars_ax)
    grid = data["rfm_grid"]
    cells = pd.DataFrame(0, index=range(5, 0, -1), columns=range(1, 6))
    for r, f, n in grid[["r_score", "f_score", "count"]].itertuples(index=False):
        cells.loc[int(r), int(f)] = int(n)
    image = grid_ax.imshow(cells.values, cmap="Blues")
    grid_ax.set_xticks(range(5), [str(f) for f in cells.columns])
    grid_ax.set_yticks(range(5), [str(r) for r in cells.index])
    grid_ax.set_xlabel("frequency score")
    grid_ax.set_ylabel("recency score")
    peak = max(cells.values.max(), 1)
    for i, r in enumerate(cells.index):
        for j, f in enumerate(cells.columns):
            value = cells.loc[r, f]
            grid_ax.text(j, i, f"{value:,}", ha="center", va="center", fontsize=8, color="white" if value > peak / 2 else "black")
    figure.colorbar(image, ax=grid_ax, shrink=0.7, label="buyers")
    section.charts.append(Chart("RFM labels and score grid", "bars: customers per RFM label; heatmap: buyers by recency and frequency score", png(figure)))
    section.tables.append(
        table("rfm-labels", rfm, {
            "rfm_label": ("RFM label", None), "users": ("customers", count), "share": ("share", share),
            "orders": ("orders (mean)", lambda v: number(v, 2)), "revenue": ("revenue (mean)", lambda v: number(v, 2)),
        })
    )  # fmt: skip
    section.facts = [("customers", count(total)), ("buyers", count(int(grid["count"].sum())))]
    return section


def rules_section(data: dict[str, Any]) -> Section:
    section = Section(
        "rules", "Top association rules",
        "Items bought together, strongest first by lift (how many times likelier the second item is in a basket "
        "that has the first). Support: share of baskets with both; confidence: share of the first item's "
        "baskets that also have the second.",
        source_note(RULES, CROSS_SELL),
    )  # fmt: skip
    rules = data["rules"]
    if isinstance(rules, Absent):
        section.missing.append(rules.message)
        return section
    summary = data["rules_summary"].iloc[0]
    section.facts = [("rules", count(summary.rules)), ("highest lift", number(summary.max_lift, 1)),
                     ("mean confidence", share(summary.mean_confidence))]  # fmt: skip
    cross = data["cross_sell_items"]
    if not isinstance(cross, Absent):
        section.facts.append(("items with cross-sell", count(cross["items"].iloc[0])))
    names = data["item_names"]

    def named(text: str) -> str:
        return " + ".join(f"{item} ({names[item]})" if names.get(item) else item for item in text.split(" + "))

    if rules.empty:
        section.notes.append("No rule met the thresholds on this date.")
        return section
    shown = rules.assign(antecedent=rules.antecedent.map(named), consequent=rules.consequent.map(named))
    section.tables.append(
        table("top-rules", shown, {
            "antecedent": ("customers who buy", None), "consequent": ("also buy", None),
            "support": ("support", number), "confidence": ("confidence", share), "lift": ("lift", lambda v: number(v, 2)),
        })
    )  # fmt: skip
    return section


def recommendations_section(data: dict[str, Any]) -> Section:
    section = Section(
        "recommendations", "Recommendation quality",
        "Held-out evaluation of the ALS recommendations against the popularity baseline (the same items for "
        "everyone) at each cut-off k; higher is better.",
        source_note(EVALUATION, RECOMMENDATIONS),
    )  # fmt: skip
    evaluation = data["evaluation"]
    if isinstance(evaluation, Absent):
        section.missing.append(evaluation.message)
    else:
        wide = evaluation.pivot_table(index=["metric", "k"], columns="model", values="value", aggfunc="first").reset_index()
        for model in ("als", "popularity"):
            if model not in wide:
                wide[model] = math.nan
        users = evaluation.groupby(["metric", "k"]).users.max().rename("users").reset_index()
        splits = evaluation.groupby(["metric", "k"]).split.first().rename("split").reset_index()
        wide = wide.merge(users, on=["metric", "k"]).merge(splits, on=["metric", "k"]).sort_values(["metric", "k"])
        wide["ratio"] = wide.als / wide.popularity.where(wide.popularity != 0)
        labels = [f"{m}@{k}" for m, k in zip(wide.metric, wide.k, strict=True)]
        figure = new_figure(9, 3.6)
        ax = figure.subplots()
        positions = list(range(len(wide)))
        als = ax.bar([p - 0.2 for p in positions], wide.als, width=0.4, color=BLUE, label="ALS")
        base = ax.bar([p + 0.2 for p in positions], wide.popularity, width=0.4, color=GREY, label="popularity baseline")
        ax.bar_label(als, fmt="%.3f", fontsize=7, padding=2)
        ax.bar_label(base, fmt="%.3f", fontsize=7, padding=2)
        ax.set_xticks(positions, labels, rotation=30, ha="right")
        ax.legend(frameon=False)
        tidy(ax)
        section.charts.append(Chart("ALS against the popularity baseline", "grouped bars: each metric at k for ALS and the baseline", png(figure)))
        section.tables.append(
            table("recommendation-evaluation", wide, {
                "metric": ("metric", None), "k": ("k", count), "als": ("ALS", number), "popularity": ("popularity", number),
                "ratio": ("ALS / popularity", lambda v: number(v, 2)), "users": ("users", count), "split": ("split", None),
            })
        )  # fmt: skip
        versions = sorted({str(v) for v in evaluation.model_version.dropna()})
        if versions:
            section.facts.append(("model", ", ".join(versions)))
    sources = data["sources"]
    if isinstance(sources, Absent):
        section.missing.append(sources.message)
    else:
        section.tables.append(
            table("recommendation-sources", sources, {"source": ("source", None), "users": ("users", count), "rows": ("recommendations", count)},
                  caption="Where the recommendations come from: ALS, or the fallbacks for users ALS cannot score.")
        )  # fmt: skip
    return section


def audiences_section(data: dict[str, Any]) -> Section:
    section = Section(
        "audiences", "Campaign audiences",
        "Who each campaign reaches: the treatment gets the message, the control is held out at random to "
        "measure what the campaign adds.",
        source_note(AUDIENCE),
    )  # fmt: skip
    audience = data["audience"]
    if isinstance(audience, Absent):
        section.missing.append(audience.message)
        return section
    if audience.empty:
        section.notes.append("No campaign had an audience on this date.")
        return section
    audience = audience.assign(actual_share=audience.control / audience.audience)
    figure = new_figure(8, 0.55 * len(audience) + 1.2)
    ax = figure.subplots()
    treated = ax.barh(audience.campaign_id, audience.treatment, color=BLUE, label="treatment")
    held = ax.barh(audience.campaign_id, audience.control, left=audience.treatment, color=GREY, label="control")
    ax.bar_label(treated, labels=[f"{n:,}" for n in audience.treatment], label_type="center", color="white", fontsize=9)
    ax.bar_label(held, labels=[f"{n:,}" for n in audience.control], padding=4, fontsize=9)
    ax.set_xlabel("customers")
    ax.set_xlim(0, audience.audience.max() * 1.15)
    ax.invert_yaxis()
    ax.legend(frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2)
    tidy(ax)
    section.charts.append(Chart("Audience sizes", "stacked bars: treatment and control per campaign", png(figure)))
    section.facts = [("campaigns", count(len(audience))), ("to contact", count(audience.treatment.sum())),
                     ("held out", count(audience.control.sum()))]  # fmt: skip
    section.tables.append(
        table("audiences", audience, {
            "campaign_id": ("campaign", None), "channel": ("channel", None), "audience": ("audience", count),
            "treatment": ("treatment", count), "control": ("control", count), "actual_share": ("control share", share),
            "control_share": ("configured", share), "with_items": ("with recommendations", count),
            "with_cross_sell": ("with cross-sell", count),
        })
    )  # fmt: skip
    section.tables.append(
        table("offers", data["offers"], {"campaign_id": ("campaign", None), "offer": ("offer", None), "users": ("customers", count)},
              caption="Offers per campaign (treatment and control).")
    )  # fmt: skip
    return section


def experiments_section(data: dict[str, Any]) -> Section:
    section = Section(
        "experiments", "Experiment results",
        "Each variant against its control: the lift with its 95% confidence interval (a bar that crosses 0 is "
        "not a clear win or loss), the p-value adjusted for multiple comparisons, the probability that the "
        "variant beats the control (P(better)), and a sample-ratio check.",
        source_note(EXPERIMENTS),
    )  # fmt: skip
    results = data["experiments"]
    if isinstance(results, Absent):
        section.missing.append(results.message)
        return section
    # CUPED rows repeat a metric with adjusted figures: say so wherever the metric is named.
    results = results.assign(metric=[f"{m} (CUPED)" if pd.notna(c) and bool(c) else m for m, c in zip(results.metric, results.cuped, strict=True)])
    variants = results[~results.is_control.astype(bool)]
    if not variants.empty:
        relative = variants.lift_relative.notna().all() and variants.rel_ci_low.notna().all()
        point, low, high = (("lift_relative", "rel_ci_low", "rel_ci_high") if relative else ("lift", "ci_low", "ci_high"))
        scale = 100.0 if relative else 1.0
        labels = [f"{e} · {m} · {v}" for e, m, v in zip(variants.experiment_id, variants.metric, variants.variant, strict=True)]
        figure = new_figure(8.5, 0.45 * len(variants) + 1.2)
        ax = figure.subplots()
        for i, row in enumerate(variants.itertuples(index=False)):
            lo, hi, mid = getattr(row, low) * scale, getattr(row, high) * scale, getattr(row, point) * scale
            color = GREEN if lo > 0 else RED if hi < 0 else GREY
            ax.plot([lo, hi], [i, i], color=color, linewidth=3, solid_capstyle="round")
            ax.plot(mid, i, "o", color=color, markersize=7)
            ax.annotate(f"{mid:+.1f}%" if relative else f"{mid:+.4f}", (hi, i), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_ylim(len(variants) - 0.5, -0.5)
        ax.set_yticks(range(len(variants)), labels)
        ax.set_xlabel("relative lift over control, % (95% CI)" if relative else "lift over control (95% CI)")
        ax.margins(x=0.15)
        tidy(ax)
        section.charts.append(Chart("Lift with 95% confidence intervals", "forest plot: each variant's lift and interval; green above 0, red below, grey across", png(figure)))
    section.facts = [("experiments", count(results.experiment_id.nunique())),
                     ("sample-ratio mismatches", count(results.drop_duplicates(["experiment_id", "source"]).srm.fillna(False).astype(bool).sum()))]  # fmt: skip
    control = results.is_control.astype(bool)
    shown = results.assign(
        variant=[f"{v} (control)" if c and v != "control" else str(v) for v, c in zip(results.variant, control, strict=True)],
        lift_ci=[with_interval(v, lo, hi, signed) for v, lo, hi in zip(results.lift, results.ci_low, results.ci_high, strict=True)],
        relative_ci=[
            with_interval(v, lo, hi, lambda x: f"{x:+.1%}")
            for v, lo, hi in zip(results.lift_relative, results.rel_ci_low, results.rel_ci_high, strict=True)
        ],
        srm_flag=results.srm.map(lambda v: "mismatch" if v is True or v == 1 else "ok"),
        decision=results.decision.fillna("-"),  # a control row has none unless the split is off
    )
    section.tables.append(
        table("experiment-results", shown, {
            "experiment_id": ("experiment", None), "metric": ("metric", None), "variant": ("variant", None),
            "users": ("users", count), "conversions": ("conversions", number_or_count), "rate": ("rate", number),
            "lift_ci": ("lift (95% CI)", str), "relative_ci": ("relative (95% CI)", str),
            "p_value_adjusted": ("p (adjusted)", p_value), "prob_beat_control": ("P(better)", probability),
            "srm_flag": ("sample ratio", None), "decision": ("decision", None),
        })
    )  # fmt: skip
    return section


def p_value(value) -> str:
    """A `number`, without printing a tiny p-value as 0.0000."""
    if value is not None and not pd.isna(value) and value < 0.0001:
        return "<0.0001"
    return number(value)


def probability(value) -> str:
    """A `share`, without rounding a near-certainty to 100.0% (or a near-impossibility to 0.0%)."""
    if value is not None and not pd.isna(value):
        if value > 0.999:
            return ">99.9%"
        if value < 0.001:
            return "<0.1%"
    return share(value)


def number_or_count(value) -> str:
    """Conversions are counts for rate metrics and sums (revenue) for others."""
    if value is None or pd.isna(value):
        return "-"
    return count(value) if float(value).is_integer() else number(value, 2)


SECTIONS = [segments_section, silhouette_section, rfm_section, rules_section, recommendations_section, audiences_section, experiments_section]


HEADLINE = ["segments", "rules", "campaigns", "to contact", "experiments"]


def build(data: dict[str, Any]) -> list[Section]:
    return [make(data) for make in SECTIONS]


def render(data: dict[str, Any], sections: list[Section], generated_at: dt.datetime) -> str:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("marketlake", "templates"), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )  # fmt: skip
    runs = data["runs"]
    facts = {label: value for section in sections for label, value in section.facts}
    rfm = data["rfm"]
    headline = [
        ("customers", "-" if isinstance(rfm, Absent) else count(rfm.users.sum())),
        *[(label, facts.get(label, "-")) for label in HEADLINE],
    ]
    return environment.get_template("report.html.j2").render(
        run_date=data["run_date"].isoformat(), lake_root=data["lake_root"],
        generated_at=generated_at.strftime("%Y-%m-%d %H:%M UTC"), sections=sections, headline=headline,
        missing=[(section, message) for section in sections for message in section.missing],
        runs=None if isinstance(runs, Absent) else table("job-runs", runs, {
            "job": ("job", None), "status": ("status", None),
            "ended_at": ("finished (UTC)", lambda v: "-" if pd.isna(v) else pd.Timestamp(v).strftime("%Y-%m-%d %H:%M")),
            "seconds": ("seconds", lambda v: number(v, 1)),
        }),
    )  # fmt: skip

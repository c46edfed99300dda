"""The report's matplotlib charts: each is drawn from a section's (small) frame and saved as a PNG, inlined
in the page as base64 so the file needs nothing beside it."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

BLUE, GREY, GREEN, RED, ORANGE = "#2f6db5", "#9aa5b1", "#2e8b57", "#c0392b", "#e08e0b"


@dataclass(frozen=True)
class Chart:
    title: str
    alt: str
    png: str  # base64


def png(figure: Figure) -> str:
    """The figure as a PNG, base64-encoded."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def tidy(ax: Axes) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=9)


def segment_sizes(profiles: pd.DataFrame) -> Chart:
    """Horizontal bars, largest segment on top, labelled with its customers and share."""
    ordered = profiles.sort_values("size")
    figure = new_figure(8, 0.45 * len(profiles) + 1.0)
    ax = figure.subplots()
    bars = ax.barh(ordered.segment_name, ordered["size"], color=BLUE)
    ax.bar_label(
        bars,
        labels=[f"{s:,} ({p:.1%})" for s, p in zip(ordered["size"], ordered.share, strict=True)],
        padding=4,
        fontsize=9,
    )
    ax.set_xlabel("customers")
    ax.set_xlim(0, ordered["size"].max() * 1.25)
    tidy(ax)
    return Chart("Segment sizes", "horizontal bars: customers per segment", png(figure))


def segment_profiles(profiles: pd.DataFrame, currency: str) -> Chart:
    """Three bar charts side by side: each segment's mean recency, orders and revenue (in `currency`)."""
    figure = new_figure(9, 2.8)
    axes = figure.subplots(1, 3)
    for ax, (column, label) in zip(
        axes,
        [
            ("mean_recency_days", "days since last visit"),
            ("mean_frequency", "orders"),
            ("mean_monetary", f"revenue ({currency})"),
        ],
        strict=True,
    ):
        ax.bar(profiles.segment_name, profiles[column], color=BLUE)
        ax.set_title(f"average {label}", fontsize=10)
        ax.tick_params(axis="x", rotation=35)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
        tidy(ax)
    return Chart("Segment profiles", "bars per segment: mean recency, orders and revenue", png(figure))


def silhouette_by_k(scores: pd.DataFrame) -> Chart:
    """A line of the silhouette for each k, the chosen k circled."""
    figure = new_figure(7, 3.2)
    ax = figure.subplots()
    ax.plot(scores.k, scores.silhouette, marker="o", color=BLUE)
    chosen = scores[scores.chosen]
    ax.scatter(
        chosen.k,
        chosen.silhouette,
        s=160,
        facecolors="none",
        edgecolors=ORANGE,
        linewidths=2,
        label="chosen",
        zorder=3,
    )
    ax.set_xlabel("k (number of segments)")
    ax.set_ylabel("silhouette")
    ax.set_xticks(list(scores.k))
    ax.legend(frameon=False)
    tidy(ax)
    return Chart("Silhouette by k", "line: silhouette for each k, the chosen k circled", png(figure))


def rfm_labels_and_grid(labels: pd.DataFrame, grid: pd.DataFrame) -> Chart:
    """Bars of customers per RFM label (in the frame's order, first on top) beside a heatmap of buyers by
    recency score (rows, 5 on top) and frequency score (columns)."""
    figure = new_figure(9, 4.0)
    bars_ax, grid_ax = figure.subplots(1, 2, width_ratios=[3, 2])
    bars = bars_ax.barh(labels.rfm_label[::-1], labels.users[::-1], color=BLUE)
    bars_ax.bar_label(bars, labels=[f"{u:,}" for u in labels.users[::-1]], padding=3, fontsize=8)
    bars_ax.set_xlabel("customers")
    bars_ax.set_xlim(0, labels.users.max() * 1.18)
    tidy(bars_ax)
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
            grid_ax.text(
                j,
                i,
                f"{value:,}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > peak / 2 else "black",
            )
    figure.colorbar(image, ax=grid_ax, shrink=0.7, label="buyers")
    return Chart(
        "RFM labels and score grid",
        "bars: customers per RFM label; heatmap: buyers by recency and frequency score",
        png(figure),
    )


def recommendation_quality(wide: pd.DataFrame) -> Chart:
    """Grouped bars: each metric at k (one row of `wide`) for ALS and the popularity baseline."""
    labels = [f"{m}@{k}" for m, k in zip(wide.metric, wide.k, strict=True)]
    figure = new_figure(9, 3.6)
    ax = figure.subplots()
    positions = list(range(len(wide)))
    als = ax.bar([p - 0.2 for p in positions], wide.als, width=0.4, color=BLUE, label="ALS")
    base = ax.bar(
        [p + 0.2 for p in positions], wide.popularity, width=0.4, color=GREY, label="popularity baseline"
    )
    ax.bar_label(als, fmt="%.3f", fontsize=7, padding=2)
    ax.bar_label(base, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(positions, labels, rotation=30, ha="right")
    ax.legend(frameon=False)
    tidy(ax)
    return Chart(
        "ALS against the popularity baseline",
        "grouped bars: each metric at k for ALS and the baseline",
        png(figure),
    )


def audience_sizes(audience: pd.DataFrame) -> Chart:
    """Stacked horizontal bars: treatment and control of each campaign."""
    figure = new_figure(8, 0.55 * len(audience) + 1.2)
    ax = figure.subplots()
    treated = ax.barh(audience.campaign_id, audience.treatment, color=BLUE, label="treatment")
    held = ax.barh(
        audience.campaign_id, audience.control, left=audience.treatment, color=GREY, label="control"
    )
    ax.bar_label(
        treated, labels=[f"{n:,}" for n in audience.treatment], label_type="center", color="white", fontsize=9
    )
    ax.bar_label(held, labels=[f"{n:,}" for n in audience.control], padding=4, fontsize=9)
    ax.set_xlabel("customers")
    ax.set_xlim(0, audience.audience.max() * 1.15)
    ax.invert_yaxis()
    ax.legend(frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2)
    tidy(ax)
    return Chart("Audience sizes", "stacked bars: treatment and control per campaign", png(figure))


def lift_forest(variants: pd.DataFrame, level: str, tests: str) -> Chart:
    """A forest plot of each variant's lift over its control with its `level` interval (ci_low, ci_high,
    rel_ci_low, rel_ci_high: those of the test named by `tests`): relative lift in % when every variant has
    one, else the absolute lift; green above 0, red below, grey across."""
    relative = variants.lift_relative.notna().all() and variants.rel_ci_low.notna().all()
    point, low, high = (
        ("lift_relative", "rel_ci_low", "rel_ci_high") if relative else ("lift", "ci_low", "ci_high")
    )
    scale = 100.0 if relative else 1.0
    labels = [
        f"{e} · {m} · {v}"
        for e, m, v in zip(variants.experiment_id, variants.metric, variants.variant, strict=True)
    ]
    figure = new_figure(8.5, 0.45 * len(variants) + 1.2)
    ax = figure.subplots()
    for i, row in enumerate(variants.itertuples(index=False)):
        lo, hi, mid = getattr(row, low) * scale, getattr(row, high) * scale, getattr(row, point) * scale
        color = GREEN if lo > 0 else RED if hi < 0 else GREY
        ax.plot([lo, hi], [i, i], color=color, linewidth=3, solid_capstyle="round")
        ax.plot(mid, i, "o", color=color, markersize=7)
        ax.annotate(
            f"{mid:+.1f}%" if relative else f"{mid:+.4f}",
            (hi, i),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_ylim(len(variants) - 0.5, -0.5)
    ax.set_yticks(range(len(variants)), labels)
    ax.set_xlabel(
        f"relative difference from control, % ({level} interval)"
        if relative
        else f"difference from control ({level} interval)"
    )
    ax.margins(x=0.15)
    tidy(ax)
    return Chart(
        f"Difference from control with {level} intervals ({tests} test): a bar across 0 is no clear win or loss",
        "forest plot: each variant's difference and interval; green above 0, red below, grey across",
        png(figure),
    )


def gain_and_calibration(gains: pd.DataFrame, label: str, baseline: pd.DataFrame | None) -> Chart:
    """Two panels from a model's deciles (decile 1 first). Left, the gain chart: the share of buyers reached
    against the share of customers contacted, highest scores first, with the random diagonal (and the
    baseline's curve when given). Right, calibration: each decile's observed buying rate against its mean
    predicted probability, with the diagonal of perfect calibration."""
    figure = new_figure(9.5, 4.0)
    gain_ax, calibration_ax = figure.subplots(1, 2)

    def curve(deciles: pd.DataFrame) -> tuple[list[float], list[float]]:
        contacted = deciles.users.cumsum() / deciles.users.sum()
        return [0.0, *contacted], [0.0, *deciles.cumulative_buyer_share]

    gain_ax.plot([0, 1], [0, 1], linestyle="--", color=GREY, label="random")
    if baseline is not None:
        gain_ax.plot(*curve(baseline), marker=".", color=ORANGE, label="BG/NBD baseline")
    x, y = curve(gains)
    gain_ax.plot(x, y, marker="o", color=BLUE, label=label)
    gain_ax.annotate(
        f"top 10%: {y[1]:.0%} of buyers", (x[1], y[1]), xytext=(8, -4), textcoords="offset points", fontsize=8
    )
    gain_ax.set_xlim(0, 1)
    gain_ax.set_ylim(0, 1.02)
    gain_ax.set_xlabel("share of customers contacted (highest scores first)")
    gain_ax.set_ylabel("share of buyers reached")
    gain_ax.set_title("gain", fontsize=10)
    gain_ax.legend(frameon=False, fontsize=8, loc="lower right")

    top = max(gains.mean_predicted.max(), gains.observed_rate.max()) * 1.1 or 1.0
    calibration_ax.plot([0, top], [0, top], linestyle="--", color=GREY, label="perfect calibration")
    calibration_ax.plot(gains.mean_predicted, gains.observed_rate, marker="o", color=BLUE, label=label)
    for decile, predicted, observed in zip(
        gains.decile, gains.mean_predicted, gains.observed_rate, strict=True
    ):
        calibration_ax.annotate(
            str(decile), (predicted, observed), xytext=(4, 4), textcoords="offset points", fontsize=7
        )
    calibration_ax.set_xlim(0, top)
    calibration_ax.set_ylim(0, top)
    calibration_ax.set_xlabel("predicted probability (decile mean)")
    calibration_ax.set_ylabel("share who bought")
    calibration_ax.set_title("calibration (points are deciles)", fontsize=10)
    calibration_ax.legend(frameon=False, fontsize=8, loc="upper left")
    for ax, decimals in ((gain_ax, 0), (calibration_ax, 0 if top >= 0.05 else None)):
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=decimals))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=decimals))
        tidy(ax)
    return Chart(
        f"Gain and calibration of the chosen model ({label})",
        "left: share of buyers reached against share of customers contacted, with the random diagonal; "
        "right: observed buying rate against mean predicted probability per decile, with the diagonal",
        png(figure),
    )

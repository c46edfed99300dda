"""report: rendered from hand-made gold tables (so it does not wait for the recommend and experiment jobs):
every section is there with its charts (real PNGs) and tables whose numbers equal the gold tables', and a
lake with tables or a date missing still gives a report that says what is missing and which job makes it."""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
from html.parser import HTMLParser

import pytest
from PIL import Image
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.jobs import main
from marketlake.lake import Lake
from marketlake.lake.schema import spark_schema
from marketlake.models import SCHEMA as MODELS_SCHEMA
from marketlake.report import Display, Money, build, gather, render, report_path
from marketlake.rules import RULES_SCHEMA
from marketlake.segment import name_segments, profiles_frame

RUN_DATE = dt.date(2024, 6, 30)
EUROS = Display(Money("EUR"))
SECTION_IDS = [
    "segments",
    "silhouette",
    "rfm",
    "rules",
    "recommendations",
    "propensity",
    "audiences",
    "experiments",
]
# gold.propensity_deciles' buyers per decile (100 validation users in each, 100 buyers in all) by model.
DECILE_BUYERS = {
    "gbt": [28, 18, 14, 10, 9, 7, 6, 4, 3, 1],
    "logistic_regression": [24, 17, 14, 11, 10, 8, 6, 5, 3, 2],
    "bgnbd": [19, 15, 13, 12, 10, 9, 8, 6, 5, 3],
}
PREDICTED = [0.27, 0.19, 0.14, 0.11, 0.09, 0.07, 0.055, 0.04, 0.025, 0.01]


class Page(HTMLParser):
    """The parts of the report the tests look at: section ids, images, tables by id, .missing boxes and
    the findings' sentences."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.missing: list[str] = []
        self.findings: list[str] = []
        self.findings_of: dict[str, list[str]] = {}  # section id -> its findings
        self.actions: dict[str, str] = {}  # section id -> its "what you can do" sentence
        self.links: dict[str, set[str]] = {}  # section id -> the glossary terms it links to
        self.glossary: dict[str, tuple[str, str]] = {}  # term key -> (name, explanation)
        self.tooltips: dict[str, list[str]] = {}  # table id -> its headings' tooltips
        self.captions: dict[str, str] = {}
        self._table = self._cell = self._missing = self._finding = None
        self._action = self._term = self._definition = self._caption = None
        self._section = None
        self._in_findings = False
        self._depth = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "a" and (attrs.get("href") or "").startswith("#term-") and self._section:
            self.links[self._section].add(attrs["href"][len("#term-") :])
        if tag == "section":
            self._section = attrs.get("id")
            self.sections.append(self._section)
            self.links[self._section] = set()
        elif tag == "p" and "action" in classes:
            self._action = ""
        elif tag == "dt":
            self._term = attrs["id"][len("term-") :]
            self.glossary[self._term] = ("", "")
            self._definition = None
        elif tag == "dd":
            self._definition = ""
        elif tag == "caption" and self._table:
            self._caption = ""
        elif tag == "th" and self._table:
            self.tooltips.setdefault(self._table, []).append(attrs.get("title") or "")
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self._table = attrs["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = ""
        elif tag == "div" and "missing" in (attrs.get("class") or "").split():
            self._missing, self._depth = "", 1
        elif tag == "div" and self._missing is not None:
            self._depth += 1
        elif tag == "ul" and "findings" in (attrs.get("class") or "").split():
            self._in_findings = True
        elif tag == "li" and self._in_findings:
            self._finding = ""

    def handle_endtag(self, tag):
        if tag == "p" and self._action is not None:
            self.actions[self._section] = " ".join(self._action.split())
            self._action = None
        elif tag == "dd" and self._definition is not None:
            self.glossary[self._term] = (self.glossary[self._term][0], " ".join(self._definition.split()))
            self._definition = None
        elif tag == "caption" and self._caption is not None:
            self.captions[self._table] = " ".join(self._caption.split())
            self._caption = None
        if tag == "ul":
            self._in_findings = False
        elif tag == "li" and self._finding is not None:
            self.findings.append(" ".join(self._finding.split()))
            self.findings_of.setdefault(self._section, []).append(self.findings[-1])
            self._finding = None
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(self._cell.strip())
            self._cell = None
        elif tag == "div" and self._missing is not None:
            self._depth -= 1
            if self._depth == 0:
                self.missing.append(" ".join(self._missing.split()))
                self._missing = None

    def handle_data(self, data):
        if self._action is not None:
            self._action += data
        if self._term is not None and self._definition is None and not self.glossary[self._term][0]:
            self.glossary[self._term] = (data.strip(), "")
        if self._definition is not None:
            self._definition += data
        if self._caption is not None:
            self._caption += data
        if self._cell is not None:
            self._cell += data
        if self._missing is not None:
            self._missing += data
        if self._finding is not None:
            self._finding += data

    def rows(self, table_id: str) -> list[dict[str, str]]:
        header, *body = self.tables[table_id]
        return [dict(zip(header, row, strict=True)) for row in body]


# gold.experiment_results: exp-1 decided by the sequential test (conversion, conversion with CUPED, revenue
# per user capped at 500), exp-2 by the fixed-horizon test. Each row's sequential and fixed figures differ, so
# the page shows which it used.
FIXED_FIGURES = ("ci_low", "ci_high", "rel_ci_low", "rel_ci_high", "p_value_adjusted")
SEQUENTIAL_FIGURES = tuple(f"sequential_{c}" for c in FIXED_FIGURES)
WIN, RUNNING = "significantly better than control", "no significant difference yet"
EXPERIMENT_ROWS = [
    {
        "experiment_id": "exp-1",
        "metric": "conversion",
        "variant": "A",
        "is_control": True,
        "users": 5000,
        "conversions": 500.0,
        "rate": 0.10,
        "decision_test": "sequential",
    },
    {
        "experiment_id": "exp-1",
        "metric": "conversion",
        "variant": "B",
        "is_control": False,
        "users": 5000,
        "conversions": 600.0,
        "rate": 0.12,
        "lift": 0.02,
        "lift_relative": 0.2,
        "fixed": (0.008, 0.032, 0.08, 0.32, 0.002),
        "sequential": (0.003, 0.037, 0.03, 0.37, 0.006),
        "prob_beat_control": 0.9991,
        "decision": "ship",
        "decision_reason": WIN,
        "decision_test": "sequential",
    },
    {
        "experiment_id": "exp-1",
        "metric": "conversion",
        "variant": "A",
        "is_control": True,
        "users": 5000,
        "conversions": 500.0,
        "rate": 0.101,
        "cuped": True,
        "decision_test": "sequential",
    },
    {
        "experiment_id": "exp-1",
        "metric": "conversion",
        "variant": "B",
        "is_control": False,
        "users": 5000,
        "conversions": 600.0,
        "rate": 0.119,
        "lift": 0.018,
        "lift_relative": 0.178,
        "cuped": True,
        "fixed": (0.009, 0.027, 0.09, 0.27, 0.0001),
        "sequential": (0.004, 0.033, 0.04, 0.33, 0.003),
        "decision": "ship",
        "decision_reason": WIN,
        "decision_test": "sequential",
    },
    {
        "experiment_id": "exp-1",
        "metric": "revenue_per_user",
        "variant": "A",
        "is_control": True,
        "users": 5000,
        "conversions": 60000.0,
        "rate": 12.0,
        "value_cap": 500.0,
        "capped_users": 5,
        "decision_test": "sequential",
    },
    {
        "experiment_id": "exp-1",
        "metric": "revenue_per_user",
        "variant": "B",
        "is_control": False,
        "users": 5000,
        "conversions": 61234.5,
        "rate": 12.2469,
        "lift": 0.2469,
        "lift_relative": 0.0206,
        "fixed": (-0.9, 1.4, -0.075, 0.117, 0.46),
        "sequential": (-2.3, 2.8, -0.19, 0.23, 1.0),
        "decision": "keep running",
        "decision_reason": RUNNING,
        "decision_test": "sequential",
        "value_cap": 500.0,
        "capped_users": 7,
    },
    {
        "experiment_id": "exp-2",
        "metric": "conversion",
        "variant": "control",
        "is_control": True,
        "users": 800,
        "conversions": 40.0,
        "rate": 0.05,
        "decision_test": "fixed",
    },
    {
        "experiment_id": "exp-2",
        "metric": "conversion",
        "variant": "treatment",
        "is_control": False,
        "users": 820,
        "conversions": 57.0,
        "rate": 0.0695,
        "lift": 0.0196,
        "lift_relative": 0.39,
        "fixed": (0.0012, 0.0378, 0.02, 0.88, 0.04),
        "sequential": (-0.012, 0.051, -0.2, 1.1, 0.6),
        "prob_beat_control": 0.98,
        "decision": "ship",
        "decision_reason": WIN,
        "decision_test": "fixed",
    },
]


def experiment_row(*, fixed=(None,) * 5, sequential=(None,) * 5, **values) -> dict:
    """A row of gold.experiment_results for RUN_DATE with both tests' figures (ci low, high, relative low,
    high, adjusted p-value); the raw p-values are the adjusted ones (one comparison per metric)."""
    row = dict.fromkeys(catalog.EXPERIMENT_RESULTS.column_names)
    row.update(source="events", cuped=False, srm=False, srm_p_value=0.8, as_of_date=RUN_DATE)
    row.update(zip(FIXED_FIGURES, fixed, strict=True))
    row.update(zip(SEQUENTIAL_FIGURES, sequential, strict=True))
    row.update(
        p_value=row["p_value_adjusted"], sequential_p_value=row["sequential_p_value_adjusted"], **values
    )
    return row


def write_gold(spark, lake: Lake) -> None:
    """Small gold tables of every kind the report reads, for RUN_DATE."""
    partitioned = {"partition_by": ["as_of_date"]}
    profiles = [
        {
            "_cluster": i,
            "size": size,
            "buyer_share": buyers,
            "mean_recency_days": recency,
            "mean_frequency": freq,
            "mean_monetary": money,
            "mean_tenure_days": 300.0,
            **{
                f"mean_{c}": 1.0
                for c in (
                    "days_since_purchase",
                    "avg_order_value",
                    "views",
                    "clicks",
                    "carts",
                    "purchases",
                    "sessions",
                    "ctr",
                    "cart_rate",
                    "purchase_rate",
                    "active_days",
                )
            },
        }
        for i, (size, buyers, recency, freq, money) in enumerate(
            [(120, 1.0, 2.0, 12.0, 1500.0), (300, 0.9, 4.0, 3.0, 300.0), (80, 0.2, 40.0, 0.1, 5.0)]
        )
    ]
    named = name_segments(profiles)
    frame = profiles_frame(spark, named, 500, 0.61, ["recency_days", "frequency"], "2024-06-30-abc", RUN_DATE)
    lake.write("gold.segment_profiles", frame, "append", **partitioned)
    metrics = {
        "k": 3.0,
        "silhouette": 0.61,
        "silhouette_k2": 0.55,
        "silhouette_k3": 0.61,
        "silhouette_k4": 0.48,
        "stability_k2": 1.0,
        "stability_k3": 0.97,
        "stability_k4": 0.62,
    }
    model_row = (
        "segment_kmeans",
        "2024-06-30-abc",
        RUN_DATE,
        "r",
        dt.datetime(2024, 6, 30, 3),
        "/m",
        {},
        metrics,
        [],
    )
    lake.write("ops.models", spark.createDataFrame([model_row], MODELS_SCHEMA), "append")

    labels = ["Champions"] * 40 + ["Loyal"] * 60 + ["Hibernating"] * 100 + ["Prospects"] * 300
    features = spark.createDataFrame(
        [
            (
                f"u{i:04d}",
                label,
                0 if label == "Prospects" else 1 + i % 5,
                0.0 if label == "Prospects" else 10.0 * (i % 7),
                None if label == "Prospects" else 1 + i % 5,
                None if label == "Prospects" else 1 + (i // 5) % 5,
            )
            for i, label in enumerate(labels)
        ],
        "user_id string, rfm_label string, frequency long, monetary double, r_score int, f_score int",
    ).withColumn("as_of_date", F.lit(RUN_DATE))
    lake.write("gold.user_features", features, "append", **partitioned)

    rules = spark.createDataFrame(
        [
            ([f"i{a:02d}"], [f"i{b:02d}"], 0.01 * a, 0.5, float(a))
            for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]
        ],
        RULES_SCHEMA,
    ).withColumn("as_of_date", F.lit(RUN_DATE))
    lake.write("gold.association_rules", rules, "append", **partitioned)
    cross_sell = spark.createDataFrame(
        [("i01", 1, "i02", 0.5, 1.0, 0.01)],
        "item_id string, rank int, recommended_item_id string, confidence double, lift double, support double",
    )
    lake.write(
        "gold.item_cross_sell", cross_sell.withColumn("as_of_date", F.lit(RUN_DATE)), "append", **partitioned
    )
    items = spark.createDataFrame(
        [(f"i{n:02d}", f"Item number {n}", "home") for n in range(1, 9)],
        "item_id string, title string, category string",
    )
    lake.write("silver.items", items, "append")

    evaluation = spark.createDataFrame(
        [
            (model, metric, k, value, 400, "last-7-days", "rec-v1")
            for model, scale in (("als", 1.0), ("popularity", 0.5))
            for metric, k, value in (
                ("precision", 10, 0.12),
                ("recall", 10, 0.30),
                ("ndcg", 10, 0.25),
                ("coverage", 10, 0.8),
            )
            for value in [value * scale]
        ],
        "model string, metric string, k int, value double, users long, split string, model_version string",
    ).withColumn("as_of_date", F.lit(RUN_DATE))
    lake.write("gold.recommendation_evaluation", evaluation, "append", **partitioned)
    recommendations = spark.createDataFrame(
        [
            (f"u{u:04d}", r, f"i{r:02d}", 1.0 / r, "als" if u < 300 else "global_popular", "rec-v1")
            for u in range(500)
            for r in (1, 2)
        ],
        "user_id string, rank int, item_id string, score double, source string, model_version string",
    ).withColumn("as_of_date", F.lit(RUN_DATE))
    lake.write("gold.user_recommendations", recommendations, "append", **partitioned)

    audience = spark.createDataFrame(
        [
            (
                campaign,
                f"u{u:04d}",
                "loyal",
                "Loyal",
                offer,
                "email",
                ["i01"] if u % 2 else [],
                [],
                group,
                share,
                u,
            )
            for campaign, n, share, offer in (
                ("spring", 200, 0.1, "10% off"),
                ("vip", 50, 0.2, "early access"),
            )
            for u in range(n)
            for group in ["control" if u % int(1 / share) == 0 else "treatment"]
        ],
        "campaign_id string, user_id string, segment_name string, rfm_label string, offer string, channel string, "
        "items array<string>, cross_sell array<string>, group string, control_share double, audience_rank int",
    ).withColumn("as_of_date", F.lit(RUN_DATE))
    lake.write("gold.campaign_audience", audience, "append", **partitioned)

    experiments = spark.createDataFrame(
        [tuple(experiment_row(**row).values()) for row in EXPERIMENT_ROWS],
        spark_schema(catalog.EXPERIMENT_RESULTS),
    )
    lake.write("gold.experiment_results", experiments, "append", **partitioned)
    write_propensity(spark, lake)


def write_propensity(spark, lake: Lake) -> None:
    """The propensity job's three tables for RUN_DATE: gbt chosen over logistic regression and the BG/NBD
    baseline, tested on 1,000 users of whom 100 bought; 200 users scored, 20 per decile."""
    horizon, train, validation = 30, dt.date(2024, 5, 1), dt.date(2024, 5, 31)
    evaluation = [
        # model, chosen, auc, average precision, brier, log-loss, top-decile lift, threshold, precision, recall, f1
        ("gbt", True, 0.81, 0.42, 0.0712, 0.2453, 2.8, 0.22, 0.45, 0.50, 0.4737),
        ("logistic_regression", False, 0.78, 0.36, 0.0741, 0.2561, 2.4, 0.2, 0.40, 0.48, 0.4364),
        ("bgnbd", False, 0.70, 0.25, 0.0802, 0.2802, 1.9, 0.15, 0.30, 0.45, 0.36),
    ]
    rows = [
        (
            RUN_DATE,
            m,
            chosen,
            "prop-v1",
            horizon,
            train,
            validation,
            1000,
            100,
            0.1,
            auc,
            ap,
            brier,
            loss,
            lift,
        )
        + (threshold, 0.88, precision, recall, f1)
        for m, chosen, auc, ap, brier, loss, lift, threshold, precision, recall, f1 in evaluation
    ]
    frame = spark.createDataFrame(rows, spark_schema(catalog.PROPENSITY_EVALUATION))
    lake.write(catalog.PROPENSITY_EVALUATION.name, frame, "append", partition_by=["as_of_date"])
    deciles = []
    for model, buyers in DECILE_BUYERS.items():
        cumulative = 0
        for decile, (bought, predicted) in enumerate(zip(buyers, PREDICTED, strict=True), start=1):
            cumulative += bought
            deciles.append(
                (RUN_DATE, model, decile, 100, bought, predicted, bought / 100, bought / 10, cumulative / 100)
            )
    frame = spark.createDataFrame(deciles, spark_schema(catalog.PROPENSITY_DECILES))
    lake.write(catalog.PROPENSITY_DECILES.name, frame, "append", partition_by=["as_of_date"])
    scores = [
        (
            f"u{i:04d}",
            p,
            decile,
            None if i % 3 else 0.5,
            None if i % 3 else 0.9,
            "gbt",
            "prop-v1",
            horizon,
            RUN_DATE,
        )
        for i in range(200)
        for decile in [i // 20 + 1]
        for p in [PREDICTED[decile - 1] * (1.1 - (i % 20) / 100)]
    ]
    frame = spark.createDataFrame(scores, spark_schema(catalog.PURCHASE_PROPENSITY))
    lake.write(catalog.PURCHASE_PROPENSITY.name, frame, "append", partition_by=["as_of_date"])


@pytest.fixture(scope="module")
def reported(spark, config, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("report") / "lake")
    lake = Lake(spark, config.lake, root)
    write_gold(spark, lake)
    assert main("report", ["--lake", root, "--run-date", RUN_DATE.isoformat()]) == 0
    path = report_path(root, RUN_DATE)
    with open(path, encoding="utf-8") as file:
        return lake, root, Page(file.read())


def test_every_section_is_there_with_real_png_charts_and_nothing_missing(reported):
    _, _, page = reported
    assert page.sections == [*SECTION_IDS, "runs", "glossary"]
    # The report's own run is not in ops.job_runs while it runs: the only missing box is that one.
    assert page.missing == ["ops.job_runs is absent from this lake."]
    assert (
        len(page.images) == 8
    )  # segments 2, silhouette, RFM, recommendations, propensity, audiences, experiments
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.format == "PNG" and image.width > 300 and image.height > 150


def test_segment_silhouette_and_rfm_numbers_are_the_gold_tables(spark, reported):
    lake, _, page = reported
    profiles = lake.read("gold.segment_profiles").orderBy("segment_id").collect()
    shown = page.rows("segment-profiles")
    assert [(r["segment"], r["customers"], r["share"]) for r in shown] == [
        (p.segment_name, f"{p.size:,}", f"{p.share:.1%}") for p in profiles
    ]
    assert shown[0]["revenue"] == "€1,500.00" and shown[0]["strategy"] == profiles[0].strategy
    assert [(r["k"], r["silhouette"], r["stability"], r[""]) for r in page.rows("silhouette-by-k")] == [
        ("2", "0.5500", "1.0000", ""),
        ("3", "0.6100", "0.9700", "chosen"),
        ("4", "0.4800", "0.6200", ""),
    ]
    counts = {
        r.rfm_label: r["count"]
        for r in lake.read("gold.user_features").groupBy("rfm_label").count().collect()
    }
    rfm = page.rows("rfm-labels")
    assert [r["RFM label"] for r in rfm] == [
        "Champions",
        "Loyal",
        "Hibernating",
        "Prospects",
    ]  # the RFM grid's order
    assert {r["RFM label"]: r["customers"] for r in rfm} == {label: f"{n:,}" for label, n in counts.items()}
    assert rfm[-1]["share"] == f"{300 / 500:.1%}"


def test_rules_recommendations_audiences_and_experiments_numbers(reported):
    lake, _, page = reported
    rules = page.rows("top-rules")
    assert [r["customers who buy"] for r in rules] == [f"i0{a} (Item number {a})" for a in (7, 5, 3, 1)]
    assert [r["lift"] for r in rules] == ["7.00", "5.00", "3.00", "1.00"]
    evaluation = {(r["measure"], r["k"]): r for r in page.rows("recommendation-evaluation")}
    ndcg = evaluation[("ranking quality (nDCG)", "10")]
    assert ndcg["ALS"] == "0.2500" and ndcg["best-sellers"] == "0.1250"
    assert ndcg["ALS / best-sellers"] == "2.00" and len(evaluation) == 4
    assert page.rows("recommendation-sources") == [
        {"source": "als", "users": "300", "recommendations": "600"},
        {"source": "global_popular", "users": "200", "recommendations": "400"},
    ]
    groups = {
        (r.campaign_id, r.group): r["count"]
        for r in lake.read("gold.campaign_audience").groupBy("campaign_id", "group").count().collect()
    }
    audiences = {r["campaign"]: r for r in page.rows("audiences")}
    for campaign in ("spring", "vip"):
        row, treatment, control = (
            audiences[campaign],
            groups[(campaign, "treatment")],
            groups[(campaign, "control")],
        )
        assert (row["treatment"], row["control"], row["audience"]) == (
            f"{treatment:,}",
            f"{control:,}",
            f"{treatment + control:,}",
        )
        assert row["control share"] == f"{control / (treatment + control):.1%}"
    assert audiences["vip"]["configured"] == "20.0%" and audiences["spring"]["with recommendations"] == "100"
    conversion = page.rows("experiment-conversion-sequential")
    assert [(r["experiment"], r["variant"], r["figures"]) for r in conversion] == [
        ("exp-1", "A (control)", "as measured"),
        ("exp-1", "B", "as measured"),
        ("exp-1", "A (control)", "adjusted (CUPED)"),
        ("exp-1", "B", "adjusted (CUPED)"),
    ]
    b = conversion[1]
    assert (b["users"], b["buyers"], b["conversion rate"]) == ("5,000", "600", "12.0%")
    assert (b["difference (95% interval)"], b["relative difference (95% interval)"]) == (
        "+2.0 pts [+0.3 pts, +3.7 pts]",
        "+20.0% [+3.0%, +37.0%]",
    )
    assert (b["p-value (sequential)"], b["decision"], b["why"]) == (
        "0.0060",
        "ship",
        "significantly better than control",
    )
    assert conversion[0]["difference (95% interval)"] == "-" and conversion[0]["decision"] == "-"


def test_who_will_buy_numbers_are_the_propensity_tables(reported):
    lake, _, page = reported
    evaluation = {r.model: r for r in lake.read("gold.propensity_evaluation").collect()}
    models = page.rows("propensity-models")
    assert [(r["model"], r[""]) for r in models] == [
        ("gradient-boosted trees", "chosen"),
        ("logistic regression", ""),
        ("BG/NBD baseline", ""),
    ]  # the chosen model first, then by average precision
    for row, model in zip(models, ["gbt", "logistic_regression", "bgnbd"], strict=True):
        m = evaluation[model]
        assert (row["AUC"], row["average precision"], row["Brier"], row["log-loss"]) == (
            f"{m.auc:.3f}",
            f"{m.average_precision:.3f}",
            f"{m.brier:.4f}",
            f"{m.log_loss:.4f}",
        )
        assert (row["top-decile lift"], row["F1 threshold"], row["recall"]) == (
            f"{m.lift_top_decile:.1f}x",
            f"{m.threshold:.1%}",
            f"{m.recall:.1%}",
        )
        buyers = DECILE_BUYERS[model]
        assert row["top 10% hold"] == f"{buyers[0]}%" and row["top 30% hold"] == f"{sum(buyers[:3])}%"

    gains = lake.read("gold.propensity_deciles").filter(F.col("model") == "gbt").orderBy("decile").collect()
    assert [
        (r["decile"], r["customers"], r["bought"], r["predicted"], r["bought (share)"], r["buyers reached"])
        for r in page.rows("propensity-deciles")
    ] == [
        (
            str(d.decile),
            str(d.users),
            str(d.buyers),
            f"{d.mean_predicted:.1%}",
            f"{d.observed_rate:.1%}",
            f"{d.cumulative_buyer_share:.1%}",
        )
        for d in gains
    ]

    by_decile = (
        lake.read("gold.purchase_propensity")
        .groupBy("decile")
        .agg(F.count("*").alias("users"), F.avg("p_purchase").alias("mean"), F.sum("p_purchase").alias("sum"))
        .orderBy("decile")
        .collect()
    )
    scores = page.rows("propensity-scores")
    assert [(r["decile"], r["customers"], r["mean chance"], r["expected buyers"]) for r in scores] == [
        (str(d.decile), str(d.users), f"{d.mean:.1%}", f"{d['sum']:.1f}") for d in by_decile
    ]
    total = sum(d["sum"] for d in by_decile)
    top_3 = sum(d["sum"] for d in by_decile[:3])
    assert scores[-1]["deciles 1 to this"] == f"{total:.1f}"

    assert page.findings_of["propensity"] == [
        "In the test, the top 10% of customers by score held 28% of the next 30 days' buyers (2.8 times the "
        "average); the top 30% held 60%.",
        "Of customers scored about 27% (decile 1), about 1 in 4 bought (28%); of those scored about 9.0% "
        "(decile 5), about 1 in 11 (9.0%).",
        "Chosen: gradient-boosted trees, the best at putting buyers first (3 models tried; average precision "
        "0.420, where picking at random gives 0.100); the BG/NBD baseline, which ranks customers by purchase "
        "history alone, reached 0.250.",
        "What to do: send reminders and offers to deciles 1-3 (60% of the buyers in 30% of the customers) and "
        "leave deciles 9-10 out of paid channels (they held 4.0% of the buyers). Many in the top deciles would "
        "buy anyway: whether a campaign adds purchases is for an experiment with a control group to tell.",
        f"Deciles 1-3 (60 customers) should bring about {round(top_3)} of the {round(total)} buyers expected "
        "in the next 30 days.",
    ]


def test_the_choice_names_the_baseline_when_it_wins_or_could_not_be_fitted():
    import pandas as pd

    from marketlake.report.sections import choice_sentence

    evaluation = pd.DataFrame(
        {"model": ["bgnbd", "gbt"], "average_precision": [0.3, 0.25], "base_rate": [0.1, 0.1]}
    )
    assert choice_sentence(evaluation, "bgnbd").startswith(
        "Chosen: the BG/NBD baseline itself (average precision 0.300, 2 models tried)"
    )
    alone = evaluation[evaluation.model == "gbt"]
    assert choice_sentence(alone, "gbt").endswith(
        "the BG/NBD baseline could not be fitted (too few repeat buyers)."
    )


def test_the_job_prints_the_path_and_a_rerun_replaces_the_file(reported, capsys):
    _, root, _ = reported
    path = report_path(root, RUN_DATE)
    before = os.path.getmtime(path)
    assert main("report", ["--lake", root, "--run-date", RUN_DATE.isoformat()]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"report: {path}"
    assert os.path.getmtime(path) >= before
    with open(path, encoding="utf-8") as file:
        page = Page(file.read())
    assert page.missing == []  # the first run is in ops.job_runs now
    assert {r["job"]: r["status"] for r in page.rows("job-runs")} == {"report": "succeeded"}


def test_missing_tables_and_dates_are_named_with_the_job_that_makes_them(spark, config, reported, tmp_path):
    lake, _, _ = reported
    other_day = RUN_DATE + dt.timedelta(days=1)
    data = gather(lake, other_day)
    page = Page(render(data, build(data, EUROS), dt.datetime(2024, 7, 1)))
    assert page.sections == [*SECTION_IDS, "runs", "glossary"] and page.images == []
    assert (
        f"gold.segment_profiles has no rows for {other_day} (its latest date is {RUN_DATE}): run segment for {other_day}."
        in page.missing
    )
    assert any(
        m.startswith("gold.experiment_results has no rows") and "run experiment" in m for m in page.missing
    )
    # No propensity rows for the date: the section says so and shows nothing else.
    for table in ("gold.propensity_evaluation", "gold.purchase_propensity"):
        assert (
            f"{table} has no rows for {other_day} (its latest date is {RUN_DATE}): run propensity for {other_day}."
            in page.missing
        )
    assert page.findings == [] and not any(t.startswith("propensity") for t in page.tables)

    empty = Lake(spark, config.lake, str(tmp_path / "empty"))
    data = gather(empty, RUN_DATE)
    page = Page(render(data, build(data, EUROS), dt.datetime(2024, 7, 1)))
    for table, job in [
        ("gold.segment_profiles", "segment"),
        ("gold.user_features", "features"),
        ("gold.association_rules", "rules"),
        ("gold.recommendation_evaluation", "recommend"),
        ("gold.user_recommendations", "recommend"),
        ("gold.campaign_audience", "activate"),
        ("gold.experiment_results", "experiment"),
        ("gold.propensity_evaluation", "propensity"),
        ("gold.purchase_propensity", "propensity"),
    ]:
        message = f"{table} is absent from this lake: the {job} job makes it (./spark-submit.sh {job} --run-date {RUN_DATE})."
        assert message in page.missing


def test_pipeline_prints_the_report_path_last(reported, config, capsys):
    from marketlake.jobs.pipeline import print_tables
    from marketlake.runner import JobContext

    lake, root, _ = reported
    print_tables(JobContext("pipeline", lake.spark, config, lake, RUN_DATE, "run"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"The report for {RUN_DATE}: {report_path(root, RUN_DATE)}"
    print_tables(JobContext("pipeline", lake.spark, config, lake, RUN_DATE + dt.timedelta(days=1), "run"))
    assert not capsys.readouterr().out.strip().splitlines()[-1].startswith("The report for")


# ---- issue 19: the report speaks to marketers ---------------------------------------------------------

# Headings of amounts, by table; every other column holds no amount.
AMOUNT_COLUMNS = {
    "segment-profiles": {"revenue", "order value"},
    "rfm-labels": {"revenue (mean)"},
    "experiment-revenue-sequential": {"revenue", "revenue per user (capped)", "difference (95% interval)"},
}


def amounts_carry_the_currency(page: Page, mark: str) -> None:
    """Every cell of an amount column holds `mark`, and no other cell of any table does."""
    for table_id, (header, *body) in page.tables.items():
        amounts = AMOUNT_COLUMNS.get(table_id, set())
        assert amounts <= set(header), (table_id, header)
        for row in body:
            for heading, cell in zip(header, row, strict=True):
                if heading in amounts and cell != "-":
                    assert mark in cell, (table_id, heading, cell)
                elif heading not in amounts:
                    assert mark not in cell, (table_id, heading, cell)


def test_money_carries_the_currency_and_counts_do_not(reported):
    _, _, page = reported
    amounts_carry_the_currency(page, "€")
    revenue = page.rows("experiment-revenue-sequential")
    assert [(r["users"], r["revenue"], r["revenue per user (capped)"]) for r in revenue] == [
        ("5,000", "€60,000.00", "€12.00"),
        ("5,000", "€61,234.50", "€12.25"),
    ]
    assert revenue[1]["difference (95% interval)"] == "+€0.25 [-€2.30, +€2.80]"
    assert revenue[1]["users capped"] == "7"


def test_a_currency_without_a_symbol_follows_the_amount(reported):
    lake, _, _ = reported
    data = gather(lake, RUN_DATE)
    html = render(data, build(data, Display(Money("CHF"))), dt.datetime(2024, 7, 1))
    page = Page(html)
    assert "€" not in html
    amounts_carry_the_currency(page, " CHF")
    assert page.rows("segment-profiles")[0]["revenue"] == "1,500.00 CHF"
    assert "capped at 500.00 CHF per user: 12 users capped" in page.captions["experiment-revenue-sequential"]


def test_money_formats():
    assert Money("EUR")(1234.5) == "€1,234.50" and Money("USD")(-3.2) == "-$3.20"
    assert Money("GBP").signed(0.004) == "+£0.00" and Money("GBP").signed(-0.004) == "+£0.00"
    assert Money("EUR").signed(-1.1) == "-€1.10" and Money("EUR")(None) == "-"
    assert Money("CHF")(1234.5) == "1,234.50 CHF" and Money("JPY")(1234.5) == "1,234 JPY"


def test_the_currency_setting(config):
    from marketlake.config import load_config
    from marketlake.errors import ConfigError

    assert config.report.currency == "EUR"
    assert load_config(None, {"MARKETLAKE__REPORT__CURRENCY": "chf"}).report.currency == "CHF"
    with pytest.raises(ConfigError, match="report.currency"):
        load_config(None, {"MARKETLAKE__REPORT__CURRENCY": "euro"})


def test_revenue_rows_are_labelled_revenue_and_conversion_rows_buyers(reported):
    _, _, page = reported
    experiment_tables = {t: rows[0] for t, rows in page.tables.items() if t.startswith("experiment-")}
    assert set(experiment_tables) == {
        "experiment-conversion-sequential",
        "experiment-revenue-sequential",
        "experiment-conversion-fixed",
    }
    for header in experiment_tables.values():
        assert not {"conversions", "rate"} & set(header)
    revenue = experiment_tables["experiment-revenue-sequential"]
    assert {"users", "revenue", "revenue per user (capped)"} <= set(revenue) and "buyers" not in revenue
    for name in ("experiment-conversion-sequential", "experiment-conversion-fixed"):
        assert {"users", "buyers", "conversion rate"} <= set(experiment_tables[name])
    # The Bayesian chance to beat control is a fixed-sample figure of conversions: beside fixed decisions only.
    assert "chance to beat control" not in revenue
    assert "chance to beat control" not in experiment_tables["experiment-conversion-sequential"]
    assert page.rows("experiment-conversion-fixed")[1]["chance to beat control"] == "98.0%"
    assert page.captions["experiment-revenue-sequential"].endswith(
        "exp-1: revenue per user, capped at €500.00 per user: 12 users capped."
    )
    # The technical column stays named for the data engineers, in the heading's tooltip.
    tooltips = dict(zip(revenue, page.tooltips["experiment-revenue-sequential"], strict=True))
    assert "conversions (for revenue_per_user: revenue)" in tooltips["revenue"]


def test_the_figures_shown_are_those_of_the_test_that_decided(reported):
    _, _, page = reported

    def cells(table_id: str) -> str:
        return " ".join(" ".join(row) for row in page.tables[table_id])

    # exp-1 was decided by the sequential test: its intervals and p-values, never the fixed ones.
    sequential = cells("experiment-conversion-sequential")
    for shown in ("[+0.3 pts, +3.7 pts]", "[+3.0%, +37.0%]", "0.0060", "[+0.4 pts, +3.3 pts]", "0.0030"):
        assert shown in sequential
    for hidden in ("+0.8 pts", "+3.2 pts", "+8.0%", "0.0020", "+0.9 pts", "<0.0001"):
        assert hidden not in sequential
    revenue = page.rows("experiment-revenue-sequential")[1]
    assert (revenue["relative difference (95% interval)"], revenue["p-value (sequential)"]) == (
        "+2.1% [-19.0%, +23.0%]",
        "1.0000",
    )
    # exp-2 was decided by the fixed-horizon test: its figures only.
    fixed = page.rows("experiment-conversion-fixed")[1]
    assert (fixed["difference (95% interval)"], fixed["p-value (fixed-horizon)"], fixed["decision"]) == (
        "+2.0 pts [+0.1 pts, +3.8 pts]",
        "0.0400",
        "ship",
    )
    assert "0.6000" not in cells("experiment-conversion-fixed") and "-1.2 pts" not in cells(
        "experiment-conversion-fixed"
    )
    # Each test's note on when to read it.
    for table_id in ("experiment-conversion-sequential", "experiment-revenue-sequential"):
        assert (
            "stay valid however often you look; stop when the decision is ship or do not ship"
            in (page.captions[table_id])
        )
        assert "planned end" not in page.captions[table_id]
    assert "only at the planned end" in page.captions["experiment-conversion-fixed"]
    # The decisions in words, with the reason and the decision's own interval.
    assert page.findings_of["experiments"] == [
        "exp-1, conversion rate, B: ship, significantly better than control; relative difference "
        "+20.0% [+3.0%, +37.0%] (95% interval, sequential test).",
        "exp-1, revenue per user, B: keep running, no significant difference yet; relative difference "
        "+2.1% [-19.0%, +23.0%] (95% interval, sequential test).",
        "exp-1, conversion rate (adjusted, CUPED), B: ship, significantly better than control; relative "
        "difference +17.8% [+4.0%, +33.0%] (95% interval, sequential test).",
        "exp-2, conversion rate, treatment: ship, significantly better than control; relative difference "
        "+39.0% [+2.0%, +88.0%] (95% interval, fixed-horizon test).",
    ]


def test_a_results_table_from_before_the_sequential_test_is_read_as_fixed():
    import pandas as pd

    from marketlake.report.sections import experiments_content

    old = pd.DataFrame([experiment_row(**row) for row in EXPERIMENT_ROWS[:2]]).drop(
        columns=[*SEQUENTIAL_FIGURES, "sequential_p_value", "decision_test", "decision_reason", "value_cap"]
    )
    content = experiments_content(old, display=EUROS)
    assert [t.id for t in content.tables] == ["experiment-conversion-fixed"]
    assert content.tables[0].rows[1][6:9] == (
        "+2.0 pts [+0.8 pts, +3.2 pts]",
        "+20.0% [+8.0%, +32.0%]",
        "0.0020",
    )


def test_every_section_says_what_a_marketer_can_do_with_it(reported):
    _, _, page = reported
    assert set(page.actions) == {*SECTION_IDS, "runs"}
    for section, sentence in page.actions.items():
        assert sentence.startswith("What you can do with it: ") and len(sentence.split()) > 12, section
    assert len(set(page.actions.values())) == len(page.actions)


# The terms issue 19 names, the glossary entry each links to and the sections that use them.
TERMS_USED = {
    "silhouette": ("silhouette", ["segments", "silhouette"]),
    "nDCG": ("ndcg", ["recommendations"]),
    "precision@k": ("precision-at-k", ["recommendations"]),
    "coverage": ("coverage", ["recommendations"]),
    "lift (items)": ("rule-lift", ["rules"]),
    "confidence": ("confidence", ["rules"]),
    "support": ("support", ["rules"]),
    "difference (lift)": ("lift", ["experiments"]),
    "CUPED": ("cuped", ["experiments"]),
    "SRM": ("srm", ["experiments"]),
    "p-value": ("p-value", ["experiments"]),
    "interval": ("interval", ["experiments"]),
    "sequential test": ("sequential", ["experiments"]),
    "fixed-horizon test": ("fixed-horizon", ["experiments"]),
    "AUC": ("auc", ["propensity"]),
    "calibration": ("calibration", ["propensity"]),
    "decile": ("decile", ["propensity"]),
    "top-decile lift": ("top-decile-lift", ["propensity"]),
    "RFM": ("rfm", ["rfm"]),
    "control group": ("control-group", ["audiences", "experiments"]),
}


def test_the_technical_terms_are_explained_where_they_appear(reported):
    _, _, page = reported
    for word, (key, sections) in TERMS_USED.items():
        name, explanation = page.glossary[key]
        assert word in name or name in word, (word, name)
        assert len(explanation.split()) >= 12, word  # a plain sentence, with its technical name in brackets
        for section in sections:
            assert key in page.links[section], (word, section)
    # Every link leads to an entry, and the glossary explains every term it lists.
    assert set().union(*page.links.values()) <= set(page.glossary)
    assert all(name and len(text.split()) >= 8 for name, text in page.glossary.values())
    # Technical names stay for the data engineers: in the glossary's small print and the headings' tooltips.
    assert "sample-ratio mismatch" in page.glossary["srm"][1]
    header = page.tables["experiment-conversion-sequential"][0]
    tooltips = dict(zip(header, page.tooltips["experiment-conversion-sequential"], strict=True))
    assert tooltips["p-value (sequential)"].endswith("(column: sequential_p_value_adjusted)")
    assert "How surprising the difference would be" in tooltips["p-value (sequential)"]

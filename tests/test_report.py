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
from marketlake.report import build, gather, render, report_path
from marketlake.rules import RULES_SCHEMA
from marketlake.segment import name_segments, profiles_frame

RUN_DATE = dt.date(2024, 6, 30)
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
        self._table = self._cell = self._missing = self._finding = None
        self._in_findings = False
        self._depth = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
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
        if tag == "ul":
            self._in_findings = False
        elif tag == "li" and self._finding is not None:
            self.findings.append(" ".join(self._finding.split()))
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
        if self._cell is not None:
            self._cell += data
        if self._missing is not None:
            self._missing += data
        if self._finding is not None:
            self._finding += data

    def rows(self, table_id: str) -> list[dict[str, str]]:
        header, *body = self.tables[table_id]
        return [dict(zip(header, row, strict=True)) for row in body]


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
        [
            (
                "exp-1",
                "events",
                "conversion",
                "A",
                True,
                5000,
                500.0,
                0.10,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                0.8,
                False,
                "ship B",
                False,
            ),
            (
                "exp-1",
                "events",
                "conversion",
                "B",
                False,
                5000,
                600.0,
                0.12,
                0.02,
                0.2,
                0.008,
                0.032,
                0.08,
                0.32,
                0.001,
                0.002,
                0.999,
                0.8,
                False,
                "ship B",
                False,
            ),
            (
                "exp-1",
                "events",
                "revenue_per_user",
                "B",
                False,
                5000,
                61234.5,
                12.2469,
                -0.3,
                -0.024,
                -1.1,
                0.5,
                -0.088,
                0.04,
                0.46,
                0.46,
                0.23,
                0.8,
                False,
                "keep running",
                False,
            ),
        ],
        "experiment_id string, source string, metric string, variant string, is_control boolean, users long, "
        "conversions double, rate double, lift double, lift_relative double, ci_low double, ci_high double, "
        "rel_ci_low double, rel_ci_high double, p_value double, p_value_adjusted double, prob_beat_control double, "
        "srm_p_value double, srm boolean, decision string, cuped boolean",
    ).withColumn("as_of_date", F.lit(RUN_DATE))
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
    assert page.sections == [*SECTION_IDS, "runs"]
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
    assert shown[0]["revenue"] == "1,500.00" and shown[0]["strategy"] == profiles[0].strategy
    assert [(r["k"], r["silhouette"], r[""]) for r in page.rows("silhouette-by-k")] == [
        ("2", "0.5500", ""),
        ("3", "0.6100", "chosen"),
        ("4", "0.4800", ""),
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
    evaluation = {(r["metric"], r["k"]): r for r in page.rows("recommendation-evaluation")}
    assert (
        evaluation[("ndcg", "10")]["ALS"] == "0.2500" and evaluation[("ndcg", "10")]["popularity"] == "0.1250"
    )
    assert evaluation[("ndcg", "10")]["ALS / popularity"] == "2.00" and len(evaluation) == 4
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
    experiments = page.rows("experiment-results")
    assert [(r["metric"], r["variant"]) for r in experiments] == [
        ("conversion", "A (control)"),
        ("conversion", "B"),
        ("revenue_per_user", "B"),
    ]
    b = experiments[1]
    assert (b["lift (95% CI)"], b["relative (95% CI)"]) == (
        "+0.0200 [+0.0080, +0.0320]",
        "+20.0% [+8.0%, +32.0%]",
    )
    assert (b["p (adjusted)"], b["P(better)"], b["decision"], b["conversions"]) == (
        "0.0020",
        "99.9%",
        "ship B",
        "600",
    )
    assert experiments[0]["lift (95% CI)"] == "-" and experiments[0]["users"] == "5,000"
    assert experiments[2]["conversions"] == "61,234.50"


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

    assert page.findings == [
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
    page = Page(render(gather(lake, other_day), build(gather(lake, other_day)), dt.datetime(2024, 7, 1)))
    assert page.sections == [*SECTION_IDS, "runs"] and page.images == []
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
    page = Page(render(data, build(data), dt.datetime(2024, 7, 1)))
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

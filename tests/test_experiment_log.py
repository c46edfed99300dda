"""experiment --input on a real-world exposure log: exact duplicate rows, a user's repeated rows in one
variant and users in two variants are collapsed or left out and counted (log line, ops.job_runs, results
table), and the figures equal statsmodels' on the collapsed rows (1e-9); re-runs are idempotent and an
older results table gains the count columns."""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import polars as pl
import pytest
from chispa import assert_df_equality
from statsmodels.stats.proportion import proportions_ztest

from marketlake.experiment import CONVERSION, RESULT_SCHEMA, REVENUE, collapse_exposure_log
from marketlake.jobs import main

RUN_DATE = "2024-06-30"
TOL = 1e-9
COUNT_COLUMNS = ["duplicate_rows", "repeat_rows_merged", "users_in_several_variants"]


def close(actual, expected):
    return actual == pytest.approx(expected, rel=TOL, abs=TOL)


def results(root: str, run_date: str = RUN_DATE) -> pd.DataFrame:
    of_date = pl.col("as_of_date") == dt.date.fromisoformat(run_date)
    frame = pl.read_delta(f"{root}/gold/experiment_results").filter(of_date).to_pandas()
    return frame.sort_values(["experiment_id", "source", "cuped", "metric", "variant"]).reset_index(drop=True)


def row(frame: pd.DataFrame, metric: str, variant: str, cuped: bool = False) -> pd.Series:
    found = frame[(frame.metric == metric) & (frame.variant == variant) & (frame.cuped == cuped)]
    assert len(found) == 1, (metric, variant, cuped)
    return found.iloc[0]


# ---- the transformation on hand-made rows -----------------------------------------------------------------


def ts(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text)


def test_collapse_keeps_one_row_per_user_and_counts_what_it_folded(spark):
    log = [
        # u1: the same row twice (an exact duplicate), nothing else.
        ("u1", "control", 1.0, 5.0, 2.0, None, 1),
        ("u1", "control", 1.0, 5.0, 2.0, None, 4),
        # u2: two different rows in one variant; the later row in the file has the earlier time: its
        # covariate is the first exposure's; converted because one row is; values summed.
        ("u2", "treatment", 0.0, None, 3.0, "2024-06-02T10:00:00", 2),
        ("u2", "treatment", 1.0, 7.25, 9.0, "2024-06-01T10:00:00", 6),
        ("u2", "treatment", 0.0, 2.5, 1.0, "2024-06-03T10:00:00", 7),
        # u3: in two variants.
        ("u3", "control", 0.0, None, 0.0, None, 3),
        ("u3", "treatment", 1.0, None, 0.0, None, 5),
        # u4: without times the file order decides; a row with a time comes before one without.
        ("u4", "control", 0.0, None, 1.0, None, 8),
        ("u4", "control", 0.0, None, 4.0, None, 9),
        ("u5", "control", 0.0, None, 6.0, None, 10),
        ("u5", "control", 0.0, None, 8.0, "2024-06-05T00:00:00", 11),
        ("u5", "control", 0.0, None, 8.0, "2024-06-05T00:00:00", 12),
    ]
    schema = (
        "user_id string, variant string, converted double, value double, covariate double, exposed_at timestamp, "
        "row_order long"
    )
    frame = spark.createDataFrame([(*r[:5], ts(r[5]), r[6]) for r in log], schema)
    collapsed = frame.transform(collapse_exposure_log).orderBy("user_id")
    expected = spark.createDataFrame(
        [
            ("u1", "control", 1, 1.0, 5.0, 2.0, None, 1, 0),
            ("u2", "treatment", 1, 1.0, 9.75, 9.0, ts("2024-06-01T10:00:00"), 0, 2),
            ("u3", "control", 2, 1.0, None, 0.0, None, 0, 1),
            ("u4", "control", 1, 0.0, None, 1.0, None, 0, 1),
            ("u5", "control", 1, 0.0, None, 8.0, ts("2024-06-05T00:00:00"), 1, 1),
        ],
        "user_id string, variant string, variants long, converted double, value double, covariate double, "
        "exposed_at timestamp, duplicate_rows long, repeat_rows long",
    )
    assert_df_equality(collapsed, expected, ignore_nullable=True)


# ---- the job on a log shaped like the public one ----------------------------------------------------------


def write_log(path) -> pd.DataFrame:
    """Several hundred users, one row each (seeded), then what real logs hold: two users with an exact
    duplicate row each, a user with a second, different row in their variant (later in the file: the
    covariate stays the first row's), and a user who also saw the other variant."""
    rng = np.random.default_rng(13)
    n = 472
    variant = rng.choice(["control", "treatment"], n)
    converted = (rng.random(n) < np.where(variant == "treatment", 0.16, 0.10)).astype(int)
    log = pd.DataFrame(
        {
            "user_id": [f"user{i:04d}" for i in range(n)],
            "variant": variant,
            "converted": converted,
            "value": np.round(converted * rng.lognormal(3.0, 0.6, n), 2),
            "covariate": rng.poisson(1.2, n),
        }
    )
    repeated = log.iloc[20].copy()
    repeated.loc[["converted", "value", "covariate"]] = [1 - repeated.converted, 12.5, repeated.covariate + 5]
    crossed = log.iloc[30].copy()
    crossed["variant"] = "treatment" if crossed.variant == "control" else "control"
    rows = [*log.itertuples(index=False)]
    for position, extra in ((4, log.iloc[3]), (len(rows), log.iloc[100]), (300, repeated), (200, crossed)):
        rows.insert(position, tuple(extra))
    pd.DataFrame(rows, columns=log.columns).to_csv(path, index=False)
    return pd.read_csv(path)


def collapsed_in_pandas(log: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The same rule computed here: drop exact duplicates, users in two variants, then one row per user
    (converted if any row is, values summed, the first row's covariate)."""
    distinct = log.drop_duplicates()
    variants = distinct.groupby("user_id").variant.nunique()
    kept = distinct[distinct.user_id.map(variants) == 1]
    users = kept.groupby("user_id", sort=False).agg(
        variant=("variant", "first"),
        converted=("converted", "max"),
        value=("value", "sum"),
        covariate=("covariate", "first"),
    )
    counts = {
        "duplicate_rows": len(log) - len(distinct),
        "repeat_rows_merged": len(kept) - len(users),
        "users_in_several_variants": int((variants > 1).sum()),
    }
    return users, counts


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def log_run(spark, tmp_path_factory):
    """The log written, the job run once on it; (lake root, the CSV, the log, the job's log lines)."""
    folder = tmp_path_factory.mktemp("exposure-log")
    path = str(folder / "checkout-button.csv")
    log = write_log(path)
    root = str(folder / "lake")
    logger, records = logging.getLogger("marketlake"), Records()
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        code = main("experiment", ["--lake", root, "--run-date", RUN_DATE, "--input", path])
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    assert code == 0
    return root, path, log, records.lines


def test_the_counts_are_in_the_log_the_job_runs_and_the_results(spark, config, log_run):
    from marketlake.lake import Lake

    root, _, log, lines = log_run
    users, expected = collapsed_in_pandas(log)
    assert expected == dict(zip(COUNT_COLUMNS, [2, 1, 1], strict=True))  # as planted
    assert (len(log), log.user_id.nunique()) == (476, 472)
    read = [line for line in lines if "| read " in line]
    n = users.groupby("variant").size()
    assert len(read) == 1, lines
    assert (
        f"476 rows, users control {n['control']}, treatment {n['treatment']}; 2 duplicate rows dropped, "
        in read[0]
    )
    assert "1 repeat rows merged into their user's, 1 users in several variants left out" in read[0]
    run = Lake(spark, config.lake, root).read("ops.job_runs").filter("job = 'experiment'").collect()
    assert len(run) == 1 and run[0].status == "succeeded"
    assert {k: run[0].counts[k] for k in expected} == expected
    frame = results(root)
    assert set(frame.experiment_id) == {"checkout-button"} and set(frame.source) == {"csv"}
    for column, value in expected.items():
        assert (frame[column] == value).all(), column


def test_rates_lift_and_p_value_equal_statsmodels_on_the_collapsed_rows(log_run):
    root, _, log, _ = log_run
    users, _ = collapsed_in_pandas(log)
    frame = results(root)
    n = users.groupby("variant").size()
    c = users.groupby("variant").converted.sum()
    treatment, control = row(frame, CONVERSION, "treatment"), row(frame, CONVERSION, "control")
    for r, variant in ((treatment, "treatment"), (control, "control")):
        assert (r.users, r.conversions) == (n[variant], c[variant])
        assert close(r.rate, c[variant] / n[variant])
    assert close(treatment.lift, c["treatment"] / n["treatment"] - c["control"] / n["control"])
    _, p_value = proportions_ztest([c["treatment"], c["control"]], [n["treatment"], n["control"]])
    assert close(treatment.p_value, p_value)
    # Values summed per user; the CUPED covariate is the first row's (theta over all users, then the
    # variant's adjusted mean).
    value = users.groupby("variant").value
    assert close(row(frame, REVENUE, "treatment").rate, value.mean()["treatment"])
    assert close(row(frame, REVENUE, "treatment").conversions, value.sum()["treatment"])
    x, y = users.covariate.astype(float), users.converted.astype(float)
    theta = np.cov(x, y, ddof=1)[0, 1] / x.var(ddof=1)
    adjusted = (y - theta * (x - x.mean())).groupby(users.variant).mean()
    for variant in ("treatment", "control"):
        assert close(row(frame, CONVERSION, variant, cuped=True).rate, adjusted[variant])


def test_identical_reruns_leave_the_same_rows(log_run):
    root, path, _, _ = log_run
    before = results(root)
    assert main("experiment", ["--lake", root, "--run-date", RUN_DATE, "--input", path]) == 0
    pd.testing.assert_frame_equal(results(root), before)


def test_an_older_results_table_gains_the_count_columns(spark, config, tmp_path):
    from marketlake.lake import Lake

    write_log(tmp_path / "checkout-button.csv")
    root = str(tmp_path / "lake")
    old_schema = type(RESULT_SCHEMA)([f for f in RESULT_SCHEMA.fields if f.name not in COUNT_COLUMNS])
    old = [
        {
            "experiment_id": "older",
            "source": "csv",
            "metric": CONVERSION,
            "variant": "control",
            "is_control": True,
            "users": 10,
            "as_of_date": dt.date.fromisoformat(date),
        }
        for date in (RUN_DATE, "2024-06-29")
    ]
    frame = spark.createDataFrame([tuple(r.get(f.name) for f in old_schema.fields) for r in old], old_schema)
    Lake(spark, config.lake, root).write(
        "gold.experiment_results", frame, "append", partition_by=["as_of_date"]
    )
    path = str(tmp_path / "checkout-button.csv")
    assert main("experiment", ["--lake", root, "--run-date", RUN_DATE, "--input", path]) == 0
    table = pl.read_delta(f"{root}/gold/experiment_results").to_pandas()
    assert set(COUNT_COLUMNS) <= set(table.columns)
    older, new = table[table.experiment_id == "older"], table[table.experiment_id == "checkout-button"]
    assert len(older) == 2 and older[COUNT_COLUMNS].isna().all().all()
    assert len(new) > 0 and (new[COUNT_COLUMNS].to_numpy() == [2, 1, 1]).all()


def test_a_timestamp_that_does_not_parse_is_one_line_and_exit_2(tmp_path, lake_root, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("user_id,variant,converted,timestamp\nu1,control,1,yesterday\nu2,b,0,2024-06-01 10:00\n")
    assert main("experiment", ["--lake", lake_root, "--run-date", RUN_DATE, "--input", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "1 rows with timestamp not a timestamp" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "lake" / "gold" / "experiment_results").exists()

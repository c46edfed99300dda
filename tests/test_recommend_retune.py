"""Reusing searched ALS params: the decision (age of the search, change of the interaction count, other
tuning settings, --retune), the budget that scales with the data, and the job on a small lake: the next
day reuses the search without a tuning step, --retune and a grown interaction count search again, and a
reused run writes what a searching run with the same params writes."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from marketlake.config import RecommendConfig
from marketlake.jobs import main
from marketlake.lake import Lake
from marketlake.recommend import (
    AlsParams,
    Search,
    retune_reason,
    search_fingerprint,
    tuning_budget,
)

RUN = dt.date(2024, 6, 30)
DAY = dt.timedelta(days=1)
SETTINGS = RecommendConfig()


def searched(interactions: int = 1000, settings: RecommendConfig = SETTINGS) -> Search:
    return Search(AlsParams(32, 0.5, 3.0, 10), RUN, interactions, search_fingerprint(settings), "v1")


# ---- the decision ---------------------------------------------------------------------------------------------


def test_a_recent_search_with_a_close_interaction_count_is_reused():
    assert retune_reason(searched(), RUN, 1000, SETTINGS) is None  # a re-run of the search's date
    assert retune_reason(searched(), RUN + 7 * DAY, 1000, SETTINGS) is None  # 7 days old: not older than 7
    assert retune_reason(searched(), RUN + DAY, 1200, SETTINGS) is None  # +20%: not more than 0.2
    assert retune_reason(searched(), RUN + DAY, 800, SETTINGS) is None  # -20%


@pytest.mark.parametrize(
    ("past", "day", "interactions", "update", "expected"),
    [
        (None, RUN, 1000, {}, "no earlier search in ops.models"),
        ("searched", RUN, 1000, {"retune": True}, "asked for (--retune)"),
        ("searched", RUN + 8 * DAY, 1000, {}, "is 8 days old, more than recommend.retune_days=7"),
        ("searched", RUN + DAY, 1201, {}, "+20.1% since the search of 2024-06-30"),
        ("searched", RUN + DAY, 700, {}, "-30.0% since the search of 2024-06-30"),
        ("searched", RUN, 1000, {"retune_days": 0, "retune_change": 0.0}, None),
        ("searched", RUN + DAY, 1000, {"retune_days": 0}, "is 1 days old"),
        ("searched", RUN, 1001, {"retune_change": 0.0}, "+0.1%"),
        ("searched", RUN, 1000, {"max_iter": 20}, "the tuning settings changed"),
        ("searched", RUN, 1000, {"event_weights": {"view": 1.0}}, "the tuning settings changed"),
    ],
)
def test_a_new_search_runs_and_says_why(past, day, interactions, update, expected):
    settings = SETTINGS.model_copy(update=update)
    # The past search ran with the default settings: only the settings that shape a search change its print.
    reason = retune_reason(searched() if past else None, day, interactions, settings)
    assert reason == expected if expected is None else expected in reason


def test_only_settings_that_shape_a_search_change_its_fingerprint():
    same = SETTINGS.model_copy(
        update={
            "retune": True,
            "retune_days": 1,
            "retune_change": 0.5,
            "top_n": 5,
            "tuning_budget_seconds": 10.0,
            "tuning_budget_min_seconds": 5.0,
        }
    )
    assert search_fingerprint(same) == search_fingerprint(SETTINGS)
    wider = SETTINGS.search.model_copy(update={"rank": [16, 32, 64]})
    assert search_fingerprint(SETTINGS.model_copy(update={"search": wider})) != search_fingerprint(SETTINGS)


def test_the_budget_scales_with_interactions_between_its_floor_and_cap():
    settings = RecommendConfig(
        tuning_budget_min_seconds=60, tuning_budget_seconds_per_million=100, tuning_budget_seconds=300
    )
    budgets = [tuning_budget(settings, n) for n in (0, 1_000_000, 2_500_000, 10_000_000)]
    assert budgets == [60.0, 100.0, 250.0, 300.0]
    assert tuning_budget(settings.model_copy(update={"tuning_budget_seconds": 30.0}), 0) == 30.0  # cap wins


# ---- the job on a small lake ------------------------------------------------------------------------------------

CONFIG = """
recommend:
  rank: 4
  reg_param: 0.1
  alpha: 1.0
  max_iter: 3
  search: {rank: [4, 8], reg_param: [0.1], alpha: [1.0], max_iter: [3]}
  tuning_max_trials: 2
  tuning_min_users: 10
  tuning_budget_min_seconds: 100000   # both trials always run: the choice does not depend on the machine
  tuning_budget_seconds: 100000
  evaluate: false
"""


def taste_events(spark, users: range, prefix: str, day: dt.date, days: int = 20):
    """Each user views 8 of the 10 items of their taste group (user % 3) on the `days` days up to `day`."""
    rng = random.Random(len(users) * 7 + ord(prefix[0]))
    rows = []
    for u in users:
        group = u % 3
        for item in rng.sample(range(group * 10, group * 10 + 10), 8):
            ts = dt.datetime.combine(day - rng.randrange(days) * DAY, dt.time(12), dt.timezone.utc)
            rows.append((f"{prefix}{u}-{item}", f"{prefix}{u}", f"i{item}", "view", ts))
    frame = spark.createDataFrame(
        rows, "event_id string, user_id string, item_id string, event_type string, event_ts timestamp"
    )
    return frame.withColumn("event_date", F.to_date("event_ts"))


def run(root: str, config: str, day: dt.date, *options: str) -> int:
    return main("recommend", ["--lake", root, "--config", config, "--run-date", day.isoformat(), *options])


def last_run(lake: Lake) -> dict:
    row = lake.read("ops.job_runs").filter("job = 'recommend'").orderBy(F.desc("ended_at")).first()
    assert row is not None and row.status == "succeeded"
    return dict(row.counts)


def last_model(lake: Lake):
    return (
        lake.read("ops.models").filter("model_name = 'recommend_als'").orderBy(F.desc("created_at")).first()
    )


def recommendations(lake: Lake, day: dt.date):
    return lake.read_as_of("gold.user_recommendations", day).persist()


@pytest.mark.slow  # four runs of the job: 389 s at load 15 (2026-12-02)
def test_the_next_day_reuses_the_search_and_a_retune_or_more_interactions_search_again(
    spark, config, tmp_path, caplog
):
    root, conf = str(tmp_path / "lake"), tmp_path / "recommend.yaml"
    conf.write_text(CONFIG)
    lake = Lake(spark, config.lake, root)
    lake.write("silver.events", taste_events(spark, range(150), "u", RUN), partition_by=["event_date"])

    assert run(root, str(conf), RUN) == 0
    first = last_run(lake)
    assert first["params_reused"] == 0 and first["trials"] == 2
    day1 = last_model(lake)
    assert day1.params["params_source"] == '"search"' and day1.params["searched_on"] == '"2024-06-30"'

    with caplog.at_level("INFO", logger="marketlake"):
        assert run(root, str(conf), RUN + DAY) == 0
    second = last_run(lake)
    assert second["params_reused"] == 1 and second["trials"] == 0
    assert "| tune ALS |" not in caplog.text  # no search step
    assert "reused from the search of 2024-06-30" in caplog.text
    day2 = last_model(lake)
    assert day2.params["params_source"] == '"reused"'
    assert day2.params["reused_from"] == f'"{day1.model_version}"'
    assert day2.params["searched_on"] == '"2024-06-30"'  # the search's date travels with its reuse
    assert {k: day2.params[k] for k in ("rank", "reg_param", "alpha", "max_iter")} == {
        k: day1.params[k] for k in ("rank", "reg_param", "alpha", "max_iter")
    }
    reused = recommendations(lake, RUN + DAY)
    reused.count()

    # --retune searches again; the search picks the same params, so the tables are those of the reused run.
    caplog.clear()
    with caplog.at_level("INFO", logger="marketlake"):
        assert run(root, str(conf), RUN + DAY, "--retune") == 0
    assert last_run(lake)["trials"] == 2 and "a new search (asked for (--retune))" in caplog.text
    retuned = last_model(lake)
    assert retuned.params["params_source"] == '"search"' and retuned.model_version == day2.model_version
    assert_df_equality(recommendations(lake, RUN + DAY), reused, ignore_row_order=True, ignore_nullable=True)
    reused.unpersist()

    # 100 new users on the next day: the interaction count grows by two thirds, beyond retune_change.
    more = taste_events(spark, range(100), "n", RUN + 2 * DAY, days=1)
    lake.write("silver.events", more, "append", partition_by=["event_date"])
    caplog.clear()
    with caplog.at_level("INFO", logger="marketlake"):
        assert run(root, str(conf), RUN + 2 * DAY) == 0
    grown = last_run(lake)
    assert grown["trials"] == 2 and grown["params_reused"] == 0
    assert "more than recommend.retune_change=0.2" in caplog.text
    assert last_model(lake).params["searched_on"] == '"2024-07-02"'

"""The planted purchase propensity (truth/purchase_sessions.csv) against the purchases a shop realises.

One shop (3,000 users, 60 days, 120,000 events, no dirty lines, so that every purchase line is in the
events) is generated for the module; its purchases are read back from the event files with plain Python.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from marketlake.demo import ShopSpec, generate_shop, true_purchase_propensity

SPEC = ShopSpec(users=3_000, items=200, events=120_000, seed=7, days=60, dirty_rate=0.0)
COLUMNS = ["user_id", "session_id", "first_date", "last_date", "p_purchase"]


def day(i: int) -> dt.date:
    return SPEC.start_date + dt.timedelta(days=i)


# (name, first day, last day): before the experiment, its last week, single days in and before it
WINDOWS = [
    ("early week", day(10), day(16)),
    ("middle week", day(27), day(33)),
    ("last week", day(53), day(59)),
    ("one day in the experiment", day(50), day(50)),
    ("one day before it", day(20), day(20)),
    ("last day", day(59), day(59)),
]


@pytest.fixture(scope="module")
def shop(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("truth-shop")
    generate_shop(spark, SPEC, str(out))
    return out


@pytest.fixture(scope="module")
def purchases(shop) -> pd.DataFrame:
    """user_id, session_id, day (UTC) of every purchase line."""
    rows = []
    for path in sorted(shop.glob("events/date=*/part-*.json")):
        for line in path.read_text().splitlines():
            if '"purchase"' in line:
                event = json.loads(line)
                if event["event_type"] == "purchase":
                    utc = dt.datetime.fromisoformat(event["ts"]).astimezone(dt.timezone.utc)
                    rows.append((event["user_id"], event["session_id"], utc.date()))
    return pd.DataFrame(rows, columns=["user_id", "session_id", "day"])


@pytest.fixture(scope="module")
def sessions(shop) -> pd.DataFrame:
    return pd.read_csv(shop / "truth" / "purchase_sessions.csv")


@pytest.fixture(scope="module")
def users(shop) -> pd.Series:
    return pd.read_csv(shop / "users.csv").user_id


def test_purchase_sessions_file(shop, sessions, users, purchases):
    assert list(sessions.columns) == COLUMNS
    assert sessions.session_id.is_unique and set(sessions.user_id) <= set(users)
    assert sessions.user_id.is_monotonic_increasing  # the tasks' parts joined in order
    assert (sessions.first_date <= sessions.last_date).all()
    assert sessions.first_date.min() >= str(SPEC.start_date)
    assert sessions.last_date.max() <= str(SPEC.end_date)
    assert sessions.p_purchase.between(0, 1, inclusive="right").all()
    personas = pd.read_csv(shop / "truth" / "personas.csv").set_index("user_id").persona
    assert not (sessions.user_id.map(personas) == "window_shoppers").any()  # they never buy
    # every purchase comes from a listed session, on a day of its range
    bought = purchases.drop_duplicates("session_id").merge(sessions, on=["user_id", "session_id"], how="left")
    assert bought.p_purchase.notna().all()
    assert bought.day.astype(str).between(bought.first_date, bought.last_date).all()
    # forced orders always convert; the first exposure's session is listed on its exposure day
    assert sessions.session_id[sessions.p_purchase == 1].isin(bought.session_id).all()
    exposures = []
    for path in sorted(shop.glob("events/date=*/part-*.json")):
        exposures += [json.loads(line) for line in path.read_text().splitlines() if '"exposure"' in line]
    first = pd.DataFrame(exposures).sort_values("ts").groupby("user_id").session_id.first()
    listed = sessions[sessions.session_id.isin(first)]
    assert len(listed) > 500 and (listed.first_date == listed.last_date).all()


def test_sessions_convert_at_about_their_planted_rate(sessions, purchases):
    """Per session the planted rate is a little high: a converting session has more events, so it fits the
    user's event budget less often than one that does not (see `behaviour.purchase_windows`)."""
    converted = sessions.session_id.isin(set(purchases.session_id))
    p = sessions.p_purchase
    expected, sd = p.sum(), np.sqrt((p * (1 - p)).sum())
    assert 0.95 * expected <= converted.sum() <= expected + 4 * sd, (converted.sum(), expected, sd)


@pytest.mark.parametrize(("name", "start", "end"), WINDOWS, ids=[w[0] for w in WINDOWS])
def test_planted_propensity_matches_realised_purchases(sessions, users, purchases, name, start, end):
    p = true_purchase_propensity(sessions, users, start, end).p_purchase.to_numpy()
    buyers = set(purchases.user_id[(purchases.day >= start) & (purchases.day <= end)])
    y = users.isin(buyers).to_numpy()
    variance = p * (1 - p)
    z = (y.sum() - p.sum()) / np.sqrt(variance.sum())
    auc = roc_auc_score(y, p)
    print(f"{name}: buyers {y.sum()}, planted {p.sum():.1f}, z {z:+.2f}, AUC {auc:.3f}")
    assert abs(z) <= 4
    for group in np.array_split(np.argsort(p, kind="stable"), 10):  # deciles of the planted propensity
        error = 4 * np.sqrt(variance[group].sum()) / len(group) + 1 / len(group)
        assert abs(y[group].mean() - p[group].mean()) <= error, (y[group].mean(), p[group].mean())
    assert auc > 0.8


def test_true_purchase_propensity_integrates_over_the_days():
    sessions = pd.DataFrame(
        {
            "user_id": ["a", "a", "b"],
            "first_date": ["2024-06-01", "2024-06-05", "2024-06-01"],
            "last_date": ["2024-06-10", "2024-06-05", "2024-06-01"],
            "p_purchase": [0.5, 1.0, 0.4],
        }
    )
    users = ["c", "a", "b"]

    def propensity(start: str, end: str) -> list[float]:
        window = (dt.date.fromisoformat(start), dt.date.fromisoformat(end))
        result = true_purchase_propensity(sessions, users, *window)
        assert list(result.user_id) == users
        return list(result.p_purchase.round(12))

    assert propensity("2024-06-01", "2024-06-04") == [0.0, 0.2, 0.4]  # a: 0.5 * 4 / 10
    assert propensity("2024-06-05", "2024-06-05") == [0.0, 1.0, 0.0]
    assert propensity("2024-06-06", "2024-06-10") == [0.0, 0.25, 0.0]
    assert propensity("2024-06-11", "2024-06-30") == [0.0, 0.0, 0.0]
    assert propensity("2024-05-01", "2024-06-30") == [0.0, 1.0, 0.4]
    # 1 - (1 - 0.5 * 2 / 10) * (1 - 0), dates as dates work as well
    dated = sessions.assign(first_date=pd.to_datetime(sessions.first_date).dt.date)
    result = true_purchase_propensity(dated, ["a"], dt.date(2024, 6, 9), dt.date(2024, 6, 12))
    assert result.p_purchase.round(12).tolist() == [0.1]
    with pytest.raises(ValueError, match="before it starts"):
        true_purchase_propensity(sessions, users, dt.date(2024, 6, 2), dt.date(2024, 6, 1))

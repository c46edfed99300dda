"""Reading the planted truth: each user's true purchase propensity for a window of days, from
truth/purchase_sessions.csv (`true_purchase_propensity`). Pure pandas, for tests and benchmarks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np
import pandas as pd

PURCHASE_SESSIONS_COLUMNS = ("user_id", "session_id", "first_date", "last_date", "p_purchase")


def true_purchase_propensity(
    sessions: pd.DataFrame, users: Iterable[str], start: dt.date, end: dt.date
) -> pd.DataFrame:
    """user_id, p_purchase: the probability that each of `users` buys on a UTC day in [start, end]
    (inclusive), as the generator planted it. `sessions` holds the rows of truth/purchase_sessions.csv
    (user_id, first_date, last_date, p_purchase; dates as ISO strings or dates): a session falls on a
    uniform day of [first_date, last_date] and holds a purchase with probability p_purchase, independently
    of the user's other sessions, so P(no purchase) = prod (1 - p * overlap days / range days). Users
    without rows get 0; the result keeps the order of `users`."""
    if end < start:
        raise ValueError(f"the window ends ({end}) before it starts ({start})")
    first = _days(sessions["first_date"])
    last = _days(sessions["last_date"])
    a, b = np.datetime64(start, "D"), np.datetime64(end, "D")
    overlap = (np.minimum(last, b) - np.maximum(first, a)).astype(np.int64) + 1
    share = np.clip(overlap, 0, None) / ((last - first).astype(np.int64) + 1)
    miss = pd.Series(1 - sessions["p_purchase"].to_numpy(dtype=np.float64) * share, index=sessions.index)
    none = miss.groupby(sessions["user_id"].to_numpy()).prod()
    index = pd.Index(list(users), name="user_id")
    p = 1 - none.reindex(index, fill_value=1.0).to_numpy(dtype=np.float64)
    result: pd.DataFrame = pd.DataFrame({"user_id": index.to_numpy(), "p_purchase": p})
    return result


def _days(dates: pd.Series) -> np.ndarray:
    return np.asarray(pd.to_datetime(dates).to_numpy(), dtype="datetime64[D]")

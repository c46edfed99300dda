"""The planted bad records: events turned into dirty lines in place (`corrupt`), and the copies of events
that arrive again (`duplicate`), by kind of `DIRTY_KINDS`."""

from __future__ import annotations

import numpy as np

from marketlake.demo.behaviour import Context, Events, format_ts
from marketlake.demo.spec import CHANNELS, DAY_MS, DIRTY_KINDS, REQUIRED_FIELDS

MALFORMED, MISSING, UNKNOWN, NEGATIVE, UNPARSEABLE, FUTURE, RESEND, CONFLICT = range(len(DIRTY_KINDS))
UNKNOWN_TYPES = ("wishlist", "share", "compare", "page_ping")
BAD_TIMESTAMPS = ("not-a-timestamp", "2024-13-45T25:61:00+00:00", "yesterday 10:15", "31/02/2024 25:99")
# None as a (0-d, object) array: what np.where makes of a bare None, in a form numpy's stubs accept.
NULL = np.array(None, dtype=object)
ERROR_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>"


def corrupt(
    ctx: Context,
    cols: dict[str, np.ndarray],
    meta: dict[str, np.ndarray],
    dirty: np.ndarray,
    pick: np.ndarray,
    fraction: np.ndarray,
    events: Events,
    zone: int,
) -> None:
    """Turn the events marked with a replacing dirty kind into dirty lines, in place."""
    for kind in (MALFORMED, MISSING, UNKNOWN, NEGATIVE, UNPARSEABLE, FUTURE):
        at = np.flatnonzero(dirty == kind)
        if len(at) == 0:
            continue
        meta["dirty_kind"][at] = DIRTY_KINDS[kind]
        if kind == MALFORMED:
            meta["reason"][at] = "malformed_json"
            meta["cut"][at] = 0.3 + 0.6 * fraction[at]
            meta["override"][at] = np.where(pick[at] % 4 == 0, ERROR_PAGE, NULL)
        elif kind == MISSING:
            fields = np.array(REQUIRED_FIELDS)[pick[at] % len(REQUIRED_FIELDS)]
            for i, name in zip(at, fields, strict=True):
                cols[str(name)][i] = None
            meta["reason"][at] = np.strings.add("missing:", fields).astype(object)
        elif kind == UNKNOWN:
            names = np.array(UNKNOWN_TYPES)[pick[at] % len(UNKNOWN_TYPES)]
            cols["event_type"][at] = names.astype(object)
            meta["reason"][at] = np.strings.add("unknown_event_type:", names).astype(object)
        elif kind == NEGATIVE:
            cols["price"][at] = -np.abs(cols["price"][at])
            meta["reason"][at] = "negative_price"
        elif kind == UNPARSEABLE:
            cols["ts"][at] = np.array(BAD_TIMESTAMPS, dtype=object)[pick[at] % len(BAD_TIMESTAMPS)]
            meta["reason"][at] = "unparseable_ts"
        else:
            future = ctx.end_ms + (1 + pick[at] % 365) * DAY_MS + events.t[at] % DAY_MS
            cols["ts"][at] = format_ts(future, zone).astype(object)
            meta["reason"][at] = "future_ts"


def duplicate(
    ctx: Context,
    cols: dict[str, np.ndarray],
    meta: dict[str, np.ndarray],
    dirty: np.ndarray,
    pick: np.ndarray,
    fraction: np.ndarray,
    t: np.ndarray,
    zone: int,
    channel: np.ndarray,
) -> np.ndarray:
    """Make the copies (resends and conflicting duplicates) in place; returns their arrival times: seconds
    to minutes after the original, or a day later."""
    resend = dirty == RESEND
    meta["dirty_kind"][:] = np.where(resend, DIRTY_KINDS[RESEND], DIRTY_KINDS[CONFLICT])
    meta["reason"][:] = np.where(resend, "exact_duplicate", "conflicting_duplicate")
    change = np.where(resend, -1, (pick // 4) % 3)
    at = np.flatnonzero(change == 0)
    cols["ts"][at] = format_ts(t[at] - 1_000 * (1 + pick[at] % 120), zone).astype(object)  # never future
    at = np.flatnonzero(change == 1)
    cols["price"][at] = np.round(cols["price"][at] * 1.1, 2)
    at = np.flatnonzero(change == 2)
    cols["channel"][at] = np.array(CHANNELS, dtype=object)[(channel[at] + 1) % len(CHANNELS)]
    delay = np.where(fraction < 0.5, 1_000 + pick % 600_000, DAY_MS)
    arrivals: np.ndarray = np.minimum(t + delay, ctx.end_ms - 1)
    return arrivals

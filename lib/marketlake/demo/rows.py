"""Executor side: the generator tasks. One user's output rows (event lines, then a truth row per dirty line
and per kept session that can convert) and counts, and the Arrow batches a `mapInArrow` task yields for a
range of users."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from marketlake.demo.behaviour import (
    Context,
    browse_and_buy,
    draw_intents,
    draw_sessions,
    fit_budget,
    format_ts,
    purchase_windows,
    utc_date,
)
from marketlake.demo.dirty import CONFLICT, NULL, RESEND, corrupt, duplicate
from marketlake.demo.spec import (
    CAMPAIGNS,
    CHANNELS,
    DAY_MS,
    DIRTY_KINDS,
    EVENT_TYPES,
    EXPERIMENT_ID,
    EXPOSURE,
    INTENT_STREAM,
    PERSONAS,
    PURCHASE,
    RELEASE_STREAM,
    USER_STREAM,
)

LATE_RATE = 0.005
PURCHASE_SESSIONS = "purchase_sessions"  # the target of the rows of truth/purchase_sessions.csv
PURCHASE_SESSIONS_HEADER = "user_id,session_id,first_date,last_date,p_purchase"
INTENT_SESSIONS = "intent_sessions"  # the target of the rows of truth/intent_sessions.csv
INTENT_SESSIONS_HEADER = "user_id,session_id,category"


def user_rows(ctx: Context, u: int, chunk: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One user's output rows (event lines, then a truth row per dirty line and per kept session that can
    convert) and counts."""
    rng = np.random.default_rng([ctx.seed, USER_STREAM, u])
    release_rng = np.random.default_rng([ctx.seed, RELEASE_STREAM, u])
    persona = PERSONAS[int(ctx.persona[u])]
    intent_rng = np.random.default_rng([ctx.seed, INTENT_STREAM, u])
    sessions = draw_sessions(ctx, rng, u, persona, int(ctx.budget[u]))
    intent = draw_intents(ctx, intent_rng, len(sessions.start))
    candidates = browse_and_buy(ctx, rng, release_rng, u, persona, sessions, intent_rng, intent)
    budget = int(ctx.budget[u])
    events, n_sessions, keep = fit_budget(ctx, rng, release_rng, u, persona, sessions, candidates, budget)
    events = events.take(np.argsort(events.t, kind="stable"))
    events.t = np.minimum(events.t, ctx.end_ms - 1)
    n = len(events.t)
    count = len(sessions.start)
    zone = int(ctx.zone[u])
    session_ids = np.array([f"s{u:x}-{s:x}" for s in range(count + 1)], dtype=object)
    order_ids = np.array([f"o{u:x}-{s:x}" for s in range(count + 1)], dtype=object)
    channel = np.r_[sessions.channel, 0]
    campaign = np.r_[sessions.campaign, -1]
    campaigns = np.array([*CAMPAIGNS, None], dtype=object)
    is_exposure = events.kind == EXPOSURE
    is_purchase = events.kind == PURCHASE
    cols: dict[str, np.ndarray] = {
        "event_id": np.frombuffer(rng.bytes(12 * n).hex().encode(), dtype="S24").astype(str).astype(object),
        "user_id": np.full(n, ctx.user_ids[u], dtype=object),
        "item_id": ctx.item_ids[events.item].astype(object),
        "event_type": np.array(EVENT_TYPES, dtype=object)[events.kind],
        "ts": format_ts(events.t, zone).astype(object),
        "session_id": session_ids[events.session],
        "order_id": np.where(is_purchase, order_ids[events.session], NULL),
        "quantity": events.quantity.astype(np.float64),
        "price": events.price.copy(),
        "channel": np.array(CHANNELS, dtype=object)[channel[events.session]],
        "campaign_id": campaigns[campaign[events.session]],
        "experiment_id": np.where(is_exposure, EXPERIMENT_ID, NULL),
        "variant": np.where(is_exposure, "treatment" if sessions.treatment else "control", NULL),
    }
    cols["quantity"][events.quantity == 0] = np.nan

    eligible = ~is_exposure & (events.session != sessions.first_exposure)
    dirty = np.where((rng.random(n) < ctx.dirty_rate) & eligible, rng.integers(0, len(DIRTY_KINDS), n), -1)
    pick = rng.integers(0, 1 << 30, n)
    fraction = rng.random(n)
    late = (dirty < 0) & (rng.random(n) < LATE_RATE) & (events.t // DAY_MS < (ctx.end_ms // DAY_MS) - 1)
    arrival = np.where(
        late, (events.t // DAY_MS + 1) * DAY_MS + (fraction * 6 * 3_600_000).astype(np.int64), events.t
    )
    meta = {
        "dirty_kind": np.full(n, None, dtype=object),
        "reason": np.full(n, None, dtype=object),
        "cut": np.full(n, np.nan),
        "override": np.full(n, None, dtype=object),
    }
    corrupt(ctx, cols, meta, dirty, pick, fraction, events, zone)
    copies = np.flatnonzero((dirty == RESEND) | (dirty == CONFLICT))
    copy_cols = {k: v[copies].copy() for k, v in cols.items()}
    copy_meta = {k: v[copies].copy() for k, v in meta.items()}
    copy_arrival = duplicate(
        ctx,
        copy_cols,
        copy_meta,
        dirty[copies],
        pick[copies],
        fraction[copies],
        events.t[copies],
        zone,
        channel[events.session[copies]],
    )

    rows = {k: np.concatenate([cols[k], copy_cols[k]]) for k in cols}
    rows.update({k: np.concatenate([meta[k], copy_meta[k]]) for k in meta})
    rows["arrival"] = np.concatenate([arrival, copy_arrival])
    rows["seq"] = np.arange(len(rows["arrival"]), dtype=np.int32)
    rows["date"] = utc_date(rows["arrival"]).astype(object)
    rows["user_idx"] = np.full(len(rows["arrival"]), u, dtype=np.int64)
    rows["target"] = np.full(len(rows["arrival"]), "events", dtype=object)
    bad = np.flatnonzero(np.r_[(dirty >= 0) & (dirty < RESEND), np.ones(len(copies), dtype=bool)])
    rows["file"] = np.full(len(rows["arrival"]), None, dtype=object)
    rows["file"][bad] = [f"events/date={d}/part-{chunk:05d}.json" for d in rows["date"][bad]]
    truth = {k: v[bad] for k, v in rows.items()}
    truth["target"] = np.full(len(bad), "dirty", dtype=object)
    index, first, last, p = purchase_windows(ctx, u, persona, sessions, keep)
    planted = planted_rows(ctx, u, session_ids[index], first, last, p)
    focused = np.flatnonzero(keep & (intent >= 0))
    intents = intent_rows(ctx, u, session_ids[focused], intent[focused])
    rows = {k: np.concatenate([rows[k], truth[k], planted[k], intents[k]]) for k in rows}

    kinds = np.bincount(np.r_[dirty[dirty >= 0]], minlength=len(DIRTY_KINDS))
    in_first = events.session == sessions.first_exposure
    converted = sessions.first_exposure >= 0 and bool(np.any(is_purchase & in_first))
    variant = "treatment" if sessions.treatment else "control"
    stats: dict[str, float] = {
        "events": n + len(copies),
        "valid_events": n - int(np.isin(dirty, list(range(RESEND))).sum()),
        "dirty": int(kinds.sum()),
        **{f"dirty_{name}": int(k) for name, k in zip(DIRTY_KINDS, kinds, strict=True)},
        "late_events": int(late.sum()),
        "sessions": n_sessions,
        "orders": len(np.unique(events.session[is_purchase])),
        "purchases": int(is_purchase.sum()),
        "exposures": int(is_exposure.sum()),
    }
    if sessions.first_exposure >= 0:
        stats[f"{variant}_users"] = 1
        stats[f"{variant}_conversions"] = int(converted)
        stats[f"{variant}_expected"] = persona.p_convert
    return rows, stats


def planted_rows(
    ctx: Context, u: int, session_id: np.ndarray, first: np.ndarray, last: np.ndarray, p: np.ndarray
) -> dict[str, np.ndarray]:
    """A row per kept session that can convert, in session order, its line of truth/purchase_sessions.csv
    (`PURCHASE_SESSIONS_HEADER`; days as UTC dates) in `override`."""
    rows = blank_rows(PURCHASE_SESSIONS, len(session_id))
    first_date = utc_date(ctx.start_ms + first * DAY_MS)
    last_date = utc_date(ctx.start_ms + last * DAY_MS)
    rows["override"][:] = [
        f"{ctx.user_ids[u]},{s},{a},{b},{round(float(q), 6)!r}"
        for s, a, b, q in zip(session_id, first_date, last_date, p, strict=True)
    ]
    rows["date"][:] = "all"
    rows["user_idx"][:] = u
    rows["seq"] = np.arange(len(session_id), dtype=np.int32)
    return rows


def intent_rows(ctx: Context, u: int, session_id: np.ndarray, category: np.ndarray) -> dict[str, np.ndarray]:
    """A row per kept session with an intent, its line of truth/intent_sessions.csv in `override`."""
    rows = blank_rows(INTENT_SESSIONS, len(session_id))
    rows["override"][:] = [
        f"{ctx.user_ids[u]},{s},{ctx.category_names[int(c)]}"
        for s, c in zip(session_id, category, strict=True)
    ]
    rows["date"][:] = "all"
    rows["user_idx"][:] = u
    rows["seq"] = np.arange(len(session_id), dtype=np.int32)
    return rows


ROW_SCHEMA = pa.schema(
    [
        ("target", pa.string()),
        ("date", pa.string()),
        ("arrival", pa.int64()),
        ("user_idx", pa.int64()),
        ("seq", pa.int32()),
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("ts", pa.string()),
        ("session_id", pa.string()),
        ("order_id", pa.string()),
        ("quantity", pa.int32()),
        ("price", pa.float64()),
        ("channel", pa.string()),
        ("campaign_id", pa.string()),
        ("experiment_id", pa.string()),
        ("variant", pa.string()),
        ("dirty_kind", pa.string()),
        ("reason", pa.string()),
        ("cut", pa.float64()),
        ("override", pa.string()),
        ("file", pa.string()),
    ]
)
_SQL_TYPES = {pa.string(): "string", pa.int64(): "bigint", pa.int32(): "int", pa.float64(): "double"}
ROW_DDL = ", ".join(f"{f.name} {_SQL_TYPES[f.type]}" for f in ROW_SCHEMA)
BATCH_ROWS = 32_768


def to_batch(parts: list[dict[str, np.ndarray]]) -> pa.RecordBatch:
    """One Arrow batch from rows given as column arrays (NaN in a numeric column is null)."""
    arrays = []
    for field in ROW_SCHEMA:
        values = np.concatenate([p[field.name] for p in parts])
        if values.dtype.kind == "f":
            mask = np.isnan(values)
            arrays.append(pa.array(np.where(mask, 0, values).astype(field.type.to_pandas_dtype()), mask=mask))
        else:
            arrays.append(pa.array(values, type=field.type, from_pandas=True))
    return pa.RecordBatch.from_arrays(arrays, schema=ROW_SCHEMA)


def chunk_batches(ctx: Context, chunk: int) -> Iterator[pa.RecordBatch]:
    """The rows of one user range, then one `stats` row with its counts."""
    parts: list[dict[str, np.ndarray]] = []
    size = 0
    totals: dict[str, float] = {}
    for u in range(int(ctx.bounds[chunk]), int(ctx.bounds[chunk + 1])):
        rows, stats = user_rows(ctx, u, chunk)
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value
        parts.append(rows)
        size += len(rows["target"])
        if size >= BATCH_ROWS:
            yield to_batch(parts)
            parts, size = [], 0
    yield to_batch([*parts, stats_row(totals)])


def blank_rows(target: str, n: int) -> dict[str, np.ndarray]:
    """n rows for `target` with every other column empty (0 in arrival, user_idx and seq)."""
    rows = {f.name: np.full(n, None, dtype=object) for f in ROW_SCHEMA}
    rows["target"][:] = target
    for name in ("arrival", "user_idx", "seq"):
        rows[name] = np.zeros(n, dtype=ROW_SCHEMA.field(name).type.to_pandas_dtype())
    for name in ("quantity", "price", "cut"):
        rows[name] = np.full(n, np.nan)
    return rows


def stats_row(totals: dict[str, float]) -> dict[str, np.ndarray]:
    """The row that carries a task's counts to the driver (written under target=stats)."""
    row = blank_rows("stats", 1)
    row["date"][:] = "all"
    row["override"][:] = json.dumps(totals, sort_keys=True)
    return row


def generate_partition(broadcast: Any, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    ctx: Context = broadcast.value
    for batch in batches:
        for chunk in batch.column(0).to_pylist():
            yield from chunk_batches(ctx, int(chunk))

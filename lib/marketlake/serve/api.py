"""The answers of `serve`, as (status, JSON bytes), from one snapshot per request: the web layer (app.py)
only routes and checks the API key, so everything a caller can see is decided and tested here."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from marketlake.config import ServeConfig
from marketlake.serve.snapshot import (
    DAILY,
    REALTIME,
    SEGMENTS,
    SIMILAR,
    SOURCES,
    Grouped,
    Loaded,
    Snapshot,
    Store,
    iso_time,
)


class Reply(NamedTuple):
    status: int
    body: bytes


def as_json(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def error(status: int, message: str) -> Reply:
    return Reply(status, as_json({"error": message}))


def _number(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


class Api:
    def __init__(self, store: Store, config: ServeConfig, clock: Callable[[], float] = time.time):
        self.store = store
        self.config = config
        self.clock = clock

    # ---- arguments --------------------------------------------------------------------------------------

    def _key(self, kind: str, value: str) -> bytes | Reply:
        """An id as UTF-8 bytes, or a 422 reply for one that cannot be an id."""
        encoded = value.encode("utf-8", "surrogateescape")
        if not encoded or len(encoded) > self.config.max_id_bytes:
            return error(422, f"{kind} must be 1 to {self.config.max_id_bytes} bytes of UTF-8")
        if any(ord(char) < 32 or ord(char) == 127 for char in value):
            return error(422, f"{kind} must not contain control characters")
        return encoded

    def _n(self, given: str | None) -> int | Reply:
        if given is None:
            return self.config.default_n
        if not (given.isascii() and given.isdigit()) or not 1 <= int(given) <= self.config.max_n:
            return error(422, f"n must be a whole number from 1 to {self.config.max_n} (got {given[:20]!r})")
        return int(given)

    # ---- endpoints --------------------------------------------------------------------------------------

    def recommendations(self, user_id: str, n_given: str | None = None) -> Reply:
        """The user's real-time list when it is newer than the daily table's commit, else the daily list,
        else (a user neither table knows) the popular items."""
        key = self._key("user_id", user_id)
        if isinstance(key, Reply):
            return key
        n = self._n(n_given)
        if isinstance(n, Reply):
            return n
        snapshot = self.store.snapshot
        daily = snapshot.get(DAILY)
        realtime = snapshot.get(REALTIME)
        if daily is None and realtime is None:
            return error(503, "no recommendations loaded yet: the lake has no recommendation table")
        if realtime is not None:
            rows = realtime.rows.find(key)
            if rows is not None:
                updated_us = realtime.rows.values("updated_at", rows)[0]
                if daily is None or updated_us / 1e6 > daily.committed_at:
                    return self._list(
                        user_id, "realtime", realtime, rows, n, {"updated_at": iso_time(updated_us / 1e6)}
                    )
        if daily is not None:
            rows = daily.rows.find(key)
            if rows is not None:
                return self._list(user_id, "daily", daily, rows, n, {})
            return Reply(200, as_json(self._popular(user_id, snapshot, daily, n)))
        return Reply(200, as_json({"user_id": user_id, "source": "popular", "items": []}))

    def _list(
        self, user_id: str, kind: str, loaded: Loaded, rows: slice, n: int, extra: dict[str, Any]
    ) -> Reply:
        items = ranked_items(loaded.rows, slice(rows.start, min(rows.stop, rows.start + n)), "item_id")
        return Reply(
            200, as_json({"user_id": user_id, "source": kind, **_origin(loaded), **extra, "items": items})
        )

    def _popular(self, user_id: str, snapshot: Snapshot, daily: Loaded, n: int) -> dict[str, Any]:
        items = [
            {"rank": rank, "item_id": item.item_id, "score": _number(item.score), "source": item.source}
            for rank, item in enumerate(snapshot.popular[:n], 1)
        ]
        return {"user_id": user_id, "source": "popular", **_origin(daily), "items": items}

    def similar(self, item_id: str, n_given: str | None = None) -> Reply:
        key = self._key("item_id", item_id)
        if isinstance(key, Reply):
            return key
        n = self._n(n_given)
        if isinstance(n, Reply):
            return n
        loaded = self.store.snapshot.get(SIMILAR)
        if loaded is None:
            return error(404, "no similar items: the lake has no similar-items table")
        rows = loaded.rows.find(key)
        if rows is None:
            return error(404, f"unknown item_id {item_id!r}")
        items = ranked_items(
            loaded.rows, slice(rows.start, min(rows.stop, rows.start + n)), "similar_item_id"
        )
        return Reply(200, as_json({"item_id": item_id, **_origin(loaded), "items": items}))

    def segments(self, user_id: str) -> Reply:
        key = self._key("user_id", user_id)
        if isinstance(key, Reply):
            return key
        loaded = self.store.snapshot.get(SEGMENTS)
        if loaded is None:
            return error(404, "no segments: the lake has no segments table")
        rows = loaded.rows.find(key)
        if rows is None:
            return error(404, f"unknown user_id {user_id!r}")
        grouped = loaded.rows
        return Reply(
            200,
            as_json(
                {
                    "user_id": user_id,
                    **_origin(loaded),
                    "segment_id": grouped.values("segment_id", rows)[0],
                    "segment_name": grouped.values("segment_name", rows)[0],
                    "model_version": grouped.values("model_version", rows)[0],
                }
            ),
        )

    def health(self) -> Reply:
        """200 when recommendations are loaded (503 before), with every source's version and age."""
        snapshot = self.store.snapshot
        now = self.clock()
        latest = self.store.latest_versions
        tables: dict[str, Any] = {}
        for source in SOURCES:
            loaded = snapshot.get(source)
            entry: dict[str, Any] = {"table": source.table.name, "latest_version": latest.get(source.name)}
            if loaded is not None:
                entry |= {
                    "version": loaded.version,
                    "as_of_date": loaded.as_of_date,
                    "committed_at": iso_time(loaded.committed_at),
                    "age_seconds": round(now - loaded.committed_at, 3),
                    "loaded_at": iso_time(loaded.loaded_at),
                    "load_seconds": round(loaded.load_seconds, 3),
                    "keys": len(loaded.rows),
                    "rows": loaded.rows.rows,
                }
            tables[source.name] = entry
        ready = snapshot.get(DAILY) is not None or snapshot.get(REALTIME) is not None
        return Reply(
            200 if ready else 503, as_json({"status": "ok" if ready else "loading", "tables": tables})
        )


def _origin(loaded: Loaded) -> dict[str, Any]:
    """Which table version an answer comes from."""
    return {"table": loaded.source.table.name, "version": loaded.version, "as_of_date": loaded.as_of_date}


def ranked_items(grouped: Grouped, rows: slice, item_column: str) -> list[dict[str, Any]]:
    """The answer's items from a key's rows: rank, item_id (from `item_column`), score, source, and
    model_version when the table has one (the real-time table has none)."""
    has_version = "model_version" in grouped.columns
    versions = grouped.values("model_version", rows) if has_version else [None] * (rows.stop - rows.start)
    return [
        {
            "rank": rank,
            "item_id": item,
            "score": _number(score),
            "source": source,
            **({"model_version": version} if has_version else {}),
        }
        for rank, item, score, source, version in zip(
            grouped.values("rank", rows),
            grouped.values(item_column, rows),
            grouped.values("score", rows),
            grouped.values("source", rows),
            versions,
            strict=True,
        )
    ]

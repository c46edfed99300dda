"""`serve`: answers from in-memory snapshots of small Delta tables written with deltalake (no Spark), through
FastAPI's TestClient, and a real server on 127.0.0.1 for the version swap under concurrent requests."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from fastapi.testclient import TestClient

from marketlake import catalog
from marketlake.config import ConfigError, ServeConfig, load_config
from marketlake.serve.__main__ import main as serve_main
from marketlake.serve.api import Api
from marketlake.serve.app import create_app
from marketlake.serve.snapshot import DAILY, GLOBAL_POPULAR, MOST_RECOMMENDED, Poller, Store, table_uri

DAY = dt.date(2024, 6, 30)
ARROW_TYPES = {
    "string": pa.string(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def write(root: Path, table: catalog.Table, rows: list[dict[str, Any]], mode: str = "append") -> int:
    """Rows into `table` under `root` with the catalog's column types; returns the new version."""
    schema = pa.schema([(name, ARROW_TYPES[kind]) for name, kind in table.columns])
    data = pa.Table.from_pylist(rows, schema=schema)
    uri = table_uri(str(root), table)
    write_deltalake(uri, data, mode=mode, partition_by=list(table.partition_by) or None)
    return int(DeltaTable(uri).version())


def daily_rows(users: dict[str, list[str]], version: str, day: dt.date = DAY) -> list[dict[str, Any]]:
    return [
        {
            "user_id": user,
            "rank": rank,
            "item_id": item,
            "score": round(1 - rank / 100, 6),
            "source": "als",
            "model_version": version,
            "as_of_date": day,
        }
        for user, items in users.items()
        for rank, item in enumerate(items, 1)
    ]


USERS = {
    "u1": ["a", "b", "c"],
    "ü/2 x": ["b", "c", "d"],  # ids as stored: non-ASCII, a slash, a space
    "u3": ["a", "c", "e"],
}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return tmp_path / "lake"


def make_client(root: Path, api_key: str | None = None, **config: Any) -> tuple[TestClient, Store]:
    store = Store(str(root), isolate=False)
    store.refresh()
    return TestClient(create_app(Api(store, ServeConfig(**config)), api_key)), store


def test_known_user_gets_the_daily_list_in_rank_order_with_ids_as_stored(root):
    write(root, catalog.USER_RECOMMENDATIONS, daily_rows(USERS, "m1"))
    client, _ = make_client(root)
    answer = client.get("/recommendations/%C3%BC%2F2%20x")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["user_id"] == "ü/2 x" and body["source"] == "daily" and body["version"] == 0
    assert body["table"] == catalog.USER_RECOMMENDATIONS.name and body["as_of_date"] == "2024-06-30"
    assert [(i["rank"], i["item_id"], i["model_version"]) for i in body["items"]] == [
        (1, "b", "m1"),
        (2, "c", "m1"),
        (3, "d", "m1"),
    ]
    assert [i["item_id"] for i in client.get("/recommendations/u1?n=2").json()["items"]] == ["a", "b"]


def test_only_the_newest_as_of_date_is_served(root):
    write(root, catalog.USER_RECOMMENDATIONS, daily_rows({"u1": ["old"], "gone": ["x"]}, "m0", DAY))
    write(root, catalog.USER_RECOMMENDATIONS, daily_rows({"u1": ["new"]}, "m1", DAY + dt.timedelta(days=1)))
    client, _ = make_client(root)
    body = client.get("/recommendations/u1").json()
    assert body["as_of_date"] == "2024-07-01" and [i["item_id"] for i in body["items"]] == ["new"]
    assert client.get("/recommendations/gone").json()["source"] == "popular"


def test_unknown_user_gets_popular_items(root):
    rows = daily_rows(USERS, "m1")
    # The recommend job's global list (score = share of users with the item) is what unknown users get first.
    rows += [
        {**rows[0], "user_id": "new", "rank": 1, "item_id": "p", "score": 0.6, "source": GLOBAL_POPULAR},
        {**rows[0], "user_id": "new", "rank": 2, "item_id": "q", "score": 0.4, "source": GLOBAL_POPULAR},
        {**rows[0], "user_id": "new2", "rank": 1, "item_id": "q", "score": 0.4, "source": GLOBAL_POPULAR},
    ]
    write(root, catalog.USER_RECOMMENDATIONS, rows)
    client, _ = make_client(root)
    body = client.get("/recommendations/nobody-knows-me?n=4").json()
    assert body["source"] == "popular" and body["user_id"] == "nobody-knows-me"
    # then the items recommended to most users (c: 3 of 5 users, a and b: 2 each, ties by id)
    assert [(i["item_id"], i["source"]) for i in body["items"]] == [
        ("p", GLOBAL_POPULAR),
        ("q", GLOBAL_POPULAR),
        ("c", MOST_RECOMMENDED),
        ("a", MOST_RECOMMENDED),
    ]
    assert body["items"][2]["score"] == pytest.approx(3 / 5)
    assert [i["rank"] for i in body["items"]] == [1, 2, 3, 4]


def test_global_popular_is_the_recommend_jobs_source_name():
    from marketlake.recommend import GLOBAL_POPULAR as JOB_NAME

    assert GLOBAL_POPULAR == JOB_NAME


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/recommendations/u1?n=0", 422),
        ("/recommendations/u1?n=101", 422),
        ("/recommendations/u1?n=abc", 422),
        ("/recommendations/u1?n=-1", 422),
        ("/recommendations/u1?n=1e3", 422),
        ("/recommendations/" + "x" * 300, 422),
        ("/recommendations/u%001", 422),
        ("/recommendations/", 422),
        ("/segments/u1", 404),  # no segments table
        ("/similar/a", 404),  # no similar-items table
        ("/no/such/endpoint", 404),
    ],
)
def test_bad_requests_get_a_json_error_never_a_traceback(root, path, status):
    write(root, catalog.USER_RECOMMENDATIONS, daily_rows(USERS, "m1"))
    client, _ = make_client(root)
    answer = client.get(path)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.json()) == {"error"} and "Traceback" not in answer.text
    assert client.post("/recommendations/u1").json() == {"error": "method not allowed"}


def test_segments_and_similar_items(root):
    write(root, catalog.USER_RECOMMENDATIONS, daily_rows(USERS, "m1"))
    segment = {"segment_id": 2, "segment_name": "at risk", "model_version": "s1", "as_of_date": DAY}
    write(root, catalog.USER_SEGMENTS, [{"user_id": "u1", **segment}])
    write(
        root,
        catalog.SIMILAR_ITEMS,
        [
            {
                "item_id": "a",
                "rank": rank,
                "similar_item_id": other,
                "score": 1 / rank,
                "source": "hybrid",
                "model_version": "c1",
                "as_of_date": DAY,
            }
            for rank, other in enumerate(["b", "c", "d"], 1)
        ],
    )
    client, _ = make_client(root)
    assert client.get("/segments/u1").json() == {
        "user_id": "u1",
        "table": catalog.USER_SEGMENTS.name,
        "version": 0,
        "as_of_date": "2024-06-30",
        "segment_id": 2,
        "segment_name": "at risk",
        "model_version": "s1",
    }
    assert client.get("/segments/u9").status_code == 404
    similar = client.get("/similar/a?n=2").json()
    assert [(i["rank"], i["item_id"], i["source"]) for i in similar["items"]] == [
        (1, "b", "hybrid"),
        (2, "c", "hybrid"),
    ]
    missing = client.get("/similar/zzz")
    assert missing.status_code == 404 and "zzz" in missing.json()["error"]


def test_realtime_list_wins_only_when_newer_than_the_daily_commit(root):
    write(root, catalog.USER_RECOMMENDATIONS, daily_rows(USERS, "m1"))
    committed = (
        DeltaTable(table_uri(str(root), catalog.USER_RECOMMENDATIONS)).history(1)[0]["timestamp"] / 1000
    )
    moment = dt.datetime.fromtimestamp(committed, dt.timezone.utc)

    def realtime(user: str, item: str, updated: dt.datetime) -> dict[str, Any]:
        return {
            "user_id": user,
            "rank": 1,
            "item_id": item,
            "score": 0.9,
            "source": "session",
            "updated_at": updated,
            "last_event_ts": updated,
        }

    write(
        root,
        catalog.REALTIME_RECOMMENDATIONS,
        [
            realtime("u1", "live", moment + dt.timedelta(seconds=30)),
            realtime("u3", "stale", moment - dt.timedelta(hours=1)),
            realtime("fresh", "tent", moment + dt.timedelta(seconds=30)),
        ],
    )
    client, _ = make_client(root)
    fresh = client.get("/recommendations/u1").json()
    assert fresh["source"] == "realtime" and [i["item_id"] for i in fresh["items"]] == ["live"]
    assert fresh["table"] == catalog.REALTIME_RECOMMENDATIONS.name and fresh["updated_at"].endswith("Z")
    assert client.get("/recommendations/u3").json()["source"] == "daily"
    assert client.get("/recommendations/fresh").json()["items"][0]["item_id"] == "tent"


def test_api_key(root, monkeypatch):
    write(root, catalog.USER_RECOMMENDATIONS, daily_rows(USERS, "m1"))
    client, _ = make_client(root, api_key="s3cret")
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret "}):
        answer = client.get("/recommendations/u1", headers=headers)
        assert answer.status_code == 401 and set(answer.json()) == {"error"}
    assert client.get("/segments/u1", headers={"X-API-Key": "nope"}).status_code == 401
    assert client.get("/recommendations/u1", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/health").status_code == 200  # open, for load balancers' probes


def test_health_reports_versions_and_age(root):
    client, store = make_client(root)
    before = client.get("/health")
    assert before.status_code == 503 and before.json()["status"] == "loading"
    assert client.get("/recommendations/u1").status_code == 503
    write(root, catalog.USER_RECOMMENDATIONS, daily_rows(USERS, "m1"))
    write(root, catalog.USER_RECOMMENDATIONS, daily_rows(USERS, "m2"), mode="overwrite")
    assert store.refresh()
    answer = client.get("/health")
    assert answer.status_code == 200
    daily = answer.json()["tables"]["daily"]
    assert (
        daily["version"] == 1 and daily["latest_version"] == 1 and daily["keys"] == 3 and daily["rows"] == 9
    )
    assert 0 <= daily["age_seconds"] < 120
    assert answer.json()["tables"]["similar"] == {"table": catalog.SIMILAR_ITEMS.name, "latest_version": None}


def test_a_failed_load_keeps_the_old_snapshot_and_logs_one_line(root, caplog):
    write(root, catalog.USER_RECOMMENDATIONS, daily_rows(USERS, "m1"))
    store = Store(str(root), isolate=False)
    store.refresh()
    write(root, catalog.USER_RECOMMENDATIONS, daily_rows(USERS, "m2", DAY + dt.timedelta(days=1)))
    for data_file in (root / "gold" / "user_recommendations" / "as_of_date=2024-07-01").glob("*.parquet"):
        data_file.unlink()  # version 1 committed, its file gone (say, vacuumed under the reader)
    with caplog.at_level(logging.ERROR, logger="marketlake.serve"):
        assert store.refresh() is False
        assert store.refresh() is False
    assert store.snapshot.get(DAILY).version == 0
    assert len(caplog.records) == 1 and "user_recommendations version 1" in caplog.records[0].getMessage()


@pytest.fixture()
def server(root) -> Iterator[tuple[str, Store]]:
    """A real server (uvicorn, as `serve` runs it) on an ephemeral port, with the poller every 0.1 s and
    each version loaded in its child process."""
    import uvicorn

    write(root, catalog.USER_RECOMMENDATIONS, daily_rows(USERS, "m0"))
    store = Store(str(root))
    store.refresh()
    poller = Poller(store, 0.1).start()
    config = uvicorn.Config(
        create_app(Api(store, ServeConfig())), host="127.0.0.1", port=0, log_level="warning"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (uv.started and uv.servers):
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = uv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", store
    uv.should_exit = True
    thread.join(10)
    poller.stop(5)


def test_versions_swap_under_concurrent_requests_without_errors_or_mixing(root, server):
    import httpx

    url, store = server
    versions = 4
    seen: list[tuple[int, str]] = []
    problems: list[str] = []
    done = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not done.is_set():
                for user in USERS:
                    answer = client.get(f"/recommendations/{user}")
                    if answer.status_code != 200:
                        problems.append(f"{answer.status_code} {answer.text}")
                        continue
                    body = answer.json()
                    models = {item["model_version"] for item in body["items"]}
                    if len(models) != 1 or models != {f"m{body['version']}"}:
                        problems.append(f"version {body['version']} mixes {sorted(models)}")
                    seen.append((body["version"], models.pop()))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for version in range(1, versions):
            # each version replaces the date's partition with lists of other items and its own model_version
            users = {user: [f"{item}{version}" for item in items] for user, items in USERS.items()}
            write(root, catalog.USER_RECOMMENDATIONS, daily_rows(users, f"m{version}"), mode="overwrite")
            deadline = time.monotonic() + 60
            while not any(v == version for v, _ in seen[-50:]):
                assert time.monotonic() < deadline, f"version {version} was not served within 60 s"
                time.sleep(0.05)
    finally:
        done.set()
        for thread in threads:
            thread.join(30)
    assert problems == []
    assert {v for v, _ in seen} == set(range(versions))
    assert len(seen) > 100


def test_config_and_command_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="default_n"):
        load_config(None, {"MARKETLAKE__SERVE__DEFAULT_N": "500"})
    assert load_config(None, {}).serve == ServeConfig()
    assert serve_main(["--lake", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert (
        len(error) == 1
        and error[0].startswith("marketlake serve: lake root")
        and "does not exist" in error[0]
    )
    assert serve_main(["--lake", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_json_bodies_are_compact_utf8(root):
    write(root, catalog.USER_RECOMMENDATIONS, daily_rows(USERS, "m1"))
    client, _ = make_client(root)
    raw = client.get("/recommendations/%C3%BC%2F2%20x").content
    assert "ü".encode() in raw and json.loads(raw)["user_id"] == "ü/2 x"

"""Benchmark: `serve` (python -m marketlake.serve) at a fixed request rate, and a new table version swapped
in under that load, against a per-request Delta read in the same run.

The lake: gold.user_recommendations with `--users` users x `--recs` items (default 10^6 x 10) in one
`as_of_date` partition, written with the deltalake package into a temporary folder (no Spark), sorted by
user (which helps the baseline's row-group pruning). The next day's partition, with another
model_version, is written as Parquet files beside it but not committed.

Then, with the server as a subprocess on 127.0.0.1:
1. startup: seconds until /health answers 200 (the first snapshot loaded);
2. baseline: `--baseline-requests` reads of one user as a client would do without serve (open the Delta
   table, read it filtered to the user with deltalake/pyarrow), p50/p99, bounded to 60 s;
3. load: `--rps` requests/s for `--seconds` s from an asyncio load generator on `--connections` keep-alive
   connections (raw HTTP/1.1), open loop: request i is due at start + i/rps, and its latency runs from
   when it was due (a late start counts against the server, so a stall is not hidden). 95% of the users
   exist, 5% do not (the popular fallback). Every response is parsed and checked: status 200, and all
   items of a list from one model_version. The generator's own overhead is reported: its CPU share and
   how late it started requests (gen_lag_p99_ms);
4. swap: the same rate again; after 5 s the staged partition is committed (one Delta commit, as the
   recommend job's delta-rs engine commits staged files), and the phase ends 3 s after the first answer
   from the new version (or after `--swap-seconds`). swap_s = that first answer's time minus the commit's
   timestamp in the Delta log; failed or mixed responses are counted;
5. memory: the server's RSS after the load and its peak (VmHWM) after the swap; the server's CPU time per
   request during the load (from /proc), which a busy machine disturbs less than latency.

The last line of stdout is JSON: p50_ms, p99_ms, rps, errors, swap_s, rss_mb and more.

    python bench/serve.py [--users 1000000] [--recs 10] [--items 50000] [--rps 500] [--seconds 60]
                          [--swap-seconds 120] [--connections 32] [--baseline-requests 200] [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import AddAction

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from marketlake import catalog  # noqa: E402
from marketlake.serve.snapshot import table_uri  # noqa: E402

DAY_1, DAY_2 = dt.date(2024, 6, 30), dt.date(2024, 7, 1)
VERSION_1, VERSION_2 = "2024-06-30-a1b2c3d4", "2024-07-01-e5f6a7b8"
LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def user_ids(count: int) -> np.ndarray:
    return np.char.add("u", np.char.zfill(np.arange(count).astype(str), 7))


def recommendations(users: int, recs: int, items: int, day: dt.date, version: str, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = user_ids(users)
    item_codes = rng.zipf(1.3, size=users * recs) % items
    return pa.table(
        {
            "user_id": pa.array(np.repeat(ids, recs)),
            "rank": pa.array(np.tile(np.arange(1, recs + 1, dtype=np.int32), users)),
            "item_id": pa.array(np.char.add("i", np.char.zfill(item_codes.astype(str), 6))),
            "score": pa.array(np.round(np.sort(rng.random((users, recs)))[:, ::-1].ravel(), 6)),
            "source": pa.array(np.where(np.arange(users * recs) % 50 == 0, "global_popular", "als")),
            "model_version": pa.array([version] * (users * recs), pa.string()),
            "as_of_date": pa.array([day] * (users * recs), pa.date32()),
        }
    )


def build_lake(root: str, args: argparse.Namespace) -> tuple[str, list[AddAction], Any]:
    """Version 0 committed; the next day's files staged (written, not committed)."""
    uri = table_uri(root, catalog.USER_RECOMMENDATIONS)
    first = recommendations(args.users, args.recs, args.items, DAY_1, VERSION_1, 1)
    write_deltalake(uri, first, partition_by=["as_of_date"])
    del first
    second = recommendations(args.users, args.recs, args.items, DAY_2, VERSION_2, 2).drop(["as_of_date"])
    folder = Path(uri) / f"as_of_date={DAY_2.isoformat()}"
    folder.mkdir(parents=True)
    adds = []
    per_file = max(1, second.num_rows // 4)
    for number, start in enumerate(range(0, second.num_rows, per_file)):
        relative = f"as_of_date={DAY_2.isoformat()}/part-{number:05d}-staged.parquet"
        pq.write_table(second.slice(start, per_file), Path(uri) / relative)
        stat = (Path(uri) / relative).stat()
        adds.append(
            AddAction(
                relative,
                stat.st_size,
                {"as_of_date": DAY_2.isoformat()},
                int(stat.st_mtime * 1000),
                True,
                None,
            )
        )
    return uri, adds, DeltaTable(uri).schema()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(lake: str, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    env.pop("MARKETLAKE_SERVE_API_KEY", None)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "marketlake.serve",
                "--lake",
                lake,
                "--port",
                str(port),
                "--poll-seconds",
                "1",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_ready(port: int, server: subprocess.Popen[bytes], limit: float = 300) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {limit:.0f} s")


def memory(pid: int) -> dict[str, float]:
    """RSS (psutil when installed, else /proc) and the peak (VmHWM, Linux), in MB."""
    figures = {}
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                figures[name] = int(value.split()[0]) / 1024
    try:
        import psutil

        figures["VmRSS"] = psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    return figures


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ---- baseline: a Delta read per request --------------------------------------------------------------------


def baseline(uri: str, users: int, requests: int, limit: float = 60) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    seconds = []
    started = time.perf_counter()
    for user in user_ids(users)[rng.integers(0, users, requests)]:
        begin = time.perf_counter()
        rows = DeltaTable(uri).to_pyarrow_table(
            filters=[("as_of_date", "=", DAY_1), ("user_id", "=", str(user))]
        )
        seconds.append(time.perf_counter() - begin)
        assert rows.num_rows > 0
        if time.perf_counter() - started > limit:
            break
    return {
        "requests": len(seconds),
        "p50_ms": percentile(seconds, 50) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
    }


# ---- the load generator -----------------------------------------------------------------------------------


class Phase:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.errors = 0
        self.mixed = 0
        self.failures: list[str] = []
        self.versions: list[tuple[float, int]] = []  # (wall time received, table version)
        self.first_seen: dict[int, float] = {}  # table version -> wall time of its first answer

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.failures) < 5:
            self.failures.append(what)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def fetch(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: bytes
) -> tuple[int, bytes]:
    reader, writer = connection
    writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    found = LENGTH.search(head)
    body = await reader.readexactly(int(found.group(1))) if found else b""
    return int(head[9:12]), body


def check(phase: Phase, status: int, body: bytes, expected: dict[int, str]) -> None:
    if status != 200:
        phase.fail(f"status {status}: {body[:200]!r}")
        return
    answer = json.loads(body)
    versions = {item.get("model_version") for item in answer["items"]}
    if answer["source"] == "daily" and (len(versions) != 1 or versions != {expected.get(answer["version"])}):
        phase.mixed += 1
        phase.fail(
            f"mixed: table version {answer['version']} with model versions {sorted(map(str, versions))}"
        )
    received = time.time()
    phase.versions.append((received, int(answer["version"])))
    phase.first_seen.setdefault(int(answer["version"]), received)


async def load(
    port: int,
    paths: list[bytes],
    rps: float,
    seconds: float,
    connections: int,
    expected: dict[int, str],
    during: Any = None,
    until: Any = None,
) -> Phase:
    """`rps` requests/s for `seconds` s (or until `until(phase)` is true), `during(start)` beside them."""
    loop = asyncio.get_running_loop()
    phase = Phase()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await connect(port))

    async def one(due: float, path: bytes) -> None:
        phase.lags.append(loop.time() - due)
        connection = await pool.get()
        try:
            status, body = await fetch(connection, path)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            phase.fail(f"{type(exc).__name__}: {exc}")
            connection[1].close()
            connection = await connect(port)
        else:
            phase.latencies.append(loop.time() - due)
            check(phase, status, body, expected)
        pool.put_nowait(connection)

    total = int(rps * seconds)
    start = loop.time() + 0.05
    tasks = []
    side = asyncio.ensure_future(during(start)) if during else None
    for number in range(total):
        if until is not None and number % 50 == 0 and until(phase):
            break
        due = start + number / rps
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due, paths[number % len(paths)])))
    await asyncio.gather(*tasks)
    phase.wall = loop.time() - start  # type: ignore[attr-defined]
    if side is not None:
        await side
    while not pool.empty():
        pool.get_nowait()[1].close()
    return phase


def summary(phase: Phase, cpu_seconds: float) -> dict[str, Any]:
    wall = phase.wall  # type: ignore[attr-defined]
    return {
        "requests": len(phase.latencies) + phase.errors,
        "p50_ms": round(percentile(phase.latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(phase.latencies, 99) * 1000, 3),
        "max_ms": round(max(phase.latencies, default=float("nan")) * 1000, 3),
        "rps": round(len(phase.latencies) / wall, 1),
        "errors": phase.errors,
        "mixed": phase.mixed,
        "gen_lag_p99_ms": round(percentile(phase.lags, 99) * 1000, 3),
        "gen_cpu_share": round(cpu_seconds / wall, 3),
    }


def request_paths(users: int, count: int, recs: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    known = user_ids(users)[rng.integers(0, users, count)]
    unknown = rng.random(count) < 0.05
    return [
        (f"/recommendations/x{number}" if unknown[number] else f"/recommendations/{user}").encode()
        + f"?n={recs}".encode()
        for number, user in enumerate(known)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--recs", type=int, default=10)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--rps", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--swap-seconds", type=float, default=120, help="the most the swap phase runs")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--baseline-requests", type=int, default=200)
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    args = parser.parse_args()
    if not (1 <= args.rps <= 5000 and 1 <= args.seconds <= 600 and 6 <= args.swap_seconds <= 600):
        parser.error("bounded load only: --rps 1..5000, --seconds 1..600, --swap-seconds 6..600")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="marketlake-bench-serve-") as folder:
        lake = str(Path(folder) / "lake")
        began = time.perf_counter()
        uri, staged, schema = build_lake(lake, args)
        print(
            f"lake: {args.users:,} users x {args.recs} recommendations written in {time.perf_counter() - began:.1f} s"
        )
        port = args.port or free_port()
        server = start_server(lake, port, Path(folder) / "server.log")
        try:
            startup_s = wait_ready(port, server)
            print(f"server: ready in {startup_s:.1f} s on port {port}, RSS {memory(server.pid)}")
            base = baseline(uri, args.users, args.baseline_requests)
            print(f"baseline (Delta read per request): {base}")
            paths = request_paths(args.users, 200_000, args.recs)
            expected = {0: VERSION_1, 1: VERSION_2}
            asyncio.run(load(port, paths, args.rps, 3, args.connections, expected))  # warm-up
            cpu, server_cpu = time.process_time(), cpu_seconds(server.pid)
            steady = asyncio.run(load(port, paths, args.rps, args.seconds, args.connections, expected))
            steady_summary = summary(steady, time.process_time() - cpu)
            steady_summary["server_cpu_ms_per_request"] = round(
                (cpu_seconds(server.pid) - server_cpu) / max(steady_summary["requests"], 1) * 1000, 3
            )
            steady_memory = memory(server.pid)
            print(f"load: {steady_summary}, server memory MB {steady_memory}")
            if steady.failures:
                print("  first failures:", steady.failures)
            commit: dict[str, float] = {}

            async def commit_later(start: float) -> None:
                await asyncio.sleep(max(0.0, start + 5 - asyncio.get_running_loop().time()))
                table = DeltaTable(uri)
                await asyncio.to_thread(
                    table.create_write_transaction, staged, "append", schema, partition_by=["as_of_date"]
                )
                table.update_incremental()
                history = [c for c in table.history(limit=1) if c.get("version") == table.version()]
                commit["at"] = float(history[0]["timestamp"]) / 1000
                commit["version"] = table.version()

            def swapped(phase: Phase) -> bool:
                """3 s of answers after the new version's first one."""
                seen = phase.first_seen.get(int(commit.get("version", -1)))
                return seen is not None and time.time() - seen > 3

            cpu = time.process_time()
            swap = asyncio.run(
                load(
                    port,
                    paths,
                    args.rps,
                    args.swap_seconds,
                    args.connections,
                    expected,
                    commit_later,
                    swapped,
                )
            )
            swap_summary = summary(swap, time.process_time() - cpu)
            new_seen = [at for at, version in swap.versions if version == commit.get("version")]
            swap_s = round(min(new_seen) - commit["at"], 3) if new_seen and commit else None
            old_after = sum(
                1
                for at, version in swap.versions
                if new_seen and at > min(new_seen) and version != commit.get("version")
            )
            swap_memory = memory(server.pid)
            print(
                f"swap: {swap_summary}, swap_s {swap_s}, old version answers after the first new one {old_after}, server memory MB {swap_memory}"
            )
            if swap.failures:
                print("  first failures:", swap.failures)
        finally:
            server.terminate()
            server.wait(30)
            print("server log:", (Path(folder) / "server.log").read_text().strip().replace("\n", "\n  "))
    load_end = os.getloadavg()
    result = {
        "p50_ms": steady_summary["p50_ms"],
        "p99_ms": steady_summary["p99_ms"],
        "rps": steady_summary["rps"],
        "errors": steady_summary["errors"] + swap_summary["errors"],
        "swap_s": swap_s,
        "rss_mb": round(steady_memory.get("VmRSS", float("nan")), 1),
        "peak_rss_mb": round(swap_memory.get("VmHWM", float("nan")), 1),
        "rss_after_swap_mb": round(swap_memory.get("VmRSS", float("nan")), 1),
        "max_ms": steady_summary["max_ms"],
        "swap_phase_p99_ms": swap_summary["p99_ms"],
        "swap_phase_errors": swap_summary["errors"],
        "mixed": steady_summary["mixed"] + swap_summary["mixed"],
        "old_after_new": old_after,
        "gen_lag_p99_ms": steady_summary["gen_lag_p99_ms"],
        "gen_cpu_share": steady_summary["gen_cpu_share"],
        "server_cpu_ms_per_request": steady_summary["server_cpu_ms_per_request"],
        "startup_s": round(startup_s, 2),
        "baseline_p50_ms": round(base["p50_ms"], 2),
        "baseline_p99_ms": round(base["p99_ms"], 2),
        "p50_ratio": round(base["p50_ms"] / steady_summary["p50_ms"], 1),
        "p99_ratio": round(base["p99_ms"] / steady_summary["p99_ms"], 1),
        "users": args.users,
        "recs": args.recs,
        "target_rps": args.rps,
        "seconds": args.seconds,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in load_end],
    }
    print(f"ratio (baseline / serve): p50 {result['p50_ratio']}x, p99 {result['p99_ratio']}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

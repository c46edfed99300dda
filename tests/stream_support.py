"""Shared by the stream tests: landing files of a few users' sessions, a stand-in for the sessions
module's blend, and (run as a script) the stream job with that stand-in, as a supervisor would start it:
`python tests/stream_support.py --lake ROOT --source LANDING [--available-now] ...`."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

START = dt.datetime(2024, 6, 29, 10, 0, tzinfo=dt.timezone.utc)
LIST_LENGTH = 4


def stand_in_blend(
    session_events: DataFrame, next_items: DataFrame, daily: DataFrame, settings: Any, updated_at: dt.datetime
) -> DataFrame:
    """The session's most viewed items (ties by item id), at most LIST_LENGTH: lists of varying length,
    so a shorter new list must replace a longer old one."""
    counted = session_events.groupBy("user_id", "item_id").agg(
        F.count("*").cast("double").alias("score"), F.max("event_ts").alias("_last")
    )
    ranked = counted.withColumn(
        "rank",
        F.row_number().over(Window.partitionBy("user_id").orderBy(F.desc("score"), "item_id")).cast("int"),
    ).filter(F.col("rank") <= LIST_LENGTH)
    last = session_events.groupBy("user_id").agg(F.max("event_ts").alias("last_event_ts"))
    return ranked.join(last, "user_id").select(
        "user_id",
        "rank",
        "item_id",
        "score",
        F.lit("session").alias("source"),
        F.lit(updated_at).cast("timestamp").alias("updated_at"),
        "last_event_ts",
    )


def stand_in():
    from marketlake.config import RealtimeConfig
    from marketlake.stream import Realtime

    return Realtime(stand_in_blend, RealtimeConfig())


def event_lines(file_number: int, users: int = 3, per_user: int = 4) -> list[str]:
    """Events of file `file_number`: each user views items whose mix shifts from file to file (so lists
    change and shrink), a few dirty lines, and one exact duplicate of an earlier file's event."""
    lines = []
    for user in range(users):
        for k in range(per_user if (file_number + user) % 3 else 1):
            ts = START + dt.timedelta(minutes=5 * file_number + k)
            item = f"i{(file_number * 7 + user * 3 + k * (file_number % 2 + 1)) % 11}"
            lines.append(
                json.dumps(
                    {
                        "event_id": f"f{file_number}-u{user}-{k}",
                        "user_id": f"u{user}",
                        "item_id": item,
                        "event_type": "view",
                        "ts": ts.isoformat(),
                        "session_id": f"s{user}",
                    }
                )
            )
    lines.append('{"event_id": "broken", "user_id": ')  # malformed_json
    lines.append(
        json.dumps(
            {
                "event_id": f"x{file_number}",
                "user_id": "u0",
                "item_id": "i1",
                "event_type": "teleport",
                "ts": START.isoformat(),
            }
        )
    )
    if file_number:
        lines.append(event_lines(file_number - 1, users, per_user)[0])  # a resend: an exact duplicate
    return lines


def land(folder: Path, file_number: int, **sizes: int) -> Path:
    """Write file `file_number` into the landing folder the way a collector does: a hidden name first,
    then an atomic rename, so the stream never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"events-{file_number:05d}.json"
    hidden = folder / f".{target.name}.tmp"
    hidden.write_text("\n".join(event_lines(file_number, **sizes)) + "\n")
    os.rename(hidden, target)
    return target


def main(argv: list[str]) -> int:
    from marketlake.jobs.stream import JOB, run
    from marketlake.runner import run_cli

    job = replace(JOB, run=functools.partial(run, realtime=stand_in()))
    return run_cli(job, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

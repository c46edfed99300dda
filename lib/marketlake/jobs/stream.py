"""stream: Spark Structured Streaming ingest of the landing folder's event files (or a Kafka topic) into
bronze.events, silver.events and quarantine.events with batch ingest's own mapping, validation and
deduplication, each micro-batch committed exactly once; then, for the users active in it, one MERGE into
gold.realtime_recommendations. Runs until SIGTERM (the micro-batch in flight finishes), or with
--available-now processes what has landed and stops (for a scheduler). Not a pipeline step."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from marketlake.config import Config, shop_root
from marketlake.errors import UsageError
from marketlake.ingest import IngestRequest
from marketlake.ingest.sources import is_local
from marketlake.mapping import load_mapping
from marketlake.runner import Job, JobContext
from marketlake.stream import MicroBatch, Realtime, run_until_stopped, session_blend, start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--available-now",
        action="store_true",
        help="process the files that have landed, in micro-batches, and stop (for a scheduler)",
    )
    parser.add_argument("--source", help="the landing folder to watch (default: stream.path)")
    parser.add_argument("--mapping", help="source mapping (default: stream.mapping)")


def source_path(args: argparse.Namespace, config: Config) -> str:
    return args.source or config.stream.path or f"{shop_root(config)}/events"


def validate(args: argparse.Namespace, config: Config) -> None:
    """Before Spark starts: the mapping loads and maps events; a local landing folder exists (it may be
    empty: files arrive later)."""
    mapping = load_mapping(args.mapping or config.stream.mapping)
    if mapping.entity != "events":
        raise UsageError(f"mapping {mapping.name} maps {mapping.entity}; the stream ingests events")
    path = source_path(args, config)
    if config.stream.source == "files" and is_local(path):
        import os

        if not os.path.isdir(path):
            raise UsageError(f"landing folder not found: {path}")


def run(ctx: JobContext, args: argparse.Namespace, realtime: Realtime | None = None) -> None:
    """realtime: the blend to merge with; by default the sessions module's (`session_blend`). Tests inject a
    stand-in here. With `stream.realtime: false` nothing is merged."""
    config = ctx.config.with_lake_root(ctx.lake.root)
    blend: Realtime | None = None
    if config.stream.realtime:
        blend = realtime or session_blend(config)
    else:
        ctx.note("gold.realtime_recommendations not merged (stream.realtime: false)")
    mapping = load_mapping(args.mapping or config.stream.mapping)
    path = source_path(args, config)
    request = IngestRequest("events", path, mapping, mapping.format)
    stopping = threading.Event()
    handler = MicroBatch(ctx, request, config.ingest, config.stream, blend, stopping)

    def on_sigterm(signum: int, frame: Any) -> None:
        ctx.note("SIGTERM: finishing the micro-batch in flight, then stopping")
        stopping.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        query = start(ctx.spark, ctx.lake, handler, path, args.available_now)
        ctx.note(
            f"started {query.name} on {path} ({'available now' if args.available_now else 'until SIGTERM'})"
        )
        run_until_stopped(query, stopping)
    finally:
        signal.signal(signal.SIGTERM, previous)


JOB = Job(name="stream", help=__doc__.strip(), run=run, add_arguments=add_arguments, validate=validate)

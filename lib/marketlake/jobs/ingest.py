"""ingest: read raw files into bronze.events (as received), silver.events/users/items (typed, valid,
unique) and quarantine.* (rejected, with a reason). Without --source, the shop that generate writes:
its events/, users.csv and items.csv. Files ingested before are skipped unless --force."""

from __future__ import annotations

import argparse

from marketlake.config import Config, shop_root
from marketlake.errors import UsageError
from marketlake.ingest import IngestRequest, IngestResult, RejectRateExceeded, ingest
from marketlake.ingest.pseudonym import load_key
from marketlake.ingest.sources import check_local_source
from marketlake.mapping import load_mapping
from marketlake.runner import Job, JobContext

ENTITIES = ("events", "users", "items")
# The files of the shop layout that generate writes, by entity.
SHOP_LAYOUT = {"events": "events", "users": "users.csv", "items": "items.csv"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", help="a file or folder of raw files (default: the shop generate writes, all entities)"
    )
    parser.add_argument(
        "--format", choices=["json", "csv", "parquet", "text"], help="file format (default: the mapping's)"
    )
    parser.add_argument(
        "--mapping", help="source mapping: a YAML path, or a name in conf/sources (default: shop_<entity>)"
    )
    parser.add_argument("--entity", choices=ENTITIES, help="what the source holds (default: events)")
    parser.add_argument("--force", action="store_true", help="re-read files that were ingested before")


def plan(args: argparse.Namespace, config: Config) -> list[IngestRequest]:
    """The (entity, source, mapping) to ingest, in order: dimensions before events."""
    if args.source is None and args.entity is None and args.mapping is None:
        shop = config.ingest.source or shop_root(config)
        return [
            _request(entity, f"{shop}/{SHOP_LAYOUT[entity]}", None, args)
            for entity in ("items", "users", "events")
        ]
    source = args.source or config.ingest.source or shop_root(config)
    return [_request(args.entity, source, args.mapping, args)]


def _request(
    entity: str | None, source: str, mapping_name: str | None, args: argparse.Namespace
) -> IngestRequest:
    mapping = load_mapping(mapping_name or f"shop_{entity or 'events'}")
    if entity is not None and entity != mapping.entity:
        raise UsageError(f"mapping {mapping.name} maps {mapping.entity}, not {entity}")
    fmt = args.format or mapping.format
    if fmt == "text" and mapping.text is None:
        raise UsageError(
            f"--format text needs a mapping with text: {{pattern: ...}}; {mapping.name} has none"
        )
    return IngestRequest(mapping.entity, source, mapping, fmt, args.force)


def validate(args: argparse.Namespace, config: Config) -> None:
    """Before Spark starts: the mappings of every request load, local sources hold readable files, and
    the pseudonym key is there when user ids are to be pseudonymised."""
    for request in plan(args, config):
        check_local_source(request.source)
    if config.ingest.pseudonymise_user_ids:
        load_key(config.ingest.pseudonym_key_env)


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    config = ctx.config.with_lake_root(ctx.lake.root)
    try:
        found = ingest(ctx, plan(args, config), config.ingest)
    except RejectRateExceeded as exc:  # the counts that failed the run go into its ops.job_runs row
        ctx.counts.update(prefixed(exc.results))
        raise
    ctx.counts.update(prefixed(found))


def prefixed(found: list[IngestResult]) -> dict[str, int]:
    return {f"{result.entity}.{key}": value for result in found for key, value in result.counts.items()}


def results(counts: dict[str, int]) -> list[IngestResult]:
    found = []
    for entity in ENTITIES:
        prefix = f"{entity}."
        own = {key[len(prefix) :]: value for key, value in counts.items() if key.startswith(prefix)}
        if own:
            found.append(IngestResult(entity, own))
    return found


def print_conservation(ctx: JobContext) -> None:
    lines = [f"marketlake ingest {ctx.run_date}:"] + [f"  {r.conservation()}" for r in results(ctx.counts)]
    print("\n".join(lines), flush=True)


JOB = Job(
    name="ingest",
    help=__doc__.strip(),
    run=run,
    add_arguments=add_arguments,
    validate=validate,
    finish=print_conservation,
    accepts_force=True,
)

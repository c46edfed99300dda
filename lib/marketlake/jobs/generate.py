"""generate: write a synthetic shop (events as JSON lines, users.csv, items.csv, and the planted truth)
as raw files; without size arguments, the demo scale of the config's `generate` section. The events
end on the run date."""

from __future__ import annotations

import argparse

from marketlake.config import Config, shop_root, with_overrides
from marketlake.demo import ShopSpec, generate_shop
from marketlake.runner import Job, JobContext

# Command-line options that override the config's generate section (option dest = config key).
OVERRIDES = ("users", "items", "events", "seed", "days", "dirty_rate", "new_item_share", "intent_share")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, help="number of users (default: config generate.users)")
    parser.add_argument("--items", type=int, help="number of items (default: config generate.items)")
    parser.add_argument(
        "--events", type=int, help="number of event lines, dirty ones included (default: config)"
    )
    parser.add_argument(
        "--seed", type=int, help="random seed; the same seed writes the same files (default: config)"
    )
    parser.add_argument("--days", type=int, help="days of events, ending on the run date (default: config)")
    parser.add_argument(
        "--dirty-rate", type=float, help="share of dirty lines, 0-0.3 (default: config, 0.01)"
    )
    parser.add_argument(
        "--new-item-share",
        type=float,
        help="share of the items released during the window, 0-0.5 (default: config, 0.1)",
    )
    parser.add_argument(
        "--intent-share",
        type=float,
        help="share of sessions focused on one category, 0-0.5 (default: config, 0.1)",
    )
    parser.add_argument(
        "--out",
        help="output folder, a path or a URI such as s3a://bucket/shop "
        "(default: <landing root>/<generate.shop>, where ingest looks)",
    )


def spec_from(args: argparse.Namespace, config: Config) -> ShopSpec:
    shop = with_overrides(config.generate, {key: getattr(args, key) for key in OVERRIDES})
    return ShopSpec(
        users=shop.users,
        items=shop.items,
        events=shop.events,
        seed=shop.seed,
        days=shop.days,
        dirty_rate=shop.dirty_rate,
        end_date=args.run_date,
        new_item_share=shop.new_item_share,
        intent_share=shop.intent_share,
    )


def validate(args: argparse.Namespace, config: Config) -> None:
    spec_from(args, config).validate()


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    spec = spec_from(args, ctx.config)
    out = args.out or shop_root(ctx.config.with_lake_root(ctx.lake.root))
    with ctx.step(f"write shop to {out}") as step:
        counts = generate_shop(ctx.spark, spec, out, ctx.lake.files)
        step.rows = counts["events"]
        step.detail = (
            f"events ({spec.users:,} users, {spec.items:,} items, {spec.days} days to {spec.end_date}, "
            f"seed {spec.seed}, {counts['dirty']:,} dirty, {counts['new_items']:,} new items)"
        )
    ctx.counts.update(counts)


JOB = Job(name="generate", help=__doc__.strip(), run=run, add_arguments=add_arguments, validate=validate)

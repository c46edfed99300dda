"""rules: FPGrowth association rules over baskets (one per order, or per session with basket: session)
from silver.events up to the run date, into gold.association_rules, and per item the top consequents of
its single-item rules into gold.item_cross_sell. A guard stops before fitting when too many frequent
itemsets are possible. Overwrites only the run date's partitions."""

from __future__ import annotations

import argparse

from pyspark.sql import DataFrame

from marketlake import catalog
from marketlake.config import Config, RulesConfig, with_overrides
from marketlake.rules import (
    RULES_SCHEMA,
    TooManyItemsets,
    as_of,
    baskets,
    cross_sell,
    estimate_itemsets,
    frequent_items,
    guard_message,
    mine_rules,
)
from marketlake.runner import Job, JobContext

RULES, CROSS_SELL = catalog.ASSOCIATION_RULES.name, catalog.ITEM_CROSS_SELL.name
# Command-line options that override the config's rules section (option dest = config key).
OVERRIDES = ("basket", "min_support", "min_confidence", "min_lift", "top_n", "max_itemsets")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--basket",
        choices=["order", "session"],
        help="one basket per order or per session (default: config rules.basket)",
    )
    parser.add_argument(
        "--min-support", type=float, help="share of baskets a frequent itemset is in, 0-1 (default: config)"
    )
    parser.add_argument("--min-confidence", type=float, help="lowest rule confidence, 0-1 (default: config)")
    parser.add_argument("--min-lift", type=float, help="lowest rule lift (default: config, 1.0)")
    parser.add_argument("--top-n", type=int, help="cross-sell items per item (default: config, 10)")
    parser.add_argument(
        "--max-itemsets", type=int, help="guard: most frequent itemsets allowed (default: config)"
    )


def settings(args: argparse.Namespace, config: Config) -> RulesConfig:
    """The config's rules section with the command line's overrides."""
    return with_overrides(config.rules, {key: getattr(args, key) for key in OVERRIDES})


def validate(args: argparse.Namespace, config: Config) -> None:
    settings(args, config)


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    lake, rules_config = ctx.lake, settings(args, ctx.config)
    lake.require(catalog.SILVER_EVENTS)
    kind = "orders" if rules_config.basket == "order" else "sessions"
    with ctx.step(f"baskets: {kind} up to {ctx.run_date}") as step:
        events = lake.read(catalog.SILVER_EVENTS)
        basket_frame = events.transform(
            baskets(ctx.run_date, rules_config.basket, rules_config.session_event_types)
        ).persist()
        step.rows = n_baskets = basket_frame.count()
    try:
        with ctx.step("guard") as step:
            # One count of the items serves the guard and FPGrowth (their codes).
            items = frequent_items(
                basket_frame, n_baskets, rules_config.min_support, rules_config.max_itemsets
            )
            estimate = estimate_itemsets(
                basket_frame, n_baskets, rules_config.min_support, rules_config.max_itemsets, items
            )
            step.detail = estimate.describe()
        # Recorded in ops.job_runs even when the guard stops the run.
        ctx.counts.update(
            baskets=n_baskets, frequent_items=estimate.frequent_items, itemsets_bound=estimate.bound
        )
        if estimate.exceeded:
            raise TooManyItemsets(guard_message(estimate, rules_config.min_support))
        with ctx.step(
            f"{RULES}: FPGrowth at support {rules_config.min_support:g}, confidence {rules_config.min_confidence:g}, "
            f"lift {rules_config.min_lift:g}"
        ) as step:
            if n_baskets:
                thresholds = rules_config.min_support, rules_config.min_confidence, rules_config.min_lift
                with mine_rules(basket_frame, *thresholds, items=items) as mined:
                    n_itemsets = mined.itemsets
                    n_rules = _overwrite(ctx, RULES, mined.rules.transform(as_of(ctx.run_date)))
            else:  # FPGrowth needs at least one basket
                n_itemsets = 0
                n_rules = _overwrite(
                    ctx, RULES, ctx.spark.createDataFrame([], RULES_SCHEMA).transform(as_of(ctx.run_date))
                )
            step.rows = n_rules
            step.detail = f"from {n_itemsets:,} frequent itemsets"
            if not n_rules:
                step.detail += f" in {n_baskets:,} {kind}: no rules, empty partition written"
    finally:
        basket_frame.unpersist()
    with ctx.step(f"{CROSS_SELL}: top {rules_config.top_n} per item") as step:
        written = lake.read_as_of(RULES, ctx.run_date)
        step.rows = n_cross_sell = _overwrite(
            ctx, CROSS_SELL, written.transform(cross_sell(rules_config.top_n)).transform(as_of(ctx.run_date))
        )
    ctx.counts.update(itemsets=n_itemsets, rules=n_rules, cross_sell_rows=n_cross_sell)


def _overwrite(ctx: JobContext, table: str, frame: DataFrame) -> int:
    return ctx.lake.overwrite_as_of(table, frame, ctx.run_date).rows


JOB = Job(name="rules", help=__doc__.strip(), run=run, add_arguments=add_arguments, validate=validate)

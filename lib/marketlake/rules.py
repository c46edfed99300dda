"""Market-basket rules: silver.events -> baskets -> (a guard against itemset explosions) -> FPGrowth
association rules -> per-item cross-sell lists.

Definitions (the README's "rules" section says the same for readers of the tables):

- A basket is the set of distinct item_ids of one order (purchase events with an order_id) or, with
  `basket="session"`, of one session_id (events of `session_event_types`). Events after the run date
  (by `event_date`) are ignored.
- Support of an itemset: the share of all baskets that contain it, single-item baskets included. An
  itemset is frequent when it is in at least `min_count(min_support, baskets)` = ceil(min_support x
  baskets) baskets, the threshold Spark's FPGrowth (and mlxtend) apply.
- A rule A -> C (Spark's FPGrowth makes single-item consequents only): support = support(A u C),
  confidence = support(A u C) / support(A), lift = confidence / support(C).
- Cross-sell: for each item, the consequents of the rules whose antecedent is that item alone, ranked by
  lift, then confidence, then item_id (so that ties rank the same way on every run).

The guard (`estimate_itemsets`) bounds the number of frequent itemsets from above before FPGrowth runs:
each frequent s-itemset is in at least min_count baskets, so there are at most
sum over baskets of (frequent s-subsets of the basket) / min_count of them. Level by level this is
first bounded by the number of frequent items k in each basket (C(k, s) subsets; cheap, and enough for
order-sized baskets); when that bound is too high, frequent pairs are counted exactly and a basket's
frequent s-subsets are bounded by the s-cliques of its graph of frequent pairs: with e edges, at most
C(x, s) where C(x, 2) = e (Lovasz's form of the Kruskal-Katona theorem). Both are true upper bounds, so
a run the guard lets through has at most `limit` frequent itemsets; the price is that it can stop one
whose baskets could in principle (but do not) overlap that much.

Items as integers: one aggregation counts the items (`frequent_items`); the guard and FPGrowth then work
on baskets of frequent-item codes (`FrequentItems.encode`), and the rules are decoded back to item_ids.
Dropping the infrequent items changes no frequent itemset, and every basket is kept (empty ones too), so
FPGrowth's basket count, min_count and every support, confidence and lift are the same as on the strings.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from marketlake.errors import UsageError

RULE_COLUMNS = ["antecedent", "consequent", "support", "confidence", "lift"]
RULES_SCHEMA = T.StructType(
    [
        T.StructField("antecedent", T.ArrayType(T.StringType())),
        T.StructField("consequent", T.ArrayType(T.StringType())),
        T.StructField("support", T.DoubleType()),
        T.StructField("confidence", T.DoubleType()),
        T.StructField("lift", T.DoubleType()),
    ]
)
CROSS_SELL_COLUMNS = ["item_id", "rank", "recommended_item_id", "confidence", "lift", "support"]
# Counting frequent pairs makes one row per pair of frequent items in a basket; past this many rows the
# guard does not try to refine its bound (counting them would cost about as much as the fit).
MAX_PAIR_ROWS = 200_000_000


class TooManyItemsets(UsageError):
    """The guard: more frequent itemsets are possible than the configured limit."""


# ---- baskets -------------------------------------------------------------------------------------


def baskets(
    run_date: dt.date, basket: str = "order", session_event_types: list[str] | None = None
) -> Callable[[DataFrame], DataFrame]:
    """silver.events -> (basket_id, items): one row per order (or session) up to the run date, with its
    distinct item_ids sorted."""
    if basket == "order":
        key, wanted = "order_id", F.col("event_type") == "purchase"
    elif basket == "session":
        key, wanted = "session_id", F.col("event_type").isin(list(session_event_types or []))
    else:
        raise ValueError(f"basket must be order or session, not {basket!r}")

    def transform(events: DataFrame) -> DataFrame:
        return (
            events.filter(
                wanted
                & (F.col("event_date") <= F.lit(run_date))
                & F.col(key).isNotNull()
                & F.col("item_id").isNotNull()
            )
            .groupBy(F.col(key).alias("basket_id"))
            .agg(F.array_sort(F.collect_set("item_id")).alias("items"))
        )

    return transform


# ---- the guard -----------------------------------------------------------------------------------


def min_count(min_support: float, baskets: int) -> int:
    """Baskets an itemset must be in to be frequent: Spark's FPGrowth computes it exactly this way."""
    return math.ceil(min_support * baskets)


def level_bound(
    sizes: Mapping[int, int], min_count: int, frequent_items: int, first_level: int, limit: int
) -> int:
    """Upper bound on the frequent itemsets of `first_level` items and more, given {x: baskets} where at
    most C(x, s) of a basket's s-subsets can be frequent: per level s, min(C(f, s), sum n_x C(x, s) //
    min_count), until a level is empty (then all larger ones are) or the total passes `limit`."""
    total, level = 0, first_level
    while total <= limit:
        possible = sum(n * math.comb(x, level) for x, n in sizes.items()) // max(min_count, 1)
        found = min(math.comb(frequent_items, level), possible)
        if found == 0:
            break
        total += found
        level += 1
    return total


@dataclass(frozen=True)
class ItemsetEstimate:
    baskets: int
    min_count: int
    frequent_items: int
    frequent_pairs: int | None  # None: the cheap bound was enough
    bound: int  # frequent itemsets are at most this many (when over the limit: more than the limit)
    limit: int

    @property
    def exceeded(self) -> bool:
        return self.bound > self.limit

    def describe(self) -> str:
        pairs = "" if self.frequent_pairs is None else f", {self.frequent_pairs:,} frequent pairs"
        at_most = f"more than {self.limit:,}" if self.exceeded else f"at most {self.bound:,}"
        return (
            f"{self.frequent_items:,} frequent items{pairs} in {self.baskets:,} baskets (itemsets in >= "
            f"{self.min_count:,} baskets): {at_most} frequent itemsets"
        )


# Frequent items are coded through one literal map in the query plan. Spark looks a key up in a map by
# scanning its keys (most frequent first here, so a basket's usual items are found early; an infrequent
# item scans them all): past this many frequent items the scans would cost more than the codes save,
# and FPGrowth runs on the item strings instead (same results).
MAX_CODED_ITEMS = 1_000
# Joins the item names into the one string literal the plan splits (a character no item_id holds).
SEPARATOR = "\x1f"


@dataclass(frozen=True)
class FrequentItems:
    """The items in at least min_count baskets, most frequent first (ties by item): code i is names[i]."""

    baskets: int
    min_count: int
    count: int  # frequent items (names is empty when they are more than the caller's limit)
    names: tuple[str, ...]

    @property
    def codable(self) -> bool:
        return (
            len(self.names) == self.count
            and self.count <= MAX_CODED_ITEMS
            and not any(SEPARATOR in name for name in self.names)
        )

    def _names(self) -> Column:
        # One string literal split into an array: the optimizer folds it into one constant (a literal per
        # item would cost a call to the JVM each).
        return F.split(F.lit(SEPARATOR.join(self.names)), SEPARATOR)

    def encode(self, items: Column) -> Column:
        """array of item_ids -> sorted array of the frequent ones' codes (infrequent items dropped)."""
        if not self.names:
            return F.array().cast("array<int>")
        codes = F.map_from_arrays(self._names(), F.sequence(F.lit(0), F.lit(len(self.names) - 1)))
        return F.array_sort(F.filter(F.transform(items, lambda item: codes[item]), lambda c: c.isNotNull()))

    def decode(self, codes: Column) -> Column:
        """array of codes -> array of item_ids."""
        names = self._names()
        return F.transform(codes, lambda code: names[code])


def frequent_items(baskets: DataFrame, n_baskets: int, min_support: float, limit: int) -> FrequentItems:
    """Count every item of `baskets` (items: array of distinct items) in one aggregation; the names of the
    frequent ones only when they are at most `limit`."""
    m = min_count(min_support, n_baskets)
    counts = baskets.select(F.explode("items").alias("item")).groupBy("item").count()
    with _cached(counts.filter(F.col("count") >= m)) as frequent:
        n_frequent = frequent.count()
        if n_frequent > limit:
            return FrequentItems(n_baskets, m, n_frequent, ())
        rows = frequent.collect()
    ranked = sorted(rows, key=lambda row: (-row["count"], row["item"]))
    return FrequentItems(n_baskets, m, n_frequent, tuple(row["item"] for row in ranked))


def _histogram(frame: DataFrame, column: Column) -> dict[int, int]:
    # Baskets by a small integer (frequent items per basket, at most the largest basket's size).
    rows = frame.groupBy(column.alias("x")).count().collect()
    return {int(row["x"]): int(row["count"]) for row in rows}


def estimate_itemsets(
    baskets: DataFrame,
    n_baskets: int,
    min_support: float,
    limit: int,
    items: FrequentItems | None = None,
) -> ItemsetEstimate:
    """Bound the number of frequent itemsets of `baskets` (basket_id, items) at `min_support`; `items`:
    their frequent items when already counted (`frequent_items`)."""
    items = items or frequent_items(baskets, n_baskets, min_support, limit)
    m, n_frequent = items.min_count, items.count

    def estimate(bound: int, pairs: int | None = None) -> ItemsetEstimate:
        return ItemsetEstimate(n_baskets, m, n_frequent, pairs, bound, limit)

    if n_frequent > limit:
        return estimate(n_frequent)
    if items.codable:
        kept = baskets.select("basket_id", items.encode(F.col("items")).alias("items"))
    else:  # too many frequent items to code: keep the strings, joined with the frequent ones
        names = baskets.sparkSession.createDataFrame([(name,) for name in items.names], "item string")
        kept = (
            baskets.select("basket_id", F.explode("items").alias("item"))
            .join(F.broadcast(names), "item")
            .groupBy("basket_id")
            .agg(F.array_sort(F.collect_list("item")).alias("items"))
        )
    per_size = _histogram(kept, F.size("items"))
    per_size.pop(0, None)  # baskets without a frequent item hold no frequent itemset
    bound = level_bound(per_size, m, n_frequent, 1, limit)
    pair_rows = sum(n * math.comb(k, 2) for k, n in per_size.items())
    if bound <= limit or pair_rows > MAX_PAIR_ROWS:
        return estimate(bound)

    with ExitStack() as cached:
        pairs = kept.filter(F.size("items") >= 2).select(
            "basket_id", F.explode(_pairs(F.col("items"))).alias("pair")
        )
        frequent_pairs = cached.enter_context(
            _cached(pairs.groupBy("pair").count().filter(F.col("count") >= m).select("pair"))
        )
        n_pairs = frequent_pairs.count()
        if n_frequent + n_pairs > limit:
            return estimate(n_frequent + n_pairs, n_pairs)
        edges = pairs.join(frequent_pairs, "pair").groupBy("basket_id").count()
        # The smallest whole x with C(x, 2) >= edges: C(x, s) still bounds the basket's s-cliques.
        x = F.ceil((F.lit(1.0) + F.sqrt(F.lit(1.0) + F.col("count") * 8)) / 2).cast("int")
        higher = level_bound(_histogram(edges, x), m, n_frequent, 3, limit - n_frequent - n_pairs)
        return estimate(n_frequent + n_pairs + higher, n_pairs)


@contextmanager
def _cached(frame: DataFrame) -> Iterator[DataFrame]:
    """A small intermediate that is read twice (counted, then joined), cached for the block."""
    frame = frame.persist()
    try:
        yield frame
    finally:
        frame.unpersist()


def _pairs(items: Column) -> Column:
    """Every pair (a, b) with a before b in the array, as structs."""
    return F.flatten(
        F.transform(
            items,
            lambda a, i: F.transform(
                F.slice(items, i + 2, F.size(items)), lambda b: F.struct(a.alias("a"), b.alias("b"))
            ),
        )
    )


def guard_message(estimate: ItemsetEstimate, min_support: float) -> str:
    return (
        f"at min support {min_support:g}, {estimate.describe()} (limit rules.max_itemsets "
        f"{estimate.limit:,}); raise --min-support, or raise --max-itemsets if the machine can hold them"
    )


# ---- rules and cross-sell ------------------------------------------------------------------------


@dataclass(frozen=True)
class Mined:
    itemsets: int  # frequent itemsets FPGrowth found
    rules: DataFrame  # antecedent (sorted), consequent, support, confidence, lift


@contextmanager
def mine_rules(
    baskets: DataFrame,
    min_support: float,
    min_confidence: float,
    min_lift: float,
    items: FrequentItems | None = None,
) -> Iterator[Mined]:
    """FPGrowth (Spark MLlib) over `baskets` (items: array of distinct items); the rules are valid
    inside the block. `items`: the baskets' frequent items when already counted (the guard's), else
    counted here. FPGrowth runs over the frequent items' integer codes and the rules are decoded. The
    frequent itemsets are cached meanwhile: associationRules reads them twice (candidates, then their
    antecedents' counts), and each read would otherwise run FP-growth again."""
    from pyspark.ml.fpm import FPGrowth

    if items is None:
        items = frequent_items(baskets, baskets.count(), min_support, MAX_CODED_ITEMS)
    coded = items.codable
    data = baskets.select(items.encode(F.col("items")).alias("items")) if coded else baskets
    model = FPGrowth(itemsCol="items", minSupport=min_support, minConfidence=min_confidence).fit(data)
    itemsets = model.freqItemsets.persist()
    try:
        rules = model.associationRules
        if coded:
            rules = rules.select(
                items.decode(F.col("antecedent")).alias("antecedent"),
                items.decode(F.col("consequent")).alias("consequent"),
                "confidence",
                "lift",
                "support",
            )
        yield Mined(itemsets.count(), rules.transform(tidy_rules(min_lift)))
    finally:
        itemsets.unpersist()


def tidy_rules(min_lift: float) -> Callable[[DataFrame], DataFrame]:
    """FPGrowth's associationRules -> the rules with lift >= min_lift, antecedents sorted."""

    def transform(rules: DataFrame) -> DataFrame:
        return rules.filter(F.col("lift") >= min_lift).select(
            F.array_sort("antecedent").alias("antecedent"), "consequent", "support", "confidence", "lift"
        )

    return transform


def cross_sell(top_n: int) -> Callable[[DataFrame], DataFrame]:
    """rules -> (item_id, rank, recommended_item_id, confidence, lift, support): for each item, the top_n
    consequents of the rules whose antecedent is that item alone, by lift, confidence, then item_id."""
    order = Window.partitionBy("item_id").orderBy(
        F.col("lift").desc(), F.col("confidence").desc(), F.col("recommended_item_id")
    )

    def transform(rules: DataFrame) -> DataFrame:
        return (
            rules.filter(F.size("antecedent") == 1)
            .select(
                F.col("antecedent")[0].alias("item_id"),
                F.col("consequent")[0].alias("recommended_item_id"),
                "confidence",
                "lift",
                "support",
            )
            .withColumn("rank", F.row_number().over(order))
            .filter(F.col("rank") <= top_n)
            .select(*CROSS_SELL_COLUMNS)
        )

    return transform


def as_of(run_date: dt.date) -> Callable[[DataFrame], DataFrame]:
    return lambda frame: frame.withColumn("as_of_date", F.lit(run_date))

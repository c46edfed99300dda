"""ALS recommendations: the pure parts behind the recommend job (interactions, id mapping, held-out splits,
ranking metrics, tuning, scoring and the popularity fallbacks).

- Interactions: one row per (user, item) from the events of the lookback window, `strength` = the sum over
  the pair's events of the event type's weight (`event_weights`; a rating event's weight is multiplied by
  its rating when `rating_value` is set), each halved every `half_life_days` of age at the end of the run
  date; `log1p` of that sum when `strength` is log1p. Implicit ALS reads it as a confidence of
  1 + alpha x strength that the user prefers the item.
- Ids: ALS needs integer ids. `dense_index` numbers the distinct string ids 0..n-1 (a bijection: ids are
  counted, never hashed into a smaller space, so no collisions); the numbering is saved with the model and
  maps the factors back to string ids.
- Held-out splits: `random_holdout` puts a fixed share of each user's items, picked by a seeded hash of
  (user, item), in the held-out part; the time split holds out the (user, item) pairs first seen in the
  last `test_days` days and trains on the events before them.
- Metrics (`ranking_metrics`): Spark's RankingEvaluator, whose definitions are the standard ones (those of
  Microsoft Recommenders' python_evaluation): precision@k = hits in the top k / k; recall@k = hits /
  relevant items; nDCG@k with binary relevance, discount 1/log2(rank + 1) and the ideal DCG over
  min(k, relevant items); MAP@k = the sum of precision@i at each hit rank i <= k, / min(k, relevant items).
  Each is averaged over the users evaluated (users with a held-out item that the model knows). Coverage =
  distinct items in the evaluated top-k lists / distinct items in the training part.
- Candidates exclude the items a user already has in the training part (evaluation), or already bought
  (production: `exclude_event_types`), and items the catalogue marks inactive.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from pyspark.ml.evaluation import RankingEvaluator
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from marketlake.config import RecommendConfig
from marketlake.errors import UsageError
from marketlake.lake.files import Files, absolute

log = logging.getLogger("marketlake.recommend")

USER, ITEM = "user_id", "item_id"
USER_INDEX, ITEM_INDEX = "user_index", "item_index"
STRENGTH, SCORE, RANK, SOURCE = "strength", "score", "rank", "source"
ALS_SOURCE, SEGMENT_POPULAR, GLOBAL_POPULAR = "als", "segment_popular", "global_popular"
RANKING_METRICS = {
    "precision": "precisionAtK",
    "recall": "recallAtK",
    "ndcg": "ndcgAtK",
    "map": "meanAveragePrecisionAtK",
}
METRICS = [*RANKING_METRICS, "coverage"]
SCORE_DECIMALS = 6
MAX_INDEX = 2**31 - 1  # ALS ids are Java ints
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class AlsParams:
    rank: int
    reg_param: float
    alpha: float
    max_iter: int

    def describe(self) -> str:
        return f"rank={self.rank} reg={self.reg_param:g} alpha={self.alpha:g} iters={self.max_iter}"


def default_params(settings: RecommendConfig) -> AlsParams:
    return AlsParams(settings.rank, settings.reg_param, settings.alpha, settings.max_iter)


# ---- interactions ---------------------------------------------------------------------------------------


def event_weight(settings: RecommendConfig) -> Column:
    """The weight of one event: its type's weight (0 for types without one), times its rating for rating
    events when `rating_value` is set."""
    weight = F.lit(0.0)
    for event_type, value in sorted(settings.event_weights.items()):
        weight = F.when(F.col("event_type") == event_type, F.lit(float(value))).otherwise(weight)
    if settings.rating_value:
        weight = F.when(
            F.col("event_type") == "rating", weight * F.coalesce(F.col("rating"), F.lit(1.0))
        ).otherwise(weight)
    return weight


def decay(half_life_days: float | None, end: dt.date) -> Column:
    """0.5 ** (age in days at the end of `end`, UTC); 1 without a half-life. Later events are not decayed."""
    if half_life_days is None:
        return F.lit(1.0)
    end_ts = F.lit(dt.datetime.combine(end + dt.timedelta(days=1), dt.time()).replace(tzinfo=dt.timezone.utc))
    age_days = (F.unix_micros(end_ts) - F.unix_micros(F.col("event_ts"))) / (SECONDS_PER_DAY * 1e6)
    return F.pow(F.lit(0.5), F.greatest(age_days, F.lit(0.0)) / F.lit(float(half_life_days)))


def window_events(start: dt.date | None, end: dt.date) -> Callable[[DataFrame], DataFrame]:
    """Events whose event_date is in [start, end] (no lower bound without start), with a user and an item."""

    def transform(events: DataFrame) -> DataFrame:
        kept = events.filter(
            (F.col("event_date") <= F.lit(end)) & F.col(USER).isNotNull() & F.col(ITEM).isNotNull()
        )
        return kept if start is None else kept.filter(F.col("event_date") >= F.lit(start))

    return transform


def interactions(settings: RecommendConfig, end: dt.date) -> Callable[[DataFrame], DataFrame]:
    """Windowed events -> one row per (user_id, item_id) with a positive weight: strength, events, first_ts."""

    def transform(events: DataFrame) -> DataFrame:
        weighted = events.select(
            USER, ITEM, "event_ts", (event_weight(settings) * decay(settings.half_life_days, end)).alias("_w")
        )
        summed = (
            weighted.filter(F.col("_w") > 0)
            .groupBy(USER, ITEM)
            .agg(F.sum("_w").alias("_sum"), F.count("*").alias("events"), F.min("event_ts").alias("first_ts"))
        )
        strength = F.log1p(F.col("_sum")) if settings.strength == "log1p" else F.col("_sum")
        return summed.select(USER, ITEM, strength.alias(STRENGTH), "events", "first_ts")

    return transform


def lookback_start(run_date: dt.date, lookback_days: int | None) -> dt.date | None:
    return None if lookback_days is None else run_date - dt.timedelta(days=lookback_days - 1)


# ---- ids ------------------------------------------------------------------------------------------------


def dense_index(values: DataFrame, column: str, index_column: str, buckets: int) -> DataFrame:
    """The distinct non-null values of `column` numbered 0..n-1: (column, index_column int).

    Values fall into `buckets` buckets by a hash of the value; a value's number is the size of the buckets
    before its own plus its position in its bucket by value. Everything is a function of the values alone
    (not of how Spark partitions them), so the numbering is the same each time the plan runs; only the
    per-bucket counts reach the driver."""
    distinct = values.select(column).where(F.col(column).isNotNull()).distinct()
    bucketed = distinct.withColumn("_bucket", F.pmod(F.xxhash64(F.col(column)), F.lit(buckets)).cast("int"))
    counts: dict[int, int] = dict(bucketed.groupBy("_bucket").count().collect())  # one row per bucket
    total = sum(counts.values())
    if total > MAX_INDEX:
        raise UsageError(f"{total} distinct {column} values: more than ALS's integer ids can number")
    offsets, running = [], 0
    for bucket in range(buckets):
        offsets += [F.lit(bucket), F.lit(running)]
        running += counts.get(bucket, 0)
    offset = F.element_at(F.create_map(*offsets), F.col("_bucket"))
    position = F.row_number().over(Window.partitionBy("_bucket").orderBy(column)) - 1
    return bucketed.select(column, (offset + position).cast("int").alias(index_column))


def to_indexes(pairs: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    """(user_id, item_id, ...) -> (user_index, item_index, ...); pairs whose ids are not numbered are dropped."""
    return pairs.join(users, USER).join(items, ITEM).drop(USER, ITEM)


# ---- held-out splits ----------------------------------------------------------------------------------------


def random_holdout(
    fraction: float, seed: int, user: str = USER, item: str = ITEM
) -> Callable[[DataFrame], DataFrame]:
    """Adds `holdout`: round(fraction x n) of each user's n pairs, the first by a seeded hash of (user, item),
    at most n - 1 (every user keeps a pair to train on). The hash makes the split independent of row order."""

    def transform(pairs: DataFrame) -> DataFrame:
        by_user = Window.partitionBy(user)
        order = Window.partitionBy(user).orderBy(
            F.xxhash64(F.lit(seed), F.col(user), F.col(item)), F.col(item)
        )
        n = F.count("*").over(by_user)
        held = F.least(F.round(n * F.lit(fraction)), n - 1)
        return pairs.withColumn("holdout", F.row_number().over(order) <= held)

    return transform


@dataclass
class Split:
    """A training part and the held-out (user, item) pairs it is evaluated on, both by string ids."""

    kind: str
    train: DataFrame  # user_id, item_id, strength, ...
    test: DataFrame  # user_id, item_id


def split_random(pairs: DataFrame, fraction: float, seed: int) -> Split:
    marked = pairs.transform(random_holdout(fraction, seed))
    return Split(
        "random",
        marked.filter(~F.col("holdout")).drop("holdout"),
        marked.filter(F.col("holdout")).select(USER, ITEM),
    )


def split_time(events: DataFrame, settings: RecommendConfig, run_date: dt.date) -> Split:
    """Train on the window's events before the last `test_days` days; hold out the pairs first seen in
    them (items new to the user). Decay is measured from the day before the held-out days."""
    cutoff = run_date - dt.timedelta(days=settings.test_days)
    start = lookback_start(run_date, settings.lookback_days)
    weighted = settings.event_weights
    before = events.transform(window_events(start, cutoff))
    train = before.transform(interactions(settings, cutoff))
    later = events.transform(window_events(cutoff + dt.timedelta(days=1), run_date)).filter(
        F.col("event_type").isin([t for t, w in weighted.items() if w > 0])
    )
    test = later.select(USER, ITEM).distinct().join(train.select(USER, ITEM), [USER, ITEM], "left_anti")
    return Split("time", train, test)


# ---- ALS and top-k --------------------------------------------------------------------------------------------


def als(params: AlsParams, seed: int, blocks: int) -> ALS:
    return ALS(
        userCol=USER_INDEX,
        itemCol=ITEM_INDEX,
        ratingCol=STRENGTH,
        implicitPrefs=True,
        rank=params.rank,
        regParam=params.reg_param,
        alpha=params.alpha,
        maxIter=params.max_iter,
        seed=seed,
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        coldStartStrategy="drop",
    )


@contextmanager
def checkpoints(spark: SparkSession, directory: str, files: Files | None = None) -> Iterator[None]:
    """Points the SparkContext's checkpoint directory at `directory` (a folder every executor sees on a
    cluster: `lake.checkpoint_dir(run_id)`) and removes that directory at the end through `files` (the
    lake's), and its parent when that is left empty.

    ALS checkpoints its factors every 10 iterations, but only when a checkpoint directory is set; without
    one, the lineage of about 20 iterations overflows the stack when tasks are serialised
    (StackOverflowError). Wrap everything that uses the fitted models: their factors may be read back."""
    files = files or Files()
    directory = absolute(directory)
    spark.sparkContext.setCheckpointDir(directory)
    try:
        yield
    finally:
        files.delete(directory)
        parent = directory.rpartition("/")[0]
        if parent:
            files.delete_if_empty(parent)


def fit(train: DataFrame, params: AlsParams, seed: int, blocks: int) -> ALSModel:
    """Implicit ALS on (user_index, item_index, strength)."""
    return als(params, seed, blocks).fit(train.select(USER_INDEX, ITEM_INDEX, STRENGTH))


def most_excluded(exclude: DataFrame | None, user: str = USER_INDEX) -> int:
    """The largest number of excluded items of any one user (a small aggregate)."""
    if exclude is None:
        return 0
    row = exclude.groupBy(user).count().agg(F.max("count")).first()
    assert row is not None  # an aggregate over the whole frame has exactly one row
    return int(row[0] or 0)


def rank_within_user(n: int, user: str, order: list[Column]) -> Callable[[DataFrame], DataFrame]:
    """Keeps each user's first n rows by `order`, numbered 1..n in `rank`."""

    def transform(candidates: DataFrame) -> DataFrame:
        window = Window.partitionBy(user).orderBy(*order)
        return candidates.withColumn(RANK, F.row_number().over(window)).filter(F.col(RANK) <= n)

    return transform


def als_top(
    model: ALSModel,
    n: int,
    exclude: DataFrame | None = None,
    banned_items: DataFrame | None = None,
    users: DataFrame | None = None,
) -> DataFrame:
    """Each user's n best items by the model: (user_index, item_index, score, rank), scores rounded to
    SCORE_DECIMALS, ties by item. `exclude`: (user_index, item_index) pairs never recommended; `banned_items`:
    (item_index) never recommended; `users`: (user_index) to score (default: every user of the model).
    Scoring is Spark's blocked recommendForAllUsers, asked for enough candidates to survive the exclusions."""
    extra = most_excluded(exclude) + (banned_items.count() if banned_items is not None else 0)
    wanted = n + extra
    raw = model.recommendForAllUsers(wanted) if users is None else model.recommendForUserSubset(users, wanted)
    candidates = raw.select(USER_INDEX, F.explode("recommendations").alias("_r")).select(
        USER_INDEX,
        F.col(f"_r.{ITEM_INDEX}").alias(ITEM_INDEX),
        F.round(F.col("_r.rating").cast("double"), SCORE_DECIMALS).alias(SCORE),
    )
    if exclude is not None:
        candidates = candidates.join(
            exclude.select(USER_INDEX, ITEM_INDEX), [USER_INDEX, ITEM_INDEX], "left_anti"
        )
    if banned_items is not None:
        candidates = candidates.join(banned_items.select(ITEM_INDEX), ITEM_INDEX, "left_anti")
    return candidates.transform(rank_within_user(n, USER_INDEX, [F.desc(SCORE), F.col(ITEM_INDEX)]))


def item_popularity(pairs: DataFrame, item: str = ITEM, user: str = USER) -> DataFrame:
    """(item, users, strength): distinct users per item and their summed strength."""
    return pairs.groupBy(item).agg(
        F.countDistinct(user).alias("users"), F.sum(STRENGTH).alias("strength_sum")
    )


def popular_top(
    popularity: DataFrame,
    users: DataFrame,
    n: int,
    exclude: DataFrame | None = None,
    user: str = USER_INDEX,
    item: str = ITEM_INDEX,
) -> DataFrame:
    """Every user of `users` gets the n most popular items (most users, then strength, then item) that are
    not excluded for them: (user, item, score = users of the item, rank)."""
    wanted = n + most_excluded(exclude, user)
    listed = popularity.transform(most_popular(wanted, item))
    candidates = (
        users.select(user)
        .distinct()
        .crossJoin(
            F.broadcast(listed.select(item, F.col("users").cast("double").alias(SCORE), F.col("_order")))
        )
    )
    if exclude is not None:
        candidates = candidates.join(exclude.select(user, item), [user, item], "left_anti")
    return candidates.transform(rank_within_user(n, user, [F.col("_order")])).drop("_order")


def most_popular(n: int, item: str = ITEM) -> Callable[[DataFrame], DataFrame]:
    """(item, users, strength_sum) -> the n most popular items (most users, then strength, then item),
    numbered 1..n in `_order`.

    A sorted limit keeps each partition's n best and merges only those; the n survivors are numbered by
    one sorted array (a single-row aggregate). An unpartitioned row_number window would instead move every
    item to one partition (and log "No Partition Defined for Window operation")."""

    def transform(popularity: DataFrame) -> DataFrame:
        key = F.struct(-F.col("users"), -F.col("strength_sum"), F.col(item))  # ascending = most popular first
        top = popularity.select(key.alias("_key"), item, "users", "strength_sum").orderBy("_key").limit(n)
        numbered = top.agg(
            F.sort_array(F.collect_list(F.struct("_key", item, "users", "strength_sum"))).alias("_rows")
        )
        return numbered.select(F.posexplode("_rows").alias("_pos", "_row")).select(
            F.col(f"_row.{item}").alias(item),
            "_row.users",
            "_row.strength_sum",
            (F.col("_pos") + 1).alias("_order"),
        )

    return transform


# ---- metrics --------------------------------------------------------------------------------------------------


def ranking_frame(
    top: DataFrame, relevant: DataFrame, user: str = USER_INDEX, item: str = ITEM_INDEX
) -> DataFrame:
    """One row per user with a relevant item: `prediction` (the user's ranked items, possibly empty) and
    `label` (the relevant items), both array<double> as RankingEvaluator wants (ids must be numeric)."""
    predicted = (
        top.groupBy(user)
        .agg(F.sort_array(F.collect_list(F.struct(RANK, item))).alias("_ranked"))
        .select(user, F.col(f"_ranked.{item}").cast("array<double>").alias("prediction"))
    )
    labels = relevant.groupBy(user).agg(F.collect_set(F.col(item).cast("double")).alias("label"))
    return labels.join(predicted, user, "left").select(
        user, F.coalesce("prediction", F.array().cast("array<double>")).alias("prediction"), "label"
    )


def ranking_metrics(frame: DataFrame, k: int, metrics: list[str] | None = None) -> dict[str, float]:
    """Precision, recall, nDCG and MAP at k (Spark's RankingEvaluator) over the rows of `ranking_frame`."""
    names = metrics or list(RANKING_METRICS)
    evaluator = RankingEvaluator(predictionCol="prediction", labelCol="label", k=k)
    return {name: evaluator.evaluate(frame, {evaluator.metricName: RANKING_METRICS[name]}) for name in names}


@dataclass
class Evaluation:
    model: str
    metrics: dict[str, float]
    users: int
    k: int


def evaluate(
    name: str,
    top: DataFrame,
    relevant: DataFrame,
    k: int,
    catalogue_size: int,
    metrics: list[str] | None = None,
) -> Evaluation:
    """Metrics of `top` (user_index, item_index, rank) against `relevant` (user_index, item_index); coverage
    = distinct recommended items of the evaluated users / catalogue_size."""
    frame = ranking_frame(top, relevant).persist()
    try:
        users = frame.count()
        values = ranking_metrics(frame, k, metrics) if users else {}
        if metrics is None or "coverage" in metrics:
            shown = frame.select(F.explode(F.slice("prediction", 1, k)).alias("_i")).distinct().count()
            values["coverage"] = shown / catalogue_size if catalogue_size else 0.0
    finally:
        frame.unpersist()
    return Evaluation(name, values, users, k)


# ---- tuning ---------------------------------------------------------------------------------------------------


def search_space(settings: RecommendConfig) -> list[AlsParams]:
    """The candidates in the order they are tried: the configured params first, then every other
    combination of the search lists in a seeded random order (random search is the better use of a time
    budget than walking a grid in order)."""
    space = settings.search
    grid = [
        AlsParams(*combo)
        for combo in itertools.product(space.rank, space.reg_param, space.alpha, space.max_iter)
    ]
    first = default_params(settings)
    rest = sorted({p for p in grid if p != first}, key=lambda p: (p.rank, p.reg_param, p.alpha, p.max_iter))
    random.Random(settings.seed).shuffle(rest)
    return [first, *rest]


@dataclass
class Trial:
    params: AlsParams
    ndcg: float
    seconds: float


@dataclass(frozen=True)
class Search:
    """Where searched params come from: the search's run date, the interaction count it saw, the
    fingerprint of the settings it ran with, and (when reused) the model version whose ops.models row
    gave them."""

    params: AlsParams
    searched_on: dt.date
    interactions: int
    fingerprint: str
    reused_from: str | None = None


@dataclass
class Tuned:
    chosen: AlsParams
    trials: list[Trial] = field(default_factory=list)
    reason: str = ""  # why no search ran (configured params, or reused ones)
    users: int = 0  # validation users
    search: Search | None = None  # set when `chosen` came from a search, this run's or a reused one
    budget_seconds: float | None = None  # the search's budget in this run (None: no search ran)


def tune(
    train: DataFrame, settings: RecommendConfig, blocks: int, clock: Callable[[], float] = time.monotonic
) -> Tuned:
    """Random search over `search_space` scored by nDCG@k on a per-user random validation split of
    `train` (user_index, item_index, strength), within `tuning_budget_seconds` and `tuning_max_trials`: a
    trial starts only while the time spent plus the mean trial time fits the budget (the first
    `tuning_min_trials` always run). The best nDCG wins; on a tie, the earlier candidate. `train` should be persisted."""
    fallback = default_params(settings)
    if not settings.tune:
        return Tuned(fallback, reason="tuning is off (recommend.tune: false)")
    marked = train.transform(
        random_holdout(settings.validation_fraction, settings.seed + 1, USER_INDEX, ITEM_INDEX)
    ).persist()
    try:
        fitting = marked.filter(~F.col("holdout")).drop("holdout")
        validation = marked.filter(F.col("holdout")).select(USER_INDEX, ITEM_INDEX)
        users = validation.select(USER_INDEX).distinct().count()
        if users < settings.tuning_min_users:
            reason = (
                f"{users} validation users, fewer than recommend.tuning_min_users={settings.tuning_min_users}"
            )
            return Tuned(fallback, reason=reason, users=users)
        trials: list[Trial] = []
        started = clock()
        for params in search_space(settings)[: settings.tuning_max_trials]:
            spent = clock() - started
            over_budget = spent + spent / max(len(trials), 1) > settings.tuning_budget_seconds
            if len(trials) >= settings.tuning_min_trials and over_budget:
                break
            trial_started = clock()
            model = fit(fitting, params, settings.seed, blocks)
            top = als_top(model, settings.k, exclude=fitting)
            ndcg = evaluate("als", top, validation, settings.k, 1, metrics=["ndcg"]).metrics["ndcg"]
            trials.append(Trial(params, ndcg, clock() - trial_started))
            log.info(
                "recommend | trial %d %s | validation ndcg@%d=%.4f %.1fs",
                len(trials),
                params.describe(),
                settings.k,
                ndcg,
                trials[-1].seconds,
            )
        best = max(trials, key=lambda t: (round(t.ndcg, 9), -trials.index(t)))
        return Tuned(best.params, trials, users=users)
    finally:
        marked.unpersist()


# ---- reusing a search ---------------------------------------------------------------------------------------

# The settings a search's outcome depends on: a change to any of them makes the next run search again.
SEARCH_SETTINGS = (
    "event_weights",
    "rating_value",
    "half_life_days",
    "strength",
    "lookback_days",
    "rank",
    "reg_param",
    "alpha",
    "max_iter",
    "seed",
    "search",
    "tuning_max_trials",
    "tuning_min_trials",
    "validation_fraction",
    "tuning_min_users",
    "evaluate",
    "split",
    "test_fraction",
    "test_days",
    "k",
)


def search_fingerprint(settings: RecommendConfig) -> str:
    """The first 12 hex digits of SHA-256 over the SEARCH_SETTINGS as sorted JSON."""
    values = settings.model_dump(include=set(SEARCH_SETTINGS))
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def tuning_budget(settings: RecommendConfig, interactions: int) -> float:
    """The search's seconds: tuning_budget_seconds_per_million per million interactions, at least
    tuning_budget_min_seconds, at most tuning_budget_seconds (the cap wins over the floor)."""
    scaled = settings.tuning_budget_seconds_per_million * interactions / 1e6
    return min(settings.tuning_budget_seconds, max(settings.tuning_budget_min_seconds, scaled))


def interactions_change(before: int, now: int) -> float:
    """The relative change of the interaction count since a search (inf from none)."""
    return (now - before) / before if before else math.inf


def retune_reason(
    past: Search | None, run_date: dt.date, interactions: int, settings: RecommendConfig
) -> str | None:
    """Why this run searches again, or None when `past`'s params are reused: no earlier search, `retune`,
    other tuning settings, a search older than retune_days, or an interaction count that moved by more
    than retune_change."""
    if settings.retune:
        return "asked for (--retune)"
    if past is None:
        return "no earlier search in ops.models"
    if past.fingerprint != search_fingerprint(settings):
        return f"the tuning settings changed since the search of {past.searched_on}"
    age = (run_date - past.searched_on).days
    if age > settings.retune_days:
        return f"the search of {past.searched_on} is {age} days old, more than recommend.retune_days={settings.retune_days}"
    change = interactions_change(past.interactions, interactions)
    if abs(change) > settings.retune_change:
        return (
            f"{interactions:,} interactions, {change:+.1%} since the search of {past.searched_on} "
            f"({past.interactions:,}), more than recommend.retune_change={settings.retune_change:g}"
        )
    return None


def reuse_note(past: Search, run_date: dt.date, interactions: int, settings: RecommendConfig) -> str:
    change = interactions_change(past.interactions, interactions)
    return (
        f"reused from the search of {past.searched_on} (model {past.reused_from}): "
        f"age {(run_date - past.searched_on).days} days (limit {settings.retune_days}), "
        f"interactions {change:+.1%} (limit {settings.retune_change:.0%})"
    )


def params_record(params: AlsParams) -> dict[str, float]:
    return {k: float(v) for k, v in asdict(params).items()}


# ---- production recommendations ------------------------------------------------------------------------------------


def segment_popular(pairs: DataFrame, segments: DataFrame, n: int) -> DataFrame:
    """Per segment its n items with the most distinct users of the segment: (segment_id, item_id, score =
    share of the segment's users with the item, order)."""
    members = pairs.join(segments.select(USER, "segment_id"), USER)
    sizes = segments.groupBy("segment_id").agg(F.countDistinct(USER).alias("_size"))
    counts = members.groupBy("segment_id", ITEM).agg(
        F.countDistinct(USER).alias("users"), F.sum(STRENGTH).alias("strength_sum")
    )
    return (
        counts.transform(
            rank_within_user(n, "segment_id", [F.desc("users"), F.desc("strength_sum"), F.col(ITEM)])
        )
        .join(sizes, "segment_id")
        .select(
            "segment_id",
            ITEM,
            F.round(F.col("users") / F.col("_size"), SCORE_DECIMALS).alias(SCORE),
            F.col(RANK).alias("_order"),
        )
    )


def global_popular(pairs: DataFrame, n: int) -> DataFrame:
    """The n items with the most distinct users: (item_id, score = share of users with the item, order)."""
    total = F.lit(pairs.select(USER).distinct().count())
    return (
        item_popularity(pairs)
        .transform(most_popular(n))
        .select(ITEM, F.round(F.col("users") / total, SCORE_DECIMALS).alias(SCORE), "_order")
    )


def fallback_candidates(
    audience: DataFrame, global_list: DataFrame, segment_lists: DataFrame | None, segments: DataFrame | None
) -> DataFrame:
    """(user_id, item_id, score, source, _priority, _order): each user's segment list (priority 1) when the
    user has a segment, and the global list (priority 2) for everyone."""
    everyone = audience.crossJoin(F.broadcast(global_list)).select(
        USER, ITEM, SCORE, F.lit(GLOBAL_POPULAR).alias(SOURCE), F.lit(2).alias("_priority"), "_order"
    )
    if segment_lists is None or segments is None:
        return everyone
    by_segment = (
        audience.join(segments.select(USER, "segment_id"), USER)
        .join(F.broadcast(segment_lists), "segment_id")
        .select(
            USER, ITEM, SCORE, F.lit(SEGMENT_POPULAR).alias(SOURCE), F.lit(1).alias("_priority"), "_order"
        )
    )
    return by_segment.unionByName(everyone)


def assemble(
    als_candidates: DataFrame | None,
    fallbacks: DataFrame,
    exclude: DataFrame,
    inactive: DataFrame | None,
    n: int,
    version: str | None,
    run_date: dt.date,
) -> DataFrame:
    """gold.user_recommendations rows: per user its ALS candidates first (by score), then its fallbacks
    (segment before global, by popularity), without excluded pairs, inactive items or repeated items; the
    first n, ranked 1..n."""
    candidates = fallbacks
    if als_candidates is not None:
        ranked = als_candidates.select(
            USER,
            ITEM,
            SCORE,
            F.lit(ALS_SOURCE).alias(SOURCE),
            F.lit(0).alias("_priority"),
            F.col(RANK).cast("long").alias("_order"),
        )
        candidates = ranked.unionByName(candidates.withColumn("_order", F.col("_order").cast("long")))
    candidates = candidates.join(exclude.select(USER, ITEM), [USER, ITEM], "left_anti")
    if inactive is not None:
        candidates = candidates.join(F.broadcast(inactive.select(ITEM)), ITEM, "left_anti")
    best_first = [F.col("_priority"), F.col("_order"), F.col(ITEM)]
    unique = candidates.transform(_first_per_pair(best_first))
    return unique.transform(rank_within_user(n, USER, best_first)).select(
        USER,
        F.col(RANK).cast("int").alias(RANK),
        ITEM,
        F.col(SCORE).cast("double").alias(SCORE),
        SOURCE,
        F.lit(version).cast("string").alias("model_version"),
        F.lit(run_date).alias("as_of_date"),
    )


def _first_per_pair(ordering: list[Column]) -> Callable[[DataFrame], DataFrame]:
    def transform(candidates: DataFrame) -> DataFrame:
        window = Window.partitionBy(USER, ITEM).orderBy(*ordering)
        return candidates.withColumn("_n", F.row_number().over(window)).filter(F.col("_n") == 1).drop("_n")

    return transform


# ---- the saved recommender ------------------------------------------------------------------------------------------


def save_recommender(model: ALSModel, users: DataFrame, items: DataFrame, path: str) -> None:
    """The ALS model at <path>/als and its id numbering at <path>/user_ids and <path>/item_ids (Parquet)."""
    model.write().overwrite().save(f"{path}/als")
    users.write.mode("overwrite").parquet(f"{path}/user_ids")
    items.write.mode("overwrite").parquet(f"{path}/item_ids")


@dataclass
class Recommender:
    model: ALSModel
    users: DataFrame  # user_id, user_index
    items: DataFrame  # item_id, item_index

    def top(self, n: int, exclude: DataFrame | None = None, banned: DataFrame | None = None) -> DataFrame:
        """(user_id, item_id, score, rank) for every user of the model; exclude: (user_id, item_id) pairs,
        banned: (item_id)."""
        excluded = to_indexes(exclude, self.users, self.items) if exclude is not None else None
        banned_items = banned.join(self.items, ITEM).select(ITEM_INDEX) if banned is not None else None
        top = als_top(self.model, n, excluded, banned_items)
        return top.join(self.users, USER_INDEX).join(self.items, ITEM_INDEX).select(USER, ITEM, SCORE, RANK)


def load_recommender(spark: SparkSession, path: str) -> Recommender:
    return Recommender(
        ALSModel.load(f"{path}/als"),
        spark.read.parquet(f"{path}/user_ids"),
        spark.read.parquet(f"{path}/item_ids"),
    )

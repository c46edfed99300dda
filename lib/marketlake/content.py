"""Item content features and gold.similar_items (issue 17).

- Content features (`item_content_model`, `item_vectors`): one Spark MLlib pipeline over silver.items.
  Title words (and `tags` when the frame has them) go through a tokenizer, stop words, CountVectorizer and
  IDF; category and brand through StringIndexer and OneHotEncoder; price through QuantileDiscretizer and
  OneHotEncoder. Each block is scaled to unit length times sqrt(its weight), the blocks are assembled and
  the whole vector is L2-normalised, so with every block present the cosine of two items is the weighted
  mean of the blocks' own cosines (`recommend.content.*_weight`): with category weight 1 and the others
  0.5 or less, "same category" matters most. Items without a category (or brand, or price) share one
  "unknown" slot of that block.
- Similar items: for every pair of active items, content = the cosine of their item vectors; where both
  have ALS item factors, collaborative = the cosine of the factors, and the hybrid score is
  w x collaborative + (1 - w) x content with w = collaborative_weight x min(conf(a), conf(b)),
  conf = users / (users + shrinkage_users): an item seen by few users leans on its content. Either item
  without history: content alone. The score is symmetric in a and b. Each item gets its top_n by that
  score (ties by similar_item_id), never itself, and only pairs with a positive score.
- Exact or approximate: up to `exact_max_items` active items every pair is scored, blocked (items hashed
  into blocks of about `block_size`; each pair of blocks is one matrix product in a pandas function,
  since Spark has no built-in dot product of two vectors). Above, only pairs of the same category are
  scored that way, plus (when `lsh_hash_tables` > 0) the pairs of different categories that MLlib's
  BucketedRandomProjectionLSH finds on the ALS factors, scored by the same formula. LSH on the content
  vectors was measured and left out: its near and far pairs collide at too similar rates.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyspark.ml import Pipeline, PipelineModel, Transformer
from pyspark.ml.feature import (
    IDF,
    BucketedRandomProjectionLSH,
    CountVectorizer,
    CountVectorizerModel,
    ElementwiseProduct,
    Normalizer,
    OneHotEncoder,
    OneHotEncoderModel,
    QuantileDiscretizer,
    RegexTokenizer,
    SQLTransformer,
    StopWordsRemover,
    StringIndexer,
    VectorAssembler,
)
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import Vectors
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from scipy import sparse

from marketlake import catalog
from marketlake.config import ContentConfig
from marketlake.models import model_version, record_model, save_model

if TYPE_CHECKING:
    from marketlake.runner import JobContext

ITEM, SIMILAR, SCORE, RANK, SOURCE = "item_id", "similar_item_id", "score", "rank", "source"
FEATURES, FACTORS, USERS, CATEGORY = "features", "factors", "users", "category"
CONTENT, COLLABORATIVE, HYBRID = "content", "collaborative", "hybrid"
SOURCES = (CONTENT, COLLABORATIVE, HYBRID)  # codes 0, 1, 2 in the numpy core
SCORE_DECIMALS = 6
TAGS = "tags"

# Block columns of the pipeline, in the order they are assembled.
TITLE_VEC, CATEGORY_VEC, BRAND_VEC, PRICE_VEC = "_title_vec", "_category_vec", "_brand_vec", "_price_vec"
BLOCKS = (TITLE_VEC, CATEGORY_VEC, BRAND_VEC, PRICE_VEC)


# ---- content features -----------------------------------------------------------------------------------


def item_content_model(items: DataFrame, settings: ContentConfig) -> PipelineModel:
    """silver.items-shaped frame (item_id, title, category, brand, price, optional `tags`: array<string>)
    -> a fitted PipelineModel whose output column `features` is each item's unit-length content vector."""
    words = "concat(_title_words, coalesce(transform(tags, t -> lower(t)), array()))"
    # QuantileDiscretizer cannot fit on no value at all (a catalogue without prices, such as MovieLens):
    # then every item gets the same price, one bucket that tells no item apart.
    priced = items.filter(F.col("price").isNotNull()).limit(1).count() > 0
    price = "cast(price AS double)" if priced else "0.0"
    fitted = Pipeline(
        stages=[
            SQLTransformer(
                statement="SELECT *, coalesce(title, '') AS _title_text, "
                "cast(category AS string) AS _category, cast(brand AS string) AS _brand, "
                f"{price} AS _price FROM __THIS__"
            ),
            RegexTokenizer(inputCol="_title_text", outputCol="_title_tokens", pattern=r"[^\p{L}\p{N}]+"),
            StopWordsRemover(inputCol="_title_tokens", outputCol="_title_words"),
            SQLTransformer(
                statement=f"SELECT *, {words if TAGS in items.columns else '_title_words'} AS _words "
                "FROM __THIS__"
            ),
            CountVectorizer(
                inputCol="_words",
                outputCol="_counts",
                vocabSize=settings.vocabulary_size,
                minDF=float(settings.min_document_frequency),
            ),
            IDF(inputCol="_counts", outputCol="_tfidf"),
            Normalizer(inputCol="_tfidf", outputCol=TITLE_VEC, p=2.0),
            StringIndexer(
                inputCols=["_category", "_brand"],
                outputCols=["_category_index", "_brand_index"],
                handleInvalid="keep",
                stringOrderType="alphabetAsc",
            ),
            QuantileDiscretizer(
                inputCol="_price",
                outputCol="_price_bucket",
                numBuckets=settings.price_buckets,
                handleInvalid="keep",
                relativeError=0.0,
            ),
            OneHotEncoder(
                inputCols=["_category_index", "_brand_index", "_price_bucket"],
                outputCols=[CATEGORY_VEC, BRAND_VEC, PRICE_VEC],
                handleInvalid="keep",
                dropLast=False,
            ),
        ]
    ).fit(items)
    sizes = block_sizes(fitted)
    weights = (
        settings.title_weight,
        settings.category_weight,
        settings.brand_weight,
        settings.price_weight,
    )
    scaling = np.concatenate([np.full(size, np.sqrt(w)) for size, w in zip(sizes, weights, strict=True)])
    finish: list[Transformer] = [
        VectorAssembler(inputCols=list(BLOCKS), outputCol="_assembled", handleInvalid="keep"),
        ElementwiseProduct(inputCol="_assembled", outputCol="_weighted", scalingVec=Vectors.dense(scaling)),
        Normalizer(inputCol="_weighted", outputCol=FEATURES, p=2.0),
    ]
    return PipelineModel(stages=[*fitted.stages, *finish])


def block_sizes(fitted: PipelineModel) -> tuple[int, int, int, int]:
    """The lengths of the title, category, brand and price blocks of a fitted pipeline."""
    vocabulary = next(s for s in fitted.stages if isinstance(s, CountVectorizerModel)).vocabulary
    encoder = next(s for s in fitted.stages if isinstance(s, OneHotEncoderModel))
    category, brand, price = encoder.categorySizes  # dropLast=False: every index has its slot
    # handleInvalid=keep adds one slot per column for values the fit did not see.
    return len(vocabulary), category + 1, brand + 1, price + 1


def item_vectors(model: PipelineModel, items: DataFrame) -> DataFrame:
    """(item_id, features: unit-length ml Vector): one row per item of `items`."""
    return model.transform(items).select(ITEM, FEATURES)


def vocabulary(model: PipelineModel) -> list[str]:
    return list(next(s for s in model.stages if isinstance(s, CountVectorizerModel)).vocabulary)


# ---- the items to compare -----------------------------------------------------------------------------------


def active_items(items: DataFrame) -> DataFrame:
    """The items that may be listed: those not marked inactive (a null `active` counts as active)."""
    return items.filter(F.coalesce(F.col("active"), F.lit(True)))


def item_factors(model: ALSModel, item_ids: DataFrame, index_column: str = "item_index") -> DataFrame:
    """ALS item factors by string id: (item_id, factors array<double>); `item_ids`: (item_id, item_index)."""
    factors = model.itemFactors.select(
        F.col("id").alias(index_column), F.col("features").cast("array<double>").alias(FACTORS)
    )
    return item_ids.join(factors, index_column).select(ITEM, FACTORS)


def item_users(pairs: DataFrame, user: str = "user_id") -> DataFrame:
    """(item_id, users): distinct users per item in the interactions."""
    return pairs.groupBy(ITEM).agg(F.countDistinct(user).alias(USERS))


def comparison_frame(
    vectors: DataFrame,
    factors: DataFrame | None,
    users: DataFrame | None,
    categories: DataFrame | None = None,
) -> DataFrame:
    """(item_id, features, factors or null, users, category): one row per item of `vectors` (the active
    items); `categories`: (item_id, category), a missing category is ""."""
    frame = vectors
    if factors is not None:
        frame = frame.join(factors, ITEM, "left")
    else:
        frame = frame.withColumn(FACTORS, F.lit(None).cast("array<double>"))
    if users is not None:
        frame = frame.join(users, ITEM, "left")
    else:
        frame = frame.withColumn(USERS, F.lit(None).cast("bigint"))
    if categories is not None:
        frame = frame.join(categories.select(ITEM, CATEGORY), ITEM, "left")
    else:
        frame = frame.withColumn(CATEGORY, F.lit(None).cast("string"))
    return frame.select(
        ITEM,
        FEATURES,
        FACTORS,
        F.coalesce(F.col(USERS), F.lit(0)).cast("bigint").alias(USERS),
        F.coalesce(F.col(CATEGORY).cast("string"), F.lit("")).alias(CATEGORY),
    )


# ---- the numpy core: one formula for the exact and the approximate path ---------------------------------------


@dataclass(frozen=True)
class Blend:
    weight: float  # collaborative_weight
    shrinkage: float  # shrinkage_users

    @classmethod
    def of(cls, settings: ContentConfig) -> Blend:
        return cls(settings.collaborative_weight, settings.shrinkage_users)


@dataclass
class Matrices:
    """Rows of the comparison frame as arrays: ids, unit content vectors (CSR), unit factors (zeros where
    none), and each item's collaborative confidence (0 without factors)."""

    ids: np.ndarray
    content: sparse.csr_matrix
    factors: np.ndarray
    confidence: np.ndarray

    @classmethod
    def of(cls, rows: pd.DataFrame, dimensions: int, blend: Blend) -> Matrices:
        content = content_matrix(rows[FEATURES], dimensions)
        given = list(rows[FACTORS])  # arrays, None for items without history
        rank = max((len(f) for f in given if f is not None), default=0)
        factors = np.zeros((len(given), rank))
        for row, f in enumerate(given):
            if f is not None and len(f):
                factors[row] = f
        norms = np.linalg.norm(factors, axis=1)
        warm = norms > 0
        factors[warm] /= norms[warm, None]
        users = rows[USERS].to_numpy(dtype=float)
        confidence = np.where(warm, users / (users + blend.shrinkage) if blend.shrinkage else 1.0, 0.0)
        return cls(rows[ITEM].to_numpy(dtype=object), content, factors, confidence * blend.weight)


def content_matrix(vectors: pd.Series, dimensions: int) -> sparse.csr_matrix:
    """ml Vectors as pandas hands them over (dicts: type 0 sparse with indices, 1 dense) -> CSR rows."""
    indptr, indices, values = [0], [], []
    for vector in vectors:
        if vector["type"] == 0:
            idx, val = np.asarray(vector["indices"]), np.asarray(vector["values"], dtype=float)
        else:
            dense = np.asarray(vector["values"], dtype=float)
            idx = np.flatnonzero(dense)
            val = dense[idx]
        indices.append(idx)
        values.append(val)
        indptr.append(indptr[-1] + len(idx))
    return sparse.csr_matrix(
        (
            np.concatenate(values) if values else np.zeros(0),
            np.concatenate(indices) if indices else np.zeros(0, dtype=int),
            np.asarray(indptr),
        ),
        shape=(len(indptr) - 1, dimensions),
    )


def blend_scores(
    content: np.ndarray, collaborative: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Hybrid scores (rounded) and source codes from same-shaped content cosines, factor cosines and
    per-pair collaborative weights."""
    score = np.round(weight * collaborative + (1.0 - weight) * content, SCORE_DECIMALS)
    source = np.where(weight <= 0, 0, np.where(weight >= 1, 1, 2))
    return score, source


def top_rows(
    ids: np.ndarray, others: np.ndarray, score: np.ndarray, source: np.ndarray, n: int
) -> pd.DataFrame:
    """Each row's n best columns by score (ties: the column order, which is by id), positive scores only:
    (item_id, similar_item_id, score, source)."""
    empty: pd.DataFrame = pd.DataFrame({ITEM: [], SIMILAR: [], SCORE: [], SOURCE: []})
    if score.size == 0:
        return empty
    keep = min(n, score.shape[1])
    order = np.argsort(-score, axis=1, kind="stable")[:, :keep]
    rows = np.repeat(np.arange(score.shape[0]), keep)
    columns = order.ravel()
    picked = score[rows, columns]
    positive = picked > 0
    top: pd.DataFrame = pd.DataFrame(
        {
            ITEM: ids[rows[positive]],
            SIMILAR: others[columns[positive]],
            SCORE: picked[positive],
            SOURCE: np.asarray(SOURCES, dtype=object)[source[rows, columns][positive]],
        }
    )
    return top


OUTPUT_SCHEMA = f"{ITEM} string, {SIMILAR} string, {SCORE} double, {SOURCE} string"


def block_pair_top(dimensions: int, blend: Blend, n: int) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """A pandas function over the rows of two blocks (`_block`, `_lo`, `_hi`): every item's n best
    look-alikes in the other block (in its own block when lo = hi), scored by the blend."""

    def score_pair(rows: pd.DataFrame) -> pd.DataFrame:
        lo, hi = int(rows["_lo"].iloc[0]), int(rows["_hi"].iloc[0])
        left = Matrices.of(rows[rows["_block"] == lo].sort_values(ITEM), dimensions, blend)
        right = (
            left if lo == hi else Matrices.of(rows[rows["_block"] == hi].sort_values(ITEM), dimensions, blend)
        )
        content = (left.content @ right.content.T).toarray()
        collaborative = (
            left.factors @ right.factors.T if left.factors.shape[1] == right.factors.shape[1] else 0.0
        )
        weight = np.minimum(left.confidence[:, None], right.confidence[None, :])
        score, source = blend_scores(content, np.broadcast_to(collaborative, content.shape), weight)
        if lo == hi:
            score = (score + score.T) / 2  # the same bits for (a, b) and (b, a)
            np.fill_diagonal(score, -np.inf)  # never the item itself
            return top_rows(left.ids, left.ids, score, source, n)
        return pd.concat(
            [
                top_rows(left.ids, right.ids, score, source, n),
                top_rows(right.ids, left.ids, score.T, source.T, n),
            ],
            ignore_index=True,
        )

    return score_pair


def pair_scores(dimensions: int, blend: Blend) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A pandas function over candidate pairs (the a_* and b_* columns of two items) -> both directions
    (item_id, similar_item_id, score, source), scored by the blend."""

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            a = Matrices.of(_side(batch, "a_"), dimensions, blend)
            b = Matrices.of(_side(batch, "b_"), dimensions, blend)
            content = np.asarray(a.content.multiply(b.content).sum(axis=1)).ravel()
            if a.factors.shape[1] == b.factors.shape[1]:
                collaborative = np.einsum("ij,ij->i", a.factors, b.factors)
            else:  # one side has no factors at all in this batch
                collaborative = np.zeros(len(batch))
            values, source = blend_scores(content, collaborative, np.minimum(a.confidence, b.confidence))
            labels = np.asarray(SOURCES, dtype=object)[source]
            one_way = pd.DataFrame({ITEM: a.ids, SIMILAR: b.ids, SCORE: values, SOURCE: labels})
            other_way = pd.DataFrame({ITEM: b.ids, SIMILAR: a.ids, SCORE: values, SOURCE: labels})
            both = pd.concat([one_way, other_way], ignore_index=True)
            yield both[both[SCORE] > 0]

    return score


def _side(batch: pd.DataFrame, prefix: str) -> pd.DataFrame:
    side: pd.DataFrame = batch[[f"{prefix}{c}" for c in (ITEM, FEATURES, FACTORS, USERS)]]
    renamed: pd.DataFrame = side.set_axis([ITEM, FEATURES, FACTORS, USERS], axis=1)
    return renamed


# ---- exact and approximate top-N ---------------------------------------------------------------------------------


def dimensions_of(frame: DataFrame) -> int:
    """The length of the content vectors (one row read)."""
    first = frame.select(FEATURES).first()
    return 0 if first is None else len(first[0])


def exact_candidates(
    frame: DataFrame, settings: ContentConfig, items: int, dimensions: int, within_category: bool = False
) -> DataFrame:
    """Every pair of items of the comparison frame scored (only pairs of the same category when
    `within_category`); per item its top_n within each pair of blocks.

    Items are hashed into ceil(items / block_size) blocks (per category: ceil(its items / block_size));
    each item row is copied to every pair of blocks its block belongs to, and each pair of blocks is one
    group of a pandas function (two matrix products)."""
    if within_category:
        sizes: dict[str, int] = dict(frame.groupBy(CATEGORY).count().collect())  # one row per category
        group = F.col(CATEGORY)
        per_group = {c: max(1, -(-int(n) // settings.block_size)) for c, n in sorted(sizes.items())}
        pairs = [F.lit(x) for c, b in per_group.items() for x in (c, b)]
        blocks = F.element_at(F.create_map(*pairs), group) if pairs else F.lit(1)
    else:
        group, blocks = F.lit(""), F.lit(max(1, -(-items // settings.block_size)))
    block = F.pmod(F.xxhash64(F.lit(settings.seed), F.col(ITEM)), blocks).cast("int")
    copies = (
        frame.withColumn("_group", group)
        .withColumn("_block", block)
        .withColumn("_other", F.explode(F.sequence(F.lit(0), blocks - 1)))
        .withColumn("_lo", F.least("_block", "_other"))
        .withColumn("_hi", F.greatest("_block", "_other"))
        .drop("_other")
    )
    scorer = block_pair_top(dimensions, Blend.of(settings), settings.top_n)
    return copies.groupBy("_group", "_lo", "_hi").applyInPandas(scorer, OUTPUT_SCHEMA)


def lsh_pairs(frame: DataFrame, column: str, settings: ContentConfig) -> DataFrame:
    """(a, b) with a < b: pairs of unit vectors that share all `lsh_hashes_per_table` bucket numbers of at
    least one of `lsh_hash_tables` tables of MLlib's BucketedRandomProjectionLSH.

    approxSimilarityJoin is one projection per table (OR only), which makes nearly every pair a candidate
    (measured, docs/jobs/similar-items.md); several projections per table (AND) drop most far pairs. The bucket length is `lsh_bucket_width` / sqrt(dimensions): a projection of a unit vector
    on a random unit direction spreads about 1 / sqrt(dimensions)."""
    tables, per_table = settings.lsh_hash_tables, settings.lsh_hashes_per_table
    first = frame.select(column).first()
    dimensions = len(first[0]) if first is not None else 1
    lsh = BucketedRandomProjectionLSH(
        inputCol=column,
        outputCol="_hashes",
        bucketLength=settings.lsh_bucket_width / np.sqrt(max(dimensions, 1)),
        numHashTables=tables * per_table,
        seed=settings.seed,
    )
    hashed = (
        lsh.fit(frame)
        .transform(frame)
        .select(ITEM, F.transform("_hashes", lambda h: vector_to_array(h)[0]).alias("_h"))
    )
    keys = hashed.select(
        ITEM,
        F.explode(
            F.array(
                *[
                    F.struct(F.lit(t).alias("t"), F.slice("_h", t * per_table + 1, per_table).alias("h"))
                    for t in range(tables)
                ]
            )
        ).alias("_key"),
    )
    left, right = keys.withColumnRenamed(ITEM, "a"), keys.withColumnRenamed(ITEM, "b")
    return left.join(right, "_key").filter(F.col("a") < F.col("b")).select("a", "b").distinct()


def approximate_candidates(frame: DataFrame, settings: ContentConfig, dimensions: int) -> DataFrame:
    """Every pair of the same category scored exactly (blocked as in the exact path), plus the pairs of
    different categories that LSH on the ALS factors finds (collaborative look-alikes across categories),
    scored by the same formula."""
    same_category = exact_candidates(frame, settings, 0, dimensions, within_category=True)
    warm = frame.filter(F.col(FACTORS).isNotNull()).select(
        ITEM, array_to_vector(F.col(FACTORS)).alias("_raw")
    )
    if settings.lsh_hash_tables == 0 or settings.collaborative_weight == 0 or not warm.limit(1).count():
        return same_category
    unit = Normalizer(inputCol="_raw", outputCol="_unit", p=2.0).transform(warm).select(ITEM, "_unit")
    sides = [frame.select(*[F.col(c).alias(f"{p}{c}") for c in frame.columns]) for p in ("a_", "b_")]
    across = (
        lsh_pairs(unit, "_unit", settings)
        .join(sides[0], F.col("a") == F.col(f"a_{ITEM}"))
        .join(sides[1], F.col("b") == F.col(f"b_{ITEM}"))
        .filter(F.col(f"a_{CATEGORY}") != F.col(f"b_{CATEGORY}"))
        .drop("a", "b")
    )
    return same_category.unionByName(
        across.mapInPandas(pair_scores(dimensions, Blend.of(settings)), OUTPUT_SCHEMA)
    )


def rank_similar(candidates: DataFrame, n: int) -> DataFrame:
    """Each item's n best candidates (score desc, then similar_item_id), one row per look-alike, ranked."""
    unique = candidates.dropDuplicates([ITEM, SIMILAR])
    window = Window.partitionBy(ITEM).orderBy(F.desc(SCORE), F.col(SIMILAR))
    return unique.withColumn(RANK, F.row_number().over(window)).filter(F.col(RANK) <= n)


def similar_items(
    frame: DataFrame,
    settings: ContentConfig,
    version: str,
    run_date: dt.date,
    method: str,
    items: int,
    dimensions: int,
) -> DataFrame:
    """gold.similar_items rows from a comparison frame (`method`: exact or lsh)."""
    candidates = (
        exact_candidates(frame, settings, items, dimensions)
        if method == "exact"
        else approximate_candidates(frame, settings, dimensions)
    )
    return rank_similar(candidates, settings.top_n).select(
        ITEM,
        F.col(RANK).cast("int").alias(RANK),
        SIMILAR,
        F.col(SCORE).cast("double").alias(SCORE),
        SOURCE,
        F.lit(version).cast("string").alias("model_version"),
        F.lit(run_date).alias("as_of_date"),
    )


def method_for(items: int, settings: ContentConfig) -> str:
    return "exact" if items <= settings.exact_max_items else "lsh"


def content_params(settings: ContentConfig, columns: list[str], als_version: str | None) -> dict[str, Any]:
    """What determines the content model and the similar-items lists (their version is a hash of these)."""
    return {
        "model": "item-content",
        **settings.model_dump(),
        "tags": TAGS in columns,
        "als_model_version": als_version,
    }


# ---- the recommend job's step ---------------------------------------------------------------------------------------

MODEL_NAME = "item_content"


@dataclass(frozen=True)
class ContentRun:
    """The run's content model, for the other users of the item vectors (cold start)."""

    model: PipelineModel
    version: str
    catalogue: DataFrame  # silver.items as read


def write_similar_items(
    ctx: JobContext,
    settings: ContentConfig,
    factors: DataFrame | None,
    pairs: DataFrame,
    als_version: str | None,
) -> ContentRun | None:
    """Fit the content model on silver.items, save it (models/item_content/<version>, a row in ops.models)
    and overwrite the run date's partition of gold.similar_items. `factors`: (item_id, factors) of the
    run's ALS model, None without one; `pairs`: the run's interactions (user_id, item_id, ...). Returns
    the fitted model (None without silver.items)."""
    lake, run_date = ctx.lake, ctx.run_date
    items_table, similar_table = catalog.SILVER_ITEMS.name, catalog.SIMILAR_ITEMS.name
    if not lake.exists(items_table):
        ctx.note(f"{items_table} does not exist: no content model, {similar_table} not written")
        return None
    catalogue = lake.read(items_table)
    kept: list[DataFrame] = []
    try:
        with ctx.step("content features") as step:
            started = time.perf_counter()
            params = content_params(settings, catalogue.columns, als_version)
            version = model_version(run_date, params)
            model = item_content_model(catalogue, settings)
            fit_seconds = time.perf_counter() - started
            path = save_model(model, lake, MODEL_NAME, version)
            vectors = item_vectors(model, active_items(catalogue))
            kept.append(comparison_frame(vectors, factors, item_users(pairs), catalogue).persist())
            frame = kept[-1]
            count, dimensions = frame.count(), dimensions_of(frame)
            words = len(vocabulary(model))
            step.rows = count
            step.detail = f"{words} words, {dimensions} dimensions; saved {path}"
        method = method_for(count, settings)
        with ctx.step(f"{similar_table} ({method}, top {settings.top_n})") as step:
            started = time.perf_counter()
            rows = similar_items(frame, settings, version, run_date, method, count, dimensions)
            step.rows = written = lake.overwrite_as_of(similar_table, rows, run_date).rows
            similar_seconds = time.perf_counter() - started
    finally:
        for frame in kept:
            frame.unpersist()
    with ctx.step(f"{catalog.MODELS.name} ({MODEL_NAME})"):
        record_model(
            ctx,
            MODEL_NAME,
            version,
            path,
            {**params, "method": method},
            {
                "items": count,
                "vocabulary": words,
                "dimensions": dimensions,
                "fit_seconds": round(fit_seconds, 3),
                "similar_seconds": round(similar_seconds, 3),
                "similar_rows": written,
            },
            [c for c in ("title", TAGS, "category", "brand", "price") if c in catalogue.columns],
        )
    ctx.counts.update(similar_items=written, content_items=count)
    return ContentRun(model, version, catalogue)

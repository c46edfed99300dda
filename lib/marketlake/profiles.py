"""User profiles for marketing tools: one flat row per user with recommendations, as CSV files split below a
size limit and as a cloud-data-ingestion table (UPDATED_AT, EXTERNAL_ID, PAYLOAD).

Definitions (docs/jobs/activate.md says the same for readers of the files):

- Users: those with rows in gold.user_recommendations of the run date.
- external_id: user_id as stored (a pseudonym when ingest pseudonymises user ids).
- segment_name, rfm_label: gold.user_segments and gold.user_features of the run date (null when missing).
- p_purchase, propensity_decile: gold.purchase_propensity of the run date, null without a score.
- offer_<campaign id>, one per configured campaign: the user's offer when they are in that campaign's
  treatment group on the run date (gold.campaign_audience); null when not targeted or held out as control,
  so a tool that targets "offer_x is set" never reaches the control group.
- item_1..item_N: the item_ids of ranks 1..N; item_1_title..item_N_title: their titles in silver.items.
- PAYLOAD: the attributes (every column but external_id) as one JSON object, nulls written as null, so a
  value that went away is sent as null rather than left out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from marketlake.activate import TREATMENT

EXTERNAL_ID = "external_id"
FILE_NUMBER = "file_number"
# The columns of the cloud-data-ingestion table (catalog.USER_PROFILE_SYNC), as Braze's CDI spells them.
UPDATED_AT, SYNC_ID, PAYLOAD = "UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"


def offer_column(campaign_id: str) -> str:
    return f"offer_{campaign_id}"


def profile_columns(items: int, campaign_ids: list[str]) -> list[str]:
    """The flat profile's columns, in file order: external_id, then the attributes."""
    return [
        EXTERNAL_ID,
        "segment_name",
        "rfm_label",
        "p_purchase",
        "propensity_decile",
        *[offer_column(c) for c in campaign_ids],
        *[f"item_{i}" for i in range(1, items + 1)],
        *[f"item_{i}_title" for i in range(1, items + 1)],
    ]


def user_profiles(
    run_date: dt.date,
    users: DataFrame,
    items: DataFrame | None,
    audience: DataFrame | None,
    n_items: int,
    campaign_ids: list[str],
) -> Callable[[DataFrame], DataFrame]:
    """gold.user_recommendations -> one flat row per user with recommendations on the run date.

    users: (user_id, segment_name, rfm_label, p_purchase, decile) of the run date (`activate.users_as_of`);
    items: silver.items (item_id, title), or None (titles stay null); audience: gold.campaign_audience, or
    None (the offer columns stay null)."""

    def transform(recommendations: DataFrame) -> DataFrame:
        ranked = recommendations.filter(F.col("as_of_date") == F.lit(run_date)).select(
            "user_id", "rank", "item_id"
        )
        if items is not None:
            ranked = ranked.join(F.broadcast(items.select("item_id", "title")), "item_id", "left")
        else:
            ranked = ranked.withColumn("title", F.lit(None).cast("string"))
        at = [F.col("rank") == i for i in range(1, n_items + 1)]
        wide = ranked.groupBy("user_id").agg(
            F.count(F.lit(1)).alias("_ranks"),  # an aggregate even when n_items is 0
            *[F.max(F.when(is_rank, F.col("item_id"))).alias(f"item_{i}") for i, is_rank in enumerate(at, 1)],
            *[
                F.max(F.when(is_rank, F.col("title"))).alias(f"item_{i}_title")
                for i, is_rank in enumerate(at, 1)
            ],
        )
        profiles = wide.join(
            users.select(
                "user_id",
                "segment_name",
                "rfm_label",
                "p_purchase",
                F.col("decile").alias("propensity_decile"),
            ),
            "user_id",
            "left",
        )
        offers = [offer_column(c) for c in campaign_ids]
        if audience is not None and campaign_ids:
            treated = audience.filter(
                (F.col("as_of_date") == F.lit(run_date)) & (F.col("group") == TREATMENT)
            )
            by_user = treated.groupBy("user_id").agg(
                *[
                    F.max(F.when(F.col("campaign_id") == c, F.col("offer"))).alias(offer_column(c))
                    for c in campaign_ids
                ]
            )
            profiles = profiles.join(by_user, "user_id", "left")
        else:
            profiles = profiles.withColumns({name: F.lit(None).cast("string") for name in offers})
        return profiles.withColumnRenamed("user_id", EXTERNAL_ID).select(
            *profile_columns(n_items, campaign_ids)
        )

    return transform


def sync_rows(profiles: DataFrame) -> DataFrame:
    """Flat profiles -> (EXTERNAL_ID, PAYLOAD): the attributes as one JSON object in column order, nulls kept."""
    attributes = [c for c in profiles.columns if c != EXTERNAL_ID]
    payload = F.to_json(F.struct(*attributes), {"ignoreNullFields": "false"})
    return profiles.select(F.col(EXTERNAL_ID).alias(SYNC_ID), payload.alias(PAYLOAD))


def changed_since(current: DataFrame | None, updated_at: dt.datetime) -> Callable[[DataFrame], DataFrame]:
    """(EXTERNAL_ID, PAYLOAD) -> the rows to merge into the sync table: those whose payload is new or differs
    from the table's (`current`, None when there is no table yet), stamped UPDATED_AT = `updated_at`.
    Unchanged users are left out, so their row and UPDATED_AT stay as they were."""

    def transform(rows: DataFrame) -> DataFrame:
        if current is not None:
            rows = rows.join(current.select(SYNC_ID, PAYLOAD), [SYNC_ID, PAYLOAD], "left_anti")
        return rows.select(F.lit(updated_at).cast("timestamp").alias(UPDATED_AT), SYNC_ID, PAYLOAD)

    return transform


def csv_cell_bytes(column: Column) -> Column:
    """An upper bound of a cell's bytes in the CSV files (RFC 4180 as activate writes them): the text's UTF-8
    bytes, one more per quote (doubled), two more when the cell may be quoted; 0 for null (an empty cell)."""
    text = column.cast("string")
    quotes = F.octet_length(text) - F.octet_length(F.regexp_replace(text, '"', ""))
    may_be_quoted = text.rlike('[,"\\r\\n]|^\\s|\\s$') | (text == "")
    return F.coalesce(F.octet_length(text) + quotes + F.when(may_be_quoted, 2).otherwise(0), F.lit(0))


def csv_row_bytes(frame: DataFrame) -> Column:
    """An upper bound of the bytes of a row's line: its cells, the commas between them and the line end."""
    cells = [csv_cell_bytes(F.col(f"`{name}`")) for name in frame.columns]
    return F.lit(len(cells)) + sum(cells[1:], cells[0]) if cells else F.lit(1)


def header_bytes(columns: list[str]) -> int:
    return len(",".join(columns).encode("utf-8")) + 1


def file_numbers(cells: DataFrame, order: str, budget: int) -> DataFrame:
    """CSV cells -> (order, file_number): rows in `order`, numbered 1, 2, ... so that each file's rows take
    at most `budget` + the longest row's bytes. A row starting (by the running total of the rows before it)
    in [(k - 1) x budget, k x budget) goes to file k, so each file's rows fit in budget plus one row."""
    sized = cells.select(order, csv_row_bytes(cells).alias("_bytes"))
    before = Window.orderBy(order).rowsBetween(Window.unboundedPreceding, -1)
    start = F.coalesce(F.sum("_bytes").over(before), F.lit(0))
    return sized.select(order, (F.floor(start / F.lit(budget)) + 1).cast("int").alias(FILE_NUMBER))


def split_into_files(cells: DataFrame, order: str, max_file_bytes: int) -> DataFrame:
    """CSV cells -> the same rows with `file_number`, each file (its header included) at most
    `max_file_bytes`; ValueError when the header and the longest row alone do not fit."""
    row_bytes = csv_row_bytes(cells)
    sizes = cells.select(F.max(row_bytes).alias("longest"), F.sum(row_bytes).alias("total")).first()
    longest_bytes = int(sizes.longest or 0) if sizes is not None else 0
    total_bytes = int(sizes.total or 0) if sizes is not None else 0
    if header_bytes(cells.columns) + total_bytes <= max_file_bytes:
        return cells.withColumn(FILE_NUMBER, F.lit(1))  # the usual case: one file, no running total needed
    fixed = header_bytes(cells.columns) + longest_bytes
    if fixed >= max_file_bytes:
        raise ValueError(
            f"activate.profiles.max_file_bytes ({max_file_bytes:,}) is too small: the header and the longest "
            f"row take up to {fixed:,} bytes"
        )
    return cells.join(file_numbers(cells, order, max_file_bytes - fixed), order)

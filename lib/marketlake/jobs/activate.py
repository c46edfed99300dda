"""activate: for each campaign in the config's activate section, the targeted users (segment names, RFM
labels, purchase-propensity deciles, days without a purchase) of the run date with their offer, top
recommended items, cross-sell items for their last order, and a stable treatment/control group, into
gold.campaign_audience (the run date's partition is replaced). gold.purchase_propensity is read only when
a campaign has propensity_deciles.
Each campaign's treatment audience is exported as CSV and Parquet to
<lake root>/exports/<campaign id>/<run date>/audience.{csv,parquet} (a re-run replaces that folder).
With gold.user_recommendations rows for the run date (and activate.profiles.enabled), one flat profile per
user with recommendations (external_id, segment_name, rfm_label, p_purchase, propensity_decile,
offer_<campaign id>, item_1..N, item_1_title..N_title) goes to
<lake root>/exports/_profiles/<run date>/profiles-00001.csv, ... (each file with its header and at most
activate.profiles.max_file_bytes) and, for cloud data ingestion, into gold.user_profile_sync (UPDATED_AT,
EXTERNAL_ID, PAYLOAD as JSON), where only new or changed payloads get a new UPDATED_AT.

audience.csv: RFC 4180 (UTF-8, comma, a header row, LF line ends; a cell with a comma, quote, CR or LF
is quoted, a quote doubled as ""). Values are those of audience.parquet, whitespace kept; null is an
empty cell, an empty text "". To keep spreadsheets from running formulas, a text cell starting with =, +,
-, @, tab, CR or ' gets one ' in front: drop one leading ' of a text cell to get the value. Numbers are
never prefixed. Item and cross-sell lists are flat columns (item_1.., cross_sell_1..); any other list,
map or struct column is written as JSON text (e.g. ["i01","i02"]), as-is in Parquet."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import re
from typing import Literal

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from marketlake import catalog
from marketlake.activate import (
    CONTROL,
    TREATMENT,
    as_audience,
    as_csv_cells,
    assign_groups,
    campaigns_frame,
    capped,
    cross_sell_for,
    eligible,
    export_frame,
    filtered,
    last_order_items,
    targets_frame,
    top_items,
    users_as_of,
    with_lists,
    with_settings,
)
from marketlake.config import CampaignConfig, Config, shop_root
from marketlake.errors import UsageError
from marketlake.features import INACTIVE, PROSPECTS, RFM_GRID
from marketlake.lake import Lake
from marketlake.profiles import (
    EXTERNAL_ID,
    FILE_NUMBER,
    SYNC_ID,
    changed_since,
    split_into_files,
    sync_rows,
    user_profiles,
)
from marketlake.runner import Job, JobContext
from marketlake.segment import STRATEGIES

FEATURES, SEGMENTS = catalog.USER_FEATURES.name, catalog.USER_SEGMENTS.name
RECOMMENDATIONS, CROSS_SELL = catalog.USER_RECOMMENDATIONS.name, catalog.ITEM_CROSS_SELL.name
PROPENSITY = catalog.PURCHASE_PROPENSITY.name
AUDIENCE, EVENTS, USERS = (
    catalog.CAMPAIGN_AUDIENCE.name,
    catalog.SILVER_EVENTS.name,
    catalog.SILVER_USERS.name,
)
ITEMS, PROFILE_SYNC = catalog.SILVER_ITEMS.name, catalog.USER_PROFILE_SYNC.name
EXPORT_FILE, PROFILE_FILE = "audience", "profiles"
# RFC 4180 (see the module docstring); Spark's defaults escape a quote as \" and trim whitespace. The line
# separator stays "\n": with "\r\n" the writer also turns a "\n" inside a quoted value into "\r\n".
CSV_OPTIONS: dict[str, bool | str] = {
    "header": True,
    "quote": '"',
    "escape": '"',
    "ignoreLeadingWhiteSpace": False,
    "ignoreTrailingWhiteSpace": False,
    "nullValue": "",
    "emptyValue": '""',
    "lineSep": "\n",
    "encoding": "UTF-8",
}
# Columns every export has; a mapped export column may not take one of these names.
EXPORT_BASE_COLUMNS = {
    "campaign_id",
    "user_id",
    "segment_name",
    "rfm_label",
    "offer",
    "channel",
    "audience_rank",
}
RFM_LABELS = [label for label, _, _ in RFM_GRID] + [PROSPECTS, INACTIVE]
# Segment names are a base name, with " 2", " 3"... when KMeans makes two segments of the same kind.
SEGMENT_NAME = re.compile(rf"^({'|'.join(re.escape(name) for name in STRATEGIES)})( [2-9]| [1-9][0-9]+)?$")

log = logging.getLogger("marketlake")


def validate(args: argparse.Namespace, config: Config) -> None:
    for campaign in config.activate.campaigns:
        where = f"activate.campaigns[{campaign.id}]"
        for name in campaign.segments:
            if not SEGMENT_NAME.match(name):
                raise UsageError(
                    f"{where}.segments: {name!r} is not a segment name ({', '.join(STRATEGIES)})"
                )
        for label in campaign.rfm_labels:
            if label not in RFM_LABELS:
                raise UsageError(
                    f"{where}.rfm_labels: {label!r} is not an RFM label ({', '.join(RFM_LABELS)})"
                )
        clashing = sorted(set(campaign.export_columns) & EXPORT_BASE_COLUMNS)
        flat = {f"item_{i + 1}" for i in range(campaign.items)} | {
            f"cross_sell_{i + 1}" for i in range(campaign.cross_sell)
        }
        clashing += sorted(set(campaign.export_columns) & flat)
        if clashing:
            raise UsageError(f"{where}.export_columns: {', '.join(clashing)} is already an export column")
    contacts = config.activate.contacts
    if contacts and "://" not in contacts and not os.path.exists(contacts):
        raise UsageError(f"activate.contacts: no such file or folder: {contacts}")


def run(ctx: JobContext, args: argparse.Namespace) -> None:
    lake, run_date, settings = ctx.lake, ctx.run_date, ctx.config.activate
    campaigns = settings.campaigns
    by_propensity = any(c.by_propensity for c in campaigns)
    for table in (FEATURES, SEGMENTS, *([PROPENSITY] if by_propensity else [])):
        lake.require(table)
    with ctx.step(f"inputs: users of {run_date}, export columns") as step:
        scores = lake.read_as_of(PROPENSITY, run_date) if by_propensity else None
        users = lake.read(FEATURES).transform(users_as_of(lake.read(SEGMENTS), run_date, scores))
        if users.limit(1).count() == 0:
            raise UsageError(
                f"{FEATURES} has no rows for {run_date}; run features and segment for that date first"
            )
        if scores is not None and scores.limit(1).count() == 0:
            raise UsageError(f"{PROPENSITY} has no rows for {run_date}; run propensity for that date first")
        contact_columns = {
            c.id: contacts_for(ctx, c) for c in campaigns
        }  # checked before anything is written
        mapped = sorted({column for c in campaigns for column in c.export_columns})
        scored = [c.id for c in campaigns if c.by_propensity]
        step.detail = (
            f"{len(campaigns)} campaigns ({', '.join(scored) or 'none'} by propensity decile); "
            f"mapped export columns: {', '.join(mapped) or 'none'}"
        )
    if not campaigns:
        ctx.note("no campaigns in the config's activate section: empty partition")

    spark = ctx.spark
    targeted = (
        users.transform(eligible(targets_frame(spark, campaigns)))
        .transform(with_settings(campaigns_frame(spark, campaigns)))
        .transform(filtered)
        .persist()
    )
    try:
        eligible_counts = {
            row.campaign_id: row["count"] for row in targeted.groupBy("campaign_id").count().collect()
        }
        audience = (
            capped(targeted)
            .transform(with_lists(*lists(ctx, campaigns)))
            .transform(assign_groups(settings.salt))
            .transform(as_audience(run_date))
        )
        with ctx.step(AUDIENCE) as step:
            # merge_schema: a table written before p_purchase was added gains it (null in older partitions)
            step.rows = lake.overwrite_as_of(AUDIENCE, audience, run_date, merge_schema=True).rows
    finally:
        targeted.unpersist()

    written = lake.read_as_of(AUDIENCE, run_date).persist()
    try:
        sizes = {
            (row.campaign_id, row.group): row["count"]
            for row in written.groupBy("campaign_id", "group").count().collect()  # two rows per campaign
        }
        for campaign in campaigns:
            treatment, control = sizes.get((campaign.id, TREATMENT), 0), sizes.get((campaign.id, CONTROL), 0)
            kept = treatment + control
            cap = f" (cap {campaign.max_audience:,})" if campaign.max_audience else ""
            share = f"{control / kept:.1%}" if kept else "-"
            with ctx.step(f"{campaign.id}: export") as step:
                folder = export_campaign(
                    ctx, written.transform(export_frame(campaign, contact_columns[campaign.id])), campaign
                )
                step.rows = treatment
                step.detail = (
                    f"eligible {eligible_counts.get(campaign.id, 0):,}, kept {kept:,}{cap}, treatment {treatment:,}, "
                    f"control {control:,} ({share}; configured {campaign.control_share:.0%}) -> {folder}"
                )
    finally:
        written.unpersist()
    treatment = sum(v for (_, group), v in sizes.items() if group == TREATMENT)
    control = sum(v for (_, group), v in sizes.items() if group == CONTROL)
    ctx.counts.update(
        campaigns=len(campaigns), audience=treatment + control, treatment=treatment, control=control
    )
    if settings.profiles.enabled:
        export_profiles(ctx)


def export_profiles(ctx: JobContext) -> None:
    """The run date's user profiles (`marketlake.profiles`): CSV files in `lake.profile_export_dir`, split
    below activate.profiles.max_file_bytes, and the changed ones merged into gold.user_profile_sync. Skipped,
    with a note, when gold.user_recommendations has no rows for the run date."""
    lake, run_date, config = ctx.lake, ctx.run_date, ctx.config
    settings = config.activate.profiles
    if not has_date(ctx, RECOMMENDATIONS, "recommend", "no user profiles"):
        return
    n_items = config.recommend.top_n if settings.items is None else settings.items
    campaign_ids = [c.id for c in config.activate.campaigns]
    scores = lake.read_as_of(PROPENSITY, run_date) if lake.exists(PROPENSITY) else None
    users = lake.read(FEATURES).transform(users_as_of(lake.read(SEGMENTS), run_date, scores))
    profiles = (
        lake.read(RECOMMENDATIONS)
        .transform(
            user_profiles(
                run_date, users, lake.read_if_exists(ITEMS), lake.read(AUDIENCE), n_items, campaign_ids
            )
        )
        .persist()
    )
    try:
        with ctx.step("user profiles: CSV files") as step:
            folder = lake.profile_export_dir(run_date)
            cells = split_into_files(profiles.transform(as_csv_cells), EXTERNAL_ID, settings.max_file_bytes)
            ordered = cells.repartition(FILE_NUMBER).sortWithinPartitions(FILE_NUMBER, EXTERNAL_ID)
            with lake.files.staged_replace(folder) as staging:
                files = write_files(lake, ordered, staging, PROFILE_FILE, "csv", split_by=FILE_NUMBER)
            step.rows = ctx.counts["profiles"] = profiles.count()
            ctx.counts["profile_files"] = len(files)
            step.detail = (
                f"{n_items} items, {len(campaign_ids)} offer columns; {len(files)} files of at most "
                f"{settings.max_file_bytes:,} bytes -> {folder}"
            )
        with ctx.step(PROFILE_SYNC) as step:
            newest = lake.read(AUDIENCE).agg(F.max("as_of_date")).first()
            if newest is not None and newest[0] is not None and newest[0] > run_date:
                # The profiles of an older date must not replace newer ones in the marketing tool.
                step.detail = f"left as it is: {AUDIENCE} has a newer run date, {newest[0]}"
                return
            step.rows = ctx.counts["profiles_changed"] = merge_changed(ctx, profiles.transform(sync_rows))
            step.detail = "new or changed payloads merged (UPDATED_AT of the others kept)"
    finally:
        profiles.unpersist()


def merge_changed(ctx: JobContext, payloads: DataFrame) -> int:
    """Upserts the (EXTERNAL_ID, PAYLOAD) rows whose payload is new or differs from gold.user_profile_sync's,
    with UPDATED_AT = now (UTC), deciding against the table's snapshot (`retry_on_conflict`); returns how
    many. Nothing is committed when nothing changed, so a re-run leaves the table's version as it was."""
    lake = ctx.lake
    updated_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

    def attempt(version: int) -> int:
        changed = payloads.transform(changed_since(lake.read_at(PROFILE_SYNC, version), updated_at)).persist()
        try:
            count = changed.count()
            if count:
                lake.upsert(PROFILE_SYNC, changed, keys=[SYNC_ID], expected_version=version)
            return count
        finally:
            changed.unpersist()

    return lake.retry_on_conflict(PROFILE_SYNC, attempt)


def lists(ctx: JobContext, campaigns: list[CampaignConfig]) -> tuple[DataFrame | None, DataFrame | None]:
    """(user_id, items) and (user_id, cross_sell) at the longest length any campaign asks for; None (the
    lists stay empty) when no campaign wants them or their table has no rows for the run date."""
    lake, run_date = ctx.lake, ctx.run_date
    items_n = max((c.items for c in campaigns), default=0)
    cross_sell_n = max((c.cross_sell for c in campaigns), default=0)
    items = cross_sell = None
    if items_n and has_date(ctx, RECOMMENDATIONS, "recommend"):
        items = top_items(lake.read(RECOMMENDATIONS), run_date, items_n)
    if cross_sell_n and has_date(ctx, CROSS_SELL, "rules") and lake.exists(EVENTS):
        bought = lake.read(EVENTS).transform(last_order_items(run_date))
        cross_sell = bought.transform(cross_sell_for(lake.read(CROSS_SELL), run_date, cross_sell_n))
    return items, cross_sell


def has_date(ctx: JobContext, table: str, job: str, consequence: str = "its lists stay empty") -> bool:
    """Whether `table` has rows for the run date; logs why (and `consequence`) when it has not."""
    if not ctx.lake.exists(table):
        why = "does not exist"
    elif ctx.lake.read_as_of(table, ctx.run_date).limit(1).count() == 0:
        why = f"has no rows for {ctx.run_date}"
    else:
        return True
    ctx.note(f"{table} {why}: {consequence} (run {job} first)")
    return False


def contacts_for(ctx: JobContext, campaign: CampaignConfig) -> DataFrame | None:
    """(user_id, export columns) for a campaign's export_columns: each source column from silver.users
    when it has it, else from the contacts file (PII lives only there; it is read here and never stored)."""
    if not campaign.export_columns:
        return None
    lake = ctx.lake
    users = lake.read_if_exists(USERS)
    from_users = {
        k: v for k, v in campaign.export_columns.items() if users is not None and v in users.columns
    }
    from_contacts = {k: v for k, v in campaign.export_columns.items() if k not in from_users}
    frames = []
    if users is not None and from_users:  # from_users is empty without silver.users
        frames.append(users.select("user_id", *[F.col(v).alias(k) for k, v in from_users.items()]))
    if from_contacts:
        contacts = read_contacts(ctx)
        missing = sorted({v for v in from_contacts.values() if v not in contacts.columns})
        if missing:
            raise UsageError(
                f"activate.campaigns[{campaign.id}].export_columns: {', '.join(missing)} is neither in silver.users "
                f"nor in the contacts file ({contacts_path(ctx.config)}: {', '.join(contacts.columns)})"
            )
        frames.append(contacts.select("user_id", *[F.col(v).alias(k) for k, v in from_contacts.items()]))
    joined = frames[0]
    for frame in frames[1:]:
        joined = joined.join(frame, "user_id", "full")
    return joined.select("user_id", *campaign.export_columns).dropDuplicates(["user_id"])


def contacts_path(config: Config) -> str:
    return config.activate.contacts or f"{shop_root(config)}/users.csv"


def contacts_file(spark: SparkSession, path: str) -> DataFrame:
    """The contacts file as it is, by its extension: JSON lines, CSV with a header, else Parquet."""
    reader = spark.read
    if path.endswith((".json", ".jsonl", ".ndjson")):
        return reader.json(path)
    if path.endswith(".csv"):
        return reader.option("header", True).csv(path)
    return reader.parquet(path)


def read_contacts(ctx: JobContext) -> DataFrame:
    path = contacts_path(ctx.config)
    try:
        contacts = contacts_file(ctx.spark, path)
    except Exception as exc:  # AnalysisException: path not found, not parquet ...
        raise UsageError(
            f"activate.contacts: cannot read {path}: {str(exc).strip().splitlines()[0]}"
        ) from None
    if "user_id" not in contacts.columns:
        raise UsageError(f"activate.contacts: {path} has no user_id column")
    contacts = contacts.withColumn("user_id", F.col("user_id").cast("string"))
    ingest = ctx.config.ingest
    if ingest.pseudonymise_user_ids:  # silver holds pseudonyms: key the contacts the same way
        from marketlake.ingest.pseudonym import keyed_hash, load_key

        contacts = contacts.withColumn(
            "user_id", keyed_hash(load_key(ingest.pseudonym_key_env))(F.col("user_id"))
        )
    return contacts


def export_campaign(ctx: JobContext, rows: DataFrame, campaign: CampaignConfig) -> str:
    """Write `rows` as one audience.csv (the format of the module docstring) and one audience.parquet, each
    ordered by audience_rank, into the campaign's folder for the run date (`lake.export_dir`), replacing
    what was there only once both files are complete; returns the folder."""
    lake = ctx.lake
    folder = lake.export_dir(campaign.id, ctx.run_date)
    single = rows.repartition(1).sortWithinPartitions("audience_rank")
    csv_cells = rows.transform(as_csv_cells).repartition(1).sortWithinPartitions("audience_rank")
    with lake.files.staged_replace(folder) as staging:
        write_files(lake, csv_cells, staging, EXPORT_FILE, "csv")
        write_files(lake, single, staging, EXPORT_FILE, "parquet")
    return folder


def write_files(
    lake: Lake,
    frame: DataFrame,
    folder: str,
    name: str,
    kind: Literal["csv", "parquet"],
    split_by: str | None = None,
) -> list[str]:
    """Write `frame` with Spark's writer (csv: CSV_OPTIONS) into `folder` as `<name>.<kind>`, one file (the
    frame must be in one partition), or, with `split_by` (an integer column, not written), one file per value
    v, `<name>-<v, 5 digits>.<kind>` (each value must be in one partition); rows keep their order within a
    partition. Returns the file names."""
    spark_folder = f"{folder}/_{name}_{kind}"
    writer = frame.write if split_by is None else frame.write.partitionBy(split_by)
    if kind == "csv":
        writer.options(**CSV_OPTIONS).csv(spark_folder)
    else:
        writer.parquet(spark_folder)
    parts: dict[str, list[str]] = {}
    for entry in lake.files.list(spark_folder):
        parent, _, file_name = entry.relative.rpartition("/")
        if not entry.is_dir and file_name.startswith("part-"):
            parts.setdefault(parent, []).append(entry.uri)
    names = []
    for parent, uris in sorted(parts.items()):
        if len(uris) != 1:
            raise RuntimeError(
                f"{name}: expected one {kind} part file in {spark_folder}/{parent}, found {len(uris)}"
            )
        if split_by is None:
            target = f"{name}.{kind}"
        else:  # Spark's partition folder: <split_by>=<value>
            target = f"{name}-{int(parent.partition('=')[2]):05d}.{kind}"
        lake.files.move(uris[0], f"{folder}/{target}")
        names.append(target)
    lake.files.delete(spark_folder)
    if split_by is None and len(names) != 1:
        raise RuntimeError(f"{name}: expected one {kind} part file in {spark_folder}, found {len(names)}")
    return sorted(names)


JOB = Job(name="activate", help=__doc__.strip(), run=run, validate=validate)

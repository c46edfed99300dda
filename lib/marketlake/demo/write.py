"""Driver side: run the generator tasks, render their rows as lines with Spark, move the part files into
the shop's layout (the tasks' purchase sessions joined into one file) and write users.csv, items.csv and
the truth files (`generate_shop`)."""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from marketlake.demo.behaviour import build_context
from marketlake.demo.rows import (
    INTENT_SESSIONS,
    INTENT_SESSIONS_HEADER,
    PURCHASE_SESSIONS,
    PURCHASE_SESSIONS_HEADER,
    ROW_DDL,
    generate_partition,
)
from marketlake.demo.shop_catalog import (
    Bundles,
    Catalog,
    Population,
    Releases,
    build_bundles,
    build_catalog,
    build_population,
    build_releases,
)
from marketlake.demo.spec import (
    DIRTY_KINDS,
    DRIVER_STREAM,
    EVENT_FIELDS,
    EXPERIMENT_DAYS,
    EXPERIMENT_ID,
    EXPOSED_SHARE,
    NEW_ITEM_STREAM,
    PERSONAS,
    TREATMENT_SHARE,
    TRUE_RELATIVE_LIFT,
    ShopSpec,
)

if TYPE_CHECKING:  # imported where used: the Python workers that run the generator need none of the lake
    from marketlake.lake.files import Files


def render(rows: DataFrame) -> DataFrame:
    """target, date, value: the JSON line of each event (cut or replaced when malformed), the truth record
    of each dirty line, the counts of each task."""
    line = F.to_json(F.struct(*[F.col(c) for c in EVENT_FIELDS]))
    cut = F.expr("substring(_line, 1, greatest(1, cast(length(_line) * cut as int)))")
    malformed = F.coalesce(F.col("override"), cut)
    raw: Column = F.when(F.col("dirty_kind") == "malformed_json", malformed).otherwise(F.col("_line"))
    truth = F.to_json(
        F.struct(F.col("dirty_kind").alias("kind"), "reason", "event_id", "user_id", "file", raw.alias("raw"))
    )
    target = F.col("target")
    value = F.when(target == "events", raw).when(target == "dirty", truth).otherwise(F.col("override"))
    return (
        rows.withColumn("_line", line)
        .sortWithinPartitions("target", "date", "arrival", "user_idx", "seq")
        .select("target", "date", value.alias("value"))
    )


def move_parts(files: Files, out_dir: str, source: str, target: str) -> list[str]:
    """Move Spark's part files from out_dir/source/date=X/ to out_dir/target/date=X/part-NNNNN.json; returns
    the new paths, relative to out_dir."""
    moved = []
    for day in files.list(f"{out_dir}/{source}", recursive=False):
        if not (day.is_dir and day.relative.startswith("date=")):
            continue
        for part in files.list(day.uri, recursive=False):
            new_name = part_name(part.relative)
            if new_name is None:
                continue
            destination = f"{target}/{day.relative}/{new_name}"
            files.move(part.uri, f"{out_dir}/{destination}")
            moved.append(destination)
    return moved


PART = re.compile(r"part-(\d+)-.*?(?:\.c(\d+))?\.txt")


def part_name(spark_name: str) -> str | None:
    """part-00003-<job uuid>.c000.txt -> part-00003.json (a second file of a task: part-00003-001.json)."""
    match = PART.fullmatch(spark_name)
    if match is None:
        return None
    suffix = "" if not match.group(2) or int(match.group(2)) == 0 else f"-{match.group(2)}"
    return f"part-{match.group(1)}{suffix}.json"


def join_parts(files: Files, folder: str, target: str, header: str) -> None:
    """Write Spark's part files in `folder`, in task order, as the one file `target` after a `header` line,
    a part at a time."""
    parts = []
    for entry in files.list(folder, recursive=False):
        match = PART.fullmatch(entry.relative)
        if not entry.is_dir and match is not None:
            parts.append(((int(match.group(1)), int(match.group(2) or 0)), entry.uri))
    filesystem, path = files.resolve(target)
    files.make_dir(target.rpartition("/")[0])
    with filesystem.open_output_stream(path) as out:
        out.write(f"{header}\n".encode())
        for _, uri in sorted(parts):
            out.write(files.read_text(uri).encode())


def _csv(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


NEW_ITEMS_COLUMNS = ["item_id", "category", "release_date", "release_ts", "taste_groups"]


def new_items_truth(catalog: Catalog, releases: Releases, population: Population) -> pd.DataFrame:
    """One row per new item: its category, release (UTC date, and the instant from which a session can
    pick it) and the taste groups whose categories include it ("0|3"; empty when no group has it)."""
    released = releases.release_ms[releases.items].astype("datetime64[ms]")
    groups_of = [
        "|".join(str(g) for g, cats in enumerate(population.group_categories) if c in cats)
        for c in range(len(catalog.categories))
    ]
    category = catalog.category[releases.items]
    truth: pd.DataFrame = pd.DataFrame(
        {
            "item_id": catalog.item_ids[releases.items],
            "category": np.array(catalog.categories)[category],
            "release_date": np.datetime_as_string(released, unit="D"),
            "release_ts": np.strings.add(np.datetime_as_string(released, unit="s"), "Z"),
            "taste_groups": np.array(groups_of, dtype=object)[category] if len(category) else [],
        },
        columns=NEW_ITEMS_COLUMNS,
    )
    return truth


def dimension_files(
    spec: ShopSpec, catalog: Catalog, bundles: Bundles, releases: Releases, population: Population
) -> dict[str, str]:
    """users.csv, items.csv and the truth tables, as file texts by path."""
    signup = np.datetime64(spec.start_date) + population.signup_day.astype("timedelta64[D]")
    users = pd.DataFrame(
        {
            "user_id": population.user_ids,
            "signup_date": signup.astype(str),
            "age": population.age,
            "gender": population.gender,
            "region": population.region,
            "email": population.email,
        }
    )
    items = pd.DataFrame(
        {
            "item_id": catalog.item_ids,
            "category": np.array(catalog.categories)[catalog.category],
            "brand": catalog.brand,
            "price": catalog.price,
            "title": catalog.title,
            "active": catalog.active,
        }
    )
    personas = pd.DataFrame(
        {
            "user_id": population.user_ids,
            "persona": np.array([p.name for p in PERSONAS])[population.persona],
        }
    )
    group_names = np.array(
        ["|".join(catalog.categories[c] for c in cats) for cats in population.group_categories]
    )
    taste = pd.DataFrame(
        {
            "user_id": population.user_ids,
            "taste_group": population.group,
            "categories": group_names[population.group],
        }
    )
    bundle_rows = [
        {
            "bundle_id": f"b{b:02d}",
            "anchor_item_id": catalog.item_ids[members[0]],
            "item_ids": "|".join(catalog.item_ids[m] for m in members if m >= 0),
            "size": int((members >= 0).sum()),
            "rate": float(bundles.rate[b]),
        }
        for b, members in enumerate(bundles.members)
    ]
    columns = ["bundle_id", "anchor_item_id", "item_ids", "size", "rate"]
    return {
        "users.csv": _csv(users),
        "items.csv": _csv(items),
        "truth/personas.csv": _csv(personas),
        "truth/taste_groups.csv": _csv(taste),
        "truth/bundles.csv": _csv(pd.DataFrame(bundle_rows, columns=columns)),
        "truth/new_items.csv": _csv(new_items_truth(catalog, releases, population)),
    }


def experiment_truth(spec: ShopSpec, totals: dict[str, float]) -> dict[str, Any]:
    realised = {}
    for variant in ("control", "treatment"):
        users = int(totals.get(f"{variant}_users", 0))
        conversions = int(totals.get(f"{variant}_conversions", 0))
        realised[variant] = {
            "users": users,
            "conversions": conversions,
            "rate": round(conversions / users, 6) if users else None,
        }
    # each exposed user's conversion probability without treatment, summed per variant by the tasks
    expected = totals.get("control_expected", 0) + totals.get("treatment_expected", 0)
    exposed = totals.get("control_users", 0) + totals.get("treatment_users", 0)
    base = expected / exposed if exposed else 0.0
    start = spec.end_date - dt.timedelta(days=min(EXPERIMENT_DAYS, spec.days) - 1)
    return {
        "experiment_id": EXPERIMENT_ID,
        "variants": ["control", "treatment"],
        "planned_split": {"control": 1 - TREATMENT_SHARE, "treatment": TREATMENT_SHARE},
        "start_date": start.isoformat(),
        "end_date": spec.end_date.isoformat(),
        "exposed_share": EXPOSED_SHARE,
        "metric": "session conversion: the session (session_id) of a user's first exposure holds a purchase",
        "base_conversion_rate": round(base, 6),
        "treatment_conversion_rate": round(base * (1 + TRUE_RELATIVE_LIFT), 6),
        "true_relative_lift": TRUE_RELATIVE_LIFT,
        "true_absolute_lift": round(base * TRUE_RELATIVE_LIFT, 6),
        "conversion_by_persona": {p.name: p.p_convert for p in PERSONAS},
        "realised": realised,
    }


OUTPUTS = ("events", "truth", "users.csv", "items.csv", ".users.csv.crc", ".items.csv.crc", "_staging")


def generate_shop(
    spark: SparkSession, spec: ShopSpec, out_dir: str, files: Files | None = None
) -> dict[str, int]:
    """Write a synthetic shop for `spec` under the folder `out_dir` (a path or a URI such as s3a://...; its
    generated parts are replaced) and return the counts: events (lines written), valid_events, dirty,
    dirty_<kind> per kind, late_events, users, items, sessions, orders, purchases, exposures, bundles,
    new_items.
    `files`: the lake's file helper (`lake.files`, with its storage options); by default a plain one."""
    from marketlake.lake.files import Files, absolute

    spec.validate()
    rng = np.random.default_rng([spec.seed, DRIVER_STREAM])
    catalog = build_catalog(spec, rng)
    bundles = build_bundles(catalog, rng)
    population = build_population(spec, catalog, rng)
    releases = build_releases(spec, catalog, bundles, np.random.default_rng([spec.seed, NEW_ITEM_STREAM]))
    ctx = build_context(spec, catalog, bundles, releases, population)
    files = files or Files()
    out_dir = absolute(out_dir)
    for name in OUTPUTS:
        files.delete(f"{out_dir}/{name}")

    broadcast = spark.sparkContext.broadcast(ctx)
    try:
        chunks = len(ctx.bounds) - 1
        rows = spark.range(0, chunks, 1, chunks).mapInArrow(
            functools.partial(generate_partition, broadcast), ROW_DDL
        )
        render(rows).write.partitionBy("target", "date").text(f"{out_dir}/_staging")
    finally:
        broadcast.destroy()

    move_parts(files, out_dir, "_staging/target=events", "events")
    move_parts(files, out_dir, "_staging/target=dirty", "truth/dirty")
    join_parts(
        files,
        f"{out_dir}/_staging/target={PURCHASE_SESSIONS}/date=all",
        f"{out_dir}/truth/{PURCHASE_SESSIONS}.csv",
        PURCHASE_SESSIONS_HEADER,
    )
    join_parts(
        files,
        f"{out_dir}/_staging/target={INTENT_SESSIONS}/date=all",
        f"{out_dir}/truth/{INTENT_SESSIONS}.csv",
        INTENT_SESSIONS_HEADER,
    )
    totals: dict[str, float] = {}
    for stats in files.list(f"{out_dir}/_staging/target=stats"):
        if not stats.is_dir and stats.relative.rpartition("/")[2].startswith("part-"):
            for line in files.read_text(stats.uri).splitlines():
                for key, value in json.loads(line).items():
                    totals[key] = totals.get(key, 0) + value
    files.delete(f"{out_dir}/_staging")

    counts = {
        key: int(totals.get(key, 0))
        for key in (
            "events",
            "valid_events",
            "dirty",
            *(f"dirty_{k}" for k in DIRTY_KINDS),
            "late_events",
            "sessions",
            "orders",
            "purchases",
            "exposures",
        )
    }
    counts.update(
        users=spec.users, items=spec.items, bundles=len(bundles.members), new_items=len(releases.items)
    )
    texts = dimension_files(spec, catalog, bundles, releases, population)
    texts["truth/experiment.json"] = json.dumps(experiment_truth(spec, totals), indent=2) + "\n"
    dirty_counts = {
        "dirty_rate": spec.dirty_rate,
        "kinds": {k: counts[f"dirty_{k}"] for k in DIRTY_KINDS},
        "counts": counts,
    }
    texts["truth/dirty_counts.json"] = json.dumps(dirty_counts, indent=2) + "\n"
    for relative, text in texts.items():
        files.write_text(f"{out_dir}/{relative}", text)
    return counts

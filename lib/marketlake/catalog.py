"""The table catalog: every table marketlake writes, with its schema, partitioning, the job that writes it
and the jobs that read it. Jobs, the report, the Airflow DAG's edges and docs/tables.md take tables from
here; nothing else spells a table name.

A table named `layer.name` lives at `<lake root>/<layer>/<name>` and is a real Delta table that any Delta
reader opens. Columns are given as Spark SQL types; `marketlake.lake.schema.spark_schema` turns them into a
StructType. This module imports nothing but the standard library, so the DAG file can load it without
Spark.
"""

from __future__ import annotations

from dataclasses import dataclass

EVERY_JOB = "every job"


@dataclass(frozen=True)
class Table:
    name: str
    grain: str
    columns: tuple[tuple[str, str], ...]
    written_by: tuple[str, ...]
    read_by: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    about: str = ""

    @property
    def layer(self) -> str:
        return self.name.split(".")[0]

    def location(self, root: str) -> str:
        """Where the table lives under a lake root: `<root>/<layer>/<name>`."""
        return f"{root.rstrip('/')}/{self.name.replace('.', '/', 1)}"

    @property
    def date_partition(self) -> str | None:
        """The partition column when the table is partitioned by one date column, else None (retention
        drops whole partitions by it)."""
        if len(self.partition_by) == 1 and dict(self.columns).get(self.partition_by[0]) == "date":
            return self.partition_by[0]
        return None

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]

    def ddl(self) -> str:
        return ", ".join(f"`{name}` {kind}" for name, kind in self.columns)

    def made_by(self) -> str:
        """The job(s) to run when the table is missing, for messages."""
        if self.written_by == (EVERY_JOB,):
            return "any job"
        return " or ".join(self.written_by)


RAW_LINEAGE = (("source_file", "string"), ("batch_id", "string"), ("ingested_at", "timestamp"))

BRONZE_EVENTS = Table(
    "bronze.events",
    grain="one raw input record, as received",
    columns=(
        ("raw", "string"),
        ("source_file", "string"),
        ("source_size", "bigint"),
        ("batch_id", "string"),
        ("ingested_at", "timestamp"),
        ("ingest_date", "date"),
        ("raw_bytes", "binary"),
    ),
    partition_by=("ingest_date",),
    written_by=("ingest",),
    read_by=("ingest",),
    about="`raw` is valid UTF-8 text; when the line was not, `raw_bytes` holds its exact bytes.",
)
SILVER_EVENTS = Table(
    "silver.events",
    grain="one valid event, unique event_id",
    columns=(
        ("event_id", "string"),
        ("user_id", "string"),
        ("item_id", "string"),
        ("event_type", "string"),
        ("event_ts", "timestamp"),
        ("event_date", "date"),
        ("session_id", "string"),
        ("order_id", "string"),
        ("quantity", "int"),
        ("price", "double"),
        ("revenue", "double"),
        ("channel", "string"),
        ("campaign_id", "string"),
        ("experiment_id", "string"),
        ("variant", "string"),
        ("rating", "double"),
        *RAW_LINEAGE,
    ),
    partition_by=("event_date",),
    keys=("event_id",),
    written_by=("ingest",),
    read_by=(
        "ingest",
        "features",
        "propensity",
        "rules",
        "sessions",
        "recommend",
        "activate",
        "experiment",
        "plan",
    ),
)
SILVER_USERS = Table(
    "silver.users",
    grain="one user (later versions replace earlier ones)",
    columns=(
        ("user_id", "string"),
        ("signup_date", "date"),
        ("age", "int"),
        ("gender", "string"),
        ("region", "string"),
        *RAW_LINEAGE,
    ),
    keys=("user_id",),
    written_by=("ingest",),
    read_by=("ingest", "features", "propensity", "recommend", "activate"),
)
SILVER_ITEMS = Table(
    "silver.items",
    grain="one item (later versions replace earlier ones)",
    columns=(
        ("item_id", "string"),
        ("category", "string"),
        ("brand", "string"),
        ("price", "double"),
        ("title", "string"),
        ("active", "boolean"),
        *RAW_LINEAGE,
    ),
    keys=("item_id",),
    written_by=("ingest",),
    read_by=("ingest", "features", "recommend", "activate", "report"),
)


def _quarantine(entity: str) -> Table:
    return Table(
        f"quarantine.{entity}",
        grain=f"one rejected {entity} record, with its reason",
        columns=(
            ("raw", "string"),
            ("reason", "string"),
            ("source_file", "string"),
            ("batch_id", "string"),
            ("ingested_at", "timestamp"),
            ("ingest_date", "date"),
            ("raw_bytes", "binary"),
        ),
        partition_by=("ingest_date",),
        written_by=("ingest",),
        read_by=("ingest",),
        about="`raw` is valid UTF-8 text; when the record was not, `raw_bytes` holds its exact bytes.",
    )


QUARANTINE_EVENTS = _quarantine("events")
QUARANTINE_USERS = _quarantine("users")
QUARANTINE_ITEMS = _quarantine("items")

USER_FEATURES = Table(
    "gold.user_features",
    grain="one user x as_of_date: behaviour features and RFM scores",
    columns=(
        ("user_id", "string"),
        ("recency_days", "double"),
        ("days_since_purchase", "double"),
        ("frequency", "bigint"),
        ("monetary", "double"),
        ("avg_order_value", "double"),
        ("views", "bigint"),
        ("clicks", "bigint"),
        ("carts", "bigint"),
        ("purchases", "bigint"),
        ("sessions", "bigint"),
        ("ctr", "double"),
        ("cart_rate", "double"),
        ("purchase_rate", "double"),
        ("active_days", "bigint"),
        ("tenure_days", "int"),
        ("favourite_category", "string"),
        ("r_score", "int"),
        ("f_score", "int"),
        ("m_score", "int"),
        ("rfm_score", "string"),
        ("rfm_label", "string"),
        ("as_of_date", "date"),
    ),
    partition_by=("as_of_date",),
    keys=("user_id", "as_of_date"),
    written_by=("features",),
    read_by=("segment", "activate", "report"),
)
USER_SEGMENTS = Table(
    "gold.user_segments",
    grain="one user x as_of_date: their KMeans segment",
    columns=(
        ("user_id", "string"),
        ("segment_id", "int"),
        ("segment_name", "string"),
        ("model_version", "string"),
        ("as_of_date", "date"),
    ),
    partition_by=("as_of_date",),
    keys=("user_id", "as_of_date"),
    written_by=("segment",),
    read_by=("recommend", "activate"),
)
SEGMENT_PROFILES = Table(
    "gold.segment_profiles",
    grain="one segment x as_of_date: size, feature means, strategy",
    columns=(
        ("segment_id", "int"),
        ("segment_name", "string"),
        ("size", "bigint"),
        ("share", "double"),
        ("buyer_share", "double"),
        ("mean_recency_days", "double"),
        ("mean_days_since_purchase", "double"),
        ("mean_frequency", "double"),
        ("mean_monetary", "double"),
        ("mean_avg_order_value", "double"),
        ("mean_views", "double"),
        ("mean_clicks", "double"),
        ("mean_carts", "double"),
        ("mean_purchases", "double"),
        ("mean_sessions", "double"),
        ("mean_ctr", "double"),
        ("mean_cart_rate", "double"),
        ("mean_purchase_rate", "double"),
        ("mean_active_days", "double"),
        ("mean_tenure_days", "double"),
        ("strategy", "string"),
        ("silhouette", "double"),
        ("k", "int"),
        ("features", "array<string>"),
        ("model_version", "string"),
        ("as_of_date", "date"),
    ),
    partition_by=("as_of_date",),
    keys=("segment_id", "as_of_date"),
    written_by=("segment",),
    read_by=("report",),
)
ASSOCIATION_RULES = Table(
    "gold.association_rules",
    grain="one rule x as_of_date (FPGrowth)",
    columns=(
        ("antecedent", "array<string>"),
        ("consequent", "array<string>"),
        ("support", "double"),
        ("confidence", "double"),
        ("lift", "double"),
        ("as_of_date", "date"),
    ),
    partition_by=("as_of_date",),
    keys=("antecedent", "consequent", "as_of_date"),
    written_by=("rules",),
    read_by=("report",),
)
ITEM_CROSS_SELL = Table(
    "gold.item_cross_sell",
    grain="one item x rank x as_of_date: what to offer with it",
    columns=(
        ("item_id", "string"),
        ("rank", "int"),
        ("recommended_item_id", "string"),
        ("confidence", "double"),
        ("lift", "double"),
        ("support", "double"),
        ("as_of_date", "date"),
    ),
    partition_by=("as_of_date",),
    keys=("item_id", "rank", "as_of_date"),
    written_by=("rules",),
    read_by=("activate", "report"),
)
NEXT_ITEMS = Table(
    "gold.next_items",
    grain="one item x rank x as_of_date: what a session that holds it goes on to (sequential rules)",
    columns=(
        ("item_id", "string"),
        ("rank", "int"),
        ("next_item_id", "string"),
        ("score", "double"),
        ("model_version", "string"),
        ("as_of_date", "date"),
    ),
    partition_by=("as_of_date",),
    keys=("item_id", "rank", "as_of_date"),
    written_by=("sessions",),
    about="`score`: the rule's share of the item's next-item weight (pairs at distance d weigh 1/d); an "
    "item's scores over all its next items sum to 1, the table keeps its top ones.",
)
USER_RECOMMENDATIONS = Table(
    "gold.user_recommendations",
    grain="one user x rank x as_of_date (sources: als, content, segment_popular, global_popular)",
    columns=(
        ("user_id", "string"),
        ("rank", "int"),
        ("item_id", "string"),
        ("score", "double"),
        ("source", "string"),
        ("model_version", "string"),
        ("as_of_date", "date"),
    ),
    partition_by=("as_of_date",),
    keys=("user_id", "rank", "as_of_date"),
    written_by=("recommend",),
    read_by=("activate", "report"),
)
SIMILAR_ITEMS = Table(
    "gold.similar_items",
    grain="one item x rank x as_of_date: its look-alikes (one blended list per active item)",
    columns=(
        ("item_id", "string"),
        ("rank", "int"),
        ("similar_item_id", "string"),
        ("score", "double"),
        ("source", "string"),
        ("model_version", "string"),
        ("as_of_date", "date"),
    ),
    partition_by=("as_of_date",),
    keys=("item_id", "rank", "as_of_date"),
    written_by=("recommend",),
    about="`source` says what the row's score is made of: `hybrid` (both items have ALS factors: the "
    "collaborative and content cosines blended), `content` (either item has no history), `collaborative` "
    "(the blend weight is 1). Inactive items neither get a list nor appear in one; an item is never its own "
    "look-alike.",
)
RECOMMENDATION_EVALUATION = Table(
    "gold.recommendation_evaluation",
    grain="one model x metric x k x as_of_date, against a popularity baseline",
    columns=(
        ("as_of_date", "date"),
        ("model_version", "string"),
        ("model", "string"),
        ("metric", "string"),
        ("k", "int"),
        ("value", "double"),
        ("users", "bigint"),
        ("split", "string"),
    ),
    partition_by=("as_of_date",),
    keys=("model_version", "model", "metric", "k", "as_of_date"),
    written_by=("recommend",),
    read_by=("report",),
)
PURCHASE_PROPENSITY = Table(
    "gold.purchase_propensity",
    grain="one user known on the run date x as_of_date: probability of a purchase in the next horizon_days",
    columns=(
        ("user_id", "string"),
        ("p_purchase", "double"),
        ("decile", "int"),
        ("expected_purchases", "double"),
        ("p_alive", "double"),
        ("model", "string"),
        ("model_version", "string"),
        ("horizon_days", "int"),
        ("as_of_date", "date"),
    ),
    partition_by=("as_of_date",),
    keys=("user_id", "as_of_date"),
    written_by=("propensity",),
    read_by=("activate", "report"),
    about="p_purchase is calibrated (of users scored 0.2, about 1 in 5 buy); decile 1 holds the 10% most "
    "likely buyers. expected_purchases and p_alive come from the BG/NBD model and are null for users who "
    "have not bought yet.",
)
PROPENSITY_EVALUATION = Table(
    "gold.propensity_evaluation",
    grain="one model x as_of_date: out-of-time validation of each candidate (and the BG/NBD baseline)",
    columns=(
        ("as_of_date", "date"),
        ("model", "string"),
        ("chosen", "boolean"),
        ("model_version", "string"),
        ("horizon_days", "int"),
        ("train_cutoff", "date"),
        ("validation_cutoff", "date"),
        ("users", "bigint"),
        ("buyers", "bigint"),
        ("base_rate", "double"),
        ("auc", "double"),
        ("average_precision", "double"),
        ("brier", "double"),
        ("log_loss", "double"),
        ("lift_top_decile", "double"),
        ("threshold", "double"),
        ("accuracy", "double"),
        ("precision", "double"),
        ("recall", "double"),
        ("f1", "double"),
    ),
    partition_by=("as_of_date",),
    keys=("model", "as_of_date"),
    written_by=("propensity",),
    read_by=("report",),
    about="Each model is fitted on features as of train_cutoff with purchases in the next horizon as labels, "
    "and judged on features as of validation_cutoff against the purchases that followed (calibrated "
    "probabilities, cross-fitted). threshold is the probability that maximises F1; accuracy, precision, "
    "recall and f1 are at it.",
)
PROPENSITY_DECILES = Table(
    "gold.propensity_deciles",
    grain="one model x decile x as_of_date: calibration and gain on the validation cutoff",
    columns=(
        ("as_of_date", "date"),
        ("model", "string"),
        ("decile", "int"),
        ("users", "bigint"),
        ("buyers", "bigint"),
        ("mean_predicted", "double"),
        ("observed_rate", "double"),
        ("lift", "double"),
        ("cumulative_buyer_share", "double"),
    ),
    partition_by=("as_of_date",),
    keys=("model", "decile", "as_of_date"),
    written_by=("propensity",),
    read_by=("report",),
    about="Decile 1 holds the validation users the model ranked highest. mean_predicted against "
    "observed_rate is the calibration plot; cumulative_buyer_share (buyers in deciles 1..d over all "
    "buyers) is the gain chart.",
)
CAMPAIGN_AUDIENCE = Table(
    "gold.campaign_audience",
    grain="one user x campaign x as_of_date, with offer and group (treatment, control)",
    columns=(
        ("campaign_id", "string"),
        ("user_id", "string"),
        ("segment_name", "string"),
        ("rfm_label", "string"),
        ("p_purchase", "double"),
        ("offer", "string"),
        ("channel", "string"),
        ("items", "array<string>"),
        ("cross_sell", "array<string>"),
        ("group", "string"),
        ("control_share", "double"),
        ("audience_rank", "int"),
        ("as_of_date", "date"),
    ),
    partition_by=("as_of_date",),
    keys=("campaign_id", "user_id", "as_of_date"),
    written_by=("activate",),
    read_by=("report",),
    about="p_purchase is the user's score in gold.purchase_propensity of the same date, kept for campaigns "
    "that target by propensity decile (it also ranks their cap) and null for the others; a partition "
    "written before the column existed reads null.",
)
USER_PROFILE_SYNC = Table(
    "gold.user_profile_sync",
    grain="one user with recommendations (EXTERNAL_ID): their current profile attributes as JSON",
    columns=(
        ("UPDATED_AT", "timestamp"),
        ("EXTERNAL_ID", "string"),
        ("PAYLOAD", "string"),
    ),
    keys=("EXTERNAL_ID",),
    written_by=("activate",),
    about="The shape a marketing tool's cloud data ingestion reads from a warehouse table (Braze CDI: "
    "EXTERNAL_ID, PAYLOAD, UPDATED_AT in UTC; a sync takes the rows whose UPDATED_AT is later than the last "
    "one it synced). Not partitioned: one current row per user. EXTERNAL_ID is user_id as stored (a pseudonym "
    "when ingest pseudonymises ids). PAYLOAD is a JSON object of the flat profile's attributes (segment_name, "
    "rfm_label, p_purchase, propensity_decile, offer_<campaign id>, item_1.., item_1_title..), every key "
    "present, null when unknown. activate merges the newest run date's profiles in: a user whose PAYLOAD is "
    "unchanged keeps their row and UPDATED_AT, so a sync sends only new and changed profiles; UPDATED_AT is "
    "the time of the run that changed the row. A user no longer in the profiles keeps their last row.",
)
EXPERIMENT_RESULTS = Table(
    "gold.experiment_results",
    grain="one experiment x metric x variant x as_of_date",
    columns=(
        ("experiment_id", "string"),
        ("source", "string"),
        ("metric", "string"),
        ("variant", "string"),
        ("is_control", "boolean"),
        ("users", "bigint"),
        ("conversions", "double"),
        ("rate", "double"),
        ("lift", "double"),
        ("lift_relative", "double"),
        ("ci_low", "double"),
        ("ci_high", "double"),
        ("rel_ci_low", "double"),
        ("rel_ci_high", "double"),
        ("p_value", "double"),
        ("p_value_adjusted", "double"),
        ("prob_beat_control", "double"),
        ("sequential_p_value", "double"),
        ("sequential_p_value_adjusted", "double"),
        ("sequential_ci_low", "double"),
        ("sequential_ci_high", "double"),
        ("sequential_rel_ci_low", "double"),
        ("sequential_rel_ci_high", "double"),
        ("srm_p_value", "double"),
        ("srm", "boolean"),
        ("decision", "string"),
        ("decision_test", "string"),
        ("decision_reason", "string"),
        ("cuped", "boolean"),
        ("value_cap", "double"),
        ("capped_users", "bigint"),
        ("duplicate_rows", "bigint"),
        ("repeat_rows_merged", "bigint"),
        ("users_in_several_variants", "bigint"),
        ("as_of_date", "date"),
    ),
    partition_by=("as_of_date",),
    keys=("experiment_id", "source", "metric", "variant", "as_of_date"),
    written_by=("experiment",),
    read_by=("report",),
    about="On revenue_per_user rows `conversions` is the revenue total and `rate` the revenue per user. Both "
    "tests' figures are on every row (p_value / ci_*: fixed horizon; sequential_*: always valid); "
    "`decision_test` names the one `decision` used. Partitions written before a column existed read null.",
)
JOB_RUNS = Table(
    "ops.job_runs",
    grain="one job run: status, counts, seconds",
    columns=(
        ("run_id", "string"),
        ("job", "string"),
        ("run_date", "date"),
        ("status", "string"),
        ("message", "string"),
        ("started_at", "timestamp"),
        ("ended_at", "timestamp"),
        ("seconds", "double"),
        ("counts", "map<string,bigint>"),
        ("arguments", "string"),
        ("engine", "string"),
        ("spark_version", "string"),
        ("host", "string"),
    ),
    partition_by=(),
    keys=("run_id",),
    written_by=(EVERY_JOB,),
    read_by=("pipeline", "report"),
)
MODELS = Table(
    "ops.models",
    grain="one fitted model version: params, metrics, path",
    columns=(
        ("model_name", "string"),
        ("model_version", "string"),
        ("run_date", "date"),
        ("run_id", "string"),
        ("created_at", "timestamp"),
        ("path", "string"),
        ("params", "map<string,string>"),
        ("metrics", "map<string,double>"),
        ("features", "array<string>"),
    ),
    partition_by=(),
    keys=("model_name", "model_version"),
    written_by=("segment", "recommend"),
    read_by=("recommend", "report"),
)
INGESTED_FILES = Table(
    "ops.ingested_files",
    grain="one ingested file version per entity and mapping, with its record count",
    columns=(
        ("source_file", "string"),
        ("size", "bigint"),
        ("modified_ms", "bigint"),
        ("entity", "string"),
        ("mapping", "string"),
        ("records", "bigint"),
        ("batch_id", "string"),
        ("run_date", "date"),
        ("ingested_at", "timestamp"),
    ),
    partition_by=(),
    keys=("source_file", "size", "modified_ms", "entity", "mapping"),
    written_by=("ingest",),
    read_by=("ingest",),
)
ERASURES = Table(
    "ops.erasures",
    grain="one erasure request: one subject (a keyed hash, never the id), what was removed",
    columns=(
        ("subject_hash", "string"),
        ("requested_at", "timestamp"),
        ("run_id", "string"),
        ("status", "string"),
        ("tables", "array<string>"),
        ("rows_removed", "map<string,bigint>"),
        ("files", "map<string,bigint>"),
        ("user_hashes", "array<string>"),
    ),
    partition_by=(),
    keys=("subject_hash", "run_id"),
    written_by=("erase",),
    read_by=("erase", "ingest"),
    about="subject_hash is HMAC-SHA256 (privacy.key_env or privacy.key_file, outside the lake) of the subject as "
    "given (a user id, or an email in lower case); user_hashes the same hash of each user id (and pseudonym) the "
    "subject maps to: ingest suppresses their later events (counted as erased_subject). status: erased, or "
    "nothing_found (an unknown subject, or a request already done). rows_removed: rows per table (tables that "
    "lost rows in `tables`); files: rewritten or deleted files per folder (landing, exports, reports, models, "
    "checkpoints). A re-run of a request finds nothing and appends no row.",
)

REALTIME_RECOMMENDATIONS = Table(
    "gold.realtime_recommendations",
    grain="one user x rank: the latest list, blending the live session with the daily list",
    columns=(
        ("user_id", "string"),
        ("rank", "int"),
        ("item_id", "string"),
        ("score", "double"),
        ("source", "string"),
        ("updated_at", "timestamp"),
        ("last_event_ts", "timestamp"),
    ),
    keys=("user_id", "rank"),
    written_by=("stream",),
    about="Merged once per micro-batch of the stream for the users active in it: a user's rows are replaced "
    "whole (a shorter list leaves no old ranks behind). `updated_at`: the micro-batch's time; `last_event_ts`: "
    "the user's latest event then.",
)
TABLES: tuple[Table, ...] = (
    BRONZE_EVENTS,
    SILVER_EVENTS,
    SILVER_USERS,
    SILVER_ITEMS,
    QUARANTINE_EVENTS,
    QUARANTINE_USERS,
    QUARANTINE_ITEMS,
    USER_FEATURES,
    USER_SEGMENTS,
    SEGMENT_PROFILES,
    ASSOCIATION_RULES,
    ITEM_CROSS_SELL,
    NEXT_ITEMS,
    USER_RECOMMENDATIONS,
    SIMILAR_ITEMS,
    RECOMMENDATION_EVALUATION,
    PURCHASE_PROPENSITY,
    PROPENSITY_EVALUATION,
    PROPENSITY_DECILES,
    CAMPAIGN_AUDIENCE,
    USER_PROFILE_SYNC,
    EXPERIMENT_RESULTS,
    JOB_RUNS,
    MODELS,
    INGESTED_FILES,
    ERASURES,
    REALTIME_RECOMMENDATIONS,
)
BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}

PLANNED_TABLES: tuple[Table, ...] = ()


def table(name: str) -> Table:
    """The catalog entry of `name`; a KeyError names the known tables."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no table {name!r} in the catalog; tables: {', '.join(BY_NAME)}") from None


def silver(entity: str) -> Table:
    return table(f"silver.{entity}")


def quarantine(entity: str) -> Table:
    return table(f"quarantine.{entity}")


def tables_read_by(job: str) -> list[Table]:
    return [t for t in TABLES if job in t.read_by]


def upstream_jobs(job: str) -> list[str]:
    """The jobs that write a table `job` reads (itself and `every job` aside), in catalog order."""
    found = [writer for t in tables_read_by(job) for writer in t.written_by if writer not in (job, EVERY_JOB)]
    return list(dict.fromkeys(found))


def markdown() -> str:
    """docs/tables.md: every table of the catalog (tests/test_catalog.py fails when the file is stale)."""
    lines = [
        "# Tables",
        "",
        "<!-- Generated from lib/marketlake/catalog.py by `make docs`; do not edit by hand. -->",
        "",
        "A table named `layer.name` lives at `<lake root>/<layer>/<name>` and is a Delta table that any Delta",
        "reader opens (deltalake, polars, duckdb over the deltalake dataset, Spark).",
        "",
        "| table | grain | partitioned by | written by | read by |",
        "|---|---|---|---|---|",
    ]
    for t in TABLES:
        partitions = ", ".join(t.partition_by) or "-"
        lines.append(
            f"| [`{t.name}`](#{t.name.replace('.', '')}) | {t.grain} | {partitions} | "
            f"{', '.join(t.written_by)} | {', '.join(t.read_by) or '-'} |"
        )
    for t in TABLES:
        about = t.grain[0].upper() + t.grain[1:] + "." + (f" Key: {', '.join(t.keys)}." if t.keys else "")
        lines += ["", f"## {t.name}", "", about]
        if t.about:
            lines += ["", t.about]
        lines += ["", "| column | type |", "|---|---|"]
        lines += [f"| {name} | {kind} |" for name, kind in t.columns]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")

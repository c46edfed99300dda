"""Typed configuration, loaded once from YAML with environment overrides.

Precedence, lowest first: the embedded default (conf/local.yaml shipped in the package), the YAML file
given with --config, `MARKETLAKE__SECTION__KEY=value` variables, then the named variables in
`ENV_OVERRIDES` (`MARKETLAKE_LAKE`, `MARKETLAKE_ENGINE`, ...). An unknown key or a bad value is a
ConfigError whose message names the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from marketlake import catalog
from marketlake.errors import ConfigError, UsageError

Engine = Literal["auto", "delta-spark", "delta-rs"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LakeConfig(Section):
    root: str = "./lakehouse"
    engine: Engine = "auto"
    # Passed to the deltalake package for object stores (credentials are better left to the environment).
    storage_options: dict[str, str] = Field(default_factory=dict)
    vacuum_retention_hours: int = Field(default=168, ge=0)
    # How often a write decided from a snapshot is tried again when a concurrent writer commits first.
    commit_attempts: int = Field(default=20, ge=1)


class SparkConfig(Section):
    master: str = "local[*]"
    app_name: str = "marketlake"
    shuffle_partitions: int = Field(default=8, ge=1)
    driver_memory: str = "4g"
    ui: bool = False
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = "WARN"
    # Any further Spark setting, for example spark.sql.adaptive.enabled: "true".
    conf: dict[str, str] = Field(default_factory=dict)


class LandingConfig(Section):
    # Where raw files arrive (and where `generate` writes its shop); default <lake root>/landing.
    root: str | None = None


class GenerateConfig(Section):
    """The shop `generate` writes when no size arguments are given (the demo scale)."""

    users: int = Field(default=2_000, ge=10)
    items: int = Field(default=300, ge=10)
    events: int = Field(default=200_000, ge=100)
    seed: int = Field(default=42, ge=0)
    days: int = Field(default=30, ge=1, le=3660)
    dirty_rate: float = Field(default=0.01, ge=0.0, le=0.3)
    # Share of the items released during the window (truth/new_items.csv), a few of them too late for events.
    new_item_share: float = Field(default=0.1, ge=0.0, le=0.5)
    # Share of sessions with an intent: all their picks from one category, any category (truth/intent_sessions.csv).
    intent_share: float = Field(default=0.1, ge=0.0, le=0.5)
    # Folder name under the landing root.
    shop: str = "shop"


class IngestConfig(Section):
    # What `ingest` reads when no --source is given; default: the shop `generate` writes.
    source: str | None = None
    event_types: list[str] = Field(
        default_factory=lambda: ["view", "click", "add_to_cart", "purchase", "exposure", "rating"]
    )
    # An event later than the end of the run date (UTC) by more than this is quarantined as future_ts.
    future_tolerance_hours: float = Field(default=24.0, ge=0)
    # Columns dropped from users and items before anything is stored (and from quarantined raw rows).
    pii_columns: list[str] = Field(
        default_factory=lambda: [
            "email",
            "name",
            "first_name",
            "last_name",
            "full_name",
            "phone",
            "mobile",
            "address",
            "street",
            "ip",
            "ip_address",
            "birth_date",
            "date_of_birth",
        ]
    )
    # Replace user ids by a keyed hash (HMAC-SHA256); the key is read from this environment variable.
    pseudonymise_user_ids: bool = False
    pseudonym_key_env: str = "MARKETLAKE_PSEUDONYM_KEY"
    # A record with a mapped field longer than this (in UTF-8 bytes) is quarantined as field_too_long:<field>.
    max_field_bytes: int = Field(default=65_536, ge=1)
    # A run that rejects more than this share of a source's records fails and writes nothing (a source
    # mapping may set its own max_reject_rate).
    max_reject_rate: float = Field(default=0.5, ge=0, le=1)


class FeaturesConfig(Section):
    """gold.user_features (issue 4)."""

    # Events older than this many days before the run date are left out of the features.
    lookback_days: int = Field(default=365, ge=1)


class SegmentConfig(Section):
    """KMeans segments (issue 4); k searched on a sample and chosen by silhouette among stable k's (issue 21)."""

    # tenure_days separates the new customers; ctr and purchase_rate are left out: for users with few
    # sessions they take a handful of discrete values that KMeans splits into groups of their own.
    features: list[str] = Field(
        default_factory=lambda: [
            "recency_days",
            "frequency",
            "monetary",
            "views",
            "clicks",
            "carts",
            "purchases",
            "tenure_days",
        ]
    )
    # Features put through log1p before scaling: the heavy-tailed counts and money (others are only scaled).
    log_features: list[str] = Field(
        default_factory=lambda: [
            "frequency",
            "monetary",
            "avg_order_value",
            "views",
            "clicks",
            "carts",
            "purchases",
            "sessions",
            "active_days",
            "tenure_days",
        ]
    )
    # Fixed k, or null to choose k over k_min..k_max (highest silhouette among the stable k's).
    k: int | None = Field(default=None, ge=2)
    k_min: int = Field(default=2, ge=2)
    k_max: int = Field(default=8, ge=2)
    seed: int = 42
    # KMeans runs per k on the sample, with seeds seed, seed+1, ...; the run with the lowest cost is kept.
    runs: int = Field(default=3, ge=1)
    max_iter: int = Field(default=50, ge=1)
    # Users the k search runs on (chosen by a hash of user_id and seed); the final model sees everyone.
    sample_size: int = Field(default=20_000, ge=100)
    # Stability of a k: the median adjusted Rand index between the fits on the two halves of the sample,
    # over this many random halvings, each half fitted `stability_runs` times (the lowest cost kept: a single
    # run stuck in a local optimum would read as instability); a k is stable at min_stability or above.
    stability_splits: int = Field(default=3, ge=1)
    stability_runs: int = Field(default=2, ge=1)
    min_stability: float = Field(default=0.9, ge=0.0, le=1.0)
    # KMeans runs of the final fit on everyone (seeds from the chosen k's best seed on); the lowest cost kept.
    final_runs: int = Field(default=1, ge=1)


class RulesConfig(Section):
    """FPGrowth association rules (issue 4)."""

    basket: Literal["order", "session"] = "order"
    # With basket: session, the events whose items make a session's basket (exposures are left out: the
    # shop, not the shopper, picks their item).
    session_event_types: list[str] = Field(
        default_factory=lambda: ["view", "click", "add_to_cart", "purchase"], min_length=1
    )
    min_support: float = Field(default=0.01, gt=0, le=1)
    min_confidence: float = Field(default=0.2, gt=0, le=1)
    min_lift: float = Field(default=1.0, ge=0)
    top_n: int = Field(default=10, ge=1)
    # The guard: stop before fitting when an upper bound on the frequent itemsets exceeds this.
    max_itemsets: int = Field(default=1_000_000, ge=1)


SESSION_EVENT_TYPES = ["view", "click", "add_to_cart", "purchase"]


class SessionsConfig(Section):
    """The daily next-item model (issue 16): sequential rules over sessions into gold.next_items."""

    # The events whose items make a session's steps (exposures are left out: the shop chose their item).
    event_types: list[str] = Field(default_factory=lambda: list(SESSION_EVENT_TYPES), min_length=1)
    # Events without a session_id are split into sessions per user where more than this passes.
    session_gap_minutes: float = Field(default=30.0, gt=0)
    # A rule a -> b counts pairs at most this many steps apart, each weighing 1 / distance.
    steps: int = Field(default=10, ge=1, le=1000)
    # Next items kept per item, and the fewest sessions a pair must be seen in.
    top_n: int = Field(default=50, ge=1, le=10_000)
    min_sessions: int = Field(default=1, ge=1)


class RealtimeConfig(Section):
    """The real-time list (issue 16): a live session's next-item candidates blended with the daily list."""

    list_size: int = Field(default=10, ge=1, le=1000)
    # Weight of the session's candidates (score / the user's best) against the daily list's 1 / rank.
    session_weight: float = Field(default=0.7, ge=0, le=1)
    # The current session: its session_id, or for events without one, a gap longer than this ends it.
    session_gap_minutes: float = Field(default=30.0, gt=0)
    event_types: list[str] = Field(default_factory=lambda: list(SESSION_EVENT_TYPES), min_length=1)
    # Session candidates kept per user before blending.
    candidates: int = Field(default=100, ge=1, le=100_000)


class AlsSearchSpace(Section):
    """The values recommend's tuning combines (random search over their product)."""

    rank: list[int] = Field(default_factory=lambda: [32, 64], min_length=1)
    reg_param: list[float] = Field(default_factory=lambda: [0.3, 1.0], min_length=1)
    alpha: list[float] = Field(default_factory=lambda: [1.0, 3.0, 10.0], min_length=1)
    max_iter: list[int] = Field(default_factory=lambda: [10, 20], min_length=1)


class ColdStartConfig(Section):
    """Items without interactions (issue 17, marketlake.coldstart): scored from their content and merged
    into user lists by the recommend job (docs/jobs/recommend.md)."""

    enabled: bool = True
    # Active items with fewer distinct users than this in the window are cold (1: those ALS does not know).
    min_users: int = Field(default=1, ge=1)
    # Cold items per list at most; 0: none.
    max_per_list: int = Field(default=2, ge=0, le=100)
    # Ridge penalty of the regression from item content vectors to ALS factors and priors.
    ridge: float = Field(default=1.0, gt=0)
    # Share of the warm items held out as pseudo-cold to fit the blend (never the real cold items).
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    # Content vectors wider than this are refused (the regression's Gram matrix is solved on the driver).
    max_feature_dim: int = Field(default=4096, ge=1)


class ContentConfig(Section):
    """Item content features and gold.similar_items (issue 17), written by the recommend job."""

    # Block weights: with every block present, the content cosine of two items is the weighted mean of the
    # blocks' own cosines (title+tags TF-IDF, same category, same brand, same price bucket).
    title_weight: float = Field(default=1.0, ge=0)
    category_weight: float = Field(default=1.0, ge=0)
    brand_weight: float = Field(default=0.5, ge=0)
    price_weight: float = Field(default=0.25, ge=0)
    vocabulary_size: int = Field(default=5000, ge=1)  # title and tag words kept (most frequent first)
    min_document_frequency: int = Field(default=2, ge=1)  # a word of fewer items is left out
    price_buckets: int = Field(default=10, ge=2)  # price quantiles
    # gold.similar_items: top_n look-alikes per active item, one blended list per item.
    top_n: int = Field(default=10, ge=1, le=1000)
    # Hybrid score of two items that both have ALS factors: w x collaborative + (1 - w) x content with
    # w = collaborative_weight x min over the two items of users / (users + shrinkage_users); content
    # alone when either item has no history.
    collaborative_weight: float = Field(default=0.5, ge=0, le=1)
    shrinkage_users: float = Field(default=20.0, ge=0)
    # Exact top-N (blocked self-join) up to this many active items; above, same-category pairs only.
    exact_max_items: int = Field(default=50_000, ge=0)
    block_size: int = Field(default=2048, ge=16)  # items per block of the exact self-join
    # Above exact_max_items: pairs of the same category only, plus (with lsh_hash_tables > 0) pairs of
    # different categories that share every bucket of one table of BucketedRandomProjectionLSH on the ALS
    # factors (bucket length = lsh_bucket_width / sqrt(rank)). Off by default: measured weak and slow.
    lsh_hash_tables: int = Field(default=0, ge=0)
    lsh_hashes_per_table: int = Field(default=4, ge=1)
    lsh_bucket_width: float = Field(default=2.0, gt=0)
    seed: int = 17


class RecommendConfig(Section):
    """Implicit-feedback ALS recommendations (issue 5)."""

    # Interaction strength: each event adds its type's weight (types not listed add nothing), halved every
    # half_life_days of age at the end of the run date (null: no decay); the sum per user and item, through
    # log1p when strength is log1p, is the rating ALS reads (confidence = 1 + alpha x strength).
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 1.0,
            "click": 2.0,
            "add_to_cart": 4.0,
            "purchase": 8.0,
            "rating": 1.0,
        }
    )
    rating_value: bool = False  # true: a rating event weighs its weight x its rating
    half_life_days: float | None = Field(default=30.0, gt=0)
    strength: Literal["log1p", "linear"] = "log1p"
    lookback_days: int | None = Field(default=365, ge=1)
    # Output: top_n items per user; items the user has events of these types for are never recommended.
    top_n: int = Field(default=10, ge=1, le=1000)
    exclude_event_types: list[str] = Field(default_factory=lambda: ["purchase"])
    # The ALS params used when tuning is off or impossible, and the search's first candidate.
    rank: int = Field(default=32, ge=1)
    reg_param: float = Field(default=0.5, gt=0)
    alpha: float = Field(default=3.0, ge=0)
    max_iter: int = Field(default=10, ge=1, le=50)
    seed: int = 42
    # ALS user and item blocks; null: Spark's default parallelism.
    blocks: int | None = Field(default=None, ge=1)
    # Tuning: random search over `search`, scored by nDCG@k on a validation split of the training part.
    tune: bool = True
    search: AlsSearchSpace = Field(default_factory=AlsSearchSpace)
    # The search's time budget scales with the data: seconds per million interactions, at least
    # tuning_budget_min_seconds, at most tuning_budget_seconds (the cap; also --tuning-budget-seconds).
    tuning_budget_seconds: float = Field(default=300.0, gt=0)
    tuning_budget_min_seconds: float = Field(default=180.0, gt=0)
    tuning_budget_seconds_per_million: float = Field(default=100.0, ge=0)
    tuning_max_trials: int = Field(default=8, ge=1)
    # Trials that run whatever the budget: a busy machine must not end the search after one candidate.
    tuning_min_trials: int = Field(default=3, ge=1)
    # Searched params are reused (from ops.models) until the search is more than retune_days old, or the
    # interaction count moved by more than the share retune_change since, or the tuning settings changed,
    # or retune is set (--retune).
    retune_days: int = Field(default=7, ge=0)
    retune_change: float = Field(default=0.2, ge=0)
    retune: bool = False
    validation_fraction: float = Field(default=0.25, gt=0, lt=1)
    # Fewer validation users than this: no search (too few to tell candidates apart), the params above.
    tuning_min_users: int = Field(default=100, ge=1)
    # Evaluation on a held-out split: random (a share of each user's items) or time (the last test_days).
    evaluate: bool = True
    split: Literal["random", "time"] = "random"
    test_fraction: float = Field(default=0.25, gt=0, lt=1)
    test_days: int = Field(default=7, ge=1)
    k: int = Field(default=10, ge=1, le=100)
    # Fewer users with held-out items than this: no evaluation (logged).
    min_users: int = Field(default=10, ge=1)
    cold_start: ColdStartConfig = Field(default_factory=ColdStartConfig)
    content: ContentConfig = Field(default_factory=ContentConfig)


PropensityModel = Literal["logistic_regression", "random_forest", "gbt", "bgnbd"]
PROPENSITY_MODELS: tuple[PropensityModel, ...] = ("logistic_regression", "random_forest", "gbt", "bgnbd")
PROPENSITY_BASELINE: PropensityModel = "bgnbd"


class PropensityConfig(Section):
    """Who will buy within a horizon (issue 15): MLlib classifiers against a BG/NBD baseline."""

    # Days after the run date the scores predict; training labels come from the same span before it.
    horizon_days: int = Field(default=30, ge=1, le=3650)
    # Models compared on the validation cutoff; the one with the best average precision scores users.
    # bgnbd is the baseline and may win too.
    models: list[PropensityModel] = Field(default_factory=lambda: list(PROPENSITY_MODELS), min_length=1)
    calibration: Literal["isotonic", "platt"] = "isotonic"
    seed: int = 42
    reg_param: float = Field(default=0.01, ge=0)  # logistic regression (features standardised)
    trees: int = Field(default=100, ge=1, le=1000)  # random forest
    max_depth: int = Field(default=6, ge=1, le=20)  # random forest
    gbt_iterations: int = Field(default=30, ge=1, le=1000)
    gbt_depth: int = Field(default=3, ge=1, le=20)
    gbt_step: float = Field(default=0.2, gt=0, le=1)
    min_instances_per_node: int = Field(default=20, ge=1)  # both tree models


class CampaignConfig(Section):
    """One campaign of `activate` (issue 6): who is targeted, with what offer, through which channel."""

    # Used in gold.campaign_audience, in the export folder's name and in the control-group hash.
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    description: str = ""
    # Targets: users whose segment_name (gold.user_segments) or rfm_label (gold.user_features) is listed.
    segments: list[str] = Field(default_factory=list)
    rfm_labels: list[str] = Field(default_factory=list)
    # Filters over those users (or, without segments and rfm_labels, over everyone): their decile of
    # gold.purchase_propensity is listed (1: the 10% most likely buyers ... 10), and no purchase in the
    # no_purchase_days ending with the run date (days_since_purchase > N, or no purchase at all).
    propensity_deciles: list[int] = Field(default_factory=list)
    no_purchase_days: int | None = Field(default=None, ge=1)
    # Offer per target (a segment name or an RFM label; the segment's offer wins when both match).
    offers: dict[str, str] = Field(default_factory=dict)
    default_offer: str | None = None
    channel: Literal["email", "ads", "push", "sms", "direct_mail"] = "email"
    # Most users in the audience (treatment and control together); null: no cap.
    max_audience: int | None = Field(default=None, ge=1)
    control_share: float = Field(default=0.1, ge=0, lt=1)
    items: int = Field(default=5, ge=0, le=50)
    cross_sell: int = Field(default=3, ge=0, le=50)
    # Export column -> source column, from silver.users or else from activate.contacts (PII lives only there).
    export_columns: dict[str, str] = Field(default_factory=dict)

    @field_validator("propensity_deciles")
    @classmethod
    def _deciles(cls, deciles: list[int]) -> list[int]:
        wrong = [d for d in deciles if not 1 <= d <= 10]
        if wrong:
            raise ValueError(
                f"deciles run from 1 (the most likely buyers) to 10: {', '.join(map(str, wrong))} is not one"
            )
        return deciles

    @property
    def by_propensity(self) -> bool:
        """Whether the campaign reads gold.purchase_propensity."""
        return bool(self.propensity_deciles)

    @model_validator(mode="after")
    def _targets_and_offers(self) -> CampaignConfig:
        targets = [*self.segments, *self.rfm_labels]
        if not targets and not self.propensity_deciles:
            raise ValueError(
                f"campaign {self.id} targets nobody: give segments, rfm_labels or propensity_deciles"
            )
        stray = [key for key in self.offers if key not in targets]
        if stray:
            raise ValueError(f"campaign {self.id}: offers for {', '.join(stray)}, which it does not target")
        bare = [target for target in targets if target not in self.offers]
        if bare and self.default_offer is None:
            raise ValueError(f"campaign {self.id}: no offer for {', '.join(bare)} and no default_offer")
        if not targets and self.default_offer is None:
            raise ValueError(
                f"campaign {self.id}: targets by propensity_deciles only, so needs a default_offer"
            )
        return self


class ProfileExportConfig(Section):
    """The user-profile exports of `activate` (issue 20): one flat row per user with recommendations, as
    size-limited CSV files and as a cloud-data-ingestion table (UPDATED_AT, EXTERNAL_ID, PAYLOAD)."""

    enabled: bool = True
    # item_1..item_N and item_1_title..item_N_title; null: recommend.top_n.
    items: int | None = Field(default=None, ge=0, le=100)
    # Each CSV file stays at or below this many bytes, its header included (500 MB, decimal).
    max_file_bytes: int = Field(default=500_000_000, ge=1024)


class ActivateConfig(Section):
    """Campaign audiences and their exports (issue 6)."""

    # Part of the control-group hash: changing it re-draws every campaign's groups.
    salt: str = "marketlake-groups-v1"
    # A users file (csv, parquet or json; user_id plus contact columns) that exports may take PII columns
    # from; read only while exporting, never stored in the lake. Default: the shop's users.csv.
    contacts: str | None = None
    campaigns: list[CampaignConfig] = Field(default_factory=list)
    profiles: ProfileExportConfig = Field(default_factory=ProfileExportConfig)

    @model_validator(mode="after")
    def _unique_ids(self) -> ActivateConfig:
        ids = [campaign.id for campaign in self.campaigns]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"campaign ids must be unique: {', '.join(repeated)} repeated")
        return self


class ExperimentPlan(Section):
    """One experiment's design: its control variant and planned split (share per variant, summing to 1)."""

    control: str | None = None  # null: experiment.control
    split: dict[str, float] | None = None  # null: an equal split over the variants seen

    @model_validator(mode="after")
    def _split_is_a_distribution(self) -> ExperimentPlan:
        if self.split is not None:
            if len(self.split) < 2 or any(share <= 0 for share in self.split.values()):
                raise ValueError("split needs two or more variants, each with a share above 0")
            if abs(sum(self.split.values()) - 1) > 1e-6:
                raise ValueError(f"split shares must sum to 1 (they sum to {sum(self.split.values()):g})")
            if self.control is not None and self.control not in self.split:
                raise ValueError(f"control {self.control!r} is not a variant of the split")
        return self


class ValueCap(Section):
    """Capping (winsorising) of each user's value before CUPED and the tests: one large basket must not
    decide a revenue result. percentile: the `value` quantile of the experiment's users (all variants
    together; with ignore_zeros, of the users with a non-zero value), computed per experiment; absolute:
    `value` itself. Only the upper tail is capped."""

    method: Literal["none", "percentile", "absolute"] = "none"
    value: float | None = None
    ignore_zeros: bool = False

    @model_validator(mode="after")
    def _value_fits_the_method(self) -> ValueCap:
        if self.method == "percentile" and not (self.value is not None and 0 < self.value < 1):
            raise ValueError("a percentile cap needs a value between 0 and 1 (for example 0.99)")
        if self.method == "absolute" and not (self.value is not None and self.value > 0):
            raise ValueError("an absolute cap needs a value above 0")
        return self


class ExperimentConfig(Section):
    """A/B test results from exposures in silver.events or a CSV (issue 6); sequential tests, capping
    (issue 19)."""

    # A user converts when an event of this type follows their first exposure within window_hours and,
    # with same_session, in the exposure's session (the generator's metric: session conversion).
    conversion_event: str = "purchase"
    window_hours: float | None = Field(default=24.0, gt=0)  # null: no time limit (to the end of the run date)
    same_session: bool = True
    # Experiments with an exposure in the lookback_days ending on the run date are analysed (all their
    # exposures up to the run date count).
    lookback_days: int = Field(default=90, ge=1)
    control: str = "control"
    experiments: dict[str, ExperimentPlan] = Field(default_factory=dict)
    alpha: float = Field(default=0.05, gt=0, lt=1)  # two-sided tests, (1 - alpha) intervals
    srm_threshold: float = Field(default=0.001, gt=0, lt=1)  # sample-ratio mismatch below this p-value
    # statsmodels multipletests method across a metric's comparisons with control (more than two variants).
    correction: Literal["holm", "bonferroni", "sidak", "holm-sidak", "hommel", "fdr_bh", "fdr_by"] = "holm"
    value_metric: bool = True  # revenue_per_user rows (Welch's t-test)
    # CUPED: adjust with the user's conversions (sessions with a conversion event) and revenue in the
    # cuped_days before their first exposure; adds rows with cuped = true.
    cuped: bool = True
    cuped_days: int = Field(default=14, ge=1)
    # Decisions: fewer users than this in the control or the variant: keep running. Not significant: do not
    # ship once both arms have the users needed to detect min_detectable_lift (relative) with this power.
    min_users: int = Field(default=100, ge=2)
    min_detectable_lift: float = Field(default=0.1, gt=0)
    power: float = Field(default=0.8, gt=0, lt=1)
    # The test behind the decision. sequential: always-valid p-values and intervals (safe to look every day);
    # fixed: the fixed-horizon tests, valid only when read once at the planned end. Both are in the table.
    test: Literal["sequential", "fixed"] = "sequential"
    # The sequential interval is narrowest when the experiment has this many users (all variants together);
    # GrowthBook's default. Set it near the planned size (the `plan` job gives it).
    sequential_tuning_users: int = Field(default=5000, ge=1)
    value_cap: ValueCap = Field(default_factory=ValueCap)


class ReportConfig(Section):
    """The HTML report (issue 6); its currency (issue 19)."""

    top_rules: int = Field(default=15, ge=1, le=200)
    # ISO 4217 code of the shop's amounts (the lake stores bare numbers), shown on every amount the report
    # writes. Here and not in a shop-wide section: the report is the only place that writes an amount for
    # a person to read.
    currency: str = "EUR"

    @field_validator("currency")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        code = value.strip().upper()
        if not (len(code) == 3 and code.isascii() and code.isalpha()):
            raise ValueError("must be an ISO 4217 code of three letters, such as EUR, USD or CHF")
        return code


class ServeConfig(Section):
    """The `serve` HTTP service (issue 20): recommendations from in-memory snapshots of gold tables."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # How often the Delta logs are checked for a new version (a new version is then loaded in the background).
    poll_seconds: float = Field(default=1.0, gt=0, le=3600)
    # The API key is read from this environment variable; unset or empty: no key is asked for.
    api_key_env: str = "MARKETLAKE_SERVE_API_KEY"
    # ?n= of /recommendations: the default, and the most a caller may ask for.
    default_n: int = Field(default=10, ge=1)
    max_n: int = Field(default=100, ge=1, le=10_000)
    # Items kept in the popular list that unknown users get.
    popular_items: int = Field(default=100, ge=1, le=10_000)
    # A longer id (in UTF-8 bytes) is refused with 422 without a lookup.
    max_id_bytes: int = Field(default=256, ge=1, le=65_536)

    @model_validator(mode="after")
    def _default_within_max(self) -> ServeConfig:
        if self.default_n > self.max_n:
            raise ValueError(f"default_n ({self.default_n}) is above max_n ({self.max_n})")
        return self


DAY_TYPES = ("date", "timestamp")


class RetentionConfig(Section):
    """What the housekeeping job keeps how long (issue 18), in days; null: kept for ever. A table's days are
    its own entry in `tables`, else its layer's. A table partitioned by a date (ingest_date, event_date,
    as_of_date) loses whole partitions older than the run date minus its days; a table without one loses
    rows by the column named in `date_columns`, or nothing."""

    layers: dict[str, int | None] = Field(
        default_factory=lambda: {"bronze": 90, "quarantine": 90, "silver": None, "gold": 400, "ops": None}
    )
    tables: dict[str, int | None] = Field(
        default_factory=lambda: dict[str, int | None]({catalog.JOB_RUNS.name: 400})
    )
    # Unpartitioned tables expire rows by this date or timestamp column (rows with a null value are kept).
    date_columns: dict[str, str] = Field(default_factory=lambda: {catalog.JOB_RUNS.name: "run_date"})
    # Folders of a run date under the lake root: campaign and profile exports, HTML reports.
    exports_days: int | None = Field(default=30, ge=1)
    reports_days: int | None = Field(default=400, ge=1)
    # delta.logRetentionDuration of every table: older log entries go once a checkpoint is past them.
    log_retention_hours: int = Field(default=720, ge=0)
    # A partition (or an unpartitioned table) is compacted when it has more files than this ...
    compact_max_files: int = Field(default=8, ge=1)
    # ... or at least two files averaging under this many bytes; compaction aims at files of target bytes.
    compact_small_file_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    compact_target_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)

    @field_validator("layers", "tables")
    @classmethod
    def _days_positive(cls, value: dict[str, int | None]) -> dict[str, int | None]:
        for name, days in value.items():
            if days is not None and days < 1:
                raise ValueError(f"{name}: days must be at least 1, or null to keep for ever (got {days})")
        return value

    @model_validator(mode="after")
    def _known_tables(self) -> RetentionConfig:
        layers = {t.layer for t in catalog.TABLES}
        for layer in self.layers:
            if layer not in layers:
                raise ValueError(f"layers: no layer {layer!r}; layers: {', '.join(sorted(layers))}")
        for name in [*self.tables, *self.date_columns]:
            if name not in catalog.BY_NAME:
                raise ValueError(f"no table {name!r} in the catalog")
        for name, column in self.date_columns.items():
            table = catalog.table(name)
            types = dict(table.columns)
            if table.partition_by or types.get(column) not in DAY_TYPES:
                raise ValueError(
                    f"date_columns: {name}.{column} must be a date or timestamp column of an unpartitioned "
                    "table (a partitioned table expires by its partition)"
                )
        for name, days in self.tables.items():
            table = catalog.table(name)
            if days is not None and table.date_partition is None and name not in self.date_columns:
                raise ValueError(
                    f"tables: {name} has no date partition; name a column in date_columns to expire it by"
                )
        return self

    def days(self, table: str) -> int | None:
        """The days `table` (layer.name) is kept for; None: for ever."""
        if table in self.tables:
            return self.tables[table]
        return self.layers.get(table.split(".")[0])


class PrivacyConfig(Section):
    """Erasure (the erase job) and its suppression list (docs/jobs/erase.md, docs/privacy.md)."""

    # The key of the keyed hashes in ops.erasures (never the id itself): this environment variable, or else
    # the key file, generated on first use (mode 600). Both must stay outside the lake: a key beside the
    # hashes would let anyone holding the lake test guesses against them.
    key_env: str = "MARKETLAKE_ERASURE_KEY"
    key_file: str = "~/.config/marketlake/erasure.key"
    # Files no commit names (a write that died) are deleted by an erasure once older than this; a younger
    # one may belong to a write still running beside it, whose commit would then name a missing file.
    orphan_hours: int = Field(default=1, ge=0)


class KafkaSourceConfig(Section):
    """The stream's Kafka source (needs the spark-sql-kafka jars on the classpath)."""

    bootstrap_servers: str = ""
    topic: str = ""
    # Any other option of Spark's Kafka source (kafka.security.protocol, ...); secrets from the environment.
    options: dict[str, str] = Field(default_factory=dict)


class StreamConfig(Section):
    """The `stream` job (issue 16): Structured Streaming ingest with exactly-once commits."""

    # Names the stream: its Delta application id (marketlake-stream:<id>) and its checkpoint folder.
    id: str = Field(default="events", pattern=r"^[A-Za-z0-9_-]+$")
    # files: new files in a landing folder; kafka: a topic (values are the records, one JSON event each).
    source: Literal["files", "kafka"] = "files"
    path: str | None = None  # default: the events of the shop generate writes, <landing root>/<shop>/events
    mapping: str = "shop_events"
    trigger_seconds: float = Field(default=0.0, ge=0)  # 0: the next micro-batch as soon as one ends
    max_files_per_trigger: int = Field(default=1000, ge=1)
    # Every this many micro-batches: compact the partitions they touched, checkpoint and expire the log.
    compact_every_batches: int = Field(default=50, ge=1)
    log_retention_hours: int = Field(default=168, ge=0)
    realtime: bool = True  # merge gold.realtime_recommendations for the users active in each micro-batch
    kafka: KafkaSourceConfig = Field(default_factory=KafkaSourceConfig)


class Config(Section):
    lake: LakeConfig = Field(default_factory=LakeConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    landing: LandingConfig = Field(default_factory=LandingConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig)
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    activate: ActivateConfig = Field(default_factory=ActivateConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    propensity: PropensityConfig = Field(default_factory=PropensityConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    @model_validator(mode="after")
    def _log_outlives_vacuum(self) -> Config:
        # Vacuum learns which files were removed when from the log: entries it still needs must not go first.
        if self.retention.log_retention_hours < self.lake.vacuum_retention_hours:
            raise ValueError(
                f"retention.log_retention_hours ({self.retention.log_retention_hours}) is below "
                f"lake.vacuum_retention_hours ({self.lake.vacuum_retention_hours})"
            )
        return self

    stream: StreamConfig = Field(default_factory=StreamConfig)

    def with_lake_root(self, root: str) -> Config:
        return self.model_copy(update={"lake": self.lake.model_copy(update={"root": root})})


# Named environment variables and the key each overrides.
ENV_OVERRIDES = {
    "MARKETLAKE_LAKE": ("lake", "root"),
    "MARKETLAKE_ENGINE": ("lake", "engine"),
    "MARKETLAKE_MASTER": ("spark", "master"),
}
ENV_PREFIX = "MARKETLAKE__"


def default_config_text() -> str:
    return resources.files("marketlake").joinpath("local.yaml").read_text()


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Load the configuration once: embedded default, then `path`, then the environment."""
    raw = _parse_yaml(default_config_text(), "embedded default")
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        raw = _deep_merge(raw, _parse_yaml(file.read_text(), str(file)))
    raw = _deep_merge(raw, _environment_overrides(os.environ if environ is None else environ))
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def load_yaml(text: str, source: str) -> Any:
    """`text` parsed as YAML, or a one-line ConfigError naming `source` (a file, a mapping)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    data = load_yaml(text, source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    return data


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, value in sorted(environ.items()):
        if name in ENV_OVERRIDES:
            keys: tuple[str, ...] = ENV_OVERRIDES[name]
        elif name.startswith(ENV_PREFIX):
            keys = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
            value = yaml.safe_load(value) if value else value
        else:
            continue
        node = overrides
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return overrides


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class Problem:
    """The first thing wrong in a ValidationError: the key (dotted; "" for the whole model), whether it is
    an unknown key, pydantic's message and the value given."""

    key: str
    unknown: bool
    message: str
    given: Any

    @classmethod
    def first(cls, exc: ValidationError) -> Problem:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        return cls(key, error["type"] == "extra_forbidden", error["msg"], error.get("input"))

    def __str__(self) -> str:
        return "unknown key" if self.unknown else f"{self.message} (got {self.given!r})"


def _describe(exc: ValidationError, path: Any) -> str:
    problem = Problem.first(exc)
    message = (
        f"unknown key '{problem.key}'" if problem.unknown else f"bad value for '{problem.key}': {problem}"
    )
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"config{f' {path}' if path else ''}: {message}{more}"


SectionT = TypeVar("SectionT", bound=Section)


def with_overrides(section: SectionT, overrides: Mapping[str, Any]) -> SectionT:
    """A config section with a job's command-line values over it (key: the option's dest; None: not
    given), validated as the section is when loaded. A bad value is a UsageError naming the option:
    `--min-support: Input should be greater than 0 (got 0.0)`."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return section
    try:
        return type(section).model_validate({**section.model_dump(), **given})
    except ValidationError as exc:
        problem = Problem.first(exc)
        option = "--" + problem.key.split(".")[0].replace("_", "-")
        raise UsageError(f"{option}: {problem}") from None


def landing_root(config: Config) -> str:
    """Where raw files arrive: landing.root, or <lake root>/landing."""
    if config.landing.root:
        return config.landing.root.rstrip("/")
    root = config.lake.root
    if "://" not in root and not root.startswith("file:"):
        root = os.path.abspath(root)
    return f"{root.rstrip('/')}/landing"


def shop_root(config: Config) -> str:
    """The folder `generate` writes its shop to by default, and `ingest` reads by default."""
    return f"{landing_root(config)}/{config.generate.shop}"

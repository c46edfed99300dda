"""A synthetic shop of any size, written as raw files the way a shop's tracking drops them, with the truth
planted in it written beside, so that tests can measure how much of that truth each job recovers.

`generate_shop(spark, spec, out_dir)` writes::

    out_dir/
      events/date=YYYY-MM-DD/part-NNNNN.json   newline-delimited JSON, one file per day and generator task
      users.csv        user_id, signup_date, age, gender, region, email   (email: fake PII, only here)
      items.csv        item_id, category, brand, price, title, active
      truth/
        personas.csv        user_id, persona
        taste_groups.csv    user_id, taste_group, categories ("books|toys": the group's categories)
        bundles.csv         bundle_id, anchor_item_id, item_ids ("i00001|i00007|i00012"), size, rate
        experiment.json     the experiment: variants, planned split, base rate, true lift, realised counts
        dirty_counts.json   dirty lines per kind, late events, and the other counts generate_shop returns
        dirty/date=YYYY-MM-DD/part-NNNNN.json   one JSON line per dirty line: kind, reason, event_id,
                            user_id, file (the events file holding it, relative to out_dir), raw (the line)

Events. Each line is one JSON object with `event_id` (24 hex digits), `user_id` ("u000123"), `item_id`
("i00042"), `event_type` (view, click, add_to_cart, purchase, exposure), `ts` (ISO-8601 in the user's zone,
milliseconds, e.g. "2024-06-01T10:15:00.123+02:00"; zones +00:00, Z, +01:00, +02:00, -05:00), `session_id`,
`order_id` (purchases), `quantity` (add_to_cart and purchase, >= 1), `price` (list price on views, clicks
and carts; the paid unit price on purchases, sometimes discounted), `channel` (web, app, email, ads),
`campaign_id` (email and ads sessions), and `experiment_id`, `variant` on exposures (whose item_id is the
first item viewed in that session). A field without a value is left out of the line (no explicit nulls).
Events span `spec.days` days ending on `spec.end_date`; their number is within about 1% of `spec.events`
(`events` in the counts, dirty lines included; `events` = `valid_events` + `dirty`).
A file's date is the UTC date on which the line arrived: the UTC date of `ts` for most lines, the next day
for late events (about 0.5% of clean events), and for dirty lines see below. Within a file lines are in
arrival order. `NNNNN` is the generator task (a fixed range of users); the number of tasks follows from
the spec alone (about one per 250,000 events, at least 2), so the same spec gives the same files, byte for
byte. Every user's events come from a random stream seeded by (seed, user index), so they do not depend
on how users are grouped into tasks.

Behaviour. Users visit in sessions (one `session_id`). A session views a few items; some views are
clicked, some clicks added to the cart; a converting session ends with one order (`order_id`) with a
purchase line per cart item (quantity = the cart's quantity, price = list price or 5-20% less). Items come
mostly (85%) from the user's taste group's categories, by popularity within a category.

Truth:

- personas.csv — every user has one of five personas with distinct recency, frequency, spend and
  browse-to-buy behaviour (`PERSONAS`; shares 15/25/15/20/25%): champions (at least 4 orders, about 17 in
  30 days, large baskets, few views per order, active in the last 2 days), loyal (at least 2 orders, about
  5, active in the last 4 days), new (signed up in the last fifth of the window, few events, at least one
  order), at_risk (at least one order, 2-3 on average, all in the first 40% of the window, silent since) and
  window_shoppers (long browsing sessions, few clicks, abandoned carts, never an order). At the demo scale,
  KMeans (k=5) on log1p-scaled, standardised recency, frequency, monetary, views, clicks, carts,
  purchases, ctr and purchase rate recovers them with an adjusted Rand index of about 0.98 (the
  lowest-cost run of a few seeds; single runs can stop in a local optimum).
- taste_groups.csv — users in a group view and buy mostly (85% of picks) items of the group's categories.
- bundles.csv — 2-3 items of one category; when an order contains the anchor (first item), the other
  items are added to the same order with probability `rate` (as an add_to_cart and a purchase), so the
  share of anchor orders holding the whole bundle is about `rate` (a little more from organic purchases).
- experiment.json — one experiment over the last 14 days: 70% of the users with a session then are exposed
  once, at the start of their first session in the window (later sessions may repeat the exposure with the
  same variant); variant treatment with the planned probability 0.5. The metric is session conversion: the
  session of a user's first exposure (same `session_id`) holds a purchase. Treatment multiplies each user's
  conversion probability by 1 + `true_relative_lift`; `base_conversion_rate` is the expected control rate
  of the exposed population. Events of that session are never made dirty. `realised` gives the counts.
- Dirty lines, about `dirty_rate` of all lines, in equal parts (`DIRTY_KINDS`, with the quarantine reason):
  malformed_json (truncated JSON or an HTML error page; `malformed_json`), missing_field (user_id,
  item_id, event_type or ts left out; `missing:<field>`), unknown_event_type (`unknown_event_type:<type>`),
  negative_price (`negative_price`), unparseable_ts (`unparseable_ts`), future_ts (a ts after end_date;
  `future_ts`) — each of these replaces a clean event and keeps its file date — and exact_resend (the
  same line again; `exact_duplicate`, to be dropped as a duplicate rather than quarantined) and
  conflicting_duplicate (the same event_id with a slightly earlier ts, a higher price or another channel;
  `conflicting_duplicate`) — each of these adds a line that arrives seconds to minutes after the clean
  original, or a day later (then in the next day's file). The original always arrives first.

The driver builds only the small tables (items, users, personas, per-user event budgets); events are made
by `mapInArrow` tasks over user ranges and written by Spark, so memory stays bounded at any size.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from marketlake.errors import UsageError

if TYPE_CHECKING:  # imported where used: the Python workers that run the generator need none of the lake
    from marketlake.lake.files import Files

DEFAULT_END_DATE = dt.date(2024, 6, 30)
EVENTS_PER_TASK = 250_000

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "exposure")
VIEW, CLICK, CART, PURCHASE, EXPOSURE = range(5)
EVENT_FIELDS = (
    "event_id", "user_id", "item_id", "event_type", "ts", "session_id", "order_id", "quantity", "price",
    "channel", "campaign_id", "experiment_id", "variant",
)  # fmt: skip
REQUIRED_FIELDS = ("user_id", "item_id", "event_type", "ts")
CHANNELS = ("web", "app", "email", "ads")
CAMPAIGNS = ("cmp-newsletter", "cmp-spring-sale", "cmp-retarget", "cmp-new-arrivals", "cmp-loyalty",
             "cmp-search")  # fmt: skip

DIRTY_KINDS = (
    "malformed_json", "missing_field", "unknown_event_type", "negative_price", "unparseable_ts", "future_ts",
    "exact_resend", "conflicting_duplicate",
)  # fmt: skip
MALFORMED, MISSING, UNKNOWN, NEGATIVE, UNPARSEABLE, FUTURE, RESEND, CONFLICT = range(len(DIRTY_KINDS))
UNKNOWN_TYPES = ("wishlist", "share", "compare", "page_ping")
BAD_TIMESTAMPS = ("not-a-timestamp", "2024-13-45T25:61:00+00:00", "yesterday 10:15", "31/02/2024 25:99")
ERROR_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>"
LATE_RATE = 0.005

CATEGORIES = ("electronics", "books", "fashion", "home", "beauty", "sports", "toys", "grocery", "garden",
              "auto")  # fmt: skip
BASE_PRICES = (80.0, 20.0, 45.0, 55.0, 25.0, 50.0, 30.0, 15.0, 35.0, 60.0)
BRANDS = ("Acme", "Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Soylent",
          "Tyrell", "Wonka", "Cyberdyne")  # fmt: skip
ADJECTIVES = ("Classic", "Pro", "Lite", "Max", "Eco", "Mini", "Plus", "Ultra")
REGIONS = ("north", "south", "east", "west", "central")
REGION_P = (0.25, 0.2, 0.2, 0.2, 0.15)
GENDERS = ("F", "M", "X")
GENDER_P = (0.49, 0.49, 0.02)
FIRST_NAMES = ("alex", "sam", "maria", "li", "noah", "emma", "omar", "yuki", "lena", "ivan", "zoe", "ravi")
LAST_NAMES = ("smith", "garcia", "chen", "novak", "kowalski", "rossi", "silva", "khan", "meyer", "dubois")
# (suffix written after the local time, offset in minutes)
ZONES = (("+00:00", 0), ("Z", 0), ("+01:00", 60), ("+02:00", 120), ("-05:00", -300))
ZONE_P = (0.5, 0.15, 0.1, 0.17, 0.08)
# Session starts by hour of the day (UTC); nothing starts at 23h so that sessions rarely cross midnight.
HOUR_WEIGHTS = np.array([1, .5, .3, .2, .2, .3, .6, 1.2, 2, 2.5, 2.8, 3, 3.2, 3, 2.8, 2.8, 3, 3.5, 4.5, 5,
                         4.5, 3.5, 2, 0])  # fmt: skip
HOUR_P = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()
DAY_MS = 86_400_000
VIEW_GAP_MS = 40_000
MAX_VIEW_GAP_MS = 300_000
DISCOUNTS = np.array([0.05, 0.10, 0.15, 0.20])
DISCOUNT_P = 0.2
TASTE_STRENGTH = 0.85
POPULARITY_EXPONENT = 0.8
BUDGET_SHAPE = 30.0  # gamma noise on per-user event budgets (coefficient of variation 0.18)

EXPERIMENT_ID = "exp-checkout-redesign"
EXPERIMENT_DAYS = 14
EXPOSED_SHARE = 0.7
TREATMENT_SHARE = 0.5
TRUE_RELATIVE_LIFT = 0.3
REPEAT_EXPOSURE_P = 0.3

_DRIVER_STREAM, _USER_STREAM = 1, 2


@dataclass(frozen=True)
class ShopSpec:
    """What to generate. `events` is the number of event lines to write, dirty lines included (the result
    is within about 1% of it); events span `days` days ending on `end_date`."""

    users: int
    items: int
    events: int
    seed: int
    days: int = 30
    dirty_rate: float = 0.01
    end_date: dt.date = DEFAULT_END_DATE

    DEMO: ClassVar[ShopSpec]

    @classmethod
    def demo(cls, **overrides: Any) -> ShopSpec:
        """The demo scale of `make demo`: 2,000 users, 300 items, 200,000 events over 30 days, seed 42."""
        return dataclasses.replace(cls.DEMO, **overrides)

    @property
    def start_date(self) -> dt.date:
        return self.end_date - dt.timedelta(days=self.days - 1)

    def validate(self) -> None:
        """Raise UsageError naming the first field out of range."""
        checks = [
            (self.users >= 10, f"users must be at least 10, got {self.users}"),
            (self.items >= 10, f"items must be at least 10, got {self.items}"),
            (self.events >= 10 * self.users, f"events must be at least 10 per user, got {self.events}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (1 <= self.days <= 3660, f"days must be between 1 and 3660, got {self.days}"),
            (0.0 <= self.dirty_rate <= 0.3, f"dirty_rate must be between 0 and 0.3, got {self.dirty_rate}"),
            (isinstance(self.end_date, dt.date), f"end_date must be a date, got {self.end_date!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


ShopSpec.DEMO = ShopSpec(users=2_000, items=300, events=200_000, seed=42)


@dataclass(frozen=True)
class Persona:
    """How a kind of customer behaves; the window fractions are of the whole `days` window."""

    name: str
    share: float  # of users
    weight: float  # relative number of events per user
    active_from: float  # sessions start within [active_from, active_to) of the window
    active_to: float
    recent_days: int  # one session within the last N days (0: none forced)
    views: float  # mean views per session
    p_click: float  # per view
    p_cart: float  # per click
    p_convert: float  # per session
    extra_quantity: float  # quantity = 1 + Poisson(extra_quantity)
    channel_p: tuple[float, float, float, float]  # web, app, email, ads
    age_mean: float
    min_orders: int = 0  # this many sessions always convert
    signup_recent: bool = False  # signed up within the window

    @property
    def events_per_session(self) -> float:
        browse = self.views * (1 + self.p_click + self.p_click * self.p_cart)
        return browse + self.p_convert * max(1.0, self.views * self.p_click * self.p_cart) * 1.3


PERSONAS = (
    Persona("champions", 0.15, 2.5, 0.0, 1.0, 2, 3.0, 0.7, 0.6, 0.65, 0.8, (0.3, 0.5, 0.15, 0.05), 38,
            min_orders=4),
    Persona("loyal", 0.25, 1.2, 0.0, 1.0, 4, 4.0, 0.5, 0.5, 0.35, 0.2, (0.45, 0.35, 0.15, 0.05), 45,
            min_orders=2),
    Persona("new", 0.15, 0.35, 0.8, 1.0, 0, 4.0, 0.75, 0.45, 0.45, 0.1, (0.35, 0.15, 0.1, 0.4), 29,
            min_orders=1, signup_recent=True),
    Persona("at_risk", 0.20, 0.7, 0.0, 0.4, 0, 5.0, 0.45, 0.5, 0.4, 0.3, (0.5, 0.3, 0.15, 0.05), 50,
            min_orders=1),
    Persona("window_shoppers", 0.25, 1.4, 0.0, 1.0, 0, 12.0, 0.25, 0.08, 0.0, 0.0, (0.5, 0.2, 0.05, 0.25),
            33),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Driver side: the small tables


@dataclass(frozen=True)
class Catalog:
    item_ids: np.ndarray  # str
    category: np.ndarray  # int, index into categories
    brand: np.ndarray  # str
    price: np.ndarray  # float
    title: np.ndarray  # str
    active: np.ndarray  # bool
    popularity: np.ndarray  # float, within-category weight (0 for inactive items)
    categories: tuple[str, ...]


@dataclass(frozen=True)
class Bundles:
    members: np.ndarray  # int (bundles, 3), item indices, anchor first, -1 padded
    rate: np.ndarray  # float (bundles,)


@dataclass(frozen=True)
class Population:
    user_ids: np.ndarray  # str
    persona: np.ndarray  # int, index into PERSONAS
    group: np.ndarray  # int, taste group
    group_categories: np.ndarray  # int (groups, 2), category indices
    budget: np.ndarray  # int, planned events per user
    signup_day: np.ndarray  # int, day index in the window (negative: before it)
    zone: np.ndarray  # int, index into ZONES
    age: np.ndarray
    gender: np.ndarray
    region: np.ndarray
    email: np.ndarray


def _ids(prefix: str, n: int, min_width: int) -> np.ndarray:
    width = max(min_width, len(str(n - 1)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)])


def build_catalog(spec: ShopSpec, rng: np.random.Generator) -> Catalog:
    """Items spread evenly over up to 10 categories, each with a popularity order and a few brands."""
    n_cat = min(len(CATEGORIES), max(2, spec.items // 5))
    category = rng.permutation(np.arange(spec.items) % n_cat)
    base = np.array(BASE_PRICES[:n_cat])[category]
    price = np.maximum(0.99, np.round(base * rng.lognormal(0.0, 0.4, spec.items), 2))
    offset = rng.integers(0, 4, spec.items)
    brand = np.array(BRANDS)[(3 * category + offset) % len(BRANDS)]
    adjective = np.array(ADJECTIVES)[rng.integers(0, len(ADJECTIVES), spec.items)]
    item_ids = _ids("i", spec.items, 5)
    names = np.array(CATEGORIES)[category]
    title = np.array(
        [f"{b} {a} {c} {i[1:]}" for b, a, c, i in zip(brand, adjective, names, item_ids, strict=True)]
    )
    active = rng.random(spec.items) >= 0.05
    popularity = np.zeros(spec.items)
    for c in range(n_cat):
        members = np.flatnonzero(category == c)
        ranked = members[rng.permutation(len(members))]
        active[ranked[:2]] = True  # every category keeps items to sell
        popularity[ranked] = (np.arange(len(ranked)) + 1.0) ** -POPULARITY_EXPONENT
    popularity[~active] = 0.0
    return Catalog(item_ids, category, brand, price, title, active, popularity, CATEGORIES[:n_cat])


def build_bundles(catalog: Catalog, rng: np.random.Generator) -> Bundles:
    """Disjoint bundles of 2-3 active items of one category; the anchor is the category's most popular
    unused item, so that its orders are frequent enough to measure the bundle."""
    n_items = len(catalog.item_ids)
    wanted = int(np.clip(n_items // 15, 2, 20))
    used = ~catalog.active
    members, rates = [], []
    order = rng.permutation(len(catalog.categories))
    for c in np.tile(order, wanted):
        free = np.flatnonzero((catalog.category == c) & ~used)
        size = int(rng.integers(2, 4))
        if len(free) < 3:
            continue
        free = free[np.argsort(-catalog.popularity[free], kind="stable")]
        chosen = [free[0], *rng.choice(free[1:], size - 1, replace=False)]
        used[chosen] = True
        members.append(chosen + [-1] * (3 - size))
        rates.append(round(float(rng.uniform(0.55, 0.9)), 2))
        if len(members) == wanted:
            break
    return Bundles(np.array(members, dtype=np.int64).reshape(-1, 3), np.array(rates))


def build_population(spec: ShopSpec, catalog: Catalog, rng: np.random.Generator) -> Population:
    """Users with a persona, a taste group and an event budget; the budgets add up to the clean events."""
    n = spec.users
    counts = np.floor(np.array([p.share for p in PERSONAS]) * n).astype(int)
    counts[: n - counts.sum()] += 1
    persona = rng.permutation(np.repeat(np.arange(len(PERSONAS)), counts))
    n_cat = len(catalog.categories)
    n_groups = n_cat // 2
    group_categories = rng.permutation(n_cat)[: 2 * n_groups].reshape(n_groups, 2)
    group = rng.integers(0, n_groups, n)
    weight = np.array([p.weight for p in PERSONAS])[persona] * rng.gamma(BUDGET_SHAPE, 1 / BUDGET_SHAPE, n)
    extra_share = spec.dirty_rate * 2 / len(DIRTY_KINDS)  # resends and conflicts add lines
    clean = round(spec.events / (1 + extra_share))
    budget = rng.multinomial(clean, weight / weight.sum())
    recent_days = max(1, round(0.2 * spec.days))
    signup_day = np.where(
        np.array([p.signup_recent for p in PERSONAS])[persona],
        rng.integers(spec.days - recent_days, spec.days, n),
        -rng.integers(30, 730, n),
    )
    age = np.clip(np.array([p.age_mean for p in PERSONAS])[persona] + rng.normal(0, 9, n), 18, 85).astype(int)
    user_ids = _ids("u", n, 6)
    first = np.array(FIRST_NAMES)[rng.integers(0, len(FIRST_NAMES), n)]
    last = np.array(LAST_NAMES)[rng.integers(0, len(LAST_NAMES), n)]
    tld = np.array(["com", "org", "net"])[rng.integers(0, 3, n)]
    email = np.array(
        [f"{f}.{s}{i}@example.{t}" for i, (f, s, t) in enumerate(zip(first, last, tld, strict=True))]
    )
    return Population(
        user_ids=user_ids,
        persona=persona,
        group=group,
        group_categories=group_categories,
        budget=budget,
        signup_day=signup_day,
        zone=rng.choice(len(ZONES), n, p=ZONE_P),
        age=age,
        gender=np.array(GENDERS)[rng.choice(len(GENDERS), n, p=GENDER_P)],
        region=np.array(REGIONS)[rng.choice(len(REGIONS), n, p=REGION_P)],
        email=email,
    )


def chunk_bounds(budget: np.ndarray, events: int) -> np.ndarray:
    """Split users into contiguous ranges of about EVENTS_PER_TASK events (at least 2 ranges); the
    result, [0, ..., users], depends only on the spec."""
    n_chunks = min(len(budget), max(2, math.ceil(events / EVENTS_PER_TASK)))
    cumulative = np.cumsum(budget)
    cuts = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, n_chunks) / n_chunks, side="right")
    return np.concatenate([[0], cuts, [len(budget)]]).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------
# Executor side: one user's events


@dataclass(frozen=True)
class Context:
    """Everything a generator task needs, broadcast once."""

    seed: int
    days: int
    start_ms: int  # midnight UTC starting the first day
    end_ms: int  # midnight UTC after the last day
    dirty_rate: float
    experiment_start_day: int
    user_ids: np.ndarray
    persona: np.ndarray
    group: np.ndarray
    group_categories: np.ndarray
    budget: np.ndarray
    signup_day: np.ndarray
    zone: np.ndarray
    item_ids: np.ndarray
    price: np.ndarray
    pick_keys: np.ndarray  # category + cumulative popularity within category, ascending
    pick_items: np.ndarray  # the item at each key
    n_categories: int
    bundle_of_item: np.ndarray  # bundle index where the item is an anchor, else -1
    bundle_members: np.ndarray
    bundle_rate: np.ndarray
    bounds: np.ndarray


def build_context(spec: ShopSpec, catalog: Catalog, bundles: Bundles, population: Population) -> Context:
    keys, items = [], []
    for c in range(len(catalog.categories)):
        members = np.flatnonzero((catalog.category == c) & (catalog.popularity > 0))
        members = members[np.argsort(-catalog.popularity[members], kind="stable")]
        cumulative = np.cumsum(catalog.popularity[members]) / catalog.popularity[members].sum()
        cumulative[-1] = 1.0
        keys.append(c + cumulative)
        items.append(members)
    bundle_of_item = np.full(len(catalog.item_ids), -1)
    bundle_of_item[bundles.members[:, 0]] = np.arange(len(bundles.members))
    start_ms = _epoch_ms(spec.start_date)
    return Context(
        seed=spec.seed,
        days=spec.days,
        start_ms=start_ms,
        end_ms=start_ms + spec.days * DAY_MS,
        dirty_rate=spec.dirty_rate,
        experiment_start_day=max(0, spec.days - EXPERIMENT_DAYS),
        user_ids=population.user_ids,
        persona=population.persona.astype(np.int8),
        group=population.group.astype(np.int16),
        group_categories=population.group_categories,
        budget=population.budget.astype(np.int64),
        signup_day=population.signup_day.astype(np.int32),
        zone=population.zone.astype(np.int8),
        item_ids=catalog.item_ids,
        price=catalog.price,
        pick_keys=np.concatenate(keys),
        pick_items=np.concatenate(items),
        n_categories=len(catalog.categories),
        bundle_of_item=bundle_of_item,
        bundle_members=bundles.members,
        bundle_rate=bundles.rate,
        bounds=chunk_bounds(population.budget, spec.events),
    )


def _epoch_ms(day: dt.date) -> int:
    return int((day - dt.date(1970, 1, 1)).days) * DAY_MS


def pick_items(ctx: Context, rng: np.random.Generator, group: int, n: int) -> np.ndarray:
    """n items: a category of the taste group (else any), then an item by popularity within it."""
    preferred = rng.random(n) < TASTE_STRENGTH
    category = np.where(
        preferred,
        ctx.group_categories[group][rng.integers(0, 2, n)],
        rng.integers(0, ctx.n_categories, n),
    )
    position = np.searchsorted(ctx.pick_keys, category + rng.random(n), side="right")
    return ctx.pick_items[position]


@dataclass
class Sessions:
    start: np.ndarray  # ms
    day: np.ndarray
    channel: np.ndarray
    campaign: np.ndarray  # index into CAMPAIGNS, -1 none
    p_convert: np.ndarray
    exposure: np.ndarray  # bool: an exposure event opens the session
    first_exposure: int  # session index, -1: the user is not exposed
    treatment: bool


def draw_sessions(ctx: Context, rng: np.random.Generator, u: int, persona: Persona, n: int) -> Sessions:
    """More candidate sessions than the budget needs; session 0 carries the persona's recency."""
    count = max(2, math.ceil(1.5 * n / persona.events_per_session) + 1)
    lo = max(0, int(persona.active_from * ctx.days), int(ctx.signup_day[u]))
    hi = max(lo, math.ceil(persona.active_to * ctx.days) - 1)
    day = rng.integers(lo, hi + 1, count)
    if persona.recent_days:
        day[0] = rng.integers(max(lo, ctx.days - persona.recent_days), hi + 1)
    start = ctx.start_ms + day * DAY_MS + rng.choice(24, count, p=HOUR_P) * 3_600_000
    start = start + rng.integers(0, 3_600_000, count)
    channel = rng.choice(len(CHANNELS), count, p=persona.channel_p)
    campaign = np.where(channel >= 2, rng.integers(0, len(CAMPAIGNS), count), -1)
    in_window = day >= ctx.experiment_start_day
    exposed = bool(rng.random() < EXPOSED_SHARE) and bool(in_window.any())
    treatment = bool(rng.random() < TREATMENT_SHARE)
    repeat = rng.random(count) < REPEAT_EXPOSURE_P
    p_convert = np.full(count, persona.p_convert)
    exposure = np.zeros(count, dtype=bool)
    first = -1
    if exposed:
        first = int(np.flatnonzero(in_window)[np.argmin(start[in_window])])
        exposure = in_window & repeat & (start > start[first])
        exposure[first] = True
        p_convert[first] = persona.p_convert * (1 + TRUE_RELATIVE_LIFT * treatment)
    return Sessions(start, day, channel, campaign, p_convert, exposure, first, treatment)


def forced_orders(sessions: Sessions, persona: Persona) -> np.ndarray:
    """The first `min_orders` sessions other than the first exposure (the experiment decides that one)."""
    candidates = np.flatnonzero(np.arange(len(sessions.start)) != sessions.first_exposure)
    return candidates[: persona.min_orders]


def _segment_ids(lengths: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(lengths)), lengths)


def _within_segment_rank(segment: np.ndarray) -> np.ndarray:
    """0, 1, 2... within runs of equal, ascending segment ids."""
    if len(segment) == 0:
        return segment
    starts = np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])
    return np.arange(len(segment)) - np.repeat(starts, np.diff(np.r_[starts, len(segment)]))


@dataclass
class Events:
    """A user's events, one array per column, unsorted."""

    t: np.ndarray
    session: np.ndarray
    item: np.ndarray
    kind: np.ndarray  # index into EVENT_TYPES
    quantity: np.ndarray  # 0: none
    price: np.ndarray  # nan: none

    @staticmethod
    def concat(parts: list[Events]) -> Events:
        fields = dataclasses.fields(Events)
        return Events(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields))

    def take(self, index: np.ndarray) -> Events:
        return Events(*(getattr(self, f.name)[index] for f in dataclasses.fields(Events)))


def browse_and_buy(
    ctx: Context, rng: np.random.Generator, u: int, persona: Persona, sessions: Sessions
) -> Events:
    """Views, clicks, carts and orders for every candidate session (bundles included)."""
    count = len(sessions.start)
    views = 1 + rng.poisson(max(0.0, persona.views - 1), count)
    session = _segment_ids(views)
    item = pick_items(ctx, rng, int(ctx.group[u]), len(session))
    gap = np.minimum(rng.exponential(VIEW_GAP_MS, len(session)), MAX_VIEW_GAP_MS).astype(np.int64) + 1000
    first_view = np.cumsum(views) - views
    elapsed = np.cumsum(gap)
    view_t = sessions.start[session] + elapsed - (elapsed - gap)[first_view][session]
    click = rng.random(len(session)) < persona.p_click
    cart = click & (rng.random(len(session)) < persona.p_cart)
    click_t = view_t + 500 + rng.exponential(4_000, len(session)).astype(np.int64)
    cart_t = click_t + 1_000 + rng.exponential(8_000, len(session)).astype(np.int64)
    cart_quantity = 1 + rng.poisson(persona.extra_quantity, len(session))
    convert = rng.random(count) < sessions.p_convert
    convert[forced_orders(sessions, persona)] = True
    has_cart = np.bincount(session, weights=cart, minlength=count) > 0
    forced = first_view[convert & ~has_cart]
    click[forced] = cart[forced] = True
    last_t = np.maximum.reduceat(np.where(cart, cart_t, np.where(click, click_t, view_t)), first_view)
    checkout_t = last_t + 30_000 + rng.exponential(60_000, count).astype(np.int64)

    line = np.flatnonzero(cart & convert[session])
    _, first_pos = np.unique(session[line] * len(ctx.item_ids) + item[line], return_index=True)
    line = line[np.sort(first_pos)]
    order_keys = session[line] * len(ctx.item_ids) + item[line]
    bundle = ctx.bundle_of_item[item[line]]
    rate = np.r_[ctx.bundle_rate, 0.0][bundle]  # -1: no bundle, rate 0
    with_bundle = (bundle >= 0) & (rng.random(len(line)) < rate)
    extra_session = np.repeat(session[line][with_bundle], 2)
    extra_item = ctx.bundle_members[bundle[with_bundle], 1:].ravel()
    fresh = (extra_item >= 0) & ~np.isin(extra_session * len(ctx.item_ids) + extra_item, order_keys)
    extra_session, extra_item = extra_session[fresh], extra_item[fresh]
    extra_quantity = 1 + rng.poisson(persona.extra_quantity, len(extra_item))
    extra_t = checkout_t[extra_session] - 20_000 + 1_000 * _within_segment_rank(extra_session)

    buy_session = np.concatenate([session[line], extra_session])
    order = np.argsort(buy_session, kind="stable")
    buy_session = buy_session[order]
    buy_item = np.concatenate([item[line], extra_item])[order]
    buy_quantity = np.concatenate([cart_quantity[line], extra_quantity])[order]
    discounted = rng.random(len(buy_item)) < DISCOUNT_P
    discount = np.where(discounted, DISCOUNTS[rng.integers(0, len(DISCOUNTS), len(buy_item))], 0.0)
    buy_price = np.round(ctx.price[buy_item] * (1 - discount), 2)
    buy_t = checkout_t[buy_session] + 50 * _within_segment_rank(buy_session)

    opening = np.flatnonzero(sessions.exposure)
    return Events.concat([
        Events(sessions.start[opening], opening, item[first_view[opening]], np.full(len(opening), EXPOSURE),
               np.zeros(len(opening), dtype=np.int64), np.full(len(opening), np.nan)),
        Events(view_t, session, item, np.full(len(session), VIEW), np.zeros_like(session), ctx.price[item]),
        Events(click_t[click], session[click], item[click], np.full(int(click.sum()), CLICK),
               np.zeros(int(click.sum()), dtype=np.int64), ctx.price[item[click]]),
        Events(cart_t[cart], session[cart], item[cart], np.full(int(cart.sum()), CART), cart_quantity[cart],
               ctx.price[item[cart]]),
        Events(extra_t, extra_session, extra_item, np.full(len(extra_item), CART), extra_quantity,
               ctx.price[extra_item]),
        Events(buy_t, buy_session, buy_item, np.full(len(buy_item), PURCHASE), buy_quantity, buy_price),
    ])  # fmt: skip


def fit_budget(
    ctx: Context,
    rng: np.random.Generator,
    u: int,
    persona: Persona,
    sessions: Sessions,
    events: Events,
    n: int,
) -> tuple[Events, int]:
    """Keep session 0 (recency) and the first-exposure session, then whole sessions, forced orders first,
    while they fit `n` events, and top up with a views-only session. Returns the events and the number of
    sessions kept (the filler has index len(sessions.start))."""
    count = len(sessions.start)
    per_session = np.bincount(events.session, minlength=count)
    mandatory = np.zeros(count, dtype=bool)
    mandatory[0] = True
    if sessions.first_exposure >= 0:
        mandatory[sessions.first_exposure] = True
    room = n - per_session[mandatory].sum()
    forced = forced_orders(sessions, persona)
    rest = np.flatnonzero(~mandatory & ~np.isin(np.arange(count), forced))
    optional = np.concatenate([forced[~mandatory[forced]], rest])
    fits = np.cumsum(per_session[optional]) <= room
    keep = mandatory.copy()
    keep[optional[fits]] = True
    kept = events.take(np.flatnonzero(keep[events.session]))
    filler = max(0, n - len(kept.t))
    lo = max(0, int(persona.active_from * ctx.days), int(ctx.signup_day[u]))
    hi = max(lo, math.ceil(persona.active_to * ctx.days) - 1)
    start = ctx.start_ms + int(rng.integers(lo, hi + 1)) * DAY_MS + int(rng.integers(6, 22)) * 3_600_000
    item = pick_items(ctx, rng, int(ctx.group[u]), filler)
    t = start + np.cumsum(rng.integers(5_000, 90_000, filler))
    filler_events = Events(t, np.full(filler, count), item, np.full(filler, VIEW), np.zeros(filler, np.int64),
                           ctx.price[item])  # fmt: skip
    return Events.concat([kept, filler_events]), int(keep.sum()) + (filler > 0)


def format_ts(t: np.ndarray, zone: int) -> np.ndarray:
    suffix, minutes = ZONES[zone]
    local = (t + minutes * 60_000).astype("datetime64[ms]")
    return np.strings.add(np.datetime_as_string(local, unit="ms"), suffix)


def utc_date(t: np.ndarray) -> np.ndarray:
    return (t // DAY_MS).astype("datetime64[D]").astype(str)


def user_rows(ctx: Context, u: int, chunk: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One user's output rows (event lines, then a truth row per dirty line) and counts."""
    rng = np.random.default_rng([ctx.seed, _USER_STREAM, u])
    persona = PERSONAS[int(ctx.persona[u])]
    sessions = draw_sessions(ctx, rng, u, persona, int(ctx.budget[u]))
    candidates = browse_and_buy(ctx, rng, u, persona, sessions)
    events, n_sessions = fit_budget(ctx, rng, u, persona, sessions, candidates, int(ctx.budget[u]))
    events = events.take(np.argsort(events.t, kind="stable"))
    events.t = np.minimum(events.t, ctx.end_ms - 1)
    n = len(events.t)
    count = len(sessions.start)
    zone = int(ctx.zone[u])
    session_ids = np.array([f"s{u:x}-{s:x}" for s in range(count + 1)], dtype=object)
    order_ids = np.array([f"o{u:x}-{s:x}" for s in range(count + 1)], dtype=object)
    channel = np.r_[sessions.channel, 0]
    campaign = np.r_[sessions.campaign, -1]
    campaigns = np.array([*CAMPAIGNS, None], dtype=object)
    is_exposure = events.kind == EXPOSURE
    is_purchase = events.kind == PURCHASE
    cols: dict[str, np.ndarray] = {
        "event_id": np.frombuffer(rng.bytes(12 * n).hex().encode(), dtype="S24").astype(str).astype(object),
        "user_id": np.full(n, ctx.user_ids[u], dtype=object),
        "item_id": ctx.item_ids[events.item].astype(object),
        "event_type": np.array(EVENT_TYPES, dtype=object)[events.kind],
        "ts": format_ts(events.t, zone).astype(object),
        "session_id": session_ids[events.session],
        "order_id": np.where(is_purchase, order_ids[events.session], None),
        "quantity": events.quantity.astype(np.float64),
        "price": events.price.copy(),
        "channel": np.array(CHANNELS, dtype=object)[channel[events.session]],
        "campaign_id": campaigns[campaign[events.session]],
        "experiment_id": np.where(is_exposure, EXPERIMENT_ID, None),
        "variant": np.where(is_exposure, "treatment" if sessions.treatment else "control", None),
    }
    cols["quantity"][events.quantity == 0] = np.nan

    eligible = ~is_exposure & (events.session != sessions.first_exposure)
    dirty = np.where((rng.random(n) < ctx.dirty_rate) & eligible, rng.integers(0, len(DIRTY_KINDS), n), -1)
    pick = rng.integers(0, 1 << 30, n)
    fraction = rng.random(n)
    late = (dirty < 0) & (rng.random(n) < LATE_RATE) & (events.t // DAY_MS < (ctx.end_ms // DAY_MS) - 1)
    arrival = np.where(late, (events.t // DAY_MS + 1) * DAY_MS + (fraction * 6 * 3_600_000).astype(np.int64),
                       events.t)  # fmt: skip
    meta = {
        "dirty_kind": np.full(n, None, dtype=object),
        "reason": np.full(n, None, dtype=object),
        "cut": np.full(n, np.nan),
        "override": np.full(n, None, dtype=object),
    }
    corrupt(ctx, cols, meta, dirty, pick, fraction, events, zone)
    copies = np.flatnonzero((dirty == RESEND) | (dirty == CONFLICT))
    copy_cols = {k: v[copies].copy() for k, v in cols.items()}
    copy_meta = {k: v[copies].copy() for k, v in meta.items()}
    copy_arrival = duplicate(ctx, copy_cols, copy_meta, dirty[copies], pick[copies], fraction[copies],
                             events.t[copies], zone, channel[events.session[copies]])  # fmt: skip

    rows = {k: np.concatenate([cols[k], copy_cols[k]]) for k in cols}
    rows.update({k: np.concatenate([meta[k], copy_meta[k]]) for k in meta})
    rows["arrival"] = np.concatenate([arrival, copy_arrival])
    rows["seq"] = np.arange(len(rows["arrival"]), dtype=np.int32)
    rows["date"] = utc_date(rows["arrival"]).astype(object)
    rows["user_idx"] = np.full(len(rows["arrival"]), u, dtype=np.int64)
    rows["target"] = np.full(len(rows["arrival"]), "events", dtype=object)
    bad = np.flatnonzero(np.r_[(dirty >= 0) & (dirty < RESEND), np.ones(len(copies), dtype=bool)])
    rows["file"] = np.full(len(rows["arrival"]), None, dtype=object)
    rows["file"][bad] = [f"events/date={d}/part-{chunk:05d}.json" for d in rows["date"][bad]]
    truth = {k: v[bad] for k, v in rows.items()}
    truth["target"] = np.full(len(bad), "dirty", dtype=object)
    rows = {k: np.concatenate([rows[k], truth[k]]) for k in rows}

    kinds = np.bincount(np.r_[dirty[dirty >= 0]], minlength=len(DIRTY_KINDS))
    in_first = events.session == sessions.first_exposure
    converted = sessions.first_exposure >= 0 and bool(np.any(is_purchase & in_first))
    variant = "treatment" if sessions.treatment else "control"
    stats: dict[str, float] = {
        "events": n + len(copies),
        "valid_events": n - int(np.isin(dirty, list(range(RESEND))).sum()),
        "dirty": int(kinds.sum()),
        **{f"dirty_{name}": int(k) for name, k in zip(DIRTY_KINDS, kinds, strict=True)},
        "late_events": int(late.sum()),
        "sessions": n_sessions,
        "orders": len(np.unique(events.session[is_purchase])),
        "purchases": int(is_purchase.sum()),
        "exposures": int(is_exposure.sum()),
    }
    if sessions.first_exposure >= 0:
        stats[f"{variant}_users"] = 1
        stats[f"{variant}_conversions"] = int(converted)
        stats[f"{variant}_expected"] = persona.p_convert
    return rows, stats


def corrupt(
    ctx: Context,
    cols: dict[str, np.ndarray],
    meta: dict[str, np.ndarray],
    dirty: np.ndarray,
    pick: np.ndarray,
    fraction: np.ndarray,
    events: Events,
    zone: int,
) -> None:
    """Turn the events marked with a replacing dirty kind into dirty lines, in place."""
    for kind in (MALFORMED, MISSING, UNKNOWN, NEGATIVE, UNPARSEABLE, FUTURE):
        at = np.flatnonzero(dirty == kind)
        if len(at) == 0:
            continue
        meta["dirty_kind"][at] = DIRTY_KINDS[kind]
        if kind == MALFORMED:
            meta["reason"][at] = "malformed_json"
            meta["cut"][at] = 0.3 + 0.6 * fraction[at]
            meta["override"][at] = np.where(pick[at] % 4 == 0, ERROR_PAGE, None)
        elif kind == MISSING:
            fields = np.array(REQUIRED_FIELDS)[pick[at] % len(REQUIRED_FIELDS)]
            for i, name in zip(at, fields, strict=True):
                cols[str(name)][i] = None
            meta["reason"][at] = np.strings.add("missing:", fields).astype(object)
        elif kind == UNKNOWN:
            names = np.array(UNKNOWN_TYPES)[pick[at] % len(UNKNOWN_TYPES)]
            cols["event_type"][at] = names.astype(object)
            meta["reason"][at] = np.strings.add("unknown_event_type:", names).astype(object)
        elif kind == NEGATIVE:
            cols["price"][at] = -np.abs(cols["price"][at])
            meta["reason"][at] = "negative_price"
        elif kind == UNPARSEABLE:
            cols["ts"][at] = np.array(BAD_TIMESTAMPS, dtype=object)[pick[at] % len(BAD_TIMESTAMPS)]
            meta["reason"][at] = "unparseable_ts"
        else:
            future = ctx.end_ms + (1 + pick[at] % 365) * DAY_MS + events.t[at] % DAY_MS
            cols["ts"][at] = format_ts(future, zone).astype(object)
            meta["reason"][at] = "future_ts"


def duplicate(
    ctx: Context,
    cols: dict[str, np.ndarray],
    meta: dict[str, np.ndarray],
    dirty: np.ndarray,
    pick: np.ndarray,
    fraction: np.ndarray,
    t: np.ndarray,
    zone: int,
    channel: np.ndarray,
) -> np.ndarray:
    """Make the copies (resends and conflicting duplicates) in place; returns their arrival times: seconds
    to minutes after the original, or a day later."""
    resend = dirty == RESEND
    meta["dirty_kind"][:] = np.where(resend, DIRTY_KINDS[RESEND], DIRTY_KINDS[CONFLICT])
    meta["reason"][:] = np.where(resend, "exact_duplicate", "conflicting_duplicate")
    change = np.where(resend, -1, (pick // 4) % 3)
    at = np.flatnonzero(change == 0)
    cols["ts"][at] = format_ts(t[at] - 1_000 * (1 + pick[at] % 120), zone).astype(object)  # never future
    at = np.flatnonzero(change == 1)
    cols["price"][at] = np.round(cols["price"][at] * 1.1, 2)
    at = np.flatnonzero(change == 2)
    cols["channel"][at] = np.array(CHANNELS, dtype=object)[(channel[at] + 1) % len(CHANNELS)]
    delay = np.where(fraction < 0.5, 1_000 + pick % 600_000, DAY_MS)
    return np.minimum(t + delay, ctx.end_ms - 1)


ROW_SCHEMA = pa.schema([
    ("target", pa.string()), ("date", pa.string()), ("arrival", pa.int64()), ("user_idx", pa.int64()),
    ("seq", pa.int32()), ("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
    ("event_type", pa.string()), ("ts", pa.string()), ("session_id", pa.string()), ("order_id", pa.string()),
    ("quantity", pa.int32()), ("price", pa.float64()), ("channel", pa.string()), ("campaign_id", pa.string()),
    ("experiment_id", pa.string()), ("variant", pa.string()), ("dirty_kind", pa.string()),
    ("reason", pa.string()), ("cut", pa.float64()), ("override", pa.string()), ("file", pa.string()),
])  # fmt: skip
_SQL_TYPES = {pa.string(): "string", pa.int64(): "bigint", pa.int32(): "int", pa.float64(): "double"}
ROW_DDL = ", ".join(f"{f.name} {_SQL_TYPES[f.type]}" for f in ROW_SCHEMA)
BATCH_ROWS = 32_768


def to_batch(parts: list[dict[str, np.ndarray]]) -> pa.RecordBatch:
    """One Arrow batch from rows given as column arrays (NaN in a numeric column is null)."""
    arrays = []
    for field in ROW_SCHEMA:
        values = np.concatenate([p[field.name] for p in parts])
        if values.dtype.kind == "f":
            mask = np.isnan(values)
            arrays.append(pa.array(np.where(mask, 0, values).astype(field.type.to_pandas_dtype()), mask=mask))
        else:
            arrays.append(pa.array(values, type=field.type, from_pandas=True))
    return pa.RecordBatch.from_arrays(arrays, schema=ROW_SCHEMA)


def chunk_batches(ctx: Context, chunk: int) -> Iterator[pa.RecordBatch]:
    """The rows of one user range, then one `stats` row with its counts."""
    parts: list[dict[str, np.ndarray]] = []
    size = 0
    totals: dict[str, float] = {}
    for u in range(int(ctx.bounds[chunk]), int(ctx.bounds[chunk + 1])):
        rows, stats = user_rows(ctx, u, chunk)
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value
        parts.append(rows)
        size += len(rows["target"])
        if size >= BATCH_ROWS:
            yield to_batch(parts)
            parts, size = [], 0
    yield to_batch([*parts, stats_row(totals)])


def stats_row(totals: dict[str, float]) -> dict[str, np.ndarray]:
    """The row that carries a task's counts to the driver (written under target=stats)."""
    row = {f.name: np.array([None], dtype=object) for f in ROW_SCHEMA}
    row.update(target=np.array(["stats"], dtype=object), date=np.array(["all"], dtype=object),
               override=np.array([json.dumps(totals, sort_keys=True)], dtype=object))  # fmt: skip
    for name in ("arrival", "user_idx", "seq"):
        row[name] = np.zeros(1, dtype=ROW_SCHEMA.field(name).type.to_pandas_dtype())
    for name in ("quantity", "price", "cut"):
        row[name] = np.full(1, np.nan)
    return row


def _generate_partition(broadcast: Any, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    ctx: Context = broadcast.value
    for batch in batches:
        for chunk in batch.column(0).to_pylist():
            yield from chunk_batches(ctx, int(chunk))


# ---------------------------------------------------------------------------------------------------------
# Spark: render the lines and write them


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


def part_name(spark_name: str) -> str | None:
    """part-00003-<job uuid>.c000.txt -> part-00003.json (a second file of a task: part-00003-001.json)."""
    match = re.fullmatch(r"part-(\d+)-.*?(?:\.c(\d+))?\.txt", spark_name)
    if match is None:
        return None
    suffix = "" if not match.group(2) or int(match.group(2)) == 0 else f"-{match.group(2)}"
    return f"part-{match.group(1)}{suffix}.json"


def _csv(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def dimension_files(
    spec: ShopSpec, catalog: Catalog, bundles: Bundles, population: Population
) -> dict[str, str]:
    """users.csv, items.csv and the truth tables, as file texts by path."""
    signup = np.datetime64(spec.start_date) + population.signup_day.astype("timedelta64[D]")
    users = pd.DataFrame({
        "user_id": population.user_ids, "signup_date": signup.astype(str), "age": population.age,
        "gender": population.gender, "region": population.region, "email": population.email,
    })  # fmt: skip
    items = pd.DataFrame({
        "item_id": catalog.item_ids, "category": np.array(catalog.categories)[catalog.category],
        "brand": catalog.brand, "price": catalog.price, "title": catalog.title, "active": catalog.active,
    })  # fmt: skip
    personas = pd.DataFrame({
        "user_id": population.user_ids, "persona": np.array([p.name for p in PERSONAS])[population.persona],
    })  # fmt: skip
    group_names = np.array(
        ["|".join(catalog.categories[c] for c in cats) for cats in population.group_categories]
    )
    taste = pd.DataFrame({
        "user_id": population.user_ids, "taste_group": population.group,
        "categories": group_names[population.group],
    })  # fmt: skip
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
    }


def experiment_truth(spec: ShopSpec, totals: dict[str, float]) -> dict[str, Any]:
    realised = {}
    for variant in ("control", "treatment"):
        users = int(totals.get(f"{variant}_users", 0))
        conversions = int(totals.get(f"{variant}_conversions", 0))
        realised[variant] = {"users": users, "conversions": conversions,
                             "rate": round(conversions / users, 6) if users else None}  # fmt: skip
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
    dirty_<kind> per kind, late_events, users, items, sessions, orders, purchases, exposures, bundles.
    `files`: the lake's file helper (`lake.files`, with its storage options); by default a plain one."""
    from marketlake.lake.files import Files, absolute

    spec.validate()
    rng = np.random.default_rng([spec.seed, _DRIVER_STREAM])
    catalog = build_catalog(spec, rng)
    bundles = build_bundles(catalog, rng)
    population = build_population(spec, catalog, rng)
    ctx = build_context(spec, catalog, bundles, population)
    files = files or Files()
    out_dir = absolute(out_dir)
    for name in OUTPUTS:
        files.delete(f"{out_dir}/{name}")

    broadcast = spark.sparkContext.broadcast(ctx)
    try:
        chunks = len(ctx.bounds) - 1
        rows = spark.range(0, chunks, 1, chunks).mapInArrow(functools.partial(_generate_partition, broadcast),
                                                            ROW_DDL)  # fmt: skip
        render(rows).write.partitionBy("target", "date").text(f"{out_dir}/_staging")
    finally:
        broadcast.destroy()

    move_parts(files, out_dir, "_staging/target=events", "events")
    move_parts(files, out_dir, "_staging/target=dirty", "truth/dirty")
    totals: dict[str, float] = {}
    for stats in files.list(f"{out_dir}/_staging/target=stats"):
        if not stats.is_dir and stats.relative.rpartition("/")[2].startswith("part-"):
            for line in files.read_text(stats.uri).splitlines():
                for key, value in json.loads(line).items():
                    totals[key] = totals.get(key, 0) + value
    files.delete(f"{out_dir}/_staging")

    counts = {key: int(totals.get(key, 0)) for key in (
        "events", "valid_events", "dirty", *(f"dirty_{k}" for k in DIRTY_KINDS), "late_events", "sessions",
        "orders", "purchases", "exposures")}  # fmt: skip
    counts.update(users=spec.users, items=spec.items, bundles=len(bundles.members))
    texts = dimension_files(spec, catalog, bundles, population)
    texts["truth/experiment.json"] = json.dumps(experiment_truth(spec, totals), indent=2) + "\n"
    dirty_counts = {"dirty_rate": spec.dirty_rate, "kinds": {k: counts[f"dirty_{k}"] for k in DIRTY_KINDS},
                    "counts": counts}  # fmt: skip
    texts["truth/dirty_counts.json"] = json.dumps(dirty_counts, indent=2) + "\n"
    for relative, text in texts.items():
        files.write_text(f"{out_dir}/{relative}", text)
    return counts

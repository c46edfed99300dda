"""Driver side: the small tables. Items (categories, brands, prices, popularity), bundles, the new items
and their release times, and the users with their persona, taste group and event budget. Not marketlake.catalog (the lake's table catalog)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from marketlake.demo.spec import (
    COLD_RELEASE_HOUR,
    COLD_SHARE,
    DAY_MS,
    DIRTY_KINDS,
    PERSONAS,
    ZONE_P,
    ZONES,
    ShopSpec,
)

CATEGORIES = (
    "electronics",
    "books",
    "fashion",
    "home",
    "beauty",
    "sports",
    "toys",
    "grocery",
    "garden",
    "auto",
)
BASE_PRICES = (80.0, 20.0, 45.0, 55.0, 25.0, 50.0, 30.0, 15.0, 35.0, 60.0)
BRANDS = (
    "Acme",
    "Northwind",
    "Contoso",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Soylent",
    "Tyrell",
    "Wonka",
    "Cyberdyne",
)
ADJECTIVES = ("Classic", "Pro", "Lite", "Max", "Eco", "Mini", "Plus", "Ultra")
REGIONS = ("north", "south", "east", "west", "central")
REGION_P = (0.25, 0.2, 0.2, 0.2, 0.15)
GENDERS = ("F", "M", "X")
GENDER_P = (0.49, 0.49, 0.02)
FIRST_NAMES = ("alex", "sam", "maria", "li", "noah", "emma", "omar", "yuki", "lena", "ivan", "zoe", "ravi")
LAST_NAMES = ("smith", "garcia", "chen", "novak", "kowalski", "rossi", "silva", "khan", "meyer", "dubois")
POPULARITY_EXPONENT = 0.8
BUDGET_SHAPE = 30.0  # gamma noise on per-user event budgets (coefficient of variation 0.18)


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
class Releases:
    items: np.ndarray  # int, the new items' indices, ascending
    release_ms: np.ndarray  # int per item: when it can first be picked (ms since the epoch, UTC);
    # ESTABLISHED for the items there from the start


ESTABLISHED = np.iinfo(np.int64).min


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


def build_releases(spec: ShopSpec, catalog: Catalog, bundles: Bundles, rng: np.random.Generator) -> Releases:
    """`new_item_share` of the items become available during the window: active items outside bundles and
    below their category's two most popular (so every category has items to sell from the first day).
    Most are released at midnight UTC of a uniform day after the first; `COLD_SHARE` of them (at least 2)
    at COLD_RELEASE_HOUR on the last day, after the last session starts, so they have no events."""
    n_items = len(catalog.item_ids)
    release_ms = np.full(n_items, ESTABLISHED, dtype=np.int64)
    eligible = catalog.active.copy()
    eligible[bundles.members[bundles.members >= 0]] = False
    for c in range(len(catalog.categories)):
        members = np.flatnonzero(catalog.category == c)
        top = members[np.argsort(-catalog.popularity[members], kind="stable")[:2]]
        eligible[top] = False
    pool = np.flatnonzero(eligible)
    n_new = min(round(spec.new_item_share * n_items), len(pool))
    if n_new == 0:
        return Releases(np.array([], dtype=np.int64), release_ms)
    chosen = rng.choice(pool, n_new, replace=False)
    n_cold = min(n_new, max(2, round(COLD_SHARE * n_new)))
    start_ms = (spec.start_date - dt.date(1970, 1, 1)).days * DAY_MS
    day = rng.integers(min(1, spec.days - 1), spec.days, n_new)
    release_ms[chosen] = start_ms + day * DAY_MS
    release_ms[chosen[:n_cold]] = start_ms + (spec.days - 1) * DAY_MS + COLD_RELEASE_HOUR * 3_600_000
    return Releases(np.sort(chosen), release_ms)


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

"""Executor side: one user's sessions and events. `Context` is everything a generator task needs
(broadcast once); the user ranges of the tasks (`chunk_bounds`) follow from the spec alone."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

from marketlake.demo.shop_catalog import Bundles, Catalog, Population, Releases
from marketlake.demo.spec import (
    CAMPAIGNS,
    CART,
    CHANNELS,
    CLICK,
    DAY_MS,
    EXPERIMENT_DAYS,
    EXPOSED_SHARE,
    EXPOSURE,
    PURCHASE,
    REPEAT_EXPOSURE_P,
    TREATMENT_SHARE,
    TRUE_RELATIVE_LIFT,
    VIEW,
    ZONES,
    Persona,
    ShopSpec,
)

EVENTS_PER_TASK = 250_000
# Session starts by hour of the day (UTC); nothing starts at 23h so that sessions rarely cross midnight.
HOUR_WEIGHTS = np.array(
    [1, 0.5, 0.3, 0.2, 0.2, 0.3, 0.6, 1.2, 2, 2.5, 2.8, 3, 3.2, 3, 2.8, 2.8, 3, 3.5, 4.5, 5, 4.5, 3.5, 2, 0]
)
HOUR_P = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()
VIEW_GAP_MS = 40_000
MAX_VIEW_GAP_MS = 300_000
DISCOUNTS = np.array([0.05, 0.10, 0.15, 0.20])
DISCOUNT_P = 0.2
TASTE_STRENGTH = 0.85


def chunk_bounds(budget: np.ndarray, events: int) -> np.ndarray:
    """Split users into contiguous ranges of about EVENTS_PER_TASK events (at least 2 ranges); the
    result, [0, ..., users], depends only on the spec."""
    n_chunks = min(len(budget), max(2, math.ceil(events / EVENTS_PER_TASK)))
    cumulative = np.cumsum(budget)
    cuts = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, n_chunks) / n_chunks, side="right")
    return np.concatenate([[0], cuts, [len(budget)]]).astype(np.int64)


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
    established_keys: np.ndarray  # the same over the items there from the start (no new items)
    established_items: np.ndarray
    item_category: np.ndarray
    release_ms: np.ndarray  # per item: when it can first be picked (Releases.release_ms)
    n_categories: int
    bundle_of_item: np.ndarray  # bundle index where the item is an anchor, else -1
    bundle_members: np.ndarray
    bundle_rate: np.ndarray
    bounds: np.ndarray
    intent_share: float = 0.0
    category_names: tuple[str, ...] = ()


def pick_table(catalog: Catalog, pickable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, items): per category, the pickable items by falling popularity, keyed by category +
    cumulative popularity share, so that searchsorted(keys, category + uniform) picks by popularity."""
    keys, items = [], []
    for c in range(len(catalog.categories)):
        members = np.flatnonzero((catalog.category == c) & (catalog.popularity > 0) & pickable)
        members = members[np.argsort(-catalog.popularity[members], kind="stable")]
        cumulative = np.cumsum(catalog.popularity[members]) / catalog.popularity[members].sum()
        cumulative[-1] = 1.0
        keys.append(c + cumulative)
        items.append(members)
    return np.concatenate(keys), np.concatenate(items)


def build_context(
    spec: ShopSpec, catalog: Catalog, bundles: Bundles, releases: Releases, population: Population
) -> Context:
    keys, items = pick_table(catalog, np.ones(len(catalog.item_ids), dtype=bool))
    is_new = np.zeros(len(catalog.item_ids), dtype=bool)
    is_new[releases.items] = True
    established_keys, established_items = pick_table(catalog, ~is_new)
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
        pick_keys=keys,
        pick_items=items,
        established_keys=established_keys,
        established_items=established_items,
        item_category=catalog.category.astype(np.int16),
        release_ms=releases.release_ms,
        n_categories=len(catalog.categories),
        bundle_of_item=bundle_of_item,
        bundle_members=bundles.members,
        bundle_rate=bundles.rate,
        bounds=chunk_bounds(population.budget, spec.events),
        intent_share=spec.intent_share,
        category_names=tuple(catalog.categories),
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


def draw_intents(ctx: Context, intent_rng: np.random.Generator, count: int) -> np.ndarray:
    """Per candidate session, its intent: a category (any, whatever the user's taste) whose items all its
    picks come from, with probability intent_share; -1 for none. From its own stream (`intent_rng`)."""
    if ctx.intent_share <= 0:
        return np.full(count, -1)
    has_intent = intent_rng.random(count) < ctx.intent_share
    category = intent_rng.integers(0, ctx.n_categories, count)
    return np.where(has_intent, category, -1)


def with_intent(
    ctx: Context, intent_rng: np.random.Generator, item: np.ndarray, intent: np.ndarray
) -> np.ndarray:
    """The picks of sessions with an intent made again, by popularity, among the items of its category."""
    focused = np.flatnonzero(intent >= 0)
    if len(focused) == 0:
        return item
    keys = intent[focused] + intent_rng.random(len(focused))
    picked: np.ndarray = item.copy()
    picked[focused] = ctx.pick_items[np.searchsorted(ctx.pick_keys, keys, side="right")]
    return picked


def released_only(
    ctx: Context, release_rng: np.random.Generator, item: np.ndarray, session_start: np.ndarray
) -> np.ndarray:
    """The picks with each item not yet released when its session starts picked again, by popularity,
    among the established items of its category (`release_rng`, a stream of its own, draws only for
    those, so that a shop without new items is drawn exactly as before they existed). After its release
    a new item is picked like any other item of its popularity: no novelty boost."""
    unreleased = np.flatnonzero(ctx.release_ms[item] > session_start)
    if len(unreleased) == 0:
        return item
    category = ctx.item_category[item[unreleased]]
    keys = category + release_rng.random(len(unreleased))
    picked: np.ndarray = item.copy()
    picked[unreleased] = ctx.established_items[np.searchsorted(ctx.established_keys, keys, side="right")]
    return picked


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
    drew_exposure: bool  # the user drew exposure: exposed when a session falls in the experiment window


def active_days(ctx: Context, u: int, persona: Persona) -> tuple[int, int]:
    """The first and last day (indices, inclusive) on which the user's sessions start."""
    lo = max(0, int(persona.active_from * ctx.days), int(ctx.signup_day[u]))
    return lo, max(lo, math.ceil(persona.active_to * ctx.days) - 1)


def draw_sessions(ctx: Context, rng: np.random.Generator, u: int, persona: Persona, n: int) -> Sessions:
    """More candidate sessions than the budget needs; session 0 carries the persona's recency."""
    count = max(2, math.ceil(1.5 * n / persona.events_per_session) + 1)
    lo, hi = active_days(ctx, u, persona)
    day = rng.integers(lo, hi + 1, count)
    if persona.recent_days:
        day[0] = rng.integers(max(lo, ctx.days - persona.recent_days), hi + 1)
    start = ctx.start_ms + day * DAY_MS + rng.choice(24, count, p=HOUR_P) * 3_600_000
    start = start + rng.integers(0, 3_600_000, count)
    channel = rng.choice(len(CHANNELS), count, p=persona.channel_p)
    campaign = np.where(channel >= 2, rng.integers(0, len(CAMPAIGNS), count), -1)
    in_window = day >= ctx.experiment_start_day
    drew_exposure = bool(rng.random() < EXPOSED_SHARE)
    exposed = drew_exposure and bool(in_window.any())
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
    return Sessions(start, day, channel, campaign, p_convert, exposure, first, treatment, drew_exposure)


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
    ctx: Context,
    rng: np.random.Generator,
    release_rng: np.random.Generator,
    u: int,
    persona: Persona,
    sessions: Sessions,
    intent_rng: np.random.Generator | None = None,
    intent: np.ndarray | None = None,
) -> Events:
    """Views, clicks, carts and orders for every candidate session (bundles included); a session with an
    intent (`intent` >= 0, a category) picks from that category only."""
    count = len(sessions.start)
    views = 1 + rng.poisson(max(0.0, persona.views - 1), count)
    session = _segment_ids(views)
    item = pick_items(ctx, rng, int(ctx.group[u]), len(session))
    if intent is not None and intent_rng is not None:
        item = with_intent(ctx, intent_rng, item, intent[session])
    item = released_only(ctx, release_rng, item, sessions.start[session])
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
    return Events.concat(
        [
            Events(
                sessions.start[opening],
                opening,
                item[first_view[opening]],
                np.full(len(opening), EXPOSURE),
                np.zeros(len(opening), dtype=np.int64),
                np.full(len(opening), np.nan),
            ),
            Events(
                view_t, session, item, np.full(len(session), VIEW), np.zeros_like(session), ctx.price[item]
            ),
            Events(
                click_t[click],
                session[click],
                item[click],
                np.full(int(click.sum()), CLICK),
                np.zeros(int(click.sum()), dtype=np.int64),
                ctx.price[item[click]],
            ),
            Events(
                cart_t[cart],
                session[cart],
                item[cart],
                np.full(int(cart.sum()), CART),
                cart_quantity[cart],
                ctx.price[item[cart]],
            ),
            Events(
                extra_t,
                extra_session,
                extra_item,
                np.full(len(extra_item), CART),
                extra_quantity,
                ctx.price[extra_item],
            ),
            Events(buy_t, buy_session, buy_item, np.full(len(buy_item), PURCHASE), buy_quantity, buy_price),
        ]
    )


def fit_budget(
    ctx: Context,
    rng: np.random.Generator,
    release_rng: np.random.Generator,
    u: int,
    persona: Persona,
    sessions: Sessions,
    events: Events,
    n: int,
) -> tuple[Events, int, np.ndarray]:
    """Keep session 0 (recency) and the first-exposure session, then whole sessions, forced orders first,
    while they fit `n` events, and top up with a views-only session. Returns the events, the number of
    sessions kept (the filler has index len(sessions.start)) and which candidate sessions were kept."""
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
    lo, hi = active_days(ctx, u, persona)
    start = ctx.start_ms + int(rng.integers(lo, hi + 1)) * DAY_MS + int(rng.integers(6, 22)) * 3_600_000
    item = pick_items(ctx, rng, int(ctx.group[u]), filler)
    item = released_only(ctx, release_rng, item, np.full(filler, start))
    t = start + np.cumsum(rng.integers(5_000, 90_000, filler))
    filler_events = Events(
        t, np.full(filler, count), item, np.full(filler, VIEW), np.zeros(filler, np.int64), ctx.price[item]
    )
    return Events.concat([kept, filler_events]), int(keep.sum()) + (filler > 0), keep


def purchase_windows(
    ctx: Context, u: int, persona: Persona, sessions: Sessions, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The planted purchase propensity: for each kept session that can convert, its index, the first and
    last day (indices) its start day can fall on, and its conversion probability (1 for forced orders).

    Conditional on this structure, sessions fall on independent uniform days of their ranges and convert
    independently, so P(no purchase in days [a, b]) = prod_s (1 - p_s |[a, b] & [first_s, last_s]| /
    (last_s - first_s + 1)); `marketlake.demo.truth` computes it. Which session is the first exposure
    (mandatory, lifted, and shifting the forced orders) depends on the days drawn, so for a user who drew
    exposure the structure includes each session's side of the experiment's start and the first exposure's
    day (its exposure event's day): the first exposure is the earliest session in the window, so later
    sessions in the window fall on or after that day. Ignored: a session in the window on the first
    exposure's day must start after it (the range treats that day as a full day); a session crossing
    midnight UTC buys on the next day; and which sessions fit the event budget depends a little on whether
    they converted (a converting session has more events), while the kept ones are taken as given."""
    lo, hi = active_days(ctx, u, persona)
    first = np.full(len(sessions.start), lo)
    last = np.full(len(sessions.start), hi)
    if persona.recent_days:
        first[0] = max(lo, ctx.days - persona.recent_days)
    if sessions.drew_exposure:
        cut = ctx.experiment_start_day
        in_window = sessions.day >= cut
        first = np.where(in_window, np.maximum(first, cut), first)
        last = np.where(in_window, last, np.minimum(last, cut - 1))
        f = sessions.first_exposure
        if f >= 0:
            first = np.where(in_window, np.maximum(first, sessions.day[f]), first)
            first[f] = last[f] = sessions.day[f]
    p = sessions.p_convert.copy()
    p[forced_orders(sessions, persona)] = 1.0
    index = np.flatnonzero(keep & (p > 0))
    return index, first[index], last[index], p[index]


def format_ts(t: np.ndarray, zone: int) -> np.ndarray:
    suffix, minutes = ZONES[zone]
    local = (t + minutes * 60_000).astype("datetime64[ms]")
    return np.strings.add(np.datetime_as_string(local, unit="ms"), suffix)


def utc_date(t: np.ndarray) -> np.ndarray:
    return (t // DAY_MS).astype("datetime64[D]").astype(str)

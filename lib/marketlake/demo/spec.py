"""What to generate (`ShopSpec`) and the shop's fixed design: the vocabulary of its event lines, the kinds
of dirty lines, the experiment and the five personas. The package docstring (`marketlake.demo`) describes
them in full."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any, ClassVar

from marketlake.errors import UsageError
from marketlake.mapping import CANONICAL

DEFAULT_END_DATE = dt.date(2024, 6, 30)

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "exposure")
VIEW, CLICK, CART, PURCHASE, EXPOSURE = range(5)
# The shop writes every canonical event field but rating (a MovieLens field), in the mapping's order.
EVENT_FIELDS = tuple(field for field in CANONICAL["events"] if field != "rating")
REQUIRED_FIELDS = ("user_id", "item_id", "event_type", "ts")
CHANNELS = ("web", "app", "email", "ads")
CAMPAIGNS = (
    "cmp-newsletter",
    "cmp-spring-sale",
    "cmp-retarget",
    "cmp-new-arrivals",
    "cmp-loyalty",
    "cmp-search",
)

DIRTY_KINDS = (
    "malformed_json",
    "missing_field",
    "unknown_event_type",
    "negative_price",
    "unparseable_ts",
    "future_ts",
    "exact_resend",
    "conflicting_duplicate",
)

# (suffix written after the local time, offset in minutes)
ZONES = (("+00:00", 0), ("Z", 0), ("+01:00", 60), ("+02:00", 120), ("-05:00", -300))
ZONE_P = (0.5, 0.15, 0.1, 0.17, 0.08)
DAY_MS = 86_400_000

EXPERIMENT_ID = "exp-checkout-redesign"
EXPERIMENT_DAYS = 14
EXPOSED_SHARE = 0.7
TREATMENT_SHARE = 0.5
TRUE_RELATIVE_LIFT = 0.3
REPEAT_EXPOSURE_P = 0.3

# Random streams: the driver's small tables; one per user, seeded by (seed, USER_STREAM, user index); the
# driver's choice of new items and their release times; per user, the picks of items not yet released
# made again among the established ones. The last two are streams of their own so that a shop without new
# items is drawn exactly as before they existed.
DRIVER_STREAM, USER_STREAM, NEW_ITEM_STREAM, RELEASE_STREAM = 1, 2, 3, 4
# Per user, which sessions have an intent (one category) and their picks: a stream of its own, so that
# with intent_share 0 the shop is exactly the one without intent, and with it only those sessions' items
# change (their timing, clicks, carts and conversion are drawn as before).
INTENT_STREAM = 5
# New items released so late (COLD_RELEASE_HOUR UTC on the last day, after the last session start) that
# they have no events: this share of the new items, at least 2.
COLD_SHARE = 0.2
COLD_RELEASE_HOUR = 23


@dataclass(frozen=True)
class ShopSpec:
    """What to generate. `events` is the number of event lines to write, dirty lines included (the result
    is within about 1% of it); events span `days` days ending on `end_date`. `new_item_share` of the items
    are released during the window (truth/new_items.csv)."""

    users: int
    items: int
    events: int
    seed: int
    days: int = 30
    dirty_rate: float = 0.01
    end_date: dt.date = DEFAULT_END_DATE
    new_item_share: float = 0.1
    intent_share: float = 0.1

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
            (
                0.0 <= self.new_item_share <= 0.5,
                f"new_item_share must be between 0 and 0.5, got {self.new_item_share}",
            ),
            (
                0.0 <= self.intent_share <= 0.5,
                f"intent_share must be between 0 and 0.5, got {self.intent_share}",
            ),
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
    Persona(
        "champions",
        0.15,
        2.5,
        0.0,
        1.0,
        2,
        3.0,
        0.7,
        0.6,
        0.65,
        0.8,
        (0.3, 0.5, 0.15, 0.05),
        38,
        min_orders=4,
    ),
    Persona(
        "loyal", 0.25, 1.2, 0.0, 1.0, 4, 4.0, 0.5, 0.5, 0.35, 0.2, (0.45, 0.35, 0.15, 0.05), 45, min_orders=2
    ),
    Persona(
        "new",
        0.15,
        0.35,
        0.8,
        1.0,
        0,
        4.0,
        0.75,
        0.45,
        0.45,
        0.1,
        (0.35, 0.15, 0.1, 0.4),
        29,
        min_orders=1,
        signup_recent=True,
    ),
    Persona(
        "at_risk", 0.20, 0.7, 0.0, 0.4, 0, 5.0, 0.45, 0.5, 0.4, 0.3, (0.5, 0.3, 0.15, 0.05), 50, min_orders=1
    ),
    Persona(
        "window_shoppers", 0.25, 1.4, 0.0, 1.0, 0, 12.0, 0.25, 0.08, 0.0, 0.0, (0.5, 0.2, 0.05, 0.25), 33
    ),
)

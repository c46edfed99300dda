"""How the report writes a value: each helper gives "-" for a missing value (None or NaN)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

Value = Any  # a pandas cell: int, float, a numpy scalar, a Timestamp, None or NaN
Formatter = Callable[[Value], str]


def missing(value: Value) -> bool:
    return value is None or bool(pd.isna(value))  # a scalar gives a bool


def count(value: Value) -> str:
    """1,234"""
    return "-" if missing(value) else f"{int(value):,}"


def share(value: Value) -> str:
    """12.3%"""
    return "-" if missing(value) else f"{value:.1%}"


def number(value: Value, digits: int = 4) -> str:
    """1,234.5678"""
    return "-" if missing(value) else f"{value:,.{digits}f}"


def fixed(digits: int) -> Formatter:
    """A `number` with this many digits."""

    def format_(value: Value) -> str:
        return number(value, digits)

    return format_


def percent(value: Value) -> str:
    """A share for a sentence: 28% (one decimal below 10%: 3.1%)."""
    if missing(value):
        return "-"
    return f"{value:.0%}" if abs(value) >= 0.095 else f"{value:.1%}"


def times(value: Value) -> str:
    """2.8x"""
    return "-" if missing(value) else f"{value:.1f}x"


def one_in(rate: Value) -> str:
    """A rate as a marketer says it: "about 1 in 5", "about 7 in 10"."""
    if missing(rate):
        return "-"
    if rate <= 0:
        return "none"
    if rate >= 0.95:
        return "nearly all"
    if rate >= 0.5:
        return f"about {round(rate * 10)} in 10"
    return f"about 1 in {round(1 / rate):,}"


# Currencies written with their own symbol before the amount; any other code follows the amount.
SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£"}
# ISO 4217 minor units of the common currencies that do not have 2 (the rest are written with 2 decimals).
MINOR_UNITS = {
    "JPY": 0,
    "KRW": 0,
    "ISK": 0,
    "CLP": 0,
    "VND": 0,
    "BHD": 3,
    "JOD": 3,
    "KWD": 3,
    "OMR": 3,
    "TND": 3,
}


@dataclass(frozen=True)
class Money:
    """Amounts of one currency (an ISO 4217 code): "€1,234.50", "-£3.20", "1,234.50 CHF", "1,235 JPY"."""

    currency: str

    def __call__(self, value: Value) -> str:
        return self.amount(value)

    def signed(self, value: Value) -> str:
        """+€1.50, -€1.50"""
        return self.amount(value, sign=True)

    def amount(self, value: Value, sign: bool = False) -> str:
        if missing(value):
            return "-"
        digits = MINOR_UNITS.get(self.currency, 2)
        rounded = round(float(value), digits)
        sign_text = "-" if rounded < 0 else "+" if sign else ""
        magnitude = f"{abs(rounded):,.{digits}f}"
        symbol = SYMBOLS.get(self.currency)
        return f"{sign_text}{symbol}{magnitude}" if symbol else f"{sign_text}{magnitude} {self.currency}"


def signed(value: Value, digits: int = 4) -> str:
    """+0.0200"""
    return "-" if missing(value) else f"{value:+.{digits}f}"


def signed_share(value: Value) -> str:
    """+20.0%"""
    return "-" if missing(value) else f"{value:+.1%}"


def points(value: Value) -> str:
    """A difference of two rates in percentage points: +2.0 pts"""
    return "-" if missing(value) else f"{value * 100:+.1f} pts"


def with_interval(value: Value, low: Value, high: Value, format_: Formatter) -> str:
    """ "+0.0200 [+0.0080, +0.0320]"; "-" without a value."""
    if missing(value):
        return "-"
    if missing(low) or missing(high):
        return format_(value)
    return f"{format_(value)} [{format_(low)}, {format_(high)}]"


def p_value(value: Value) -> str:
    """A `number`, without printing a tiny p-value as 0.0000."""
    if not missing(value) and value < 0.0001:
        return "<0.0001"
    return number(value)


def probability(value: Value) -> str:
    """A `share`, without rounding a near-certainty to 100.0% (or a near-impossibility to 0.0%)."""
    if not missing(value):
        if value > 0.999:
            return ">99.9%"
        if value < 0.001:
            return "<0.1%"
    return share(value)


def timestamp(value: Value) -> str:
    """2024-06-30 03:00"""
    return "-" if missing(value) else pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class Display:
    """What the report's writing depends on in the configuration: the currency of its amounts
    (report.currency) and the level of the experiments' intervals (1 - experiment.alpha)."""

    money: Money
    confidence: float = 0.95

    @property
    def level(self) -> str:
        """95%"""
        return (
            f"{self.confidence:.0%}"
            if round(self.confidence * 100, 6).is_integer()
            else f"{self.confidence:.1%}"
        )

"""Keyed pseudonyms: a user id becomes HMAC-SHA256(key, id), 128 bits in hex, the same on every run with
the same key and unlinkable to the id without it.

Python (through Arrow) rather than Spark SQL on purpose: built-in functions would put the key into the
query plan as a literal, where the Spark UI and event logs would show it; a Python function carries it
pickled, and it is never printed or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from typing import cast

import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F

from marketlake.errors import ConfigError

PSEUDONYM_HEX_DIGITS = 32


def pseudonym(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_DIGITS]


def load_key(variable: str, environ: dict[str, str] | None = None) -> bytes:
    value = (os.environ if environ is None else environ).get(variable, "")
    if len(value) < 16:
        raise ConfigError(
            f"ingest.pseudonymise_user_ids is on, but the environment variable {variable} "
            f"{'is not set' if not value else 'is shorter than 16 characters'}; set it to a secret key"
        )
    return value.encode("utf-8")


def keyed_hash(key: bytes) -> Callable[[Column], Column]:
    """A function Column -> Column giving the pseudonym of each non-null text value."""

    # pyspark's typing gap: `functions` does not re-export pandas_udf, and its overloads lack the
    # type-hint form (no functionType), so the decorator is untyped; it returns a Column -> Column UDF.
    @F.pandas_udf("string")  # type: ignore[attr-defined, untyped-decorator]
    def hmac_sha256(values: pd.Series) -> pd.Series:
        return values.map(lambda value: None if value is None else pseudonym(key, value))

    return cast("Callable[[Column], Column]", hmac_sha256)

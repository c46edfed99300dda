"""Source mappings: how a foreign file format becomes marketlake's events, users or items, as data.

A mapping is a YAML file (`conf/sources/NAME.yaml`; the built-in ones also ship inside the package, so
`--mapping NAME` works under spark-submit too). Every canonical column is taken from a source column, a
Spark SQL expression over the source columns, or a constant:

    name: online_retail
    entity: events
    format: csv
    csv: {header: true, delimiter: ","}
    columns:
      order_id: InvoiceNo                                   # a source column
      user_id: {expr: "regexp_replace(CustomerID, '\\\\.0$', '')"}   # an expression
      event_type: {value: purchase}                         # a constant
    event_id: [InvoiceNo, StockCode, InvoiceDate, Quantity] # no id in the source: a hash of these columns
    timestamp: {column: InvoiceDate, formats: ["yyyy-MM-dd HH:mm:ss", "M/d/yyyy H:mm"], timezone: Europe/London}
    exclude:                                                # deliberate exclusions, quarantined and counted
      - {reason: cancellation, when: "InvoiceNo LIKE 'C%'"}
    max_reject_rate: 0.6                                    # a run rejecting more fails, writing nothing

Every source column is read as text, so a mapping decides all typing; a column the mapping does not
name is kept in bronze's raw record only.

Files that are neither JSON lines, CSV nor Parquet (columns separated by runs of spaces, fixed widths)
are read as lines of text that a regular expression splits into fields:

    format: text
    text:
      # Java's regular expression syntax (Spark's); it must match the whole line. Each named group is a
      # source column (names may hold underscores, which Java's own group names may not).
      pattern: '\\s*(?<customer_id>\\S+)\\s+(?<date>\\d{8})\\s+(?<cds>\\S+)\\s+(?<dollars>\\S+)\\s*'
      header_lines: 1            # the first lines of every file are not records (skipped, not counted)

A line the pattern does not match is quarantined as `malformed_line`; the line as received is the
record's raw text, as a JSON line is. A source that lists a repeated purchase as a repeated identical
line (no line id to tell them apart) says `identical_records: distinct`: within one file, the second,
third... record with equal `event_id` columns is another event (its derived id also hashes its rank),
where by default it is the same event received again (a duplicate).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from marketlake.config import Problem, load_yaml
from marketlake.errors import ConfigError

Entity = Literal["events", "users", "items"]
Format = Literal["json", "csv", "parquet", "text"]

# Canonical columns per entity, in the order silver stores them.
EVENT_COLUMNS = (
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "ts",
    "session_id",
    "order_id",
    "quantity",
    "price",
    "channel",
    "campaign_id",
    "experiment_id",
    "variant",
    "rating",
)
USER_COLUMNS = ("user_id", "signup_date", "age", "gender", "region")
ITEM_COLUMNS = ("item_id", "category", "brand", "price", "title", "active")
CANONICAL = {"events": EVENT_COLUMNS, "users": USER_COLUMNS, "items": ITEM_COLUMNS}
KEYS = {"events": "event_id", "users": "user_id", "items": "item_id"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSource(Strict):
    """Exactly one of: column (a source column), expr (Spark SQL over source columns), value (a constant)."""

    column: str | None = None
    expr: str | None = None
    value: str | int | float | bool | None = None

    def model_post_init(self, _context: Any) -> None:
        given = [name for name in ("column", "expr", "value") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of column, expr, value (got {given or 'none'})")


class CsvOptions(Strict):
    header: bool = True
    delimiter: str = ","
    quote: str = '"'
    encoding: str = "UTF-8"
    # Column names for files without a header line.
    names: list[str] | None = None


# A named group of a text pattern, Java's `(?<name>` or Python's `(?P<name>`, or a backreference to one
# (`\k<name>`); an escaped character is matched first so that `\(?<x>` is no group.
NAMED_GROUP = re.compile(r"\\k<([A-Za-z_]\w*)>|\\.|\(\?P?<([A-Za-z_]\w*)>", re.DOTALL)


class TextOptions(Strict):
    # A Java regular expression that a whole line must match; its named groups are the source columns.
    pattern: str
    # Lines at the start of every file that are not records (a header): skipped, not counted.
    header_lines: int = Field(default=0, ge=0)

    @field_validator("pattern")
    @classmethod
    def _names_its_columns(cls, value: str) -> str:
        names = [match.group(2) for match in NAMED_GROUP.finditer(value) if match.group(2)]
        if not names:
            raise ValueError("the pattern names no group: write (?<column>...) for each source column")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"the pattern names group {repeated[0]!r} twice")
        return value

    @property
    def columns(self) -> list[str]:
        """The source columns: the pattern's named groups, in order."""
        return [match.group(2) for match in NAMED_GROUP.finditer(self.pattern) if match.group(2)]

    def java_pattern(self) -> str:
        """The pattern as Spark runs it: anchored to the whole line, its groups renamed g1, g2... (in the
        order of `columns`), since Java's group names are letters and digits only."""
        numbers = {name: index + 1 for index, name in enumerate(self.columns)}

        def rename(match: re.Match[str]) -> str:
            if match.group(1):
                known = match.group(1) in numbers
                return f"\\k<g{numbers[match.group(1)]}>" if known else match.group(0)
            if match.group(2):
                return f"(?<g{numbers[match.group(2)]}>"
            return match.group(0)

        return f"^(?:{NAMED_GROUP.sub(rename, self.pattern)})$"


class TimestampOptions(Strict):
    column: str = "ts"
    # Spark datetime patterns tried in order; empty: ISO-8601 (with or without a zone).
    formats: list[str] = Field(default_factory=list)
    # The zone of timestamps that carry none (ISO strings with Z or +hh:mm keep theirs).
    timezone: str | None = None
    # Numbers since the Unix epoch instead of text.
    unit: Literal["seconds", "milliseconds"] | None = None


class Exclusion(Strict):
    reason: str
    when: str

    @field_validator("reason")
    @classmethod
    def _machine_readable(cls, value: str) -> str:
        if not value.replace("_", "").isalnum():
            raise ValueError("a reason is letters, digits and underscores")
        return value


class SourceMapping(Strict):
    name: str
    entity: Entity = "events"
    format: Format = "json"
    csv: CsvOptions = Field(default_factory=CsvOptions)
    text: TextOptions | None = None
    # Canonical column -> source. Canonical columns not named here are taken from a source column of the
    # same name when there is one.
    columns: dict[str, str | ColumnSource] = Field(default_factory=dict)
    # Source columns whose values, hashed, make the event id when the source has none.
    event_id: list[str] | None = None
    # Records of one file with equal event_id columns: one event received again (duplicate), or as many
    # events as records (distinct).
    identical_records: Literal["duplicate", "distinct"] = "duplicate"
    timestamp: TimestampOptions = Field(default_factory=TimestampOptions)
    # Value translations per canonical column, e.g. event_type: {addtocart: add_to_cart}.
    values: dict[str, dict[str, str]] = Field(default_factory=dict)
    exclude: list[Exclusion] = Field(default_factory=list)
    # A run rejecting more than this share of the records read fails and writes nothing (default:
    # ingest.max_reject_rate of the config).
    max_reject_rate: float | None = Field(default=None, ge=0, le=1)

    def model_post_init(self, _context: Any) -> None:
        allowed = set(CANONICAL[self.entity])
        unknown = sorted(set(self.columns) - allowed)
        if unknown:
            raise ValueError(
                f"no canonical {self.entity} column {unknown[0]!r}; columns: {', '.join(sorted(allowed))}"
            )
        if self.event_id is not None and self.entity != "events":
            raise ValueError("event_id applies to events only")
        if self.identical_records == "distinct" and not self.event_id:
            raise ValueError("identical_records: distinct applies to an event_id derived from columns")
        if self.format == "text" and self.text is None:
            raise ValueError("format text needs text: {pattern: ...}")

    def source_of(self, canonical: str) -> ColumnSource | None:
        """Where a canonical column comes from, or None when the mapping does not say."""
        given = self.columns.get(canonical)
        if given is None:
            return None
        return ColumnSource(column=given) if isinstance(given, str) else given


def built_in_names() -> list[str]:
    folder = resources.files("marketlake").joinpath("mappings")
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def load_mapping(name_or_path: str) -> SourceMapping:
    """A mapping from a YAML path, or by name from the built-in ones (conf/sources/NAME.yaml)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"mapping file not found: {name_or_path}")
        text, source = path.read_text(), str(path)
    else:
        resource = resources.files("marketlake").joinpath("mappings").joinpath(f"{name_or_path}.yaml")
        if not resource.is_file():
            raise ConfigError(
                f"no mapping named {name_or_path!r}; built-in: {', '.join(built_in_names())} (or give a YAML path)"
            )
        text, source = resource.read_text(), f"built-in mapping {name_or_path}"
    raw = load_yaml(text, source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a mapping is a YAML mapping of keys")
    try:
        return SourceMapping.model_validate(raw)
    except ValidationError as exc:
        problem = Problem.first(exc)
        message = "unknown key" if problem.unknown else problem.message
        raise ConfigError(f"{source}: {problem.key or 'mapping'}: {message}") from None

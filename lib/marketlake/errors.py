"""Errors that a job turns into one clear line on stderr and an exit code."""


class MarketlakeError(Exception):
    """A failure during a run: exit code 1."""

    exit_code = 1


class UsageError(MarketlakeError):
    """Bad arguments, configuration or input paths, found before anything is written: exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration file or override that does not fit the schema; the message names the key."""


class TableError(MarketlakeError):
    """A table operation that cannot be done as asked (schema mismatch, conflict, unsupported table)."""


class ConcurrentWriteError(TableError):
    """Another writer committed to the table in a way that conflicts with this write."""

"""Errors that a job turns into one clear line on stderr and an exit code."""

from __future__ import annotations

import os
import re


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


class StorageError(MarketlakeError):
    """The file system refused a write: no space left, permission denied, read-only."""


# What the operating system says, as Java, Python and Rust (deltalake) spell it -> what to tell the user.
STORAGE_PROBLEMS = {
    "No space left on device": "no space left on device (the disk is full)",
    "Disk quota exceeded": "disk quota exceeded",
    "Permission denied": "permission denied",
    "AccessDeniedException": "permission denied",
    "Read-only file system": "read-only file system",
}


def storage_problem(exc: BaseException) -> str | None:
    """The storage condition behind `exc` (or its causes), in words, or None when it is not one.

    Spark's errors arrive as Py4JJavaError whose text carries the Java exception chain; deltalake's
    carry the OS error; Python's are OSError with an errno."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        for needle, words in STORAGE_PROBLEMS.items():
            if needle in text:
                return words
        cannot_create = MKDIRS_FAILED.search(text)
        if cannot_create:
            return _why_no_folder(cannot_create.group(1))
        current = current.__cause__ or current.__context__
    return None


# Hadoop's local file system says only this when it cannot create a folder, without the OS's reason.
MKDIRS_FAILED = re.compile(r"Mkdirs failed to create (?:file:)?(/\S+)")


def _why_no_folder(path: str) -> str:
    """Hadoop gave no reason: find it on the local disk (the nearest folder that exists)."""
    folder = os.path.dirname(path.rstrip("/"))
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    if folder and not os.access(folder, os.W_OK):
        return f"permission denied (cannot create folders in {folder})"
    return f"cannot create the folder {path}"

"""The erasure key and the suppression list: what the erase job records of a subject, and what ingest
reads to keep an erased subject's late events out.

ops.erasures holds keyed hashes (HMAC-SHA256, `ingest.pseudonym.pseudonym`) of subjects and of the user ids
they map to, never an id. The key comes from the environment (`privacy.key_env`) or from a key file outside
the lake (`privacy.key_file`), generated on first use; it is never logged. Without the key the hashes
cannot be tested against guesses, and with another key the suppression list no longer matches: keep the
key file with the other secrets of the installation.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from marketlake import catalog
from marketlake.config import Config, PrivacyConfig
from marketlake.errors import ConfigError
from marketlake.ingest.pseudonym import pseudonym

if TYPE_CHECKING:
    from marketlake.lake import Lake

ERASURES = catalog.ERASURES.name
MIN_KEY_CHARS = 16


def key_file_path(settings: PrivacyConfig) -> Path:
    return Path(os.path.expanduser(settings.key_file)).resolve()


def check_key_location(settings: PrivacyConfig, lake_root: str) -> None:
    """ConfigError when the key file would lie inside the lake (beside the hashes it protects)."""
    if os.environ.get(settings.key_env) or "://" in lake_root:
        return
    root = Path(os.path.expanduser(lake_root.removeprefix("file:"))).resolve()
    if key_file_path(settings).is_relative_to(root):
        raise ConfigError(
            f"privacy.key_file is inside the lake root {root}; keep the erasure key outside the lake"
        )


def erasure_key(settings: PrivacyConfig, create: bool) -> bytes | None:
    """The key from the environment, else from the key file (written, mode 600, when `create` and missing);
    None when neither exists and `create` is false."""
    value = os.environ.get(settings.key_env, "")
    if value:
        if len(value) < MIN_KEY_CHARS:
            raise ConfigError(
                f"the environment variable {settings.key_env} is shorter than {MIN_KEY_CHARS} characters"
            )
        return value.encode("utf-8")
    path = key_file_path(settings)
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_hex(32))
    text = path.read_text(encoding="utf-8").strip()
    if len(text) < MIN_KEY_CHARS:
        raise ConfigError(f"the erasure key file {path} holds fewer than {MIN_KEY_CHARS} characters")
    return text.encode("utf-8")


def normal_subject(text: str) -> str:
    """A subject as hashed: trimmed; an email in lower case (one person, however they spell it)."""
    subject = text.strip()
    return subject.lower() if "@" in subject else subject


def subject_hash(key: bytes, subject: str) -> str:
    return pseudonym(key, normal_subject(subject))


@dataclass(frozen=True)
class ErasedHashes:
    """The keyed hashes of erased user ids (and pseudonyms), with the key that made them."""

    key: bytes
    hashes: frozenset[str]


def erased_hashes(lake: Lake, config: Config) -> ErasedHashes | None:
    """The suppression list from ops.erasures; None when nobody was erased (no key needed then)."""
    if not lake.exists(ERASURES):
        return None
    rows = lake.read(ERASURES).selectExpr("explode(user_hashes) AS h").distinct().collect()
    hashes = frozenset(row["h"] for row in rows if row["h"])
    if not hashes:
        return None
    key = erasure_key(config.privacy, create=False)
    if key is None:
        raise ConfigError(
            f"{ERASURES} lists erased subjects, but the erasure key is missing ({config.privacy.key_env} unset and "
            f"no {config.privacy.key_file}): ingest cannot keep their events out"
        )
    return ErasedHashes(key, hashes)

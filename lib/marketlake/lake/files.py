"""The lake's one file-system helper, on pyarrow.fs: everything under the lake that is a file or a folder
rather than a table (models, checkpoints, exports, reports, the engines' staging) and the raw files the
lake writes (the synthetic shop).

Paths go in and come out as the rest of marketlake and Spark spell them: a local path, a file: URI or a
store URI such as s3a://bucket/key. `store_uri` gives the spelling pyarrow and deltalake understand.
"""

from __future__ import annotations

import datetime as dt
import os
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.fs as pafs

# File systems that rename a folder in one step; on the others (object stores) a folder is its files.
FOLDER_RENAMES = {"local", "hdfs"}


def store_uri(uri: str) -> str:
    """The form `deltalake` and pyarrow understand (Hadoop's s3a:// is plain s3:// to them)."""
    return "s3://" + uri[len("s3a://") :] if uri.startswith("s3a://") else uri


def absolute(uri: str) -> str:
    """Local paths become absolute; URIs (s3a://, hdfs://, file:/...) stay as they are. No trailing /."""
    if "://" in uri or uri.startswith("file:"):
        return uri.rstrip("/")
    return os.path.abspath(uri)


def s3_options(storage_options: dict[str, str]) -> dict[str, str]:
    """pyarrow S3FileSystem arguments from deltalake's storage options (AWS_ACCESS_KEY_ID, AWS_REGION,
    AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, ...; any case). Options pyarrow has no use for (conditional puts,
    locking) are deltalake's alone and left out."""
    names = {
        "access_key_id": "access_key",
        "secret_access_key": "secret_key",
        "session_token": "session_token",
        "token": "session_token",
        "region": "region",
        "default_region": "region",
        "endpoint": "endpoint_override",
        "endpoint_url": "endpoint_override",
    }
    options: dict[str, str] = {}
    allow_http = False
    for key, value in storage_options.items():
        name = key.lower().removeprefix("aws_")
        if name == "allow_http":
            allow_http = str(value).lower() == "true"
        elif name in names:
            options[names[name]] = value
    endpoint = options.get("endpoint_override", "")
    scheme, sep, host = endpoint.partition("://")
    if sep:
        options["endpoint_override"], options["scheme"] = host.rstrip("/"), scheme
    elif allow_http:
        options["scheme"] = "http"
    return options


@dataclass(frozen=True)
class FileEntry:
    uri: str  # the listed folder as the caller spelled it, then the relative path
    relative: str  # relative to the listed folder, with /
    is_dir: bool
    size: int | None  # bytes; None for a folder
    mtime: dt.datetime | None


class Files:
    """File and folder operations on local disks and object stores, with the lake's storage options."""

    def __init__(self, storage_options: dict[str, str] | None = None):
        self.storage_options = dict(storage_options or {})
        self._stores: dict[str, tuple[pafs.FileSystem, str]] = {}

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """The pyarrow file system of `uri` and the path on it."""
        if not uri or uri.endswith(":"):
            raise ValueError(f"not a path: {uri!r}")
        if "://" not in uri and not uri.startswith("file:"):
            return pafs.LocalFileSystem(), os.path.abspath(uri)
        parsed = urllib.parse.urlparse(store_uri(uri))
        if parsed.scheme == "file":
            return pafs.LocalFileSystem(), urllib.parse.unquote(parsed.path)
        key = f"{parsed.scheme}://{parsed.netloc}"
        if key in self._stores:  # one file system per bucket: building one may ask the store its region
            filesystem, prefix = self._stores[key]
            return filesystem, store_uri(uri)[len(prefix) :]
        if parsed.scheme == "s3" and self.storage_options:
            filesystem = pafs.S3FileSystem(**s3_options(self.storage_options))
            path = f"{parsed.netloc}{parsed.path}"
        else:
            filesystem, path = pafs.FileSystem.from_uri(store_uri(uri))
        full = store_uri(uri)
        prefix = full[: len(full) - len(path)]
        if full.endswith(path) and key.startswith(prefix):  # the path is all that follows the prefix
            self._stores[key] = (filesystem, prefix)
        return filesystem, path

    def _info(self, uri: str) -> pafs.FileInfo:
        filesystem, path = self.resolve(uri)
        return filesystem.get_file_info(path)

    def exists(self, uri: str) -> bool:
        return bool(self._info(uri).type != pafs.FileType.NotFound)

    def is_file(self, uri: str) -> bool:
        return bool(self._info(uri).type == pafs.FileType.File)

    def is_dir(self, uri: str) -> bool:
        return bool(self._info(uri).type == pafs.FileType.Directory)

    def make_dir(self, uri: str) -> None:
        filesystem, path = self.resolve(uri)
        filesystem.create_dir(path, recursive=True)

    def delete(self, uri: str) -> bool:
        """Delete the file, or the folder with everything in it, at `uri`; a missing one is fine.
        Returns whether there was something to delete. A store's root or a bucket is never deleted."""
        filesystem, path = self.resolve(uri)
        if _is_root(filesystem, path):
            raise ValueError(f"refusing to delete {uri}: the root of its store")
        kind = filesystem.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            filesystem.delete_dir(path)
        elif kind == pafs.FileType.File:
            filesystem.delete_file(path)
        return bool(kind != pafs.FileType.NotFound)

    def delete_if_empty(self, uri: str) -> bool:
        """Delete the folder at `uri` when it holds nothing (never a store's root or a bucket); returns
        whether it did."""
        filesystem, path = self.resolve(uri)
        if _is_root(filesystem, path) or not self.is_dir(uri) or self.list(uri, recursive=False):
            return False
        filesystem.delete_dir(path)
        return True

    def move(self, source: str, target: str) -> None:
        """Move a file (or, where the file system renames folders, a folder) to `target` on the same store,
        creating target's parent folders; a file at `target` is replaced."""
        filesystem, source_path = self.resolve(source)
        _, target_path = self.resolve(target)
        parent = target_path.rstrip("/").rpartition("/")[0]
        if parent:
            filesystem.create_dir(parent, recursive=True)
        filesystem.move(source_path, target_path)

    def list(self, uri: str, recursive: bool = True) -> list[FileEntry]:
        """Files and folders under the folder `uri` (everything below it with recursive), by relative path;
        empty when the folder does not exist."""
        filesystem, path = self.resolve(uri)
        base = path.rstrip("/")
        infos = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=recursive))
        entries = []
        for info in infos:
            relative = info.path[len(base) :].lstrip("/")
            is_dir = info.type == pafs.FileType.Directory
            entries.append(
                FileEntry(
                    uri=f"{uri.rstrip('/')}/{relative}",
                    relative=relative,
                    is_dir=is_dir,
                    size=None if is_dir else info.size,
                    mtime=info.mtime,
                )
            )
        return sorted(entries, key=lambda e: e.relative)

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write `data` as the file at `uri` (replacing it), creating its folder."""
        filesystem, path = self.resolve(uri)
        parent = path.rstrip("/").rpartition("/")[0]
        if parent:
            filesystem.create_dir(parent, recursive=True)
        with filesystem.open_output_stream(path) as out:
            out.write(data)

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def read_text(self, uri: str) -> str:
        filesystem, path = self.resolve(uri)
        with filesystem.open_input_stream(path) as stream:
            data: bytes = stream.read()
            return data.decode("utf-8")

    @contextmanager
    def staged_replace(self, folder: str) -> Iterator[str]:
        """Yields a staging folder beside `folder` (not created yet: Spark may write into it). When the
        block ends without an error, `folder` is replaced by what the block wrote there; otherwise `folder`
        stays as it was. Either way the staging folder is gone afterwards.

        The replacement is as atomic as the store allows: on local disks and HDFS two renames (the old
        folder aside, the staging folder in its place), so a reader sees the old or the new folder, and no
        folder only between the renames; on object stores, which have no folder rename, file by file
        (each object replaced whole), then the old folder's other files are deleted."""
        parent, _, _ = folder.rstrip("/").rpartition("/")
        staging = f"{parent}/_staging-{uuid.uuid4().hex}"
        try:
            yield staging
            self.make_dir(staging)  # the block may have written nothing
            self._replace(staging, folder.rstrip("/"))
        finally:
            self.delete(staging)

    def _replace(self, staging: str, folder: str) -> None:
        filesystem, _ = self.resolve(folder)
        if filesystem.type_name in FOLDER_RENAMES:
            aside = f"{folder.rpartition('/')[0]}/_replaced-{uuid.uuid4().hex}"
            had_old = self.exists(folder)
            if had_old:
                self.move(folder, aside)
            try:
                self.move(staging, folder)
            except BaseException:
                if had_old:
                    self.move(aside, folder)
                raise
            self.delete(aside)
            return
        staged = {e.relative for e in self.list(staging) if not e.is_dir}
        for relative in sorted(staged):
            self.move(f"{staging}/{relative}", f"{folder}/{relative}")
        for entry in self.list(folder):
            if not entry.is_dir and entry.relative not in staged:
                self.delete(entry.uri)


def _is_root(filesystem: pafs.FileSystem, path: str) -> bool:
    """The root of a disk, or of an object store or one of its buckets (`bucket` with no key)."""
    inside = path.strip("/")
    return not inside or (filesystem.type_name not in FOLDER_RENAMES and "/" not in inside)

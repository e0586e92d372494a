"""ObjectStore: artifacts in any fsspec file system (S3-compatible through s3fs, or a shared
folder), the data directory a bounded cache of verified local copies.

In the store an artifact `KEY` is its files under `PREFIX/KEY/…` (or the one object
`PREFIX/KEY`) and, written last, `PREFIX/KEY.manifest.json`: the size and sha256 of each
file. A key without a manifest does not exist for readers, so an upload that failed half-way
is invisible (and its objects are removed). `get` downloads every file into a temporary
folder, checks it against the manifest (one more try on a mismatch), and renames it into
place; the copy is then recorded under `DATA_DIR/.store/KEY.json` (its manifest), whose
modification time is the copy's last use. Copies least recently used are removed when the
cache passes `cache_bytes` (never one used in the last CACHE_GRACE_S).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import fsspec

from app.storage import ArtifactCorrupt, ArtifactMissing, StorageError
from app.storage.describe import describe
from app.storage.manifest import CHUNK, file_manifest

log = logging.getLogger(__name__)
T = TypeVar("T")
MANIFEST = ".manifest.json"
CACHE_DIR = ".store"  # under the data directory: one manifest per local copy, and per-key locks
CACHE_GRACE_S = 600.0  # a copy used this recently is never evicted (a job or a request may be reading it)
ATTEMPTS = 4  # tries of one transfer (1 s, 2 s, 4 s apart)


class ObjectStore:
    remote = True

    def __init__(self, url: str, root: Path, cache_bytes: int):
        self.url, self.root, self.cache_bytes = url.rstrip("/"), root, cache_bytes
        self.protocol = url.split("://", 1)[0] if "://" in url else "file"
        where = self.url.split("://", 1)[-1]
        self.prefix = where if self.protocol == "file" else where.strip("/")  # s3: bucket/prefix
        self._fs: Any = None
        self._pid = -1
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # --- the file system, made per process (s3fs's event loop does not survive a fork) ------

    @property
    def fs(self) -> Any:
        if self._fs is None or self._pid != os.getpid():
            options: dict[str, Any] = {"skip_instance_cache": True}
            if self.protocol == "s3":
                client: dict[str, Any] = {}
                if os.environ.get("AWS_ENDPOINT_URL"):
                    client["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
                if os.environ.get("AWS_DEFAULT_REGION"):
                    client["region_name"] = os.environ["AWS_DEFAULT_REGION"]
                options["client_kwargs"] = client
                # Fail in seconds, not minutes, when the endpoint is down; retries are ours.
                options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 1}}
            self._fs, self._pid = fsspec.filesystem(self.protocol, **options), os.getpid()
        return self._fs

    def _remote(self, key: str) -> str:
        return f"{self.prefix}/{key.strip('/')}"

    def _retrying(self, doing: str, action: Callable[[], T]) -> T:
        for attempt in range(ATTEMPTS):
            try:
                return action()
            except (FileNotFoundError, ArtifactCorrupt):
                raise
            except Exception as exc:
                if attempt == ATTEMPTS - 1 or "NoSuchBucket" in repr(exc) or "AccessDenied" in repr(exc):
                    raise StorageError(f"object store {self.url}: {doing} failed: {describe(exc)}") from exc
                log.warning("object store: %s failed (%s); retrying", doing, describe(exc))
                time.sleep(2**attempt)
        raise AssertionError("unreachable")

    # --- the interface (app.storage.Store) -------------------------------------------------

    def path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, source: Path | None = None) -> None:
        local = source or self.path(key)
        if not local.exists():
            raise ArtifactMissing(f"nothing to store at {key}")
        manifest = file_manifest(local)
        remote = self._remote(key)
        try:
            for rel in manifest["files"]:
                target = f"{remote}/{rel}" if rel else remote
                here = str(local / rel) if rel else str(local)
                self._retrying(f"uploading {key}/{rel}", partial(self.fs.put_file, here, target))
            body = json.dumps(manifest, sort_keys=True).encode()
            self._retrying(f"writing the manifest of {key}", lambda: self.fs.pipe_file(remote + MANIFEST, body))
        except BaseException:
            self._remove_objects(remote, manifest)  # never half an artifact without its manifest
            raise
        self._remember(key, manifest)

    def get(self, key: str) -> Path:
        local, marker = self.path(key), self._marker(key)
        with self._lock(key):
            if marker.is_file() and local.exists():
                os.utime(marker)
                return local
            manifest = self._manifest(key)
            for attempt in (1, 2):
                try:
                    self._download(key, manifest)
                    break
                except ArtifactCorrupt:
                    if attempt == 2:
                        raise
                    log.warning("object store: %s did not verify; downloading it again", key)
            self._remember(key, manifest)
        self._evict(keep=key)
        return local

    def exists(self, key: str) -> bool:
        return bool(self._retrying(f"looking up {key}", lambda: self.fs.exists(self._remote(key) + MANIFEST)))

    def read(self, key: str, rel: str) -> bytes | None:
        local, marker = self.path(key), self._marker(key)
        if marker.is_file() and local.is_dir():
            return (local / rel).read_bytes() if (local / rel).is_file() else None
        want = self._manifest(key)["files"].get(rel)
        if want is None:
            return None
        body: bytes = self._retrying(f"reading {key}/{rel}", lambda: self.fs.cat_file(f"{self._remote(key)}/{rel}"))
        if {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()} != want:
            raise ArtifactCorrupt(f"object store {self.url}: {key}/{rel} does not match its manifest")
        return body

    def delete(self, key: str) -> None:
        remote = self._remote(key)
        try:
            below = self._retrying(f"listing {key}", lambda: self.fs.find(remote))
        except FileNotFoundError:
            below = []
        manifests = [m for m in below if m.endswith(MANIFEST)]
        for m in [remote + MANIFEST, *manifests]:  # manifests first: the artifacts stop existing at once
            self._retrying(f"deleting {key}", partial(self._rm_if_there, m))
        if self._retrying(f"looking up {key}", lambda: self.fs.exists(remote)):
            self._retrying(f"deleting {key}", lambda: self.fs.rm(remote, recursive=True))
        local = self.path(key)
        shutil.rmtree(local, ignore_errors=True) if local.is_dir() else local.unlink(missing_ok=True)
        marker = self._marker(key)
        marker.unlink(missing_ok=True)
        shutil.rmtree(marker.with_suffix(""), ignore_errors=True)  # copies of keys under this prefix

    def size(self, key: str) -> int:
        remote = self._remote(key)
        try:
            return int(self._retrying(f"sizing {key}", lambda: self.fs.du(remote, total=True)))
        except FileNotFoundError:
            return 0

    def open(self, key: str) -> BinaryIO:
        manifest = self._manifest(key)
        if manifest["kind"] != "file":
            raise StorageError(f"{key} is a folder, not a file")
        stream: BinaryIO = self._retrying(
            f"opening {key}", lambda: self.fs.open(self._remote(key), "rb", block_size=CHUNK)
        )
        return stream

    def check(self) -> None:
        try:
            self._retrying(
                "listing the store",
                lambda: self.fs.ls(self.prefix.split("/", 1)[0] if self.protocol == "s3" else self.prefix),
            )
        except FileNotFoundError:
            raise StorageError(f"object store {self.url}: the bucket or folder does not exist") from None

    # --- helpers ------------------------------------------------------------------------------

    def _manifest(self, key: str) -> dict[str, Any]:
        try:
            body = self._retrying(
                f"reading the manifest of {key}", lambda: self.fs.cat_file(self._remote(key) + MANIFEST)
            )
        except FileNotFoundError:
            self.check()  # a missing bucket is the store's fault, not the artifact's: say so
            raise ArtifactMissing(f"object store {self.url} has no {key}") from None
        found: dict[str, Any] = json.loads(body)
        return found

    def _download(self, key: str, manifest: dict[str, Any]) -> None:
        local, remote = self.path(key), self._remote(key)
        local.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
        try:
            for rel, want in manifest["files"].items():
                target = scratch / rel if rel else scratch / "file"
                target.parent.mkdir(parents=True, exist_ok=True)
                source = f"{remote}/{rel}" if rel else remote
                try:
                    self._retrying(f"downloading {key}/{rel}", partial(self.fs.get_file, source, str(target)))
                except FileNotFoundError:
                    raise ArtifactCorrupt(
                        f"object store {self.url}: {key}/{rel} is in its manifest but not in the store"
                    ) from None
                got = file_manifest(target)["files"][""]
                if got != want:
                    raise ArtifactCorrupt(f"object store {self.url}: {key}/{rel} does not match its manifest")
            done = scratch / "file" if manifest["kind"] == "file" else scratch
            if local.is_dir():
                shutil.rmtree(local)
            done.replace(local)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _rm_if_there(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def _remove_objects(self, remote: str, manifest: dict[str, Any]) -> None:
        for rel in manifest["files"]:
            with contextlib.suppress(Exception):  # best effort: without a manifest they are invisible anyway
                self.fs.rm_file(f"{remote}/{rel}" if rel else remote)

    def _marker(self, key: str) -> Path:
        return self.root / CACHE_DIR / f"{key}.json"

    def _remember(self, key: str, manifest: dict[str, Any]) -> None:
        marker = self._marker(key)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"bytes": manifest["bytes"]}))

    @contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        """One download of a key at a time, across threads and processes sharing the cache."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        lock_file = self.root / CACHE_DIR / f"{key}.lock"
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with lock, lock_file.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _evict(self, keep: str) -> None:
        """Remove the least recently used local copies while the cache holds more than cache_bytes."""
        base = self.root / CACHE_DIR
        copies = []
        for marker in base.rglob("*.json"):
            try:
                copies.append((marker.stat().st_mtime, int(json.loads(marker.read_text())["bytes"]), marker))
            except (OSError, ValueError, KeyError):
                continue
        total = sum(size for _, size, _ in copies)
        now = time.time()
        for used, size, marker in sorted(copies):
            if total <= self.cache_bytes:
                return
            key = str(marker.relative_to(base))[: -len(".json")]
            if key == keep or now - used < CACHE_GRACE_S:
                continue
            local = self.path(key)
            marker.unlink(missing_ok=True)
            shutil.rmtree(local, ignore_errors=True) if local.is_dir() else local.unlink(missing_ok=True)
            total -= size
            log.info("cache: removed the local copy of %s (%d bytes)", key, size)

"""Where artifacts live: the data directory itself, or an object store with the data
directory as its bounded local cache (docs/scaling.md).

An artifact is a file or a folder named by its *key*: its path relative to the data
directory (`datasets/TENANT/ds_….jsonl`, `jobs/JOB/checkpoints/step-…`, `models/TENANT/ID`),
which is what database rows store. Every component asks the store for a local copy before
it reads (`get`) and hands it what it wrote before a row vouches for it (`put`):

    store = get_store(settings)
    store.put("jobs/job_x/checkpoints/step-000000010")   # upload, manifest last
    path = store.get("models/t_1/model_y")               # a verified local copy

`STAGECRAFT_STORAGE_URL` empty (the default, `stagecraft up`): `LocalStore`, the data
directory is the store and `put`/`get` cost nothing. Any fsspec URL (`s3://bucket/prefix`
on an S3-compatible endpoint from the `AWS_*` variables, or `file:///shared/folder`):
`ObjectStore` (app/storage/objects.py).
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol

from app.config import Settings
from models.errors import TrainingError

__all__ = ["ArtifactMissing", "LocalStore", "StorageError", "Store", "get_store", "key_of", "tree_bytes"]


class StorageError(TrainingError):
    """The object store failed (unreachable, refused, or an upload that kept failing).

    A job that meets one fails `system_error`; the API answers 503 `storage_unavailable`."""

    def __init__(self, message: str):
        super().__init__("system_error", message)


class ArtifactMissing(StorageError):
    """No complete copy of the key in the store (never uploaded, deleted, or its manifest gone)."""


class ArtifactCorrupt(StorageError):
    """A download that does not match its manifest (size or sha256), even after a retry."""


class Store(Protocol):
    """The one artifact-store interface (LocalStore, ObjectStore)."""

    root: Path  # the data directory: where `get` puts local copies
    remote: bool  # False: the data directory is the store

    def path(self, key: str) -> Path:
        """Where the key's local copy is (or would be); downloads nothing."""

    def put(self, key: str, source: Path | None = None) -> None:
        """Upload the local copy of `key` (or `source`, which then becomes that copy) as one
        artifact, file or folder, its manifest last: readers see all of it or nothing."""

    def get(self, key: str) -> Path:
        """A verified local copy of `key` (downloaded if needed); ArtifactMissing if the store has none."""

    def exists(self, key: str) -> bool: ...

    def read(self, key: str, rel: str) -> bytes | None:
        """One file of a folder artifact (config.json, state.json), without downloading the rest;
        None if the artifact has no such file. ArtifactMissing if there is no artifact."""

    def delete(self, key: str) -> None:
        """Remove the key (a file, a folder, or every artifact under that prefix), here and in the store."""

    def size(self, key: str) -> int:
        """Bytes the store holds under the key."""

    def open(self, key: str) -> BinaryIO:
        """Read a file artifact as a stream from the store (exports are sent this way)."""

    def check(self) -> None:
        """Raise StorageError naming the store if it cannot be used (for /readyz)."""


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


class LocalStore:
    """The data directory is the store: nothing to upload or download."""

    remote = False

    def __init__(self, root: Path):
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, source: Path | None = None) -> None:
        if not (source or self.path(key)).exists():
            raise ArtifactMissing(f"nothing to store at {key}")

    def get(self, key: str) -> Path:
        path = self.path(key)
        if not path.exists():
            raise ArtifactMissing(f"artifact {key} is missing from {self.root}")
        return path

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def read(self, key: str, rel: str) -> bytes | None:
        folder = self.get(key)
        return (folder / rel).read_bytes() if (folder / rel).is_file() else None

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def size(self, key: str) -> int:
        return tree_bytes(self.path(key))

    def open(self, key: str) -> BinaryIO:
        return self.get(key).open("rb")

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"the data directory {self.root} does not exist")


def key_of(settings: Settings, path: Path) -> str:
    """The key of a path under the data directory (what rows store)."""
    return str(path.relative_to(settings.data_dir))


def get_store(settings: Settings) -> Store:
    return _store(settings.storage_url, settings.data_dir, settings.cache_bytes)


@lru_cache(maxsize=8)
def _store(url: str, root: Path, cache_bytes: int) -> Store:
    if not url:
        return LocalStore(root)
    from app.storage.objects import ObjectStore

    return ObjectStore(url, root, cache_bytes)

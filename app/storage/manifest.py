"""What an artifact's manifest says: the size and sha256 of each of its files. Written last
on upload (app/storage/objects.py), checked on every download."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def file_manifest(path: Path) -> dict[str, Any]:
    """{"kind", "bytes", "files": {relative path: {"size", "sha256"}}} of a local file or folder."""
    files = (
        [("", path)]
        if path.is_file()
        else sorted((str(p.relative_to(path)), p) for p in path.rglob("*") if p.is_file())
    )
    entries = {}
    for rel, p in files:
        digest = hashlib.sha256()
        with p.open("rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        entries[rel] = {"size": p.stat().st_size, "sha256": digest.hexdigest()}
    kind = "file" if path.is_file() else "dir"
    return {"version": 1, "kind": kind, "bytes": sum(e["size"] for e in entries.values()), "files": entries}

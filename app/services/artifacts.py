"""Models, adapters and checkpoints as the store holds them (app/storage): what a service
reads of them without downloading their weights, and local copies when it needs the weights.

An adapter's folder names its base by a path relative to itself (app.services.adapters,
`base_path`), so the base's key follows from the adapter's; fetching an adapter fetches its
base too."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from app.config import Settings
from app.services.adapters import INFO
from app.storage import ArtifactMissing, get_store
from models.formats.layout import ADAPTER_CONFIG


def read_json(settings: Settings, key: str, rel: str) -> dict[str, Any] | None:
    """A JSON file of an artifact (None if the artifact, or the file, is missing or not an object)."""
    try:
        body = get_store(settings).read(key, rel)
    except ArtifactMissing:
        return None
    try:
        found = json.loads(body) if body is not None else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def is_adapter(settings: Settings, key: str) -> bool:
    return read_json(settings, key, ADAPTER_CONFIG) is not None


def base_key(settings: Settings, key: str) -> str | None:
    """The key of an adapter's base model (None if it names none)."""
    rel = (read_json(settings, key, INFO) or {}).get("base_path")
    if not isinstance(rel, str) or not rel:
        return None
    return os.path.relpath(os.path.normpath(settings.data_dir / key / rel), settings.data_dir)


def model_config(settings: Settings, key: str) -> dict[str, Any] | None:
    """config.json of a model, or of an adapter's base."""
    if is_adapter(settings, key):
        base = base_key(settings, key)
        return read_json(settings, base, "config.json") if base else None
    return read_json(settings, key, "config.json")


def local_model(settings: Settings, key: str) -> Path:
    """A local copy of a model folder; for an adapter, of its base as well."""
    store = get_store(settings)
    path = store.get(key)
    if store.remote and is_adapter(settings, key):
        base = base_key(settings, key)
        if base is not None:
            store.get(base)
    return path

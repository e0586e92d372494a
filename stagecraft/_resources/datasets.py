"""`client.datasets`: upload, list, get, delete."""

from __future__ import annotations

from pathlib import Path

from stagecraft._http import Transport
from stagecraft._pagination import Paginator
from stagecraft.types import Dataset, Deleted

UPLOAD_TIMEOUT_S = 600.0


class Datasets:
    def __init__(self, transport: Transport):
        self._t = transport

    def upload(self, path: str | Path, name: str | None = None) -> Dataset:
        """Upload a text corpus (.txt, or .jsonl of {"text"}), supervised records (.jsonl) or
        preference records (.jsonl of {"prompt", "chosen", "rejected"} or OpenAI's preference format).
        The service validates the whole file first: a bad one raises UnprocessableEntityError
        (`invalid_dataset`) whose details list every bad line as {line, field, reason}."""
        body = self._t.upload("/v1/datasets", path, name, UPLOAD_TIMEOUT_S)
        return Dataset.model_validate(body)

    def list(self, limit: int = 20, after: str | None = None) -> Paginator[Dataset]:
        """Every dataset, newest first, fetched `limit` per page as the iteration goes."""
        return Paginator(self._t, "/v1/datasets", Dataset, {"limit": limit, "after": after})

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._t.json("GET", f"/v1/datasets/{dataset_id}"))

    def delete(self, dataset_id: str) -> Deleted:
        """ConflictError (`dataset_in_use`) while an unfinished job uses it."""
        return Deleted.model_validate(self._t.json("DELETE", f"/v1/datasets/{dataset_id}"))

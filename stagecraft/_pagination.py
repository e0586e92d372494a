"""Cursor pagination: `{data, has_more, next_cursor}` pages, followed lazily."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from stagecraft._http import Transport

T = TypeVar("T", bound=BaseModel)


class Paginator(Generic[T]):
    """Iterates every object of a listing, fetching the next page (`after=next_cursor`) only
    when the previous one is used up. `limit` is the page size; `first_page()` fetches one."""

    def __init__(
        self,
        transport: Transport,
        path: str,
        item: type[T],
        params: dict[str, Any],
        convert: Callable[[Any], T] | None = None,
    ):
        self.transport, self.path, self.item = transport, path, item
        self.params = {k: v for k, v in params.items() if v is not None}
        self.convert = convert or item.model_validate

    def page(self, after: str | None = None) -> tuple[list[T], str | None]:
        """One page from the cursor: its objects and the next cursor (None at the end)."""
        params = {k: v for k, v in self.params.items() if k != "after"}
        if after:
            params["after"] = after
        body = self.transport.json("GET", self.path, params=params)
        items = [self.convert(x) for x in body.get("data", [])]
        more = bool(body.get("has_more")) and body.get("next_cursor") is not None
        return items, (str(body["next_cursor"]) if more else None)

    def first_page(self) -> list[T]:
        return self.page(self.params.get("after"))[0]

    def __iter__(self) -> Iterator[T]:
        cursor: str | None = self.params.get("after")
        while True:
            items, cursor = self.page(cursor)
            yield from items
            if cursor is None:
                return

    def to_list(self) -> list[T]:
        return list(self)

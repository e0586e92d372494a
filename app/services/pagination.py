"""Cursor pagination over time-ordered ids (see app.tables.new_id): newest first."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.services.names import check_id

Row = TypeVar("Row")
MAX_LIMIT = 100


def page(
    session: Session, stmt: Select[Row], id_col: InstrumentedAttribute[Any], limit: int, after: str | None
) -> tuple[list[Row], bool]:
    """Up to `limit` rows older than the cursor `after` (an id: 422 naming `after` otherwise),
    and whether more follow."""
    if after:
        stmt = stmt.where(id_col < check_id(after, "after"))
    rows = list(session.scalars(stmt.order_by(id_col.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit

"""Thin HTTP handlers: parse, call a service, shape the response."""

from __future__ import annotations

from typing import Any

from app.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "no such object for this tenant"},
    422: {"model": ErrorResponse, "description": "invalid parameters"},
}


def error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}

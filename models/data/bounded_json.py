"""json.loads with a bound on nesting. The standard parser recurses once per level of
arrays/objects, so a deep enough document raises RecursionError (and values nested
hundreds deep make every later recursive walk fragile); this refuses them as a ValueError."""

from __future__ import annotations

import json
from typing import Any

from models.errors import TooDeep

MAX_DEPTH = 64


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise TooDeep if arrays/objects nest more than `limit` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children: Any = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth > limit:
            raise TooDeep(f"the JSON nests more than {limit} levels of arrays and objects")
        stack.extend((c, depth + 1) for c in children)


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """json.loads, refusing (TooDeep) documents nested more than `max_depth` levels."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise TooDeep(f"the JSON nests more than {max_depth} levels of arrays and objects") from None
    check_depth(value, max_depth)
    return value

"""A job spec pasted into the dashboard as YAML, read as `stagecraft jobs submit` reads a
spec file (PyYAML's safe loader), and handed back as JSON for the page to send to
/v1/jobs/validate and /v1/jobs. Bounded, since the text is anyone's: nesting no deeper than
the JSON bodies' `max_json_depth` (checked on the parser's events, before the recursive
composer runs), and at most MAX_NODES values once anchors and aliases are expanded (a
"billion laughs" document, or one that refers to itself, stops there)."""

from __future__ import annotations

import datetime
import math
from typing import Any

import yaml

from app.errors import Invalid, ServiceError

MAX_NODES = 100_000
Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _too_deep(max_depth: int) -> Invalid:
    message = f"the spec is nested deeper than {max_depth} levels"
    return Invalid(message, [{"loc": "body", "message": message}])


def _syntax(exc: yaml.YAMLError) -> ServiceError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    detail: dict[str, Any] = {"loc": "body", "message": problem}
    where = ""
    if mark is not None:
        detail |= {"line": mark.line + 1, "column": mark.column + 1}
        where = f" (line {mark.line + 1}, column {mark.column + 1})"
    return ServiceError(f"the spec is not valid YAML: {problem}{where}", [detail], code="invalid_yaml")


def parse(text: bytes, max_depth: int, max_nodes: int = MAX_NODES) -> Any:
    """The YAML (or JSON) document in `text` as JSON values: 400 `invalid_yaml` with the line
    and column of a syntax error, 422 past the bounds."""
    try:
        source = text.decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceError("the spec is not UTF-8 text", code="invalid_yaml") from None
    try:
        depth = 0
        for event in yaml.parse(source, Loader=Loader):
            if isinstance(event, _OPEN):
                depth += 1
                if depth > max_depth:
                    raise _too_deep(max_depth)
            elif isinstance(event, _CLOSE):
                depth -= 1
        value = yaml.load(source, Loader=Loader)  # a safe loader (no Python objects)
    except yaml.YAMLError as exc:
        raise _syntax(exc) from None
    return _jsonable(value, max_depth, max_nodes)


def _key(k: Any) -> str:
    if isinstance(k, bool) or k is None:
        return {True: "true", False: "false", None: "null"}[k]
    return k if isinstance(k, str) else str(_scalar(k))


def _scalar(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)  # JSON has no NaN: the spec check names the field
    if isinstance(v, datetime.date | datetime.datetime):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def _jsonable(value: Any, max_depth: int, max_nodes: int) -> Any:
    """A copy with JSON's types only, built without recursion (aliases expanded, counted)."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]
    nodes = 0
    while stack:
        v, parent, slot, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            message = f"the spec has more than {max_nodes} values once its aliases are expanded"
            raise Invalid(message, [{"loc": "body", "message": message}])
        if isinstance(v, dict | list | tuple) and depth >= max_depth:
            raise _too_deep(max_depth)
        if isinstance(v, dict):
            out: dict[str, Any] = {}
            for k, child in v.items():
                out[_key(k)] = None
                stack.append((child, out, _key(k), depth + 1))
            parent[slot] = out
        elif isinstance(v, list | tuple):
            items: list[Any] = [None] * len(v)
            stack.extend((child, items, i, depth + 1) for i, child in enumerate(v))
            parent[slot] = items
        else:
            parent[slot] = _scalar(v)
    return root[0]

"""The OpenAPI document, corrected to say what the service does:

- every status a route can return is listed: 429 (rate limits, quotas) and 503 (a
  dependency down) on every /v1 route; 400 (`invalid_json`), 413 and 415 on every route
  that reads a JSON body, 400 (`invalid_multipart`) on uploads, 415 on the other routes of
  a method that may carry a body (app.api.body);
- bounds are JSON Schema's (`exclusiveMinimum`, `maximum`, ...), where pydantic left the
  `gt`/`ge`/`lt`/`le` of constrained types it could not translate;
- streamed answers are declared as `text/event-stream` beside their JSON.
"""

from __future__ import annotations

from typing import Any

from app.api.schemas import ErrorResponse

BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
STREAMED = ("/v1/completions", "/v1/chat/completions")


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": ERROR_REF}


RATE = (
    "`rate_limited`: too many requests with this key (Retry-After says when to retry); "
    "`quota_exceeded`: a tenant quota (jobs, storage) is used up"
)
EVERY_V1 = {
    "429": _error(RATE),
    "503": _error("`unavailable`: a service this one depends on does not answer (Retry-After)"),
}
JSON_BODY = {
    "400": _error("`invalid_json`: the body is not JSON, or nests too deeply (line and column named)"),
    "413": _error("`payload_too_large`: the body is over the size limit"),
    "415": _error("`unsupported_media_type`: the body is not sent as application/json"),
}
MULTIPART_BODY = {"400": _error("`invalid_multipart`: a malformed multipart body")}
NO_BODY = {"415": _error("`unsupported_media_type`: a body sent to a route that takes none (JSON is ignored)")}


def _bounds(node: Any) -> None:
    """gt/ge/lt/le with a number -> JSON Schema's keywords, everywhere (iteratively)."""
    stack = [node]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for short, standard in BOUNDS.items():
                if isinstance(v.get(short), (int, float)) and not isinstance(v.get(short), bool):
                    v[standard] = v.pop(short)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def correct(schema: dict[str, Any]) -> dict[str, Any]:
    _bounds(schema)
    schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
        "ErrorResponse", ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            extra: dict[str, Any] = dict(EVERY_V1) if path.startswith("/v1/") else {}
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                extra.update(JSON_BODY)
            elif "multipart/form-data" in content:
                extra.update(MULTIPART_BODY)
            elif method in ("post", "put", "patch", "delete"):
                extra.update(NO_BODY)
            for status, response in extra.items():
                responses.setdefault(status, response)
            if path in STREAMED and "200" in responses:
                ok = responses["200"].setdefault("content", {})
                ok.setdefault("text/event-stream", {"schema": {"type": "string"}})
                responses["200"]["description"] += "; with `stream: true`, Server-Sent Events ending `data: [DONE]`"
    return schema

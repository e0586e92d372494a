"""What FastAPI cannot infer for the OpenAPI document: error responses, bodies the routes
read themselves (the job spec, uploads), streamed answers, and the JobSpec schema."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from app.api import openapi_truth
from app.api.schemas import ErrorResponse
from models.spec import JobSpec

Responses = dict[int | str, dict[str, Any]]


def error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERRORS: Responses = {
    401: error("missing or invalid API key"),
    404: error("no such object for this tenant"),
    422: error("invalid parameters"),
}
SERVE_ERRORS: Responses = {
    409: error("`model_not_ready`: a job id whose job has not succeeded"),
    422: error("invalid parameters; `context_length_exceeded`: the prompt leaves no room in the context"),
}
SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}},
        "description": "the job spec (docs/spec.md); dataset fields hold dataset ids",
    }
}
SPEC_ERRORS: Responses = {
    400: error("`invalid_json`: the body is not JSON (line and column named)"),
    422: error("`invalid_spec`: details list every error as {loc, message}, loc a dotted field path"),
}
UPLOAD_ERRORS: Responses = {
    413: error("the file is over the upload limit"),
    415: error("not multipart/form-data"),
}
GENERATION_STREAM: Responses = {
    200: {
        "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}},
        "description": "the generation; with `stream: true`, SSE events `token` ({text}) and a final "
        "`done` (the same object as the JSON answer)",
    }
}
EVENT_STREAM: Responses = {
    200: {
        "content": {
            "application/json": {},
            "text/event-stream": {
                "schema": {"type": "string"},
                "example": 'id: 7\nevent: train.step\ndata: {"seq": 7, "type": "train.step", ...}\n\n',
            },
        },
        "description": "a page of events; with `Accept: text/event-stream`, a stream of every event after "
        "`Last-Event-ID` (or `after`), `id` = seq, `event` = type, `data` = the event JSON; the server "
        "closes it after the final event (job.succeeded, job.failed or job.cancelled)",
    }
}


def upload_body(file_description: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request body of an upload route (`openapi_extra`): multipart with a required
    `file`, an optional `name` and any `extra` fields. The routes read the stream themselves
    (app.api.uploads)."""
    properties = {
        "file": {"type": "string", "format": "binary", "description": file_description},
        "name": {"type": "string", "description": "defaults to the file name"},
        **(extra or {}),
    }
    schema = {"type": "object", "required": ["file"], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def with_job_spec(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the JobSpec, which the job routes read as raw JSON (to report
    spec errors with their field paths) and so do not declare as a parameter."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    _, defs = models_json_schema([(JobSpec, "validation")], ref_template="#/components/schemas/{model}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    app.openapi_schema = openapi_truth.correct(schema)
    return schema

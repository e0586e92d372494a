"""/docs and /openapi.json describe every route of docs/api.md that this service has."""

from __future__ import annotations

import json

import httpx

from tests.system.stack import Stack

ROUTES = {
    ("post", "/v1/datasets"),
    ("get", "/v1/datasets"),
    ("get", "/v1/datasets/{dataset_id}"),
    ("delete", "/v1/datasets/{dataset_id}"),
    ("post", "/v1/jobs/validate"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{job_id}"),
    ("delete", "/v1/jobs/{job_id}"),
    ("delete", "/v1/models/{model_id}"),
    ("post", "/v1/jobs/{job_id}/cancel"),
    ("get", "/v1/jobs/{job_id}/events"),
    ("get", "/v1/jobs/{job_id}/metrics"),
    ("get", "/v1/jobs/{job_id}/metrics.png"),
    ("get", "/v1/jobs/{job_id}/metrics.svg"),
    ("get", "/v1/jobs/{job_id}/checkpoints"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{model_id}"),
    ("post", "/v1/models"),
    ("get", "/v1/models/{model_id}/export"),
    ("post", "/v1/models/{model_id}/generate"),
    ("post", "/v1/models/{model_id}/translate"),
    ("post", "/v1/models/{model_id}/answer"),
    ("post", "/v1/models/{model_id}/summarize"),
    ("post", "/v1/completions"),
    ("post", "/v1/chat/completions"),
    ("get", "/v1/jobs/{job_id}/evaluation"),
    ("post", "/v1/files"),
    ("get", "/v1/files"),
    ("get", "/v1/files/{file_id}"),
    ("get", "/v1/files/{file_id}/content"),
    ("delete", "/v1/files/{file_id}"),
    ("post", "/v1/fine_tuning/jobs"),
    ("get", "/v1/fine_tuning/jobs"),
    ("get", "/v1/fine_tuning/jobs/{job_id}"),
    ("post", "/v1/fine_tuning/jobs/{job_id}/cancel"),
    ("get", "/v1/fine_tuning/jobs/{job_id}/events"),
    ("get", "/v1/fine_tuning/jobs/{job_id}/checkpoints"),
    ("post", "/v1/webhooks"),
    ("get", "/v1/webhooks"),
    ("get", "/v1/webhooks/{webhook_id}"),
    ("delete", "/v1/webhooks/{webhook_id}"),
    ("get", "/v1/webhooks/{webhook_id}/deliveries"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
}


def test_openapi_documents_every_route(pg_stack: Stack) -> None:
    doc = httpx.get(pg_stack.url + "/openapi.json").json()
    ops = {(m, p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert set(ops) == ROUTES
    for (_, path), op in ops.items():
        if path.startswith("/v1/"):
            assert op["security"] == [{"HTTPBearer": []}], path
            error = op["responses"]["401"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorResponse"}, path
    assert "JobSpec" in doc["components"]["schemas"]
    for path in ("/v1/jobs", "/v1/jobs/validate"):
        body = ops[("post", path)]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/JobSpec"}
    assert "multipart/form-data" in ops[("post", "/v1/datasets")]["requestBody"]["content"]
    assert "text/event-stream" in ops[("get", "/v1/jobs/{job_id}/events")]["responses"]["200"]["content"]
    assert "text/event-stream" in ops[("post", "/v1/models/{model_id}/generate")]["responses"]["200"]["content"]
    assert "multipart/form-data" in ops[("post", "/v1/models")]["requestBody"]["content"]
    assert "multipart/form-data" in ops[("post", "/v1/files")]["requestBody"]["content"]
    assert doc["components"]["schemas"]["ErrorBody"]["properties"].keys() >= {"code", "message", "param", "type"}
    for (_, path), op in ops.items():  # what every route may answer besides its own codes
        assert not path.startswith("/v1/") or {"429", "503"} <= set(op["responses"]), path
        if "application/json" in op.get("requestBody", {}).get("content", {}):
            assert {"400", "413", "415"} <= set(op["responses"]), path
    assert '"gt"' not in json.dumps(doc) and '"exclusiveMinimum"' in json.dumps(doc)
    docs = httpx.get(pg_stack.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()

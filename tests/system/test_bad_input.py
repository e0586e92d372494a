"""Bad requests get the documented 4xx, in the one error shape, naming the field or line;
nothing is queued and nothing answers 500."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.system.stack import UPLOAD_LIMIT, Api, Stack, example_spec


@pytest.fixture(scope="module")
def api(pg_stack: Stack) -> Iterator[Api]:
    with pg_stack.api() as client:
        yield client


@pytest.fixture(scope="module")
def spec(api: Api, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("small")
    (d / "corpus.txt").write_text("".join(f"document number {i} about apples and maps\n" for i in range(200)))
    (d / "pairs.jsonl").write_text("".join(f'{{"prompt": "say {i}", "completion": "{i}"}}\n' for i in range(50)))
    return example_spec({"corpus": api.upload(d / "corpus.txt")["id"], "pairs": api.upload(d / "pairs.jsonl")["id"]})


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details", "param", "type"}, body
    assert body["error"]["code"] == code and body["error"]["message"], body
    out: dict[str, Any] = body["error"]
    return out


def locs(err: dict[str, Any]) -> set[str]:
    return {d["loc"] for d in err["details"]}


def job_count(api: Api) -> int:
    return len(api.http.get("/v1/jobs", params={"limit": 100}).json()["data"])


@pytest.fixture(scope="module", autouse=True)
def nothing_queued_and_no_500(api: Api) -> Iterator[None]:
    before = job_count(api)
    yield
    assert job_count(api) == before, "a bad request queued a job"
    text = api.http.get("/metrics").text
    assert not re.search(r'stagecraft_http_requests_total\{[^}]*status="5\d\d"\}', text), "some request got a 5xx"


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/validate"])
def test_malformed_json_is_400_with_its_position(api: Api, path: str) -> None:
    r = api.http.post(path, content=b'{"name": "x",\n "seed": }', headers={"Content-Type": "application/json"})
    err = error(r, 400, "invalid_json")
    assert err["details"][0]["line"] == 2


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/validate"])
def test_every_spec_error_is_listed_with_its_field(api: Api, spec: dict[str, Any], path: str) -> None:
    bad = copy.deepcopy(spec)
    bad["stages"][0]["stepz"] = 5  # unknown field
    bad["stages"][0]["steps"] = 0  # out of range
    bad["stages"][1]["optimizer"]["lr"] = -1.0
    bad["model"]["dropout"] = 1.5
    bad["colour"] = "blue"
    err = error(api.http.post(path, json=bad), 422, "invalid_spec")
    assert {"stages.0.stepz", "stages.0.steps", "stages.1.optimizer.lr", "model.dropout", "colour"} <= locs(err)
    first = err["details"][0]
    assert err["message"].startswith(f"{first['loc']}: {first['message']} (") and "all in details" in err["message"]
    assert err["param"] is None  # several fields are at fault
    one = copy.deepcopy(spec)
    one["stages"][1]["optimizer"]["lr"] = -1.0
    err = error(api.http.post(path, json=one), 422, "invalid_spec")
    assert err["message"] == "stages.1.optimizer.lr: Input should be greater than 0"
    assert err["param"] == "stages.1.optimizer.lr" and err["type"] == "invalid_request_error"


def test_unknown_and_mismatched_datasets_are_named(api: Api, spec: dict[str, Any]) -> None:
    bad = copy.deepcopy(spec)
    bad["data"]["pairs"]["dataset"] = "ds_0000000000000000000000000000"
    err = error(api.http.post("/v1/jobs", json=bad), 422, "invalid_spec")
    assert locs(err) == {"data.pairs.dataset"}
    bad["data"]["pairs"]["dataset"] = spec["data"]["corpus"]["dataset"]  # text where finetune needs records
    err = error(api.http.post("/v1/jobs", json=bad), 422, "invalid_spec")
    assert locs(err) == {"stages.1.data", "stages.2.phases.1.data"}
    bad["model"]["init_from"] = {"model": "model_nope"}
    assert "model.init_from.model" in locs(error(api.http.post("/v1/jobs", json=bad), 422, "invalid_spec"))


def test_non_object_spec(api: Api) -> None:
    assert locs(error(api.http.post("/v1/jobs", json=[1, 2]), 422, "invalid_spec")) == {"(root)"}


def test_validate_accepts_a_good_spec_with_estimates(api: Api, spec: dict[str, Any]) -> None:
    r = api.http.post("/v1/jobs/validate", json=spec)
    assert r.status_code == 200, r.text
    est = r.json()["estimates"]
    assert r.json()["valid"] is True and est["parameters"] > 0 and est["tokens"] == 64 * 8 * est["total_steps"]


def test_bad_data_lines_are_reported_by_line_and_field(api: Api, tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\nnot json\n{"prompt": "a"}\n{"task": "qa", "context": "c"}\n')
    with f.open("rb") as fh:
        err = error(api.http.post("/v1/datasets", files={"file": ("bad.jsonl", fh)}), 422, "invalid_dataset")
    got = {(d["line"], d["field"]) for d in err["details"]}
    assert {(2, "(line)"), (3, "completion"), (4, "question"), (4, "answer")} <= got
    assert all(d["reason"] for d in err["details"])
    first = err["details"][0]
    assert err["message"].startswith(f"line {first['line']}: {first['field']}: {first['reason']} (bad.jsonl: ")
    err = error(api.http.post("/v1/datasets", files={"file": ("data.csv", b"a,b\n")}), 422, "invalid_dataset")
    assert err["details"][0]["line"] == 0


def test_oversized_uploads_are_413(api: Api) -> None:
    big = b"word " * (UPLOAD_LIMIT // 5 + 1000)
    error(api.http.post("/v1/datasets", files={"file": ("big.txt", big)}), 413, "payload_too_large")
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'.encode()

    def chunked() -> Iterator[bytes]:  # no Content-Length: the cap is enforced while streaming
        yield head
        for _ in range(UPLOAD_LIMIT // 65536 + 2):
            yield b"x" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = api.http.post(
        "/v1/datasets", content=chunked(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    error(r, 413, "payload_too_large")
    names = [d["name"] for d in api.http.get("/v1/datasets", params={"limit": 100}).json()["data"]]
    assert "big.txt" not in names


def test_upload_needs_multipart_with_a_file(api: Api) -> None:
    error(api.http.post("/v1/datasets", json={"file": "x"}), 415, "unsupported_media_type")
    assert locs(error(api.http.post("/v1/datasets", files={"name": (None, "x")}), 422, "invalid_request")) == {"file"}


def test_parameters_routes_and_methods(api: Api) -> None:
    err = error(api.http.get("/v1/jobs", params={"limit": 0}), 422, "invalid_request")
    assert "query.limit" in locs(err) and err["param"] == "limit"
    assert err["message"] == "limit: Input should be greater than or equal to 1"
    assert "query.status" in locs(error(api.http.get("/v1/jobs", params={"status": "x"}), 422, "invalid_request"))
    error(api.http.get("/v1/jobs/job_nope"), 404, "not_found")
    error(api.http.get("/v1/jobs/job_nope/events"), 404, "not_found")
    error(api.http.post("/v1/jobs/job_nope/cancel"), 404, "not_found")
    error(api.http.get("/v1/datasets/ds_nope"), 404, "not_found")
    error(api.http.get("/v1/nothing-here"), 404, "not_found")
    error(api.http.delete("/v1/jobs"), 405, "method_not_allowed")
    long_key = {"Idempotency-Key": "k" * 300}
    assert "header.idempotency-key" in locs(
        error(api.http.post("/v1/jobs", json={}, headers=long_key), 422, "invalid_request")
    )


def test_api_keys(pg_stack: Stack, spec: dict[str, Any]) -> None:
    r = httpx.get(pg_stack.url + "/v1/jobs")
    error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    error(httpx.get(pg_stack.url + "/v1/jobs", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
    error(httpx.get(pg_stack.url + "/v1/jobs", headers={"Authorization": "Basic eDp5"}), 401, "unauthorized")


def test_another_tenants_objects_are_missing(pg_stack: Stack, api: Api, spec: dict[str, Any]) -> None:
    ds_id = spec["data"]["corpus"]["dataset"]
    with pg_stack.api(pg_stack.new_key("beta")) as other:
        assert other.http.get("/v1/datasets").json()["data"] == []
        assert other.http.get("/v1/jobs").json()["data"] == []
        error(other.http.get(f"/v1/datasets/{ds_id}"), 404, "not_found")
        error(other.http.delete(f"/v1/datasets/{ds_id}"), 404, "not_found")
        err = error(other.http.post("/v1/jobs/validate", json=spec), 422, "invalid_spec")
        assert locs(err) == {"data.corpus.dataset", "data.pairs.dataset"}
    assert api.http.get(f"/v1/datasets/{ds_id}").status_code == 200


def test_dataset_pages_and_delete(api: Api, tmp_path: Path) -> None:
    ids = []
    for i in range(3):
        f = tmp_path / f"page{i}.txt"
        f.write_text(f"text {i}\n")
        ids.append(api.upload(f)["id"])
    first = api.http.get("/v1/datasets", params={"limit": 2}).json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2] and first["has_more"]
    second = api.http.get("/v1/datasets", params={"limit": 2, "after": first["next_cursor"]}).json()
    assert second["data"][0]["id"] == ids[0]
    r = api.http.delete(f"/v1/datasets/{ids[0]}")
    assert r.status_code == 200 and r.json() == {"id": ids[0], "object": "dataset", "deleted": True}
    error(api.http.get(f"/v1/datasets/{ids[0]}"), 404, "not_found")


def test_a_json_route_without_a_json_content_type_says_so(api: Api) -> None:
    """curl's `-d` sends form encoding: the answer names the header to send, not a field."""
    body = b'{"prompt": "At the market,", "max_new_tokens": 4}'
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    err = error(
        api.http.post("/v1/models/model_nope/generate", content=body, headers=form), 415, "unsupported_media_type"
    )
    assert "Content-Type: application/json" in err["message"] and "x-www-form-urlencoded" in err["message"]
    # with the header, the same body reaches the route (which finds no such model)
    json_header = {"Content-Type": "application/json"}
    error(api.http.post("/v1/models/model_nope/generate", content=body, headers=json_header), 404, "not_found")

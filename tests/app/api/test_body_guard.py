"""Every request body, whatever its Content-Type, is authenticated before it is read, and a
type its route does not document is a 415 before it is read: over a raw socket to uvicorn,
the answer comes before a byte of a declared 100 MB body is sent, /healthz answers while that
request is open, and the server then closes the connection, so that no more than what the
kernel buffers of the body can be sent. A 405 lists every method of its path."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from tests.app.api.conftest import Client, error

DECLARED = 100 * 2**20  # what the request says its body is
BUFFERED = 32 * 2**20  # more than loopback's socket buffers hold: what a closed peer still accepts
BOUNDARY = "b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response off the socket: (status, headers, body)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before an answer: {received!r}"
        received += chunk
    raw_head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode().split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(fields["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), fields, body


def answer_before_the_body(url: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """Send the head of a request declaring a DECLARED-byte body and read the answer before a
    byte of that body is sent; check that /healthz answers meanwhile and that the server then
    stops reading: the rest of the body can no longer be sent past what the kernel buffers."""
    host, port = url.removeprefix("http://").split(":")
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {DECLARED}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        answer = _response(sock)
        healthz = httpx.get(url + "/healthz", timeout=10)  # while the request is open, its body unsent
        assert healthz.status_code == 200 and healthz.json() == {"status": "ok"}
        sent, block = 0, b"x" * 2**20
        try:
            while sent < DECLARED:
                sock.sendall(block)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < BUFFERED, f"the server read {sent} bytes of the body of a refused request ({path})"
    return answer


def test_an_unauthenticated_100_mb_upload_is_refused_unread(
    settings: Settings, serve: Callable[[FastAPI], str]
) -> None:
    url = serve(create_app(settings))
    for path in ("/v1/datasets", "/v1/models", "/v1/files", "/v1/jobs"):
        status, headers, body = answer_before_the_body(url, path, {"Content-Type": MULTIPART})
        assert status == 401 and headers["www-authenticate"] == "Bearer", (path, status, body)
        assert headers["connection"] == "close" and b'"unauthorized"' in body
        status, _, body = answer_before_the_body(
            url, path, {"Content-Type": "text/plain", "Authorization": "Bearer sk-sc-nope"}
        )
        assert status == 401 and b'"unauthorized"' in body, (path, status, body)


def test_an_undocumented_content_type_is_415_unread(
    settings: Settings, serve: Callable[[FastAPI], str], client: Client
) -> None:
    url = serve(create_app(settings))
    auth = {"Authorization": str(client.headers["authorization"])}
    for path, content_type in [
        ("/v1/jobs", "text/plain"),
        ("/v1/jobs", MULTIPART),
        ("/v1/jobs/validate", "application/x-www-form-urlencoded"),
        ("/v1/completions", MULTIPART),
        ("/v1/datasets", "application/octet-stream"),
        ("/v1/models", "text/plain"),
        ("/v1/jobs/job_01a2/cancel", "text/plain"),
    ]:
        status, headers, body = answer_before_the_body(url, path, {"Content-Type": content_type, **auth})
        assert status == 415 and b'"unsupported_media_type"' in body, (path, content_type, status, body)
        assert headers["connection"] == "close"


@pytest.mark.parametrize(
    ("method", "path", "content_type", "says"),
    [
        ("POST", "/v1/jobs", "text/plain", "Content-Type: application/json"),
        ("POST", "/v1/jobs/validate", "", "(got none)"),
        ("POST", "/v1/jobs", MULTIPART, "Content-Type: application/json"),
        ("POST", "/v1/fine_tuning/jobs", "text/plain", "Content-Type: application/json"),
        ("POST", "/v1/models/model_x/generate", "text/plain", "Content-Type: application/json"),
        ("POST", "/v1/datasets", "application/json", "multipart/form-data"),
        ("POST", "/v1/files", "text/csv", "multipart/form-data"),
        ("POST", "/v1/jobs/job_x/cancel", "text/plain", "takes no request body"),
        ("DELETE", "/v1/datasets/ds_x", "application/xml", "takes no request body"),
    ],
)
def test_content_types_a_route_does_not_document_are_415(
    client: Client, method: str, path: str, content_type: str, says: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.request(method, path, content=b'{"name": "x"}', headers=headers)
    assert says in error(r, 415, "unsupported_media_type")["message"]


def test_documented_types_still_reach_their_routes(client: Client) -> None:
    json_utf8 = {"Content-Type": "application/json; charset=utf-8"}
    error(client.post("/v1/jobs", content=b'{"name": "x"}', headers=json_utf8), 422, "invalid_spec")
    error(client.post("/v1/jobs/job_x/cancel", json={}), 404, "not_found")  # a body-less route tolerates JSON
    error(client.post("/v1/models/model_x/generate", json={"prompt": "hi"}), 404, "not_found")
    r = client.post("/v1/datasets", files={"file": ("a.txt", b"some text\n")})
    assert r.status_code == 201, r.text


def test_a_405_lists_every_method_of_its_path(client: TestClient) -> None:
    """Every documented path, with ids of no object in it, and every method it lacks."""
    paths = client.get("/openapi.json").json()["paths"]
    assert len(paths) > 20
    patterns = {t: re.compile(re.sub(r"\{[^}]+\}", "[^/]+", t)) for t in paths}
    for template in paths:
        path = template.replace("{", "x_").replace("}", "")
        # the methods of every template this path matches (/v1/jobs/validate is a {job_id} too)
        answered = {m.upper() for t, ops in paths.items() if patterns[t].fullmatch(path) for m in ops}
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - answered):
            r = client.request(method, path)
            error(r, 405, "method_not_allowed")
            assert set(r.headers["allow"].split(", ")) == answered, (method, template, r.headers["allow"])

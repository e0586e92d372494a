"""The dashboard (app/dashboard): one HTML page for `/` and every `/dashboard/...` path, its
own scripts and styles, the chart library from the `plotly` package, and a YAML-to-JSON
helper for the submit page. No data route: the pages read and change everything through
the /v1 API with the signed-in key, so they see exactly what that key sees. The page served
for `/dashboard/jobs/{id}` is the same bytes whatever the id (nothing of any tenant is in
it); a job of another tenant then answers the page's /v1 calls as a missing one."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from html import escape
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from app import dashboard
from app.api.deps import DatabaseDep, SettingsDep, TenantDep
from app.api.routes import landing
from app.api.routes.health import readiness_problems
from app.dashboard import yaml_json
from app.errors import NotFound, PayloadTooLarge, UnsupportedMediaType

router = APIRouter(include_in_schema=False)

MAX_YAML_BYTES = 1 << 20  # a job spec is a few KiB
YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain"}
PAGES = ["/dashboard", "/dashboard/jobs", "/dashboard/compare", "/dashboard/models", "/dashboard/submit"]
ID_PAGES = ["/dashboard/jobs/{job_id}", "/dashboard/models/{model_id}"]
# The page loads nothing from anywhere but this service.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SHELL_HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
LINKS = [*landing.LINKS, (landing.SDK_DOCS, "Python SDK", "the client library's guide"),
         ("/about", "About", "what this service is, and a quick start")]  # fmt: skip


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    etag: str
    media_type: str


@cache
def _load(path: Path, media_type: str) -> Asset:
    body = path.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, gzip.compress(body, 6, mtime=0), etag, media_type)


def _serve(request: Request, asset: Asset) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding",
               "X-Content-Type-Options": "nosniff"}  # fmt: skip
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(asset.gzipped, media_type=asset.media_type, headers={**headers, "Content-Encoding": "gzip"})
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def _shell(version: str, problems: list[dict[str, str]]) -> str:
    if problems:
        items = "".join(f"<li>{escape(p['component'])}: {escape(p['message'])}</li>" for p in problems)
        status = f'<p class="bad">● Not ready:</p><ul>{items}</ul>'
    else:
        status = '<p class="ok">● Ready: the database and the broker answer.</p>'
    links = "".join(
        f'<li><a href="{escape(href)}">{escape(name)}</a> <span class="muted">— {escape(what)}</span></li>'
        for href, name, what in LINKS
    )
    template = dashboard.SHELL.read_text(encoding="utf-8")
    return template.replace("{{version}}", escape(version)).replace("{{status}}", status).replace("{{links}}", links)


async def _page(request: Request, db: DatabaseDep) -> HTMLResponse:
    problems = await readiness_problems(request, db)
    return HTMLResponse(_shell(request.app.version, problems), headers=SHELL_HEADERS)


@router.get("/", response_model=None)
async def home(request: Request, db: DatabaseDep) -> Response:
    """The dashboard (sign-in, then the job list); `Accept: application/json` gets the
    service's facts as JSON, as the landing page (now at /about) gives them."""
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/html" not in accept:
        return await landing.landing(request, db)
    return await _page(request, db)


for _path in PAGES + ID_PAGES:
    router.add_api_route(_path, _page, methods=["GET"], response_class=HTMLResponse)


@router.get("/dashboard/static/{name}")
async def static_file(request: Request, name: str) -> Response:
    found = dashboard.assets().get(name)
    if found is None:
        raise NotFound(f"no dashboard file '{name}'")
    return _serve(request, await run_in_threadpool(_load, *found))


@router.get("/dashboard/lib/plotly.min.js")
async def chart_library(request: Request) -> Response:
    """plotly.js from the installed `plotly` package (site-packages), as it ships it."""
    path = dashboard.chart_library()
    if path is None:
        raise NotFound("the chart library is not installed: `pip install plotly` (a dependency of stagecraft)")
    return _serve(request, await run_in_threadpool(_load, path, "text/javascript; charset=utf-8"))


@router.post("/dashboard/yaml")
async def yaml_to_json(request: Request, _tenant: TenantDep, settings: SettingsDep) -> JSONResponse:
    """A YAML job spec as JSON `{"spec": ...}`, for the submit page (a key is needed; nothing
    is stored or looked up). Bounded: MAX_YAML_BYTES, `max_json_depth`, yaml_json.MAX_NODES."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in YAML_TYPES:
        got = f"'{media}'" if media else "none"
        raise UnsupportedMediaType(f"send the spec as `Content-Type: application/yaml` (got {got})")
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"a spec is at most {MAX_YAML_BYTES} bytes")
    if declared.isdigit() and int(declared) > MAX_YAML_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_YAML_BYTES:
            raise too_large
        chunks.append(chunk)
    spec = await run_in_threadpool(yaml_json.parse, b"".join(chunks), settings.max_json_depth)
    return JSONResponse({"spec": spec})

"""`GET /about` (linked from the dashboard's sign-in page at `/`): what the service is, its
version, whether it is ready, where the docs are; `Accept: application/json` gets the same
facts as JSON (and so does `/`). No key needed: it shows nothing of any tenant."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from app.api.deps import DatabaseDep
from app.api.routes.health import readiness_problems
from app.errors import NotFound

router = APIRouter(include_in_schema=False)

SDK_DOCS = "/sdk"
SDK_MARKDOWN = Path(__file__).resolve().parents[3] / "docs" / "sdk.md"  # in a checkout (or an editable install)
LINKS = [
    ("/docs", "Swagger UI", "every route, with a form to try it"),
    ("/redoc", "ReDoc", "the same reference, for reading"),
    ("/openapi.json", "OpenAPI document", "for generating clients"),
    ("/readyz", "Readiness", "database and broker checks"),
]
STYLE = """body{font-family:system-ui,sans-serif;max-width:46rem;margin:3rem auto;padding:0 1rem;color:#1b1f24}
h1{margin-bottom:.2rem}.muted{color:#57606a}code,pre{background:#f3f4f6;border-radius:4px;padding:.1rem .3rem}
pre{padding:.8rem;overflow-x:auto}.ok{color:#1a7f37}.bad{color:#cf222e}li{margin:.3rem 0}"""


def _facts(request: Request, problems: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "service": "stagecraft",
        "description": request.app.summary,
        "version": request.app.version,
        "ready": not problems,
        "problems": problems,
        "docs": {"swagger": "/docs", "redoc": "/redoc", "openapi": "/openapi.json", "sdk": SDK_DOCS},
    }


def _page(facts: dict[str, Any], base: str) -> str:
    if facts["ready"]:
        status = '<p class="ok">● Ready: the database and the broker answer.</p>'
    else:
        items = "".join(f"<li>{escape(p['component'])}: {escape(p['message'])}</li>" for p in facts["problems"])
        status = f'<p class="bad">● Not ready:</p><ul>{items}</ul>'
    links = "".join(
        f'<li><a href="{href}">{name}</a> <span class="muted">— {what}</span></li>' for href, name, what in LINKS
    )
    quickstart = escape(
        "pip install ./sdk    # from a clone: the SDK alone (docs/sdk.md)\n\n"
        "import stagecraft\n"
        f'client = stagecraft.Client("{base}", api_key="sk-...")\n'
        "print(client.models.list())"
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Stagecraft</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head><body>
<h1>Stagecraft</h1><p class="muted">version {escape(facts["version"])}</p>
<p>{escape(facts["description"] or "")} A job spec lists pretrain, finetune and multistep stages; the service
runs them, streams progress, checkpoints, and serves the finished models (also through OpenAI-compatible
routes, fine-tuning included).</p>
{status}
<h2>Documentation</h2><ul>{links}<li><a href="{SDK_DOCS}">Python SDK</a>
<span class="muted">— <code>import stagecraft</code></span></li></ul>
<h2>Try it</h2><p>Every <code>/v1</code> route needs an API key (<code>stagecraft keys create --tenant NAME</code>),
sent as <code>Authorization: Bearer sk-...</code>.</p><pre>{quickstart}</pre>
</body></html>"""


@router.get("/about", response_model=None)  # `/` is the dashboard (routes/dashboard.py), linking here
async def landing(request: Request, db: DatabaseDep) -> HTMLResponse | JSONResponse:
    facts = _facts(request, await readiness_problems(request, db))
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/html" not in accept:
        return JSONResponse(facts)
    return HTMLResponse(_page(facts, str(request.base_url).rstrip("/")))


@router.get("/sdk", response_class=PlainTextResponse)
def sdk_docs() -> PlainTextResponse:
    """The SDK's guide (docs/sdk.md), as Markdown text."""
    if not SDK_MARKDOWN.is_file():
        raise NotFound("docs/sdk.md is not installed with the service: read it in the source, or `pydoc stagecraft`")
    return PlainTextResponse(SDK_MARKDOWN.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")

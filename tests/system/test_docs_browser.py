"""`/docs`, `/redoc` and the landing page in a real headless Chromium (Debian's `chromium`,
driven by Playwright) against `stagecraft up`, with every request off this machine refused:
the pages must render from what the service itself serves."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.system.processes import Proc, base_env, free_port, stagecraft, wait_ready
from tests.system.stack import PROCS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no chromium on this machine (`apt-get install -y chromium`; .ci/run installs it)", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")

OPERATIONS = [  # summaries Swagger UI must show
    "Create a fine-tuning job (OpenAI fine-tuning API)",
    "Upload a file (OpenAI files API)",
    "Create Job",
    "List Datasets",
]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("docs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc("up-docs", [*stagecraft(), "up", "--port", str(port), "--data-dir", str(root / "data")],
                base_env(url=url), root)  # fmt: skip
    PROCS.append(proc)
    proc.start()
    try:
        wait_ready(url, [proc])
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, list[str]]]:
    """A page whose requests to any host but 127.0.0.1 are aborted, and listed."""
    context = browser.new_context(viewport={"width": 1280, "height": 1600})
    refused: list[str] = []

    def only_local(route: Any) -> None:
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            refused.append(f"{route.request.resource_type} {route.request.url}")
            route.abort()

    context.route("**/*", only_local)
    yield context.new_page(), refused
    context.close()


def test_swagger_ui_renders_the_routes_offline(service: str, page: tuple[Any, list[str]], tmp_path: Path) -> None:
    p, refused = page
    p.goto(service + "/docs")
    p.wait_for_selector(".opblock-summary", timeout=60_000)
    summaries = p.locator(".opblock-summary-description").all_inner_texts()
    assert all(op in summaries for op in OPERATIONS), summaries
    assert p.locator(".opblock").count() >= 30
    assert "Stagecraft" in p.locator(".info .title").inner_text()
    shot = tmp_path / "docs.png"
    p.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    assert refused == []


def test_redoc_renders_offline(service: str, page: tuple[Any, list[str]]) -> None:
    p, refused = page
    p.goto(service + "/redoc")
    p.wait_for_selector(".api-content h2", timeout=60_000)
    assert p.locator(".api-content h1").first.inner_text().startswith("Stagecraft")
    headings = p.locator(".api-content h2").all_inner_texts()
    assert all(op in headings for op in OPERATIONS), headings
    # ReDoc's bundle shows its maker's logo from its CDN in the sidebar footer; nothing else leaves.
    assert refused in ([], ["image https://cdn.redoc.ly/redoc/logo-mini.svg"]), refused


def test_landing_page_links_to_the_docs(service: str, page: tuple[Any, list[str]], tmp_path: Path) -> None:
    p, refused = page
    p.goto(service + "/")
    p.screenshot(path=str(tmp_path / "landing.png"))
    assert p.locator("h1").inner_text() == "Stagecraft"
    assert "Ready" in p.locator("p.ok").inner_text()
    assert "version 0.1.0" in p.content()
    p.click("text=Swagger UI")
    p.wait_for_selector(".opblock-summary", timeout=60_000)
    assert p.url == service + "/docs"
    assert refused == []

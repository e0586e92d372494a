"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright, as
tests/system/test_docs_browser.py does) against `stagecraft up`, with every request off this
machine refused: sign in, follow a running job live (its loss curve grows, its stage timeline
advances, a dropped event stream resumes without a gap or a repeat), cancel it, overlay two
jobs, stream text from a model, validate and submit a YAML spec. The job page and the compare
view are saved as docs/img/dashboard-job.png and docs/img/dashboard-compare.png."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.system.processes import Proc, base_env, free_port, run_cli, stagecraft, wait_ready
from tests.system.stack import PROCS, Api, example_data, tiny_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no chromium on this machine (`apt-get install -y chromium`; .ci/run installs it)", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
pytestmark = pytest.mark.slow

IMG = REPO_ROOT / "docs" / "img"
WAIT_MS = 180_000  # a loaded 2-core machine trains the tiny jobs slowly
LOSS_POINTS = "() => (document.getElementById('chart-loss')?.data?.[0]?.x?.length) || 0"


@dataclass
class Service:
    url: str
    key: str
    env: dict[str, str]
    fast: dict[str, Any]  # a tiny job that succeeds in seconds: its model serves the model page
    slow: dict[str, Any]  # the same pretraining at 3x the learning rate, then a long finetune stage: cancelled


def _scaled_lr(spec: dict[str, Any], factor: float) -> None:
    for stage in spec["stages"]:
        for part in [stage, *stage.get("phases", [])]:
            if "optimizer" in part:
                part["optimizer"]["lr"] *= factor


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(url=url)
    proc = Proc("up-dashboard", [*stagecraft(), "up", "--port", str(port), "--data-dir", str(root / "data")], env, root)
    PROCS.append(proc)
    proc.start()
    try:
        wait_ready(url, [proc])
        key = (root / "data" / "api_key").read_text().strip()
        with Api(url, key) as api:
            datasets = api.upload_examples(example_data(root / "examples"))
            fast = tiny_spec(datasets)
            fast["name"] = "lr-base"
            fast["stages"][0]["steps"], fast["stages"][1]["steps"] = 100, 24
            slow = tiny_spec(datasets)
            slow["name"] = "lr-x3"
            _scaled_lr(slow, 3)
            slow["stages"][0]["steps"], slow["stages"][1]["steps"] = 100, 5000
            slow["evaluation"] = {"every_steps": 40, "metrics": ["loss", "perplexity"], "max_samples": 0}
            slow["checkpointing"] = {"every_steps": 50, "keep_last": 2}
            # One worker: the fast job runs first, the slow one waits queued for it.
            jobs = api.submit(fast), api.submit(slow)
        yield Service(url, key, {**env, "STAGECRAFT_DATA_DIR": str(root / "data")}, *jobs)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@dataclass
class Tab:
    page: Any
    refused: list[str]  # requests to anywhere but the service, aborted
    errors: list[str]  # uncaught errors of the page's scripts


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 960}, accept_downloads=True)
    refused: list[str] = []

    def only_local(route: Any) -> None:
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            refused.append(f"{route.request.resource_type} {route.request.url}")
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    t = Tab(page, refused, [])
    page.on("pageerror", lambda e: t.errors.append(str(e)))
    yield t
    context.close()
    assert t.refused == [] and t.errors == [], (t.refused, t.errors)


def until(page: Any, js: str, timeout_s: float = WAIT_MS / 1000) -> Any:
    """Poll a JavaScript expression until it is truthy (Playwright's wait_for_function evaluates
    strings with eval(), which the dashboard's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout_s
    while not (value := page.evaluate(js)):
        assert time.monotonic() < deadline, f"still false after {timeout_s:.0f} s: {js}"
        time.sleep(0.2)
    return value


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(url + "/")
    page.fill("#signin-key", key)
    page.click("text=Sign in")
    page.wait_for_selector("#jobs-table")


def job_status(service: Service, job_id: str) -> str:
    r = httpx.get(f"{service.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {service.key}"}, timeout=30)
    return str(r.json()["status"])


def wait_status(service: Service, job_id: str, statuses: set[str], timeout: float = WAIT_MS / 1000) -> str:
    deadline = time.monotonic() + timeout
    while (status := job_status(service, job_id)) not in statuses:
        assert time.monotonic() < deadline, f"{job_id} still {status}"
        time.sleep(0.5)
    return status


def test_a_running_job_live_then_cancelled(service: Service, tab: Tab) -> None:
    p, slow = tab.page, service.slow["id"]
    sign_in(p, service.url, service.key)
    p.wait_for_selector(f'tr[data-job="{slow}"]')
    assert p.locator("#jobs-table tbody tr").count() == 2
    p.fill("#job-search", "x3")
    until(p, "document.querySelectorAll('#jobs-table tbody tr').length === 1")
    p.click(f'tr[data-job="{slow}"] a')
    p.wait_for_url(f"**/dashboard/jobs/{slow}")
    p.wait_for_selector('#live[data-state="live"]')

    # The page was opened with the job queued or in its first stage: both advance, live.
    first = p.evaluate("document.querySelector('.seg[data-index=\"1\"]').dataset.state")
    assert first == "pending", first
    until(p, f"({LOSS_POINTS})() >= 5")
    before = p.evaluate(LOSS_POINTS)
    until(p, f"({LOSS_POINTS})() >= {before + 10}")
    p.wait_for_selector('.seg[data-index="1"][data-state="active"]')
    assert p.get_attribute('.seg[data-index="0"]', "data-state") == "done"
    assert "finetune" in p.inner_text("#job-stage")
    marks = p.evaluate("document.getElementById('chart-loss').layout.shapes.length")
    assert marks >= 1  # where the finetune stage starts
    assert p.evaluate("document.getElementById('chart-lr').data[0].x.length") > 10

    # A dropped connection resumes after the last event seen: no gap, no repeat.
    p.evaluate("window.stagecraftDashboard.follower.drop()")
    until(p, "window.stagecraftDashboard.follower.connections >= 2")
    count = p.evaluate(LOSS_POINTS)
    until(p, f"({LOSS_POINTS})() >= {count + 10}")
    seqs = p.evaluate("window.stagecraftDashboard.events.map(e => e.seq)")
    assert seqs == list(range(1, len(seqs) + 1)), seqs[:20]

    p.select_option("#x-axis", "tokens")
    until(p, "document.getElementById('chart-loss').layout.xaxis.title.text === 'tokens'")
    p.select_option("#x-axis", "step")
    until(p, f"({LOSS_POINTS})() >= {count + 30}")
    IMG.mkdir(parents=True, exist_ok=True)
    p.screenshot(path=str(IMG / "dashboard-job.png"))

    p.once("dialog", lambda d: d.accept())
    p.click("#cancel")
    until(p, "document.querySelector('.view-head .badge').textContent === 'cancelled'")
    p.wait_for_selector('#live[data-state="ended"]')
    assert job_status(service, slow) == "cancelled"
    assert p.get_attribute('.seg[data-index="1"]', "data-state") == "stopped"
    assert p.locator("#events-table tr.ev-job-cancelled").count() == 1


def test_two_jobs_overlay_on_the_compare_view(service: Service, tab: Tab) -> None:
    p, fast, slow = tab.page, service.fast["id"], service.slow["id"]
    assert wait_status(service, fast, {"succeeded", "failed", "cancelled"}) == "succeeded"
    wait_status(service, slow, {"cancelled", "succeeded", "failed"})
    sign_in(p, service.url, service.key)
    for job in (slow, fast):
        p.check(f'tr[data-job="{job}"] input[type="checkbox"]')
    p.click("#compare-selected")
    p.wait_for_url("**/dashboard/compare?jobs=*")
    overlay = """() => {
        const d = document.getElementById('cmp-loss').data || [];
        return [...new Set(d.filter(t => t.x.length > 5).map(t => t.legendgroup))].sort();
    }"""
    until(p, f"({overlay})().length === 2")
    assert p.evaluate(overlay) == sorted([fast, slow])
    assert len(p.evaluate("document.getElementById('cmp-lr').data")) == 2
    assert "stages.0.optimizer.lr" in p.inner_text("#spec-diff")
    p.eval_on_selector("#smoothing", "el => { el.value = '0.9'; el.dispatchEvent(new Event('input')); }")
    p.screenshot(path=str(IMG / "dashboard-compare.png"))


def test_the_model_box_streams_text(service: Service, tab: Tab) -> None:
    p = tab.page
    assert wait_status(service, service.fast["id"], {"succeeded", "failed"}) == "succeeded"
    model = httpx.get(f"{service.url}/v1/jobs/{service.fast['id']}",
                      headers={"Authorization": f"Bearer {service.key}"}).json()["model_id"]  # fmt: skip
    sign_in(p, service.url, service.key)
    p.goto(f"{service.url}/dashboard/jobs/{service.fast['id']}")
    p.wait_for_selector("#samples-table tbody tr")  # the evaluation's sample generations
    p.click("#model-link")
    p.wait_for_url(f"**/dashboard/models/{model}")
    p.click('button[data-mode="generate"]')
    p.fill("#in-prompt", "Nadia went to the market and")
    with p.expect_response(lambda r: r.url.endswith(f"/v1/models/{model}/generate")) as answer:
        p.click("#model-send")
    assert answer.value.headers["content-type"].startswith("text/event-stream")
    until(p, "document.getElementById('model-info').textContent.includes('tokens')")
    assert p.inner_text("#model-output .generated").strip()

    p.click('button[data-mode="chat"]')
    p.fill("#in-message", "Say something.")
    with p.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as answer:
        p.click("#model-send")
    assert answer.value.headers["content-type"].startswith("text/event-stream")
    until(p, "document.getElementById('model-info').textContent.startsWith('finish')")
    assert p.locator("#model-output .msg-assistant").count() == 1

    with p.expect_download() as download:
        p.click("#export-targz")
    assert download.value.suggested_filename.endswith(".tar.gz")


def test_submit_validates_yaml_then_submits(service: Service, tab: Tab) -> None:
    p = tab.page
    spec = dict(service.fast["spec"], name="from-the-dashboard")
    spec["stages"] = [dict(spec["stages"][0], steps=4)]
    spec["evaluation"] = {"every_steps": 100, "metrics": ["loss"], "max_samples": 0}
    bad = yaml.safe_dump({**spec, "stages": [dict(spec["stages"][0], batch_size=0)]})
    sign_in(p, service.url, service.key)
    p.click("nav >> text=Submit")
    p.fill("#spec-text", bad)
    p.wait_for_selector("#spec-invalid")
    assert "stages.0.batch_size" in p.inner_text("#validation")
    assert p.is_disabled("#submit-job")
    p.fill("#spec-text", yaml.safe_dump(spec))
    p.wait_for_selector("#estimates")
    assert "parameters" in p.inner_text("#estimates")
    p.click("#submit-job")
    p.wait_for_url("**/dashboard/jobs/job_*")
    job = p.url.rsplit("/", 1)[1]
    httpx.post(f"{service.url}/v1/jobs/{job}/cancel", headers={"Authorization": f"Bearer {service.key}"})
    assert p.inner_text("#job-name") == "from-the-dashboard"


def test_another_tenants_job_page_reads_as_a_missing_one(service: Service, tab: Tab) -> None:
    p = tab.page
    made = run_cli("keys", "create", "--tenant", "someone-else", env=service.env)
    assert made.returncode == 0, made.stderr
    sign_in(p, service.url, made.stdout.strip())
    assert p.wait_for_selector("#jobs-table tbody tr").inner_text().startswith("No jobs yet")
    shown = []
    for job in (service.slow["id"], "job_" + "0" * 32):
        p.goto(f"{service.url}/dashboard/jobs/{job}")
        p.wait_for_selector("#not-found")
        shown.append(p.inner_text("#view").replace(job, "ID"))
    assert shown[0] == shown[1] and "lr-x3" not in shown[0]

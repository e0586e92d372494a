"""The dashboard's routes in process (app/api/routes/dashboard.py, app/dashboard/): another
tenant's job, model or checkpoint looks exactly like a missing one on every dashboard page and
in every /v1 call the pages make; the page, its scripts and styles and the chart library are
served with the right types and nothing in them points off the service; the YAML helper is
authenticated and bounded. The pages in a real browser: tests/system/test_dashboard_browser.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.dashboard import STATIC, assets, chart_library
from app.db import Database
from app.services import lifecycle
from app.tables import Checkpoint, Job, Model, new_id
from tests.app.api.conftest import Client, error

Tenant = Callable[[], tuple[dict[str, str], str]]
SSE = {"Accept": "text/event-stream", "Last-Event-ID": "0"}
SAMPLING = {"max_new_tokens": 8, "temperature": 0}
# A URL with a host: an absolute one, or protocol-relative.
EXTERNAL = re.compile(r"(?:[a-z][a-z0-9+.-]*:)?//[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+", re.IGNORECASE)


def job_calls(job: str) -> list[tuple[str, str, dict[str, Any]]]:
    """What the job page (and the compare view) asks for a job."""
    return [
        ("GET", f"/dashboard/jobs/{job}", {}),
        ("GET", f"/v1/jobs/{job}", {}),
        ("GET", f"/v1/jobs/{job}/events?limit=1000&after=0", {}),
        ("GET", f"/v1/jobs/{job}/events?after=0", {"headers": SSE}),
        ("GET", f"/v1/jobs/{job}/metrics", {}),
        ("GET", f"/v1/jobs/{job}/checkpoints", {}),
        ("GET", f"/v1/jobs/{job}/evaluation", {}),
        ("POST", f"/v1/jobs/{job}/cancel", {}),
    ]


def model_calls(model: str) -> list[tuple[str, str, dict[str, Any]]]:
    """What the model page asks for a model (a job id or a checkpoint id serves as one)."""
    return [
        ("GET", f"/dashboard/models/{model}", {}),
        ("GET", f"/v1/models/{model}", {}),
        ("GET", f"/v1/models/{model}/export?format=hf&archive=tar.gz", {}),
        ("GET", f"/v1/models/{model}/export?format=hf&archive=zip", {}),
        ("POST", f"/v1/models/{model}/generate", {"json": {"prompt": "Hello", "stream": True, **SAMPLING}}),
        ("POST", f"/v1/models/{model}/translate", {"json": {"text": "one", "source_lang": "en", "target_lang": "fr"}}),
        ("POST", f"/v1/models/{model}/answer", {"json": {"question": "Who?", "context": "Nadia."}}),
        ("POST", f"/v1/models/{model}/summarize", {"json": {"text": "Nadia has two apples."}}),
        ("POST", "/v1/chat/completions",
         {"json": {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": 8}}),
    ]  # fmt: skip


def theirs(database: Database, tenant_id: str) -> tuple[str, str, str]:
    """Another tenant's succeeded job with its model and a checkpoint: (job, model, checkpoint) ids."""
    with database.write() as session:
        job, _ = lifecycle.create(session, tenant_id, "secret-job", {"name": "secret-job"}, {}, 10, None)
        session.commit()
        ckpt, model = f"ckpt_{job.id[4:]}", f"model_{job.id[4:]}"
        session.add(Checkpoint(id=ckpt, job_id=job.id, step=5, stage_name="s",
                               path=f"jobs/{job.id}/checkpoints/step-5", metrics={}))  # fmt: skip
        session.add(Model(id=model, tenant_id=tenant_id, job_id=job.id, name="secret-model",
                          path=f"jobs/{job.id}/model", parameters=1, steps=10, evaluation={}))  # fmt: skip
        row = session.get_one(Job, job.id)
        row.status, row.model_id = "succeeded", model
        session.commit()
        return job.id, model, ckpt


def naming(kwargs: dict[str, Any], model: str) -> dict[str, Any]:
    """The request's arguments with `model` in a JSON body that names one (chat)."""
    body = kwargs.get("json")
    return {**kwargs, "json": {**body, "model": model}} if body and "model" in body else kwargs


def answer(client: Client, method: str, path: str, kwargs: dict[str, Any], own_id: str) -> tuple[int, str, str]:
    """(status, content type, body with the id asked for written as ID)."""
    r = client.request(method, path, **kwargs)
    return r.status_code, r.headers.get("content-type", ""), r.text.replace(own_id, "ID")


def test_another_tenants_ids_look_missing_on_every_dashboard_page_and_call(
    client: Client, new_tenant: Tenant, database: Database
) -> None:
    other, other_id = new_tenant()
    job, model, ckpt = theirs(database, other_id)
    assert client.get(f"/v1/jobs/{job}", headers=other).status_code == 200  # it is there, for its owner
    missing = {"job": new_id("job"), "model": new_id("model"), "ckpt": new_id("ckpt")}
    cases = [(c, job, missing["job"]) for c in job_calls("{}")]
    cases += [(c, given, absent) for given, absent in ((model, missing["model"]), (job, missing["job"]),
              (ckpt, missing["ckpt"])) for c in model_calls("{}")]  # fmt: skip
    for (method, template, kwargs), given, absent in cases:
        seen = answer(client, method, template.format(given), naming(kwargs, given), given)
        expected = answer(client, method, template.format(absent), naming(kwargs, absent), absent)
        assert seen == expected, (method, template, seen, expected)
        status = seen[0]
        assert status == 404 or template.startswith("/dashboard/"), (template, seen)
        assert "secret" not in seen[2]
    listed = client.get("/v1/jobs?limit=100").json()["data"] + client.get("/v1/models?limit=100").json()["data"]
    assert not any(o["id"] in (job, model) for o in listed)


def test_the_page_is_the_same_whatever_the_id(client: Client) -> None:
    pages = [client.get(p) for p in ("/", "/dashboard", "/dashboard/jobs", "/dashboard/compare?jobs=job_1,job_2",
                                     "/dashboard/models", "/dashboard/submit", f"/dashboard/jobs/{new_id('job')}",
                                     "/dashboard/jobs/not-an-id", f"/dashboard/models/{new_id('model')}")]  # fmt: skip
    assert {p.status_code for p in pages} == {200}
    assert len({p.text for p in pages}) == 1
    assert pages[0].headers["content-type"] == "text/html; charset=utf-8"
    csp = pages[0].headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert pages[0].headers["cache-control"] == "no-store"


def test_assets_and_the_chart_library_are_served_typed_and_local(client: Client) -> None:
    html = client.get("/").text
    assert html.count("<h1>") == 1 and 'href="/docs"' in html and 'href="/about"' in html
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(r.startswith("/") and not r.startswith("//") for r in refs), refs
    assert not EXTERNAL.search(html)
    types = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8", "svg": "image/svg+xml"}
    served = assets()
    assert {"app.js", "api.js", "charts.js", "job.js", "style.css"} <= set(served) and "index.html" not in served
    for name in served:
        r = client.get(f"/dashboard/static/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"] == types[name.rsplit(".", 1)[1]], name
        assert r.headers["x-content-type-options"] == "nosniff"
        if not name.endswith(".svg"):
            assert not EXTERNAL.search(r.text), (name, EXTERNAL.search(r.text))
        for module in re.findall(r'from "\./([^"]+)"', r.text):  # every module a script imports is served
            assert module in served, (name, module)
        again = client.get(f"/dashboard/static/{name}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304
    for path in ("/dashboard/static/index.html", "/dashboard/static/..%2F__init__.py", "/dashboard/static/nope.js"):
        error(client.get(path), 404, "not_found")
    lib = client.get("/dashboard/lib/plotly.min.js")
    assert lib.status_code == 200 and lib.headers["content-type"] == "text/javascript; charset=utf-8"
    library = chart_library()
    assert library is not None and library.parent.parent.parent.name in ("site-packages", "dist-packages"), library
    assert lib.content == library.read_bytes() and lib.text.lstrip().startswith("/**\n* plotly.js v")
    assert lib.headers["content-encoding"] == "gzip"  # TestClient asks for it, and undoes it
    assert "/dashboard/lib/plotly.min.js" in client.get("/dashboard/static/charts.js").text


def test_home_answers_json_and_the_landing_page_moved_to_about(client: Client) -> None:
    facts = client.get("/", headers={"Accept": "application/json"}).json()
    assert facts["service"] == "stagecraft" and facts["docs"]["swagger"] == "/docs"
    about = client.get("/about")
    assert about.status_code == 200 and "Swagger UI" in about.text and "pip install ./sdk" in about.text


def test_yaml_helper_needs_a_key_and_is_bounded(client: Client) -> None:
    url, yaml_type = "/dashboard/yaml", {"Content-Type": "application/yaml"}
    spec = "name: j  # a comment\nstages:\n  - {type: pretrain, steps: 2}\nwhen: 2024-01-02\nbad: .nan\n"
    r = client.post(url, content=spec, headers=yaml_type)
    assert r.status_code == 200, r.text
    assert r.json() == {"spec": {"name": "j", "stages": [{"type": "pretrain", "steps": 2}], "when": "2024-01-02",
                                 "bad": "nan"}}  # fmt: skip
    wrong_key = {**yaml_type, "Authorization": "Bearer sk-sc-nope"}
    error(client.post(url, content=spec, headers=wrong_key), 401, "unauthorized")
    error(client.post(url, content=spec, headers={"Content-Type": "text/html"}), 415, "unsupported_media_type")
    err = error(client.post(url, content="a: [1, 2\nb: 3\n", headers=yaml_type), 400, "invalid_yaml")
    assert err["details"][0]["line"] == 2 and "line 2" in err["message"]
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh")
    )
    assert "more than" in error(client.post(url, content=laughs, headers=yaml_type), 422, "invalid_request")["message"]
    assert "deeper" in error(client.post(url, content="&a [*a]", headers=yaml_type), 422, "invalid_request")["message"]
    deep = "a:\n" + "".join("  " * i + " b:\n" for i in range(1, 80)) + "  " * 80 + " c: 1\n"
    assert "deeper" in error(client.post(url, content=deep, headers=yaml_type), 422, "invalid_request")["message"]
    error(client.post(url, content="a: " + "x" * (1 << 20), headers=yaml_type), 413, "payload_too_large")
    client.headers.pop("Authorization")
    error(client.post(url, content=spec, headers=yaml_type), 401, "unauthorized")


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="no node on this machine (the browser test runs these modules too)")
def test_the_pages_sse_parser_and_curves_in_node(tmp_path: Path) -> None:
    """The event-stream parser reassembles messages split anywhere (a CRLF cut in two
    included), skips keep-alives, reads `retry:`; the EMA and the step -> tokens mapping."""
    wire = (
        'retry: 1000\r\n\r\n: keep-alive\n\nid: 1\nevent: train.step\ndata: {"seq": 1}\r\n\r\n'
        'id: 2\r\nevent: eval\r\ndata: {"a":\r\ndata: 2}\r\n\r\ndata: tail'
    )
    job = {  # 10 steps of 2 sequences, then 2 cycles of 3 + 2 steps of 4; 64 tokens a sequence
        "spec": {"stages": [{"steps": 10, "batch_size": 2},
                            {"cycles": 2, "phases": [{"steps": 3}, {"steps": 2}], "batch_size": 4}]},
        "estimates": {"tokens": 64 * (10 * 2 + 10 * 4)},
    }  # fmt: skip
    script = f"""
    import {{ SseParser }} from "{STATIC.as_uri()}/api.js";
    import {{ Run, ema }} from "{STATIC.as_uri()}/charts.js";
    const wire = {json.dumps(wire)};
    const out = [];
    for (let cut = 1; cut < wire.length; cut++) {{
      const p = new SseParser();
      out.push(JSON.stringify([...p.push(wire.slice(0, cut)), ...p.push(wire.slice(cut))]));
    }}
    const run = new Run({json.dumps(job)});
    const tokens = [0, 10, 12, 20].map((s) => run.tokensAt(s));
    console.log(JSON.stringify({{ splits: [...new Set(out)], ema: ema([1, 3], 0.5), raw: ema([1, 3], 0), tokens }}));
    """
    (tmp_path / "check.mjs").write_text(script)
    done = subprocess.run([str(NODE), str(tmp_path / "check.mjs")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["splits"] == [json.dumps([
        {"retry": 1000},
        {"event": "train.step", "data": '{"seq": 1}', "id": "1"},
        {"event": "eval", "data": '{"a":\n2}', "id": "2"},
    ], separators=(",", ":"))]  # fmt: skip
    assert got["ema"] == [1, (0.5 * 0.5 + 0.5 * 3) / (1 - 0.5**2)] and got["raw"] == [1, 3]  # debiased
    assert got["tokens"] == [0, 64 * 20, 64 * 20 + 2 * 64 * 4, 64 * 60]

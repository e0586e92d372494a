"""Our own fuzzing, beyond schemathesis' defaults (tests/system/test_schemathesis.py): every
operation of the OpenAPI document, against the real app on a PostgreSQL database of its own
holding an object of every kind (datasets of both kinds, a trained job with its model and
checkpoints, an uploaded model and an adapter of it, a queued job, a fine-tuning job, another
tenant's dataset):

- every id field (path parameters, list cursors, ids in JSON and multipart bodies) gets each
  of those ids (so the wrong kinds: a `ckpt_` or a `ds_` where a model goes, an adapter where
  a base goes, a job where a file goes, ...), another tenant's, and malformed ones (NUL, 300
  characters, `..`, a bare prefix);
- every name, file name and text field gets long and odd strings (101, 256 and 10,000
  characters, NUL, control characters, a lone surrogate, a path, a right-to-left mark);
- then every operation during a database outage, with a key the process has checked (in its
  key cache) and with one it has not.

No answer may be a 5xx, except during the outage, when every /v1 operation answers 503 with
Retry-After, whichever key it is sent with."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.db import Database
from app.queue.wakeups import Publisher
from app.services import auth
from models.data.tokenizer import Tokenizer
from models.formats.peft import save_adapter
from tests.app.api.conftest import archive, multipart
from tests.app.api.test_adapter_models import made_adapter, tar_of
from tests.conftest import BASE_SPEC, corpus_texts, record_objects, tiny_model
from tests.system.faults import PgDatabase
from workers.execute import execute

NAMES = ["n" * 100, "n" * 101, "n" * 256, "n" * 10_000, "a\x00b", "tab\there", "\x1b[31mred", "\u202eevil",
         "../../etc/passwd", "\ud800", " ", "é" * 101]  # fmt: skip
MALFORMED_IDS = ["a\x00b", "x" * 300, "..", "model_", "ckpt_é", "job_01 02", "-1", "MODEL_X", "ds_\ud800"]
PURPOSE = ("purpose", None, b"fine-tune")
WEBHOOK = {"url": "https://93.184.215.14/hook"}  # a public address, so no operator setting is needed
Call = tuple[str, str, dict[str, Any]]  # method, path, httpx request arguments


def jsonl(objs: list[Any]) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in objs).encode()


def as_json(body: Any) -> dict[str, Any]:
    """A JSON body as bytes: lone surrogates go as \\u escapes (httpx's `json=` cannot encode them)."""
    return {"content": json.dumps(body).encode(), "headers": {"Content-Type": "application/json"}}


def two_step_spec(ids: dict[str, str]) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_SPEC)
    spec["checkpointing"] = {"every_steps": 1, "keep_last": 2}
    spec["stages"] = [dict(spec["stages"][0], steps=1), dict(spec["stages"][1], steps=1)]
    spec["data"]["corpus"]["dataset"], spec["data"]["pairs"]["dataset"] = ids["ds_text"], ids["ds_records"]
    return spec


def build_world(
    c: TestClient, db: Database, settings: Settings, other: dict[str, str], model_dir: Path, tok: Tokenizer, tmp: Path
) -> dict[str, str]:
    """One object of every kind for the tenant of `c`, one dataset of another tenant: their ids by kind."""
    ids: dict[str, str] = {}
    uploads = [("ds_text", "corpus.txt", "\n".join(corpus_texts(80)).encode()),
               ("ds_records", "pairs.jsonl", jsonl(record_objects(40)))]  # fmt: skip
    for kind, name, data in uploads:
        r = c.post("/v1/datasets", files={"file": (name, data)})
        assert r.status_code == 201, r.text
        ids[kind] = r.json()["id"]
    r = c.post("/v1/jobs", json=two_step_spec(ids))
    assert r.status_code == 201, r.text
    ids["job_done"] = r.json()["id"]
    execute(db, settings, Publisher(None), ids["job_done"], "fuzz-worker")
    done = c.get(f"/v1/jobs/{ids['job_done']}").json()
    assert done["status"] == "succeeded", done
    ids["model_of_job"] = done["model_id"]
    ids["ckpt"] = c.get(f"/v1/jobs/{ids['job_done']}/checkpoints").json()[-1]["id"]
    r = c.post("/v1/models", files={"file": ("m.tar.gz", archive(model_dir, tmp))})
    assert r.status_code == 201, r.text
    ids["model_up"] = r.json()["id"]
    save_adapter(tmp / "adapter", made_adapter(tiny_model(tok.vocab_size, block_size=1024), 3, ["mlp"]))
    r = c.post("/v1/models", files={"file": ("a.tar.gz", tar_of(tmp / "adapter"))}, data={"base": ids["model_up"]})
    assert r.status_code == 201, r.text
    ids["adapter"] = r.json()["id"]
    ids["job_queued"] = c.post("/v1/jobs", json=two_step_spec(ids)).json()["id"]
    r = c.post("/v1/fine_tuning/jobs", json={"model": ids["model_up"], "training_file": ids["ds_records"]})
    assert r.status_code == 200, r.text
    ids["ft_job"] = r.json()["id"]
    r = c.post("/v1/datasets", files={"file": ("theirs.txt", b"their text\n")}, headers=other)
    ids["ds_other_tenant"] = r.json()["id"]
    r = c.post("/v1/webhooks", json=WEBHOOK)
    assert r.status_code == 201, r.text
    ids["webhook"] = r.json()["id"]
    return ids


def default_bodies(ids: dict[str, str], adapter_tar: bytes, model_tar: bytes) -> dict[tuple[str, str], Any]:
    """A valid body for each operation that takes one, by (method, path template)."""
    gen = {"max_new_tokens": 1}
    return {
        ("POST", "/v1/jobs"): as_json(two_step_spec(ids)),
        ("POST", "/v1/jobs/validate"): as_json(two_step_spec(ids)),
        ("POST", "/v1/models/{model_id}/generate"): as_json({"prompt": "At the", **gen}),
        ("POST", "/v1/models/{model_id}/translate"): as_json({"text": "one", **gen}),
        ("POST", "/v1/models/{model_id}/answer"): as_json({"question": "Who?", "context": "Nadia.", **gen}),
        ("POST", "/v1/models/{model_id}/summarize"): as_json({"text": "Nadia has 3 maps.", **gen}),
        ("POST", "/v1/completions"): as_json({"model": ids["model_up"], "prompt": "At the", "max_tokens": 1}),
        ("POST", "/v1/chat/completions"): as_json(
            {"model": ids["model_up"], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        ),
        ("POST", "/v1/fine_tuning/jobs"): as_json({"model": ids["model_up"], "training_file": ids["ds_records"]}),
        ("POST", "/v1/datasets"): multipart([("file", "c.txt", b"some text\n")]),
        ("POST", "/v1/files"): multipart([("file", "p.jsonl", jsonl(record_objects(5))), PURPOSE]),
        ("POST", "/v1/models"): multipart([("file", "m.tar.gz", model_tar)]),
        ("POST", "/v1/webhooks"): as_json(WEBHOOK),
    }


def hostile_bodies(ids: dict[str, str], id_values: list[str], adapter_tar: bytes) -> Iterator[Call]:
    """Odd names and wrong-kind ids in every body field, each operation with a valid path."""
    spec = two_step_spec(ids)
    for value in id_values:
        for field in ("corpus", "pairs"):
            s = copy.deepcopy(spec)
            s["data"][field]["dataset"] = value
            yield "POST", "/v1/jobs/validate", as_json(s)
        s = copy.deepcopy(spec)
        s["model"] = {"init_from": {"model": value}}
        yield "POST", "/v1/jobs", as_json(s)
        yield "POST", "/v1/completions", as_json({"model": value, "prompt": "x", "max_tokens": 1})
        messages = [{"role": "user", "content": "x"}]
        yield "POST", "/v1/chat/completions", as_json({"model": value, "messages": messages, "max_tokens": 1})
        for field in ("model", "training_file", "validation_file"):
            body = {"model": ids["model_up"], "training_file": ids["ds_records"], field: value}
            yield "POST", "/v1/fine_tuning/jobs", as_json(body)
        yield "POST", "/v1/models", multipart([("file", "a.tar.gz", adapter_tar), ("base", None, enc(value))])
    for name in NAMES:
        yield "POST", "/v1/jobs", as_json({**spec, "name": name})
        ft = {"model": ids["model_up"], "training_file": ids["ds_records"]}
        yield "POST", "/v1/fine_tuning/jobs", as_json({**ft, "suffix": name, "metadata": {"k": name, name: "v"}})
        yield "POST", "/v1/datasets", multipart([("file", f"{name}.txt", b"text\n")])
        yield "POST", "/v1/datasets", multipart([("file", "d.txt", b"text\n"), ("name", None, enc(name))])
        yield "POST", "/v1/files", multipart([("file", f"{name}.jsonl", jsonl(record_objects(3))), PURPOSE])
        yield "POST", "/v1/files", multipart([("file", "f.jsonl", b"{}\n"), ("purpose", None, enc(name))])
        # no archive: its name and file name are checked before it is (then a 422 of its own)
        yield "POST", "/v1/models", multipart([("file", f"{name}.tar.gz", b"junk")])
        yield "POST", "/v1/models", multipart([("file", "m.tar.gz", b"junk"), ("name", None, enc(name))])
        generate = {"prompt": name, "max_new_tokens": 1, "stop": name}
        yield "POST", f"/v1/models/{ids['model_up']}/generate", as_json(generate)
        chat = {"model": ids["model_up"], "messages": [{"role": "user", "content": name, "name": name}]}
        yield "POST", "/v1/chat/completions", as_json({**chat, "max_tokens": 1})
        yield "POST", "/v1/webhooks", as_json({**WEBHOOK, "description": name})
        yield "POST", "/v1/webhooks", as_json({"url": f"https://93.184.215.14/{name}"})
        key = {"Content-Type": "application/json", "Idempotency-Key": name.encode("utf-8", "replace")}
        yield "POST", "/v1/jobs", {**as_json(spec), "headers": key}


def enc(value: str) -> bytes:
    """Bytes as sent: a lone surrogate as its (invalid) UTF-8 bytes."""
    return value.encode("utf-8", "surrogatepass")


def every_operation(
    paths: dict[str, Any], id_values: list[str], own: dict[str, str], bodies: dict[tuple[str, str], Any]
) -> Iterator[Call]:
    """Each operation of the document with each id in its path parameter, and each odd value in
    its query parameters; DELETE last (so the objects stay for the others)."""
    ops = [(m.upper(), t, op) for t, item in paths.items() for m, op in item.items()]
    ops.sort(key=lambda o: o[0] == "DELETE")
    for method, template, op in ops:
        body = bodies.get((method, template), {})
        params = path_params(op)
        values = id_values if params else [""]
        for value in values:
            path = template
            for p in params:
                path = path.replace("{" + p["name"] + "}", quote(enc(value), safe=""))
            yield method, path, body
        right = path_with(template, params, own)
        for q in (p for p in op.get("parameters", []) if p["in"] == "query"):
            odd: list[Any] = id_values if q["name"] == "after" else [0, -1, 10**20, "x", "\x00", "q" * 300]
            for value in odd:
                yield method, f"{right}?{q['name']}={quote(enc(str(value)), safe='')}", body


def path_params(op: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in op.get("parameters", []) if p["in"] == "path"]


def path_with(template: str, params: list[dict[str, Any]], own: dict[str, str]) -> str:
    """The template with the tenant's own object of the right kind in its path parameter."""
    kind = {"dataset_id": "ds_text", "file_id": "ds_records", "model_id": "model_up", "job_id": "job_queued"}
    kind["webhook_id"] = "webhook"
    if template.startswith("/v1/fine_tuning/jobs/"):
        kind["job_id"] = "ft_job"
    for p in params:
        template = template.replace("{" + p["name"] + "}", own[kind[p["name"]]])
    return template


def send(c: TestClient, headers: dict[str, str], call: Call) -> httpx.Response:
    method, path, kwargs = call
    merged = {**headers, **kwargs.get("headers", {})}
    return c.request(method, path, **{**kwargs, "headers": merged})


def label(call: Call) -> str:
    method, path, kwargs = call
    return f"{method} {path[:160]} {kwargs.get('content', b'')[:160]!r}"


def test_no_input_and_no_outage_gets_a_500(
    own_database: PgDatabase, tmp_path: Path, model_dir: Path, tokenizer: Tokenizer
) -> None:
    db = Database(own_database.url)
    keys = {}
    with db.write() as session:
        for who in ("mine", "mine-uncached", "theirs"):
            keys[who] = auth.create_key(session, "fuzz-theirs" if who == "theirs" else "fuzz")
        session.commit()
    bearer = {who: {"Authorization": f"Bearer {key}"} for who, key in keys.items()}
    settings = Settings(
        data_dir=tmp_path / "data", database_url=own_database.url, key_cache_s=3600,
        tenant_max_queued_jobs=10_000, tenant_max_unfinished_jobs=10_000, rate_limit_per_s=0,
    )  # fmt: skip
    failures: list[str] = []
    try:
        with TestClient(create_app(settings), headers=bearer["mine"], raise_server_exceptions=False) as c:
            own = build_world(c, db, settings, bearer["theirs"], model_dir, tokenizer, tmp_path)
            id_values = list(own.values()) + MALFORMED_IDS
            adapter_tar = tar_of(tmp_path / "adapter")
            bodies = default_bodies(own, adapter_tar, archive(model_dir, tmp_path))
            paths = c.get("/openapi.json").json()["paths"]
            calls = [*hostile_bodies(own, id_values, adapter_tar), *every_operation(paths, id_values, own, bodies)]
            statuses: dict[int, int] = {}
            for call in calls:
                r = send(c, {}, call)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code >= 500:
                    failures.append(f"{r.status_code} {label(call)}: {r.text[:300]}")
            assert len(calls) > 800 and statuses.get(201, 0) > 10 and statuses.get(404, 0) > 100, statuses
            assert statuses.get(200, 0) > 50 and statuses.get(422, 0) > 100, statuses

            # the outage: every /v1 operation, with the key the process has checked and one it has not
            assert c.get("/v1/jobs").status_code == 200  # `mine` is in the key cache now
            own_database.allow_connections(False)
            right = [
                (m.upper(), path_with(t, path_params(op), own), bodies.get((m.upper(), t), {}))
                for t, item in paths.items()
                for m, op in item.items()
            ]
            for who in ("mine", "mine-uncached"):
                for call in right:
                    r = send(c, bearer[who], call)
                    if not call[1].startswith("/v1/"):
                        continue
                    if r.status_code != 503 or r.headers.get("retry-after") != "5":
                        failures.append(f"outage, {who} key: {r.status_code} {label(call)}: {r.text[:200]}")
            for path, status in (("/healthz", 200), ("/readyz", 503), ("/metrics", 503), ("/", 200)):
                r = c.get(path)
                if r.status_code != status or (status == 503 and "retry-after" not in r.headers):
                    failures.append(f"outage: GET {path} {r.status_code} {dict(r.headers)}")
            own_database.allow_connections(True)
            assert c.get("/v1/jobs", headers=bearer["mine-uncached"]).status_code == 200  # back at once
    finally:
        own_database.allow_connections(True)
        db.dispose()
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures[:40])

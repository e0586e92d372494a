"""Export in the Hugging Face layout (transformers loads it: same logits, same greedy text),
import of that archive (upload, serve, `init_from` fine-tuning through the API and with
`stagecraft train`), refusal of what cannot be imported, and bad serving requests."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

from models.formats.load import load_model
from tests.system.processes import run_cli
from tests.system.stack import Api, Served, example_spec

PROMPT = "At the market, Nadia has"


def generate(api: Api, model: str, **body: Any) -> httpx.Response:
    return api.http.post(f"/v1/models/{model}/generate", json={"prompt": PROMPT, "max_new_tokens": 20, **body})


def upload(api: Api, name: str, data: bytes) -> httpx.Response:
    return api.http.post("/v1/models", files={"file": (name, data)}, data={"name": name})


@pytest.fixture(scope="module")
def exported(served: Served, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """The model's export archive, and where it was unpacked."""
    with served.api() as api:
        r = api.http.get(f"/v1/models/{served.model_id}/export", params={"format": "hf"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/gzip" and ".tar.gz" in r.headers["content-disposition"]
    out = tmp_path_factory.mktemp("export")
    with tarfile.open(fileobj=io.BytesIO(r.content)) as t:
        t.extractall(out, filter="data")
    [folder] = [p for p in out.iterdir() if p.is_dir()]
    return r.content, folder


def test_transformers_loads_the_export(served: Served, exported: tuple[bytes, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    _, folder = exported
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "generation_config.json" in names
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    ours, tok = load_model(served.model_dir)
    ids = tok.encode(PROMPT)
    assert hf_tok(PROMPT)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max().item() < 1e-4
        out = hf.generate(x, max_new_tokens=20, do_sample=False, pad_token_id=hf_tok.pad_token_id)
    with served.api() as api:
        served_text = generate(api, served.model_id).json()["text"]
    assert hf_tok.decode(out[0, len(ids) :], skip_special_tokens=True) == served_text


@pytest.mark.slow
def test_upload_serves_and_fine_tunes(served: Served, exported: tuple[bytes, Path]) -> None:
    archive, _ = exported
    with served.api() as api:
        r = upload(api, "imported.tar.gz", archive)
        assert r.status_code == 201, r.text
        model = r.json()
        assert model["source"] == "upload" and model["job_id"] is None and model["config"]["n_layer"] == 2
        assert generate(api, model["id"]).json()["text"] == generate(api, served.model_id).json()["text"]
        spec = example_spec(served.datasets)
        spec = {
            "name": "from-an-upload",
            "model": {"init_from": {"model": model["id"]}},
            "data": {"pairs": spec["data"]["pairs"]},
            "stages": [dict(spec["stages"][1], steps=3)],
            "evaluation": spec["evaluation"],
            "precision": "fp32",
            "device": "cpu",
        }
        job = api.submit(spec)
        events = api.follow(job["id"])
        assert events[-1]["type"] == "job.succeeded", events[-1]
        tuned = events[-1]["data"]["model_id"]
        r = generate(api, tuned)
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(
            load_model(served.model_dir)[1].encode(PROMPT)
        )


@pytest.mark.slow
def test_stagecraft_train_starts_from_an_exported_directory(
    served: Served, exported: tuple[bytes, Path], example_dir: Path, tmp_path: Path
) -> None:
    _, folder = exported
    spec = example_spec({"pairs": str(example_dir / "pairs.jsonl")})
    spec = {
        "name": "local-import",
        "model": {"init_from": {"model": str(folder)}},
        "data": {"pairs": spec["data"]["pairs"]},
        "stages": [dict(spec["stages"][1], steps=2)],
        "evaluation": spec["evaluation"],
        "precision": "fp32",
        "device": "cpu",
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    proc = run_cli("train", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "run"), env=served.env)
    assert proc.returncode == 0, proc.stderr
    tuned, tok = load_model(tmp_path / "run" / "model")
    assert tuned.config.vocab_size == 512 and tok.encode(PROMPT) == load_model(folder)[1].encode(PROMPT)


def test_unsupported_uploads_are_refused(served: Served, exported: tuple[bytes, Path]) -> None:
    _, folder = exported
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in folder.iterdir():
            data = p.read_bytes()
            if p.name == "config.json":
                data = json.dumps(
                    {**json.loads(data), "model_type": "mamba", "architectures": ["MambaForCausalLM"]}
                ).encode()
            z.writestr(f"m/{p.name}", data)
    with served.api() as api:
        for name, data, words in [
            ("mamba.zip", buf.getvalue(), "model_type 'mamba'"),
            ("junk.tar.gz", b"not an archive", "not a readable"),
        ]:
            r = upload(api, name, data)
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["code"] == "unsupported_model" and words in err["message"], err
            assert err["details"][0]["loc"] == "file"
        assert len(api.http.get("/v1/models").json()["data"]) >= 1


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details", "param", "type"}, body
    assert body["error"]["code"] == code, body
    out: dict[str, Any] = body["error"]
    return out


def test_bad_requests(served: Served) -> None:
    m = served.model_id
    with served.api() as api:
        error(generate(api, "model_nope"), 404, "not_found")
        error(api.http.post("/v1/models/ckpt_nope/translate", json={"text": "x"}), 404, "not_found")
        error(api.http.get("/v1/models/model_nope/export"), 404, "not_found")
        error(api.http.get(f"/v1/models/{m}/export", params={"format": "onnx"}), 422, "invalid_request")
        e = error(generate(api, m, max_new_tokens=100_000), 422, "invalid_request")
        assert e["details"][0]["loc"] == "body.max_new_tokens"
        e = error(generate(api, m, temperature=-0.5), 422, "invalid_request")
        assert e["details"][0]["loc"] == "body.temperature"
        e = error(generate(api, m, prompt="word " * 100), 422, "context_length_exceeded")
        assert "64" in e["message"] and e["details"][0]["loc"] == "body.prompt"
        error(generate(api, m, prompt="word " * 5000), 422, "context_length_exceeded")  # encoded in a thread
        error(generate(api, m, stop=["a", "b", "c", "d", "e"]), 422, "invalid_request")
        error(generate(api, m, frequency=1), 422, "invalid_request")
        error(api.http.post(f"/v1/models/{m}/answer", json={"question": "q"}), 422, "invalid_request")
        # A job that has not succeeded has no model yet (409); its id works once it has.
        spec = example_spec(served.datasets, pretrain=5000)
        job = api.submit(spec)
        e = error(generate(api, job["id"]), 409, "model_not_ready")
        assert job["id"] in e["message"]
        assert api.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        assert generate(api, served.job["id"]).status_code == 200
    with Api(served.url, "sk-not-a-key") as other:
        error(generate(other, m), 401, "unauthorized")

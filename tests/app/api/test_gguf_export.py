"""GET /v1/models/{id}/export?format=gguf over HTTP (the real app in process): one .gguf file,
cached like the archives, that our importer reads back to the text the server generates; an
adapter exported merged into its base; a K-quant through llama.cpp's quantizer (skipped without
llama-cpp-python); options that do not apply to the format are 422s naming them, a K-quant
without llama.cpp among them."""

from __future__ import annotations

import contextlib
import io
import tarfile
from pathlib import Path

import pytest
import torch
from gguf import GGUFReader, LlamaFileType
from typer.testing import CliRunner

from models.formats.gguf import kquants
from models.formats.load import load_model
from models.inference.generate import Sampling, complete
from tests.app.api.conftest import Client, archive, error, upload
from tests.models.formats.gguf.export_models import adapter_folder, gpt_folder, gpt_tokenizer, import_llama_cpp

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # its subject is not the SQL dialect

PROMPTS = ["The quick brown fox", "At the market, Nadia has"]
GREEDY = {"max_new_tokens": 16, "temperature": 0}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    """A GPT with confident greedy choices (models.formats tests' helper), as training saves it."""
    tok = gpt_tokenizer()
    directory, model = gpt_folder(tmp_path_factory.mktemp("gguf") / "tiny", tok)
    return directory, model, tok


def served(client: Client, model_id: str, prompt: str) -> str:
    r = client.post(f"/v1/models/{model_id}/generate", json={"prompt": prompt, **GREEDY})
    assert r.status_code == 200, r.text
    text: str = r.json()["text"]
    return text


def fetch(client: Client, model_id: str, tmp_path: Path, **params: str) -> Path:
    r = client.get(f"/v1/models/{model_id}/export", params={"format": "gguf", **params})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    name = r.headers["content-disposition"].split("filename=")[1].strip('"')
    assert name == f"{model_id}-{params.get('quantization', 'f16')}.gguf"
    assert r.content[:4] == b"GGUF"
    path = tmp_path / name
    path.write_bytes(r.content)
    return path


def test_a_model_exports_as_one_gguf_file_with_the_servers_text(client: Client, folder, tmp_path: Path) -> None:
    directory, _, _ = folder
    r = upload(client, archive(directory, tmp_path))
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    path = fetch(client, model_id, tmp_path)  # f16, the default
    reader = GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "gpt2"
    assert reader.fields["general.file_type"].contents() == LlamaFileType.MOSTLY_F16
    back, tok = load_model(path)
    sampling = Sampling(max_new_tokens=GREEDY["max_new_tokens"])
    assert complete(back, tok, PROMPTS, sampling) == [served(client, model_id, p) for p in PROMPTS]

    again = client.get(f"/v1/models/{model_id}/export", params={"format": "gguf"})
    assert again.status_code == 200 and again.content == path.read_bytes()  # the cached file
    q8 = fetch(client, model_id, tmp_path, quantization="q8_0")
    assert GGUFReader(str(q8)).fields["general.file_type"].contents() == LlamaFileType.MOSTLY_Q8_0
    hf = client.get(f"/v1/models/{model_id}/export")  # the Hugging Face archive, as before
    assert hf.status_code == 200 and hf.headers["content-type"] == "application/gzip"


def test_the_sdk_and_the_cli_export_gguf(client: Client, folder, tmp_path: Path, settings, serve, monkeypatch) -> None:
    import stagecraft
    from app.api.main import create_app
    from app.cli import catalog, cli

    r = upload(client, archive(folder[0], tmp_path))
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    key = client.headers["Authorization"].split()[1]
    with stagecraft.Client(serve(create_app(settings)), key) as sdk:  # the app under uvicorn, same data
        (tmp_path / "sdk").mkdir()
        got = sdk.models.export(model_id, tmp_path / "sdk", format="gguf", quantization="q4_0")
        assert got == tmp_path / "sdk" / f"{model_id}-q4_0.gguf"
        assert GGUFReader(str(got)).fields["general.file_type"].contents() == LlamaFileType.MOSTLY_Q4_0
        with pytest.raises(stagecraft.UnprocessableEntityError) as caught:
            sdk.models.export(model_id, tmp_path / "x.gguf", format="gguf", archive="zip")
        assert caught.value.details[0]["loc"] == "archive"

        monkeypatch.setattr(catalog, "connect", contextlib.contextmanager(lambda: iter([sdk])))
        args = ["models", "export", model_id, "--format", "gguf", "--quantization", "q8_0", "--out", str(tmp_path)]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert result.output.strip() == str(tmp_path / f"{model_id}-q8_0.gguf")
        assert (tmp_path / f"{model_id}-q8_0.gguf").read_bytes()[:4] == b"GGUF"
        assert CliRunner().invoke(cli, ["models", "export", model_id, "--format", "onnx"]).exit_code == 2


def test_an_adapter_exports_merged_into_its_base(client: Client, folder, tmp_path: Path) -> None:
    directory, base, tok = folder
    r = upload(client, archive(directory, tmp_path))
    assert r.status_code == 201, r.text
    base_id = r.json()["id"]
    adapter_dir, merged = adapter_folder(tmp_path / "adapter", directory, base, ["attention", "mlp"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            t.add(adapter_dir / name, f"adapter/{name}")
    r = client.post("/v1/models", files={"file": ("a.tar.gz", buf.getvalue())}, data={"base": base_id})
    assert r.status_code == 201, r.text
    adapter_id = r.json()["id"]
    back, back_tok = load_model(fetch(client, adapter_id, tmp_path, quantization="f32"))
    ids = torch.tensor([tok.encode(PROMPTS[1])])
    with torch.no_grad():
        assert torch.allclose(back.logits(back.hidden(ids)), merged.logits(merged.hidden(ids)), atol=1e-5)
    sampling = Sampling(max_new_tokens=GREEDY["max_new_tokens"])
    assert complete(back, back_tok, PROMPTS, sampling) == [served(client, adapter_id, p) for p in PROMPTS]


def test_a_k_quant_exports_through_llama_cpps_quantizer(client: Client, folder, tmp_path: Path) -> None:
    import_llama_cpp()
    r = upload(client, archive(folder[0], tmp_path))
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    path = fetch(client, model_id, tmp_path, quantization="q4_k_m")
    assert GGUFReader(str(path)).fields["general.file_type"].contents() == LlamaFileType.MOSTLY_Q4_K_M
    again = client.get(f"/v1/models/{model_id}/export", params={"format": "gguf", "quantization": "q4_k_m"})
    assert again.status_code == 200 and again.content == path.read_bytes()  # the cached file
    assert load_model(path)[0].config == folder[1].config


def test_export_options_that_do_not_apply_are_422s_naming_them(
    client: Client, folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kquants, "unavailable", lambda: "llama-cpp-python is not installed (the `bench` extra)")
    r = upload(client, archive(folder[0], tmp_path))
    assert r.status_code == 201, r.text
    url = f"/v1/models/{r.json()['id']}/export"
    err = error(client.get(url, params={"format": "gguf", "archive": "zip"}), 422, "invalid_request")
    assert err["details"][0]["loc"] == "archive" and "one .gguf file" in err["message"]
    err = error(client.get(url, params={"quantization": "q8_0"}), 422, "invalid_request")
    assert err["details"][0]["loc"] == "quantization" and "format=gguf" in err["message"]
    err = error(client.get(url, params={"format": "gguf", "quantization": "q4_k_m"}), 422, "invalid_request")
    assert err["details"][0]["loc"] == "quantization"
    assert "K-quant" in err["message"] and "llama-cpp-python is not installed" in err["message"]
    assert "q4_0" in err["message"]
    err = error(client.get(url, params={"format": "gguf", "quantization": "int3"}), 422, "invalid_request")
    assert "f32, f16, q8_0, q4_0, q4_1" in err["message"]

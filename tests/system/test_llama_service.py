"""A Llama-family checkpoint through the service: a Hugging Face Qwen2 directory uploaded
as an archive is served (as the local model generates), fine-tuned with `init_from`, its
checkpoints served, and exported as a directory transformers loads with the same logits."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest
import torch

from models.families.llama.model import Llama
from models.formats.load import load_model
from models.inference.generate import Sampling, complete
from tests.system.stack import Api, Served, example_spec

transformers = pytest.importorskip("transformers")
PROMPT = "At the market, Nadia has"


# A minimal template that writes every turn verbatim (training masks all but the assistant's).
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def generate(api: Api, model: str) -> httpx.Response:
    return api.http.post(f"/v1/models/{model}/generate", json={"prompt": PROMPT, "max_new_tokens": 12})


@pytest.fixture(scope="module")
def qwen2_zip(served: Served, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """A random Qwen2 (GQA, q/k/v biases, tied) saved by transformers, with the served model's tokenizer."""
    _, tok = load_model(served.model_dir)
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    ref = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    d = tmp_path_factory.mktemp("qwen2")
    ref.save_pretrained(d)
    tok.save(d)
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in d.iterdir():
            z.write(p, f"qwen2/{p.name}")
    return buf.getvalue(), d


def test_a_qwen2_upload_is_served_trained_and_exported(
    served: Served, qwen2_zip: tuple[bytes, Path], tmp_path: Path
) -> None:
    archive, source = qwen2_zip
    local, tok = load_model(source)
    assert isinstance(local, Llama) and tok.chat_template is not None
    [want] = complete(local, tok, [PROMPT], Sampling(max_new_tokens=12))
    with served.api() as api:
        r = api.http.post("/v1/models", files={"file": ("q.zip", archive)}, data={"name": "qwen2-tiny"})
        assert r.status_code == 201, r.text
        model = r.json()
        assert model["config"]["n_layer"] == 2 and model["parameters"] == local.num_parameters()
        out = generate(api, model["id"])
        assert out.status_code == 200 and out.json()["text"] == want

        spec = example_spec(served.datasets)
        tune = {
            "name": "tune-qwen2",
            "model": {"init_from": {"model": model["id"]}},
            "data": {"pairs": spec["data"]["pairs"]},
            "stages": [dict(spec["stages"][1], steps=4)],
            "evaluation": {"every_steps": 100, "metrics": ["loss"], "max_samples": 0},
            "checkpointing": {"every_steps": 2, "keep_last": 2},
            "precision": "fp32",
            "device": "cpu",
        }
        # `blocks.N` is checked against the base model's 2 blocks, not spec.model's default 4
        bad = dict(tune, stages=[dict(tune["stages"][0], trainable=["blocks.2"])])
        r = api.http.post("/v1/jobs/validate", json=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_spec", r.text
        assert [d["loc"] for d in r.json()["error"]["details"]] == ["stages.0.trainable"], r.text
        assert "blocks 0-1" in r.json()["error"]["details"][0]["message"]
        job = api.submit(tune)
        events = api.follow(job["id"])
        assert events[-1]["type"] == "job.succeeded", events[-1]["data"]
        tuned = events[-1]["data"]["model_id"]
        assert generate(api, tuned).status_code == 200
        ckpts = api.http.get(f"/v1/models/{tuned}").json()["checkpoints"]
        assert ckpts and generate(api, ckpts[0]["id"]).status_code == 200

        r = api.http.get(f"/v1/models/{model['id']}/export", params={"format": "hf"})
        assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content)) as t:
        t.extractall(tmp_path, filter="data")
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    x = torch.tensor([tok.encode(PROMPT)])
    with torch.no_grad():
        assert (hf(x).logits - local.eval()(x)).abs().max().item() < 1e-4
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == tok.chat_template


def test_a_gguf_upload_is_served_and_an_unreadable_one_is_a_422(served: Served, tmp_path: Path) -> None:
    """`POST /v1/models` with a .gguf file: served with the text the file gives locally; a
    quantization type the reader lacks is a 422 `unsupported_model` naming tensor and type."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    from tests.models.formats.gguf_files import tiny_model, train_tokenizer, write_gguf

    tok = train_tokenizer()
    ref = tiny_model("llama", tok.get_vocab_size(), tied=True)
    write_gguf(tmp_path / "tiny.gguf", ref, tok)
    local, local_tok = load_model(tmp_path / "tiny.gguf")
    [want] = complete(local, local_tok, ["hello"], Sampling(max_new_tokens=8))
    q81 = {"token_embd.weight": (np.zeros((tok.get_vocab_size(), 64 // 32 * 40), np.uint8), Q.Q8_1)}
    write_gguf(tmp_path / "q81.gguf", ref, tok, replace=q81)
    with served.api() as api:
        r = api.http.post("/v1/models", files={"file": ("tiny.gguf", (tmp_path / "tiny.gguf").read_bytes())})
        assert r.status_code == 201, r.text
        out = api.http.post(f"/v1/models/{r.json()['id']}/generate", json={"prompt": "hello", "max_new_tokens": 8})
        assert out.status_code == 200 and out.json()["text"] == want
        bad = api.http.post("/v1/models", files={"file": ("q81.gguf", (tmp_path / "q81.gguf").read_bytes())})
        assert bad.status_code == 422, bad.text
        error = bad.json()["error"]
        assert error["code"] == "unsupported_model" and "token_embd.weight" in error["message"]
        assert "Q8_1" in error["message"] and str(tmp_path) not in bad.text


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's, not ours
def test_peft_adapters_of_a_qwen2_upload_serve_in_one_batch_on_it(
    served: Served, qwen2_zip: tuple[bytes, Path], tmp_path: Path
) -> None:
    """Two peft-made adapters (attention only; every projection) uploaded with `base`: listed
    with it, and requests for both and for the base at once each get their local text
    (the adapter merged into the transformers model); the base's weights are not copied."""
    from concurrent.futures import ThreadPoolExecutor

    peft = pytest.importorskip("peft")
    from models.formats.peft import load_adapter, merge_adapter

    archive, source = qwen2_zip
    local, tok = load_model(source)
    targets = {"attn": ["q_proj", "k_proj", "v_proj", "o_proj"], "all": ["q_proj", "v_proj", "gate_proj", "up_proj",
               "down_proj", "k_proj", "o_proj"]}  # fmt: skip
    archives, wants = {}, {"base": complete(local, tok, [PROMPT], Sampling(max_new_tokens=12))[0]}
    for k, (name, modules) in enumerate(targets.items()):
        torch.manual_seed(k)
        hf = transformers.AutoModelForCausalLM.from_pretrained(source)
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=modules, init_lora_weights=False)
        model = peft.get_peft_model(hf, config)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.mul_(3.0)  # large enough to change the greedy text
        model.save_pretrained(tmp_path / name)
        merged, _ = load_model(source)
        merge_adapter(merged, load_adapter(tmp_path / name).adapter)
        wants[name] = complete(merged, tok, [PROMPT], Sampling(max_new_tokens=12))[0]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for p in (tmp_path / name).iterdir():
                t.add(p, f"{name}/{p.name}")
        archives[name] = buf.getvalue()
    assert len(set(wants.values())) == 3
    with served.api() as api:
        r = api.http.post("/v1/models", files={"file": ("q.zip", archive)}, data={"name": "qwen2-base"})
        assert r.status_code == 201, r.text
        ids = {"base": r.json()["id"]}
        for name, data in archives.items():
            r = api.http.post("/v1/models", files={"file": (f"{name}.tar.gz", data)}, data={"base": ids["base"]})
            assert r.status_code == 201, r.text
            assert r.json()["base"] == ids["base"] and r.json()["adapter"]["rank"] == 4
            ids[name] = r.json()["id"]
        listed = {m["id"]: m for m in api.http.get("/v1/models", params={"limit": 100}).json()["data"]}
        assert all(listed[ids[n]]["base"] == ids["base"] for n in targets)
        generate(api, ids["base"])  # loaded once, so the requests below meet in one batch
        order = ["attn", "base", "all", "attn", "all", "base"]
        with ThreadPoolExecutor(len(order)) as pool:
            outs = list(pool.map(lambda n: generate(api, ids[n]), order))
        for name, out in zip(order, outs):
            assert out.status_code == 200 and out.json()["text"] == wants[name], name

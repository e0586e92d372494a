"""Serving over HTTP (`stagecraft up`, a model trained through it): models, generate (plain
and streamed), the task endpoints, dynamic batching, the evaluation report and the CLI.
What each endpoint returns is checked against the same model run locally."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from models.data import records
from models.data.tokenizer import Tokenizer
from models.families.gpt.model import GPT
from models.formats.load import load_model
from models.inference.generate import Sampling, complete
from stagecraft._sse import parse as parse_sse
from tests.system.processes import run_cli
from tests.system.stack import Served

SAMPLED = {"temperature": 1.0, "top_k": 50, "top_p": 0.95, "seed": 7}


@pytest.fixture(scope="module")
def local(served: Served) -> tuple[GPT, Tokenizer]:
    """The served model, loaded here from its directory."""
    return load_model(served.model_dir)


def post(served: Served, path: str, body: dict[str, Any]) -> dict[str, Any]:
    with served.api() as api:
        r = api.http.post(path, json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_models_describe_the_model_and_its_checkpoints(served: Served) -> None:
    with served.api() as api:
        listed = api.http.get("/v1/models").json()["data"]
        model = api.http.get(f"/v1/models/{served.model_id}").json()
    # The list leaves out `serving` (what is loaded, in which precisions): only the single GET looks it up.
    assert [{**m, "serving": None} for m in listed if m["id"] == served.model_id] == [{**model, "serving": None}]
    assert model["job_id"] == served.job["id"] and model["source"] == "job"
    assert model["config"] == {"vocab_size": 512, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64}
    assert [s["name"] for s in model["stages"]] == ["pretrain", "finetune", "refine"]
    assert model["parameters"] == served.job["estimates"]["parameters"]
    assert model["created"] > 1_700_000_000 and "pairs" in model["evaluation"]
    assert model["checkpoints"] and all(c["id"].startswith("ckpt_") for c in model["checkpoints"])


def test_generate_matches_the_local_model(served: Served, local: tuple[GPT, Tokenizer]) -> None:
    model, tok = local
    for prompt, params in [("At the market, Nadia has", {}), ("Omar has 7", SAMPLED), ("", SAMPLED)]:
        out = post(served, f"/v1/models/{served.model_id}/generate", {"prompt": prompt, "max_new_tokens": 24, **params})
        [want] = complete(model, tok, [prompt], Sampling(24, **params))
        assert out["text"] == want
        assert out["finish_reason"] in ("stop", "length") and out["usage"]["completion_tokens"] <= 24
        assert out["usage"]["prompt_tokens"] == max(1, len(tok.encode(prompt)))
    stop = want[3:5]
    out = post(
        served, f"/v1/models/{served.model_id}/generate", {"prompt": "", "max_new_tokens": 24, "stop": stop, **SAMPLED}
    )
    assert out["text"] == want[: want.index(stop)] and out["finish_reason"] == "stop"


def stream(served: Served, body: dict[str, Any]) -> list[dict[str, str]]:
    with (
        served.api() as api,
        api.http.stream("POST", f"/v1/models/{served.model_id}/generate", json={**body, "stream": True}) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return [vars(m) for m in parse_sse(r.iter_lines())]


def test_checkpoints_are_servable(served: Served) -> None:
    """A checkpoint id serves the checkpoint's weights (exported once as a model directory)."""
    with served.api() as api:
        ckpt = api.http.get(f"/v1/models/{served.model_id}").json()["checkpoints"][0]
    body = {"prompt": "At the market, Nadia has", "max_new_tokens": 16, **SAMPLED}
    out = post(served, f"/v1/models/{ckpt['id']}/generate", body)
    model, tok = load_model(served.data / "jobs" / served.job["id"] / "exports" / ckpt["id"])
    assert out["text"] == complete(model, tok, [body["prompt"]], Sampling(16, **SAMPLED))[0]
    final = post(served, f"/v1/models/{served.model_id}/generate", body)
    assert final["text"] != out["text"]  # other weights


def test_streamed_tokens_add_up_to_the_generation(served: Served) -> None:
    body = {"prompt": "At the garden,", "max_new_tokens": 30, **SAMPLED}
    plain = post(served, f"/v1/models/{served.model_id}/generate", body)
    events = stream(served, body)
    assert [e["event"] for e in events[:-1]] == ["token"] * (len(events) - 1) and events[-1]["event"] == "done"
    assert len(events) > 5
    done = json.loads(events[-1]["data"])
    assert "".join(json.loads(e["data"])["text"] for e in events[:-1]) == done["text"] == plain["text"]
    assert done["usage"] == plain["usage"]


def test_task_endpoints_use_the_training_templates(served: Served, local: tuple[GPT, Tokenizer]) -> None:
    model, tok = local
    m = served.model_id
    cases = [
        ("translate", {"text": "two hundred six", "source_lang": "en", "target_lang": "fr"}, "translation",
         records.translate_prompt("two hundred six", "en", "fr")),
        ("answer", {"question": "How many maps?", "context": "Jia has 3 maps."}, "answer",
         records.qa_prompt("How many maps?", "Jia has 3 maps.")),
        ("summarize", {"text": "At the market, Goro has 5 stamps."}, "summary",
         records.summarize_prompt("At the market, Goro has 5 stamps.")),
    ]  # fmt: skip
    for route, body, key, prompt in cases:
        out = post(served, f"/v1/models/{m}/{route}", {**body, "max_new_tokens": 16})
        [want] = complete(model, tok, [prompt], Sampling(16), supervised=True)
        assert out[key] == want.strip(), route
        assert out["usage"]["prompt_tokens"] == len(tok.encode(prompt)) + 1  # + the completion marker


def test_concurrent_requests_share_decode_steps(served: Served) -> None:
    """8 requests at once: each gets what it gets alone, and the decode steps are shared."""
    prompts = [
        f"At the {place}, {who} has" for place in ("market", "garden") for who in ("Ivan", "Jia", "Omar", "Hana")
    ]
    bodies = [
        {"prompt": p, "max_new_tokens": 48, "ignore_eos": True, **SAMPLED, "seed": i} for i, p in enumerate(prompts)
    ]
    alone = [post(served, f"/v1/models/{served.model_id}/generate", b)["text"] for b in bodies]

    def counters() -> dict[str, float]:
        text = httpx.get(served.url + "/metrics").text
        found = re.findall(r"^stagecraft_inference_(decode_steps|decoded_rows)_total (\S+)$", text, re.M)
        return {k: float(v) for k, v in found}

    before = counters()
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda b: post(served, f"/v1/models/{served.model_id}/generate", b), bodies))
    after = counters()
    assert [t["text"] for t in together] == alone
    assert [t["usage"]["completion_tokens"] for t in together] == [48] * 8, together
    steps = after["decode_steps"] - before["decode_steps"]
    rows = after["decoded_rows"] - before["decoded_rows"]
    assert rows / steps >= 2.5, f"{rows} rows in {steps} steps: requests were not batched"


def test_evaluation_report(served: Served) -> None:
    with served.api() as api:
        report = api.http.get(f"/v1/jobs/{served.job['id']}/evaluation").json()
    assert report["status"] == "succeeded" and report["model_id"] == served.model_id
    assert [s["name"] for s in report["stages"]] == ["pretrain", "finetune", "refine"]
    assert report["stages"][0]["metrics"]["corpus"]["loss"] > 0
    finetune = report["stages"][1]["metrics"]["pairs"]
    assert {"loss", "translate.bleu", "translate.chrf", "summarize.rouge_l", "qa.exact_match", "qa.f1"} <= set(finetune)
    assert set(report["final"]) == {"corpus", "pairs"}
    assert report["history"][0]["step"] == 0 and len(report["history"]) >= 6
    tasks = {s["task"] for s in report["samples"]}
    assert tasks == {"translate", "qa", "summarize"}
    assert all({"prompt", "reference", "prediction"} <= set(s) and s["stage"] is None for s in report["samples"])


def test_cli_generate_against_the_service(served: Served, local: tuple[GPT, Tokenizer]) -> None:
    model, tok = local
    prompt = "At the market, Nadia has"
    [want] = complete(model, tok, [prompt], Sampling(12))
    for extra in ([], ["--stream"]):
        proc = run_cli(
            "generate", served.model_id, "--prompt", prompt, "--max-new-tokens", "12", *extra, env=served.env
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == want + "\n"
    question, context = "How many maps?", "Jia has 3 maps."
    proc = run_cli("generate", served.job["id"], "--task", "qa", "--question", question, "--context", context,
                   "--max-new-tokens", "8", env=served.env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [answer] = complete(model, tok, [records.qa_prompt(question, context)], Sampling(8), supervised=True)
    assert proc.stdout == answer.strip() + "\n"
    proc = run_cli("generate", "model_nope", "--prompt", "x", env=served.env)
    assert proc.returncode == 1 and "404" in proc.stderr

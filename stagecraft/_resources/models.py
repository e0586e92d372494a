"""`client.models`: list, retrieve, generate (and stream), translate, answer, summarize,
export, upload. A model id may also be a checkpoint id (`ckpt_...`) or a job id (its final
model) wherever a model is served."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from stagecraft import _sse
from stagecraft._http import Transport
from stagecraft._pagination import Paginator
from stagecraft.errors import APIError
from stagecraft.types import Answer, Checkpoint, Generation, Model, Summary, Translation

TRANSFER_TIMEOUT = httpx.Timeout(30.0, read=600.0, write=600.0)


def _sampling(**fields: Any) -> dict[str, Any]:
    """Request fields with the unset ones left out, so the server's defaults apply."""
    return {k: v for k, v in fields.items() if v is not None}


class Models:
    def __init__(self, transport: Transport):
        self._t = transport

    def list(self, limit: int = 20, after: str | None = None) -> Paginator[Model]:
        """Finished and uploaded models, newest first, fetched page by page."""
        return Paginator(self._t, "/v1/models", Model, {"limit": limit, "after": after})

    def retrieve(self, model_id: str) -> Model | Checkpoint:
        """A model (`model_...`: architecture, stages, evaluation, checkpoints), or a
        checkpoint (`ckpt_...`)."""
        body = self._t.json("GET", f"/v1/models/{model_id}")
        return Checkpoint.model_validate(body) if body.get("object") == "checkpoint" else Model.model_validate(body)

    def generate(
        self,
        model_id: str,
        prompt: str,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: str | builtins.list[str] | None = None,
        seed: int | None = None,
    ) -> Generation:
        """Continue `prompt` (greedy unless temperature > 0; `seed` makes sampling repeatable)."""
        body = _sampling(
            prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            stop=stop, seed=seed,
        )  # fmt: skip
        return Generation.model_validate(self._post(model_id, "generate", body))

    def stream(self, model_id: str, prompt: str, **sampling: Any) -> Iterator[str]:
        """The text of a generation piece by piece as it is decoded (`generate`'s options)."""
        body = {**_sampling(**sampling), "prompt": prompt, "stream": True}
        response = self._t.send(
            "POST", f"/v1/models/{model_id}/generate", json=body, stream=True, idempotent=True, timeout=TRANSFER_TIMEOUT
        )
        try:
            for message in _sse.parse(response.iter_lines()):
                data = json.loads(message.data)
                if message.event == "token":
                    yield str(data["text"])
                elif message.event == "error":
                    err = data.get("error", {})
                    raise APIError(500, err.get("code", "internal_error"), err.get("message", ""), [])
        finally:
            response.close()

    def translate(
        self, model_id: str, text: str, source_lang: str = "en", target_lang: str = "fr", **sampling: Any
    ) -> Translation:
        body = {**_sampling(**sampling), "text": text, "source_lang": source_lang, "target_lang": target_lang}
        return Translation.model_validate(self._post(model_id, "translate", body))

    def answer(self, model_id: str, question: str, context: str, **sampling: Any) -> Answer:
        body = {**_sampling(**sampling), "question": question, "context": context}
        return Answer.model_validate(self._post(model_id, "answer", body))

    def summarize(self, model_id: str, text: str, **sampling: Any) -> Summary:
        return Summary.model_validate(self._post(model_id, "summarize", {**_sampling(**sampling), "text": text}))

    def export(
        self,
        model_id: str,
        dest: str | Path,
        archive: str | None = None,
        format: str = "hf",
        quantization: str | None = None,
    ) -> Path:
        """Download the model: `format` "hf", an archive (`archive`: tar.gz, the default, or zip)
        that transformers' AutoModelForCausalLM loads; "gguf", one .gguf file that llama.cpp runs
        (`quantization`: f32, f16 (the default), q8_0, q4_0 or q4_1, or a K-quant such as q4_k_m
        where the server has llama.cpp; an adapter comes merged into its base). `dest`: a file
        path, or an existing folder (the server's file name is used)."""
        params = {"format": format, "archive": archive, "quantization": quantization}
        params = {k: v for k, v in params.items() if v is not None}
        response = self._t.send(
            "GET", f"/v1/models/{model_id}/export", params=params, stream=True, timeout=TRANSFER_TIMEOUT
        )
        try:
            target = Path(dest)
            if target.is_dir():
                kind = f"{quantization or 'f16'}.gguf" if format == "gguf" else f"{format}.{archive or 'tar.gz'}"
                target = target / _filename(response, f"{model_id}-{kind}")
            partial = target.with_name(target.name + ".part")
            with partial.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
            partial.replace(target)
        finally:
            response.close()
        return target

    def upload(self, path: str | Path, name: str | None = None) -> Model:
        """Import a .tar.gz or .zip of a Hugging Face model folder (GPT-2 or Llama family: gpt2,
        llama, mistral, qwen2, qwen3) or of an export, or a .gguf file."""
        body = self._t.upload("/v1/models", path, name, TRANSFER_TIMEOUT)
        return Model.model_validate(body)

    def _post(self, model_id: str, task: str, body: dict[str, Any]) -> Any:
        return self._t.json(
            "POST", f"/v1/models/{model_id}/{task}", json=body, idempotent=True, timeout=TRANSFER_TIMEOUT
        )


def _filename(response: httpx.Response, fallback: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "filename" and value:
            return Path(value.strip('"')).name
    return fallback

"""OpenAI-compatible `POST /v1/completions` and `POST /v1/chat/completions`, so the official
`openai` client works against Stagecraft by changing `base_url`. `model` is a Stagecraft
model id (or checkpoint id, or job id). Streams send OpenAI's chunk objects as `data:`
lines and end with `data: [DONE]`.

Completions continue the prompt as plain text. Chat renders the messages with the model's
chat template, as transformers' `apply_chat_template(..., add_generation_prompt=True)` does, and
stops at its end-of-turn tokens (finish_reason "stop"); a model without a template gets them as
`messages` training records are rendered, and generates after the completion marker
(app.serving.requests).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.api import sse
from app.api.body import ParsedJsonRoute
from app.api.deps import DatabaseDep, ModelCacheDep, SettingsDep, TenantDep
from app.api.errors import error_body
from app.api.openapi import ERRORS, SERVE_ERRORS
from app.api.schemas import SamplingIn
from app.config import Settings
from app.db import Database
from app.errors import Invalid, ServiceError
from app.serving.engine import ModelCache
from app.serving.requests import MAX_NEW_TOKENS, MAX_PROMPTS, MAX_SEED, ChatPrompt, Prepared, Prompt, prepare, stop_list

router = APIRouter(prefix="/v1", tags=["openai"], responses={**ERRORS, **SERVE_ERRORS}, route_class=ParsedJsonRoute)
Chunk = dict[str, Any]


class OpenAIIn(BaseModel):
    """Parameters both routes share. Accepted and ignored: penalties, logit_bias, user."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no coercion: `true` is not a number
    model: str
    max_tokens: Annotated[int | None, Field(ge=1, le=MAX_NEW_TOKENS)] = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=8)] = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int | None, Field(ge=0, le=MAX_SEED)] = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    precision: Literal["fp32", "int8", "int4", "nf4"] | None = None  # Stagecraft's: app.api.schemas.SamplingIn


class CompletionIn(OpenAIIn):
    prompt: str | Annotated[list[str], Field(max_length=MAX_PROMPTS)]
    max_tokens: Annotated[int | None, Field(ge=1, le=MAX_NEW_TOKENS)] = 16
    echo: bool = False
    logprobs: Literal[None] = None
    best_of: Literal[None, 1] = None
    suffix: Literal[None] = None


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatIn(OpenAIIn):
    messages: Annotated[list[Message], Field(min_length=1, max_length=1000)]
    max_completion_tokens: Annotated[int | None, Field(ge=1, le=MAX_NEW_TOKENS)] = None
    logprobs: Literal[None, False] = None


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass(frozen=True)
class Serving:
    """What a request needs to generate: the caller's tenant and the app's cache, database, settings."""

    tenant_id: str
    cache: ModelCache
    db: Database
    settings: Settings


async def serving(tenant_id: TenantDep, cache: ModelCacheDep, db: DatabaseDep, settings: SettingsDep) -> Serving:
    return Serving(tenant_id, cache, db, settings)


ServingDep = Annotated[Serving, Depends(serving)]


async def _prepared(
    s: Serving, body: OpenAIIn, prompts: list[Prompt], max_tokens: int | None, loc: str
) -> list[Prepared]:
    """One Prepared per choice: each prompt n times (seeds seed, seed+1, ...)."""
    stop = stop_list(body.stop, "body.stop")
    out: list[Prepared] = []
    for prompt in prompts:
        for j in range(body.n):
            seed = None if body.seed is None else body.seed + j
            sampling = SamplingIn(max_new_tokens=max_tokens or MAX_NEW_TOKENS, temperature=body.temperature,
                                  top_p=body.top_p, seed=seed, precision=body.precision)  # fmt: skip
            out.append(await prepare(s.cache, s.db, s.settings, s.tenant_id, body.model, prompt, sampling, stop,
                                     loc))  # fmt: skip
    return out


async def _merged(choices: list[Prepared]) -> AsyncIterator[tuple[int, str, str | None, int]]:
    """(choice index, text delta, finish_reason, tokens) from every choice as they come."""
    queue: asyncio.Queue[tuple[int, str, str | None, int] | BaseException] = asyncio.Queue()

    async def pump(i: int, p: Prepared) -> None:
        try:
            async for u in p.updates(stream=True):
                await queue.put((i, u.text, u.finish_reason, u.tokens))
        except BaseException as exc:
            await queue.put(exc)
            raise

    tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(choices)]
    try:
        for _ in range(len(choices)):
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item[2] is not None:
                    break
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _streaming(
    choices: list[Prepared], chunk: Callable[[int, str, str | None], Chunk], head: Chunk, include_usage: bool
) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        tokens = [0] * len(choices)
        try:
            async for i, text, reason, n in _merged(choices):
                tokens[i] = n
                if text:
                    yield sse.json_message({**head, "choices": [chunk(i, text, None)]})
                if reason is not None:  # as OpenAI: the finish reason in a chunk of its own
                    yield sse.json_message({**head, "choices": [chunk(i, "", reason)]})
        except ServiceError as exc:
            yield sse.json_message(error_body(exc.code, exc.message, exc.details, exc.status))
            return
        if include_usage:
            prompt = sum(len(p.prompt) for p in choices)
            yield sse.json_message({**head, "choices": [], "usage": usage(prompt, sum(tokens))})
        yield sse.DONE

    return StreamingResponse(lines(), media_type="text/event-stream", headers=sse.HEADERS)


async def _complete_all(choices: list[Prepared]) -> list[tuple[str, str, int]]:
    return list(await asyncio.gather(*(p.text() for p in choices)))


def _head(prefix: str, obj: str, model: str) -> Chunk:
    return {"id": f"{prefix}-{secrets.token_hex(12)}", "object": obj, "created": int(time.time()), "model": model,
            "system_fingerprint": None}  # fmt: skip


@router.post("/completions", response_model=None)
async def completions(body: CompletionIn, s: ServingDep) -> Chunk | StreamingResponse:
    """OpenAI's legacy completions: plain-text continuation of `prompt` (a string or a list)."""
    if body.echo:
        raise Invalid("echo is not supported", [{"loc": "body.echo", "message": "not supported"}])
    prompts: list[Prompt] = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise Invalid("prompt: at least one", [{"loc": "body.prompt", "message": "at least one prompt"}])
    choices = await _prepared(s, body, prompts, body.max_tokens, "body.prompt")
    head = _head("cmpl", "text_completion", body.model)
    if body.stream:

        def chunk(i: int, text: str, reason: str | None) -> Chunk:
            return {"text": text, "index": i, "logprobs": None, "finish_reason": reason}

        return _streaming(choices, chunk, head, bool((body.stream_options or {}).get("include_usage")))
    done = await _complete_all(choices)
    return {
        **head,
        "choices": [
            {"text": text, "index": i, "logprobs": None, "finish_reason": reason}
            for i, (text, reason, _) in enumerate(done)
        ],
        "usage": usage(sum(len(p.prompt) for p in choices), sum(n for _, _, n in done)),
    }


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatIn, s: ServingDep) -> Chunk | StreamingResponse:
    """OpenAI's chat completions: the messages rendered by the model's chat template (without one:
    as `role: content` lines, then `assistant:`); `developer` turns are `system` turns."""
    prompt = ChatPrompt([{"role": m.role.replace("developer", "system"), "content": m.text()} for m in body.messages])
    max_tokens = body.max_completion_tokens or body.max_tokens
    choices = await _prepared(s, body, [prompt], max_tokens, "body.messages")
    head = _head("chatcmpl", "chat.completion.chunk", body.model)
    if body.stream:
        started: set[int] = set()

        def chunk(i: int, text: str, reason: str | None) -> Chunk:
            delta: dict[str, Any] = {"content": text} if text else {}
            if i not in started:
                started.add(i)
                delta = {"role": "assistant", **delta}
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}

        return _streaming(choices, chunk, head, bool((body.stream_options or {}).get("include_usage")))
    done = await _complete_all(choices)
    return {
        **head,
        "object": "chat.completion",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": reason,
            }
            for i, (text, reason, _) in enumerate(done)
        ],
        "usage": usage(len(choices[0].prompt), sum(n for _, _, n in done)),
    }

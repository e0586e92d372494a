"""Serving a model: /generate (optionally streamed as SSE) and the task endpoints, which
render the same prompt templates as training (models.records) and generate after the
completion marker. Model ids may also be checkpoint ids, or job ids (their final model)."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.deps import TenantDep
from app.errors import Invalid, ServiceError, error_body
from app.inference import Engine, Served, Update
from app.routes import ERRORS, error
from app.services import models
from models import records

if TYPE_CHECKING:
    from models.generate import Sampling

router = APIRouter(prefix="/v1/models/{model_id}", tags=["inference"], responses=ERRORS)
MAX_NEW_TOKENS = 2048
SERVE_ERRORS: dict[int | str, dict[str, Any]] = {
    409: error("`model_not_ready`: a job id whose job has not succeeded"),
    422: error("invalid parameters; `context_length_exceeded`: the prompt leaves no room in the context"),
}
SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}},
        "description": "the generation; with `stream: true`, SSE events `token` ({text}) and a final "
        "`done` (the same object as the JSON answer)",
    }
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingIn(Strict):
    max_new_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)] = 64
    temperature: Annotated[float, Field(ge=0.0, le=10.0, description="0: greedy")] = 0.0
    top_k: Annotated[int, Field(ge=0, description="0: no limit")] = 0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: int | None = None


class GenerateIn(SamplingIn):
    prompt: Annotated[str, Field(max_length=1_000_000)]
    stop: Annotated[str | list[str] | None, Field(description="up to 4 stop strings")] = None
    stream: bool = False
    ignore_eos: Annotated[bool, Field(description="generate max_new_tokens whatever comes (benchmarks)")] = False


class TranslateIn(SamplingIn):
    text: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    source_lang: Annotated[str, Field(min_length=2, max_length=32)] = "en"
    target_lang: Annotated[str, Field(min_length=2, max_length=32)] = "fr"


class AnswerIn(SamplingIn):
    question: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    context: Annotated[str, Field(max_length=1_000_000)]


class SummarizeIn(SamplingIn):
    text: Annotated[str, Field(min_length=1, max_length=1_000_000)]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerationOut(BaseModel):
    id: str
    object: str = "generation"
    model: str
    text: str
    finish_reason: str = Field(description="stop (end token or stop string) | length")
    usage: Usage


@dataclass
class Prepared:
    """A request ready to generate: its model loaded and its prompt encoded and checked."""

    engine: Engine
    served: Served
    prompt: list[int]
    sampling: Sampling
    stop: list[str]
    supervised: bool
    ignore_eos: bool = False

    async def updates(self, stream: bool) -> AsyncIterator[Update]:
        updates = self.engine.generate(
            self.served, self.prompt, self.sampling, self.stop, self.supervised, stream, self.ignore_eos
        )
        async for u in updates:
            if u.finish_reason == "error":
                raise ServiceError("generation failed; it has been logged", code="internal_error")
            yield u

    async def text(self) -> tuple[str, str, int]:
        """(text, finish_reason, completion tokens) of a non-streamed request."""
        parts, reason, tokens = [], "length", 0
        async for u in self.updates(stream=False):
            parts.append(u.text)
            reason, tokens = u.finish_reason or reason, u.tokens
        return "".join(parts), reason, tokens


def stop_list(stop: str | list[str] | None, loc: str) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise Invalid("stop: at most 4 non-empty strings", [{"loc": loc, "message": "at most 4 non-empty strings"}])
    return stops


async def prepare(
    request: Request,
    tenant_id: str,
    ref: str,
    prompt: str,
    sampling: SamplingIn,
    stop: list[str],
    supervised: bool,
    loc: str = "body.prompt",
) -> Prepared:
    """404/409 for the model, 422 for a prompt that leaves no room in its context."""
    settings, db = request.app.state.settings, request.app.state.db

    def find() -> Any:
        with db.read() as session:
            return models.servable(session, settings, tenant_id, ref)

    directory = await run_in_threadpool(find)
    engine: Engine = request.app.state.engine
    served = await engine.get(str(directory), directory)
    tok = served.tok
    # Long prompts are encoded off the event loop (short ones take microseconds).
    ids = await run_in_threadpool(tok.encode, prompt) if len(prompt) > 20_000 else tok.encode(prompt)
    ids += [tok.sep_id] if supervised else []
    ids = ids or [tok.eos_id]
    if len(ids) >= served.block_size:
        message = f"the prompt is {len(ids)} tokens; this model's context holds {served.block_size} in all"
        raise Invalid(message, [{"loc": loc, "message": message}], code="context_length_exceeded")
    from models.generate import Sampling  # torch is loaded by now (the model is)

    s = Sampling(sampling.max_new_tokens, sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed)
    return Prepared(engine, served, ids, s, stop, supervised)


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def generation(model_id: str, p: Prepared, text: str, reason: str, tokens: int) -> GenerationOut:
    usage = Usage(prompt_tokens=len(p.prompt), completion_tokens=tokens, total_tokens=len(p.prompt) + tokens)
    return GenerationOut(
        id=f"gen_{secrets.token_hex(12)}", model=model_id, text=text, finish_reason=reason, usage=usage
    )


@router.post("/generate", response_model=GenerationOut, responses={**SERVE_ERRORS, **SSE_DOC})
async def generate(
    model_id: str, body: GenerateIn, request: Request, tenant_id: TenantDep
) -> GenerationOut | StreamingResponse:
    """Continue `prompt`. Greedy unless `temperature` > 0; `seed` makes sampling repeatable."""
    p = await prepare(request, tenant_id, model_id, body.prompt, body, stop_list(body.stop, "body.stop"), False)
    p.ignore_eos = body.ignore_eos
    if not body.stream:
        return generation(model_id, p, *(await p.text()))

    async def events() -> AsyncIterator[str]:
        parts, reason, tokens = [], "length", 0
        try:
            async for u in p.updates(stream=True):
                if u.text:
                    parts.append(u.text)
                    yield sse("token", {"text": u.text})
                reason, tokens = u.finish_reason or reason, u.tokens
        except ServiceError as exc:
            yield sse("error", error_body(exc.code, exc.message))
            return
        yield sse("done", generation(model_id, p, "".join(parts), reason, tokens).model_dump())

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def task(request: Request, tenant_id: str, model_id: str, prompt: str, body: SamplingIn) -> dict[str, Any]:
    p = await prepare(request, tenant_id, model_id, prompt, body, [], True, loc="body")
    text, reason, tokens = await p.text()
    return {
        "model": model_id,
        "text": text.strip(),
        "finish_reason": reason,
        "usage": Usage(prompt_tokens=len(p.prompt), completion_tokens=tokens, total_tokens=len(p.prompt) + tokens),
    }


class TranslationOut(BaseModel):
    translation: str
    model: str
    finish_reason: str
    usage: Usage


class AnswerOut(BaseModel):
    answer: str
    model: str
    finish_reason: str
    usage: Usage


class SummaryOut(BaseModel):
    summary: str
    model: str
    finish_reason: str
    usage: Usage


@router.post("/translate", responses=SERVE_ERRORS)
async def translate(model_id: str, body: TranslateIn, request: Request, tenant_id: TenantDep) -> TranslationOut:
    """Translate `text` with the training template (`Translate English to French: ...`)."""
    prompt = records.translate_prompt(body.text, body.source_lang, body.target_lang)
    r = await task(request, tenant_id, model_id, prompt, body)
    return TranslationOut(translation=r.pop("text"), **r)


@router.post("/answer", responses=SERVE_ERRORS)
async def answer(model_id: str, body: AnswerIn, request: Request, tenant_id: TenantDep) -> AnswerOut:
    """Answer `question` from `context`, with the training template of `qa` records."""
    r = await task(request, tenant_id, model_id, records.qa_prompt(body.question, body.context), body)
    return AnswerOut(answer=r.pop("text"), **r)


@router.post("/summarize", responses=SERVE_ERRORS)
async def summarize(model_id: str, body: SummarizeIn, request: Request, tenant_id: TenantDep) -> SummaryOut:
    """Summarize `text`, with the training template of `summarize` records."""
    r = await task(request, tenant_id, model_id, records.summarize_prompt(body.text), body)
    return SummaryOut(summary=r.pop("text"), **r)

"""Serving a model: /generate (optionally streamed as SSE) and the task endpoints, which
render the same prompt templates as training (through the model's chat template, if it has one).
Model ids may also be checkpoint ids, or job ids (their final model). The work is in
app.serving.requests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api import sse
from app.api.body import ParsedJsonRoute
from app.api.deps import DatabaseDep, ModelCacheDep, SettingsDep, TenantDep
from app.api.errors import error_body
from app.api.openapi import ERRORS, GENERATION_STREAM, SERVE_ERRORS
from app.api.schemas import (
    AnswerIn,
    AnswerOut,
    GenerateIn,
    GenerationOut,
    SamplingIn,
    SummarizeIn,
    SummaryOut,
    TranslateIn,
    TranslationOut,
    Usage,
)
from app.errors import ServiceError
from app.serving.requests import Prepared, TaskAnswer, prepare, run_task, stop_list

router = APIRouter(prefix="/v1/models/{model_id}", tags=["inference"], responses=ERRORS, route_class=ParsedJsonRoute)


def usage(prompt: int, completion: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def generation(model_id: str, p: Prepared, text: str, reason: str, tokens: int) -> GenerationOut:
    return GenerationOut(
        id=f"gen_{secrets.token_hex(12)}", model=model_id, text=text, finish_reason=reason,
        usage=usage(len(p.prompt), tokens),
    )  # fmt: skip


@router.post("/generate", response_model=GenerationOut, responses={**SERVE_ERRORS, **GENERATION_STREAM})
async def generate(
    model_id: str, body: GenerateIn, tenant_id: TenantDep, cache: ModelCacheDep, db: DatabaseDep, settings: SettingsDep
) -> GenerationOut | StreamingResponse:
    """Continue `prompt`. Greedy unless `temperature` > 0; `seed` makes sampling repeatable."""
    stop = stop_list(body.stop, "body.stop")
    p = await prepare(cache, db, settings, tenant_id, model_id, body.prompt, body, stop)
    p.ignore_eos = body.ignore_eos
    if not body.stream:
        return generation(model_id, p, *(await p.text()))

    async def events() -> AsyncIterator[str]:
        parts, reason, tokens = [], "length", 0
        try:
            async for u in p.updates(stream=True):
                if u.text:
                    parts.append(u.text)
                    yield sse.json_message({"text": u.text}, "token")
                reason, tokens = u.finish_reason or reason, u.tokens
        except ServiceError as exc:
            yield sse.json_message(error_body(exc.code, exc.message, exc.details, exc.status), "error")
            return
        yield sse.json_message(generation(model_id, p, "".join(parts), reason, tokens).model_dump(), "done")

    return StreamingResponse(events(), media_type="text/event-stream", headers=sse.HEADERS)


async def _task(
    cache: ModelCacheDep, db: DatabaseDep, settings: SettingsDep, tenant_id: str, model_id: str, task: str,
    body: SamplingIn,
) -> tuple[TaskAnswer, dict[str, object]]:  # fmt: skip
    answer = await run_task(cache, db, settings, tenant_id, model_id, task, body.model_dump(), body)
    rest = {"model": model_id, "finish_reason": answer.finish_reason}
    return answer, {**rest, "usage": usage(answer.prompt_tokens, answer.completion_tokens)}


@router.post("/translate", responses=SERVE_ERRORS)
async def translate(
    model_id: str, body: TranslateIn, tenant_id: TenantDep, cache: ModelCacheDep, db: DatabaseDep, settings: SettingsDep
) -> TranslationOut:
    """Translate `text` with the training template (`Translate English to French: ...`)."""
    answer, rest = await _task(cache, db, settings, tenant_id, model_id, "translate", body)
    return TranslationOut(translation=answer.text, **rest)  # type: ignore[arg-type]


@router.post("/answer", responses=SERVE_ERRORS)
async def answer(
    model_id: str, body: AnswerIn, tenant_id: TenantDep, cache: ModelCacheDep, db: DatabaseDep, settings: SettingsDep
) -> AnswerOut:
    """Answer `question` from `context`, with the training template of `qa` records."""
    found, rest = await _task(cache, db, settings, tenant_id, model_id, "qa", body)
    return AnswerOut(answer=found.text, **rest)  # type: ignore[arg-type]


@router.post("/summarize", responses=SERVE_ERRORS)
async def summarize(
    model_id: str, body: SummarizeIn, tenant_id: TenantDep, cache: ModelCacheDep, db: DatabaseDep, settings: SettingsDep
) -> SummaryOut:
    """Summarize `text`, with the training template of `summarize` records."""
    answer, rest = await _task(cache, db, settings, tenant_id, model_id, "summarize", body)
    return SummaryOut(summary=answer.text, **rest)  # type: ignore[arg-type]

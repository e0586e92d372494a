"""Generation requests: find the model a ref names, encode and check the prompt, and run it
on the model cache. Shared by the native routes (/generate and the task endpoints) and the
OpenAI-compatible ones; nothing here knows HTTP.

Task endpoints render the training templates (models.records.task_prompt) and generate
after the completion marker; their answer is the text with surrounding space removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.db import Database
from app.errors import InternalError, Invalid
from app.services import catalog
from app.serving.engine import ModelCache, Served, Update
from models.records import TASK_INPUTS, task_prompt

if TYPE_CHECKING:
    from models.generate import Sampling

MAX_NEW_TOKENS = 2048
MAX_STOPS = 4
MAX_STOP_CHARS = 1000  # each; what the decoder holds back per step is linear in it (models.decoder)
MAX_SEED = 2**63 - 1  # seeds are torch generator seeds; OpenAI's n choices add up to n - 1
MAX_PROMPTS = 16  # prompts in one OpenAI completions request (each decoded `n` times)
LONG_PROMPT = 20_000  # characters; longer prompts are encoded off the event loop


class SamplingFields(Protocol):
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None


@dataclass
class Prepared:
    """A request ready to generate: its model loaded and its prompt encoded and checked."""

    cache: ModelCache
    served: Served
    prompt: list[int]
    sampling: Sampling
    stop: list[str]
    supervised: bool
    ignore_eos: bool = False
    adapter: str | None = None  # a LoRA adapter served on `served` (its base)

    async def updates(self, stream: bool) -> AsyncIterator[Update]:
        updates = self.cache.generate(
            self.served, self.prompt, self.sampling, self.stop, self.supervised, stream, self.ignore_eos, self.adapter
        )
        async for u in updates:
            if u.finish_reason == "error":
                raise InternalError("generation failed; it has been logged")
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
    if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        message = f"at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters"
        raise Invalid(f"stop: {message}", [{"loc": loc, "message": message}])
    return stops


async def prepare(
    cache: ModelCache,
    db: Database,
    settings: Settings,
    tenant_id: str,
    ref: str,
    prompt: str,
    sampling: SamplingFields,
    stop: list[str],
    supervised: bool,
    loc: str = "body.prompt",
) -> Prepared:
    """404/409 for the model, 422 for a prompt that leaves no room in its context."""

    def find() -> tuple[Path, Path | None]:  # may export a checkpoint: torch, so on the inference thread
        with db.read() as session:
            return catalog.serving(session, settings, tenant_id, ref)

    directory, adapter_dir = await cache.run(find)
    served = await cache.get(str(directory), directory)
    adapter = None if adapter_dir is None else await cache.adapter(served, adapter_dir)
    tok = served.tok
    ids = await run_in_threadpool(tok.encode, prompt) if len(prompt) > LONG_PROMPT else tok.encode(prompt)
    ids += [tok.sep_id] if supervised else []
    ids = ids or [tok.eos_id]
    if len(ids) >= served.block_size:
        message = f"the prompt is {len(ids)} tokens; this model's context holds {served.block_size} in all"
        raise Invalid(message, [{"loc": loc, "message": message}], code="context_length_exceeded")
    from models.generate import Sampling  # torch is loaded by now (the model is)

    s = Sampling(sampling.max_new_tokens, sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed)
    return Prepared(cache, served, ids, s, stop, supervised, adapter=adapter)


@dataclass(frozen=True)
class TaskAnswer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


async def run_task(
    cache: ModelCache,
    db: Database,
    settings: Settings,
    tenant_id: str,
    ref: str,
    task: str,
    fields: dict[str, str],
    sampling: SamplingFields,
) -> TaskAnswer:
    """A task endpoint's generation: the task's training template, after the completion marker."""
    prompt = task_prompt(task, {k: fields[k] for k in TASK_INPUTS[task]})
    p = await prepare(cache, db, settings, tenant_id, ref, prompt, sampling, [], True, loc="body")
    text, reason, tokens = await p.text()
    return TaskAnswer(text.strip(), reason, len(p.prompt), tokens)

"""Generation requests: find the model a ref names, encode and check the prompt, and run it
on the model cache. Shared by the native routes (/generate and the task endpoints) and the
OpenAI-compatible ones; nothing here knows HTTP.

A prompt is plain text (continued as it is), a chat (`ChatPrompt`: OpenAI's messages) or a
task prompt (`TaskPrompt`: the training template, models.data.records.task_prompt). On a model with
a chat template (models.data.chat), chats are rendered by it as transformers' `apply_chat_template(...,
add_generation_prompt=True)` renders them, and a task prompt is the user turn of a one-turn chat
(models.data.chat_records.task_prompt, as training renders task records); the decoder stops on the
model's end-of-turn tokens (app.serving.engine). On a model without one, both are rendered as
training renders supervised records and generate after the completion marker. A task's answer
is the text with surrounding space removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.db import Database
from app.errors import InternalError, Invalid, from_model_error
from app.services import catalog
from app.serving.engine import ModelCache, Served, Update
from app.serving.precision import choose as choose_precision
from models.data import chat_records
from models.data.chat import render_prompt
from models.data.records import TASK_INPUTS, messages_prompt, task_prompt
from models.errors import ChatTemplateError, UnsupportedModel

if TYPE_CHECKING:
    from models.inference.generate import Sampling

MAX_NEW_TOKENS = 2048
MAX_STOPS = 4
MAX_STOP_CHARS = 1000  # each; what the decoder holds back per step is linear in it (models.inference.decoder)
MAX_SEED = 2**63 - 1  # seeds are torch generator seeds; OpenAI's n choices add up to n - 1
MAX_PROMPTS = 16  # prompts in one OpenAI completions request (each decoded `n` times)
LONG_PROMPT = 20_000  # characters; longer prompts (and chat-template ones) are encoded off the event loop


class SamplingFields(Protocol):
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None

    @property
    def precision(self) -> str | None: ...  # None: the operator's default (app.serving.precision)


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
            if u.finish_reason == "error" and u.error:  # this request's model went wrong, not the service
                detail = [{"loc": "model", "message": u.error}]
                raise Invalid(f"generation failed: {u.error}", detail, code="model_error")
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


@dataclass(frozen=True)
class ChatPrompt:
    messages: list[dict[str, str]]  # role and content of each turn


@dataclass(frozen=True)
class TaskPrompt:
    text: str  # a task's training prompt (models.data.records.task_prompt)


Prompt = str | ChatPrompt | TaskPrompt


def prompt_text(served: Served, prompt: Prompt) -> tuple[str, bool]:
    """The text a prompt is fed as, and whether the completion marker follows it (`supervised`).
    A chat template that refuses the chat raises ChatTemplateError."""
    chat = served.chat
    if isinstance(prompt, str):
        return prompt, False
    if chat is None:
        text = prompt.text if isinstance(prompt, TaskPrompt) else messages_prompt(prompt.messages)
        return text, True
    if isinstance(prompt, TaskPrompt):
        return chat_records.task_prompt(prompt.text, chat), False
    return render_prompt(prompt.messages, chat), False


def encode(served: Served, prompt: Prompt) -> tuple[list[int], bool]:
    """The prompt's token ids as the decoder is fed them, and `supervised` (see prompt_text).
    Rendered text is encoded without added special tokens: a template writes its own."""
    text, supervised = prompt_text(served, prompt)
    ids = served.tok.encode(text) + ([served.tok.sep_id] if supervised else [])
    return ids or [served.tok.eos_id], supervised


def _size(prompt: Prompt) -> int:
    if isinstance(prompt, ChatPrompt):
        return sum(len(m["content"]) for m in prompt.messages)
    return len(prompt if isinstance(prompt, str) else prompt.text)


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
    prompt: Prompt,
    sampling: SamplingFields,
    stop: list[str],
    loc: str = "body.prompt",
) -> Prepared:
    """404/409 for the model, 422 for a prompt that leaves no room in its context (or that
    the model's chat template refuses), or for a precision the operator does not serve."""
    precision = choose_precision(settings, sampling.precision)

    def find() -> tuple[Path, Path | None]:  # may export a checkpoint: torch, so on the inference thread
        with db.read() as session:
            return catalog.serving(session, settings, tenant_id, ref)

    directory, adapter_dir = await cache.run(find)
    try:
        served = await cache.get(str(directory), directory, precision)
    except UnsupportedModel as exc:  # a quantized precision on a device without its kernels
        raise from_model_error(exc, "body.precision") from None
    adapter = None if adapter_dir is None else await cache.adapter(served, adapter_dir)
    # Off the event loop: long prompts, and any a chat template renders (the uploader's code:
    # bounded by models.data.bounded_jinja, yet up to ~0.1 s and an output 4x its input).
    away = _size(prompt) > LONG_PROMPT or (served.chat is not None and not isinstance(prompt, str))
    try:
        ids, supervised = await run_in_threadpool(encode, served, prompt) if away else encode(served, prompt)
    except ChatTemplateError as exc:
        raise from_model_error(exc, loc) from None
    if len(ids) >= served.block_size:
        message = f"the prompt is {len(ids)} tokens; this model's context holds {served.block_size} in all"
        raise Invalid(message, [{"loc": loc, "message": message}], code="context_length_exceeded")
    from models.inference.generate import Sampling  # torch is loaded by now (the model is)

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
    """A task endpoint's generation: the task's training template, rendered as training renders it."""
    prompt = TaskPrompt(task_prompt(task, {k: fields[k] for k in TASK_INPUTS[task]}))
    p = await prepare(cache, db, settings, tenant_id, ref, prompt, sampling, [], loc="body")
    text, reason, tokens = await p.text()
    return TaskAnswer(text.strip(), reason, len(p.prompt), tokens)

"""Supervised records on chat models, and where a model keeps its chat format.

On a model with a chat template, every supervised record becomes a conversation: a `messages`
record is itself one; a prompt/completion or task record becomes [user: the prompt, assistant:
the completion], the prompt being the very text `models.data.records` renders for the task endpoints
(`task_messages`), so training and inference see the same user turn.

A model directory carries its chat format as Hugging Face does (`chat_template.jinja` or the
`chat_template` of tokenizer_config.json, special tokens there, end-of-sequence ids in
generation_config.json), or as our own `chat.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from models.data.chat import ChatFormat, Message, encode_chat, render_prompt
from models.data.records import Example

CHAT_FILE = "chat.json"
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def task_messages(prompt: str, completion: str | None = None) -> list[Message]:
    """A rendered task prompt as the user turn (its trailing newline or cue spacing dropped)."""
    turns: list[Message] = [{"role": "user", "content": prompt.strip()}]
    if completion is not None:
        turns.append({"role": "assistant", "content": completion})
    return turns


def example_messages(ex: Example) -> list[Message]:
    if ex.messages is not None:
        return [dict(m) for m in ex.messages]
    return task_messages(ex.prompt, ex.completion)


def task_prompt(prompt: str, chat: ChatFormat) -> str:
    """What the task endpoints and evaluation feed a chat model for a task prompt from models.data.records."""
    return render_prompt(task_messages(prompt), chat)


def encode_chat_example(
    ex: Example, chat: ChatFormat, tokenizer: Tokenizer, max_len: int
) -> tuple[list[int], list[int]]:
    return encode_chat(example_messages(ex), chat, tokenizer, max_len)


def make_chat_format(
    template: str | None, special_tokens: dict[str, str], generation: dict[str, Any] | None = None
) -> ChatFormat | None:
    """A ChatFormat from what an import found (e.g. a GGUFCheckpoint's fields); None without a template."""
    if not template:
        return None
    eos = (generation or {}).get("eos_token_id")
    ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    specials = {k: v for k, v in special_tokens.items() if k in SPECIAL_NAMES and isinstance(v, str)}
    return ChatFormat(template, specials, tuple(int(i) for i in ids))


def save_chat_format(directory: Path, chat: ChatFormat) -> None:
    body = {"chat_template": chat.template, "special_tokens": chat.special_tokens, "eos_token_ids": chat.eos_token_ids}
    (directory / CHAT_FILE).write_text(json.dumps(body, indent=1, ensure_ascii=False), encoding="utf-8")


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<|im_end|>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_chat_format(directory: Path) -> ChatFormat | None:
    """The chat format a model directory carries, or None when it has no chat template."""
    ours = _json(directory / CHAT_FILE)
    if ours.get("chat_template"):
        return ChatFormat(
            ours["chat_template"], dict(ours.get("special_tokens") or {}), tuple(ours.get("eos_token_ids") or ())
        )
    config = _json(directory / "tokenizer_config.json")
    template: Any = config.get("chat_template")
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    elif isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        return None
    fallback = _json(directory / "special_tokens_map.json")
    specials: dict[str, str] = {}
    for name in SPECIAL_NAMES:
        text = _token_text(config.get(name)) or _token_text(fallback.get(name))
        if text is not None:
            specials[name] = text
    generation = _json(directory / "generation_config.json") or _json(directory / "config.json")
    return make_chat_format(template, specials, generation)

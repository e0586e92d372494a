"""Chat templates: rendering `messages` the way transformers' `apply_chat_template` does, and the
assistant-only loss mask.

A chat template is Jinja2 shipped by the model (tokenizer_config.json, a GGUF's metadata): code
from whoever uploaded the model. We render it in a sandboxed, immutable Jinja2 environment whose
every render is metered (models.data.bounded_jinja: steps, work and value sizes bounded in
proportion to the conversation; past them, a ChatTemplateError), with the options and helpers
transformers gives templates (trim_blocks, lstrip_blocks, loop controls, `raise_exception`, a JSON `tojson`,
`strftime_now`, a guarded `namespace`, the `{% generation %}` tag, the special tokens as
variables), so a template renders to the same text here as there.

The loss mask needs no knowledge of any template: for each assistant turn we render the
conversation before it with the generation prompt (the text the model sees before it answers),
find the turn's content right after that in the full rendering, and mark its tokens plus the
first special token the template writes after it (the end-of-turn token, <|im_end|>, <|eot_id|>).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from tokenizers import Tokenizer

from models.data.bounded_jinja import BoundedEnvironment, bounded_render
from models.errors import ChatTemplateError

Message = dict[str, Any]
PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@dataclass(frozen=True)
class ChatFormat:
    """What rendering needs: the template, the special tokens it may name (bos_token, eos_token,
    unk_token, pad_token), and the model's end-of-sequence ids (generation_config.json)."""

    template: str
    special_tokens: dict[str, str] = field(default_factory=dict)
    eos_token_ids: tuple[int, ...] = ()


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (used by training-aware templates) renders its body."""

    tags = {"generation"}  # noqa: RUF012 (jinja2 declares it a plain set attribute)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore-prefixed attributes (no reaching into internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set '{name}' on a namespace")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    helpers = {"raise_exception": _raise_exception, "strftime_now": _strftime_now, "namespace": _Namespace}
    env = BoundedEnvironment(
        filters={"tojson": _tojson},
        globals={**helpers, "dict": dict},
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template: syntax error on line {exc.lineno}: {exc.message}") from None
    except (jinja2.exceptions.TemplateError, ArithmeticError, RecursionError, MemoryError) as exc:
        raise ChatTemplateError(f"chat template: {exc}") from None  # a constant the compiler folds, refused


def render(messages: Sequence[Message], chat: ChatFormat, add_generation_prompt: bool = False, **kwargs: Any) -> str:
    """The conversation as text, as `apply_chat_template(..., tokenize=False)` gives it."""
    variables: dict[str, Any] = {"tools": None, "documents": None, **chat.special_tokens, **kwargs}
    variables.update(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt)
    template = compile_template(chat.template)
    try:
        return bounded_render(template, variables)
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"chat template: {exc}") from None
    except Exception as exc:  # the template's own failure (1/0, a type error, deep recursion): not ours
        raise ChatTemplateError(f"chat template: {type(exc).__name__}: {exc}") from None


def render_prompt(messages: Sequence[Message], chat: ChatFormat) -> str:
    """Serving: the prompt for `/v1/chat/completions`, ending where the assistant's answer begins."""
    return render(messages, chat, add_generation_prompt=True)


def encode_prompt(messages: Sequence[Message], chat: ChatFormat, tokenizer: Tokenizer) -> list[int]:
    """Serving: the prompt's token ids. No special tokens are added: the template writes its own
    (a BOS included), as `apply_chat_template(..., tokenize=True)` does."""
    return list(tokenizer.encode(render_prompt(messages, chat), add_special_tokens=False).ids)


def _special_ids(tokenizer: Tokenizer) -> set[int]:
    return {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}


def _turn_spans(messages: Sequence[Message], chat: ChatFormat, full: str) -> list[tuple[int, int, int]]:
    """(content start, content end, turn end) in `full` for every assistant turn."""
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        before = render(messages[:i], chat, add_generation_prompt=True)
        through = render(messages[: i + 1], chat)
        content = str(m.get("content") or "")
        if not (full.startswith(before) and full.startswith(through)):
            raise ChatTemplateError(f"messages.{i}: the template renders earlier turns differently in a longer chat")
        text = content.strip()  # templates may trim the content (Llama 3 does)
        start = full.find(text, len(before), len(through))
        if start < 0:
            raise ChatTemplateError(f"messages.{i}: the template does not write the assistant's content verbatim")
        spans.append((start, start + len(text), len(through)))
    return spans


def encode_chat(
    messages: Sequence[Message], chat: ChatFormat, tokenizer: Tokenizer, max_len: int | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and a per-token mask: 1 on every assistant turn's
    content and on the end-of-turn token after it, 0 elsewhere. Over max_len, the beginning goes."""
    full = render(messages, chat)
    enc = tokenizer.encode(full, add_special_tokens=False)
    ids, offsets = list(enc.ids), list(enc.offsets)
    special = _special_ids(tokenizer)
    mask = [0] * len(ids)
    for start, end, turn_end in _turn_spans(messages, chat, full):
        for k, (a, b) in enumerate(offsets):
            if a >= turn_end:
                break
            if a < end and b > start and b > a:
                mask[k] = 1
            elif a >= end and ids[k] in special:
                mask[k] = 1  # the end-of-turn token: the first special token after the content
                break
    if max_len is not None and len(ids) > max_len:
        ids, mask = ids[-max_len:], mask[-max_len:]
    return ids, mask


def end_of_turn_ids(chat: ChatFormat, tokenizer: Tokenizer) -> set[int]:
    """The special tokens this template writes right after an assistant turn."""
    ids, mask = encode_chat(PROBE, chat, tokenizer)
    special = _special_ids(tokenizer)
    return {i for i, m in zip(ids, mask, strict=True) if m and i in special}


def stop_token_ids(chat: ChatFormat | None, tokenizer: Tokenizer, eos_ids: Sequence[int] = ()) -> set[int]:
    """Every id generation stops on: the model's end-of-sequence ids and the template's end of turn."""
    stops = set(eos_ids)
    if chat is not None:
        stops |= set(chat.eos_token_ids)
        with contextlib.suppress(ChatTemplateError):  # a template that refuses the probe: declared ids only
            stops |= end_of_turn_ids(chat, tokenizer)
        eos = chat.special_tokens.get("eos_token")
        if eos is not None and (i := tokenizer.token_to_id(eos)) is not None:
            stops.add(i)
    return stops

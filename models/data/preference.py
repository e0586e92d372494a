"""Preference records (docs/spec.md, `data`): a prompt, the completion preferred and the one
rejected. models/data/records.py detects them among the formats of a `.jsonl` file and lists
every bad line, as for the other formats. Accepted, one object per line:

    {"prompt": "...", "chosen": "...", "rejected": "..."}
    {"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [...]}
    {"chosen": [messages], "rejected": [messages]}       (TRL's implicit prompt: the shared turns)
    {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": ...}],
     "non_preferred_output": [...]}                       (OpenAI's preference fine-tuning format)

A conversation keeps its turns (`messages`): on a model with a chat template the pair is
rendered by it, scored on the final assistant turn only (models/data/preference_stream.py);
without one, its prompt is the turns written out as supervised `messages` records are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")  # as models.data.records.ROLES
OPENAI_FIELDS = ("input", "preferred_output", "non_preferred_output")
Issues = list[dict[str, Any]]


@dataclass(frozen=True)
class PreferencePair:
    prompt: str  # what a model without a chat template reads
    chosen: str
    rejected: str
    messages: list[dict[str, str]] | None = None  # the prompt conversation of a message record


def is_preference(obj: dict[str, Any]) -> bool:
    """Whether a decoded line is meant as a preference record (then `parse_preference` judges it)."""
    return any(k in obj for k in ("chosen", "rejected", *OPENAI_FIELDS))


def turns_prompt(messages: list[dict[str, str]]) -> str:
    """Every turn as 'role: content', ending with the cue for the assistant's answer (as
    models.data.records.messages_prompt renders a supervised conversation)."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _messages(value: Any, where: str, line: int, issues: Issues) -> list[dict[str, str]] | None:
    if not isinstance(value, list) or not value:
        issues.append({"line": line, "field": where, "reason": "must be a non-empty list of messages"})
        return None
    start = len(issues)
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            issues.append({"line": line, "field": f"{where}.{j}", "reason": "must be an object"})
        elif m.get("role") not in ROLES:
            issues.append({"line": line, "field": f"{where}.{j}.role", "reason": f"must be one of {', '.join(ROLES)}"})
        elif not isinstance(m.get("content"), str):
            issues.append({"line": line, "field": f"{where}.{j}.content", "reason": "must be a string"})
    return None if len(issues) > start else [{"role": m["role"], "content": m["content"]} for m in value]


def _reply(value: Any, where: str, line: int, issues: Issues) -> str | None:
    """One assistant message (a list of exactly one), its content."""
    turns = _messages(value, where, line, issues)
    if turns is None:
        return None
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        issues.append({"line": line, "field": where, "reason": "must be one assistant message"})
        return None
    return turns[0]["content"]


def _pair(prompt: list[dict[str, str]], chosen: str, rejected: str, where: str, line: int, issues: Issues) -> Any:
    if prompt[-1]["role"] == "assistant":
        issues.append({"line": line, "field": where, "reason": "the prompt must end before an assistant turn"})
        return None
    return PreferencePair(turns_prompt(prompt), chosen, rejected, messages=prompt)


def _openai(obj: dict[str, Any], line: int, issues: Issues) -> PreferencePair | None:
    start = len(issues)
    for name in OPENAI_FIELDS:
        if name not in obj:
            issues.append({"line": line, "field": name, "reason": "missing"})
    if len(issues) > start:
        return None
    inp = obj["input"]
    if not isinstance(inp, dict) or "messages" not in inp:
        issues.append({"line": line, "field": "input", "reason": "must be an object with messages"})
        prompt = None
    else:
        prompt = _messages(inp["messages"], "input.messages", line, issues)
    chosen = _reply(obj["preferred_output"], "preferred_output", line, issues)
    rejected = _reply(obj["non_preferred_output"], "non_preferred_output", line, issues)
    if prompt is None or chosen is None or rejected is None:
        return None
    return _pair(prompt, chosen, rejected, "input.messages", line, issues)


def _implicit(obj: dict[str, Any], line: int, issues: Issues) -> PreferencePair | None:
    """Whole conversations under chosen and rejected: the prompt is what they share."""
    chosen = _messages(obj["chosen"], "chosen", line, issues)
    rejected = _messages(obj["rejected"], "rejected", line, issues)
    if chosen is None or rejected is None:
        return None
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant" or len(turns) < 2:
            issues.append({"line": line, "field": name, "reason": "must be turns ending with an assistant reply"})
            return None
    if chosen[:-1] != rejected[:-1]:
        issues.append({"line": line, "field": "rejected", "reason": "must share every turn but the last with chosen"})
        return None
    return _pair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], "chosen", line, issues)


def parse_preference(obj: dict[str, Any], line: int, issues: Issues) -> PreferencePair | None:
    """One preference record (any accepted form), or None with its issues added."""
    if any(k in obj for k in OPENAI_FIELDS):
        return _openai(obj, line, issues)
    start = len(issues)
    for name in ("chosen", "rejected"):
        if name not in obj:
            issues.append({"line": line, "field": name, "reason": "missing"})
    if len(issues) > start:
        return None
    if "prompt" not in obj and isinstance(obj["chosen"], list) and isinstance(obj["rejected"], list):
        return _implicit(obj, line, issues)
    prompt = obj.get("prompt")
    if isinstance(prompt, list):  # a conversation: the replies are assistant messages (or plain text)
        turns = _messages(prompt, "prompt", line, issues)
        replies = [
            v if isinstance(v, str) else _reply(v, name, line, issues)
            for name, v in (("chosen", obj["chosen"]), ("rejected", obj["rejected"]))
        ]
        if turns is None or replies[0] is None or replies[1] is None:
            return None
        return _pair(turns, replies[0], replies[1], "prompt", line, issues)
    for name in ("prompt", "chosen", "rejected"):
        value = obj.get(name)
        if value is None:
            issues.append({"line": line, "field": name, "reason": "missing"})
        elif not isinstance(value, str):
            why = f"must be a string (or, with a message-list prompt, messages), got {type(value).__name__}"
            issues.append({"line": line, "field": name, "reason": why})
    if len(issues) > start:
        return None
    return PreferencePair(obj["prompt"], obj["chosen"], obj["rejected"])

"""Data files (docs/spec.md, `data`): format detection, line-numbered validation, task templates.

A corpus is a list of documents (one per non-empty line of a `.txt`, or per `{"text"}`
line of a `.jsonl`). Supervised records of every format become an `Example`: the prompt
the model reads and the completion it must produce. Task records are rendered by the
fixed templates below, which the task endpoints use again at inference time. Preference
records (a prompt, a chosen and a rejected completion) are models/data/preference.py.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from models.data import bounded_json
from models.data.preference import PreferencePair, is_preference, parse_preference
from models.errors import MAX_REPORTED, DataError

ROLES = ("system", "user", "assistant")
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "translate": ("source", "target", "source_lang", "target_lang"),
    "qa": ("context", "question", "answer"),
    "summarize": ("document", "summary"),
}


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str
    task: str | None = None  # translate | qa | summarize, for task metrics
    fields: dict[str, str] = field(default_factory=dict)
    messages: list[dict[str, str]] | None = None  # the whole conversation of a `messages` record


@dataclass
class DataFile:
    kind: Literal["text", "records", "preference"]
    format: str  # txt | jsonl-text | jsonl-records | jsonl-preference
    texts: list[str] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)
    counted: int = -1  # records seen, where they were not kept (scan_path)

    @property
    def num_records(self) -> int:
        if self.counted >= 0:
            return self.counted
        return len(self.texts if self.kind == "text" else self.examples if self.kind == "records" else self.pairs)

    def as_texts(self) -> list[str]:
        """Every document as plain text (records as prompt + completion), for tokenizer training."""
        if self.kind == "text":
            return self.texts
        if self.kind == "preference":
            return [p.prompt + completion_text(c) for p in self.pairs for c in (p.chosen, p.rejected)]
        return [e.prompt + completion_text(e.completion) for e in self.examples]


# --- templates (shared with inference) --------------------------------------------------
# Inputs follow ": " so their first word is tokenized as it is inside running text (with
# its leading space), which is how pretraining saw it.

LANGUAGES = {
    "en": "English",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
    "zh": "Chinese",
    "ja": "Japanese",
    "ko": "Korean",
    "ru": "Russian",
    "ar": "Arabic",
}


def language_name(code: str) -> str:
    return LANGUAGES.get(code.lower(), code)


def translate_prompt(text: str, source_lang: str, target_lang: str) -> str:
    return f"Translate {language_name(source_lang)} to {language_name(target_lang)}: {text}\n"


def qa_prompt(question: str, context: str) -> str:
    return f"Context: {context}\nQuestion: {question}\nAnswer:"


def summarize_prompt(text: str) -> str:
    return f"Summarize: {text}\n"


TASK_INPUTS: dict[str, tuple[str, ...]] = {  # what each task's prompt is made of, at inference time
    "translate": ("text", "source_lang", "target_lang"),
    "qa": ("question", "context"),
    "summarize": ("text",),
}


def task_prompt(task: str, fields: dict[str, str]) -> str:
    """The training template of a task, from its inference fields (TASK_INPUTS)."""
    if task == "translate":
        return translate_prompt(fields["text"], fields["source_lang"], fields["target_lang"])
    if task == "qa":
        return qa_prompt(fields["question"], fields["context"])
    if task == "summarize":
        return summarize_prompt(fields["text"])
    raise ValueError(f"unknown task '{task}' (known: {', '.join(TASK_INPUTS)})")


def messages_prompt(messages: list[dict[str, str]]) -> str:
    """Every turn as 'role: content', ending with the cue for the assistant's answer."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def completion_text(completion: str) -> str:
    """A completion as the model reads and writes it: after a space, like a word in running text.

    Decoding strips that space again (see `models.inference.generate.complete`).
    """
    return completion if completion[:1].isspace() else " " + completion


def task_example(task: str, rec: dict[str, str]) -> Example:
    if task == "translate":
        prompt, completion = translate_prompt(rec["source"], rec["source_lang"], rec["target_lang"]), rec["target"]
    elif task == "qa":
        prompt, completion = qa_prompt(rec["question"], rec["context"]), rec["answer"]
    else:
        prompt, completion = summarize_prompt(rec["document"]), rec["summary"]
    return Example(prompt, completion, task, {k: rec[k] for k in TASK_FIELDS[task]})


# --- parsing ------------------------------------------------------------------------------


def _str_fields(obj: dict[str, Any], names: tuple[str, ...], line: int, issues: list[dict[str, Any]]) -> bool:
    ok = True
    for name in names:
        value = obj.get(name)
        if value is None:
            issues.append({"line": line, "field": name, "reason": "missing"})
            ok = False
        elif not isinstance(value, str):
            issues.append({"line": line, "field": name, "reason": f"must be a string, got {type(value).__name__}"})
            ok = False
    return ok


def _messages_example(obj: dict[str, Any], line: int, issues: list[dict[str, Any]]) -> Example | None:
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        issues.append({"line": line, "field": "messages", "reason": "must be a non-empty list"})
        return None
    start = len(issues)
    for j, m in enumerate(msgs):
        where = f"messages.{j}"
        if not isinstance(m, dict):
            issues.append({"line": line, "field": where, "reason": "must be an object"})
        elif m.get("role") not in ROLES:
            issues.append({"line": line, "field": f"{where}.role", "reason": f"must be one of {', '.join(ROLES)}"})
        elif not isinstance(m.get("content"), str):
            issues.append({"line": line, "field": f"{where}.content", "reason": "must be a string"})
    if len(issues) > start:
        return None
    if msgs[-1]["role"] != "assistant":
        issues.append({"line": line, "field": "messages", "reason": "the last message must be the assistant's"})
        return None
    turns = [{"role": m["role"], "content": m["content"]} for m in msgs]
    return Example(messages_prompt(msgs[:-1]), msgs[-1]["content"], messages=turns)


def parse_record(obj: Any, line: int, issues: list[dict[str, Any]]) -> Example | PreferencePair | str | None:
    """One decoded JSONL line: a text document (str), a supervised Example, a PreferencePair, or None if bad."""
    if not isinstance(obj, dict):
        issues.append({"line": line, "field": "(line)", "reason": "must be a JSON object"})
        return None
    if "task" in obj:
        task = obj["task"]
        if not isinstance(task, str) or task not in TASK_FIELDS:
            issues.append({"line": line, "field": "task", "reason": f"must be one of {', '.join(TASK_FIELDS)}"})
            return None
        return task_example(task, obj) if _str_fields(obj, TASK_FIELDS[task], line, issues) else None
    if is_preference(obj):
        return parse_preference(obj, line, issues)
    if "messages" in obj:
        return _messages_example(obj, line, issues)
    if "prompt" in obj or "completion" in obj:
        if not _str_fields(obj, ("prompt", "completion"), line, issues):
            return None
        return Example(obj["prompt"], obj["completion"])
    if "text" in obj:
        return obj["text"] if _str_fields(obj, ("text",), line, issues) else None
    issues.append(
        {
            "line": line,
            "field": "(line)",
            "reason": "expected text, prompt/completion, messages, task or preference fields",
        }
    )
    return None


def parse_bytes(data: bytes, filename: str) -> DataFile:
    """Parse a whole file; raise `DataError` listing every bad line."""
    return parse_lines(data.removeprefix(codecs.BOM_UTF8).split(b"\n"), filename)


def scan_path(path: Path, filename: str) -> DataFile:
    """Validate a file as `parse_bytes` does, reading it line by line and keeping only counts
    (`DataFile.counted`; no texts or examples): memory stays around the longest line."""
    with path.open("rb") as f:
        first = f.readline().removeprefix(codecs.BOM_UTF8)
        lines = itertools.chain([first], f)
        return parse_lines((line.removesuffix(b"\n") for line in lines), filename, keep=False)


def parse_lines(lines: Iterable[bytes], filename: str, keep: bool = True) -> DataFile:
    """The lines of a file (without their newline): every bad one is a DataError issue."""
    suffix = Path(filename).suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise DataError(filename, [{"line": 0, "field": "(file)", "reason": "expected a .txt or .jsonl file"}])
    issues: list[dict[str, Any]] = []
    bad = 0

    def issue(item: dict[str, Any]) -> None:  # the first MAX_REPORTED are kept; all are counted
        nonlocal bad
        bad += 1
        if len(issues) < MAX_REPORTED:
            issues.append(item)

    count = 0
    if suffix == ".txt":
        texts = []
        for n, raw in enumerate(lines, 1):
            try:
                text = raw.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError as exc:
                issue({"line": n, "field": "(line)", "reason": f"not UTF-8 ({exc.reason})"})
                continue
            if text.strip():
                count += 1
                if keep:
                    texts.append(text)
        if issues:
            raise DataError(filename, issues, bad)
        if not count:
            raise DataError(filename, [{"line": 0, "field": "(file)", "reason": "no text"}])
        return DataFile("text", "txt", texts=texts, counted=count)

    kept: list[Any] = []
    first_kind: str | None = None
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = bounded_json.loads(raw)
        except ValueError as exc:  # not UTF-8, not JSON, or nested past bounded_json.MAX_DEPTH
            issue({"line": n, "field": "(line)", "reason": f"invalid JSON ({exc})"})
            continue
        found: list[dict[str, Any]] = []
        item = parse_record(obj, n, found)
        for f in found:
            issue(f)
        if item is None:
            continue
        kind = "text" if isinstance(item, str) else "preference" if isinstance(item, PreferencePair) else "records"
        first_kind = first_kind or kind
        if kind != first_kind:
            want = {"text": "a {text} line", "records": "a supervised record"}.get(first_kind, "a preference record")
            issue({"line": n, "field": "(line)", "reason": f"mixed formats: expected {want} like the first"})
            continue
        count += 1
        if keep:
            kept.append(item)
    if issues:
        raise DataError(filename, issues, bad)
    if first_kind is None:
        raise DataError(filename, [{"line": 0, "field": "(file)", "reason": "no records"}])
    if first_kind == "text":
        return DataFile("text", "jsonl-text", texts=kept, counted=count)
    if first_kind == "preference":
        return DataFile("preference", "jsonl-preference", pairs=kept, counted=count)
    return DataFile("records", "jsonl-records", examples=kept, counted=count)


def load_file(path: Path) -> DataFile:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(str(path), [{"line": 0, "field": "(file)", "reason": exc.strerror or str(exc)}]) from None
    return parse_bytes(data, str(path))

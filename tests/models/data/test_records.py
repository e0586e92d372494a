"""models.data.records.parse_bytes: every format of docs/spec.md (`data`) parses; bad data is
reported all at once, by line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models.data.records import (
    Example,
    load_file,
    messages_prompt,
    parse_bytes,
    qa_prompt,
    summarize_prompt,
    translate_prompt,
)
from models.errors import DataError
from tests.conftest import SHARED_EXAMPLES


def jsonl(*objs: Any) -> bytes:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs).encode()


def issues_of(data: bytes, filename: str = "data.jsonl") -> list[dict[str, Any]]:
    with pytest.raises(DataError) as info:
        parse_bytes(data, filename)
    err = info.value
    assert err.source == filename
    assert err.issues and err.total >= len(err.issues)
    for issue in err.issues:
        assert set(issue) == {"line", "field", "reason"}
        assert isinstance(issue["line"], int) and issue["reason"]
    return err.issues


def lines_fields(issues: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(i["line"], i["field"]) for i in issues]


# --- valid files ---------------------------------------------------------------------------


def test_txt_corpus() -> None:
    ds = parse_bytes(b"first line\r\n\n  \nsecond line\nthird\n", "corpus.txt")
    assert (ds.kind, ds.format) == ("text", "txt")
    assert ds.texts == ["first line", "second line", "third"]
    assert ds.num_records == 3
    assert ds.as_texts() == ds.texts


def test_utf8_txt_keeps_non_ascii() -> None:
    ds = parse_bytes("soixante-seize en français\n日本語\n".encode(), "c.TXT")
    assert ds.texts == ["soixante-seize en français", "日本語"]


def test_utf8_bom_is_not_part_of_the_text() -> None:
    # Editors on Windows write a byte-order mark; it marks the encoding and is not the first character of the text.
    assert parse_bytes(b"\xef\xbb\xbfhello\nworld\n", "c.txt").texts == ["hello", "world"]
    assert parse_bytes(b'\xef\xbb\xbf{"text": "hello"}\n', "c.jsonl").texts == ["hello"]


def test_jsonl_text_corpus() -> None:
    ds = parse_bytes(jsonl({"text": "a b c"}, {"text": "d e"}) + b"\n\n", "c.jsonl")
    assert (ds.kind, ds.format) == ("text", "jsonl-text")
    assert ds.texts == ["a b c", "d e"]


def test_prompt_completion_record() -> None:
    ds = parse_bytes(jsonl({"prompt": "2+2=", "completion": "4", "extra": 1}), "r.jsonl")
    assert (ds.kind, ds.format) == ("records", "jsonl-records")
    assert ds.examples == [Example("2+2=", "4")]
    assert ds.examples[0].task is None


def in_order(text: str, parts: list[str]) -> bool:
    pos = 0
    for part in parts:
        pos = text.find(part, pos)
        if pos < 0:
            return False
        pos += len(part)
    return True


def test_messages_record() -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Count to 2."},
        {"role": "assistant", "content": "1 2"},
    ]
    [ex] = parse_bytes(jsonl({"messages": msgs}), "r.jsonl").examples
    assert ex.prompt == messages_prompt(msgs[:-1])
    assert in_order(ex.prompt, ["Be brief.", "Hi?", "Hello.", "Count to 2."]) and "1 2" not in ex.prompt
    assert ex.completion == "1 2" and ex.task is None


def test_task_records_use_the_templates() -> None:
    data = jsonl(
        {"task": "translate", "source": "two", "target": "deux", "source_lang": "en", "target_lang": "fr"},
        {"task": "qa", "context": "Jia has 3 maps.", "question": "How many maps?", "answer": "3"},
        {"task": "summarize", "document": "A long story about Omar.", "summary": "Omar"},
    )
    tr, qa, su = parse_bytes(data, "r.jsonl").examples
    assert tr == Example(
        translate_prompt("two", "en", "fr"),
        "deux",
        "translate",
        {"source": "two", "target": "deux", "source_lang": "en", "target_lang": "fr"},
    )
    assert "two" in tr.prompt and "deux" not in tr.prompt
    assert translate_prompt("two", "en", "fr") != translate_prompt("two", "fr", "en")
    assert qa.prompt == qa_prompt("How many maps?", "Jia has 3 maps.")
    assert in_order(qa.prompt, ["Jia has 3 maps.", "How many maps?"])
    assert (qa.completion, qa.task) == ("3", "qa")
    assert qa.fields == {"context": "Jia has 3 maps.", "question": "How many maps?", "answer": "3"}
    assert su.prompt == summarize_prompt("A long story about Omar.") and "A long story about Omar." in su.prompt
    assert (su.completion, su.task) == ("Omar", "summarize")
    assert su.fields == {"document": "A long story about Omar.", "summary": "Omar"}


def test_record_formats_mix_in_one_file(data_dir: Path) -> None:
    ds = load_file(data_dir / "pairs.jsonl")
    assert ds.kind == "records" and ds.num_records == 120
    assert {e.task for e in ds.examples} == {None, "translate", "qa", "summarize"}
    texts = ds.as_texts()  # for tokenizer training: prompt and completion together
    assert len(texts) == 120
    for text, ex in zip(texts, ds.examples, strict=True):
        assert text.startswith(ex.prompt) and ex.completion in text[len(ex.prompt) :]


def test_shared_example_data_parses() -> None:
    corpus, pairs = SHARED_EXAMPLES / "data" / "corpus.txt", SHARED_EXAMPLES / "data" / "pairs.jsonl"
    if not (corpus.exists() and pairs.exists()):
        pytest.skip(f"shared example data not found under {SHARED_EXAMPLES}")
    assert load_file(corpus).kind == "text"
    ds = load_file(pairs)
    assert ds.kind == "records" and {e.task for e in ds.examples} == {"translate", "qa", "summarize"}


# --- bad files -----------------------------------------------------------------------------


def test_wrong_extension() -> None:
    for name in ("data.csv", "data.json", "data"):
        assert lines_fields(issues_of(b'{"text": "x"}\n', name)) == [(0, "(file)")]


def test_empty_files() -> None:
    for name, data in [("e.txt", b""), ("e.txt", b"\n  \n\n"), ("e.jsonl", b""), ("e.jsonl", b"\n\n")]:
        assert lines_fields(issues_of(data, name)) == [(0, "(file)")]


def test_non_utf8_txt_reports_every_bad_line() -> None:
    data = b"fine\n\xff\xfe bad\nfine again\nalso \xc3\x28 bad\n"
    issues = issues_of(data, "c.txt")
    assert lines_fields(issues) == [(2, "(line)"), (4, "(line)")]
    assert all("UTF-8" in i["reason"] for i in issues)


def test_non_utf8_jsonl_line() -> None:
    data = jsonl({"text": "ok"}) + b'{"text": "\xff"}\n'
    assert lines_fields(issues_of(data)) == [(2, "(line)")]


def test_every_bad_line_is_reported_at_once() -> None:
    good = {"prompt": "p", "completion": "c"}
    data = jsonl(
        good,  # 1
        "{not json",  # 2
        "[1, 2]",  # 3: not an object
        {"task": "poem", "text": "x"},  # 4: unknown task
        {"task": "qa", "context": "c", "question": "q"},  # 5: missing answer
        {"task": "translate", "source": "a", "target": 5, "source_lang": "en", "target_lang": "fr"},  # 6
        {"prompt": "only a prompt"},  # 7: missing completion
        {"prompt": ["p"], "completion": "c"},  # 8: non-string prompt
        {"messages": []},  # 9: empty messages
        {"messages": [{"role": "robot", "content": "x"}]},  # 10: bad role
        {"messages": [{"role": "user", "content": "x"}]},  # 11: last is not the assistant
        {"messages": [{"role": "user", "content": 3}, "hi"]},  # 12: content and non-object message
        {"text": "a text line among records"},  # 13: mixed formats
        {"foo": "bar"},  # 14: no known fields
        "",  # 15: blank lines are skipped
        "42",  # 16: not an object
        good,  # 17
    )
    issues = issues_of(data)
    assert lines_fields(issues) == [
        (2, "(line)"),
        (3, "(line)"),
        (4, "task"),
        (5, "answer"),
        (6, "target"),
        (7, "completion"),
        (8, "prompt"),
        (9, "messages"),
        (10, "messages.0.role"),
        (11, "messages"),
        (12, "messages.0.content"),
        (12, "messages.1"),
        (13, "(line)"),
        (14, "(line)"),
        (16, "(line)"),
    ]
    reasons = {(i["line"], i["field"]): i["reason"] for i in issues}
    assert "invalid JSON" in reasons[(2, "(line)")]
    assert "object" in reasons[(3, "(line)")]
    assert "translate" in reasons[(4, "task")] and "qa" in reasons[(4, "task")]
    assert reasons[(5, "answer")] == "missing"
    assert "string" in reasons[(6, "target")]
    assert "assistant" in reasons[(11, "messages")]
    assert "mixed" in reasons[(13, "(line)")]


def test_text_first_then_records_is_mixed() -> None:
    data = jsonl({"text": "doc"}, {"prompt": "p", "completion": "c"}, {"text": "doc 2"})
    issues = issues_of(data)
    assert lines_fields(issues) == [(2, "(line)")]
    assert "mixed" in issues[0]["reason"]


def test_non_string_text_field() -> None:
    assert lines_fields(issues_of(jsonl({"text": "a"}, {"text": 3}, {"text": None}))) == [(2, "text"), (3, "text")]


@pytest.mark.parametrize("task", [["qa"], {"name": "qa"}, 3, None])
def test_non_string_task_is_a_data_error(task: Any) -> None:
    # An unhashable task value (a list or an object) must be reported like any other bad task, not crash.
    issues = issues_of(jsonl({"prompt": "p", "completion": "c"}, {"task": task, "document": "d", "summary": "s"}))
    assert lines_fields(issues) == [(2, "task")]


def test_many_bad_lines_are_capped_but_counted() -> None:
    data = jsonl(*(["{bad"] * 250))
    with pytest.raises(DataError) as info:
        parse_bytes(data, "x.jsonl")
    assert info.value.total == 250
    assert len(info.value.issues) == 100
    assert [i["line"] for i in info.value.issues] == list(range(1, 101))
    assert "250 bad line(s)" in str(info.value) and "line 1:" in str(info.value)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_file(tmp_path / "nope.txt")
    assert lines_fields(info.value.issues) == [(0, "(file)")]

"""Preference records (models/data/preference.py, models/data/preference_stream.py): every
accepted form, line-numbered errors for every bad line, the data kind against the objectives,
and pairs rendered by a chat model's template, scored on the final assistant turn only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models.data.preference import PreferencePair
from models.data.preference_stream import PreferenceStream, final_turn
from models.data.records import parse_bytes
from models.data.streams import IGNORE
from models.data.tokenizer import Tokenizer
from models.errors import DataError
from models.spec import data_kind_errors, parse_spec

USER = {"role": "user", "content": "Two plus two?"}


def jsonl(*objs: Any) -> bytes:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs).encode()


def test_every_form_reads_as_a_pair() -> None:
    data = jsonl(
        {"prompt": "Two plus two?", "chosen": "four", "rejected": "five"},
        {"prompt": [USER], "chosen": [{"role": "assistant", "content": "four"}], "rejected": "five"},
        {
            "chosen": [USER, {"role": "assistant", "content": "four"}],
            "rejected": [USER, {"role": "assistant", "content": "five"}],
        },
        {
            "input": {"messages": [{"role": "system", "content": "Be brief."}, USER]},
            "preferred_output": [{"role": "assistant", "content": "four"}],
            "non_preferred_output": [{"role": "assistant", "content": "five"}],
        },
    )
    ds = parse_bytes(data, "prefs.jsonl")
    assert ds.kind == "preference" and ds.format == "jsonl-preference" and ds.num_records == 4
    assert ds.pairs[0] == PreferencePair("Two plus two?", "four", "five")
    for p in ds.pairs[1:3]:
        assert (p.chosen, p.rejected, p.messages) == ("four", "five", [USER])
        assert p.prompt == "user: Two plus two?\nassistant:"  # the turns written out, as `messages` records
    assert ds.pairs[3].messages == [{"role": "system", "content": "Be brief."}, USER]
    assert ds.as_texts()[:2] == ["Two plus two? four", "Two plus two? five"]


def test_every_bad_line_is_listed_with_its_field() -> None:
    data = jsonl(
        {"prompt": "ok", "chosen": "a", "rejected": "b"},
        {"prompt": "no rejected", "chosen": "a"},
        {"prompt": 3, "chosen": "a", "rejected": "b"},
        {"input": {"messages": [USER]}, "preferred_output": [{"role": "assistant", "content": "x"}]},
        {
            "input": {"messages": [{"role": "robot", "content": "hi"}]},
            "preferred_output": "x",
            "non_preferred_output": [],
        },
        {
            "chosen": [USER, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}],
        },
        {"prompt": [USER, {"role": "assistant", "content": "a"}], "chosen": "b", "rejected": "c"},
        "not json",
        {"prompt": "a supervised record", "completion": "mixed in"},
    )
    with pytest.raises(DataError) as err:
        parse_bytes(data, "prefs.jsonl")
    issues = [(i["line"], i["field"]) for i in err.value.issues]
    assert issues == [
        (2, "rejected"),
        (3, "prompt"),
        (4, "non_preferred_output"),
        (5, "input.messages.0.role"),
        (5, "preferred_output"),
        (5, "non_preferred_output"),
        (6, "rejected"),
        (7, "prompt"),
        (8, "(line)"),
        (9, "(line)"),
    ]
    reasons = {i["line"]: i["reason"] for i in err.value.issues}
    assert reasons[2] == "missing" and "mixed formats: expected a preference record" in reasons[9]
    assert "share every turn but the last" in reasons[6] and "end before an assistant turn" in reasons[7]


def test_data_kinds_against_objectives() -> None:
    raw = {
        "name": "k",
        "tokenizer": {"train_on": ["t"]},
        "data": {"t": {"dataset": "t.txt"}, "r": {"dataset": "r.jsonl"}, "p": {"dataset": "p.jsonl"}},
        "stages": [
            {
                "type": "preference",
                "name": "a",
                "data": "r",
                "steps": 1,
                "loss": {"type": "dpo"},
                "optimizer": {"type": "sgd", "lr": 0.1},
            },
            {
                "type": "finetune",
                "name": "b",
                "data": "p",
                "steps": 1,
                "loss": {"type": "cross_entropy"},
                "optimizer": {"type": "sgd", "lr": 0.1},
            },
            {
                "type": "pretrain",
                "name": "c",
                "data": "p",
                "steps": 1,
                "loss": {"type": "causal_lm"},
                "optimizer": {"type": "sgd", "lr": 0.1},
            },
            {
                "type": "preference",
                "name": "d",
                "data": "p",
                "steps": 1,
                "loss": {"type": "orpo"},
                "optimizer": {"type": "sgd", "lr": 0.1},
            },
        ],
    }
    errors = data_kind_errors(parse_spec(raw), {"t": "text", "r": "records", "p": "preference"})
    assert [e["loc"] for e in errors] == ["stages.0.data", "stages.1.data", "stages.2.data"]
    assert (
        errors[0]["message"].startswith("a preference objective needs preference records")
        and "'r' is supervised records" in errors[0]["message"]
    )
    assert errors[1]["message"] == "a finetune objective needs supervised records, but 'p' is preference records"


def test_pairs_batch_chosen_then_rejected(tokenizer: Tokenizer) -> None:
    pairs = [PreferencePair(f"Q{i}?", "yes" * (i + 1), "no") for i in range(5)]
    s = PreferenceStream(pairs, tokenizer, 32, 0, "p")
    b = s.next_batch(2)
    assert b.idx.shape[0] == 4 and b.pairs == 2 and b.pair_ids is not None and b.ref is None
    for row, pid in enumerate(b.pair_ids.tolist()):
        chosen = tokenizer.decode([t for t in b.completion_targets[row].tolist() if t != IGNORE])
        rejected = tokenizer.decode([t for t in b.completion_targets[row + 2].tolist() if t != IGNORE])
        assert (chosen.strip(), rejected.strip()) == (pairs[pid].chosen, pairs[pid].rejected)
    state = s.state()
    after = s.next_batch(2)
    s.load_state(state)
    again = s.next_batch(2)
    assert (
        after.pair_ids is not None and again.pair_ids is not None and after.pair_ids.tolist() == again.pair_ids.tolist()
    )


def test_final_turn_keeps_only_the_last_run() -> None:
    assert final_turn([0, 1, 1, 0, 0, 1, 1, 1, 0]) == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert final_turn([0, 0]) == [0, 0]


def test_chat_pairs_are_scored_on_the_final_assistant_turn(tmp_path: Path) -> None:
    from models.formats.load import chat_format_of, load_model
    from tests.chat_models import save_chat_llama, template_ids

    directory = save_chat_llama(tmp_path / "chat")
    _, tok = load_model(directory)
    chat = chat_format_of(directory)
    assert chat is not None
    turns = [USER, {"role": "assistant", "content": "Four."}, {"role": "user", "content": "And three plus three?"}]
    pair = PreferencePair("", "Six.", "Seven.", messages=turns)
    s = PreferenceStream([pair], tok, 200, 0, "p", chat)
    b = s.batch_of([0])
    prompt = template_ids(directory, turns)  # transformers' rendering of the prompt
    for row, reply in ((0, "Six."), (1, "Seven.")):
        ids = b.idx[row].tolist()
        assert ids[: len(prompt)] == prompt
        scored = [t for t in b.completion_targets[row].tolist() if t != IGNORE]
        assert tok.hf.decode(scored, skip_special_tokens=False) == reply + "<|im_end|>"  # not "Four."

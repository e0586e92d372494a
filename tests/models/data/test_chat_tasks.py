"""Training-time task metrics on a chat model (models.training.evaluate.task_metrics): each record's
task prompt is the user turn rendered by the model's template, generation stops at its end of
turn, and the predictions are transformers' greedy `generate` from `apply_chat_template` ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.data import records
from models.data.chat import stop_token_ids
from models.formats.load import load_model, served_chat_format
from models.training.evaluate import task_metrics
from tests.chat_models import save_chat_llama, template_ids, transformers_tokenizer
from tests.conftest import record_objects

transformers = pytest.importorskip("transformers")


def test_task_metrics_on_a_chat_model_generate_as_transformers(tmp_path: Path) -> None:
    directory = save_chat_llama(tmp_path / "chat")
    model, tok = load_model(directory)
    chat = served_chat_format(directory, tok)
    assert chat is not None
    examples = [e for o in record_objects(40) if isinstance(e := records.parse_record(o, 1, []), records.Example)]
    examples = [e for e in examples if e.task in ("qa", "translate")]
    _, samples = task_metrics(model, tok, examples, ["exact_match", "chrf"], 3, max_new_tokens=8, chat=chat)
    assert {s["task"] for s in samples} == {"qa", "translate"}
    theirs = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    hf_tok = transformers_tokenizer(directory)
    ends = sorted(stop_token_ids(chat, tok.hf, tok.end_ids))
    for s in samples:
        ids = template_ids(directory, [{"role": "user", "content": s["prompt"].strip()}])
        with torch.no_grad():
            out = theirs.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=ends)
        assert s["prediction"] == hf_tok.decode(out[0, len(ids) :], skip_special_tokens=True).strip()

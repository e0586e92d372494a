"""GGUF files through `load_model` (what init_from and POST /v1/models use): the reference
logits of transformers on the same random weights, the chat template kept into the trained
model's directory, an unreadable quantization refused naming the tensor and type."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from models.data.chat_records import CHAT_FILE, load_chat_format
from models.errors import UnsupportedModel
from models.families.llama.model import Llama
from models.formats.load import chat_format_of, is_gguf, load_model
from models.spec import parse_spec
from tests.models.formats.gguf_files import CHATML, tiny_model, train_tokenizer, write_gguf
from tests.models.training.test_pipeline import train

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    tok = train_tokenizer()
    ref = tiny_model("llama", tok.get_vocab_size(), tied=True)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(path, ref, tok)
    return path, ref


def test_load_model_on_a_gguf_gives_the_reference_logits(tiny: tuple[Path, object]) -> None:
    path, ref = tiny
    model, tok = load_model(path)
    assert isinstance(model, Llama) and is_gguf(path)
    ids = torch.tensor([tok.encode("The quick brown fox jumps over the lazy dog.")])
    vocab = ref.config.vocab_size  # type: ignore[attr-defined]
    with torch.no_grad():
        want = ref(ids).logits  # type: ignore[operator]
        ours = model(ids)
    assert torch.allclose(ours[..., :vocab], want, atol=1e-4)
    assert tok.chat_template == CHATML and 2 in tok.end_ids


def test_chat_format_is_read_from_the_metadata(tiny: tuple[Path, object]) -> None:
    chat = chat_format_of(tiny[0])
    assert chat is not None and chat.template == CHATML and 2 in chat.eos_token_ids


def test_init_from_a_gguf_trains_and_keeps_the_chat_template(
    tiny: tuple[Path, object], data_dir: Path, tmp_path: Path
) -> None:
    from tests.conftest import BASE_SPEC

    raw = json.loads(json.dumps(BASE_SPEC))
    raw.pop("tokenizer")
    raw["model"] = {"init_from": {"model": str(tiny[0])}}
    raw["stages"] = raw["stages"][:1]
    raw["stages"][0]["steps"] = 2
    for ref in raw["data"].values():
        ref["dataset"] = str(data_dir / ref["dataset"])
    run = train(parse_spec(raw), tmp_path / "run")
    assert run.result is not None
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / CHAT_FILE).is_file()
    chat = load_chat_format(model_dir)
    assert chat is not None and chat.template == CHATML
    model, _ = load_model(model_dir)
    assert isinstance(model, Llama) and model.config.n_kv_head == 2


def test_an_unreadable_quantization_names_the_tensor_and_type(tmp_path: Path) -> None:
    tok = train_tokenizer()
    ref = tiny_model("llama", tok.get_vocab_size(), tied=True)
    q81 = {"token_embd.weight": (np.zeros((tok.get_vocab_size(), 64 // 32 * 40), np.uint8), Q.Q8_1)}
    write_gguf(tmp_path / "q81.gguf", ref, tok, replace=q81)
    with pytest.raises(UnsupportedModel, match=r"tensor token_embd\.weight: quantization type Q8_1"):
        load_model(tmp_path / "q81.gguf")

"""models.formats.hf.directory: the export loads in transformers with our logits and greedy text; imports
round-trip, add missing special tokens, and refuse what our GPT cannot represent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from models.data.tokenizer import EOS, Tokenizer
from models.errors import UnsupportedModel
from models.families.gpt.model import GPT
from models.formats.archive import ArchiveError, pack, unpack
from models.formats.hf.directory import from_hf, to_hf
from models.formats.load import load_model
from models.formats.native import save_model
from models.inference.generate import Sampling, complete
from tests.conftest import corpus_texts, tiny_model


@pytest.fixture(scope="module")
def exported(tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> tuple[GPT, Path, Path]:
    root = tmp_path_factory.mktemp("hf")
    model = tiny_model(tokenizer.vocab_size, seed=2, block_size=64, n_embd=64)
    with torch.no_grad():  # larger weights than at initialisation: confident, varied text
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(6.0)
    save_model(root / "ours", model.state_dict(), model.config, tokenizer, {"name": "t"})
    to_hf(root / "ours", root / "hf")
    return model.eval(), root / "ours", root / "hf"


def test_transformers_loads_the_export_with_our_logits_and_text(
    exported: tuple[GPT, Path, Path], tokenizer: Tokenizer
) -> None:
    transformers = pytest.importorskip("transformers")
    model, _, hf_dir = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    prompt = "At the market, Nadia has 3"
    ids = tokenizer.encode(prompt)
    assert hf_tok(prompt)["input_ids"] == ids
    assert hf_tok.eos_token_id == tokenizer.eos_id and hf_tok.pad_token_id == tokenizer.pad_id
    x = torch.tensor([ids])
    with torch.no_grad():
        diff = (hf(x).logits - model(x)).abs().max().item()
    assert diff < 1e-4
    [ours] = complete(model, tokenizer, [prompt], Sampling(max_new_tokens=20))
    with torch.no_grad():
        out = hf.generate(x, max_new_tokens=20, do_sample=False)
    theirs = hf_tok.decode(out[0, len(ids) :], skip_special_tokens=True)
    assert len(ours) > 5 and theirs == ours


def test_import_round_trips_and_archives(exported: tuple[GPT, Path, Path], tmp_path: Path) -> None:
    model, _, hf_dir = exported
    back, _ = from_hf(hf_dir)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    archive = pack(hf_dir, tmp_path / "m.tar.gz", "my-model")
    again, _ = load_model(archive)  # load_model reads archives and HF directories too
    assert torch.equal(again.transformer.h[1].mlp.c_fc.weight, model.transformer.h[1].mlp.c_fc.weight)
    zipped = pack(hf_dir, tmp_path / "m.zip", "z")
    assert (unpack(zipped, tmp_path / "z") / "config.json").is_file()
    (tmp_path / "bad.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ArchiveError):
        unpack(tmp_path / "bad.tar.gz", tmp_path / "bad")


def test_missing_special_tokens_are_added(exported: tuple[GPT, Path, Path], tmp_path: Path) -> None:
    """A GPT-2 tokenizer knows only <|endoftext|>; ours needs <|completion|> and <|pad|> too."""
    _, _, hf_dir = exported
    d = tmp_path / "gpt2like"
    shutil.copytree(hf_dir, d)
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=290, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    hf.train_from_iterator(corpus_texts(), trainer=trainer)
    hf.save(str(d / "tokenizer.json"))
    weights = load_file(d / "model.safetensors")
    weights["transformer.wte.weight"] = weights["transformer.wte.weight"][:290].contiguous()
    weights["lm_head.weight"] = weights["transformer.wte.weight"].clone()
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "vocab_size": 290}))
    model, tok = from_hf(d)
    assert model.config.vocab_size == 292 == tok.vocab_size
    assert {tok.sep_id, tok.pad_id} == {290, 291}
    complete(model, tok, ["At the"], Sampling(max_new_tokens=3), supervised=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "mamba"}, "model_type 'mamba'"),
        ({"model_type": "llama"}, "no integer 'hidden_size'"),  # a GPT-2 config is no llama config
        ({"activation_function": "relu"}, "activation_function 'relu'"),
        ({"n_inner": 100}, "n_inner"),
        ({"tie_word_embeddings": False}, "untied"),
    ],
)
def test_unsupported_models_are_refused(
    exported: tuple[GPT, Path, Path], tmp_path: Path, change: dict[str, object], message: str
) -> None:
    _, _, hf_dir = exported
    d = tmp_path / "m"
    shutil.copytree(hf_dir, d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UnsupportedModel, match=message) as info:
        load_model(d)
    assert info.value.code == "user_error"

"""Serving many adapters over one base: in mixed batches (two adapters and the base), every
row gets exactly the tokens its merged model gives it decoded alone."""

from __future__ import annotations

import copy

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.families import FAMILIES
from models.families.gpt.model import GPT
from models.formats.peft import merge_adapter
from models.inference.decoder import Decoder, Row
from models.inference.generate import Sampling, generate_ids
from models.lora import layers as lora
from models.spec import AdapterSpec
from tests.conftest import tiny_model
from tests.models.inference.test_decoder import PROMPTS
from tests.models.inference.test_decoder import run as decode_all

SPECS = {
    "math": AdapterSpec(type="lora", rank=4, alpha=8, targets=["attention", "mlp"]),
    "chat": AdapterSpec(type="lora", rank=2, alpha=2, targets=["qkv", "fc"]),
}


@pytest.fixture(scope="module")
def adapters(peaked: GPT) -> dict[str, lora.Adapter]:
    out = {}
    for k, (name, spec) in enumerate(SPECS.items()):
        holder = copy.deepcopy(peaked)
        lora.add_adapter(holder, FAMILIES["gpt"].lora, name, spec, seed=k)
        with torch.no_grad():
            for p in lora.adapter_params(holder, name):
                p.normal_(0.0, 0.4, generator=torch.Generator().manual_seed(100 + k + p.numel()))
        out[name] = lora.extract(holder, name)
    return out


def merged(base: GPT, adapter: lora.Adapter | None) -> GPT:
    model = copy.deepcopy(base)
    if adapter is not None:
        merge_adapter(model, adapter)
    return model


@pytest.mark.parametrize("join_every", [0, 1, 2])
def test_mixed_batches_give_each_row_its_merged_models_tokens(
    peaked: GPT, adapters: dict[str, lora.Adapter], tokenizer: Tokenizer, join_every: int
) -> None:
    names = ["math", None, "chat", "math", "chat", None]
    prompts = [tokenizer.encode(p) for p in [*PROMPTS, PROMPTS[0]]]
    budgets = [12, 9, 20, 6, 30, 15]
    dec = Decoder(peaked, tokenizer, max_batch=4)
    for name, adapter in adapters.items():
        dec.add_adapter(name, adapter)
    rows = [Row(p, Sampling(max_new_tokens=b), adapter=n, ignore_eos=True) for p, b, n in zip(prompts, budgets, names)]
    decode_all(dec, rows, join_every)
    models = {n: merged(peaked, None if n is None else adapters[n]) for n in set(names)}
    differs = 0
    for row, p, b, n in zip(rows, prompts, budgets, names):
        [want] = generate_ids(models[n], [p], Sampling(max_new_tokens=b), eos_id=-1)
        assert row.tokens == want, n
        [plain] = generate_ids(peaked, [p], Sampling(max_new_tokens=b), eos_id=-1)
        differs += n is not None and plain != want
    assert differs == 4  # every adapter row decodes differently from the base


def test_one_adapter_alone_matches_its_merged_model_in_a_decoder(
    peaked: GPT, adapters: dict[str, lora.Adapter], tokenizer: Tokenizer
) -> None:
    prompt = tokenizer.encode(PROMPTS[2])
    alone = decode_all(Decoder(merged(peaked, adapters["chat"]), tokenizer), [Row(prompt, Sampling(max_new_tokens=25))])
    dec = Decoder(peaked, tokenizer)
    dec.add_adapter("chat", adapters["chat"])
    [row] = decode_all(dec, [Row(prompt, Sampling(max_new_tokens=25), adapter="chat")])
    assert row.tokens == alone[0].tokens


def test_adapters_add_only_their_low_rank_stacks(
    peaked: GPT, adapters: dict[str, lora.Adapter], tokenizer: Tokenizer
) -> None:
    dec = Decoder(peaked, tokenizer)
    base = dec.net.nbytes()
    for name, adapter in adapters.items():
        dec.add_adapter(name, adapter)
    assert dec.net.nbytes() == base  # the base is shared, not copied
    # per adapted projection: 2 adapters x (in + out) x the largest rank, fp32 (the base: no room)
    c = peaked.config.n_embd
    per_layer = (c + 3 * c) + (c + c) + (c + 4 * c) + (4 * c + c)
    assert dec.net.adapters.nbytes() == peaked.config.n_layer * per_layer * 2 * 4 * 4


def test_unknown_or_misfit_adapters_are_refused(
    peaked: GPT, adapters: dict[str, lora.Adapter], tokenizer: Tokenizer
) -> None:
    dec = Decoder(peaked, tokenizer)
    with pytest.raises(ValueError, match="unknown adapter 'math'"):
        dec.add(Row([1, 2], Sampling(), adapter="math"))
    wide = tiny_model(tokenizer.vocab_size, n_embd=64)
    holder = copy.deepcopy(wide)
    lora.add_adapter(holder, FAMILIES["gpt"].lora, "w", SPECS["chat"], seed=0)
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.c_attn is 64->192"):
        dec.add_adapter("w", lora.extract(holder, "w"))
    dec.add_adapter("math", adapters["math"])
    row = Row([1, 2], Sampling(max_new_tokens=3), adapter="math")
    dec.add(row)
    with pytest.raises(ValueError, match="in use"):
        dec.remove_adapter("math")
    decode_all(dec, [])
    dec.remove_adapter("math")
    assert dec.net.adapters.slots == {}

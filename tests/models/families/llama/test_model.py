"""models.families.llama.model: cache = no cache (left padding, per-row positions), the batching decoder,
trainable parts, the fused vocabulary loss, and the llama spec fields' errors."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from models.data.tokenizer import Tokenizer
from models.errors import SpecError
from models.families.build import build_model, config_from_spec
from models.families.llama.config import LlamaConfig, LlamaModelSpec
from models.families.llama.model import Llama
from models.inference.decoder import Decoder, Row
from models.inference.generate import Sampling, generate_ids
from models.layers.kv_cache import KVCache
from models.layers.linear_ce import linear_cross_entropy
from models.spec import parse_spec
from models.training.optim import select_trainable

SHAPES = {
    "gqa-tied": {"n_kv_head": 2},
    "mha-untied": {"n_kv_head": 4, "tie_embeddings": False},
    "qwen3-like": {"n_kv_head": 2, "head_dim": 12, "qk_norm": True, "rope_scaling": {"type": "linear", "factor": 2.0}},
    "qwen2-llama3": {
        "n_kv_head": 1,
        "attention_bias": True,
        "rope_scaling": {
            "type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    },
}


def peaked_llama(vocab: int, seed: int = 1, block_size: int = 48, **fields: Any) -> Llama:
    """A random 2-layer llama with large weights: confident greedy choices (no near-ties)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab, block_size, n_layer=2, n_head=4, n_embd=32, intermediate_size=48, **fields)
    model = Llama(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0 if p.dim() >= 2 else 1.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    return model.eval()


@pytest.fixture(scope="module", params=list(SHAPES), ids=list(SHAPES))
def llama(request: pytest.FixtureRequest, tokenizer: Tokenizer) -> Llama:
    return peaked_llama(tokenizer.vocab_size, **SHAPES[request.param])


def test_hidden_with_cache_matches_full_forward(llama: Llama) -> None:
    idx = torch.randint(0, llama.config.vocab_size, (2, 20))
    full = llama.hidden(idx)
    cache = KVCache(llama.config, 2, idx.device, torch.float32)
    assert cache.k[0].shape == (2, llama.config.n_kv_head, 48, llama.config.head_dim)
    parts = [llama.hidden(idx[:, :7], cache=cache)] + [
        llama.hidden(idx[:, t : t + 1], cache=cache) for t in range(7, 20)
    ]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_left_padded_batch_gives_each_row_its_own_output(llama: Llama, tokenizer: Tokenizer) -> None:
    prompts = [tokenizer.encode("At the market, Nadia has"), tokenizer.encode("J"), tokenizer.encode("Omar has 7")]
    s = Sampling(max_new_tokens=12)
    together = generate_ids(llama, prompts, s)
    alone = [generate_ids(llama, [p], s)[0] for p in prompts]
    no_cache = generate_ids(llama, prompts, s, use_cache=False)
    assert together == alone == no_cache
    assert all(len(t) == 12 for t in together)


def test_greedy_matches_step_by_step_argmax(llama: Llama) -> None:
    seq = [5, 9, 2]
    got = generate_ids(llama, [seq], Sampling(max_new_tokens=8))[0]
    for _ in range(8):
        seq.append(int(llama(torch.tensor([seq]))[0, -1].argmax()))
    assert got == seq[3:]


@pytest.mark.parametrize("join_every", [0, 1, 3])
def test_decoder_rows_match_generate_ids_alone(llama: Llama, tokenizer: Tokenizer, join_every: int) -> None:
    prompts = ["At the market, Nadia has", "J", "Omar has 7 books, seven in", "So it goes. At the", "Hana"]
    ids = [tokenizer.encode(p) for p in prompts]
    budgets = [12, 5, 20, 1, 30]
    rows = [Row(p, Sampling(max_new_tokens=b), ignore_eos=True) for p, b in zip(ids, budgets)]
    dec = Decoder(llama, tokenizer, max_batch=3)
    pending, steps = list(rows), 0
    while pending or dec.busy:
        if pending and (join_every == 0 or steps % join_every == 0):
            take = pending if join_every == 0 else pending[:1]
            for r in take:
                dec.add(r)
            pending = pending[len(take) :]
        dec.step()
        steps += 1
        assert steps < 500
    for row, p, b in zip(rows, ids, budgets):
        [want] = generate_ids(llama, [p], Sampling(max_new_tokens=b))
        assert row.tokens == want and row.finish_reason == "length"


def test_every_end_id_stops_generation(tokenizer: Tokenizer) -> None:
    model = peaked_llama(tokenizer.vocab_size)
    prompt = tokenizer.encode("At the market")
    [free] = generate_ids(model, [prompt], Sampling(max_new_tokens=10))
    end = free[3]
    [cut] = generate_ids(model, [prompt], Sampling(max_new_tokens=10), eos_id=[tokenizer.eos_id, end])
    assert cut == free[: free.index(end)]
    tok = copy.copy(tokenizer)
    tok.end_ids = [tokenizer.eos_id, end]
    row = Row(prompt, Sampling(max_new_tokens=10))
    dec = Decoder(model, tok)
    dec.add(row)
    while dec.busy:
        dec.step()
    assert row.tokens == cut and row.finish_reason == "stop"


def trainable_names(model: torch.nn.Module, selectors: list[str]) -> set[str]:
    select_trainable(model, selectors)
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_trainable_parts_mean_the_same_on_llama() -> None:
    tied = Llama(LlamaConfig(64, 16, n_layer=3, n_head=2, n_kv_head=1, n_embd=16, intermediate_size=24, qk_norm=True))
    untied = Llama(LlamaConfig(64, 16, n_layer=3, n_head=2, n_embd=16, intermediate_size=24, tie_embeddings=False))
    assert trainable_names(tied, ["embeddings"]) == {"model.embed_tokens.weight"}
    assert trainable_names(tied, ["head"]) == {"model.norm.weight", "model.embed_tokens.weight"}
    assert trainable_names(untied, ["head"]) == {"model.norm.weight", "lm_head.weight"}
    assert trainable_names(untied, ["embeddings"]) == {"model.embed_tokens.weight"}
    blocks = trainable_names(tied, ["blocks.1-2"])
    assert blocks and all(n.startswith(("model.layers.1.", "model.layers.2.")) for n in blocks)
    assert {n.split(".")[2] for n in blocks} == {"1", "2"}
    attn = trainable_names(tied, ["attention"])
    assert attn == {n for n, _ in tied.named_parameters() if ".self_attn." in n}
    assert "model.layers.0.self_attn.q_norm.weight" in attn
    mlp = trainable_names(tied, ["mlp"])
    assert mlp == {f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(3) for p in ("gate", "up", "down")}
    norms = trainable_names(tied, ["norms"])
    assert norms == {n for n, p in tied.named_parameters() if p.dim() == 1}  # every norm weight, nothing else
    assert len(trainable_names(untied, ["all"])) == len(list(untied.parameters()))


@pytest.mark.parametrize("tied", [True, False])
def test_fused_vocabulary_loss_equals_the_plain_one(tied: bool) -> None:
    model = peaked_llama(96, tie_embeddings=tied)
    model.train()
    idx = torch.randint(0, 96, (2, 10))
    targets = torch.randint(0, 96, (20,))
    h = model.hidden(idx).reshape(-1, 32)
    plain = F.cross_entropy(model.logits(h), targets)
    (g_plain,) = torch.autograd.grad(plain, model.head_weight(), retain_graph=True)
    fused = linear_cross_entropy(h, model.head_weight(), targets)
    (g_fused,) = torch.autograd.grad(fused, model.head_weight())
    assert torch.allclose(plain, fused, atol=1e-5) and torch.allclose(g_plain, g_fused, atol=1e-5)


def test_spec_builds_the_llama_it_describes(spec_dict: Callable[..., dict[str, Any]]) -> None:
    model = {"arch": "llama", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32, "block_size": 32}
    spec = parse_spec(spec_dict(model={**model, "head_dim": 12, "qk_norm": True, "tie_embeddings": False}))
    assert isinstance(spec.model, LlamaModelSpec)
    net = build_model(config_from_spec(spec.model, 300))
    assert isinstance(net, Llama)
    assert net.model.layers[0].self_attn.q_proj.weight.shape == (48, 32)
    assert net.model.layers[0].self_attn.k_proj.weight.shape == (24, 32)
    assert net.lm_head is not None and net.config.intermediate_size % 32 == 0


BAD_LLAMA = [
    ({"n_kv_head": 3}, "model.n_kv_head"),
    ({"n_kv_head": 0}, "model.n_kv_head"),
    ({"n_kv_head": 200}, "model.n_kv_head"),
    ({"n_embd": 30}, "model.n_embd"),
    ({"n_embd": 42, "n_head": 6, "n_kv_head": 2}, "model.n_head"),  # head size 7: odd
    ({"head_dim": 7}, "model.head_dim"),
    ({"head_dim": 0}, "model.head_dim"),
    ({"intermediate_size": 0}, "model.intermediate_size"),
    ({"rms_norm_eps": 0}, "model.rms_norm_eps"),
    ({"rms_norm_eps": 1.0}, "model.rms_norm_eps"),
    ({"rope_theta": 0.5}, "model.rope_theta"),
    ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "model.rope_scaling"),
    ({"rope_scaling": {"type": "linear", "factor": 0.5}}, "model.rope_scaling.factor"),
    ({"rope_scaling": {"type": "linear"}}, "model.rope_scaling.factor"),
    (
        {"rope_scaling": {"type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1}},
        "model.rope_scaling.high_freq_factor",
    ),
    (
        {"rope_scaling": {"type": "llama3", "factor": 8, "original_max_position_embeddings": 0}},
        "model.rope_scaling.original_max_position_embeddings",
    ),
    ({"attention_bias": "yes"}, "model.attention_bias"),
    ({"qk_norm": 3}, "model.qk_norm"),
    ({"tie_embeddings": None}, "model.tie_embeddings"),
    ({"n_layer": 0}, "model.n_layer"),
    ({"block_size": 4}, "model.block_size"),
    ({"dropout": 1.0}, "model.dropout"),
    ({"n_inner": 5}, "model.n_inner"),
]


@pytest.mark.parametrize(("fields", "loc"), BAD_LLAMA, ids=[loc + str(i) for i, (_, loc) in enumerate(BAD_LLAMA)])
def test_bad_llama_fields_name_their_path(
    spec_dict: Callable[..., dict[str, Any]], fields: dict[str, Any], loc: str
) -> None:
    base = {"arch": "llama", "n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 32}
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict(model={**base, **fields}))
    assert [e["loc"] for e in info.value.errors] == [loc], info.value.errors


def test_an_unknown_arch_names_both_known_ones(spec_dict: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict(model={"arch": "mamba"}))
    assert info.value.errors == [{"loc": "model.arch", "message": "Input should be 'gpt' or 'llama'"}]


def test_gpt_only_specs_keep_their_meaning(spec_dict: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict(model={"n_kv_head": 2}))  # arch defaults to gpt, which has no kv heads
    assert [e["loc"] for e in info.value.errors] == ["model.n_kv_head"]
    assert parse_spec(spec_dict()).model.arch == "gpt"


@pytest.mark.parametrize("layout", ["packed", "plain", "rows"])
def test_serving_path_logits_equal_the_model(llama: Llama, layout: str) -> None:
    from models.families.llama.serving import ServingLlama

    net = ServingLlama(llama, layout=layout)
    idx = torch.randint(0, llama.config.vocab_size, (3, 9))
    cache = KVCache(llama.config, 3, idx.device, torch.float32)
    got = [net.last_logits(idx[:, :6], torch.arange(6)[None], cache, None)]
    for t in range(6, 9):  # one new token per row, per-row positions
        got.append(net.last_logits(idx[:, t : t + 1], torch.full((3, 1), t), cache, None))
    with torch.no_grad():
        want = llama(idx)
    for j, t in enumerate([5, 6, 7, 8]):
        assert torch.allclose(got[j], want[:, t], atol=1e-4), (t, (got[j] - want[:, t]).abs().max())

"""Serving adapters beside a Llama-family base (fused qkv and gate-up projections): mixed
batches give each row its merged model's tokens, and the adapted logits equal peft's on
the transformers export of the base."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.families import FAMILIES
from models.families.llama.model import Llama
from models.families.llama.serving import ServingLlama
from models.formats.hf.directory import to_hf
from models.formats.native import save_model
from models.formats.peft import merge_adapter, save_adapter
from models.inference.decoder import Decoder, Row
from models.inference.generate import Sampling, generate_ids
from models.layers.kv_cache import KVCache
from models.lora import layers as lora
from models.spec import AdapterSpec
from tests.models.families.llama.test_model import SHAPES, peaked_llama
from tests.models.inference.test_decoder import PROMPTS
from tests.models.inference.test_decoder import run as decode_all

SPECS = {
    "all": AdapterSpec(type="lora", rank=4, alpha=8, targets=["attention", "mlp"]),
    "kv-up": AdapterSpec(type="lora", rank=2, alpha=2, targets=["k", "v", "up"]),  # parts of both fused groups
    "q-down": AdapterSpec(type="lora", rank=3, alpha=6, targets=["q", "down"]),
}
# peft 0.21 still reads transformers' deprecated alias; the warning is theirs, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
CASES = ["gqa-tied", "qwen3-like", "qwen2-llama3"]  # grouped kv, wide heads + qk norms, q/k/v biases


@pytest.fixture(scope="module", params=CASES, ids=CASES)
def base(request: pytest.FixtureRequest, tokenizer: Tokenizer) -> Llama:
    return peaked_llama(tokenizer.vocab_size, **SHAPES[request.param])


def made(model: Llama, name: str, spec: AdapterSpec, seed: int) -> lora.Adapter:
    """An adapter whose B is not zero (as after training), big enough to change the tokens."""
    holder = copy.deepcopy(model)
    lora.add_adapter(holder, FAMILIES["llama"].lora, name, spec, seed=seed)
    with torch.no_grad():
        for p in lora.adapter_params(holder, name):
            p.normal_(0.0, 0.4, generator=torch.Generator().manual_seed(100 + seed + p.numel()))
    return lora.extract(holder, name)


@pytest.fixture(scope="module")
def adapters(base: Llama) -> dict[str, lora.Adapter]:
    return {name: made(base, name, spec, k) for k, (name, spec) in enumerate(SPECS.items())}


def merged(base: Llama, adapter: lora.Adapter | None) -> Llama:
    model = copy.deepcopy(base)
    if adapter is not None:
        merge_adapter(model, adapter)
    return model.eval()


@pytest.mark.parametrize("join_every", [0, 2])
def test_mixed_batches_give_each_row_its_merged_models_tokens(
    base: Llama, adapters: dict[str, lora.Adapter], tokenizer: Tokenizer, join_every: int
) -> None:
    names = ["all", None, "kv-up", "q-down", "all", None, "kv-up"]
    prompts = [tokenizer.encode(p) for p in [*PROMPTS, PROMPTS[0], PROMPTS[2]]]
    budgets = [12, 9, 20, 6, 25, 15, 10]
    dec = Decoder(base, tokenizer, max_batch=4)
    for name, adapter in adapters.items():
        dec.add_adapter(name, adapter)
    rows = [Row(p, Sampling(max_new_tokens=b), adapter=n, ignore_eos=True) for p, b, n in zip(prompts, budgets, names)]
    decode_all(dec, rows, join_every)
    models = {n: merged(base, None if n is None else adapters[n]) for n in set(names)}
    differs = 0
    for row, p, b, n in zip(rows, prompts, budgets, names):
        [want] = generate_ids(models[n], [p], Sampling(max_new_tokens=b), eos_id=-1)
        assert row.tokens == want, n
        [alone] = decode_all(Decoder(models[n], tokenizer), [Row(p, Sampling(max_new_tokens=b), ignore_eos=True)])
        assert row.tokens == alone.tokens, n
        [plain] = generate_ids(base, [p], Sampling(max_new_tokens=b), eos_id=-1)
        differs += n is not None and plain != want
    assert differs >= 4  # the adapters change what the rows decode


def test_adapted_logits_equal_the_merged_models(base: Llama, adapters: dict[str, lora.Adapter]) -> None:
    net = ServingLlama(base)
    for name, adapter in adapters.items():
        net.adapters.add(name, adapter)
    names = [None, "all", "kv-up", "q-down"]
    slots = torch.tensor([net.adapters.index(n) for n in names])
    idx = torch.randint(0, base.config.vocab_size, (4, 10), generator=torch.Generator().manual_seed(0))
    cache = KVCache(base.config, 4, idx.device, torch.float32)
    got = [net.last_logits(idx[:, :7], torch.arange(7)[None], cache, None, slots)]
    for t in range(7, 10):
        got.append(net.last_logits(idx[:, t : t + 1], torch.full((4, 1), t), cache, None, slots))
    for r, n in enumerate(names):
        with torch.no_grad():
            want = merged(base, None if n is None else adapters[n])(idx[r : r + 1])[0]
        for j, t in enumerate([6, 7, 8, 9]):
            torch.testing.assert_close(got[j][r], want[t], rtol=0, atol=1e-4)


def test_served_adapters_give_peft_logits_on_the_transformers_export(
    base: Llama, adapters: dict[str, lora.Adapter], tokenizer: Tokenizer, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from models.families.llama.serving import ServingLlama

    save_model(tmp_path / "ours", base.state_dict(), base.config, tokenizer, {"name": "base"})
    to_hf(tmp_path / "ours", tmp_path / "hf")
    net = ServingLlama(base)
    idx = torch.randint(0, base.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    for name, adapter in adapters.items():
        net.adapters.add(name, adapter)
        save_adapter(tmp_path / name, adapter, base=str(tmp_path / "hf"))
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        with torch.no_grad():
            want = peft.PeftModel.from_pretrained(hf_model, tmp_path / name).eval()(input_ids=idx).logits[0, -1]
        cache = KVCache(base.config, 1, idx.device, torch.float32)
        slot = torch.tensor([net.adapters.index(name)])
        got = net.last_logits(idx, torch.arange(12)[None], cache, None, slot)[0]
        torch.testing.assert_close(got, want, rtol=0, atol=2e-4)


def test_adapters_add_only_their_low_rank_stacks(
    base: Llama, adapters: dict[str, lora.Adapter], tokenizer: Tokenizer
) -> None:
    dec = Decoder(base, tokenizer)
    size = dec.net.nbytes()
    dec.add_adapter("kv-up", adapters["kv-up"])
    assert dec.net.nbytes() == size  # the base is shared, not copied
    c = base.config
    kv, inter = c.n_kv_head * c.head_dim, c.intermediate_size
    # 1 adapter x rank 2: k's and v's A side by side in the qkv group, each B
    # only as wide as its own slice; up alone in gate-up
    qkv = c.n_embd * 2 * 2 + 2 * kv + 2 * kv
    gate_up = c.n_embd * 2 + 2 * inter
    assert dec.net.adapters.nbytes() == c.n_layer * (qkv + gate_up) * 4


def test_gpt_adapters_are_refused_on_a_llama(base: Llama, tokenizer: Tokenizer) -> None:
    dec = Decoder(base, tokenizer)
    alien = lora.Adapter(2, 4, 0.0, {"transformer.h.0.attn.c_attn": (torch.zeros(2, 32), torch.zeros(96, 2))})
    with pytest.raises(ValueError, match=r"targets transformer\.h\.0\.attn\.c_attn, which this model cannot adapt"):
        dec.add_adapter("g", alien)
    with pytest.raises(ValueError, match="unknown adapter 'g'"):
        dec.add(Row([1, 2], Sampling(), adapter="g"))

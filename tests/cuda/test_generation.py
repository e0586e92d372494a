"""Generation on a CUDA device (marked `cuda`, skipped without one): greedy tokens on the GPU
are the CPU's, for generate_ids and for the serving decoder, on a tiny GPT and a tiny Llama.

The models have large random weights (confident choices, no near-ties), so the GPU's other
summation order cannot flip an argmax; fp32 throughout."""

from __future__ import annotations

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.families.build import Model
from models.inference.decoder import Decoder, Row
from models.inference.generate import Sampling, generate_ids
from tests.conftest import tiny_model
from tests.models.families.llama.test_model import peaked_llama

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

PROMPTS = ["At the market, Nadia has", "J", "Omar has 7 books, seven in", "So it goes. At the"]


def peaked_gpt(vocab: int) -> Model:
    model = tiny_model(vocab, seed=1, block_size=48)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    return model.eval()


@pytest.fixture(params=["gpt", "llama"])
def model(request: pytest.FixtureRequest, tokenizer: Tokenizer) -> Model:
    if request.param == "gpt":
        return peaked_gpt(tokenizer.vocab_size)
    return peaked_llama(tokenizer.vocab_size, n_kv_head=2)


def test_greedy_generation_on_cuda_equals_the_cpu(model: Model, tokenizer: Tokenizer) -> None:
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    s = Sampling(max_new_tokens=20)
    on_cpu = generate_ids(model, prompts, s)
    on_cuda = generate_ids(model.to("cuda"), prompts, s)
    assert on_cuda == on_cpu
    assert all(len(t) == 20 for t in on_cuda)


def test_the_serving_decoder_on_cuda_equals_cpu_generation(model: Model, tokenizer: Tokenizer) -> None:
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    budgets = [12, 5, 20, 9]
    alone = [
        generate_ids(model, [p], Sampling(max_new_tokens=b), eos_id=tokenizer.eos_id) for p, b in zip(prompts, budgets)
    ]
    want = [ids for [ids] in alone]
    decoder = Decoder(model.to("cuda"), tokenizer, max_batch=3)
    assert decoder.net.device.type == "cuda"
    rows = [Row(p, Sampling(max_new_tokens=b)) for p, b in zip(prompts, budgets)]
    for row in rows:
        decoder.add(row)
    for _ in range(200):
        if not decoder.busy:
            break
        decoder.step()
    assert [r.tokens for r in rows] == want
    assert all(r.finish_reason in ("length", "stop") for r in rows)

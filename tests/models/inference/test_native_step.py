"""Native decode steps (models/inference/native.py, native_step.cpp): the Llama family's step in C++.

Against transformers on every Llama-family shape we import (GQA, Qwen2's biases, Qwen3's q / k
norms and wide heads, llama3 rope scaling) and on GPT-2: the logits of each decoded token, rows that started
together and a row that joined later (the key mask), equal transformers' full-sequence logits
at those positions. The quantized precisions (no transformers counterpart) and the bf16 KV cache
against our eager step over the same weights. The decoder runs its steps natively (the eager
`_logits` is not called for them) and falls back to eager steps where the C++ cannot be built."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.families.build import Model, serving_net
from models.families.gpt.model import GPT
from models.families.llama.config import LlamaConfig
from models.families.llama.hf import from_hf_state
from models.families.llama.model import Llama
from models.formats.hf.gpt2 import from_hf_parts
from models.inference import native
from models.inference.decoder import Decoder, Row
from models.inference.generate import Sampling
from models.inference.slot_cache import SlotCache
from models.layers import nf4
from models.layers.quantized import Int4Projection, Int8Projection
from models.layers.serving import ServingNet
from tests.conftest import run_without_compiler
from tests.models.formats.test_hf_llama import CASES, reference, transformers

REPO_ROOT = Path(__file__).resolve().parents[3]
VOCAB = 300
pytestmark = pytest.mark.skipif(not native.available(), reason="the native step needs a C++ compiler")


def prefill(net: ServingNet, prompts: list[list[int]], cache: SlotCache) -> None:
    positions = torch.arange(len(prompts[0]))[None]
    net.last_logits(torch.tensor(prompts), positions, cache.admit(len(prompts[0]), len(prompts)), None)


def steps(
    net: ServingNet, prompts: list[list[int]], joining: list[int], new: list[list[int]], kv: torch.dtype
) -> list[torch.Tensor]:
    """Logits of each decode step: `prompts` prefilled together, two steps, `joining` prefilled
    into the next slot, then the rest of `new` (each step's token per row, rows in slot order)."""
    cache = SlotCache(net.config, 3, torch.device("cpu"), kv)
    prefill(net, prompts, cache)
    out = []
    for s, tokens in enumerate(new):
        positions, mask = cache.prepare()
        assert (mask is not None) == (s >= 2)  # the joined row's gap is masked
        out.append(net.last_logits(torch.tensor(tokens)[:, None], positions, cache, mask))
        cache.lens = [n + 1 for n in cache.lens]
        if s == 1:
            prefill(net, [joining], cache)
    return out


def decisive_llama(vocab: int) -> Llama:
    """A small Llama whose weights decide clearly (no near-tie for rounding to flip)."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab, 64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, intermediate_size=128))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.2) + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def gpt2_reference(tokenizer: Tokenizer) -> tuple[Any, GPT]:
    """A transformers GPT-2 with random weights that decide clearly, and ours from its tensors."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    ref = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.2) + (1.0 if p.dim() == 1 else 0.0))
    return ref, from_hf_parts(ref.config.to_dict(), ref.state_dict(), tokenizer)


def qwen2(seed: int) -> Llama:
    """Ours of a transformers Qwen2 (q, k and v biases) with weights that decide clearly."""
    ref = reference(*CASES["qwen2-bias"], VOCAB, seed=seed)
    return from_hf_state(ref.config.to_dict(), ref.state_dict())[0]


@pytest.mark.parametrize("case", ["llama-gqa-tied", "llama3-scaling", "qwen2-bias", "qwen3-wide-heads", "gpt2"])
def test_native_steps_give_transformers_logits(case: str, tokenizer: Tokenizer) -> None:
    if case == "gpt2":
        ref, ours = gpt2_reference(tokenizer)
    else:
        ref = reference(*CASES[case], VOCAB)
        ours, _ = from_hf_state(ref.config.to_dict(), ref.state_dict())
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, VOCAB, (3, 12), generator=g).tolist()  # rows 0 and 1: 5 prompt tokens; row 2: 3
    new = [[rows[0][5 + s], rows[1][5 + s]] + ([rows[2][3 + s - 2]] if s >= 2 else []) for s in range(6)]
    net = serving_net(ours.eval(), layout=native.fp32_layout())  # the layout a decoder gives native steps
    net.decode_step = native.NativeStep(net)
    calls = []
    eager = net._logits
    net._logits = lambda *a: calls.append(a[0].shape) or eager(*a)  # type: ignore[method-assign]
    got = steps(net, [rows[0][:5], rows[1][:5]], rows[2][:3], new, torch.float32)
    assert all(shape[1] > 1 for shape in calls)  # only the prefills ran eagerly
    with torch.no_grad():
        want = ref(torch.tensor(rows)).logits
    for s, logits in enumerate(got):
        assert (logits[0] - want[0, 5 + s]).abs().max() < 1e-4
        assert (logits[1] - want[1, 5 + s]).abs().max() < 1e-4
        if s >= 2:
            assert (logits[2] - want[2, 3 + s - 2]).abs().max() < 1e-4


PRECISIONS = [
    "fp32-plain",
    "fp32-packed",  # oneDNN's packed layout (native steps use it in fp32 on AMD CPUs without AVX-512)
    "fp32-rows",  # (outputs, inputs), the step's own product (with AVX-512: native.fp32_layout())
    "int8",
    "int4",
    pytest.param("nf4", marks=pytest.mark.skipif(not nf4.available(), reason="AVX512-BF16")),
]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kv", [torch.float32, torch.bfloat16], ids=["fp32-cache", "bf16-cache"])
@pytest.mark.parametrize("arch", ["llama", "gpt"])
def test_native_steps_equal_eager_ones_in_every_precision(
    arch: str, precision: str, kv: torch.dtype, tokenizer: Tokenizer
) -> None:
    """The same quantized products, so the same logits to the rounding of the norms and attention:
    in fp32, to 1e-5 of the largest logit; quantized or with a bf16 cache, within two bf16 steps
    of it (the quantized heads' output is bf16; attention over a bf16 cache runs in bf16, which
    our loop rounds as torch's flash kernel does, Llama's exactly, GPT's to 0.1%). The greedy token
    is the same wherever eager's top two are further apart than that."""
    model: Model = gpt2_reference(tokenizer)[1] if arch == "gpt" else qwen2(seed=2)
    g = torch.Generator().manual_seed(3)
    rows = torch.randint(0, VOCAB, (3, 12), generator=g).tolist()
    new = [[rows[0][5 + s], rows[1][5 + s]] + ([rows[2][1 + s]] if s >= 2 else []) for s in range(6)]
    precision, _, layout = precision.partition("-")
    net = serving_net(model.eval(), precision, layout=layout or "plain")
    assert (net.head.packed is not None) == (layout == "packed") and (net.head.weight is not None) == (layout == "rows")
    eager = steps(net, [rows[0][:5], rows[1][:5]], rows[2][:3], new, kv)
    net.decode_step = native.NativeStep(net)
    got = steps(net, [rows[0][:5], rows[1][:5]], rows[2][:3], new, kv)
    scale = max(t.abs().max().item() for t in eager)
    tolerance = 1e-5 * scale if precision == "fp32" and kv == torch.float32 else 2 * scale / 128
    for a, b in zip(eager, got):
        assert (a - b).abs().max() <= tolerance
        top2 = a.topk(2, -1).values
        clear = top2[:, 0] - top2[:, 1] > 2 * tolerance
        assert torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear])


@pytest.mark.parametrize(("n_head", "n_kv_head", "head_dim"), [(6, 2, 64), (4, 4, 32), (8, 1, 96), (6, 3, 40)])
def test_attention_over_a_bf16_cache(n_head: int, n_kv_head: int, head_dim: int) -> None:
    """One query's attention over a bf16 cache, the query heads of a KV head together: by AVX-512's
    bf16 dot products where the CPU has them and a head's values are a multiple of 32 (SmolLM2's 64
    with 3 heads a KV head; 32 and 96, 1 and 8 heads), by plain loops elsewhere (40), rows of
    different lengths (the mask): each step's logits equal the eager step's (torch's attention over
    the same cache) to a bf16 step of the largest."""
    torch.manual_seed(7)
    config = LlamaConfig(301, 64, n_layer=2, n_head=n_head, n_kv_head=n_kv_head, head_dim=head_dim, n_embd=96)
    net = serving_net(Llama(config).eval(), layout="plain")
    rows = torch.randint(0, 301, (3, 20)).tolist()
    new = [[rows[0][9 + s], rows[1][9 + s]] + ([rows[2][1 + s]] if s >= 2 else []) for s in range(8)]
    eager = steps(net, [rows[0][:9], rows[1][:9]], rows[2][:3], new, torch.bfloat16)
    net.decode_step = native.NativeStep(net)
    got = steps(net, [rows[0][:9], rows[1][:9]], rows[2][:3], new, torch.bfloat16)
    scale = max(t.abs().max().item() for t in eager)
    for a, b in zip(eager, got):
        assert (a - b).abs().max() <= scale / 128


@pytest.mark.parametrize("rows", [1, 3, 8, 9])
def test_the_rows_product_takes_any_shape(rows: int) -> None:
    """fp32 in the rows layout on shapes off the product's tiles (40 inputs: 16-value vectors and
    a tail of 8; 301 and 52 outputs: blocks of four and a tail), at 1 to 8 rows (ours, with
    AVX-512) and 9 (aten's): each row's logits equal the plain layout's eager step's."""
    torch.manual_seed(5)
    model = Llama(LlamaConfig(301, 32, n_layer=1, n_head=4, n_kv_head=2, n_embd=40, intermediate_size=52)).eval()
    prompts = torch.randint(0, 301, (rows, 4)).tolist()
    got = []
    for layout in ("plain", "rows"):
        net = serving_net(model, layout=layout)
        if layout == "rows":
            net.decode_step = native.NativeStep(net)
        cache = SlotCache(net.config, rows, torch.device("cpu"), torch.float32)
        prefill(net, prompts, cache)
        positions, mask = cache.prepare()
        got.append(net.last_logits(torch.arange(rows)[:, None] + 7, positions, cache, mask))
    assert (got[0] - got[1]).abs().max() <= 1e-5 * got[0].abs().max()


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 8, 9])
@pytest.mark.parametrize(
    ("precision", "out", "fan_in", "group"),
    [
        ("int4", 64, 64, 64),
        ("int4", 160, 96, 32),
        ("int4", 208, 256, 128),
        ("int4", 16, 32, 32),
        ("int8", 64, 64, 0),
        ("int8", 301, 40, 0),
        ("int8", 52, 256, 0),
    ],
)
def test_the_quantized_products_are_torchs(precision: str, out: int, fan_in: int, group: int, rows: int) -> None:
    """Our int4 and int8 products (few_rows.cpp: up to 8 rows) equal torch's kernels (9 rows: those
    kernels) to the rounding of their bf16 outputs (each sums the same products in another order),
    most outputs exactly. int4 (where the CPU has AVX-512's bf16 dot products) reads torch's packed
    weight, blocks of 64 outputs and a last one of fewer (160: 32, 208: 16, 16 alone), and
    dequantizes as torch's kernel; int8 (bf16 dot products, AVX-512 or AVX2 FMAs by the CPU) takes
    inputs past its vectors of 32 (40) and outputs past its blocks of weight rows (301, 52)."""
    if precision == "int4" and torch.ops.stagecraft.native_isa() != "avx512bf16":
        pytest.skip("torch's int4 kernel serves every row count on this CPU")
    assert precision in torch.ops.stagecraft.native_few_rows()  # int4: torch's layout is the one we read
    g = torch.Generator().manual_seed(rows * 1000 + out)
    weight, bias = torch.randn(out, fan_in, generator=g), torch.randn(out, generator=g)
    p = Int4Projection(weight, bias, group) if precision == "int4" else Int8Projection(weight, bias)
    x = torch.randn(rows, fan_in, generator=g)
    want, got = p(x), native.project(p, x)
    assert got.shape == want.shape == (rows, out)
    assert ((got - want).abs() <= (want - bias).abs() / 128 + 1e-4).all()
    assert (got != want).float().mean() < 0.05


@pytest.mark.parametrize(
    ("isa", "checks", "count"), [("avx2", "rows or int8", 30), ("avx512", "int4 or bf16_cache", 8)]
)
def test_the_few_rows_products_of_other_cpus(isa: str, checks: str, count: int) -> None:
    """The few-rows products' paths for CPUs with less than this one, taken here with
    STAGECRAFT_NATIVE_ISA: without AVX-512, int8 by AVX2 dot products and fp32 "rows" weights by
    aten's mm; without AVX-512's bf16 dot products, int4 by torch's kernel and attention over a bf16
    cache by plain loops. The same checks, in a process that takes them."""
    levels = ["baseline", "avx2", "avx512", "avx512bf16"]
    if levels.index(torch.ops.stagecraft.native_isa()) <= levels.index(isa):
        pytest.skip("this CPU takes those paths in every test")
    env = {**os.environ, "STAGECRAFT_NATIVE_ISA": isa}
    script = "import torch; from models.inference import native; native.available(); "
    script += "print(torch.ops.stagecraft.native_isa())"
    got = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert got.stdout.split() == [isa], got.stderr
    tests = [
        f"{__file__}::test_the_rows_product_takes_any_shape",
        f"{__file__}::test_native_steps_equal_eager_ones_in_every_precision",
        f"{__file__}::test_the_quantized_products_are_torchs",
        f"{__file__}::test_attention_over_a_bf16_cache",
    ]
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", checks, *tests]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert done.returncode == 0 and re.search(rf"\b{count} passed", done.stdout.splitlines()[-1]), done.stdout[-3000:]


@pytest.mark.parametrize(("arch", "first"), [("llama", 53), ("gpt", 26)])
def test_the_decoder_decodes_natively_and_eagerly_alike(arch: str, first: int, tokenizer: Tokenizer) -> None:
    """Rows together, and a row joining (the mask) with a seeded sample: the same tokens. Native
    and eager int4 products round differently (our own and torch's kernel), so the prompts are ones
    whose greedy choices are clear: eager's top two logits 4 bf16 steps apart or more (checked)."""
    model = decisive_llama(tokenizer.vocab_size) if arch == "llama" else gpt2_reference(tokenizer)[1]
    prompts = [[first, 6, 7, 8], [first + 4, 10, 11, 12], [first + 8, 14]]
    gaps: list[float] = []  # eager's greedy rows: top-two gap / largest logit, at each call

    def decode(dec: Decoder) -> list[list[int]]:
        rows = [Row(p, Sampling(max_new_tokens=12), ignore_eos=True) for p in prompts[:2]]
        hot = Row(prompts[2], Sampling(max_new_tokens=6, temperature=0.9, seed=4), ignore_eos=True)
        for r in rows:
            dec.add(r)
        for _ in range(3):
            dec.step()
        dec.add(hot)
        while dec.busy:
            dec.step()
        return [r.tokens for r in [*rows, hot]]

    eager = Decoder(model, tokenizer, 4, "int4", kv_cache="bf16")
    logits = eager.net.last_logits

    def watched(*args: Any, **kwargs: Any) -> torch.Tensor:
        y: torch.Tensor = logits(*args, **kwargs)
        top = y[:2].float().topk(2, -1).values
        gaps.append(float(((top[:, 0] - top[:, 1]) / top[:, 0].abs()).min()))
        return y

    eager.net.last_logits = watched  # type: ignore[method-assign]
    want = decode(eager)
    assert min(gaps) >= 4 / 256, f"a near tie (gaps {gaps}): choose other prompts"
    native_dec = Decoder(model, tokenizer, max_batch=4, precision="int4", kv_cache="bf16", native=True)
    assert native_dec.step_kind == "native" and native_dec.net.decode_step is not None
    assert decode(native_dec) == want


def test_without_a_compiler_the_decoder_steps_eagerly(tmp_path: Path) -> None:
    """A process that cannot build the C++ step (no compiler) says so and decodes eagerly."""
    script = (
        "from models.families.llama.config import LlamaConfig; from models.families.llama.model import Llama; "
        "from models.inference.decoder import Decoder, Row; from models.inference.generate import Sampling; "
        "tok = type('Tok', (), {'end_ids': [], 'decode': lambda self, ids: ''})(); "
        "m = Llama(LlamaConfig(64, 32, n_layer=1, n_head=2, n_embd=32, intermediate_size=64)); "
        "d = Decoder(m, tok, native=True); r = Row([1, 2], Sampling(max_new_tokens=3), ignore_eos=True); "
        "d.add(r); [d.step() for _ in range(3)]; print(d.step_kind, len(r.tokens))"
    )  # fmt: skip
    done = run_without_compiler(script, tmp_path)
    assert "native decode steps could not be built" in done.stderr
    assert done.stdout.split() == ["eager", "3"]

"""models.layers.quantized: int8 and int4 projections through torch's CPU kernels compute what
their stored weights say, stay close to fp32, take the bytes they should, and a serving net
quantizes its projections only (the embedding, norms and adapters stay fp32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.families.build import serving_net
from models.families.gpt.config import GPTConfig
from models.families.gpt.model import GPT
from models.families.llama.config import LlamaConfig
from models.families.llama.model import Llama
from models.layers.projection import Projection
from models.layers.quantized import ACT, Int4Projection, Int8Projection, Int8Rows, int4_group, quantize, quantized
from models.lora.bank import AdapterBank
from models.lora.layers import Adapter


def weights(out: int, fan_in: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, fan_in, generator=g) * 0.05, torch.randn(out, generator=g) * 0.01


def int8_weight(p: Int8Projection) -> torch.Tensor:
    return p.qweight.float() * p.scales.float()[:, None]


def int4_weight(w: torch.Tensor, group: int) -> torch.Tensor:
    """The weight an Int4Projection of `w` stores, dequantized (the same rounding, written out)."""
    out, fan_in = w.shape
    g = w.view(out, fan_in // group, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).to(ACT).float()
    zero = (lo + 8 * scale).to(ACT).float()
    q = torch.round((g - zero) / scale + 8).clamp(0, 15)
    return ((q - 8) * scale + zero).view(out, fan_in)


@pytest.mark.parametrize(("out", "fan_in"), [(96, 64), (100, 64), (300, 32)])
def test_int8_is_its_stored_weight_times_bf16_activations(out: int, fan_in: int) -> None:
    w, b = weights(out, fan_in)
    x = torch.randn(5, fan_in)
    p = Int8Projection(w, b)
    want = x.to(ACT).float() @ int8_weight(p).t()
    got = p(x)
    assert got.dtype == torch.float32 and got.shape == (5, out) and got.is_contiguous()
    # the kernel hands out bf16 (its activation dtype): equal to that rounding
    assert torch.allclose(got - b, want, rtol=1e-2, atol=1e-3)
    exact = x @ w.t() + b
    assert (got - exact).norm() / exact.norm() < 0.02
    assert torch.allclose(p(x, gelu=True), F.gelu(got, approximate="tanh"))


@pytest.mark.parametrize("fan_in", [40, 100])
def test_int8_off_the_kernels_input_tile(fan_in: int) -> None:
    """torch's int8 kernel crashed the process on 2+ rows of a fan-in off multiples of 16: such a
    projection pads its weight and activations with zeros for it, and computes the same."""
    w, b = weights(64, fan_in, seed=2)
    p = Int8Projection(w, b)
    assert p.kernel_weight is not None and p.kernel_weight.shape == (64, fan_in + (-fan_in % 16))
    assert p.qweight.shape == (64, fan_in) and not p.kernel_weight[:, fan_in:].any()
    for rows in (1, 2, 9, 33):
        x = torch.randn(rows, fan_in)
        want = x.to(ACT).float() @ int8_weight(p).t() + b
        assert torch.allclose(p(x), want, rtol=1e-2, atol=1e-3)
    assert Int8Projection(*weights(64, 48)).kernel_weight is None


@pytest.mark.parametrize(("out", "fan_in", "group"), [(96, 64, 32), (100, 128, 64), (300, 256, 128), (16, 32, 32)])
def test_int4_is_its_stored_weight_and_pads_outputs_to_the_kernel_tile(out: int, fan_in: int, group: int) -> None:
    w, b = weights(out, fan_in, seed=1)
    x = torch.randn(3, fan_in)
    p = Int4Projection(w, b, group)
    got = p(x)
    assert got.shape == (3, out) and got.is_contiguous()
    want = x.to(ACT).float() @ int4_weight(w, group).t() + b
    assert torch.allclose(got, want, rtol=1e-2, atol=2e-3)
    exact = x @ w.t() + b
    assert (got - exact).norm() / exact.norm() < 0.15


def test_group_sizes_and_the_int8_fallback() -> None:
    assert int4_group(384, 64) == 64 and int4_group(576, 128) == 64 and int4_group(96, 128) == 32
    assert int4_group(48, 64) is None
    w, b = weights(32, 48)
    assert type(quantized(Projection(w, b, "plain"), "int4")) is Int8Projection  # no group divides 48
    packed = Projection(w, b, "plain")
    packed.weight_t = None  # as a oneDNN-packed projection holds it: the weight cannot be read back
    with pytest.raises(ValueError, match="packed layout cannot be quantized"):
        quantized(packed, "int8")


def test_bytes() -> None:
    w, _ = weights(256, 512)
    fp32 = sum(t.numel() * t.element_size() for t in Projection(w, None, "plain").tensors())
    int8 = sum(t.numel() * t.element_size() for t in Int8Projection(w, None).tensors())
    int4 = sum(t.numel() * t.element_size() for t in Int4Projection(w, None, 64).tensors())
    assert int8 == 256 * 512 + 2 * 256  # a byte a weight, a bf16 scale a channel
    assert int4 == 256 * 512 // 2 + (512 // 64) * 256 * 2 * 2  # half a byte, a bf16 scale and zero per 64
    assert int8 / fp32 < 0.26 and int4 / fp32 < 0.15


@pytest.mark.parametrize("arch", ["gpt", "llama"])
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_serving_net_quantizes_its_projections_and_embedding(arch: str, precision: str) -> None:
    torch.manual_seed(0)
    if arch == "gpt":
        model: GPT | Llama = GPT(GPTConfig(300, block_size=32, n_layer=2, n_head=2, n_embd=64))
    else:
        model = Llama(LlamaConfig(300, 32, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, intermediate_size=128))
    fp32, net = serving_net(model), serving_net(model, precision)
    kind = Int4Projection if precision == "int4" else Int8Projection
    for layer in net.layers:
        projections = [v for v in vars(layer).values() if isinstance(v, Projection)]
        assert projections and all(type(p) is kind for p in projections)
        assert all(t.dtype == torch.float32 for k, t in vars(layer).items() if isinstance(t, torch.Tensor))  # norms
    assert type(net.head) is Int8Projection  # the head is int8 at both precisions
    assert isinstance(net.embed, Int8Rows) and net.embed.qweight is net.head.qweight  # tied: held once, in int8
    tokens = torch.tensor([[0, 7, 299]])
    rows, want = net.embed[tokens], fp32.embed[tokens]
    assert rows.dtype == torch.float32 and rows.shape == want.shape
    step = want.abs().amax(-1, keepdim=True) / 127  # each row's int8 step
    assert ((rows - want).abs() <= step / 2 + 1e-3 * step).all()
    assert net.nbytes() < fp32.nbytes() * (0.3 if precision == "int8" else 0.2)


def test_quantize_refuses_what_it_cannot_do() -> None:
    net = serving_net(GPT(GPTConfig(300, block_size=32, n_layer=1, n_head=2, n_embd=32)))
    with pytest.raises(ValueError, match="precision"):
        quantize(net, "int2")
    with pytest.raises(ValueError, match="group size"):
        quantize(net, "int4", 48)


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_adapters_add_their_fp32_products_on_the_quantized_base_row_by_row(precision: str) -> None:
    """Rows of an adapter get the quantized base product plus their own low-rank product in
    fp32; base rows get the quantized product alone, exactly."""
    w, b = weights(96, 64)
    proj = quantized(Projection(w, b, "plain"), precision)
    bank = AdapterBank({"p": (64, 96)}, torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(3)
    a, b_up = torch.randn(4, 64, generator=g), torch.randn(96, 4, generator=g)
    bank.add("a", Adapter(rank=4, alpha=8.0, dropout=0.0, layers={"p": (a, b_up)}))
    x = torch.randn(3, 64)
    rows = torch.tensor([1, 0, 1])
    got = bank.project(proj, "p", x, rows)
    base = proj(x)
    delta = x @ a.t() @ b_up.t() * (8.0 / 4)
    assert torch.equal(got[1], base[1])
    assert torch.allclose(got[[0, 2]], base[[0, 2]] + delta[[0, 2]], atol=1e-5)

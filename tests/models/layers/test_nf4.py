"""models.layers.nf4 and `Nf4Projection`: NF4 projections through bitsandbytes' fused CPU kernel
compute what bitsandbytes' own dequantized weight gives, pad what its tiles need, take half a
byte a weight, and a serving net in nf4 keeps an int8 embedding of its own. Where the CPU has no
AVX512-BF16, the precision is refused with a clear error (and the parity tests skip)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.errors import UnsupportedModel
from models.families.build import serving_net
from models.families.gpt.config import GPTConfig
from models.families.gpt.model import GPT
from models.families.llama.config import LlamaConfig
from models.families.llama.model import Llama
from models.layers import nf4
from models.layers.kv_cache import KVCache
from models.layers.projection import Projection
from models.layers.quantized import ACT, Int8Projection, Int8Rows, Nf4Projection, quantized
from tests.conftest import run_without_compiler

needs_kernel = pytest.mark.skipif(not nf4.available(), reason="bitsandbytes' NF4 CPU kernel needs AVX512-BF16")


def weights(out: int, fan_in: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, fan_in, generator=g) * 0.05, torch.randn(out, generator=g) * 0.01


def reference(w: torch.Tensor) -> torch.Tensor:
    """The weight bitsandbytes' own quantizer and dequantizer give for `w` in NF4, blocks of 64."""
    functional = nf4._bnb().functional
    codes, state = functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
    out: torch.Tensor = functional.dequantize_4bit(codes, state)
    return out


@needs_kernel
@pytest.mark.parametrize(("out", "fan_in"), [(96, 64), (100, 192), (1000, 576)])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_nf4_is_bitsandbytes_dequantized_weight_times_bf16_activations(out: int, fan_in: int, rows: int) -> None:
    w, b = weights(out, fan_in)
    p = Nf4Projection(w, b)
    assert p.padded == out + (-out % 32) and p.scales.shape == (fan_in // 64, p.padded)
    x = torch.randn(rows, fan_in, generator=torch.Generator().manual_seed(rows))
    got = p(x)
    assert got.dtype == torch.float32 and got.shape == (rows, out)
    want = x.to(ACT).float() @ reference(w).t() + b
    # the kernel sums in its own order and hands out bf16: within one bf16 step of the largest
    # output (the rounding, up to half a step, and the order of the sums: 3 of 200 draws of x
    # differed by up to 0.016 at a largest output of 4.2, past the 0.010 once allowed)
    assert torch.allclose(got, want, rtol=1e-2, atol=want.abs().max().item() / 128)
    exact = x @ w.t() + b
    assert (got - exact).norm() / exact.norm() < 0.15
    assert torch.allclose(p(x, gelu=True), F.gelu(got, approximate="tanh"))
    batched = p(x.expand(2, rows, fan_in))  # any leading shape, as the families call it
    assert batched.shape == (2, rows, out) and torch.equal(batched[1], got)


@needs_kernel
def test_bytes_and_the_int8_fallback() -> None:
    w, _ = weights(256, 512)
    fp32 = sum(t.numel() * t.element_size() for t in Projection(w, None, "plain").tensors())
    packed = sum(t.numel() * t.element_size() for t in Nf4Projection(w, None).tensors())
    assert packed == 256 * 512 // 2 + (512 // 64) * 256 * 2  # half a byte a weight, a bf16 absmax per 64
    assert packed / fp32 < 0.14
    w, b = weights(32, 96)  # 96 inputs: not whole blocks of 64
    assert type(quantized(Projection(w, b, "plain"), "nf4")) is Int8Projection


@needs_kernel
@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_a_serving_net_in_nf4(arch: str) -> None:
    """Every projection and the head in NF4; the (tied) embedding in int8 rows of its own."""
    torch.manual_seed(0)
    if arch == "gpt":
        model: GPT | Llama = GPT(GPTConfig(300, block_size=32, n_layer=2, n_head=2, n_embd=64))
    else:
        model = Llama(LlamaConfig(300, 32, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, intermediate_size=128))
    fp32, net = serving_net(model), serving_net(model, "nf4")
    for layer in net.layers:
        projections = [v for v in vars(layer).values() if isinstance(v, Projection)]
        assert projections and all(type(p) is Nf4Projection for p in projections)
    assert type(net.head) is Nf4Projection
    assert isinstance(net.embed, Int8Rows) and net.embed.qweight.dtype == torch.int8
    tokens = torch.tensor([[0, 7, 299]])
    step = fp32.embed[tokens].abs().amax(-1, keepdim=True) / 127
    assert ((net.embed[tokens] - fp32.embed[tokens]).abs() <= step / 2 + 1e-3 * step).all()
    logits = [n.last_logits(tokens, torch.arange(3)[None], KVCache(model.config, 1, n.device, torch.float32), None)
              for n in (fp32, net)]  # fmt: skip
    assert (logits[1] - logits[0]).norm() / logits[0].norm() < 0.2
    assert net.nbytes() < fp32.nbytes() * 0.3  # this small model is mostly its embedding


def test_nf4_is_refused_where_the_kernel_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nf4, "available", lambda: False)
    w, b = weights(64, 64)
    with pytest.raises(UnsupportedModel, match="AVX512-BF16"):
        quantized(Projection(w, b, "plain"), "nf4")


@needs_kernel
def test_the_kernel_runs_on_torch_s_thread_count_in_the_thread_that_loads() -> None:
    """bitsandbytes' kernel takes OpenMP's thread count of the calling thread; a thread torch has
    not set starts at every CPU. Building an NF4 projection sets it to torch's on that thread."""
    import ctypes
    import threading

    omp = ctypes.CDLL("libgomp.so.1")  # torch's OpenMP runtime, already loaded
    before = torch.get_num_threads()
    seen: list[int] = []

    def load() -> None:
        torch.set_num_threads(1)  # torch's count, process-wide; OpenMP's stays per thread
        worker = threading.Thread(
            target=lambda: (Nf4Projection(*weights(64, 64)), seen.append(omp.omp_get_max_threads()))
        )
        worker.start()
        worker.join()

    try:
        load()
    finally:
        torch.set_num_threads(before)
    assert seen == [1]


@needs_kernel
def test_the_c_plus_plus_operator_is_the_python_kernel_and_python_serves_without_a_compiler(tmp_path: Path) -> None:
    """models/layers/nf4_op.cpp is built where a compiler is (here and on CI) and gives bit for bit
    what the Python kernel gives; a process that cannot build it (no compiler) registers the Python
    kernel, says so, and computes the same."""
    w, _ = weights(96, 128)
    codes, absmax, outputs = nf4.pack(w)
    assert nf4.implementation() == ("c++" if shutil.which(os.environ.get("CXX", "c++")) else "python")
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(3))
    for rows in (x[:1], x, x.t().contiguous().t()):  # fp32 and not contiguous: the operator casts
        got = torch.ops.stagecraft.nf4_linear(rows, codes, absmax, outputs)
        assert torch.equal(got, nf4._nf4_linear(rows, codes, absmax, outputs))
    script = (
        "import torch; from models.layers import nf4; from tests.models.layers.test_nf4 import weights; "
        "c, a, n = nf4.pack(weights(96, 128)[0]); x = torch.randn(5, 128, generator=torch.Generator().manual_seed(3)); "
        "print(nf4.implementation(), torch.ops.stagecraft.nf4_linear(x, c, a, n).float().sum().item())"
    )  # fmt: skip
    done = run_without_compiler(script, tmp_path)
    assert "the C++ operator could not be built" in done.stderr
    want = torch.ops.stagecraft.nf4_linear(x, codes, absmax, outputs).float().sum().item()
    assert done.stdout.split() == ["python", str(want)]

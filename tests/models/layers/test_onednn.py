"""models.layers.onednn: `linear` equals `F.linear` in value and in both gradients, and leaves what
oneDNN does not take (bf16 here) to `F.linear`. On every CPU: the switch that keeps Intel's
products on MKL is turned on here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.layers import onednn


@pytest.fixture(autouse=True)
def onednn_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onednn, "ENABLED", True)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_and_its_gradients_equal_f_linear(bias: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 17, 24, requires_grad=True)
    w = torch.randn(40, 24, requires_grad=True)
    b = torch.randn(40, requires_grad=True) if bias else None
    g = torch.randn(3, 17, 40)
    params = [t for t in (x, w, b) if t is not None]
    want = F.linear(x, w, b)
    want_grads = torch.autograd.grad(want, params, g)
    got = onednn.linear(x, w, b)
    got_grads = torch.autograd.grad(got, params, g)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, e in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert onednn.available(x, w) == torch.backends.mkldnn.is_available()


def test_other_dtypes_take_f_linear() -> None:
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    w = torch.randn(5, 8, dtype=torch.bfloat16)
    assert not onednn.available(x, w)
    assert torch.equal(onednn.linear(x, w), F.linear(x, w))


def test_autocast_keeps_its_dtype() -> None:
    x, w = torch.randn(4, 8), torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn.available(x, w)
        assert onednn.linear(x, w).dtype == torch.bfloat16


def test_expanded_gradients_and_strided_inputs() -> None:
    """`.sum()` hands backward a stride-0 gradient; a transposed input is not contiguous."""
    torch.manual_seed(1)
    x = torch.randn(5, 3, 8).transpose(0, 1).requires_grad_()
    w = torch.randn(6, 8, requires_grad=True)
    got = torch.autograd.grad(onednn.linear(x, w).sum(), [x, w])
    want = torch.autograd.grad(F.linear(x, w).sum(), [x, w])
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)

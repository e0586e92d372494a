"""models.training.losses: the objectives equal F.cross_entropy on the model's logits; L1/L2 gradients are exact."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.data.records import Example, parse_record
from models.data.streams import IGNORE, Batch, RecordStream, TextStream
from models.data.tokenizer import Tokenizer
from models.families.gpt.model import GPT
from models.spec import CausalLMLoss, CrossEntropyLoss
from models.training.losses import (
    LOSSES,
    add_regularization_grads,
    causal_lm,
    cross_entropy,
    regularization_term,
    regularized,
)
from models.training.optim import select_trainable
from tests.conftest import corpus_texts, record_objects


def record_batch(tok: Tokenizer, n: int = 8) -> Batch:
    exs = [parse_record(o, i, []) for i, o in enumerate(record_objects(40))]
    stream = RecordStream([e for e in exs if isinstance(e, Example)], tok, 64, seed=0, key="r")
    batch = stream.next_batch(n)
    while not bool((batch.targets == IGNORE).any()):
        batch = stream.next_batch(n)
    # the check is only meaningful with padding and with prompts to mask
    assert bool((batch.targets == IGNORE).any())
    assert int((batch.completion_targets != IGNORE).sum()) < int((batch.targets != IGNORE).sum())
    return batch


def text_batch(tok: Tokenizer) -> Batch:
    return TextStream(corpus_texts(40), tok, 32, seed=0, key="c").next_batch(4)


def reference(model: GPT, idx: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    logits = model(idx)
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, label_smoothing=label_smoothing
    )


def grads(model: GPT) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def check_same_loss_and_grads(model: GPT, ours: Tensor, ref_fn: object) -> None:
    model.zero_grad(set_to_none=True)
    ours.backward()
    g_ours = grads(model)
    model.zero_grad(set_to_none=True)
    ref = ref_fn()  # type: ignore[operator]
    ref.backward()
    g_ref = grads(model)
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert g_ours.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(g_ours[name], g_ref[name], rtol=1e-4, atol=1e-7, msg=name)


def test_causal_lm_equals_reference_on_text(model: GPT, tokenizer: Tokenizer) -> None:
    b = text_batch(tokenizer)
    loss = causal_lm(model, b, CausalLMLoss(type="causal_lm"))
    assert loss.dim() == 0 and 4.0 < float(loss.detach()) < 8.0  # about log(300) for a fresh model
    check_same_loss_and_grads(model, loss, lambda: reference(model, b.idx, b.targets))


def test_causal_lm_scores_every_real_token_of_records(model: GPT, tokenizer: Tokenizer) -> None:
    b = record_batch(tokenizer)
    loss = causal_lm(model, b, CausalLMLoss(type="causal_lm"))
    check_same_loss_and_grads(model, loss, lambda: reference(model, b.idx, b.targets))


def test_cross_entropy_scores_only_completions(model: GPT, tokenizer: Tokenizer) -> None:
    b = record_batch(tokenizer)
    spec = CrossEntropyLoss(type="cross_entropy")
    loss = cross_entropy(model, b, spec)
    check_same_loss_and_grads(model, loss, lambda: reference(model, b.idx, b.completion_targets))
    # and it is not the all-token loss
    assert abs(float(loss.detach()) - float(reference(model, b.idx, b.targets).detach())) > 1e-4


def test_cross_entropy_with_label_smoothing(model: GPT, tokenizer: Tokenizer) -> None:
    b = record_batch(tokenizer)
    spec = CrossEntropyLoss(type="cross_entropy", label_smoothing=0.2)
    loss = cross_entropy(model, b, spec)
    check_same_loss_and_grads(model, loss, lambda: reference(model, b.idx, b.completion_targets, 0.2))
    plain = float(cross_entropy(model, b, CrossEntropyLoss(type="cross_entropy")).detach())
    assert abs(float(loss.detach()) - plain) > 1e-3


def test_cross_entropy_on_text_scores_every_token(model: GPT, tokenizer: Tokenizer) -> None:
    b = text_batch(tokenizer)
    loss = cross_entropy(model, b, CrossEntropyLoss(type="cross_entropy", label_smoothing=0.1))
    torch.testing.assert_close(loss, reference(model, b.idx, b.targets, 0.1), rtol=1e-5, atol=1e-6)


def test_registry() -> None:
    assert {"causal_lm": causal_lm, "cross_entropy": cross_entropy} == LOSSES


# --- regularization ----------------------------------------------------------------------------


def test_regularization_grads_match_autograd(model: GPT, tokenizer: Tokenizer) -> None:
    l1, l2 = 3e-3, 2e-2
    params = select_trainable(model, ["blocks.1", "head"])
    with torch.no_grad():  # put some weights at exactly zero: sign(0) = 0, as autograd's |w| gives
        model.transformer.h[1].mlp.c_fc.weight[0, :5] = 0.0
    b = text_batch(tokenizer)

    causal_lm(model, b, CausalLMLoss(type="causal_lm")).backward()
    before = grads(model)
    add_regularization_grads(model.parameters(), l1, l2)
    after = grads(model)

    # autograd of the penalty over the regularized weights alone
    model.zero_grad(set_to_none=True)
    reg = regularized(model.parameters())
    penalty = sum(l1 * p.abs().sum() + l2 * p.pow(2).sum() for p in reg)
    assert isinstance(penalty, Tensor)
    penalty.backward()
    expected = grads(model)

    names = {id(p): n for n, p in model.named_parameters()}
    reg_names = {names[id(p)] for p in reg}
    assert reg_names == {n for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2}
    assert "transformer.wte.weight" in reg_names
    assert "transformer.h.1.attn.c_attn.weight" in reg_names
    assert not any(n.endswith(".bias") or ".ln_" in n for n in reg_names)
    assert set(after) == set(before) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(id(p) in names for p in params)
    for name in after:
        if name in reg_names:
            torch.testing.assert_close(after[name], before[name] + expected[name], rtol=1e-6, atol=1e-9, msg=name)
            assert not torch.equal(after[name], before[name])
        else:  # biases and norms untouched, bit for bit
            assert torch.equal(after[name], before[name]), name
    torch.testing.assert_close(regularization_term(model.parameters(), l1, l2), penalty.detach())


def test_regularization_skips_frozen_and_gradless_params(model: GPT) -> None:
    select_trainable(model, ["blocks.0"])
    add_regularization_grads(model.parameters(), 0.1, 0.1)  # no grads yet: nothing to add to
    assert all(p.grad is None for p in model.parameters())
    assert {id(p) for p in regularized(model.parameters())} == {
        id(p) for n, p in model.named_parameters() if n.startswith("transformer.h.0.") and p.dim() >= 2
    }


def test_zero_regularization_is_a_no_op(model: GPT, tokenizer: Tokenizer) -> None:
    causal_lm(model, text_batch(tokenizer), CausalLMLoss(type="causal_lm")).backward()
    before = grads(model)
    add_regularization_grads(model.parameters(), 0.0, 0.0)
    after = grads(model)
    assert all(torch.equal(before[n], after[n]) for n in before)

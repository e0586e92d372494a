"""models.training.optim: trainable selection, frozen parameters, optimizers and learning-rate schedules."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from models.data.streams import TextStream
from models.data.tokenizer import Tokenizer
from models.families.gpt.model import GPT
from models.spec import SGD, Adam, Schedule, parse_spec
from models.training.optim import build_optimizer, clipped_step, lr_factor, select_trainable
from models.training.precision import Weights
from models.training.stages import Trainee, plan, train_step
from tests.conftest import corpus_texts, tiny_model

N_LAYER = 3


def names_of(model: GPT, params: list[torch.nn.Parameter]) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def block_names(b: int) -> set[str]:
    pre = f"transformer.h.{b}."
    return {
        pre + s
        for s in (
            "ln_1.weight",
            "ln_1.bias",
            "attn.c_attn.weight",
            "attn.c_attn.bias",
            "attn.c_proj.weight",
            "attn.c_proj.bias",
            "ln_2.weight",
            "ln_2.bias",
            "mlp.c_fc.weight",
            "mlp.c_fc.bias",
            "mlp.c_proj.weight",
            "mlp.c_proj.bias",
        )
    }


def expected(selector: str) -> set[str]:
    blocks = [block_names(b) for b in range(N_LAYER)]
    every = set().union(*blocks) | {"transformer.wte.weight", "transformer.wpe.weight"}
    every |= {"transformer.ln_f.weight", "transformer.ln_f.bias"}
    return {
        "all": every,
        "embeddings": {"transformer.wte.weight", "transformer.wpe.weight"},
        # the output projection is tied to the token embedding: `head` trains it, plus the final norm
        "head": {"transformer.ln_f.weight", "transformer.ln_f.bias", "transformer.wte.weight"},
        "blocks.0": blocks[0],
        "blocks.2": blocks[2],
        "blocks.1-2": blocks[1] | blocks[2],
        "blocks.0-0": blocks[0],
        "attention": {n for n in every if ".attn." in n},
        "mlp": {n for n in every if ".mlp." in n},
        "norms": {n for n in every if ".ln_1." in n or ".ln_2." in n or "ln_f" in n},
    }[selector]


@pytest.fixture
def model3(tokenizer: Tokenizer) -> GPT:
    return tiny_model(tokenizer.vocab_size, n_layer=N_LAYER)


SELECTORS = [
    "all",
    "embeddings",
    "head",
    "blocks.0",
    "blocks.2",
    "blocks.1-2",
    "blocks.0-0",
    "attention",
    "mlp",
    "norms",
]


@pytest.mark.parametrize("selector", SELECTORS)
def test_each_selector_selects_its_parameters(model3: GPT, selector: str) -> None:
    all_names = {n for n, _ in model3.named_parameters()}
    assert all_names == expected("all")  # the documented GPT-2 parameter names
    chosen = select_trainable(model3, [selector])
    assert names_of(model3, chosen) == expected(selector)
    assert {n for n, p in model3.named_parameters() if p.requires_grad} == expected(selector)
    # the attention part holds 4 tensors per block, mlp 4, norms 4 per block + 2
    sizes = {"attention": 4 * N_LAYER, "mlp": 4 * N_LAYER, "norms": 4 * N_LAYER + 2}
    if selector in sizes:
        assert len(chosen) == sizes[selector]


def test_selectors_combine_as_a_union_in_parameter_order(model3: GPT) -> None:
    chosen = select_trainable(model3, ["blocks.2", "head", "embeddings"])
    assert names_of(model3, chosen) == expected("blocks.2") | expected("head") | expected("embeddings")
    order = [n for n, _ in model3.named_parameters()]
    by_id = {id(p): n for n, p in model3.named_parameters()}
    assert [by_id[id(p)] for p in chosen] == [n for n in order if n in names_of(model3, chosen)]
    # a new selection replaces the previous one entirely
    select_trainable(model3, ["mlp"])
    assert {n for n, p in model3.named_parameters() if p.requires_grad} == expected("mlp")


def test_block_numbers_are_not_prefixes(tokenizer: Tokenizer) -> None:
    model = tiny_model(tokenizer.vocab_size, n_layer=12, n_embd=8)
    assert {n.split(".")[2] for n in names_of(model, select_trainable(model, ["blocks.1"]))} == {"1"}
    chosen = names_of(model, select_trainable(model, ["blocks.9-11"]))
    assert {n.split(".")[2] for n in chosen} == {"9", "10", "11"}


# --- frozen parameters through real train steps ---------------------------------------------


def frozen_run(
    spec_dict: Callable[..., dict[str, Any]],
    tokenizer: Tokenizer,
    trainable: list[str],
    master: torch.dtype | None = None,
) -> None:
    raw = spec_dict()
    raw["stages"] = [
        {
            "type": "pretrain",
            "name": "p",
            "data": "corpus",
            "steps": 4,
            "batch_size": 4,
            "loss": {"type": "causal_lm"},
            "optimizer": {"type": "adamw", "lr": 1e-2, "weight_decay": 0.5},
            "regularization": {"l1": 1e-3, "l2": 1e-3},
            "schedule": {"type": "cosine", "warmup_steps": 1},
            "trainable": trainable,
            "grad_clip": 0.5,
        }
    ]
    [seg] = plan(parse_spec(raw).stages)
    model = tiny_model(tokenizer.vocab_size)
    weights = Weights(model, master)  # master=bf16: a bf16 model trained through fp32 masters
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = select_trainable(model, seg.part.base_parts)
    opt_params = weights.optimizer_params(params)
    opt = build_optimizer(seg.part.optimizer, opt_params)
    stream = TextStream(corpus_texts(40), tokenizer, 32, seed=0, key="c")
    for step in range(seg.steps):
        trainee = Trainee(params, opt_params, opt)
        r = train_step(model, weights, trainee, stream, seg, step + 1, 1e-2, contextlib.nullcontext, lambda b: b)
        assert math.isfinite(r.loss) and r.grad_norm > 0 and r.tokens == 4 * 32
    trainable_names = names_of(model, params)
    twins = dict(zip(weights.names, weights.optimizer_params(list(model.parameters())), strict=True))
    in_state = {n for n in weights.names if twins[n] in opt.state}
    assert in_state == trainable_names
    for n, p in model.named_parameters():
        if n in trainable_names:
            assert not torch.equal(p, before[n]), f"{n} did not train"
            assert p.requires_grad
        else:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
            assert not p.requires_grad and p.grad is None


@pytest.mark.parametrize("master", [None, torch.bfloat16], ids=["fp32", "bf16-masters"])
def test_frozen_parameters_do_not_change(
    spec_dict: Callable[..., dict[str, Any]], tokenizer: Tokenizer, master: torch.dtype | None
) -> None:
    frozen_run(spec_dict, tokenizer, ["blocks.1", "head"], master)


@pytest.mark.parametrize("master", [None, torch.bfloat16], ids=["fp32", "bf16-masters"])
def test_frozen_parameters_do_not_change_embeddings_only(
    spec_dict: Callable[..., dict[str, Any]], tokenizer: Tokenizer, master: torch.dtype | None
) -> None:
    frozen_run(spec_dict, tokenizer, ["embeddings", "norms"], master)


def test_weight_decay_only_on_matrices(model: GPT) -> None:
    params = select_trainable(model, ["all"])
    opt = build_optimizer(Adam(type="adamw", lr=1e-3, weight_decay=0.1), params)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(params)
    sgd = build_optimizer(SGD(type="sgd", lr=0.1, momentum=0.9, nesterov=True), select_trainable(model, ["norms"]))
    assert isinstance(sgd, torch.optim.SGD)
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.0]  # norms only: no decay group at all
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9
    adam = build_optimizer(Adam(type="adam", lr=1e-3, betas=(0.8, 0.9), eps=1e-6), params)
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.8, 0.9)


# --- schedules ------------------------------------------------------------------------------------


def sched(type_: str, warmup: int = 0, floor: float = 0.0) -> Schedule:
    return Schedule(type=type_, warmup_steps=warmup, min_lr_ratio=floor)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("schedule", "total", "points"),
    [
        (sched("constant"), 10, {0: 1.0, 5: 1.0, 9: 1.0}),
        (sched("constant", 4, 0.5), 10, {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 9: 1.0}),
        (sched("linear"), 10, {0: 1.0, 5: 0.5, 9: 0.1, 10: 0.0}),
        (sched("linear", 2, 0.1), 12, {0: 0.5, 1: 1.0, 2: 1.0, 7: 1 - 0.9 * 0.5, 11: 1 - 0.9 * 0.9, 12: 0.1, 20: 0.1}),
        (sched("cosine"), 10, {0: 1.0, 5: 0.5, 10: 0.0}),
        (
            sched("cosine", 5, 0.1),
            25,
            {0: 0.2, 4: 1.0, 5: 1.0, 10: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), 15: 0.55, 25: 0.1, 30: 0.1},
        ),
        (sched("cosine", 3, 1.0), 10, {0: 1 / 3, 3: 1.0, 9: 1.0}),
    ],
    ids=["constant", "constant-warmup", "linear", "linear-warmup-floor", "cosine", "cosine-warmup-floor", "floor-1"],
)
def test_schedule_points(schedule: Schedule, total: int, points: dict[int, float]) -> None:
    for step, want in points.items():
        assert lr_factor(schedule, step, total) == pytest.approx(want, abs=1e-12), (schedule, step)


@pytest.mark.parametrize("type_", ["constant", "linear", "cosine"])
def test_schedule_formula_everywhere(type_: str) -> None:
    warmup, total, floor = 4, 30, 0.2
    s = sched(type_, warmup, floor)
    for step in range(total):
        if step < warmup:
            want = (step + 1) / warmup
        elif type_ == "constant":
            want = 1.0
        else:
            progress = (step - warmup) / (total - warmup)
            if type_ == "linear":
                want = 1 - (1 - floor) * progress
            else:
                want = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr_factor(s, step, total) == pytest.approx(want, abs=1e-12), step
    factors = [lr_factor(s, i, total) for i in range(warmup, total)]
    if type_ != "constant":
        assert all(a > b for a, b in itertools.pairwise(factors))  # strictly decaying
        assert min(factors) > floor


def test_warmup_longer_than_the_run(tokenizer: Tokenizer) -> None:
    s = sched("cosine", 100)
    assert [lr_factor(s, i, 10) for i in range(3)] == [0.01, 0.02, 0.03]


def test_master_gradients_are_copied_into_kept_buffers_and_missing_ones_skipped() -> None:
    """bf16 model, fp32 masters: each step's gradients land in the same fp32 buffers (no fresh
    allocation per step), equal to the bf16 gradients; a parameter without a gradient this
    step has none on its master either, so the optimizer leaves it alone."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    weights = Weights(model, torch.bfloat16)
    params = list(model.parameters())
    masters = weights.optimizer_params(params)
    x = torch.randn(2, 4, dtype=torch.bfloat16)
    model(x).square().sum().backward()
    expected = [p.grad.float() for p in params if p.grad is not None]
    weights.gradients_to_optimizer(params, masters)
    assert all(p.grad is None for p in params)
    assert all(m.grad is not None and torch.equal(m.grad, e) for m, e in zip(masters, expected, strict=True))
    buffers = [m.grad.data_ptr() for m in masters if m.grad is not None]
    opt = torch.optim.AdamW(masters, lr=0.1)
    opt.step()
    weights.clear_gradients(opt)
    bias_before = masters[1].detach().clone()
    torch.nn.functional.linear(x, model.weight).square().sum().backward()  # the bias gets no gradient
    weight_grad = model.weight.grad.float()  # type: ignore[union-attr]
    weights.gradients_to_optimizer(params, masters)
    assert masters[0].grad is not None and masters[0].grad.data_ptr() == buffers[0]
    assert torch.equal(masters[0].grad, weight_grad)
    assert masters[1].grad is None
    opt.step()
    assert torch.equal(masters[1], bias_before)


# --- clipping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
        lambda ps: torch.optim.SGD(ps, lr=1e-1, momentum=0.9, fused=True),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True),
    ],
    ids=["adamw-fused", "adam-fused", "sgd-fused", "adamw-foreach"],
)
@pytest.mark.parametrize("max_norm", [0.05, 1e3], ids=["clipped", "under-the-limit"])
def test_clipped_step_equals_torch_clipping(make: Callable[[list[torch.nn.Parameter]], Any], max_norm: float) -> None:
    """A fused optimizer takes the clip factor as its grad_scale; the update equals torch's
    clip_grads_with_norm_ followed by a plain step, over several steps (the factor is reset)."""
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(7, 5, generator=g), torch.randn(5, generator=g)]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    ref = [torch.nn.Parameter(t.clone()) for t in start]
    opt_ours, opt_ref = make(ours), make(ref)
    for step in range(3):
        grads = [torch.randn(t.shape, generator=g) * (step + 1) for t in start]
        for p, q, grad in zip(ours, ref, grads, strict=True):
            p.grad, q.grad = grad.clone(), grad.clone()
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in ours]))
        clipped_step(opt_ours, [p.grad for p in ours], max_norm, norm)
        torch.nn.utils.clip_grads_with_norm_(ref, max_norm, torch.tensor(norm))
        opt_ref.step()
        for p, q in zip(ours, ref, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert getattr(opt_ours, "grad_scale", None) is None
    moved = max(float((p.detach() - t).abs().max()) for p, t in zip(ours, start, strict=True))
    assert moved > 1e-3  # the updates happened


def test_clipped_step_follows_the_groups_setting_after_a_load() -> None:
    """Loading a state dict replaces the groups' `fused`; the factor goes where step() looks."""
    p = torch.nn.Parameter(torch.ones(4))
    saved = torch.optim.AdamW([p], lr=1e-2, foreach=True).state_dict()
    opt = torch.optim.AdamW([p], lr=1e-2, fused=True)
    opt.load_state_dict(saved)  # defaults say fused, the group does not
    p.grad = torch.full((4,), 10.0)
    clipped_step(opt, [p.grad], 1.0, 20.0)
    assert torch.allclose(p.grad, torch.full((4,), 10.0 / (20.0 + 1e-6)))  # clipped by multiplication

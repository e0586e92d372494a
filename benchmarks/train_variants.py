"""The variants train_throughput.py times, all of one shape: ours (a parsed pretrain spec
through `models.training.stages.train_step`), nanoGPT's model and training step (imported from a
checkout at run time, never vendored) and Hugging Face GPT-2, in fp32 or bf16 autocast."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from ours import plan, segment_step

from models.data.streams import Batch
from models.families.gpt.config import GPTConfig
from models.families.gpt.model import GPT
from models.spec import parse_spec

N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH, VOCAB = 6, 6, 384, 256, 8, 8192
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, (0.9, 0.95), 0.1, 1.0
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class Variant:
    name: str
    precision: str
    n_params: int  # without position embeddings
    step: Callable[[], int]  # one optimizer step; returns the tokens it trained on
    samples: list[float] = field(default_factory=list)  # tokens/s, one per pass
    windows: list[dict[str, float]] = field(default_factory=list)
    first_step_s: float | None = None  # includes a torch.compile


class RandomBatches:
    """What train_step needs of a stream: next_batch(batch_size) -> Batch, here cycling a fixed set."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]):
        self.cycle = itertools.cycle(batches)

    def next_batch(self, batch_size: int) -> Batch:
        x, y = next(self.cycle)
        assert x.size(0) == batch_size
        return Batch(x, y, y, x.numel())


def autocast(precision: str) -> contextlib.AbstractContextManager[object]:
    dtype = DTYPES[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)


def build_ours(precision: str, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Variant:
    spec = parse_spec(
        {
            "name": "train-throughput",
            "model": {"n_layer": N_LAYER, "n_head": N_HEAD, "n_embd": N_EMBD, "block_size": BLOCK},
            "tokenizer": {"vocab_size": VOCAB, "train_on": ["random"]},
            "data": {"random": {"dataset": "random-tokens"}},
            "stages": [
                {
                    "type": "pretrain",
                    "name": "pretrain",
                    "data": "random",
                    "steps": 1_000_000,
                    "batch_size": BATCH,
                    "loss": {"type": "causal_lm"},
                    "grad_clip": GRAD_CLIP,
                    "optimizer": {"type": "adamw", "lr": LR, "betas": list(BETAS), "weight_decay": WEIGHT_DECAY},
                }
            ],
            "precision": precision,
            "device": "cpu",
        }
    )
    pipe, seg = plan(spec)
    torch.manual_seed(0)
    model = GPT(GPTConfig(VOCAB, BLOCK, N_LAYER, N_HEAD, N_EMBD))
    step = segment_step(pipe, seg, model, RandomBatches(batches))
    return Variant(f"ours_{precision}", precision, model.num_parameters(include_positions=False), step)


def peer_step(
    model: torch.nn.Module,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    opt: torch.optim.Optimizer,
    precision: str,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> Callable[[], int]:
    """nanoGPT's train.py step: forward under autocast, backward, clip 1.0, AdamW, zero_grad."""
    cycle = itertools.cycle(batches)

    def step() -> int:
        x, y = next(cycle)
        with autocast(precision):
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return x.numel()

    return step


def load_nanogpt(directory: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("nanogpt_model", directory / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_nanogpt(
    nano: ModuleType, precision: str, compile_: bool, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> Variant:
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):  # it prints parameter counts
        cfg = nano.GPTConfig(
            block_size=BLOCK, vocab_size=VOCAB, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, dropout=0.0, bias=True
        )
        model = nano.GPT(cfg).train()
        opt = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, "cpu")
    forward = torch.compile(model) if compile_ else model
    name = f"nanogpt{'_compile' if compile_ else ''}_{precision}"
    step = peer_step(model, lambda x, y: forward(x, y)[1], opt, precision, batches)
    return Variant(name, precision, model.get_num_params(), step)


def build_hf(precision: str, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Variant:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=BLOCK,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    model = GPT2LMHeadModel(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS)
    # HF's own causal-LM loss: labels = inputs, shifted inside the model.
    step = peer_step(model, lambda x, y: model(input_ids=x, labels=x).loss, opt, precision, batches)
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return Variant(f"hf_gpt2_{precision}", precision, n, step)

"""Fixtures shared by the tests of `models`."""

from __future__ import annotations

import pytest
import torch

from models.data.tokenizer import Tokenizer
from models.families.gpt.model import GPT
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def peaked(tokenizer: Tokenizer) -> GPT:
    """A random model with large weights: confident, varied greedy choices (no near-ties)."""
    model = tiny_model(tokenizer.vocab_size, seed=1, block_size=48)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    return model.eval()

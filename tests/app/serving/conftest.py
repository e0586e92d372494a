"""Tiny saved models for the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.data.tokenizer import Tokenizer
from models.formats.native import save_model
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def model_dirs(tokenizer: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two model directories (different seeds), as training saves them."""
    root = tmp_path_factory.mktemp("engine")
    dirs = []
    for seed in range(2):
        model = tiny_model(tokenizer.vocab_size, seed=seed, block_size=64, n_embd=32)
        save_model(root / f"m{seed}", model.state_dict(), model.config, tokenizer, {"name": f"m{seed}"})
        dirs.append(root / f"m{seed}")
    return dirs

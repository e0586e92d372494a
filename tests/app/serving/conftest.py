"""Tiny saved models for the serving tests, and the app in process."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.db import Database
from app.services import auth
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


@pytest.fixture
def api(settings: Settings, database: Database) -> Iterator[TestClient]:
    """The real app in process (lifespan included) over the `database` fixture, with a key of a
    tenant of its own as the default header."""
    name = f"t-{secrets.token_hex(6)}"
    with database.write() as session:
        key = auth.create_key(session, name)
        session.commit()
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client

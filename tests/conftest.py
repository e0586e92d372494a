"""Shared fixtures: small deterministic data, a tiny trained tokenizer, tiny models and specs,
a fresh PostgreSQL database per test session, and a migrated database of either kind.

Everything here is sized for the CPU: 2-layer models with n_embd 32 and block_size 32,
a 300-token BPE vocabulary, a few hundred short documents.
"""

from __future__ import annotations

import copy
import json
import os
import random
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import torch

from app.db import Database
from app.migrate import upgrade
from models.data.tokenizer import Tokenizer
from models.families.gpt.config import GPTConfig
from models.families.gpt.model import GPT

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP threads
# spinning against other processes make steps up to 50x slower. Subprocesses get the same.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

PG_ADMIN = os.environ.get("STAGECRAFT_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_EXAMPLES = REPO_ROOT.parent / "shared" / "examples"
# The event types of docs/api.md (`GET /v1/jobs/{id}/events`).
EVENT_TYPES = {
    "job.queued",
    "job.started",
    "job.restarted",
    "stage.started",
    "train.step",
    "eval",
    "checkpoint.saved",
    "stage.completed",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
}

NAMES = ["Nadia", "Ivan", "Jia", "Hana", "Omar", "Bruno", "Fatima", "Goro", "Emil", "Dara"]
THINGS = ["apples", "lamps", "coins", "maps", "books", "stamps", "tickets"]
PLACES = ["market", "library", "garden", "station", "museum"]
WORDS_FR = {1: "un", 2: "deux", 3: "trois", 4: "quatre", 5: "cinq", 6: "six", 7: "sept", 8: "huit", 9: "neuf"}
WORDS_EN = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def corpus_texts(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        who, what, where = rng.choice(NAMES), rng.choice(THINGS), rng.choice(PLACES)
        k = rng.randint(1, 9)
        out.append(
            f"At the {where}, {who} has {k} {what}, {WORDS_EN[k]} in English and {WORDS_FR[k]} en français."
            + " So it goes." * rng.randint(0, 3)
        )
    return out


def record_objects(n: int = 120, seed: int = 0) -> list[dict[str, Any]]:
    """Supervised records cycling through every supervised format of docs/spec.md (`data`), with varied lengths."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        who, what, where = rng.choice(NAMES), rng.choice(THINGS), rng.choice(PLACES)
        k = rng.randint(1, 9)
        pad = " It was a fine day." * rng.randint(0, 4)
        kind = i % 5
        if kind == 0:
            out.append({"prompt": f"How many {what} does {who} have?{pad}", "completion": f" {k}"})
        elif kind == 1:
            out.append(
                {
                    "messages": [
                        {"role": "system", "content": "Answer briefly."},
                        {"role": "user", "content": f"Say {k} in French.{pad}"},
                        {"role": "assistant", "content": WORDS_FR[k]},
                    ]
                }
            )
        elif kind == 2:
            out.append(
                {
                    "task": "translate",
                    "source": WORDS_EN[k],
                    "target": WORDS_FR[k],
                    "source_lang": "en",
                    "target_lang": "fr",
                }
            )
        elif kind == 3:
            out.append(
                {
                    "task": "qa",
                    "context": f"At the {where}, {who} has {k} {what}.{pad}",
                    "question": f"How many {what} does {who} have?",
                    "answer": str(k),
                }
            )
        else:
            out.append({"task": "summarize", "document": f"At the {where}, {who} has {k} {what}.{pad}", "summary": who})
    return out


def write_jsonl(path: Path, objs: list[Any]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with corpus.txt (text) and pairs.jsonl (supervised records of every format)."""
    d = tmp_path_factory.mktemp("data")
    (d / "corpus.txt").write_text("\n".join(corpus_texts()) + "\n", encoding="utf-8")
    write_jsonl(d / "pairs.jsonl", record_objects())
    return d


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    texts = corpus_texts() + [json.dumps(r) for r in record_objects()]
    return Tokenizer.train(texts, 300)


def tiny_model(vocab_size: int, seed: int = 0, n_layer: int = 2, block_size: int = 32, n_embd: int = 32) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=n_embd))


@pytest.fixture
def model(tokenizer: Tokenizer) -> GPT:
    return tiny_model(tokenizer.vocab_size, block_size=64)


BASE_SPEC: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
    "tokenizer": {"vocab_size": 300, "train_on": ["corpus"]},
    "data": {
        "corpus": {"dataset": "corpus.txt", "validation_fraction": 0.05},
        "pairs": {"dataset": "pairs.jsonl", "validation_fraction": 0.1},
    },
    "stages": [
        {
            "type": "pretrain",
            "name": "pretrain",
            "data": "corpus",
            "steps": 6,
            "batch_size": 4,
            "loss": {"type": "causal_lm"},
            "optimizer": {"type": "adamw", "lr": 3e-3, "weight_decay": 0.1, "betas": [0.9, 0.95]},
            "schedule": {"type": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.1},
            "grad_clip": 1.0,
        },
        {
            "type": "finetune",
            "name": "finetune",
            "data": "pairs",
            "steps": 4,
            "batch_size": 4,
            "loss": {"type": "cross_entropy", "label_smoothing": 0.1},
            "optimizer": {"type": "adam", "lr": 1e-3},
            "schedule": {"type": "constant", "warmup_steps": 1},
            "regularization": {"l2": 1e-4},
            "trainable": ["blocks.1", "head"],
        },
        {
            "type": "multistep",
            "name": "refine",
            "cycles": 2,
            "batch_size": 4,
            "schedule": {"type": "linear", "warmup_steps": 1, "min_lr_ratio": 0.2},
            "phases": [
                {
                    "objective": "pretrain",
                    "data": "corpus",
                    "steps": 3,
                    "loss": {"type": "causal_lm"},
                    "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
                    "trainable": ["embeddings", "norms"],
                },
                {
                    "objective": "finetune",
                    "data": "pairs",
                    "steps": 3,
                    "loss": {"type": "cross_entropy"},
                    "optimizer": {"type": "adamw", "lr": 1e-3},
                    "regularization": {"l1": 1e-6},
                    "trainable": ["blocks.0-1", "head"],
                },
            ],
        },
    ],
    "evaluation": {"every_steps": 10, "metrics": ["loss", "perplexity"], "max_samples": 0},
    "checkpointing": {"every_steps": 4, "keep_last": 2},
    "precision": "fp32",
    "device": "cpu",
}


@pytest.fixture
def spec_dict() -> Callable[..., dict[str, Any]]:
    """A factory of tiny, valid spec dicts: `spec_dict(data_dir=d, **top_level_overrides)`.

    With data_dir, dataset paths become absolute paths into it.
    """

    def make(data_dir: Path | None = None, **overrides: Any) -> dict[str, Any]:
        spec = copy.deepcopy(BASE_SPEC)
        if data_dir is not None:
            for ref in spec["data"].values():
                ref["dataset"] = str(data_dir / ref["dataset"])
        spec.update(copy.deepcopy(overrides))
        return spec

    return make


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    name = f"stagecraft_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A SQLite file, then PostgreSQL: migrated to head, shared by the session's tests (each
    works in a tenant of its own)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'stagecraft.db'}"
    else:
        url = str(request.getfixturevalue("pg_url"))
    upgrade(url)
    db = Database(url)
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A moto S3 server on loopback for the whole session (tests/s3.py); each test makes its own bucket."""
    from tests.s3 import S3Server

    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_log_context() -> Iterator[None]:
    """Each test starts with no log context bound (app/logs.py): a test that runs
    workers.execute.execute directly binds its job's tenant and request id on the test's own
    thread, where run_job's scope would have undone it."""
    import structlog

    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


def run_without_compiler(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`python -c script` from the repository in a process that cannot build C++ extensions (CXX
    names no compiler, a fresh TORCH_EXTENSIONS_DIR): what serving does on a machine without one."""
    env = {**os.environ, "CXX": str(tmp_path / "no-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    return done

"""One adapter spec, trained twice: submitted through the SDK to the production stack (API +
Celery worker on PostgreSQL and Redis), and by `stagecraft train` on this machine. The
service stores the spec with its defaults filled in; both must freeze the base and train
the same adapter, bit for bit."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import torch
import yaml

import stagecraft
from models.data.tokenizer import Tokenizer
from models.formats.layout import MODEL_FILE
from models.formats.native import load_tensors, save_model
from tests.conftest import tiny_model
from tests.system.processes import run_cli
from tests.system.stack import Stack

ADAPTER_FILE = "adapters/tune/adapter_model.safetensors"


def spec(base: str, pairs: str) -> dict[str, Any]:
    """A LoRA finetune of `base` on `pairs`, `trainable` left out: the base must stay frozen."""
    return {
        "name": "parity",
        "seed": 3,
        "model": {"init_from": {"model": base}, "dropout": 0.0},
        "data": {"pairs": {"dataset": pairs, "validation_fraction": 0.1}},
        "stages": [
            {
                "type": "finetune",
                "name": "tune",
                "data": "pairs",
                "steps": 6,
                "batch_size": 4,
                "loss": {"type": "cross_entropy"},
                "optimizer": {"type": "adamw", "lr": 1e-2},
                "adapter": {"type": "lora", "rank": 4, "alpha": 8, "targets": ["attention", "mlp"], "name": "tune"},
            }
        ],
        "evaluation": {"every_steps": 100, "metrics": ["loss"], "max_samples": 0},
        "checkpointing": {"every_steps": 3, "keep_last": 2},
        "precision": "fp32",
        "device": "cpu",
    }


def packed(model_dir: Path) -> Path:
    out = model_dir.parent / "base.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for p in sorted(model_dir.iterdir()):
            t.add(p, f"base/{p.name}")
    out.write_bytes(buf.getvalue())
    return out


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """The names whose tensors differ (all of them if the key sets differ)."""
    if a.keys() != b.keys():
        return sorted(a.keys() ^ b.keys())
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_service_and_cli_train_the_same_adapter_on_a_frozen_base(
    pg_stack: Stack, data_dir: Path, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    base_dir = tmp_path / "base"
    model = tiny_model(tokenizer.vocab_size)
    save_model(base_dir, model.state_dict(), model.config, tokenizer, {"name": "base"})
    start = load_tensors(base_dir / MODEL_FILE)

    # The service, through the SDK.
    with stagecraft.Client(pg_stack.url, pg_stack.key) as client:
        base_id = client.models.upload(packed(base_dir), name="parity-base").id
        pairs_id = client.datasets.upload(data_dir / "pairs.jsonl").id
        job = client.jobs.create(spec(base_id, pairs_id))
        assert job.spec["stages"][0]["trainable"] is None  # stored with defaults: null, not [all]
        done = client.jobs.wait(job.id, timeout=300)
    assert done.status == "succeeded", done.error
    served = Path(pg_stack.env["STAGECRAFT_DATA_DIR"]) / "jobs" / job.id / "model"

    # The same spec on this machine, with the same files.
    local = tmp_path / "local"
    local.mkdir()
    (local / "pairs.jsonl").write_bytes((data_dir / "pairs.jsonl").read_bytes())
    (local / "spec.yaml").write_text(yaml.safe_dump(spec(str(base_dir), "pairs.jsonl")))
    trained = run_cli("train", str(local / "spec.yaml"), "--out", str(local / "run"), env=pg_stack.env, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    cli = local / "run" / "model"

    for model_dir in (served, cli):
        assert not (model_dir / "base").exists(), model_dir  # no base weight trained
        merged = load_tensors(model_dir / MODEL_FILE)
        moved = set(equal(start, merged))
        assert moved and all(".attn." in k or ".mlp." in k for k in moved), sorted(moved)  # adapted only
    assert equal(load_tensors(served / ADAPTER_FILE), load_tensors(cli / ADAPTER_FILE)) == []
    assert equal(load_tensors(served / MODEL_FILE), load_tensors(cli / MODEL_FILE)) == []
    with pg_stack.api() as api:
        models = api.http.get("/v1/models", params={"limit": 100}).json()["data"]
    [adapter] = [m for m in models if m["job_id"] == job.id and m["base"] is not None]
    assert adapter["base"] == base_id  # its base is the init_from model, untouched

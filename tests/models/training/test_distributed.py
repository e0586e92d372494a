"""Jobs of several processes (models.training.launch.run_processes): 2 processes under
torchrun with gloo on the CPU, DDP and FSDP2, against the same job in one process.

The tolerance: a 2-process job takes the 1-process update on the same global batch up to
floating-point reassociation (models/training/distributed.py), so over the 22 steps of
BASE_SPEC (three stage types, phases that change the trainable parts and the optimizer)
every step's loss agrees to LOSS_RTOL relative and the final weights to WEIGHT_ATOL (the
observed differences: about 2e-7 and 4e-6). Resuming a 2-process job is bitwise exact.
Each job starts torchrun (a few seconds: two fresh interpreters import torch).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from models.errors import SpecError, Stopped, TrainingError
from models.events import Event
from models.formats.layout import MODEL_FILE
from models.formats.load import load_model
from models.formats.native import load_tensors
from models.lora import layers as lora
from models.spec import JobSpec, parse_spec
from models.training import checkpoint
from models.training.export import save_checkpoint_model
from models.training.launch import _signalled, run_processes
from models.training.rank import CRASH_ENV
from tests.conftest import BASE_SPEC
from tests.models.training.test_lora_train import base_dir, lora_spec_dict  # noqa: F401 (a fixture)
from tests.models.training.test_pipeline import Run, assert_same_weights, final_tensors, train

LOSS_RTOL = 2e-4
WEIGHT_ATOL = 1e-3
TOTAL = 22
LLAMA = {"arch": "llama", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32, "block_size": 32}


def spec_of(data_dir: Path, first_steps: int | None = None, **resources: Any) -> JobSpec:
    """BASE_SPEC on `data_dir`'s data in `resources`; `first_steps`: its first stage's steps instead."""
    raw = copy.deepcopy(BASE_SPEC)
    if first_steps is not None:
        raw["stages"][0]["steps"] = first_steps
    for ref in raw["data"].values():
        ref["dataset"] = str(data_dir / ref["dataset"])
    raw["resources"] = resources
    return parse_spec(raw)


def launch(spec: JobSpec, workdir: Path, **kwargs: Any) -> Run:
    """run_processes, its events kept; a Stopped job's step in `stopped_at`."""
    out = Run(workdir, [])
    try:
        out.result = run_processes(spec, workdir, on_event=out.events.append, **kwargs)
    except Stopped as exc:
        out.stopped_at = exc.step
    return out


def losses(r: Run) -> dict[int, float]:
    return {e["step"]: e["data"]["loss"] for e in r.events if e["type"] == "train.step"}


def assert_close_to(r: Run, single: Run) -> None:
    """Per-step losses and final weights of `r` within the tolerance of the 1-process run's."""
    got, want = losses(r), losses(single)
    assert list(got) == list(want) == list(range(1, TOTAL + 1))
    worst = max(abs(got[s] - want[s]) / abs(want[s]) for s in want)
    assert worst <= LOSS_RTOL, worst
    a, b = final_tensors(r.workdir), final_tensors(single.workdir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=WEIGHT_ATOL)
    kinds = [(e["type"], e["step"]) for e in single.events if e["type"] != "train.step"]
    assert [(e["type"], e["step"]) for e in r.events if e["type"] != "train.step"] == kinds


@pytest.fixture(scope="module")
def single(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    r = train(spec_of(data_dir), tmp_path_factory.mktemp("single"))
    assert r.result is not None
    return r


@pytest.fixture(scope="module")
def ddp(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    r = launch(spec_of(data_dir, processes=2), tmp_path_factory.mktemp("ddp"))
    assert r.result is not None
    return r


@pytest.fixture(scope="module")
def fsdp(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    r = launch(spec_of(data_dir, processes=2, sharding="fsdp"), tmp_path_factory.mktemp("fsdp"))
    assert r.result is not None
    return r


def test_ddp_takes_the_one_process_updates(ddp: Run, single: Run) -> None:
    assert ddp.result is not None and ddp.result.steps == TOTAL
    assert ddp.result.model_dir == ddp.workdir / "model"
    assert_close_to(ddp, single)
    last = checkpoint.list_checkpoints(ddp.workdir / "checkpoints")[-1]
    tensors = load_tensors(last / "tensors.safetensors")
    assert "rng/torch" in tensors and "rng/rank1/torch" in tensors  # each rank's random state
    assert not torch.equal(tensors["rng/torch"], tensors["rng/rank1/torch"])
    assert not (last / checkpoint.SHARDS).exists()


def test_fsdp_takes_the_one_process_updates_and_writes_sharded_checkpoints(
    fsdp: Run, ddp: Run, single: Run, tmp_path: Path
) -> None:
    assert_close_to(fsdp, single)
    model, _ = load_model(fsdp.workdir / "model")  # the final model: the usual folder
    assert model.config.n_layer == 2
    last = checkpoint.list_checkpoints(fsdp.workdir / "checkpoints")[-1]
    assert sorted(p.name for p in (last / checkpoint.SHARDS).glob("*.safetensors")) == [
        "shard-00001-model-00001-of-00001.safetensors",
        "shard-00002-model-00001-of-00001.safetensors",
    ]
    tensors = load_tensors(last / "tensors.safetensors")
    assert not any(k.startswith("model/") for k in tensors)  # the weights are in the shards
    # a sharded checkpoint exports (serves) as a model, read whole in one process
    save_checkpoint_model(last, fsdp.workdir / "tokenizer", tmp_path / "export", {"name": "x"})
    exported = load_tensors(tmp_path / "export" / MODEL_FILE)
    unsharded = checkpoint.load_checkpoint(ddp.workdir / "checkpoints" / last.name)[0]
    for k, v in exported.items():
        torch.testing.assert_close(v, unsharded[f"model/{k}"], rtol=0, atol=WEIGHT_ATOL)


@pytest.mark.parametrize("sharding", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_a_resumed_job_ends_bitwise_as_an_uninterrupted_one(
    sharding: str, data_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Stopped deterministically right after the checkpoint at step 4: its publish (rank 0
    waits for it) asks to stop and holds until the parent has passed that on."""
    uninterrupted: Run = request.getfixturevalue(sharding)
    spec = spec_of(data_dir, processes=2, sharding=sharding)
    stop = {"now": False}

    def publish(staged: Path, final: Path, event: Event) -> None:
        checkpoint.publish_checkpoint(staged, final.parent, event["step"], spec.checkpointing.keep_last)
        stop["now"] = True
        time.sleep(0.6)  # (the parent polls should_stop every 0.2 s)

    staging = tmp_path / "staging"
    first = launch(spec, tmp_path, should_stop=lambda: stop["now"], publish=publish, staging=staging)
    assert first.stopped_at == 4
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == ["step-000000004"]
    second = launch(spec, tmp_path, resume=True)
    assert second.result is not None and second.result.steps == TOTAL
    want = losses(uninterrupted)
    assert losses(second) == {s: want[s] for s in range(5, TOTAL + 1)}
    assert second.events[0]["type"] == "job.restarted" and second.events[0]["data"]["from_step"] == 4
    assert_same_weights(uninterrupted.workdir, tmp_path)


def test_a_cancel_stops_every_process_within_one_step(data_dir: Path, tmp_path: Path) -> None:
    """Every rank stops after the step under way when the stop reaches rank 0 (the parent
    sends it as should_stop answers True; it may yet be on its way while one more step
    begins), all of them at the same step, checkpointed."""
    asked: list[float] = []

    def should_stop() -> bool:
        if not asked and any(e["type"] == "train.step" for e in r.events):
            asked.append(time.time())
        return bool(asked)

    r = Run(tmp_path, [])
    spec = spec_of(data_dir, first_steps=400, processes=2)  # long enough that no machine ends it first
    with pytest.raises(Stopped) as stopped:
        run_processes(spec, tmp_path, on_event=r.events.append, should_stop=should_stop)
    after = [e for e in r.events if e["type"] == "train.step" and _time(e) > asked[0]]
    assert len(after) <= 2, after
    assert stopped.value.step < 400
    assert checkpoint.list_checkpoints(tmp_path / "checkpoints")[-1].name == f"step-{stopped.value.step:09d}"


def _time(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The folder run_processes makes its control folder in: its processes name it."""
    folder = Path(tempfile.mkdtemp(prefix="sc-"))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_crashed_process_fails_the_job_and_leaves_no_process(
    data_dir: Path, tmp_path: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CRASH_ENV, "1:3")
    with pytest.raises(TrainingError) as failed:
        launch(spec_of(data_dir, processes=2), tmp_path)
    assert failed.value.code == "system_error"
    assert str(failed.value).startswith("rank 1 failed:") and "RuntimeError" in str(failed.value)
    assert _processes_naming(short_tmp) == []


def _processes_naming(folder: Path) -> list[str]:
    """The running processes whose command line names `folder` (zombies are gone already)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(folder) in cmdline and state != "Z":
            found.append(cmdline)
    return found


def llama_spec(data_dir: Path, **resources: Any) -> JobSpec:
    raw = spec_of(data_dir, **resources).model_dump(mode="json")
    raw["model"] = {**LLAMA, "tie_embeddings": False}
    return parse_spec(raw)


@pytest.fixture(scope="module")
def single_llama(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return train(llama_spec(data_dir), tmp_path_factory.mktemp("single-llama"))


@pytest.mark.parametrize("sharding", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_a_llama_job_of_two_processes(sharding: str, data_dir: Path, single_llama: Run, tmp_path: Path) -> None:
    two = launch(llama_spec(data_dir, processes=2, sharding=sharding), tmp_path)
    assert_close_to(two, single_llama)


@pytest.mark.parametrize("sharding", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_a_lora_job_of_two_processes_trains_only_its_adapters(
    sharding: str,
    data_dir: Path,
    base_dir: Path,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    raw = lora_spec_dict(data_dir, base_dir)
    raw["resources"] = {"processes": 2, "sharding": sharding}
    r = launch(parse_spec(raw), tmp_path)
    assert r.result is not None and r.result.steps == 19
    base, merged = load_tensors(base_dir / MODEL_FILE), load_tensors(tmp_path / "model" / MODEL_FILE)
    adapted = {f"{path}.weight" for a in ("tune", "alpha", "beta", "shared") for path in _layers(tmp_path, a)}
    for k in base:  # only the adapted matrices differ from the base, which stayed frozen
        assert torch.equal(base[k], merged[k]) == (k not in adapted), k
    tensors, state = checkpoint.load_checkpoint(checkpoint.list_checkpoints(tmp_path / "checkpoints")[-1])
    assert state["base"] == "rebuilt" and all(lora.is_adapter_param(k) for k in tensors if k.startswith("model/"))


def _layers(workdir: Path, adapter: str) -> list[str]:
    from models.formats.peft import load_adapter

    return list(load_adapter(workdir / "model" / "adapters" / adapter).adapter.layers)


def test_run_processes_refuses_what_run_refuses_before_starting_anything(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "spec.json").write_text("{}")
    with pytest.raises(TrainingError, match="already holds a run"):
        run_processes(spec_of(data_dir, processes=2), tmp_path)
    with pytest.raises(SpecError, match=r"stages\.0\.batch_size: 4 rows cannot be split over 8 processes"):
        spec_of(data_dir, processes=8)


def test_a_rank_a_signal_killed_is_read_from_torchruns_summary() -> None:
    """(A process killed outright, out of memory say, records nothing itself.)"""
    summary = """
Failures:
[1]:
  time      : 2026-12-06_17:13:31
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 7277)  (SIGTERM)
  error_file: <N/A>
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-06_17:13:31
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 7278)  (SIGKILL)
"""
    assert _signalled(summary) == [(0, -15), (1, -9)]

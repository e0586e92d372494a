"""workers.execute in process, on SQLite and PostgreSQL: a delivery claims the job, runs a
two-step spec through the real pipeline, reports its events, metrics and checkpoints, and
finishes the row; a second delivery of the same job finds nothing to claim."""

from __future__ import annotations

import hashlib
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.config import Settings
from app.db import Database
from app.queue.wakeups import Publisher
from app.services import auth, catalog, datasets, deletion, events, jobs, lifecycle, metrics, quotas
from app.tables import Job
from workers.execute import execute


def two_step_spec(spec_dict: Callable[..., dict[str, Any]], ids: dict[str, str]) -> dict[str, Any]:
    """The tiny spec of tests/conftest.py cut to a pretrain step and a finetune step."""
    spec = spec_dict(checkpointing={"every_steps": 1, "keep_last": 2})
    spec["stages"] = [dict(spec["stages"][0], steps=1), dict(spec["stages"][1], steps=1)]
    for name, ref in spec["data"].items():
        ref["dataset"] = ids[name]
    return spec


def upload(database: Database, settings: Settings, tenant_id: str, source: Path) -> str:
    incoming = datasets.incoming_path(settings, tenant_id)
    shutil.copy(source, incoming)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with database.write() as session:
        ds = datasets.register(session, settings, tenant_id, incoming, source.name, source.name, digest)
        session.commit()
        return ds.id


def test_execute_runs_a_two_step_job_to_its_model(
    database: Database, tmp_path: Path, data_dir: Path, spec_dict: Callable[..., dict[str, Any]]
) -> None:
    url = database.engine.url.render_as_string(hide_password=False)
    settings = Settings(data_dir=tmp_path / "data", database_url=url, event_flush_s=0.05, cancel_poll_s=0.05)
    with database.write() as session:
        tenant_id = auth.get_or_create_tenant(session, f"t-{secrets.token_hex(6)}").id
        session.commit()
    ids = {name: upload(database, settings, tenant_id, data_dir / f"{name}.{ext}")
           for name, ext in (("corpus", "txt"), ("pairs", "jsonl"))}  # fmt: skip
    with database.write() as session:
        job, created = jobs.submit(session, settings, tenant_id, two_step_spec(spec_dict, ids), None)
        session.commit()
    assert created and job.total_steps == 2

    execute(database, settings, Publisher(None), job.id, "worker-1")

    with database.read() as session:
        row = session.get_one(Job, job.id)
        assert (row.status, row.step, row.attempt, row.lease_owner) == ("succeeded", 2, 1, None)
        assert row.stage_name == "finetune" and row.finished_at is not None
        found = events.after(session, job.id, 0, 1000)
        model = catalog.get(session, tenant_id, str(row.model_id))
        series = metrics.series(session, job.id)
        kept = metrics.checkpoints(session, job.id)
    types = [e.type for e in found]
    assert types[:2] == ["job.queued", "job.started"] and types[-1] == "job.succeeded"
    assert types.count("train.step") == 2 and types.count("stage.completed") == 2
    assert [e.seq for e in found] == list(range(1, len(found) + 1))
    assert found[-1].data["model_id"] == model.id and model.steps == 2
    assert [step for step, _ in series["train.loss"]] == [1, 2]
    assert [c.step for c in kept] == [1, 2]  # every_steps 1, keep_last 2
    saved = [e for e in found if e.type == "checkpoint.saved"]
    assert {e.data["checkpoint_id"] for e in saved} == {c.id for c in kept}
    assert all(not Path(e.data["path"]).is_absolute() for e in saved)  # relative to the data directory
    assert (settings.data_dir / model.path / "model.safetensors").is_file()
    on_disk = sum(p.stat().st_size for p in jobs.workdir(settings, job.id).rglob("*") if p.is_file())
    with database.read() as session:  # the tenant's storage counts the job's checkpoints and model
        datasets_bytes = sum(ds.bytes for ds in datasets.list_page(session, tenant_id, 100, None)[0])
        assert on_disk > 0 and quotas.storage_used(session, settings, tenant_id) == datasets_bytes + on_disk

    execute(database, settings, Publisher(None), job.id, "worker-2")  # a duplicate delivery
    with database.read() as session:
        assert session.get_one(Job, job.id).last_seq == found[-1].seq


def test_execute_defers_a_job_whose_tenant_runs_its_most(database: Database, tmp_path: Path) -> None:
    """tenant_max_running_jobs: the delivery leaves the job queued, asks for a later wake-up
    and returns at once (the worker is free for another tenant's job)."""
    url = database.engine.url.render_as_string(hide_password=False)
    settings = Settings(data_dir=tmp_path / "data", database_url=url, tenant_max_running_jobs=1)
    with database.write() as session:
        tenant_id = auth.get_or_create_tenant(session, f"t-{secrets.token_hex(6)}").id
        running, _ = lifecycle.create(session, tenant_id, "a", {"name": "a"}, {}, 10, None)
        waiting, _ = lifecycle.create(session, tenant_id, "b", {"name": "b"}, {}, 10, None)
        session.flush()
        assert isinstance(lifecycle.claim(session, running.id, "elsewhere", 30.0), lifecycle.Claim)
        session.commit()
    deferred: list[str] = []
    execute(database, settings, Publisher(None), waiting.id, "worker-1", defer=deferred.append)
    assert deferred == [waiting.id]
    with database.read() as session:
        row = session.get_one(Job, waiting.id)
        assert (row.status, row.attempt, row.lease_owner) == ("queued", 0, None)


def test_a_jobs_adapters_become_models_of_a_base_of_their_own(
    database: Database, tmp_path: Path, data_dir: Path, spec_dict: Callable[..., dict[str, Any]]
) -> None:
    """Each stage trains its own adapter on a from-scratch base: the base (model/base) and
    each adapter get rows, the adapters naming that base; an adapter loads (as init_from
    does) as its base merged with it; the job's model is the base with both merged."""
    import torch

    from models.formats.load import load_model
    from models.formats.peft import load_adapter, merge_adapter

    url = database.engine.url.render_as_string(hide_password=False)
    settings = Settings(data_dir=tmp_path / "data", database_url=url, event_flush_s=0.05, cancel_poll_s=0.05)
    with database.write() as session:
        tenant_id = auth.get_or_create_tenant(session, f"t-{secrets.token_hex(6)}").id
        session.commit()
    ids = {name: upload(database, settings, tenant_id, data_dir / f"{name}.{ext}")
           for name, ext in (("corpus", "txt"), ("pairs", "jsonl"))}  # fmt: skip
    spec = two_step_spec(spec_dict, ids)
    for stage in spec["stages"]:
        stage["adapter"] = {"type": "lora", "rank": 2, "alpha": 4, "targets": ["attention"]}
    with database.write() as session:
        job, _ = jobs.submit(session, settings, tenant_id, spec, None)
        session.commit()
    execute(database, settings, Publisher(None), job.id, "worker-1")
    with database.read() as session:
        row = session.get_one(Job, job.id)
        assert row.status == "succeeded", row.error
        infos = [catalog.describe(session, settings, m) for m in catalog.list_page(session, tenant_id, 100, None)[0]]
        served = {i.id: catalog.serving(session, settings, tenant_id, i.id) for i in infos}
    adapters = [i for i in infos if i.adapter is not None]
    [base] = [i for i in infos if i.name.endswith("(base of its adapters)")]
    assert len(adapters) == 2 and {a.base for a in adapters} == {base.id}
    assert all(a.job_id == job.id and a.source == "job" and a.config == base.config for a in adapters)
    base_model, _ = load_model(served[base.id][0])
    idx = torch.randint(0, base_model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    for a in adapters:
        base_dir, adapter_dir = served[a.id]
        assert base_dir == served[base.id][0] and adapter_dir is not None
        want = load_model(base_dir)[0]
        merge_adapter(want, load_adapter(adapter_dir).adapter)
        got = load_model(adapter_dir)[0]  # init_from an adapter: the base with it merged
        with torch.no_grad():
            torch.testing.assert_close(got.eval()(idx), want.eval()(idx))
            assert not torch.allclose(got(idx), base_model.eval()(idx))
        merge_adapter(base_model, load_adapter(adapter_dir).adapter)
    [job_model] = [i for i in infos if i.job_id == job.id and i.adapter is None]
    with torch.no_grad():
        final = load_model(served[job_model.id][0])[0].eval()(idx)
        torch.testing.assert_close(final, base_model(idx), rtol=1e-4, atol=1e-5)
    with database.write() as session:  # deleting the job takes its adapters and their base along
        deletion.delete_job(session, settings, tenant_id, job.id)
        session.commit()
        assert catalog.list_page(session, tenant_id, 100, None)[0] == []

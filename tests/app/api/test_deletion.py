"""DELETE /v1/jobs/{id} and /v1/models/{id}: rows and files go (exports included), other
tenants' objects stay, another tenant's delete is a 404, unfinished jobs and models an
unfinished job starts from are 409."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from app.config import Settings
from app.db import Database
from app.services import lifecycle
from app.tables import Checkpoint, Job, JobEvent, Model
from tests.app.api.conftest import Client, archive, error, upload

Tenant = Callable[[], tuple[dict[str, str], str]]


def files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_deleting_a_model_removes_its_files_and_exports(
    client: Client, new_tenant: Tenant, settings: Settings, model_dir: Path, tmp_path: Path
) -> None:
    other, _ = new_tenant()
    mine = upload(client, archive(model_dir, tmp_path)).json()["id"]
    theirs = upload(client, archive(model_dir, tmp_path), headers=other).json()["id"]
    assert client.get(f"/v1/models/{mine}/export").status_code == 200
    assert client.get(f"/v1/models/{theirs}/export", headers=other).status_code == 200
    before = files(settings.data_dir)
    error(client.delete(f"/v1/models/{theirs}"), 404, "not_found")
    assert files(settings.data_dir) == before
    r = client.delete(f"/v1/models/{mine}")
    assert r.status_code == 200 and r.json() == {"id": mine, "object": "model", "deleted": True}, r.text
    gone = before - files(settings.data_dir)
    assert gone and all(mine in str(p) for p in gone), gone
    assert not any(mine in str(p) for p in files(settings.data_dir))
    assert any(str(p).endswith(".tar.gz") for p in gone), "the export archive stayed"
    error(client.get(f"/v1/models/{mine}"), 404, "not_found")
    assert client.get(f"/v1/models/{theirs}", headers=other).status_code == 200


def test_a_model_an_unfinished_job_starts_from_is_409(
    client: Client, database: Database, model_dir: Path, tmp_path: Path
) -> None:
    model_id = upload(client, archive(model_dir, tmp_path)).json()["id"]
    with database.write() as session:
        spec = {"name": "j", "model": {"init_from": {"model": model_id}}}
        lifecycle.create(session, client.tenant_id, "j", spec, {}, 10, None)
        session.commit()
    error(client.delete(f"/v1/models/{model_id}"), 409, "in_use")


def finished_job(database: Database, settings: Settings, tenant_id: str) -> tuple[str, Path]:
    """A job that ended, with a workdir, a checkpoint and a model on disk (rows as a worker leaves them)."""
    with database.write() as session:
        job, _ = lifecycle.create(session, tenant_id, "j", {"name": "j"}, {}, 10, None)
        session.commit()
        workdir = settings.jobs_dir / job.id
        (workdir / "checkpoints" / "step-5").mkdir(parents=True)
        (workdir / "checkpoints" / "step-5" / "tensors.safetensors").write_bytes(b"x" * 100)
        (workdir / "model").mkdir()
        (workdir / "model" / "model.safetensors").write_bytes(b"y" * 100)
        session.add(Checkpoint(id=f"ckpt_{job.id[4:]}", job_id=job.id, step=5, stage_name="s",
                               path=f"jobs/{job.id}/checkpoints/step-5", metrics={}))  # fmt: skip
        model = Model(id=f"model_{job.id[4:]}", tenant_id=tenant_id, job_id=job.id, name="j",
                      path=f"jobs/{job.id}/model", parameters=1, steps=10, evaluation={})  # fmt: skip
        session.add(model)
        row = session.get_one(Job, job.id)
        row.status, row.model_id = "succeeded", model.id
        session.commit()
        return job.id, workdir


def test_deleting_a_job_removes_everything_it_made(
    client: Client, new_tenant: Tenant, database: Database, settings: Settings
) -> None:
    other, other_tenant = new_tenant()
    with database.write() as session:
        running, _ = lifecycle.create(session, client.tenant_id, "r", {"name": "r"}, {}, 10, None)
        session.commit()
    error(client.delete(f"/v1/jobs/{running.id}"), 409, "job_active")
    mine, workdir = finished_job(database, settings, client.tenant_id)
    theirs, their_dir = finished_job(database, settings, other_tenant)
    error(client.delete(f"/v1/jobs/{theirs}"), 404, "not_found")
    r = client.delete(f"/v1/jobs/{mine}")
    assert r.status_code == 200 and r.json()["deleted"] is True, r.text
    assert not workdir.exists() and files(their_dir)
    error(client.get(f"/v1/jobs/{mine}"), 404, "not_found")
    with database.read() as session:
        for table in (JobEvent, Checkpoint, Model):
            assert session.scalar(select(func.count()).select_from(table).where(table.job_id == mine)) == 0
            assert (session.scalar(select(func.count()).select_from(table).where(table.job_id == theirs)) or 0) > 0
    assert client.get(f"/v1/jobs/{theirs}", headers=other).status_code == 200

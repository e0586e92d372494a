"""Claim a job, run the pipeline with the JobRun callbacks, and finish the row. Every change
of the job's state is a call to app.services.lifecycle.

The job's folder holds only what its row vouches for: at each claim, checkpoint folders
without a row (a crash between their move and its commit) and other attempts' staging
folders are removed, so the run resumes from the newest registered checkpoint. This
attempt writes checkpoints and its model under `staging/attempt-N/`; they move into
place only in a transaction that still holds the lease (JobRun.publish, `_finish`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.exceptions import Reject
from sqlalchemy.orm import Session

from app import logs
from app.config import Settings
from app.db import Database
from app.errors import LeaseLost
from app.outage import OutageLog, unreachable
from app.queue.wakeups import Publisher
from app.services import catalog, events, jobs, lifecycle, metrics
from app.services.reporting import ReportSinks
from app.storage import ArtifactCorrupt, ArtifactMissing, StorageError, get_store, key_of
from app.tables import Job
from models.errors import StagecraftError, Stopped
from models.events import make
from models.spec import parse_spec
from models.training.checkpoint import list_checkpoints
from models.training.launch import run_processes
from models.training.run import RunResult, run
from workers import meter
from workers.reporter import SHUTDOWN, JobRun

log = logging.getLogger(__name__)


def execute(
    db: Database, settings: Settings, publisher: Publisher, job_id: str, worker: str,
    defer: Callable[[str], object] = lambda job_id: None,
) -> None:  # fmt: skip
    """Run the job if this delivery wins the claim.

    When the worker is asked to stop, the job is checkpointed and handed back to the queue
    without a new message (this worker would take it again): the reaper of the next worker
    to start, or of another running one, sends it. When the job's tenant already runs its
    most jobs (tenant_max_running_jobs), the job stays queued and `defer(job_id)` sends its
    wake-up again later; this worker is free for other tenants' jobs at once.
    """
    if SHUTDOWN.is_set():  # a delivery that arrived while this worker stops: leave the job to the next
        raise Reject("worker shutting down", requeue=True)
    owner = f"{worker}:{job_id[-6:]}"
    workdir = jobs.workdir(settings, job_id)
    restart = False
    with db.write() as session:
        claim = lifecycle.claim(session, job_id, owner, settings.lease_s, settings.tenant_max_running_jobs)
        if isinstance(claim, lifecycle.TenantBusy):
            session.commit()
            log.info("job %s: its tenant runs %d jobs, its most; sent again later", job_id, claim.running)
            defer(job_id)
            return
        session.commit()
    if claim is None:
        log.info("job %s: not claimable (already taken, finished or unknown); dropping this delivery", job_id)
        return
    logs.bind(tenant=claim.tenant_id, request_id=claim.request_id)  # the request that created the job
    result: RunResult | None = None
    error: tuple[str, str] | None = None
    crash: Exception | None = None
    stopped = False
    try:
        restart = _restore_point(db, settings, job_id, workdir, claim.attempt)
    except StorageError as exc:  # the store is down or refuses us: fail now, clearly, rather than hang
        error = (exc.code, str(exc))
    spec = parse_spec(claim.spec)
    job_run = JobRun(db, settings, claim, publisher, spec.checkpointing.keep_last)
    sinks = ReportSinks.for_job(settings, spec, job_id, workdir)  # report_to: TensorBoard, MLflow, W&B
    job_run.on_event = sinks.wrap(job_run.on_event)  # type: ignore[method-assign,assignment]
    job_run.on_event(make("job.started", 0, {"attempt": claim.attempt, "worker": worker}))
    if restart:
        job_run.on_event(make("job.restarted", 0, {"from_step": 0, "checkpoint": None}))
    job_run.start()
    log.info("job %s: attempt %d on %s", job_id, claim.attempt, worker)
    try:
        if error is None:  # processes > 1: under torchrun, supervised from here (models/training/launch.py)
            launch = run_processes if spec.resources.processes > 1 else run
            result = launch(spec, workdir, **_callbacks(job_run, workdir, claim.attempt))
            _store_model(settings, result, workdir)  # stored before the transaction that registers it
    except Stopped:
        stopped = True
    except LeaseLost:
        job_run.lost.set()
    except StagecraftError as exc:
        result, error = None, (exc.code, str(exc))
    except Exception as exc:
        result, crash = None, exc
        error = ("system_error", f"{type(exc).__name__}: {exc}")
    job_run.close()
    sinks.close("job.succeeded" if result is not None else "job.failed" if error is not None else None)
    if job_run.lost.is_set():
        # A stalled worker that lost its job may also have crashed on the new owner clearing
        # its staging folder: that is the loss showing, not a failure of the job.
        log.warning("job %s: lease lost to another worker; stopping quietly", job_id)
        meter.TALLY.add("lease_losses")
        return
    if crash is not None:
        log.error("job %s failed", job_id, exc_info=crash)

    def finish(session: Session) -> tuple[bool, str]:
        if result is not None:
            if not lifecycle.renew(session, claim, settings.lease_s):  # locks the row: the model is ours
                return False, ""
            model_dir = _move_into_place(result.model_dir, workdir / "model")
            job = session.get_one(Job, job_id)
            model = catalog.register(session, settings, job, model_dir, result.evaluation)
            catalog.register_adapters(session, settings, job, model_dir)
            session.flush()
            summary = {"model_id": model.id, "steps": result.steps, "evaluation": result.evaluation}
            final = make("job.succeeded", result.steps, summary)
            return lifecycle.finish(session, claim, "succeeded", final, model_id=model.id), "succeeded"
        if error is not None:
            final = make("job.failed", job_run.step, {"code": error[0], "message": error[1]})
            return lifecycle.finish(session, claim, "failed", final, error=error), f"failed ({error[0]})"
        if stopped and job_run.cancelled.is_set():
            final = make("job.cancelled", job_run.step, {"reason": "cancelled by request"})
            return lifecycle.finish(session, claim, "cancelled", final), "cancelled"
        reason = "the worker shut down; resuming from the last checkpoint"
        return lifecycle.release(session, claim, reason), "handed back to the queue"

    ok, outcome = _write_retrying(db, finish)
    if ok:
        shutil.rmtree(workdir / "staging", ignore_errors=True)
    log.info("job %s: %s", job_id, outcome if ok else "lease lost before it could be finished")


def _callbacks(job_run: JobRun, workdir: Path, attempt: int) -> dict[str, Any]:
    """The pipeline's hooks into this claim (models.training.run.run's keyword arguments)."""
    return {
        "on_event": job_run.on_event,
        "should_stop": job_run.should_stop,
        "resolve": job_run.resolve,
        "resume": True,  # the workdir is the job's own: a retry continues its registered checkpoint
        "publish": job_run.publish,
        "staging": workdir / "staging" / f"attempt-{attempt}",
    }


def _restore_point(db: Database, settings: Settings, job_id: str, workdir: Path, attempt: int) -> bool:
    """Make the job's folder hold only what its rows vouch for, with a local copy of the newest
    registered checkpoint that verifies (from the store, on a host that has none), and its
    tokenizer. A checkpoint the store lost, or whose download does not match its manifest, is
    dropped with its row: the run resumes from the one before (or starts over). Returns whether
    this is a restart over an earlier attempt's superseded events."""
    store = get_store(settings)
    with db.write() as session:
        for ckpt in reversed(metrics.checkpoints(session, job_id)):
            try:
                store.get(ckpt.path)
                break
            except (ArtifactMissing, ArtifactCorrupt) as exc:
                log.warning(
                    "job %s: checkpoint at step %d cannot be restored (%s); falling back", job_id, ckpt.step, exc
                )
                session.delete(ckpt)
        tokenizer = key_of(settings, workdir / "tokenizer")
        if store.remote and store.exists(tokenizer):
            store.get(tokenizer)
        session.flush()
        registered = {c.step for c in metrics.checkpoints(session, job_id)}
        _keep_only_registered(workdir, registered, attempt)
        restart = False
        if not list_checkpoints(workdir / "checkpoints"):
            lifecycle.reset_progress(session, job_id)  # a new run, or a retry with nothing to resume
            restart = events.has_run_events(session, job_id)  # an earlier attempt's, all superseded
        session.commit()
    return restart


def _store_model(settings: Settings, result: RunResult, workdir: Path) -> None:
    get_store(settings).put(key_of(settings, workdir / "model"), source=result.model_dir)


def _write_retrying(db: Database, body: Callable[[Session], tuple[bool, str]]) -> tuple[bool, str]:
    """Run `body` in a write transaction, committed if it returns True; waits out an outage."""
    outage, delay = OutageLog(log, "the database"), 0.2
    while True:
        try:
            with db.write() as session:
                ok, outcome = body(session)
                if ok:
                    session.commit()
                else:
                    session.rollback()
            outage.ok()
            return ok, outcome
        except Exception as exc:
            if not unreachable(exc) or SHUTDOWN.is_set():
                raise
            outage.failed(exc, "finishing a job")
        time.sleep(delay)
        delay = min(2.0, delay * 2)


def _keep_only_registered(workdir: Path, registered: set[int], attempt: int) -> None:
    """Remove checkpoint folders the database does not vouch for, and staging left by other
    attempts (a stalled worker's attempt, if it wakes, finds its folder gone and its lease too)."""
    for path in list_checkpoints(workdir / "checkpoints"):
        if int(path.name.split("-")[1]) not in registered:
            log.warning("%s: removing checkpoint %s, which has no row", workdir.name, path.name)
            shutil.rmtree(path, ignore_errors=True)
    staging = workdir / "staging"
    if staging.is_dir():
        for other in staging.iterdir():
            if other.name != f"attempt-{attempt}":
                shutil.rmtree(other, ignore_errors=True)


def _move_into_place(staged: Path, final: Path) -> Path:
    if staged != final and staged.exists():
        if final.exists():
            shutil.rmtree(final)
        staged.replace(final)
    return final

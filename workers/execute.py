"""Claim a job, run the pipeline with the JobRun callbacks, and finish the row. Every change
of the job's state is a call to app.services.lifecycle."""

from __future__ import annotations

import logging

from celery.exceptions import Reject

from app.config import Settings
from app.db import Database
from app.queue.wakeups import Publisher
from app.services import catalog, jobs, lifecycle
from app.tables import Job
from models.checkpoint import list_checkpoints
from models.errors import StagecraftError
from models.events import make
from models.pipeline import RunResult, Stopped, run
from models.spec import parse_spec
from workers.reporter import SHUTDOWN, JobRun, LeaseLost

log = logging.getLogger(__name__)


def execute(db: Database, settings: Settings, publisher: Publisher, job_id: str, worker: str) -> None:
    """Run the job if this delivery wins the claim.

    When the worker is asked to stop, the job is checkpointed and handed back to the queue
    without a new message (this worker would take it again): the reaper of the next worker
    to start, or of another running one, sends it.
    """
    if SHUTDOWN.is_set():  # a delivery that arrived while this worker stops: leave the job to the next
        raise Reject("worker shutting down", requeue=True)
    owner = f"{worker}:{job_id[-6:]}"
    workdir = jobs.workdir(settings, job_id)
    with db.write() as session:
        claim = lifecycle.claim(session, job_id, owner, settings.lease_s)
        if claim is not None and not list_checkpoints(workdir / "checkpoints"):
            lifecycle.reset_progress(session, job_id)  # a new run, or a retry with nothing to resume
        session.commit()
    if claim is None:
        log.info("job %s: not claimable (already taken, finished or unknown); dropping this delivery", job_id)
        return
    job_run = JobRun(db, settings, claim, publisher)
    job_run.on_event(make("job.started", 0, {"attempt": claim.attempt, "worker": worker}))
    job_run.start()
    log.info("job %s: attempt %d on %s", job_id, claim.attempt, worker)
    result: RunResult | None = None
    error: tuple[str, str] | None = None
    stopped = False
    try:
        result = run(
            parse_spec(claim.spec),
            workdir,
            on_event=job_run.on_event,
            should_stop=job_run.should_stop,
            resolve=job_run.resolve,
            resume=True,  # the workdir is the job's own: a retry continues whatever is there
        )
    except Stopped:
        stopped = True
    except LeaseLost:
        log.warning("job %s: lease lost to another worker; stopping quietly", job_id)
    except StagecraftError as exc:
        error = (exc.code, str(exc))
    except Exception as exc:
        log.exception("job %s failed", job_id)
        error = ("system_error", f"{type(exc).__name__}: {exc}")
    job_run.close()
    if job_run.lost.is_set():
        return
    with db.write() as session:
        if result is not None:
            job = session.get_one(Job, job_id)
            model = catalog.register(session, settings, job, result.model_dir, result.evaluation)
            session.flush()
            summary = {"model_id": model.id, "steps": result.steps, "evaluation": result.evaluation}
            final = make("job.succeeded", result.steps, summary)
            ok, outcome = lifecycle.finish(session, claim, "succeeded", final, model_id=model.id), "succeeded"
        elif error is not None:
            final = make("job.failed", job_run.step, {"code": error[0], "message": error[1]})
            ok, outcome = lifecycle.finish(session, claim, "failed", final, error=error), f"failed ({error[0]})"
        elif stopped and job_run.cancelled.is_set():
            final = make("job.cancelled", job_run.step, {"reason": "cancelled by request"})
            ok, outcome = lifecycle.finish(session, claim, "cancelled", final), "cancelled"
        else:
            reason = "the worker shut down; resuming from the last checkpoint"
            ok, outcome = lifecycle.release(session, claim, reason), "handed back to the queue"
        if ok:
            session.commit()
        else:
            session.rollback()
    log.info("job %s: %s", job_id, outcome if ok else "lease lost before it could be finished")

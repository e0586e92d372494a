"""The one task: run a job by id. Thin: the work is in workers.execute and app.services."""

from __future__ import annotations

import logging

from app import logs
from app.db import get_database
from app.queue.wakeups import EVENTS, Publisher
from workers.celery_app import ACTIVITY, WORKER_ID, broker, celery_app, settings
from workers.execute import execute

log = logging.getLogger(__name__)


@celery_app.task(name="stagecraft.run_job", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> None:
    db = get_database(settings.db_url)
    publisher = Publisher(settings.pubsub_url)
    # Its lines name the job (and, once claimed, tenant and request_id).
    with ACTIVITY.running(), logs.scope(job_id=job_id):
        execute(db, settings, publisher, job_id, WORKER_ID, defer=_send_later)
    publisher.publish(EVENTS, job_id)


def _send_later(job_id: str) -> None:
    """The job's tenant runs its most jobs: wake a worker for it again in a while."""
    broker.send(job_id, countdown=settings.tenant_busy_retry_s)

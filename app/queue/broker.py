"""The Celery configuration shared by the API (which only sends) and the workers, and the
sender of a job's wake-up message.

It lives in `app` because the API enqueues and `app` may not import `workers`. JSON is
the only accepted serialization; messages carry a job id, never objects. Training jobs
are long, so: late acks, requeue when a worker process dies, one message prefetched,
no result backend (the database is where results go).
"""

from __future__ import annotations

import logging

from celery import Celery
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.queue import routing
from app.tables import Job, utcnow

log = logging.getLogger(__name__)
RUN_JOB = "stagecraft.run_job"
EMBEDDED_POLL_S = 0.2


def make_celery(settings: Settings) -> Celery:
    app = Celery("stagecraft", broker=settings.broker, set_as_current=False)
    options: dict[str, object] = {"visibility_timeout": 12 * 3600}  # Redis: redeliver unacked after this
    if settings.broker.startswith("sqla+"):
        # The embedded broker polls its table. Its `polling_interval` transport option would be
        # handed to create_engine with the others, so the class default (1 s) is lowered instead.
        kombu_sqla.Transport.polling_interval = EMBEDDED_POLL_S
        options = {"connect_args": {"timeout": 30}}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # One job per worker process, run in its main thread, as `stagecraft worker` starts it: the
        # shutdown flag, the reaper's liveness check (workers/liveness.py) and the job share a process.
        worker_pool="solo",
        worker_concurrency=1,
        task_default_queue=settings.queue,
        task_routes={RUN_JOB: {"queue": settings.queue}},
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=False,  # the embedded transport has no fanout
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


class Broker:
    """Sends wake-ups, each to the queue of its job's resources (app.queue.routing). Code that
    changes jobs does not call it: it notes the job id in its session's outbox
    (app.queue.outbox), sent once the session commits."""

    def __init__(self, settings: Settings, write: sessionmaker[Session]):
        self.settings, self.write = settings, write
        self.celery = make_celery(settings)

    def send(self, job_id: str, countdown: float | None = None) -> bool:
        """Send the job's wake-up (its row is committed) and note that the broker has it;
        with `countdown`, a wake-up a worker runs that many seconds from now.

        On a broker failure the job stays queued with enqueued_at unset; a worker's reaper
        sends it again later.
        """
        try:
            with self.write() as session:
                spec = session.scalar(select(Job.spec).where(Job.id == job_id))
            queue = routing.job_queue(self.settings.queue, spec or {})  # by its resources
            self.celery.send_task(RUN_JOB, args=[job_id], queue=queue, retry=False, countdown=countdown)
        except Exception as exc:
            log.warning("could not enqueue job %s: %s", job_id, exc)
            return False
        with self.write() as session:
            session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
            session.commit()
        return True

"""The worker's Celery app (`celery -A workers.celery_app worker`, or `stagecraft worker`).

Configuration is app.queue.broker.make_celery (JSON only, late acks, prefetch 1, the `train`
queue). Here: the task module, a shutdown flag the training loop reads between steps (so
Ctrl-C or SIGTERM checkpoints the job and requeues it instead of waiting for it to end),
and a reaper thread that requeues jobs whose worker died and re-sends messages no worker
took. The same thread watches this worker: when it has stopped consuming from the broker
(workers/liveness.py), it exits for its supervisor to start a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from typing import Any

from celery import signals

from app import logs
from app.config import get_settings
from app.db import get_database
from app.outage import OutageLog, unreachable
from app.queue import outbox, routing
from app.queue.broker import Broker
from app.queue.wakeups import Publisher
from app.services import lifecycle, webhook_sender
from workers import liveness, meter
from workers.reporter import SHUTDOWN

log = logging.getLogger(__name__)
NOT_CONSUMING_EXIT = 75  # EX_TEMPFAIL: start me again
ACTIVITY = liveness.Activity()  # workers.tasks runs each job inside ACTIVITY.running()
settings = get_settings()
broker = Broker(settings, get_database(settings.db_url).write)
celery_app = broker.celery
celery_app.conf.include = ["workers.tasks"]
app = celery_app  # the name `celery -A workers.celery_app` looks for
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # host:pid:tag, in job.started
OFFER = (settings.worker_device, settings.worker_processes)  # what this worker offers (`stagecraft worker`)
QUEUES = routing.worker_queues(settings.queue, *OFFER)


@signals.worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    SHUTDOWN.set()


@signals.setup_logging.connect  # instead of Celery's: the service's lines (app/logs.py), each naming this worker
def _setup_logging(loglevel: int | None = None, **_: Any) -> None:
    logs.configure(settings.log_format, loglevel or logging.INFO, static={"worker": WORKER_ID})


@signals.worker_shutdown.connect
def _push_metrics(**_: Any) -> None:
    meter.push_last(settings)


def reap_forever(stop: threading.Event) -> None:
    db = get_database(settings.db_url)
    sender = outbox.Outbox(broker, Publisher(settings.pubsub_url))
    interval = max(1.0, min(30.0, settings.lease_s / 3))
    outage = OutageLog(log, "the database")
    while True:
        try:
            with db.write() as session:
                lifecycle.reap(outbox.bind(session, sender), settings)
                routing.heartbeat(session, WORKER_ID, socket.gethostname(), *OFFER, QUEUES)
                session.commit()  # the requeued jobs' wake-ups leave now
            with db.read() as session:
                stuck = liveness.not_consuming(session, ACTIVITY, settings.worker_idle_exit_s, _can_take)
            if stuck:
                log.error("idle while a sent job waits unclaimed: not consuming from the broker; exiting")
                os._exit(NOT_CONSUMING_EXIT)
            outage.ok()
        except Exception as exc:
            if unreachable(exc):
                outage.failed(exc, "reaping")
            else:
                log.exception("reaper failed; retrying")
        if stop.wait(interval):
            with contextlib.suppress(Exception), db.write() as session:
                routing.gone(session, WORKER_ID)
                session.commit()
            return


def _can_take(spec: dict[str, Any]) -> bool:
    return routing.job_queue(settings.queue, spec) in QUEUES


@signals.worker_ready.connect
def _start_reaper(**_: Any) -> None:
    threading.Thread(target=reap_forever, args=(SHUTDOWN,), name="reaper", daemon=True).start()
    meter.start(settings)  # training counters to the API's /metrics (workers/meter.py)
    log.info("worker ready: %d process(es) on %s; queues %s", OFFER[1], OFFER[0], ",".join(QUEUES))
    webhook_sender.start(settings, SHUTDOWN)  # webhook deliveries, out of band (app/services/webhook_sender.py)

"""The worker's Celery app (`celery -A workers.celery_app worker`, or `stagecraft worker`).

Configuration is app.queue.broker.make_celery (JSON only, late acks, prefetch 1, the `train`
queue). Here: the task module, a shutdown flag the training loop reads between steps (so
Ctrl-C or SIGTERM checkpoints the job and requeues it instead of waiting for it to end),
and a reaper thread that requeues jobs whose worker died.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals

from app.config import get_settings
from app.db import get_database
from app.queue import outbox
from app.queue.broker import Broker
from app.queue.wakeups import Publisher
from app.services import lifecycle
from workers.reporter import SHUTDOWN

log = logging.getLogger(__name__)
settings = get_settings()
broker = Broker(settings, get_database(settings.db_url).write)
celery_app = broker.celery
celery_app.conf.include = ["workers.tasks"]
app = celery_app  # the name `celery -A workers.celery_app` looks for


@signals.worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    SHUTDOWN.set()


def reap_forever(stop: threading.Event) -> None:
    db = get_database(settings.db_url)
    sender = outbox.Outbox(broker, Publisher(settings.pubsub_url))
    interval = max(1.0, min(30.0, settings.lease_s / 3))
    while True:
        try:
            with db.write() as session:
                lifecycle.reap(outbox.bind(session, sender), settings)
                session.commit()  # the requeued jobs' wake-ups leave now
        except Exception:
            log.exception("reaper failed; retrying")
        if stop.wait(interval):
            return


@signals.worker_ready.connect
def _start_reaper(**_: Any) -> None:
    threading.Thread(target=reap_forever, args=(SHUTDOWN,), name="reaper", daemon=True).start()

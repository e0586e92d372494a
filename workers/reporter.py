"""One claimed job on a worker: the pipeline's callbacks, and a reporter thread behind them
that calls app.services.lifecycle (report, renew) for it.

The training loop never waits on the database: `on_event` appends to a list and
`should_stop` reads two flags. A reporter thread writes the events in batches (at least
every `event_flush_s`, at once for anything but a training step), renews the lease with
each write, and polls the cancel flag every `cancel_poll_s` (or at once on a Redis
wake-up). If another worker has taken the job over, `should_stop` raises LeaseLost.

Checkpoints are fenced by the lease: the pipeline stages each one in this attempt's own
folder, and `publish` stores every event up to it, registers its row and moves it into
place in one transaction whose first statement checks the lease. So a checkpoint on disk
has its row, and a worker that lost its job never publishes into the job's folder.
While the database is unreachable the events wait in memory (one log line per outage).
"""

from __future__ import annotations

import contextvars
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database
from app.errors import LeaseLost
from app.outage import OutageLog, unreachable
from app.queue.wakeups import CONTROL, EVENTS, Publisher
from app.services import catalog, datasets, lifecycle, metrics
from app.storage import get_store, key_of
from models.errors import TrainingError
from models.events import Event
from models.training import checkpoint
from workers.meter import JobMeter, folder_bytes

log = logging.getLogger(__name__)
SHUTDOWN = threading.Event()  # set when the worker process is asked to stop


class JobRun:
    def __init__(self, db: Database, settings: Settings, claim: lifecycle.Claim, publisher: Publisher, keep_last: int):
        self.db, self.settings, self.claim, self.publisher = db, settings, claim, publisher
        self.keep_last = keep_last
        self.store = get_store(settings)
        self.outage = OutageLog(log, "the database")
        self.pending: list[Event] = []
        self.lock = threading.Lock()
        self.writing = threading.Lock()  # one flush at a time (reporter thread, or a publish)
        self.wake = threading.Event()
        self.done = threading.Event()
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self.step = 0
        self.recent: dict[str, float] = {}  # the newest value of each metric series
        self.meter = JobMeter()  # steps, tokens, checkpoints for /metrics (workers/meter.py)
        run_in_context = contextvars.copy_context().run  # the job's log context (app/logs.py)
        self.thread = threading.Thread(
            target=run_in_context, args=(self._report,), name=f"report-{claim.job_id}", daemon=True
        )
        with db.read() as session:
            refs = [ref["dataset"] for ref in claim.spec["data"].values()]
            self.dataset_keys = {
                ds_id: ds.path for ds_id, ds in datasets.lookup(session, claim.tenant_id, refs).items()
            }

    # --- pipeline callbacks (training thread) ------------------------------------------

    def on_event(self, event: Event) -> None:
        self.meter.on_event(event)
        with self.lock:
            self.pending.append(event)
        if event["type"] != "train.step":
            self.wake.set()

    def should_stop(self) -> bool:
        if self.lost.is_set():
            raise LeaseLost(self.claim.job_id)
        return self.cancelled.is_set() or SHUTDOWN.is_set()

    def resolve(self, ref: str) -> Path:
        if ref in self.dataset_keys:
            return self.store.get(self.dataset_keys[ref])  # downloaded, verified, if this host has no copy
        with self.db.read() as session:
            found = catalog.model_dir(session, self.settings, self.claim.tenant_id, ref)
        if found is None:
            raise TrainingError("user_error", f"unknown dataset or model '{ref}' (deleted since the job was queued?)")
        return found

    def publish(self, staged: Path, final: Path, event: Event) -> None:
        """Pipeline hook: store the events up to this checkpoint and its row, and move it into
        place, in one transaction that holds the lease. Waits out a database outage; raises
        LeaseLost (the staged copy deleted) if the job is no longer this worker's."""
        step = event["step"]

        def move_into_place(session: Session) -> None:
            # Uploaded (with its manifest) before the transaction that registers it commits.
            path = checkpoint.publish_checkpoint(staged, final.parent, step, self.keep_last)
            self.store.put(key_of(self.settings, path))
            tokenizer = path.parent.parent / "tokenizer"
            if self.store.remote and tokenizer.is_dir() and not self.store.exists(key_of(self.settings, tokenizer)):
                self.store.put(key_of(self.settings, tokenizer))
            metrics.prune_checkpoints(session, self.settings, self.claim.job_id, self.keep_last)

        nbytes, began = folder_bytes(staged), time.monotonic()
        try:
            self.flush_retrying(move_into_place, "registering a checkpoint", event)
        except Exception:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        if self.lost.is_set():
            shutil.rmtree(staged, ignore_errors=True)
            raise LeaseLost(self.claim.job_id)
        self.meter.checkpoint(event, nbytes, time.monotonic() - began)

    # --- reporter thread --------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()
        if self.publisher.client is not None:
            listen = contextvars.copy_context().run
            threading.Thread(target=listen, args=(self._listen_control,), name="control", daemon=True).start()

    def close(self) -> None:
        """Stop the reporter and write what is left (on the calling thread)."""
        self.done.set()
        self.wake.set()
        self.thread.join()
        self.flush_retrying(None, "writing the last events")

    def flush_retrying(self, then: Callable[[Session], None] | None, doing: str, last: Event | None = None) -> None:
        """flush(then), waiting out a database outage (not a shutdown: then the lease lapses
        and the job goes to another worker)."""
        delay = 0.2
        while True:
            try:
                self.flush(then, last)
                self.outage.ok()
                return
            except Exception as exc:
                if not unreachable(exc) or SHUTDOWN.is_set():
                    raise
                self.outage.failed(exc, doing)
            time.sleep(delay)
            delay = min(2.0, delay * 2)

    def _report(self) -> None:
        tick = min(self.settings.event_flush_s, self.settings.cancel_poll_s)
        renew_every = self.settings.lease_s / 3
        last_write = time.monotonic()
        while not self.done.is_set():
            self.wake.wait(tick)
            self.wake.clear()
            try:
                if self.flush():
                    last_write = time.monotonic()
                elif time.monotonic() - last_write > renew_every:
                    with self.db.write() as session:
                        if not lifecycle.renew(session, self.claim, self.settings.lease_s):
                            self.lost.set()
                        session.commit()
                    last_write = time.monotonic()
                with self.db.read() as session:
                    if lifecycle.cancel_requested(session, self.claim.job_id):
                        self.cancelled.set()
                self.outage.ok()
            except Exception as exc:  # the events wait in memory; the lease covers a short gap
                if unreachable(exc):
                    self.outage.failed(exc, f"reporting job {self.claim.job_id}")
                else:
                    log.exception("job %s: reporting failed", self.claim.job_id)

    def _listen_control(self) -> None:
        try:
            ps = self.publisher.client.pubsub()  # type: ignore[union-attr]
            ps.subscribe(CONTROL + self.claim.job_id)
            while not self.done.is_set():
                if ps.get_message(timeout=1.0) is not None:
                    self.wake.set()
            ps.close()
        except redis.RedisError as exc:
            log.warning("control channel: %s (cancel is still polled)", exc)

    def flush(self, then: Callable[[Session], None] | None = None, last: Event | None = None) -> bool:
        """Write the pending events (and `last`, kept out of the pending list so that no other
        flush writes it without `then`) in one transaction, calling `then` in it if the lease
        held; False if there was nothing to write.

        On a database error the events stay pending, for the next try.
        """
        with self.writing:
            return self._flush(then, last)

    def _flush(self, then: Callable[[Session], None] | None, last: Event | None) -> bool:
        if self.lost.is_set():
            return True
        with self.lock:
            pending = list(self.pending)
        if not pending and last is None:
            return False
        events = pending + ([last] if last is not None else [])
        batch: list[Event] = [{**e, "data": dict(e["data"])} for e in events]  # copies: see checkpoint paths
        with self.db.write() as session:
            created = metrics.record(session, self.settings, self.claim.job_id, batch, self.recent)
            for e in batch:
                if e["type"] == "checkpoint.saved":
                    # Clients get the id, and the path relative to the data directory, not the host's.
                    path = Path(e["data"]["path"])
                    e["data"]["checkpoint_id"] = created.get(str(path))
                    e["data"]["path"] = str(path.relative_to(self.settings.data_dir))
            if not lifecycle.report(session, self.claim, batch, self.settings.lease_s):
                session.rollback()
                self.lost.set()
                return True
            if then is not None:
                then(session)
            session.commit()
        with self.lock:
            del self.pending[: len(pending)]
        self.step = batch[-1]["step"]
        self.publisher.publish(EVENTS, self.claim.job_id)
        return True

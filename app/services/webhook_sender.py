"""Sending webhook deliveries out of band: never in a training loop, never in the transaction
that ended a job. Each worker process runs `send_forever` on a thread of its own, beside its
reaper (workers/celery_app.py).

A round: a read looks for due deliveries (idle rounds take no write lock); `claim` takes up to
BATCH of them in one short transaction (PostgreSQL: FOR UPDATE SKIP LOCKED, then a conditional
UPDATE; SQLite: the write lock, one process at a time), counting the attempt and pushing
`next_attempt_at` past the longest the round can take, so no other sender sends them meanwhile
and a sender that dies mid-round leaves them due again. They are sent, CONCURRENCY at once,
outside any transaction; then `finish` records each outcome, only if the claim is still this
round's: delivered (2xx), pending with its next time (backoff), or failed once
`webhook_max_attempts` attempts have failed. One attempt: app.services.webhook_attempt.
"""

from __future__ import annotations

import logging
import math
import threading
from datetime import datetime, timedelta

import anyio
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database, get_database
from app.outage import OutageLog, unreachable
from app.services.webhook_attempt import Due, Outcome, clip, send
from app.tables import Webhook, WebhookDelivery, utcnow

log = logging.getLogger(__name__)
BATCH = 16  # deliveries claimed per round
CONCURRENCY = 8  # sent at once


DEFAULT_BACKOFF = (10.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)


def backoff(settings: Settings) -> list[float]:
    """The waits after failed attempts 1, 2, ... (the last repeats), from `webhook_backoff_s`
    (a setting that is no list of seconds is logged, and the default used: an outcome must
    always be recordable, or its delivery would be sent again and again)."""
    try:
        waits = [max(0.0, float(w)) for w in settings.webhook_backoff_s.split(",") if w.strip()]
    except ValueError:
        log.error(
            "STAGECRAFT_WEBHOOK_BACKOFF_S=%r is not comma-separated seconds; using the default",
            settings.webhook_backoff_s,
        )
        waits = []
    return waits or list(DEFAULT_BACKOFF)


def retry_after(settings: Settings, attempt: int) -> float:
    waits = backoff(settings)
    return waits[min(attempt, len(waits)) - 1]


def _round_s(settings: Settings) -> float:
    """The longest a round's sending may take: how long its claims hold."""
    return settings.webhook_timeout_s * math.ceil(BATCH / CONCURRENCY) + 30.0


# --- the database side -------------------------------------------------------------------


def _due(now: datetime) -> tuple[ColumnElement[bool], ...]:
    return (WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)


def any_due(session: Session) -> bool:
    return session.scalar(select(WebhookDelivery.id).where(*_due(utcnow())).limit(1)) is not None


def claim(session: Session, settings: Settings, limit: int = BATCH) -> list[Due]:
    """Take up to `limit` due deliveries for this sender (the caller commits at once)."""
    now = utcnow()
    due = _due(now)
    stmt = select(WebhookDelivery.id).where(*due).order_by(WebhookDelivery.next_attempt_at).limit(limit)
    ids = list(session.scalars(stmt.with_for_update(skip_locked=True)))
    if not ids:
        return []
    taken = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids), *due)
        .values(
            attempts=WebhookDelivery.attempts + 1,
            next_attempt_at=now + timedelta(seconds=_round_s(settings)),
            last_attempt_at=now,
        )
        .returning(
            WebhookDelivery.id,
            WebhookDelivery.webhook_id,
            WebhookDelivery.attempts,
            WebhookDelivery.body,
            WebhookDelivery.event_id,
            WebhookDelivery.event_type,
        )
        .execution_options(synchronize_session=False)
    ).all()
    of_hooks = select(Webhook.id, Webhook.url, Webhook.secret).where(Webhook.id.in_({r.webhook_id for r in taken}))
    hooks = {h.id: h for h in session.execute(of_hooks)}
    return [
        Due(
            r.id,
            r.webhook_id,
            hooks[r.webhook_id].url,
            hooks[r.webhook_id].secret,
            r.body,
            r.event_id,
            r.event_type,
            r.attempts,
        )
        for r in taken
        if r.webhook_id in hooks
    ]


def finish(session: Session, settings: Settings, due: Due, outcome: Outcome) -> str:
    """Record an attempt's outcome; returns the delivery's status now (`lost`: another sender
    has claimed it since, or its webhook was deleted, and nothing was written)."""
    now = utcnow()
    values: dict[str, object] = {"response_status": outcome.status, "error": clip(outcome.error)}
    if outcome.error is None:
        values.update(status="delivered", next_attempt_at=None, finished_at=now)
    elif due.attempt >= settings.webhook_max_attempts:
        values.update(status="failed", next_attempt_at=None, finished_at=now)
    else:
        values.update(status="pending", next_attempt_at=now + timedelta(seconds=retry_after(settings, due.attempt)))
    mine = (WebhookDelivery.id == due.id, WebhookDelivery.status == "pending", WebhookDelivery.attempts == due.attempt)
    result = session.execute(update(WebhookDelivery).where(*mine).values(**values))
    return str(values["status"]) if result.rowcount else "lost"  # type: ignore[attr-defined]


async def _send_all(dues: list[Due], settings: Settings) -> list[Outcome]:
    outcomes: list[Outcome] = [Outcome(error="not sent")] * len(dues)
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def one(i: int) -> None:
        async with limiter:
            outcomes[i] = await send(dues[i], settings)

    async with anyio.create_task_group() as tg:
        for i in range(len(dues)):
            tg.start_soon(one, i)
    return outcomes


# --- the sender --------------------------------------------------------------------------


def run_once(db: Database, settings: Settings) -> int:
    """One round: claim what is due, send it, record the outcomes. Returns the deliveries tried."""
    with db.read() as session:
        if not any_due(session):
            return 0
    with db.write() as session:
        dues = claim(session, settings)
        session.commit()
    if not dues:
        return 0
    outcomes = anyio.run(_send_all, dues, settings)
    with db.write() as session:
        for due, outcome in zip(dues, outcomes):
            status = finish(session, settings, due, outcome)
            level = logging.INFO if outcome.error is None else logging.WARNING
            log.log(
                level,
                "webhook delivery %s (%s to %s), attempt %d: %s%s",
                due.id,
                due.event_type,
                due.webhook_id,
                due.attempt,
                status,
                f" ({outcome.error})" if outcome.error else "",
            )
        session.commit()
    return len(dues)


def send_forever(db: Database, settings: Settings, stop: threading.Event) -> None:
    """Rounds until `stop` is set: at once after a full one, else every `webhook_poll_s`."""
    outage = OutageLog(log, "the database")
    while not stop.is_set():
        tried = 0
        try:
            tried = run_once(db, settings)
            outage.ok()
        except Exception as exc:
            if unreachable(exc):
                outage.failed(exc, "sending webhooks")
            else:
                log.exception("webhook sender failed; retrying")
        if tried < BATCH:
            stop.wait(settings.webhook_poll_s)


def start(settings: Settings, stop: threading.Event) -> threading.Thread:
    """The sender thread of a process (a daemon: it never holds the process up)."""
    db = get_database(settings.db_url)
    thread = threading.Thread(target=send_forever, args=(db, settings, stop), name="webhooks", daemon=True)
    thread.start()
    return thread

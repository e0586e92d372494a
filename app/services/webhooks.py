"""Webhooks: URLs a tenant registers to be told when its jobs end, and the deliveries to them.

Registering checks the URL (app.services.webhook_targets) and makes the signing secret, which
the caller sees once. A job's final event (models.events.FINAL) is stored by
app.services.events.append, which calls `record` in the same transaction: one pending
delivery per webhook of the job's tenant that takes that event type, holding the exact body
every attempt will send. So a committed final event always has its deliveries, and one rolled
back has none; nothing is sent here. Senders (app.services.webhook_sender, a thread in each
worker) deliver them out of band.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Invalid, NotFound, QuotaExceeded
from app.services import pagination, webhook_targets
from app.services.names import check_name, is_id
from app.tables import Job, Webhook, WebhookDelivery, new_id, utcnow
from models.events import FINAL, Event, timestamp

EVENTS: tuple[str, ...] = tuple(sorted(FINAL))  # what a webhook may take (all three by default)
DESCRIPTION_MAX = 255
SECRET_PREFIX = "whsec_"


def check_events(events: Sequence[str] | None, loc: str = "events") -> list[str]:
    """The event types, each once, in a stable order (None: all of them); else 422 naming `loc`."""
    if events is None:
        return list(EVENTS)
    unknown = [e for e in events if e not in EVENTS]
    if unknown or not events:
        problem = f"unknown event type '{unknown[0]}'" if unknown else "at least one event type is needed"
        message = f"{problem}; the types are {', '.join(EVENTS)}"
        raise Invalid(f"{loc}: {message}", [{"loc": loc, "message": message}])
    return [e for e in EVENTS if e in events]


def create(
    session: Session,
    settings: Settings,
    tenant_id: str,
    url: str,
    events: Sequence[str] | None = None,
    description: str | None = None,
) -> Webhook:
    """A new webhook (flushed, not committed), its `secret` readable now and never shown again.
    The URL is checked before anything is read or locked: its name's lookup may take seconds."""
    url = webhook_targets.check(url, settings)
    types = check_events(events)
    if description is not None:
        check_name(description, "description", DESCRIPTION_MAX, "description")
    count = session.scalar(select(func.count()).select_from(Webhook).where(Webhook.tenant_id == tenant_id))
    if (count or 0) >= settings.webhook_max_per_tenant:
        limit = settings.webhook_max_per_tenant
        raise QuotaExceeded(f"this tenant has {count} webhooks, its most ({limit}; setting WEBHOOK_MAX_PER_TENANT)")
    hook = Webhook(
        id=new_id("wh"),
        tenant_id=tenant_id,
        url=url,
        events=types,
        description=description,
        secret=SECRET_PREFIX + secrets.token_urlsafe(32),
        created_at=utcnow(),
    )
    session.add(hook)
    session.flush()
    return hook


def get(session: Session, tenant_id: str, webhook_id: str) -> Webhook:
    """The tenant's webhook; another tenant's is as missing as an unknown one (404)."""
    hook = session.get(Webhook, webhook_id) if is_id(webhook_id, "wh") else None
    if hook is None or hook.tenant_id != tenant_id:
        raise NotFound(f"no webhook '{webhook_id}'")
    return hook


def list_page(session: Session, tenant_id: str, limit: int, after: str | None) -> tuple[list[Webhook], bool]:
    stmt = select(Webhook).where(Webhook.tenant_id == tenant_id)
    return pagination.page(session, stmt, Webhook.id, limit, after)


def remove(session: Session, tenant_id: str, webhook_id: str) -> None:
    """Delete the webhook and its deliveries (pending ones are not sent)."""
    get(session, tenant_id, webhook_id)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id))
    session.execute(delete(Webhook).where(Webhook.id == webhook_id, Webhook.tenant_id == tenant_id))


def deliveries(
    session: Session, tenant_id: str, webhook_id: str, limit: int, after: str | None
) -> tuple[list[WebhookDelivery], bool]:
    """The webhook's deliveries, newest first."""
    get(session, tenant_id, webhook_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    return pagination.page(session, stmt, WebhookDelivery.id, limit, after)


# --- recording, in the transaction that stores the event ---------------------------------


def record(session: Session, job_id: str, final: Sequence[tuple[int, Event]]) -> int:
    """Pending deliveries of the job's final events (seq, event) to every webhook of its tenant
    that takes their type; called by events.append once it has stored them. Returns how many."""
    hooks = session.execute(
        select(Webhook.id, Webhook.events).join(Job, Job.tenant_id == Webhook.tenant_id).where(Job.id == job_id)
    ).all()
    if not hooks:
        return 0
    job = session.execute(select(*_JOB_COLUMNS).where(Job.id == job_id)).one()
    now, rows = utcnow(), []
    for seq, event in final:
        takers = [h.id for h in hooks if event["type"] in (h.events or ())]
        if not takers:
            continue
        event_id = new_id("evt")
        body = json.dumps(payload(event_id, job, seq, event), separators=(",", ":"), ensure_ascii=False)
        rows += [
            {
                "id": new_id("dlv"),
                "webhook_id": hook_id,
                "job_id": job_id,
                "event_id": event_id,
                "event_type": event["type"],
                "body": body,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for hook_id in takers
        ]
    if rows:
        session.execute(insert(WebhookDelivery), rows)
    return len(rows)


_JOB_COLUMNS = (
    Job.id,
    Job.name,
    Job.status,
    Job.model_id,
    Job.error_code,
    Job.error_message,
    Job.step,
    Job.total_steps,
    Job.created_at,
    Job.started_at,
    Job.finished_at,
)


def _time(at: datetime | None) -> str | None:
    return None if at is None else timestamp(at)


def payload(event_id: str, job: Any, seq: int, event: Event) -> dict[str, Any]:
    """What a delivery's body says (docs/api.md, Webhooks): the event, and the job as it ended."""
    error = None if job.error_code is None else {"code": job.error_code, "message": job.error_message or ""}
    return {
        "id": event_id,
        "object": "event",
        "type": event["type"],
        "created_at": event["time"],
        "data": {
            "job": {
                "id": job.id,
                "object": "job",
                "name": job.name,
                "status": job.status,
                "model_id": job.model_id,
                "error": error,
                "step": job.step,
                "total_steps": job.total_steps,
                "created_at": _time(job.created_at),
                "started_at": _time(job.started_at),
                "finished_at": _time(job.finished_at),
            },
            "event": {"seq": seq, **event},
        },
    }

"""/v1/webhooks: register, list, get, delete; a webhook's deliveries (docs/api.md, Webhooks)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api import shape
from app.api.body import ParsedJsonRoute
from app.api.deps import PageDep, ReadSession, SettingsDep, TenantDep, WriteSession
from app.api.openapi import ERRORS, error
from app.api.schemas import Page
from app.api.webhook_schemas import (
    DeletedWebhook,
    DeliveryOut,
    WebhookCreated,
    WebhookIn,
    WebhookOut,
    created,
    delivery,
    webhook,
)
from app.services import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERRORS, route_class=ParsedJsonRoute)


@router.post(
    "",
    status_code=201,
    responses={422: error("invalid fields; `url` names a target that is not http(s) or not a public address")},
)
def create_webhook(
    body: WebhookIn, tenant_id: TenantDep, session: WriteSession, settings: SettingsDep
) -> WebhookCreated:
    """Register a URL for the tenant's jobs' final events. The answer holds the signing secret,
    which is never shown again."""
    hook = webhooks.create(session, settings, tenant_id, body.url, body.events, body.description)
    session.commit()
    return created(hook)


@router.get("")
def list_webhooks(tenant_id: TenantDep, session: ReadSession, page: PageDep) -> Page[WebhookOut]:
    """Newest first; secrets are not shown."""
    rows, more = webhooks.list_page(session, tenant_id, page.limit, page.after)
    return shape.page([webhook(h) for h in rows], more, rows[-1].id if rows else None)


@router.get("/{webhook_id}")
def get_webhook(webhook_id: str, tenant_id: TenantDep, session: ReadSession) -> WebhookOut:
    return webhook(webhooks.get(session, tenant_id, webhook_id))


@router.delete("/{webhook_id}")
def delete_webhook(webhook_id: str, tenant_id: TenantDep, session: WriteSession) -> DeletedWebhook:
    """Delete the webhook with its deliveries; pending ones are not sent."""
    webhooks.remove(session, tenant_id, webhook_id)
    session.commit()
    return DeletedWebhook(id=webhook_id)


@router.get("/{webhook_id}/deliveries")
def list_deliveries(webhook_id: str, tenant_id: TenantDep, session: ReadSession, page: PageDep) -> Page[DeliveryOut]:
    """The webhook's deliveries, newest first, with the outcome of their last attempt."""
    rows, more = webhooks.deliveries(session, tenant_id, webhook_id, page.limit, page.after)
    return shape.page([delivery(d) for d in rows], more, rows[-1].id if rows else None)

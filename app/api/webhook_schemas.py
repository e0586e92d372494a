"""Request and response shapes of /v1/webhooks, and rows -> them (the routes: routes/webhooks.py;
the service: app.services.webhooks)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.api.schemas import Strict
from app.services.webhook_targets import URL_MAX
from app.services.webhooks import DESCRIPTION_MAX, EVENTS
from app.tables import Webhook, WebhookDelivery

EventType = Literal["job.succeeded", "job.failed", "job.cancelled"]
assert set(EventType.__args__) == set(EVENTS)  # type: ignore[attr-defined]


class WebhookIn(Strict):
    url: Annotated[str, Field(min_length=1, max_length=URL_MAX, description="an http:// or https:// URL")]
    events: Annotated[
        list[EventType] | None, Field(min_length=1, max_length=16, description="default: all three final events")
    ] = None
    description: Annotated[str | None, Field(max_length=DESCRIPTION_MAX)] = None


class WebhookOut(BaseModel):
    id: str
    object: Literal["webhook"] = "webhook"
    url: str
    events: list[str]
    description: str | None
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="the signing secret (whsec_...): shown this once only")


class DeletedWebhook(BaseModel):
    id: str
    object: Literal["webhook"] = "webhook"
    deleted: Literal[True] = True


class DeliveryOut(BaseModel):
    id: str
    object: Literal["webhook.delivery"] = "webhook.delivery"
    webhook_id: str
    event_id: str = Field(description="the same on every attempt, and for every webhook the event goes to")
    event_type: str
    job_id: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    response_status: int | None = Field(description="the last attempt's HTTP status, if it got an answer")
    error: str | None = Field(description="why the last attempt failed")
    next_attempt_at: datetime | None = Field(description="when it is sent (again), while pending")
    last_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None


def webhook(hook: Webhook) -> WebhookOut:
    return WebhookOut.model_validate(hook, from_attributes=True)


def created(hook: Webhook) -> WebhookCreated:
    return WebhookCreated.model_validate(hook, from_attributes=True)


def delivery(d: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut.model_validate(d, from_attributes=True)

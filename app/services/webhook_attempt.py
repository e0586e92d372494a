"""One attempt at a webhook delivery: the URL checked again and resolved
(app.services.webhook_targets), a connection to an address so checked (with the name in Host
and TLS's server name, so a DNS answer that changes after the check is never used), a POST of
the stored body, signed (docs/api.md, Webhooks); no redirect followed, at most RESPONSE_CAP
bytes of the answer read, the whole attempt bounded by `webhook_timeout_s`. Whatever happens
is an Outcome, never an exception. Claiming and recording: app.services.webhook_sender.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass

import anyio
import anyio.to_thread
import httpx

from app.config import Settings
from app.services import webhook_targets

log = logging.getLogger(__name__)
RESPONSE_CAP = 4096  # an answer is read no further once past this (the transport reads up to 64 KiB at once)
ERROR_MAX = 500  # WebhookDelivery.error
USER_AGENT = "Stagecraft-Webhooks/1"
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]+")


@dataclass(frozen=True)
class Due:
    """A claimed delivery: what to send where, and which attempt this is (1, 2, ...)."""

    id: str
    webhook_id: str
    url: str
    secret: str
    body: str
    event_id: str
    event_type: str
    attempt: int


@dataclass(frozen=True)
class Outcome:
    status: int | None = None  # the HTTP status, when there was an answer
    error: str | None = None  # why the attempt failed (None: it succeeded)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature's hex digest: HMAC-SHA256 keyed with the secret over `{timestamp}.{body}`."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def headers(due: Due, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Stagecraft-Event-Id": due.event_id,
        "Stagecraft-Event-Type": due.event_type,
        "Stagecraft-Webhook-Id": due.webhook_id,
        "Stagecraft-Delivery-Id": due.id,
        "Stagecraft-Delivery-Attempt": str(due.attempt),
        "Stagecraft-Timestamp": str(timestamp),
        "Stagecraft-Signature": f"v1={sign(due.secret, timestamp, body)}",
    }


def clip(text: str | None) -> str | None:
    """Printable, and short enough for the column (PostgreSQL text holds no NUL)."""
    if text is None:
        return None
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 1] + "…"


async def send(due: Due, settings: Settings) -> Outcome:
    """POST the delivery to its webhook; its outcome, whatever happens."""
    try:
        with anyio.fail_after(settings.webhook_timeout_s):
            target = await anyio.to_thread.run_sync(webhook_targets.target, due.url, settings, abandon_on_cancel=True)
            return await _post(target, due, settings)
    except TimeoutError:
        return Outcome(error=f"no answer within {settings.webhook_timeout_s:g} s")
    except webhook_targets.Refused as exc:
        return Outcome(error=f"not sent: the URL {exc}")
    except Exception as exc:  # an attempt's failure, whatever it is, is recorded and retried
        log.warning("webhook delivery %s: %s", due.id, exc, exc_info=True)
        return Outcome(error=f"{type(exc).__name__}: {exc}")


async def _post(target: webhook_targets.Target, due: Due, settings: Settings) -> Outcome:
    body = due.body.encode()
    sent_headers = {
        **headers(due, int(time.time()), body),
        "Host": target.url.netloc.decode("ascii"),
        "Accept-Encoding": "identity",  # an excerpt of a failure's answer is read as it comes
    }
    extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
    timeout = httpx.Timeout(settings.webhook_timeout_s, connect=settings.webhook_connect_timeout_s)
    problem = "no address"
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for ip in target.addresses[:3]:  # the checked addresses only: never a new lookup
            url = target.url.copy_with(host=str(ip))
            try:
                async with client.stream("POST", url, content=body, headers=sent_headers, extensions=extensions) as r:
                    start = "" if 200 <= r.status_code < 300 else await _start_of(r)
            except httpx.ConnectError as exc:
                problem = f"could not connect to {ip}: {exc or type(exc).__name__}"
                continue
            except httpx.TimeoutException as exc:
                return Outcome(error=f"timed out ({type(exc).__name__}) at {ip}")
            except httpx.HTTPError as exc:
                return Outcome(error=f"{type(exc).__name__} at {ip}: {exc}")
            if 200 <= r.status_code < 300:
                return Outcome(r.status_code)
            said = f": {start}" if start else ""
            redirect = " (redirects are not followed)" if 300 <= r.status_code < 400 else ""
            return Outcome(r.status_code, f"answered {r.status_code}{redirect}{said}")
    return Outcome(error=problem)


async def _start_of(response: httpx.Response) -> str:
    """The start of a failure's answer, as text; reading stops past RESPONSE_CAP bytes."""
    got = b""
    try:
        async for chunk in response.aiter_raw():
            got += chunk
            if len(got) >= RESPONSE_CAP:
                break
    except httpx.HTTPError:  # the status is what counts
        pass
    return clip(got[:RESPONSE_CAP].decode("utf-8", "replace")[:200]) or ""

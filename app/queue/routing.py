"""Which queue a job goes to, and which queues a worker consumes: jobs are routed by what
they need (the spec's `resources`), workers declare what they offer (`stagecraft worker
--device --processes`), and a job no live worker can take stays queued with a reason.

    one process, device auto or cpu     QUEUE              (every worker)
    N processes on cpu (auto: cpu)      QUEUE.cpu.N        workers offering N processes or more
    N processes on cuda                 QUEUE.cuda.N       cuda workers offering N GPUs or more

A cuda worker also takes cpu jobs (a device `auto` job there runs on its GPU).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.orm import Session

from app.tables import Worker, utcnow

ALIVE_S = 90.0  # a worker not seen for this long is gone (it heartbeats every lease_s / 3, at most 30 s)


def needs(spec: dict[str, Any]) -> tuple[str, int]:
    """(device, processes) a stored spec asks for; `auto` counts as cpu."""
    resources = spec.get("resources") or {}
    device = resources.get("device") or spec.get("device") or "auto"
    return ("cpu" if device == "auto" else device), int(resources.get("processes") or 1)


def job_queue(base: str, spec: dict[str, Any]) -> str:
    device, processes = needs(spec)
    return base if (device, processes) == ("cpu", 1) else f"{base}.{device}.{processes}"


def worker_queues(base: str, device: str, processes: int) -> list[str]:
    queues = [base, *(f"{base}.cpu.{n}" for n in range(2, processes + 1))]
    if device == "cuda":
        queues += [f"{base}.cuda.{n}" for n in range(1, processes + 1)]
    return queues


def heartbeat(session: Session, worker_id: str, host: str, device: str, processes: int, queues: list[str]) -> None:
    """Note this worker alive with what it offers (the caller commits)."""
    row = session.get(Worker, worker_id)
    if row is None:
        session.add(Worker(id=worker_id, host=host, device=device, processes=processes, queues=queues))
    else:
        row.seen_at = utcnow()


def gone(session: Session, worker_id: str) -> None:
    session.execute(delete(Worker).where(Worker.id == worker_id))


def live_queues(db: Session | Connection) -> set[str]:
    """The queues some worker seen in the last ALIVE_S consumes."""
    since = utcnow() - timedelta(seconds=ALIVE_S)
    found: set[str] = set()
    for queues in db.scalars(select(Worker.queues).where(Worker.seen_at > since)):
        found.update(queues)
    return found


def waiting_reason(live: set[str], base: str, spec: dict[str, Any]) -> str | None:
    """Why a queued job waits, when no live worker (`live_queues`) can take it; None when one can."""
    queue = job_queue(base, spec)
    if queue in live:
        return None
    device, processes = needs(spec)
    offer = f"{processes} process{'es' if processes > 1 else ''} on {device}"
    return f"no running worker offers {offer} (queue {queue}); the job waits until one starts"

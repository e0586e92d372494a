"""`client.jobs`: validate, create, list, retrieve, cancel, events, wait, metrics, plot,
checkpoints, evaluation."""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from stagecraft import _sse
from stagecraft._http import Transport
from stagecraft._pagination import Paginator
from stagecraft.errors import StagecraftError
from stagecraft.types import Checkpoint, Evaluation, Event, Job, Metrics, Validation

REFOLLOW_S = 0.5


class WaitTimeout(StagecraftError):
    """`jobs.wait(timeout=...)` ran out before the job ended; `job` is its last state."""

    def __init__(self, job: Job):
        super().__init__(f"job {job.id} still {job.status} at step {job.step}/{job.total_steps}")
        self.job = job


class Jobs:
    def __init__(self, transport: Transport):
        self._t = transport

    def validate(self, spec: Mapping[str, Any]) -> Validation:
        """Dry run of every check `create` makes, with resource estimates. An invalid spec
        raises UnprocessableEntityError (`invalid_spec`), details [{loc, message}, ...]."""
        return Validation.model_validate(self._t.json("POST", "/v1/jobs/validate", json=dict(spec), idempotent=True))

    def create(self, spec: Mapping[str, Any], idempotency_key: str | None = None) -> Job:
        """Validate, store and queue a job; its `data.*.dataset` fields hold dataset ids.

        The request carries an Idempotency-Key (a new UUID unless given), so the retries of
        a request whose answer was lost return the job it made instead of making a second."""
        key = idempotency_key or uuid.uuid4().hex
        body = self._t.json("POST", "/v1/jobs", json=dict(spec), headers={"Idempotency-Key": key}, idempotent=True)
        return Job.model_validate(body)

    def list(self, status: str | None = None, limit: int = 20, after: str | None = None) -> Paginator[Job]:
        """Every job (or those with `status`), newest first, fetched page by page."""
        return Paginator(self._t, "/v1/jobs", Job, {"status": status, "limit": limit, "after": after})

    def retrieve(self, job_id: str) -> Job:
        return Job.model_validate(self._t.json("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        """A queued job ends at once; a running one becomes `cancelling`, then `cancelled` at
        its next step. ConflictError (`job_finished`) if it has already ended."""
        return Job.model_validate(self._t.json("POST", f"/v1/jobs/{job_id}/cancel", idempotent=True))

    def events(self, job_id: str, after: int = 0, follow: bool = True, limit: int = 100) -> Iterator[Event]:
        """The job's events with seq > `after`. With `follow` (the default) a live stream
        (Server-Sent Events) until the job's final event, resumed with Last-Event-ID when
        the connection drops; without, the events stored so far, page by page."""
        if follow:
            return _sse.job_events(self._t, job_id, after)
        return iter(Paginator(self._t, f"/v1/jobs/{job_id}/events", Event, {"after": str(after), "limit": limit}))

    def wait(
        self,
        job_id: str,
        on_event: Callable[[Event], object] | None = None,
        timeout: float | None = None,
        after: int = 0,
    ) -> Job:
        """Follow the job to its end, calling `on_event` with each event, and return the
        finished job (whatever its status: check `job.status` and `job.error`).

        With `timeout` (seconds), raises WaitTimeout when it passes first; the check runs
        as events arrive (a quiet job is looked at at least every 15 s, the stream's keep-alive)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = after
        while True:
            for event in self.events(job_id, after=last):
                last = event.seq
                if on_event is not None:
                    on_event(event)
                if deadline is not None and time.monotonic() > deadline and not event.final:
                    raise WaitTimeout(self.retrieve(job_id))
            job = self.retrieve(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(job)
            time.sleep(REFOLLOW_S)  # the stream closed early (a server restart): follow it again

    def metrics(self, job_id: str) -> Metrics:
        """Series `train.loss`, `train.lr`, `train.grad_norm`, `train.tokens_per_s`, `eval.<data>.<metric>`."""
        return Metrics.model_validate(self._t.json("GET", f"/v1/jobs/{job_id}/metrics"))

    def plot(self, job_id: str, format: str = "png") -> bytes:
        """The chart of the job's metrics per stage: `png` or `svg` (the image's bytes)."""
        if format not in ("png", "svg"):
            raise ValueError(f"format must be 'png' or 'svg', not {format!r}")
        return self._t.send("GET", f"/v1/jobs/{job_id}/metrics.{format}").content

    def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        """The kept checkpoints, oldest first; each id is servable and usable as `init_from`."""
        return [Checkpoint.model_validate(c) for c in self._t.json("GET", f"/v1/jobs/{job_id}/checkpoints")]

    def evaluation(self, job_id: str) -> Evaluation:
        return Evaluation.model_validate(self._t.json("GET", f"/v1/jobs/{job_id}/evaluation"))

"""`report_to` (docs/spec.md): a run's events also go to experiment trackers, as sinks that
wrap the pipeline's `on_event` (the worker's JobRun.on_event, `stagecraft train`'s event log).

    sinks = ReportSinks.for_job(settings, spec, job_id, workdir)
    on_event = sinks.wrap(on_event)          # the same callback when nothing is reported
    ...
    sinks.close("job.succeeded")             # or job.failed / job.cancelled / None (stopped)

The trackers: the spec's `report_to` plus the service's STAGECRAFT_REPORT_TO.
- tensorboard: event files (torch's SummaryWriter) in TENSORBOARD_DIR/<job id>, else the job's
  folder's `tensorboard/`; one run per job, tags `<stage>/train/<field>` and
  `<stage>/eval/<data>/<metric>` (`final/eval/...` for the finished model). A resume purges
  the steps past its checkpoint, as the metric series do.
- mlflow: one run per job (found again by its tag `stagecraft.run` on a retry) in the
  experiment MLFLOW_EXPERIMENT at MLFLOW_TRACKING_URI, else a file store in the job's folder
  (`mlruns/`); metrics named as the API's series (`train.loss`, `eval.<data>.<metric>`) with
  their step, the spec flattened as params.
- wandb: an offline run (id = the job id) in the job's folder (`wandb/`), the same metrics,
  the spec as its config; `wandb sync` uploads it.

Each sink has a thread and a bounded queue of its own: the training thread only enqueues, so
a slow tracker never slows training, and one that raises or falls QUEUE_EVENTS events behind
is logged once and disabled; the run and the other sinks go on.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.config import Settings
from app.services import plots
from app.services.trackers import RunInfo, Sink, make_sinks
from models.events import FINAL, Event
from models.spec import JobSpec

log = logging.getLogger(__name__)
EventSink = Callable[[Event], None]
QUEUE_EVENTS = 50_000
BATCH = 1000  # events handed to a sink at once
CLOSE_TIMEOUT_S = 60.0


class _Close:
    def __init__(self, outcome: str | None):
        self.outcome = outcome


class _Runner:
    """One sink on a thread of its own, fed through a bounded queue."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.queue: queue.Queue[Event | _Close] = queue.Queue(maxsize=QUEUE_EVENTS)
        self.dead = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"report-{sink.name}", daemon=True)
        self.thread.start()

    def put(self, event: Event) -> None:
        if not self.dead.is_set():
            try:
                self.queue.put_nowait(event)
            except queue.Full:
                self._give_up(f"fell {QUEUE_EVENTS} events behind")

    def _give_up(self, why: str, exc: BaseException | None = None) -> None:
        if not self.dead.is_set():
            self.dead.set()
            log.warning("report_to %s: %s; disabled for the rest of this run", self.sink.name, why, exc_info=exc)

    def _run(self) -> None:
        try:
            self.sink.open()
            while not self.dead.is_set():
                batch = [self.queue.get()]
                while len(batch) < BATCH and not isinstance(batch[-1], _Close):
                    try:
                        batch.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                last = batch[-1]
                closing = last if isinstance(last, _Close) else None
                if closing is not None:
                    batch.pop()
                if batch:
                    self.sink.write(batch)  # type: ignore[arg-type]
                if closing is not None:
                    self.sink.close(closing.outcome)
                    return
        except Exception as exc:
            self._give_up(f"{type(exc).__name__}: {exc}", exc)
            self._end_broken_run()

    def _end_broken_run(self) -> None:
        """After a failure, end the tracker's run as failed if it will, so that what it wrote is
        closed and flushed (a W&B run left open keeps its last records in its service's buffer)."""
        try:
            self.sink.close("job.failed")
        except Exception:
            log.debug("report_to %s: could not end its run after the failure", self.sink.name, exc_info=True)

    def ask_close(self, outcome: str | None, deadline: float) -> None:
        if not self.dead.is_set():
            try:
                self.queue.put(_Close(outcome), timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                self._give_up("still behind at the end of the run")

    def join(self, deadline: float) -> None:
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            self._give_up("did not finish writing in time; left behind")


class ReportSinks:
    """The trackers a run reports to, each behind its own thread (see the module's docstring)."""

    def __init__(self, sinks: list[Sink]):
        self.runners = [_Runner(s) for s in sinks]

    @classmethod
    def for_job(cls, settings: Settings, spec: JobSpec, job_id: str, workdir: Path) -> ReportSinks:
        """A worker's job: its folder `workdir` (jobs/<id>), the service's settings."""
        tb = Path(settings.tensorboard_dir) / job_id if settings.tensorboard_dir else workdir / "tensorboard"
        run = RunInfo(job_id, spec.name, workdir, spec.model_dump(mode="json"))
        return cls(make_sinks(targets(settings, spec), run, tb, settings))

    @classmethod
    def for_run(cls, spec: JobSpec, out: Path, settings: Settings | None = None) -> ReportSinks:
        """`stagecraft train --out DIR`: TensorBoard in DIR/tensorboard, MLflow's file store in
        DIR/mlruns unless STAGECRAFT_MLFLOW_TRACKING_URI names one, W&B in DIR/wandb."""
        settings = settings or Settings()
        out = out.resolve()
        key = "run-" + hashlib.sha256(str(out).encode()).hexdigest()[:16]
        run = RunInfo(key, spec.name, out, spec.model_dump(mode="json"))
        return cls(make_sinks(targets(settings, spec), run, out / "tensorboard", settings))

    def __call__(self, event: Event) -> None:
        for r in self.runners:
            r.put(event)

    def wrap(self, on_event: EventSink) -> EventSink:
        """`on_event`, then every sink; `on_event` itself when there is no sink."""
        if not self.runners:
            return on_event

        def both(event: Event) -> None:
            on_event(event)
            self(event)

        return both

    def close(self, outcome: str | None = None, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is queued and end each tracker's run (`outcome`: the job's final event
        type; None for a run that stopped without one). A sink still busy after `timeout_s`
        is left behind."""
        deadline = time.monotonic() + timeout_s
        for r in self.runners:
            r.ask_close(outcome, deadline)
        for r in self.runners:
            r.join(deadline)


def targets(settings: Settings, spec: JobSpec) -> list[str]:
    """The service's STAGECRAFT_REPORT_TO, then the spec's `report_to`, each once."""
    return list(dict.fromkeys([*settings.report_targets, *spec.report_to]))


def finish_local_run(out: Path, spec: JobSpec, sinks: ReportSinks) -> None:
    """The end of `stagecraft train`: DIR/metrics.png from every event of the run, and the
    trackers' runs closed with its outcome. Never raises: the run itself is done."""
    events = plots.read_events(out / "events.jsonl")
    try:
        plots.write_run_plot(out, spec.model_dump(mode="json"), spec.name, events)
    except Exception:
        log.warning("could not write %s", out / "metrics.png", exc_info=True)
    final = next((e["type"] for e in reversed(events) if e.get("type") in FINAL), None)
    sinks.close(final)

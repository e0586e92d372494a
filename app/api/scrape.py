"""GET /metrics in one scrape: this process's own metrics (HTTP, inference: the default
registry), the jobs table summed up (app.services.job_stats), and the counters workers push
(app.telemetry). The families of the last two are built afresh for each scrape, in a
registry of its own, so concurrent scrapes never share them."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from app import telemetry
from app.api.metrics import JOBS
from app.config import Settings
from app.db import Database
from app.services import job_stats


class _Fixed(Collector):
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def job_families(stats: job_stats.JobStats) -> Iterable[Metric]:
    depth = GaugeMetricFamily("stagecraft_queue_depth", "queued jobs by the queue they wait in", labels=["queue"])
    for queue, n in sorted(stats.queued.items()):
        depth.add_metric([queue], n)
    yield depth
    doc = "run time (started to finished) of the jobs in the table that ran, by outcome"
    durations = HistogramMetricFamily("stagecraft_job_duration_seconds", doc, labels=["outcome"])
    for outcome, d in stats.durations.items():
        buckets = [(str(b), float(c)) for b, c in zip(job_stats.DURATION_BUCKETS, d.buckets)]
        durations.add_metric([outcome], [*buckets, ("+Inf", float(d.count))], sum_value=d.total_s)
    yield durations
    doc = "lapsed leases (a worker lost or stalled) recorded on the jobs in the table"
    yield CounterMetricFamily("stagecraft_job_lease_losses", doc, value=stats.lease_losses)


def exposition(db: Database, settings: Settings) -> bytes:
    """The text of one scrape (the database's queries raise on an outage: the route's 503)."""
    with db.read() as session:
        stats = job_stats.collect(session, settings.queue)
    for status, n in stats.by_status.items():
        JOBS.labels(status).set(n)
    fresh = CollectorRegistry(auto_describe=False)
    fresh.register(_Fixed([*job_families(stats), *telemetry.families(telemetry.read(settings))]))
    return generate_latest() + generate_latest(fresh)

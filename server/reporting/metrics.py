"""Prometheus metrics, computed from the database at scrape time.

The database is the truth and any number of web processes may answer a scrape, so no
counters live in process memory: each scrape runs a few cheap aggregate queries
(executions by status, a duration histogram via conditional sums, pending
notifications) and reads the RQ queue lengths from Redis.

Access (see ``authorized``): ``GET /metrics`` answers to an admin (session or API token)
or to ``Authorization: Bearer $TASKMANAGER_METRICS_TOKEN`` when that variable is set,
so Prometheus can scrape without holding an admin API token. Everyone else gets 401/403:
task names and failure counts are not public.
"""
from __future__ import annotations

import hmac
import os
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from server.core.models import EXECUTION_STATUSES, Execution, Host, NotificationDelivery, Schedule, Task

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_token() -> str | None:
    return os.environ.get("TASKMANAGER_METRICS_TOKEN") or None


def token_matches(presented: str) -> bool:
    expected = metrics_token()
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


class DatabaseCollector:
    """A prometheus_client collector whose ``collect`` queries the database."""

    def __init__(self, session: Session, queue_names: list[str]) -> None:
        self.session = session
        self.queue_names = queue_names

    def collect(self):
        from server.reporting.reports import seconds_between

        s = self.session
        started = time.perf_counter()

        by_status = GaugeMetricFamily("taskmanager_executions", "Executions by status (all time)", labels=["status"])
        counts = dict(s.execute(select(Execution.status, func.count()).group_by(Execution.status)).all())
        for status in EXECUTION_STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status

        dur = seconds_between(s, Execution.started_at, Execution.finished_at)
        cols = [func.count(), func.coalesce(func.sum(dur), 0.0)]
        cols += [func.sum(case((dur <= b, 1), else_=0)) for b in DURATION_BUCKETS]
        row = s.execute(
            select(*cols).where(Execution.started_at.is_not(None), Execution.finished_at.is_not(None))
        ).one()
        total, total_s, per_bucket = int(row[0] or 0), float(row[1] or 0.0), [int(v or 0) for v in row[2:]]
        hist = HistogramMetricFamily(
            "taskmanager_execution_duration_seconds", "Run time of finished executions (started to finished)"
        )
        hist.add_metric([], [(str(float(b)), n) for b, n in zip(DURATION_BUCKETS, per_bucket, strict=True)] + [("+Inf", total)],
                        sum_value=total_s)
        yield hist

        q = GaugeMetricFamily("taskmanager_queue_jobs", "RQ jobs by queue and state", labels=["queue", "state"])
        up = GaugeMetricFamily("taskmanager_redis_up", "1 if Redis answered this scrape")
        try:
            from rq import Queue

            from server.core.redis_conn import redis

            for name in self.queue_names:
                queue = Queue(name, connection=redis())
                q.add_metric([name, "queued"], queue.count)
                q.add_metric([name, "started"], queue.started_job_registry.get_job_count(cleanup=False))
                q.add_metric([name, "failed"], queue.failed_job_registry.get_job_count(cleanup=False))
            up.add_metric([], 1)
        except Exception:  # noqa: BLE001 - report Redis down instead of failing the scrape
            up.add_metric([], 0)
        yield q
        yield up

        notif = GaugeMetricFamily("taskmanager_notifications", "Notification deliveries by status", labels=["status"])
        for status, n in s.execute(
            select(NotificationDelivery.status, func.count()).group_by(NotificationDelivery.status)
        ).all():
            notif.add_metric([status], n)
        yield notif

        inv = GaugeMetricFamily("taskmanager_objects", "Inventory size", labels=["kind"])
        inv.add_metric(["hosts"], s.execute(select(func.count()).select_from(Host)).scalar() or 0)
        inv.add_metric(["tasks"], s.execute(select(func.count()).select_from(Task)).scalar() or 0)
        inv.add_metric(["schedules_enabled"],
                       s.execute(select(func.count()).select_from(Schedule).where(Schedule.enabled.is_(True))).scalar() or 0)
        yield inv

        scrape = GaugeMetricFamily("taskmanager_scrape_duration_seconds", "Time spent computing these metrics")
        scrape.add_metric([], time.perf_counter() - started)
        yield scrape


def render(session: Session, queue_names: list[str]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(session, queue_names))
    return generate_latest(registry)

"""Prometheus metrics at `GET /metrics`, kept off the hot paths.

Everything the store and the broker already know (tasks per status, claims, rollouts,
the sizes of group commits) is read when Prometheus scrapes, by a collector, so claiming
and reporting pay nothing for it. Only request latency is observed per request, by a pure ASGI middleware that
labels it with the route's template (`/resources/{resources_id}`), never the raw path,
so that the number of series stays bounded. Each app has its own registry: several apps
in one process (tests, the embedded server) never see each other's metrics.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agl_cli import __version__
from agl_cli.models import TaskStatus
from agl_cli.server.broker import Broker, Snapshot
from agl_cli.server.openapi import template
from agl_cli.server.writer import Tally
from agl_cli.store import ReportOutcome

UNMATCHED = "<unmatched>"
# Any other method a client makes up is counted as "other", so it cannot add series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Local requests take well under a millisecond; long polls and streams take up to minutes.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class StoreCollector(Collector):
    """Tasks per status, the database's size and the broker's counts, computed when
    Prometheus scrapes.

    The store's counts and size are read off the event loop by the endpoint, just before
    it renders the registry (`snapshot`); the rest the broker keeps in memory."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterable[Metric]:
        if self.snapshot is None:  # a collect before any scrape (a registry's own check)
            return
        counts, space = self.snapshot.counts, self.snapshot.space
        tasks = GaugeMetricFamily("agl_tasks", "Tasks in the store, by status.", labels=["status"])
        for status in TaskStatus:
            tasks.add_metric([status.value], counts.tasks.get(status, 0))
        yield tasks
        yield CounterMetricFamily(
            "agl_tasks_forgotten",
            "Tasks deleted with their results (--forget-tasks), over the store's life.",
            value=counts.forgotten,
        )
        stats = self.broker.stats
        reports = stats.reports
        yield from (
            CounterMetricFamily(name, help_text, value=value, created=stats.started)
            for name, help_text, value in (
                (
                    "agl_claims",
                    "Tasks handed out to workers, and rollouts and attempts the store API's runners started.",
                    stats.claims,
                ),
                (
                    "agl_reclaims",
                    "Of those, tasks handed out again (a claim ran out or failed, or the task was retried).",
                    stats.reclaims,
                ),
                (
                    "agl_rollouts_stored",
                    "Results stored: the first for a task (a report or a store-API success), and unsolicited ones.",
                    stats.results,
                ),
                (
                    "agl_rollouts_duplicate",
                    "Rollouts for a task that already had one: answered, counted, not stored.",
                    reports[ReportOutcome.DUPLICATE],
                ),
                (
                    "agl_rollouts_unsolicited",
                    "Rollouts for an id agl never issued: stored, marked unsolicited.",
                    reports[ReportOutcome.UNSOLICITED],
                ),
                (
                    "agl_rollouts_pruned",
                    "Rollouts deleted once older than --rollout-retention.",
                    stats.pruned,
                ),
            )
        )
        yield GaugeMetricFamily(
            "agl_queue_paused", "1 while the queue is paused (it hands out no tasks), else 0.",
            value=int(self.broker.paused),
        )  # fmt: skip
        yield GaugeMetricFamily("agl_requests_in_flight", "Requests being served now.", value=stats.in_flight)
        yield CounterMetricFamily(
            "agl_requests_turned_away",
            "Requests answered 503 because as many as --max-requests were being served.",
            value=stats.turned_away,
            created=stats.started,
        )
        commits = self.broker.commit_stats
        yield _histogram(
            "agl_commit_group_size", "Writes that shared one commit (group commit).", commits.group_sizes
        )
        yield _histogram(
            "agl_commit_seconds",
            "How long the transaction of one group of writes took.",
            commits.commit_seconds,
        )
        yield _histogram(
            "agl_sync_seconds", "How long making a commit durable (one fsync) took.", commits.sync_seconds
        )
        yield GaugeMetricFamily(
            "agl_database_bytes", "The database: its pages, in use or free.", value=space.size
        )
        yield GaugeMetricFamily(
            "agl_database_free_bytes",
            "Of the database's pages, those deletions freed (agl compact gives them back).",
            value=space.free,
        )
        yield GaugeMetricFamily(
            "agl_database_log_bytes", "The write-ahead log beside the database.", value=space.log
        )
        if space.limit is not None:
            yield GaugeMetricFamily("agl_database_max_bytes", "--max-db-size.", value=space.limit)
        if space.disk_free is not None:
            yield GaugeMetricFamily(
                "agl_disk_free_bytes", "Free on the database's file system.", value=space.disk_free
            )
        info = GaugeMetricFamily("agl_info", "agl's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def _histogram(name: str, help_text: str, tally: Tally) -> Metric:
    buckets, cumulative = [], 0
    for bound, count in zip(tally.bounds, tally.buckets, strict=False):
        cumulative += count
        buckets.append((f"{bound:g}", cumulative))
    buckets.append(("+Inf", tally.count))
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=tally.total)


class LatencyCollector(Collector):
    """`agl_http_request_duration_seconds`: a histogram by route, method and status.

    Kept as plain counts per bucket, one list per label set: an observation is a bisect
    and two additions (a tenth of what a `prometheus_client.Histogram` costs with its
    locks), made on the event loop only; Prometheus gets the cumulative buckets."""

    NAME = "agl_http_request_duration_seconds"

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, int], list[float]] = {}  # bucket counts, then the sum

    def observe(self, key: tuple[str, str, int], seconds: float) -> None:
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        series[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(
            self.NAME,
            "Time from a request's arrival to the end of its response, by route template.",
            labels=["route", "method", "status"],
        )
        bounds = [*(_bound(bound) for bound in LATENCY_BUCKETS), "+Inf"]
        for (route, method, status), series in list(self._series.items()):
            family.add_metric(
                [route, method, str(status)],
                list(zip(bounds, itertools.accumulate(series[:-1]), strict=True)),
                series[-1],
            )
        yield family


def _bound(bound: float) -> str:
    return repr(float(bound))


class Metrics:
    """One app's registry: the store collector, process metrics and the latency histogram."""

    def __init__(self, broker: Broker, routes: Sequence[BaseRoute]) -> None:
        self.registry = CollectorRegistry()
        self.broker = broker
        self.store_collector = StoreCollector(broker)
        self.registry.register(self.store_collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.latency = LatencyCollector()
        self.registry.register(self.latency)
        self.routes = tuple(routes)
        # Looked up by endpoint, because `scope["route"]` only exists in newer Starlette.
        self.templates: dict[Callable[..., Any], str] = {
            route.endpoint: template(route.path) for route in routes if isinstance(route, Route)
        }

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        self.observe_route(self.template_of(scope), scope["method"], status, seconds)

    def observe_route(self, template: str, method: str, status: int, seconds: float) -> None:
        self.latency.observe((template, method if method in METHODS else "other", status), seconds)

    def template_of(self, scope: Scope) -> str:
        """The route template that served the request, found without matching again if possible."""
        route = scope.get("route")
        endpoint = route.endpoint if isinstance(route, Route) else scope.get("endpoint")
        if endpoint is not None and (found := self.templates.get(endpoint)) is not None:
            return found
        # Not routed: refused before routing (401, 413) or no such path (404).
        for candidate in self.routes:
            if isinstance(candidate, Route) and candidate.matches(scope)[0] is not Match.NONE:
                return template(candidate.path)
        return UNMATCHED

    async def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry as text, in the format the scraper asked for (OpenMetrics or classic)."""
        self.store_collector.snapshot = await self.broker.snapshot()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class RequestLatency:
    """Observes every HTTP request's latency; outermost, so refusals (401, 413) count too."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before it answers

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            self.metrics.observe(scope, status, time.perf_counter() - started)


async def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: open, like `/health`, so that a scraper needs no token."""
    metrics: Metrics = request.app.state.metrics
    body, content_type = await metrics.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)

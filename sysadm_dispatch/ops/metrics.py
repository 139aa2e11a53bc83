"""
Prometheus metrics: what the server has done and holds, served on a
listener of their own (``--metrics``).

Counting costs a few dictionary updates per job, on the reactor thread,
where the dispatcher tells its observers what happened to a job.  Nothing
is read from another thread: the exposition is made when it is asked for,
on the reactor thread, from the live dispatcher and the counts.  Labels are
only ``queue``, ``result``, ``transport`` and ``reason``: never a job id, a
command or a user, so the number of series stays small and nothing a client
sent appears.  See docs/operations.rst.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Site

from ..auth.login import Authenticator
from ..core.dispatcher import Dispatcher
from ..core.job import FINISHED, Job
from ..store.database import Store

PREFIX = "sysadm_dispatch_"
#: How a finished job ended (the ``result`` label).
RESULTS = ("succeeded", "failed", "killed", "timed_out", "interrupted")
#: Seconds, for job durations and queue waits: 10 ms to an hour.
JOB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
               1800.0, 3600.0)
#: Seconds, for one commit of the store (an fsync or two).
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TRANSPORTS = ("rest", "websocket")
LOGIN_RESULTS = ("ok", "failed", "blocked")
DROP_REASONS = ("slow_consumer", "idle", "auth_timeout")


class _Count(Protocol):
    def total(self) -> int: ...


class WebSocketCounts(Protocol):
    """What the metrics read of the WebSocket transport (its factory provides it)."""

    @property
    def connections(self) -> _Count: ...

    #: Connections the server closed, by reason.
    @property
    def dropped(self) -> Mapping[str, int]: ...


def result_of(job: Job) -> str:
    """The ``result`` label of a finished job."""
    if job.interrupted:
        return "interrupted"
    if job.killed:
        return "killed"
    if job.timed_out:
        return "timed_out"
    return "succeeded" if job.success else "failed"


class Buckets:
    """A histogram's counts: one per upper bound, and one for the values above the last."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound (le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class DispatchMetrics:
    """
    Counts what happens to jobs, logins, connections and the store, and
    exposes it with the live gauges.  Build one per server, after its
    dispatcher, and serve ``site()``.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        auth: Authenticator | None = None,
        websocket: WebSocketCounts | None = None,
        store: Store | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.auth = auth
        self.websocket = websocket
        self.submitted: Counter[str] = Counter()
        self.started: Counter[str] = Counter()
        self.finished: Counter[tuple[str, str]] = Counter()
        self.last_finish: dict[tuple[str, str], float] = {}
        self.duration: dict[str, Buckets] = {}
        self.wait: dict[str, Buckets] = {}
        self.commits = Buckets(COMMIT_BUCKETS)
        self.store_errors = 0
        dispatcher.observers.append(self.job_changed)
        if store is not None:
            store.observers.append(self.store_worked)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    # Counting (on the reactor thread).

    def job_changed(self, job: Job, change: str) -> None:
        queue = job.queue
        if change == "submitted":
            self.submitted[queue] += 1
        elif change == "started":
            self.started[queue] += 1
            if job.time_started is not None:
                self._buckets(self.wait, queue).observe(job.time_started - job.time_queued)
        elif job.state == FINISHED:
            # Finished, or found interrupted in the store at startup (whose
            # run time is unknown: the server was down meanwhile).
            result = result_of(job)
            self.finished[queue, result] += 1
            if job.time_finished is not None:
                self.last_finish[queue, result] = job.time_finished
                if change == "finished" and job.time_started is not None:
                    self._buckets(self.duration, queue).observe(job.time_finished - job.time_started)

    def store_worked(self, commits: list[float], errors: int) -> None:
        for seconds in commits:
            self.commits.observe(seconds)
        self.store_errors += errors

    @staticmethod
    def _buckets(table: dict[str, Buckets], queue: str) -> Buckets:
        buckets = table.get(queue)
        if buckets is None:
            buckets = table[queue] = Buckets(JOB_BUCKETS)
        return buckets

    # Exposing (on the reactor thread, when scraped).

    def collect(self) -> Iterator[Metric]:
        dispatcher = self.dispatcher
        queues = dispatcher.queues
        names = sorted({*queues, *self.submitted, *self.started, *(q for q, _ in self.finished)})

        def counter(name: str, doc: str, values: Counter[str]) -> CounterMetricFamily:
            family = CounterMetricFamily(PREFIX + name, doc, labels=["queue"])
            for queue in names:
                family.add_metric([queue], values.get(queue, 0))
            return family

        yield counter("jobs_submitted", "Jobs accepted, by queue.", self.submitted)
        yield counter("jobs_started", "Jobs started, by queue.", self.started)
        finished = CounterMetricFamily(PREFIX + "jobs_finished", "Jobs finished, by queue and result.",
                                       labels=["queue", "result"])
        for queue in names:
            for result in RESULTS:
                finished.add_metric([queue, result], self.finished.get((queue, result), 0))
        yield finished
        pending = GaugeMetricFamily(PREFIX + "jobs_pending", "Jobs waiting to start, by queue.", labels=["queue"])
        running = GaugeMetricFamily(PREFIX + "jobs_running", "Jobs running, by queue.", labels=["queue"])
        limit = GaugeMetricFamily(PREFIX + "queue_concurrency",
                                  "Jobs of the queue that may run at once (0: no limit).", labels=["queue"])
        for queue in names:
            q = queues.get(queue)
            pending.add_metric([queue], q.pending_count() if q is not None else 0)
            running.add_metric([queue], q.running_count() if q is not None else 0)
            if q is not None:
                limit.add_metric([queue], q.limit)
        yield pending
        yield running
        yield limit
        for name, doc, table in (
            ("job_duration_seconds", "Seconds from a job's start to its end, by queue.", self.duration),
            ("job_wait_seconds", "Seconds a job waited in its queue before it started, by queue.", self.wait),
        ):
            family = HistogramMetricFamily(PREFIX + name, doc, labels=["queue"])
            for queue in names:
                buckets = table.get(queue) or Buckets(JOB_BUCKETS)
                family.add_metric([queue], buckets.cumulative(), buckets.sum)
            yield family
        last = GaugeMetricFamily(PREFIX + "last_finish_timestamp_seconds",
                                 "When a job of the queue last finished with this result (Unix time).",
                                 labels=["queue", "result"])
        for (queue, result), when in sorted(self.last_finish.items()):
            last.add_metric([queue, result], when)
        yield last
        yield from self._logins()
        yield from self._connections()
        commits = HistogramMetricFamily(PREFIX + "store_commit_seconds",
                                        "Seconds one commit of the job store took (its writes and fsync).")
        commits.add_metric([], self.commits.cumulative(), self.commits.sum)
        yield commits
        yield CounterMetricFamily(PREFIX + "store_errors", "Requests the job store could not do.",
                                  value=self.store_errors)

    def _logins(self) -> Iterator[Metric]:
        if self.auth is None:
            return
        logins = CounterMetricFamily(PREFIX + "logins", "Password checks, by transport and result "
                                     "(blocked: refused because the address is blocked).",
                                     labels=["transport", "result"])
        seen = self.auth.logins
        for transport in sorted({*TRANSPORTS, *(t for t, _ in seen)}):
            for result in LOGIN_RESULTS:
                logins.add_metric([transport, result], seen.get((transport, result), 0))
        yield logins
        yield GaugeMetricFamily(PREFIX + "blocked_addresses", "Client addresses blocked after failed logins.",
                                value=self.auth.guard.blocked_count())

    def _connections(self) -> Iterator[Metric]:
        events = self.dispatcher.events
        yield GaugeMetricFamily(PREFIX + "event_subscribers", "Subscriptions to live events.",
                                value=sum(events.subscriber_count(name) for name in events.names))
        if self.websocket is None:
            return
        yield GaugeMetricFamily(PREFIX + "websocket_connections", "Open WebSocket connections.",
                                value=self.websocket.connections.total())
        dropped = CounterMetricFamily(PREFIX + "clients_dropped",
                                      "WebSocket connections the server closed, by reason.", labels=["reason"])
        for reason in sorted({*DROP_REASONS, *self.websocket.dropped}):
            dropped.add_metric([reason], self.websocket.dropped.get(reason, 0))
        yield dropped

    # Serving.

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format ``accept`` asks for (Prometheus text by default), and its type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def site(self, *, timeout: float | None = 60.0) -> Site:
        """The listener's site: ``/metrics``, no login (bind it where only the monitoring reaches it)."""
        root = _Root()
        root.putChild(b"metrics", MetricsResource(self))
        site = Site(root, timeout=timeout)
        site.displayTracebacks = False
        site.log = lambda request: None  # type: ignore[method-assign]
        return site


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: DispatchMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        accept = request.getHeader(b"accept")
        body, content_type = self.metrics.exposition(accept.decode("latin-1") if accept else None)
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        return body

    render_HEAD = render_GET


class _Root(Resource):
    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"sysadm-dispatch metrics: GET /metrics\n"

    def getChild(self, path: bytes, request: Any) -> Any:
        return self if path == b"" else notFound("No such resource", "The metrics are at /metrics.")


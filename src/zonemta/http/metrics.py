"""Prometheus metrics, fed by the event bus and read from the engine at scrape time.

A private :class:`CollectorRegistry` per relay (the default registry is global and adds
process collectors). Family names follow ZoneMTA's; as the official client does, counters
are exposed with a ``_total`` sample suffix (``zonemta_delivery_status_total``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from zonemta.engine.bus import Event
from zonemta.engine.delivery.outcome import ReleaseReason
from zonemta.store import ZoneCounts

#: Delivery states that end an attempt, and the ``result`` label they count as.
RESULTS = {"delivered": "delivered", "bounced": "rejected", "deferred": "deferred"}
# A lease given back without an attempt returns to queued, or to deferred when the delivery
# was tried before: no outcome either way.
_RELEASES = ("release", "release_deferred")
QUEUE_TIME_BUCKETS = (
    1,
    5,
    15,
    60,
    300,
    900,
    3600,
    4 * 3600,
    12 * 3600,
    86400,
    2 * 86400,
    5 * 86400,
)
ATTEMPT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# An attempt starts when the delivery leaves ``locked`` towards the network.
_ATTEMPT_STARTS = {"resolving", "sending"}

LabelledMetric = TypeVar("LabelledMetric", Counter, Histogram)


class Children(Generic[LabelledMetric]):
    """A labelled metric's children by their label values, each looked up in the metric
    once: ``labels()`` validates and locks on every call, and an event counts in up to
    three of them. The children are the metric's own (nothing here removes any)."""

    def __init__(self, metric: LabelledMetric) -> None:
        self._metric: LabelledMetric = metric
        self._children: dict[tuple[str, ...], LabelledMetric] = {}

    def __call__(self, *values: str) -> LabelledMetric:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


#: The ``reason`` labels a release may carry (its event's ``release`` detail); any other
#: (an event without one, e.g. from a plugin) counts as ``other``.
_RELEASE_REASONS = frozenset(reason.value for reason in ReleaseReason)


def release_reason(details: Mapping[str, object] | None) -> str:
    """The ``reason`` label of a release whose event carries ``details``: the code the
    Deliverer published as ``release`` (``ReleaseReason``), else ``other``."""
    code = details.get("release") if details else None
    return code if isinstance(code, str) and code in _RELEASE_REASONS else "other"


def queued_at(message_id: str) -> float | None:
    """When a queue id was made (epoch seconds), read from its first 14 hex digits
    (milliseconds * 4096 + counter, see ``zonemta.engine.ids``); None if it is not one."""
    if len(message_id) < 14:
        return None
    try:
        return (int(message_id[:14], 16) >> 12) / 1000
    except ValueError:
        return None


class PoolState(Protocol):
    """A zone's connection pool (in this process, or as a delivery process reported it)."""

    @property
    def reuses(self) -> int: ...

    @property
    def open_connections(self) -> int: ...


class _PoolCollector(Collector):
    """Connection pool and blacklist figures, read at scrape time."""

    def __init__(
        self,
        pools: Mapping[str, PoolState],
        blacklisted: Callable[[], int],
        suspended: Callable[[], int],
        warmup: Callable[[], list[tuple[str, int | None, int]]],
    ) -> None:
        self._pools = pools
        self._blacklisted = blacklisted
        self._suspended = suspended
        self._warmup = warmup

    def collect(self) -> Iterator[Metric]:
        reuses = CounterMetricFamily(
            "zonemta_connection_reuses",
            "Deliveries that took an idle open connection instead of opening one",
            labels=["zone"],
        )
        size = GaugeMetricFamily(
            "zonemta_connection_pool_size",
            "Open outgoing SMTP connections (busy or idle)",
            labels=["zone"],
        )
        for zone, pool in self._pools.items():
            reuses.add_metric([zone], pool.reuses)
            size.add_metric([zone], pool.open_connections)
        yield reuses
        yield size
        yield GaugeMetricFamily(
            "zonemta_blacklisted",
            "Local addresses currently disabled by a recipient domain (domain, address pairs)",
            value=self._blacklisted(),
        )
        yield GaugeMetricFamily(
            "zonemta_suspensions",
            "Suspensions in force (operators' holds and automatic backoffs)",
            value=self._suspended(),
        )
        used = GaugeMetricFamily(
            "zonemta_warmup_used",
            "Deliveries counted today against a source address's warm-up cap",
            labels=["address"],
        )
        cap = GaugeMetricFamily(
            "zonemta_warmup_cap",
            "Today's warm-up cap of a source address (absent once its ramp is over)",
            labels=["address"],
        )
        for address, today, count in self._warmup():
            used.add_metric([address], count)
            if today is not None:
                cap.add_metric([address], today)
        yield used
        yield cap


class Metrics:
    """Owns the registry. :meth:`on_event` is the bus listener (synchronous, cheap);
    :meth:`set_queue_sizes` is called at scrape time; :meth:`render` writes the text."""

    def __init__(
        self,
        *,
        zones: Iterable[str],
        pools: Mapping[str, PoolState],
        blacklisted: Callable[[], int] = lambda: 0,
        suspended: Callable[[], int] = lambda: 0,
        warmup: Callable[[], list[tuple[str, int | None, int]]] = list,
    ) -> None:
        # No ``_created`` series (ZoneMTA's prom-client has none); a process-wide switch,
        # and this registry is the process's only one.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.delivery_status = Counter(
            "zonemta_delivery_status",
            "Delivery attempt outcomes: delivered, rejected (bounced) or deferred",
            ["result", "zone"],
            registry=r,
        )
        self.message_push = Counter(
            "zonemta_message_push",
            "Messages offered to the queue: stored (success) or refused/failed (fail)",
            ["result"],
            registry=r,
        )
        self.message_drop = Counter(
            "zonemta_message_drop",
            "Receptions abandoned after they began (too large, client went away)",
            registry=r,
        )
        self.queue_size = Gauge(
            "zonemta_queue_size",
            "Pending deliveries: due now or being attempted (queued), waiting (deferred)",
            ["type"],
            registry=r,
        )
        self.queue_time = Histogram(
            "zonemta_queue_time_seconds",
            "Time from reception to the delivery's final outcome",
            ["zone", "result"],
            buckets=QUEUE_TIME_BUCKETS,
            registry=r,
        )
        self.attempt_time = Histogram(
            "zonemta_smtp_attempt_duration_seconds",
            "Duration of one delivery attempt, from MX lookup or connection reuse to outcome",
            ["zone", "result"],
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.subscribers_dropped = Counter(
            "zonemta_event_subscribers_dropped",
            "/events subscribers disconnected because they fell behind",
            registry=r,
        )
        self.backoffs = Counter(
            "zonemta_backoff",
            "Automatic backoffs: a remote reply matched a backoff rule and suspended a domain",
            ["zone", "rule"],
            registry=r,
        )
        self.released = Counter(
            "zonemta_deliveries_released",
            "Leases given back without an attempt: held by a suspension, warm-up cap used,"
            " a rate or connection limit used by the instances sharing the store, shutdown",
            ["zone", "reason"],
            registry=r,
        )
        r.register(_PoolCollector(pools, blacklisted, suspended, warmup))
        for zone in zones:
            for result in RESULTS.values():
                self.delivery_status.labels(result, zone)
        for push in ("success", "fail"):
            self.message_push.labels(push)
        for kind in ("queued", "deferred"):
            self.queue_size.labels(kind)
        self._attempts: dict[tuple[str, int | None], float] = {}
        # The children every delivery or queued message counts in, looked up once.
        self._status = Children(self.delivery_status)
        self._attempt_time = Children(self.attempt_time)
        self._queue_time = Children(self.queue_time)
        self._pushed = self.message_push.labels("success")

    def on_event(self, event: Event) -> None:
        """Count one bus event (registered with ``EventBus.add_listener``)."""
        kind = event.type
        if kind == "delivery":
            self._on_delivery(event)
        elif kind == "message.queued":
            self._pushed.inc()
        elif kind == "message.rejected":
            self.message_push.labels("fail").inc()
        elif kind == "message.dropped":
            self.message_drop.inc()
        elif kind == "suspension.added" and event.details and "rule" in event.details:
            self.backoffs.labels(event.zone or "", str(event.details["rule"])).inc()

    def _on_delivery(self, event: Event) -> None:
        key = (event.id, event.seq)
        state = event.to_state or ""
        if event.from_state == "locked" and state in _ATTEMPT_STARTS:
            self._attempts[key] = event.time
            return
        trigger = event.details.get("trigger") if event.details else None
        result = None if trigger in _RELEASES else RESULTS.get(state)
        if result is None:
            if state in ("queued", "deferred"):  # released unattempted: no outcome
                self._attempts.pop(key, None)
                if trigger in _RELEASES:
                    self.released.labels(event.zone or "", release_reason(event.details)).inc()
            return
        zone = event.zone or ""
        self._status(result, zone).inc()
        started = self._attempts.pop(key, None)
        if started is not None:
            self._attempt_time(zone, result).observe(max(event.time - started, 0.0))
        if result != "deferred":
            received = queued_at(event.id)
            if received is not None:
                self._queue_time(zone, result).observe(max(event.time - received, 0.0))

    def set_queue_sizes(self, counts: Mapping[str, ZoneCounts]) -> None:
        self.queue_size.labels("queued").set(sum(c.active for c in counts.values()))
        self.queue_size.labels("deferred").set(sum(c.deferred for c in counts.values()))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for, and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

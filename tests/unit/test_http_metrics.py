"""Metrics fed by bus events: counters, histograms, queue gauges, pool figures."""

from __future__ import annotations

import itertools

import attrs
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from zonemta.engine.bus import Event, EventBus
from zonemta.engine.delivery.connections import ZoneConnections
from zonemta.engine.delivery.outcome import ReleaseReason
from zonemta.engine.ids import QueueIdGenerator
from zonemta.http.metrics import Children, Metrics, queued_at
from zonemta.store import ZoneCounts


def delivery(message_id: str, seq: int, source: str, target: str, at: float) -> Event:
    return Event(
        "delivery", message_id, at, seq=seq, zone="default", from_state=source, to_state=target
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_queue_id_time_is_read_back() -> None:
    message_id = QueueIdGenerator(lambda: 1_700_000_000.123).next_id()
    assert queued_at(message_id) == 1_700_000_000.123
    assert queued_at("zz") is None and queued_at("not-hex-at-all-really") is None


def test_outcomes_attempt_durations_and_time_in_queue() -> None:
    metrics = Metrics(zones=["default", "bounces"], pools={})
    bus = EventBus()
    bus.add_listener(metrics.on_event)
    mid = QueueIdGenerator(lambda: 1000.0).next_id()
    bus.publish(Event("message.queued", mid, 1000.0))
    path = ["queued", "locked", "resolving", "connecting", "sending", "deferred"]
    for n, (a, b) in enumerate(itertools.pairwise(path)):
        bus.publish(delivery(mid, 1, a, b, 1000.0 + n))  # locked→resolving at 1001
    for a, b, at in [
        ("deferred", "locked", 1100.0),
        ("locked", "sending", 1100.5),
        ("sending", "delivered", 1102.5),
    ]:
        bus.publish(delivery(mid, 1, a, b, at))
    for a, b, at in [("queued", "locked", 1000.0), ("locked", "bounced", 1000.0)]:
        bus.publish(delivery(mid, 2, a, b, at))  # suppressed: no attempt
    bus.publish(Event("message.rejected", "", 1.0))
    bus.publish(Event("message.dropped", "x", 1.0))

    status = "zonemta_delivery_status_total"
    assert sample(metrics, status, result="deferred", zone="default") == 1
    assert sample(metrics, status, result="delivered", zone="default") == 1
    assert sample(metrics, status, result="rejected", zone="default") == 1
    assert sample(metrics, status, result="delivered", zone="bounces") == 0
    assert sample(metrics, "zonemta_message_push_total", result="success") == 1
    assert sample(metrics, "zonemta_message_push_total", result="fail") == 1
    assert sample(metrics, "zonemta_message_drop_total") == 1
    attempt = "zonemta_smtp_attempt_duration_seconds"
    assert (
        sample(metrics, attempt + "_sum", zone="default", result="deferred") == 3.0
    )  # 1001 → 1004
    assert sample(metrics, attempt + "_sum", zone="default", result="delivered") == 2.0
    assert sample(metrics, attempt + "_count", zone="default", result="rejected") is None
    queue = "zonemta_queue_time_seconds"
    assert sample(metrics, queue + "_sum", zone="default", result="delivered") == 102.5
    assert sample(metrics, queue + "_count", zone="default", result="rejected") == 1


def test_exposition_has_the_reference_family_names() -> None:
    pool = ZoneConnections(3)
    pool.reuses = 7
    metrics = Metrics(zones=["default"], pools={"default": pool})
    metrics.set_queue_sizes({"default": ZoneCounts(2, 5), "bounces": ZoneCounts(1, 0)})
    body, content_type = metrics.render("text/plain")
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {
        "zonemta_delivery_status",
        "zonemta_message_push",
        "zonemta_message_drop",
        "zonemta_queue_size",
        "zonemta_connection_reuses",
        "zonemta_connection_pool_size",
        "zonemta_queue_time_seconds",
        "zonemta_smtp_attempt_duration_seconds",
    } <= set(families)
    assert families["zonemta_delivery_status"].type == "counter"
    sizes = {s.labels["type"]: s.value for s in families["zonemta_queue_size"].samples}
    assert sizes == {"queued": 3, "deferred": 5}
    (reuses,) = families["zonemta_connection_reuses"].samples
    assert reuses.labels == {"zone": "default"} and reuses.value == 7
    assert not any(name.endswith("_created") for name in families)


def test_a_lease_given_back_is_no_outcome_whichever_state_it_returns_to() -> None:
    metrics = Metrics(zones=["default"], pools={})
    mid = QueueIdGenerator(lambda: 1000.0).next_id()
    for seq, (trigger, target) in enumerate(
        [("release", "queued"), ("release_deferred", "deferred")]
    ):
        metrics.on_event(delivery(mid, seq, "deferred", "locked", 1000.0))
        released = delivery(mid, seq, "locked", target, 1001.0)
        metrics.on_event(attrs.evolve(released, details={"trigger": trigger}))
    for result in ("deferred", "delivered", "rejected"):
        assert sample(metrics, "zonemta_delivery_status_total", result=result, zone="default") == 0


def test_releases_are_counted_by_the_code_their_event_carries() -> None:
    """The label is the event's ``release`` detail (the Deliverer's ReleaseReason), never
    read from the response: a release without a known code (a plugin's) is ``other``."""
    metrics = Metrics(zones=["default"], pools={})
    mid = QueueIdGenerator(lambda: 1000.0).next_id()
    releases: list[tuple[str | None, str]] = [
        ("shared_rate", "any text"),
        ("shared_connections", "any text"),
        ("shared_connections", "released at shutdown"),  # the code wins over the text
        ("warmup", ""),
        ("suspended", "held by suspension 0a1b: domain x.test; by ops"),
        ("shutdown", "released at shutdown"),
        (None, "released at shutdown"),  # no code: not guessed from the text
        ("something new", "x"),
    ]
    for seq, (code, response) in enumerate(releases):
        metrics.on_event(delivery(mid, seq, "queued", "locked", 1000.0))
        details = {"trigger": "release"} | ({} if code is None else {"release": code})
        released = delivery(mid, seq, "locked", "queued", 1001.0)
        metrics.on_event(attrs.evolve(released, response=response, details=details))
    counted = {
        reason: sample(metrics, "zonemta_deliveries_released_total", zone="default", reason=reason)
        for reason in [*ReleaseReason, "other"]
    }
    assert counted == {
        "shared_rate": 1,
        "shared_connections": 2,
        "warmup": 1,
        "suspended": 1,
        "shutdown": 1,
        "other": 2,
    }
    assert (
        sample(metrics, "zonemta_deliveries_released_total", zone="default", reason="something new")
        is None
    )


def test_children_are_the_metrics_own_one_per_label_values() -> None:
    registry = CollectorRegistry()
    counter = Counter("t", "a test counter", ["a", "b"], registry=registry)
    children = Children(counter)
    children("x", "y").inc()
    children("x", "z").inc(2)
    children("x", "y").inc()
    assert children("x", "y") is counter.labels("x", "y")
    assert registry.get_sample_value("t_total", {"a": "x", "b": "y"}) == 2
    assert registry.get_sample_value("t_total", {"a": "x", "b": "z"}) == 2


def test_queued_messages_and_outcomes_count_across_zones() -> None:
    metrics = Metrics(zones=["default", "other"], pools={})
    for index in range(3):
        metrics.on_event(Event("message.queued", f"m{index}", 1.0))
    for zone, result in (("default", "delivered"), ("other", "delivered"), ("other", "bounced")):
        event = Event("delivery", "m", 2.0, seq=1, zone=zone, from_state="sending", to_state=result)
        metrics.on_event(event)
    assert sample(metrics, "zonemta_message_push_total", result="success") == 3
    assert sample(metrics, "zonemta_delivery_status_total", result="delivered", zone="default") == 1
    assert sample(metrics, "zonemta_delivery_status_total", result="delivered", zone="other") == 1
    assert sample(metrics, "zonemta_delivery_status_total", result="rejected", zone="other") == 1
    assert sample(metrics, "zonemta_delivery_status_total", result="rejected", zone="default") == 0

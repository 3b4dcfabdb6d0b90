"""Pure pieces of the engine: retry policy, queue ids, header splitting, routing, the bus."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio

from zonemta.conf import config_from_dict
from zonemta.engine.bus import Event, EventBus
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.engine.ids import QueueIdGenerator
from zonemta.engine.intake.reception import is_header_block, split_header_block
from zonemta.engine.intake.routing import Router
from zonemta.statemachine import Trigger

REFERENCE_MINUTES = [5, 7, 8, 25, 75, 120] + [240] * 11


def test_default_schedule_matches_the_reference_and_spans_48_hours() -> None:
    config = config_from_dict({})
    schedule = [t.total_seconds() / 60 for t in config.queue.retry_schedule]
    assert schedule == REFERENCE_MINUTES
    assert sum(schedule) == 48 * 60


def test_retry_policy_defers_then_exhausts() -> None:
    policy = RetryPolicy.from_config(
        [timedelta(minutes=5), timedelta(minutes=7)], timedelta(days=5)
    )
    assert policy.on_temporary_failure(attempts=0, created=0, now=10) is Trigger.TRANSIENT_FAILURE
    assert policy.next_attempt(attempts=0, now=100) == 400
    assert policy.next_attempt(attempts=1, now=100) == 520
    assert policy.on_temporary_failure(attempts=1, created=0, now=10) is Trigger.TRANSIENT_FAILURE
    assert policy.on_temporary_failure(attempts=2, created=0, now=10) is Trigger.RETRIES_EXHAUSTED


def test_retry_policy_gives_up_after_max_queue_time() -> None:
    policy = RetryPolicy.from_config([timedelta(minutes=5)] * 10, timedelta(hours=1))
    assert policy.on_temporary_failure(attempts=0, created=0, now=3600) is Trigger.RETRIES_EXHAUSTED
    assert policy.is_expired(created=0, now=3600)
    assert not policy.is_expired(created=0, now=3599)


def test_queue_ids_increase_even_when_the_clock_stands_still() -> None:
    ids = QueueIdGenerator(lambda: 1_700_000_000.0, suffix="abcdef")
    made = [ids.next_id() for _ in range(5000)]
    assert made == sorted(made)
    assert len(set(made)) == 5000
    assert all(len(i) == 20 and i.endswith("abcdef") for i in made)


def test_queue_ids_of_two_processes_differ() -> None:
    clock = lambda: 1_700_000_000.0  # noqa: E731
    assert QueueIdGenerator(clock).next_id() != QueueIdGenerator(clock).next_id()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody", (b"A: 1\r\nB: 2\r\n", b"body")),
        (b"\r\nbody only", (b"", b"body only")),
        (b"A: 1\r\n\r\n", (b"A: 1\r\n", b"")),
        (b"A: 1\r\nB: 2", None),
    ],
)
def test_split_header_block(content: bytes, expected: tuple[bytes, bytes] | None) -> None:
    assert split_header_block(content) == expected


def test_header_block_recognition() -> None:
    assert is_header_block(b"Subject: x\r\n\tcontinued\r\nX-A:1\r\n")
    assert not is_header_block(b"not a header line\r\n")
    assert not is_header_block(b" leading continuation: x\r\n")
    assert not is_header_block(b"")


def test_router_dedups_recipients_and_lowercases_domains() -> None:
    router = Router(config_from_dict({}))
    routes = router.route(["A@Example.COM", "A@example.com", "b@example.com", "a@example.com"])
    assert [(r.recipient, r.domain, r.zone) for r in routes] == [
        ("A@example.com", "example.com", "default"),
        ("b@example.com", "example.com", "default"),
        ("a@example.com", "example.com", "default"),
    ]


async def test_bus_fans_out_and_drops_a_slow_subscriber() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.add_listener(lambda e: seen.append(e.id))
    fast = bus.subscribe(buffer=10)
    slow = bus.subscribe(buffer=2, accept=lambda e: e.type == "delivery")
    for n in range(5):
        bus.publish(Event("delivery", str(n), 0.0))
    bus.publish(Event("message.queued", "m", 0.0))
    assert seen == ["0", "1", "2", "3", "4", "m"]
    assert slow.overflowed
    got = [fast.receive.receive_nowait().id for _ in range(6)]
    assert got == ["0", "1", "2", "3", "4", "m"]
    received = []
    async for event in slow.receive:
        received.append(event.id)
    assert received == ["0", "1"]  # then closed, not blocking the publisher
    with pytest.raises(trio.WouldBlock):
        fast.receive.receive_nowait()


def test_event_json_leaves_out_unknown_fields() -> None:
    event = Event("delivery", "id1", 1.5, seq=1, to_state="sending", details={"trigger": "x"})
    assert event.to_json() == {
        "type": "delivery",
        "id": "id1",
        "time": 1.5,
        "seq": 1,
        "to_state": "sending",
        "trigger": "x",
    }

"""The retry schedule and ``max_queue_time`` in simulated time: a whole relay runs on
trio's MockClock (its clock is ``trio.current_time``), so hours of retries take a moment.
The clock jumps only when the relay has been idle for a while in real time, so waiting for
the loopback MX or sqlite's threads never counts as idle. The retry times are asserted to
within 15 s: each jump happens some real time after the relay went idle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.support.mx import TestMx
from tests.support.relay import collect_until, relay_config, submit_async
from zonemta.app import Relay, RelayInfo
from zonemta.engine.bus import Event

MESSAGE = b"From: s@origin.test\r\nSubject: retries\r\n\r\nbody\r\n"


def outcomes(events: list[Event]) -> list[tuple[float, str, str | None]]:
    return [
        (e.time, e.to_state or "", e.category)
        for e in events
        if e.type == "delivery" and e.to_state in ("deferred", "bounced", "delivered")
    ]


async def run_until_bounced(tmp_path: Path, mx: TestMx, queue: dict[str, object]) -> list[Event]:
    config = relay_config(
        tmp_path / "q",
        queue=queue,
        # Idle connections are swept every ttl / 2: a long ttl keeps the sweeper quiet.
        zones={
            "default": {"host": "127.0.0.1", "port": mx.port, "connection_cache": {"ttl": "2d"}},
            "bounces": {"connection_cache": {"ttl": "2d"}},
        },
        bounces={"dsn": {"enabled": False}},
        # A delivery process starts against real time: simulated days run in one process.
        delivery={"processes": 0},
        intake={"processes": 0},  # child processes cannot start under the autojump clock
        api={"enabled": False},
    )
    relay = Relay(config, clock=trio.current_time, shutdown_grace=2.0)
    # One relay alone on its store: nothing to poll for, so nothing wakes the relay but its
    # own timers (each wake-up costs the autojump threshold in real time).
    for scheduler in relay.engine.schedulers.values():
        scheduler.poll_interval = 86400
    for service in (relay.engine.suspensions, relay.engine.blacklist, relay.engine.suppressions):
        service.refresh_interval = 86400
    async with trio.open_nursery() as nursery:
        info: RelayInfo = await nursery.start(relay.run)
        events = relay.bus.subscribe()
        await submit_async(info.smtp_ports["feeder"], "s@origin.test", ["a@later.test"], MESSAGE)
        seen = await collect_until(
            events, lambda evs: any(e.to_state == "bounced" for e in evs), seconds=10 * 86400
        )
        relay.request_stop()
    return seen


@pytest.fixture
def refusing_mx() -> Iterator[TestMx]:
    with TestMx(rcpt_reply=lambda _address: "451 4.3.0 try later") as mx:
        yield mx


async def test_the_retry_schedule_is_followed_then_the_delivery_bounces(
    tmp_path: Path, mock_clock: trio.testing.MockClock, refusing_mx: TestMx
) -> None:
    mock_clock.autojump_threshold = 0.1
    seen = await run_until_bounced(
        tmp_path, refusing_mx, {"retry_schedule": ["5m", "30m", "2h"], "max_queue_time": "5d"}
    )
    got = outcomes(seen)
    assert [state for _, state, _ in got] == ["deferred", "deferred", "deferred", "bounced"]
    start = got[0][0]
    # Attempts at 0, 5 min, 35 min and 2 h 35 min (each after the previous one's wait).
    assert [t - start for t, _, _ in got] == pytest.approx([0, 300, 2100, 9300], abs=15)
    assert len(refusing_mx.rcpt_peers) == 4


async def test_max_queue_time_expires_a_delivery_between_retries(
    tmp_path: Path, mock_clock: trio.testing.MockClock, refusing_mx: TestMx
) -> None:
    mock_clock.autojump_threshold = 0.1
    seen = await run_until_bounced(
        tmp_path, refusing_mx, {"retry_schedule": ["1h"] * 50, "max_queue_time": "210m"}
    )
    got = outcomes(seen)
    # Tried at 0, 1 h, 2 h and 3 h; the attempt due at 4 h finds the message expired and
    # bounces it without connecting.
    assert [state for _, state, _ in got] == ["deferred"] * 4 + ["bounced"]
    start = got[0][0]
    assert [t - start for t, _, _ in got] == pytest.approx([0, 3600, 7200, 10800, 14400], abs=15)
    assert got[-1][2] == "expired"
    assert len(refusing_mx.rcpt_peers) == 4

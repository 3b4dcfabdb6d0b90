"""Warm-up ramps over simulated days: a whole relay on trio's MockClock (its clock is
``trio.current_time``, so the ramp's day 0 is 1970-01-01). An address sends at most its
day's cap; then the pool's other address takes over, or, with no other address, the
deliveries wait for the next day and ``why`` says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.support.mx import TestMx
from tests.support.relay import api_url, collect_until, relay_config, submit_async
from zonemta.app import Relay, RelayInfo
from zonemta.engine.bus import Event

MESSAGE = b"From: s@origin.test\r\nSubject: warm\r\n\r\nbody\r\n"
DAY = 86400


@pytest.fixture
def mx() -> Iterator[TestMx]:
    with TestMx() as started:
        yield started


def relay_on_mock_clock(tmp_path: Path, mx: TestMx, pool: list[dict[str, Any]]) -> Relay:
    config = relay_config(
        tmp_path / "q",
        pools={"warm": pool},
        zones={
            "default": {
                "host": "127.0.0.1",
                "port": mx.port,
                "pool": "warm",
                "connections": 2,
                "connection_cache": {"ttl": "2d"},
            },
            "bounces": {"connection_cache": {"ttl": "2d"}},
        },
        bounces={"dsn": {"enabled": False}},
        # A delivery process starts against real time: simulated days run in one process.
        delivery={"processes": 0},
        intake={"processes": 0},  # child processes cannot start under the autojump clock
        api={"port": 0},
    )
    relay = Relay(config, clock=trio.current_time, shutdown_grace=2.0)
    # Alone on its store: nothing to poll for (each wake-up costs real time under autojump).
    for scheduler in relay.engine.schedulers.values():
        scheduler.poll_interval = 10 * DAY
    for service in (relay.engine.suspensions, relay.engine.blacklist, relay.engine.suppressions):
        service.refresh_interval = 10 * DAY
    relay.engine.warmup.refresh_interval = 10 * DAY
    return relay


def delivered(events: list[Event]) -> list[tuple[float, str | None]]:
    return [(e.time, e.local_address) for e in events if e.to_state == "delivered"]


async def test_one_address_sends_its_daily_caps_and_then_waits(
    tmp_path: Path, mock_clock: trio.testing.MockClock, mx: TestMx
) -> None:
    mock_clock.autojump_threshold = 0.1
    warmup = {"start": "1970-01-01", "schedule": [2, 3]}
    relay = relay_on_mock_clock(tmp_path, mx, [{"address": "127.0.0.1", "warmup": warmup}])
    async with trio.open_nursery() as nursery:
        info: RelayInfo = await nursery.start(relay.run)
        events = relay.bus.subscribe()
        port = info.smtp_ports["feeder"]
        ids = [
            await submit_async(port, "s@origin.test", [f"r{n}@x.test"], MESSAGE) for n in range(7)
        ]
        seen = await collect_until(events, lambda evs: len(delivered(evs)) == 2, seconds=DAY / 2)
        waiting = [i for i in ids if await relay.store.deliveries_of(i)]
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            why = (await client.get(f"/message/{waiting[0]}/why")).json()
            metrics = (await client.get("/metrics")).text
        # (each wait counts the deliveries it sees: 3 on day 1, the last 2 on day 2)
        seen += await collect_until(events, lambda evs: len(delivered(evs)) == 3, seconds=2 * DAY)
        seen += await collect_until(events, lambda evs: len(delivered(evs)) == 2, seconds=2 * DAY)
        relay.request_stop()
    times = sorted(t for t, _ in delivered(seen))
    days = [int(t // DAY) for t in times]
    assert days == [0, 0, 1, 1, 1, 2, 2]  # caps 2 and 3, then the schedule is over
    assert all(address == "127.0.0.1" for _, address in delivered(seen))
    (reasons,) = [r["reasons"] for r in why["recipients"]]
    assert [r["code"] for r in reasons] == ["warmup"]
    assert reasons[0]["addresses"] == {"127.0.0.1": {"cap": 2, "used": 2}}
    assert reasons[0]["next_day"] == "1970-01-02T00:00:00.000Z"
    assert 'zonemta_warmup_used{address="127.0.0.1"} 2.0' in metrics
    assert 'zonemta_warmup_cap{address="127.0.0.1"} 2.0' in metrics
    assert [state for e in seen if e.type == "delivery" for state in [e.to_state]].count(
        "bounced"
    ) == 0


async def test_a_capped_address_hands_its_deliveries_to_the_other_one(
    tmp_path: Path, mock_clock: trio.testing.MockClock, mx: TestMx
) -> None:
    mock_clock.autojump_threshold = 0.1
    pool = [
        {"address": "127.0.0.1"},
        {"address": "127.0.0.2", "warmup": {"start": "1970-01-01", "initial": 2, "growth": 2.0}},
    ]
    relay = relay_on_mock_clock(tmp_path, mx, pool)
    async with trio.open_nursery() as nursery:
        info: RelayInfo = await nursery.start(relay.run)
        events = relay.bus.subscribe()
        port = info.smtp_ports["feeder"]
        for n in range(12):
            await submit_async(port, "s@origin.test", [f"r{n}@x.test"], MESSAGE)
        seen = await collect_until(events, lambda evs: len(delivered(evs)) == 12, seconds=DAY / 2)
        relay.request_stop()
    from_new = [t for t, address in delivered(seen) if address == "127.0.0.2"]
    assert len(from_new) == 2  # day 0's cap; the rest went from 127.0.0.1 at once
    assert all(t < DAY for t, _ in delivered(seen))
    assert {peer for _, peer in mx.rcpt_peers} == {"127.0.0.1", "127.0.0.2"}

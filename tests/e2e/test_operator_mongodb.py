"""Two relays sharing one MongoDB (SecantusDB on loopback): a domain's ``rate`` holds for
all instances together (at most ``count`` deliveries per window of the rate's period; the
rest wait, given back without an attempt, and ``why`` says so), and a suspension made on one
relay holds on the other."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.support.dnsserver import run_dns_server
from tests.support.mongo import MongoEndpoint, mongo_endpoint
from tests.support.mx import TestMx
from tests.support.relay import (
    api_url,
    collect_until,
    relay_config,
    running_relay,
    submit_async,
)
from zonemta.conf import Config
from zonemta.engine.bus import Event, Subscription
from zonemta.engine.delivery.shared_rate import SHARED_RATE_USED
from zonemta.engine.why import trio_to_epoch

MESSAGE = b"From: s@origin.test\r\nSubject: shared rate\r\n\r\nbody\r\n"


@pytest.fixture
def mongo(tmp_path: Path) -> Iterator[MongoEndpoint]:
    with mongo_endpoint(tmp_path / "mongo") as endpoint:
        yield endpoint


def two_relay_configs(
    tmp_path: Path, mongo: MongoEndpoint, database: str, **sections: Any
) -> list[Config]:
    """Relays "a" and "b" on one MongoDB database, with the other ``sections`` alike."""
    queue = {"backend": "mongodb", "mongodb_uri": mongo.uri, "database": database}
    return [
        relay_config(tmp_path / name, queue={**queue, "instance_id": name}, **sections)
        for name in ("a", "b")
    ]


async def until_refused(subscriptions: list[Subscription]) -> tuple[int, int]:
    """Wait until the relays together delivered 3 and one of them had a claim refused;
    returns (deliveries seen, index of a relay that was refused)."""
    delivered = 0
    refused: list[int] = []

    async def read(index: int, subscription: Subscription) -> None:
        nonlocal delivered
        async for event in subscription.receive:
            delivered += event.to_state == "delivered"
            if event.to_state == "queued" and (event.details or {}).get("release") == (
                "shared_rate"
            ):
                assert event.response == SHARED_RATE_USED
                refused.append(index)
            if delivered >= 3 and refused:
                nursery.cancel_scope.cancel()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for index, subscription in enumerate(subscriptions):
                nursery.start_soon(read, index, subscription)
    return delivered, refused[0]


async def test_two_relays_share_one_rate(tmp_path: Path, mongo: MongoEndpoint) -> None:
    with TestMx() as mx, mongo.fresh_database() as database:
        configs = two_relay_configs(
            tmp_path,
            mongo,
            database,
            zones={"default": {"host": "127.0.0.1", "port": mx.port}},
            domains={"x.test": {"rate": "3/day"}},
        )
        async with AsyncExitStack() as stack:
            relays = [await stack.enter_async_context(running_relay(c)) for c in configs]
            subscriptions = [relay.bus.subscribe() for relay, _ in relays]
            ids = []
            for n in range(10):
                _, info = relays[n % 2]
                ids.append(
                    await submit_async(
                        info.smtp_ports["feeder"], "s@o.test", [f"r{n}@x.test"], MESSAGE
                    )
                )
            # The 4th claim of the day's window is refused, whichever relay makes it.
            delivered, index = await until_refused(subscriptions)
            relay, info = relays[index]
            # The relay's own bucket (3 a day: a token per 8 hours) may bind later than the
            # shared window when it has taken tokens for attempts still waiting their turn.
            own_slot = relay.engine.schedulers["default"].domains.rate_limited("x.test")
            own = None if own_slot is None else trio_to_epoch(time.time)(own_slot)
            waiting = [i for i in ids if await relay.store.deliveries_of(i)]
            async with httpx.AsyncClient(base_url=api_url(info)) as client:
                why = (await client.get(f"/message/{waiting[-1]}/why")).json()
        # Both relays have stopped: nothing more can be sent.
    assert delivered == 3 and len(mx.received()) == 3 and len(waiting) == 7
    (reasons,) = [r["reasons"] for r in why["recipients"]]
    rate = [r for r in reasons if r["code"] == "rate"]
    assert rate and rate[0]["rate"] == "3/day"
    # The next window (the next 00:00 UTC), or the relay's own next token if that is later
    # (to within the clocks' conversion).
    token = datetime.fromisoformat(rate[0]["next_token"].replace("Z", "+00:00")).timestamp()
    window = (time.time() // 86400 + 1) * 86400
    assert abs(token - max(window, own or window)) < 1.0


async def test_a_suspension_made_on_one_relay_holds_on_the_other(
    tmp_path: Path, mongo: MongoEndpoint
) -> None:
    with TestMx() as mx, mongo.fresh_database() as database:
        configs = two_relay_configs(
            tmp_path,
            mongo,
            database,
            zones={"default": {"host": "127.0.0.1", "port": mx.port}},
        )
        async with AsyncExitStack() as stack:
            (_relay_a, info_a), (relay_b, info_b) = [
                await stack.enter_async_context(running_relay(c)) for c in configs
            ]
            async with httpx.AsyncClient(base_url=api_url(info_a)) as client:
                made = await client.post("/suspend", json={"domain": "x.test", "who": "ops"})
                entry_id = made.json()["suspension"]["id"]
            await relay_b.engine.suspensions.reload()  # what its 10 s refresh does
            events = relay_b.bus.subscribe()
            message_id = await submit_async(
                info_b.smtp_ports["feeder"], "s@o.test", ["r@x.test"], MESSAGE
            )
            async with httpx.AsyncClient(base_url=api_url(info_b)) as client:
                listed = (await client.get("/suspend")).json()["suspensions"]
                why = (await client.get(f"/message/{message_id}/why")).json()
                (reasons,) = [r["reasons"] for r in why["recipients"]]
                assert [r["code"] for r in reasons] == ["suspended"]
                assert [e["id"] for e in listed] == [entry_id]
                # Resumed on b, which delivers at once (a still holds it until its refresh).
                assert (await client.delete(f"/suspend/{entry_id}")).status_code == 200
            with trio.fail_after(30):
                async for event in events.receive:
                    if event.to_state == "delivered":
                        break
    assert [m.recipients for m in mx.received()] == [("r@x.test",)]


ZONE_FILE = """
$ORIGIN test.
$TTL 300
@          IN SOA ns.test. admin.test. 1 7200 3600 1209600 300
x          IN MX 10 mx.test.
mx         IN A 127.0.0.1
"""


async def test_two_relays_share_one_connection_limit(tmp_path: Path, mongo: MongoEndpoint) -> None:
    """x.test takes one delivery at a time: while relay a sends to it, relay b leases none
    of its own and ``why`` counts a's delivery; r2 goes once a's attempt is over."""
    with TestMx() as mx, mongo.fresh_database() as database:
        mx.stall_data.set()
        async with run_dns_server(ZONE_FILE) as dns, AsyncExitStack() as stack:
            configs = two_relay_configs(
                tmp_path,
                mongo,
                database,
                dns={"nameservers": [f"127.0.0.1:{dns.port}"]},
                zones={"default": {"port": mx.port}},  # MX delivery: a smart host has none
                domains={"x.test": {"max_connections": 1}},
            )
            (relay_a, info_a), (relay_b, info_b) = [
                await stack.enter_async_context(running_relay(c)) for c in configs
            ]
            events_a, events_b = relay_a.bus.subscribe(), relay_b.bus.subscribe()
            await submit_async(info_a.smtp_ports["feeder"], "s@o.test", ["r1@x.test"], MESSAGE)
            await collect_until(events_a, lambda seen: reached(seen, "r1@x.test", "sending"))
            second = await submit_async(
                info_b.smtp_ports["feeder"], "s@o.test", ["r2@x.test"], MESSAGE
            )
            async with httpx.AsyncClient(base_url=api_url(info_b)) as client:
                why = (await client.get(f"/message/{second}/why")).json()
            early = drain(events_b)
            mx.stall_data.clear()  # (the stalled transaction is dropped: r1 is deferred)
            await delivered_by_either([events_a, events_b], "r2@x.test")
    (reasons,) = [r["reasons"] for r in why["recipients"]]
    assert [r["code"] for r in reasons] == ["domain_connections"]
    assert (reasons[0]["in_use"], reasons[0]["elsewhere"], reasons[0]["limit"]) == (1, 1, 1)
    # b leased nothing for x.test while a's delivery was sending.
    assert not [e for e in early if e.to_state in ("locked", "sending")]
    assert [m.recipients for m in mx.received()] == [("r2@x.test",)]  # r1 was dropped


def reached(seen: list[Event], recipient: str, state: str) -> bool:
    return any(e.recipient == recipient and e.to_state == state for e in seen)


async def delivered_by_either(subscriptions: list[Subscription], recipient: str) -> None:
    async def read(subscription: Subscription) -> None:
        await collect_until(
            subscription, lambda seen: reached(seen, recipient, "delivered"), seconds=30
        )
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for subscription in subscriptions:
            nursery.start_soon(read, subscription)


def drain(subscription: Subscription) -> list[Event]:
    events = []
    while True:
        try:
            events.append(subscription.receive.receive_nowait())
        except trio.WouldBlock:
            return events

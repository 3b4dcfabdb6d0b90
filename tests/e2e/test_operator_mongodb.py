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

import httpx
import pytest
import trio

from tests.support.mongo import MongoEndpoint, mongo_endpoint
from tests.support.mx import TestMx
from tests.support.relay import api_url, relay_config, running_relay, submit_async
from zonemta.engine.bus import Subscription
from zonemta.engine.delivery.scheduler import SHARED_RATE_USED
from zonemta.engine.why import trio_to_epoch

MESSAGE = b"From: s@origin.test\r\nSubject: shared rate\r\n\r\nbody\r\n"


@pytest.fixture
def mongo(tmp_path: Path) -> Iterator[MongoEndpoint]:
    with mongo_endpoint(tmp_path / "mongo") as endpoint:
        yield endpoint


async def until_refused(subscriptions: list[Subscription]) -> tuple[int, int]:
    """Wait until the relays together delivered 3 and one of them had a claim refused;
    returns (deliveries seen, index of a relay that was refused)."""
    delivered = 0
    refused: list[int] = []

    async def read(index: int, subscription: Subscription) -> None:
        nonlocal delivered
        async for event in subscription.receive:
            delivered += event.to_state == "delivered"
            if event.to_state == "queued" and event.response == SHARED_RATE_USED:
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
        configs = [
            relay_config(
                tmp_path / name,
                queue={
                    "backend": "mongodb",
                    "mongodb_uri": mongo.uri,
                    "database": database,
                    "instance_id": name,
                },
                zones={"default": {"host": "127.0.0.1", "port": mx.port}},
                domains={"x.test": {"rate": "3/day"}},
            )
            for name in ("a", "b")
        ]
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
        configs = [
            relay_config(
                tmp_path / name,
                queue={
                    "backend": "mongodb",
                    "mongodb_uri": mongo.uri,
                    "database": database,
                    "instance_id": name,
                },
                zones={"default": {"host": "127.0.0.1", "port": mx.port}},
            )
            for name in ("a", "b")
        ]
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

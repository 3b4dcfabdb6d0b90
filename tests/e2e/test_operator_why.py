"""``GET /message/<id>/why`` in a running relay: each reason the scheduler acts on shows up
for a delivery it holds back (retry, DNS, blacklist, a lease held by another instance, the
domain's connection limit, the rate, the zone's capacity, an attempt in flight)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.dnsserver import run_dns_server
from tests.support.mx import TestMx
from tests.support.relay import api_url, collect_until, relay_config, running_relay, submit_async
from zonemta.engine.bus import Event, Subscription
from zonemta.store import MessageRecord, NewDelivery

MESSAGE = b"From: a@origin.test\r\nSubject: why\r\n\r\nbody\r\n"

ZONE_FILE = """
$ORIGIN test.
$TTL 300
@          IN SOA ns.test. admin.test. 1 7200 3600 1209600 300
slow       IN MX 10 mx.test.
broken     IN MX 10 mx.test.
busy       IN MX 10 mx.test.
rated      IN MX 10 mx.test.
calm       IN MX 10 mx.test.
calm2      IN MX 10 mx.test.
mx         IN A 127.0.0.1
"""


async def why(client: httpx.AsyncClient, message_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/message/{message_id}/why")
    assert response.status_code == 200, response.text
    (recipient,) = response.json()["recipients"]
    reasons: list[dict[str, Any]] = recipient["reasons"]
    return reasons


def codes(reasons: list[dict[str, Any]]) -> list[str]:
    return [r["code"] for r in reasons]


async def reached(events: Subscription, recipient: str, state: str) -> None:
    def done(seen: list[Event]) -> bool:
        return any(e.recipient == recipient and e.to_state == state for e in seen)

    await collect_until(events, done)


async def test_deferred_deliveries_say_retry_dns_blacklist_and_foreign_lease(
    tmp_path: Path,
) -> None:
    with TestMx(
        rcpt_reply=lambda a: "451 4.7.1 greylisted" if a.endswith("slow.test") else None
    ) as mx:
        async with run_dns_server(ZONE_FILE) as dns:
            dns.set_failure("broken.test.")
            config = relay_config(
                tmp_path / "q",
                queue={"retry_schedule": ["1h"]},
                dns={"nameservers": [f"127.0.0.1:{dns.port}"]},
                zones={"default": {"port": mx.port, "local_address": "127.0.0.1"}},
            )
            async with running_relay(config) as (relay, info):
                events = relay.bus.subscribe()
                port = info.smtp_ports["feeder"]
                async with httpx.AsyncClient(base_url=api_url(info)) as client:
                    ids = {}
                    for rcpt in ("a@slow.test", "b@broken.test"):
                        ids[rcpt] = await submit_async(port, "s@origin.test", [rcpt], MESSAGE)
                        await reached(events, rcpt, "deferred")

                    slow = await why(client, ids["a@slow.test"])
                    assert codes(slow) == ["retry"]
                    assert slow[0]["attempts"] == 1
                    assert "451 4.7.1 greylisted" in slow[0]["last_response"]
                    assert slow[0]["next_attempt"].endswith("Z")
                    assert codes(await why(client, ids["b@broken.test"])) == ["retry", "dns"]
                    # The zone's only address blacklisted by the domain after the deferral.
                    await relay.engine.blacklist.add("slow.test", "127.0.0.1", "554 5.7.1 listed")
                    black = await why(client, ids["a@slow.test"])
                    assert codes(black) == ["retry", "source_blacklisted"]
                    assert black[1]["addresses"] == ["127.0.0.1"]

                    # A delivery leased by another instance on the same store.
                    hold = await client.post("/suspend", json={"zone": "default"})
                    held = await submit_async(port, "s@origin.test", ["d@calm.test"], MESSAGE)
                    now = time.time()
                    (row,) = await relay.store.lease(
                        "default", owner="other", now=now, lease_until=now + 600, limit=1
                    )
                    assert row.message_id == held
                    await client.delete(f"/suspend/{hold.json()['suspension']['id']}")
                    leased = await why(client, held)
                    assert codes(leased) == ["leased"] and leased[0]["owner"] == "other"


async def test_waiting_deliveries_say_domain_limit_rate_capacity_and_in_flight(
    tmp_path: Path,
) -> None:
    with TestMx() as mx:
        mx.stall_data.set()  # every transaction stays in DATA until the end of the test
        async with run_dns_server(ZONE_FILE) as dns:
            config = relay_config(
                tmp_path / "q",
                queue={"retry_schedule": ["1h"]},
                dns={"nameservers": [f"127.0.0.1:{dns.port}"]},
                zones={"default": {"port": mx.port, "connections": 1}},  # 4 in flight
                domains={"busy.test": {"max_connections": 1}, "rated.test": {"rate": "1/hour"}},
            )
            async with running_relay(config) as (relay, info):
                events = relay.bus.subscribe()
                port = info.smtp_ports["feeder"]
                async with httpx.AsyncClient(base_url=api_url(info)) as client:
                    first = await submit_async(port, "s@o.test", ["a@busy.test"], MESSAGE)
                    await reached(events, "a@busy.test", "sending")
                    live = await why(client, first)
                    assert codes(live) == ["in_flight"] and live[0]["live"] == "sending"

                    second = await submit_async(port, "s@o.test", ["b@busy.test"], MESSAGE)
                    limit = await why(client, second)
                    assert codes(limit) == ["domain_connections"]
                    assert (limit[0]["in_use"], limit[0]["limit"]) == (1, 1)

                    await submit_async(port, "s@o.test", ["r1@rated.test"], MESSAGE)
                    await reached(events, "r1@rated.test", "locked")
                    rated = await submit_async(port, "s@o.test", ["r2@rated.test"], MESSAGE)
                    rate = await why(client, rated)
                    # (the zone's one connection also makes 1 the domain's limit)
                    assert codes(rate) == ["domain_connections", "rate"]
                    assert rate[1]["rate"] == "1/hour" and rate[1]["next_token"].endswith("Z")

                    for rcpt in ("c1@calm.test", "c2@calm2.test"):
                        await submit_async(port, "s@o.test", [rcpt], MESSAGE)
                        await reached(events, rcpt, "locked")
                    full = await submit_async(port, "s@o.test", ["c3@calm.test"], MESSAGE)
                    capacity = await why(client, full)
                    assert codes(capacity) == ["domain_connections", "zone_capacity"]
                    assert (capacity[1]["in_flight"], capacity[1]["limit"]) == (4, 4)
                mx.stall_data.clear()
                # Every delivery but r2 (no token for an hour) ends its attempt.
                ending = {"a@busy.test", "b@busy.test", "r1@rated.test"}
                ending |= {"c1@calm.test", "c2@calm2.test", "c3@calm.test"}
                await collect_until(
                    events,
                    lambda seen: (
                        ending
                        <= {e.recipient for e in seen if e.to_state in ("deferred", "delivered")}
                    ),
                )


async def stored(relay: Any, message_id: str, recipient: str, zone: str) -> None:
    """A message put in the queue as an earlier run (or another instance) left it."""
    body = relay.store.new_body(message_id)
    await body.write(MESSAGE)
    domain = recipient.rpartition("@")[2]
    await relay.store.commit_message(
        MessageRecord(message_id, "s@o.test", b"Subject: why\r\n", len(MESSAGE), time.time()),
        body,
        [NewDelivery(1, recipient, domain, zone, next_attempt=time.time())],
    )


async def test_a_disabled_zone_and_a_due_delivery_say_so(tmp_path: Path) -> None:
    with TestMx() as mx:
        config = relay_config(
            tmp_path / "q",
            zones={
                "default": {"host": "127.0.0.1", "port": mx.port},
                "off": {"host": "127.0.0.1", "port": mx.port, "disabled": True},
            },
        )
        async with running_relay(config) as (relay, info):
            # Mail queued for a zone that has since been disabled waits for it.
            await stored(relay, "0123456789abcdef01", "a@calm.test", "off")
            # A due delivery the scheduler has not leased yet (it stops leasing first, so
            # the answer cannot race with the lease): nothing else holds it.
            await relay.engine.schedulers["default"].stop(grace=0)
            await stored(relay, "0123456789abcdef02", "b@calm.test", "default")
            async with httpx.AsyncClient(base_url=api_url(info)) as client:
                disabled = await why(client, "0123456789abcdef01")
                due = await why(client, "0123456789abcdef02")
    assert codes(disabled) == ["zone_disabled"] and "off" in disabled[0]["text"]
    assert codes(due) == ["due"]
    assert mx.received() == []

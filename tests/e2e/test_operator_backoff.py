"""Automatic backoff in a running relay: a "rate limited" reply suspends the (zone, domain),
with an event, a metric and an entry in ``GET /suspend`` naming the rule and the reply; other
domains go on; and ``why`` says what holds the next message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.dnsserver import run_dns_server
from tests.support.mx import TestMx
from tests.support.relay import api_url, collect_until, relay_config, running_relay, submit_async
from zonemta.engine.bus import Event

MESSAGE = b"From: a@origin.test\r\nSubject: backoff\r\n\r\nbody\r\n"
LIMITED = "421 4.7.0 Temporarily rate limited, try again later"


def rcpt_reply(address: str) -> str | None:
    return LIMITED if address.endswith("@limited.test") else None


def delivered_to(events: list[Event], recipient: str) -> bool:
    return any(e.recipient == recipient and e.to_state == "delivered" for e in events)


async def test_a_rate_limited_reply_suspends_the_domain_in_the_zone(tmp_path: Path) -> None:
    with TestMx(rcpt_reply=rcpt_reply) as mx:
        config = relay_config(
            tmp_path / "q",
            queue={"retry_schedule": ["1h"]},
            zones={"default": {"host": "127.0.0.1", "port": mx.port}},
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            port = info.smtp_ports["feeder"]
            first = await submit_async(port, "a@origin.test", ["a@limited.test"], MESSAGE)
            seen = await collect_until(
                events, lambda evs: any(e.type == "suspension.added" for e in evs)
            )
            (added,) = [e for e in seen if e.type == "suspension.added"]
            assert added.zone == "default" and added.details is not None
            assert added.details["rule"] == "rate-limited"
            assert added.details["response"] == LIMITED
            assert added.details["domain"] == "limited.test"

            second = await submit_async(port, "a@origin.test", ["b@limited.test"], MESSAGE)
            await submit_async(port, "a@origin.test", ["c@free.test"], MESSAGE)
            await collect_until(events, lambda evs: delivered_to(evs, "c@free.test"))
            async with httpx.AsyncClient(base_url=api_url(info)) as client:
                (entry,) = (await client.get("/suspend")).json()["suspensions"]
                assert entry["rule"] == "rate-limited" and entry["response"] == LIMITED
                assert entry["who"] == "backoff" and entry["until"].endswith("Z")
                why = (await client.get(f"/message/{second}/why")).json()
                (reasons,) = [r["reasons"] for r in why["recipients"]]
                assert [r["code"] for r in reasons] == ["suspended"]
                assert reasons[0]["rule"] == "rate-limited"
                assert reasons[0]["response"] == LIMITED
                first_why = (await client.get(f"/message/{first}/why")).json()
                codes = [r["code"] for r in first_why["recipients"][0]["reasons"]]
                assert codes == ["suspended", "retry"]
                text = (await client.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("zonemta_backoff_total", (("rule", "rate-limited"), ("zone", "default")))] == 1
    assert samples[("zonemta_suspensions", ())] == 1
    assert [m.recipients for m in mx.received()] == [("c@free.test",)]
    assert [address for address, _ in mx.rcpt_peers].count("b@limited.test") == 0


BUSY = "421 4.7.0 Too many concurrent connections from your host"
ZONE_FILE = """
$ORIGIN test.
$TTL 300
@          IN SOA ns.test. admin.test. 1 7200 3600 1209600 300
busy       IN MX 10 mx.test.
mx         IN A 127.0.0.1
"""


def reached(recipient: str, state: str) -> Callable[[list[Event]], bool]:
    return lambda seen: any(e.recipient == recipient and e.to_state == state for e in seen)


async def test_a_too_many_connections_reply_slows_the_domain_to_one_at_a_time(
    tmp_path: Path,
) -> None:
    with TestMx(rcpt_reply=lambda a: BUSY if a == "first@busy.test" else None) as mx:
        async with run_dns_server(ZONE_FILE) as dns:
            config = relay_config(
                tmp_path / "q",
                queue={"retry_schedule": ["1h"]},
                dns={"nameservers": [f"127.0.0.1:{dns.port}"]},
                zones={"default": {"port": mx.port, "connections": 4}},
            )
            async with running_relay(config) as (relay, info):
                events = relay.bus.subscribe()
                port = info.smtp_ports["feeder"]
                await submit_async(port, "s@o.test", ["first@busy.test"], MESSAGE)
                seen = await collect_until(
                    events, lambda evs: any(e.type == "suspension.added" for e in evs)
                )
                mx.stall_data.set()
                await submit_async(port, "s@o.test", ["a@busy.test"], MESSAGE)
                await collect_until(events, reached("a@busy.test", "sending"))
                second = await submit_async(port, "s@o.test", ["b@busy.test"], MESSAGE)
                async with httpx.AsyncClient(base_url=api_url(info)) as client:
                    (entry,) = (await client.get("/suspend")).json()["suspensions"]
                    why = (await client.get(f"/message/{second}/why")).json()
                mx.stall_data.clear()
                await collect_until(events, reached("b@busy.test", "delivered"))
    (added,) = [e for e in seen if e.type == "suspension.added"]
    assert added.details is not None and added.details["max_connections"] == 1
    assert entry["rule"] == "too-many-connections" and entry["response"] == BUSY
    assert entry["max_connections"] == 1 and entry["domain"] == "busy.test"
    (reasons,) = [r["reasons"] for r in why["recipients"]]
    assert [r["code"] for r in reasons] == ["domain_connections"]  # slowed, not suspended
    assert reasons[0]["limit"] == 1 and reasons[0]["slowed_by"] == entry["id"]


PROVIDER_ZONE = """
$ORIGIN test.
$TTL 300
@            IN SOA ns.test. admin.test. 1 7200 3600 1209600 300
a            IN MX 10 mx1.provider.test.
b            IN MX 10 mx2.provider.test.
d            IN MX 10 mx.other.test.
mx1.provider IN A 127.0.0.1
mx2.provider IN A 127.0.0.1
mx.other     IN A 127.0.0.1
"""


async def test_a_backoff_holds_the_whole_site_in_the_zone(tmp_path: Path) -> None:
    """a.test and b.test are hosted at provider.test (one site): a "rate limited" reply for
    a.test holds b.test too; d.test, hosted elsewhere, goes on."""
    with TestMx(rcpt_reply=lambda a: LIMITED if a == "first@a.test" else None) as mx:
        async with run_dns_server(PROVIDER_ZONE) as dns:
            config = relay_config(
                tmp_path / "q",
                queue={"retry_schedule": ["1h"]},
                dns={"nameservers": [f"127.0.0.1:{dns.port}"]},
                zones={"default": {"port": mx.port}},
                domains={"*.provider.test": {"max_connections": 5}},
            )
            async with running_relay(config) as (relay, info):
                events = relay.bus.subscribe()
                port = info.smtp_ports["feeder"]
                await submit_async(port, "s@o.test", ["first@a.test"], MESSAGE)
                seen = await collect_until(
                    events, lambda evs: any(e.type == "suspension.added" for e in evs)
                )
                held = await submit_async(port, "s@o.test", ["x@b.test"], MESSAGE)
                await submit_async(port, "s@o.test", ["x@d.test"], MESSAGE)
                seen += await collect_until(events, reached("x@d.test", "delivered"))
                async with httpx.AsyncClient(base_url=api_url(info)) as client:
                    (entry,) = (await client.get("/suspend")).json()["suspensions"]
                    why = (await client.get(f"/message/{held}/why")).json()
    (added,) = [e for e in seen if e.type == "suspension.added"]
    assert added.details is not None and added.details["domain"] == "*.provider.test"
    assert entry["domain"] == "*.provider.test" and entry["zone"] == "default"
    assert entry["rule"] == "rate-limited" and entry["response"] == LIMITED
    (reasons,) = [r["reasons"] for r in why["recipients"]]
    assert reasons[0]["code"] == "suspended" and reasons[0]["suspension"] == entry["id"]
    assert [m.recipients for m in mx.received()] == [("x@d.test",)]
    assert "x@b.test" not in [address for address, _ in mx.rcpt_peers]

"""MX rollup: ``[domains."*.provider.test"]`` is one site for every recipient domain whose MX
hosts are at provider.test, so they share its connection limit and rate, found with a
loopback DNS server where several domains share MX hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support.dnsserver import run_dns_server
from tests.support.mx import TestMx
from tests.support.relay import api_url, collect_until, relay_config, running_relay, submit_async
from zonemta.engine.bus import Event

MESSAGE = b"From: a@origin.test\r\nSubject: rollup\r\n\r\nbody\r\n"

ZONE_FILE = """
$ORIGIN test.
$TTL 300
@            IN SOA ns.test. admin.test. 1 7200 3600 1209600 300
a            IN MX 10 mx1.provider.test.
b            IN MX 10 mx2.provider.test.
b            IN MX 20 mx1.provider.test.
c            IN MX 10 mx2.provider.test.
d            IN MX 10 mx.other.test.
mx1.provider IN A 127.0.0.1
mx2.provider IN A 127.0.0.1
mx.other     IN A 127.0.0.1
"""
PROVIDER = ("a.test", "b.test", "c.test")


def reached(recipient: str, state: str) -> Any:
    def done(seen: list[Event]) -> bool:
        return any(e.recipient == recipient and e.to_state == state for e in seen)

    return done


def most_sending_at_once(events: list[Event], domains: tuple[str, ...]) -> int:
    sending: set[str] = set()
    most = 0
    for event in events:
        if event.type != "delivery" or not (event.recipient or "").endswith(domains):
            continue
        if event.to_state == "sending":
            sending.add(event.recipient or "")
            most = max(most, len(sending))
        else:
            sending.discard(event.recipient or "")
    return most


async def test_domains_hosted_at_one_provider_share_its_connection_limit(
    tmp_path: Path,
) -> None:
    with TestMx() as mx:
        mx.stall_data.set()
        async with run_dns_server(ZONE_FILE) as dns:
            config = relay_config(
                tmp_path / "q",
                queue={"retry_schedule": ["1h"]},
                dns={"nameservers": [f"127.0.0.1:{dns.port}"]},
                zones={"default": {"port": mx.port, "connections": 10}},
                domains={"*.provider.test": {"max_connections": 1}},
            )
            async with running_relay(config) as (relay, info):
                events = relay.bus.subscribe()
                port = info.smtp_ports["feeder"]
                await submit_async(port, "s@o.test", ["x@a.test"], MESSAGE)
                seen = await collect_until(events, reached("x@a.test", "sending"))
                for rcpt in ("x@b.test", "x@c.test", "x@d.test"):
                    await submit_async(port, "s@o.test", [rcpt], MESSAGE)
                # d.test is at another provider: it goes while the provider's one slot is busy.
                seen += await collect_until(events, reached("x@d.test", "sending"))
                later = await submit_async(port, "s@o.test", ["y@b.test"], MESSAGE)
                async with httpx.AsyncClient(base_url=api_url(info)) as client:
                    why = (await client.get(f"/message/{later}/why")).json()
                (reasons,) = [r["reasons"] for r in why["recipients"]]
                assert [r["code"] for r in reasons] == ["domain_connections"]
                assert reasons[0]["site"] == "*.provider.test" and reasons[0]["limit"] == 1
                assert reasons[0]["in_use"] == 3  # x@a sending, x@b and x@c waiting for it
                mx.stall_data.clear()
                seen += await collect_until(
                    events,
                    lambda evs: all(
                        reached(f"{who}@{domain}", "delivered")(evs)
                        for who, domain in (("x", "b.test"), ("x", "c.test"), ("y", "b.test"))
                    ),
                )
    assert most_sending_at_once(seen, PROVIDER) == 1
    assert most_sending_at_once(seen, (*PROVIDER, "d.test")) == 2

"""Sending zones on loopback: pools of source addresses (127.0.0.2-9), routing rules for SMTP
and HTTP submissions, connection limits measured at the MX, blacklist rotation, and a busy
domain that must not hold up the others."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.dnsserver import run_dns_server
from tests.support.mx import TestMx
from tests.support.relay import (
    api_url,
    collect_until,
    relay_config,
    running_relay,
    states_of,
    submit_async,
    terminal,
)


def message(subject: str, extra: str = "") -> bytes:
    return (
        f"From: s@origin.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@origin.test>\r\n"
        f"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n{extra}\r\nbody of {subject}\r\n"
    ).encode()


def to_mx(mx: TestMx, **zone: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": mx.port, **zone}


def delivered(events: list[Any], message_id: str) -> int:
    return len([e for e in terminal(events) if e.id == message_id])


POOL = [{"address": f"127.0.0.{n}", "name": f"mta{n}.test"} for n in range(2, 6)]


async def test_pool_addresses_are_used_and_a_retry_keeps_its_address(tmp_path: Path) -> None:
    refused_once: set[str] = set()

    def rcpt_reply(address: str) -> str | None:
        if address.startswith("retry") and address not in refused_once:
            refused_once.add(address)
            return "451 4.3.0 try again later"
        return None

    with TestMx(rcpt_reply=rcpt_reply) as mx:
        config = relay_config(
            tmp_path / "q",
            pools={"warm": POOL},
            # One recipient per transaction: each delivery picks its own address.
            zones={
                "default": to_mx(mx, pool="warm", connections=4, max_recipients=1),
                "bounces": to_mx(mx),
            },
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            recipients = [f"r{n}@one.test" for n in range(24)] + ["retry1@one.test"]
            message_id = await submit_async(
                info.smtp_ports["feeder"], "s@origin.test", recipients, message("pool")
            )
            seen = await collect_until(events, lambda ev: delivered(ev, message_id) == 25)
    peers = collections.Counter(peer for _, peer in mx.rcpt_peers)
    assert set(peers) <= {e["address"] for e in POOL}
    assert len(peers) >= 3  # 25 deliveries over four addresses
    retry_peers = [peer for rcpt, peer in mx.rcpt_peers if rcpt == "retry1@one.test"]
    assert len(retry_peers) == 2 and retry_peers[0] == retry_peers[1]
    # The EHLO name and the Received header follow the address used.
    got = mx.for_recipient("retry1@one.test")[0]
    name = f"mta{retry_peers[0].rsplit('.', 1)[1]}.test"
    assert f"by {name} (zonemta)".encode() in got.content
    assert "deferred" in states_of(seen, message_id, 25)


async def test_routing_rules_for_smtp_and_http(tmp_path: Path) -> None:
    with TestMx() as mx:
        zones = {
            "default": to_mx(mx, local_address="127.0.0.2"),
            "bounces": to_mx(mx),
            "bysender": to_mx(mx, local_address="127.0.0.3", sender_domains=["news.test"]),
            "byrcpt": to_mx(mx, local_address="127.0.0.4", recipient_domains=["vip.test"]),
            "byheader": to_mx(mx, local_address="127.0.0.5", routing_headers={"X-User-ID": "42"}),
            "named": to_mx(mx, local_address="127.0.0.6"),
            "off": to_mx(mx, local_address="127.0.0.7", disabled=True),
        }
        config = relay_config(tmp_path / "q", zones=zones)
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            port = info.smtp_ports["feeder"]
            ids = [
                await submit_async(port, "s@news.test", ["a@one.test"], message("sender")),
                await submit_async(port, "s@o.test", ["b@vip.test", "c@one.test"], message("rcpt")),
                await submit_async(
                    port, "s@o.test", ["d@one.test"], message("hdr", "X-User-ID: 42\r\n")
                ),
                # X-Sending-Zone is not honoured from the SMTP feeder (not allowed by default),
                # nor for a disabled zone; both are removed from the stored message.
                await submit_async(
                    port,
                    "s@o.test",
                    ["e@one.test"],
                    message("smtpzone", "X-Sending-Zone: named\r\n"),
                ),
                await submit_async(
                    port,
                    "s@o.test",
                    ["f@one.test"],
                    message("offzone", "X-Sending-Zone: off\r\nBcc: hidden@x.test\r\n"),
                ),
            ]
            async with httpx.AsyncClient(base_url=api_url(info)) as client:
                raw = message("apizone", "To: g@one.test\r\nX-Sending-Zone: named\r\n")
                response = await client.post("/send-raw", content=raw)
                assert response.status_code == 200, response.text
                ids.append(response.json()["id"])
                response = await client.post(
                    "/send",
                    json={
                        "from": "s@news.test",
                        "to": "h@one.test",
                        "subject": "api sender",
                        "text": "hi",
                    },
                )
                assert response.status_code == 200, response.text
                ids.append(response.json()["id"])
            await collect_until(
                events, lambda ev: sum(delivered(ev, i) for i in ids) == 8, seconds=30
            )
    peer = {rcpt: address for rcpt, address in mx.rcpt_peers}
    assert peer["a@one.test"] == "127.0.0.3"  # sender_domains
    assert peer["b@vip.test"] == "127.0.0.4"  # recipient_domains, per recipient...
    assert peer["c@one.test"] == "127.0.0.2"  # ...the other recipient takes the default
    assert peer["d@one.test"] == "127.0.0.5"  # routing_headers, over SMTP
    assert peer["e@one.test"] == "127.0.0.2"  # X-Sending-Zone ignored from the feeder
    assert peer["f@one.test"] == "127.0.0.2"  # a disabled zone is never chosen
    assert peer["g@one.test"] == "127.0.0.6"  # X-Sending-Zone honoured from the API
    assert peer["h@one.test"] == "127.0.0.3"  # sender_domains, over HTTP
    for received in mx.received():
        head = received.content.split(b"\r\n\r\n", 1)[0].lower()
        assert b"x-sending-zone" not in head and b"\nbcc:" not in head


async def test_connections_never_exceed_the_zone_limit(tmp_path: Path) -> None:
    with TestMx(data_delay=lambda _rcpt: 0.05) as mx:
        config = relay_config(
            tmp_path / "q",
            # One recipient per transaction: 30 deliveries compete for three connections.
            zones={"default": to_mx(mx, connections=3, max_recipients=1), "bounces": to_mx(mx)},
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            recipients = [f"r{n}@d{n % 7}.test" for n in range(30)]
            message_id = await submit_async(
                info.smtp_ports["feeder"], "s@origin.test", recipients, message("limits")
            )
            await collect_until(events, lambda ev: delivered(ev, message_id) == 30, seconds=30)
            reuses = relay.engine.pools["default"].reuses
    assert len(mx.received()) == 30
    assert 2 <= mx.max_active <= 3
    assert reuses > 0 and mx.connections < 30


BLOCKED = "554 5.7.1 Service unavailable; Client host [{peer}] blocked using zen.spamhaus.org"


async def test_a_blacklist_reply_moves_the_retry_to_another_address(tmp_path: Path) -> None:
    def rcpt_reply_from(address: str, peer: str) -> str | None:
        return BLOCKED.format(peer=peer) if peer == "127.0.0.2" else None

    pool = [{"address": "127.0.0.2", "ratio": 0.9}, {"address": "127.0.0.3"}]
    with TestMx(rcpt_reply_from=rcpt_reply_from) as mx:
        config = relay_config(
            tmp_path / "q",
            pools={"two": pool},
            # One recipient per transaction: each delivery picks its own address (a group
            # goes from its first row's, so 6 recipients together miss 127.0.0.2 one time in
            # ten; 6 on their own, one in a million).
            zones={"default": to_mx(mx, pool="two", max_recipients=1), "bounces": to_mx(mx)},
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            recipients = [f"r{n}@listing.test" for n in range(6)]
            message_id = await submit_async(
                info.smtp_ports["feeder"], "s@origin.test", recipients, message("bl")
            )
            seen = await collect_until(events, lambda ev: delivered(ev, message_id) == 6)
            stored = await relay.store.list_blacklist(relay.clock())
            async with httpx.AsyncClient(base_url=api_url(info)) as client:
                listing = (await client.get("/blacklist")).json()
                metrics = (await client.get("/metrics")).text
    assert {e.to_state for e in terminal(seen) if e.id == message_id} == {"delivered"}
    deferred = [e for e in seen if e.to_state == "deferred" and e.id == message_id]
    assert deferred and all(e.category == "blacklist" for e in deferred)
    assert {m.peer for m in mx.received()} == {"127.0.0.3"}
    assert [(e.domain, e.address) for e in stored] == [("listing.test", "127.0.0.2")]
    assert [(e["domain"], e["address"]) for e in listing["list"]] == [("listing.test", "127.0.0.2")]
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    assert families["zonemta_blacklisted"].samples[0].value == 1


async def test_every_address_blacklisted_bounces(tmp_path: Path) -> None:
    with TestMx(rcpt_reply_from=lambda _a, peer: BLOCKED.format(peer=peer)) as mx:
        config = relay_config(
            tmp_path / "q",
            zones={"default": to_mx(mx, local_address="127.0.0.2"), "bounces": to_mx(mx)},
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            message_id = await submit_async(
                info.smtp_ports["feeder"], "s@origin.test", ["x@listing.test"], message("all")
            )
            seen = await collect_until(events, lambda ev: delivered(ev, message_id) == 1)
    [end] = [e for e in terminal(seen) if e.id == message_id]
    assert end.to_state == "bounced" and end.category == "blacklist"
    assert "blacklisted by listing.test" in (end.response or "")


ZONE_FILE = """
$ORIGIN test.
$TTL 60
@          IN SOA ns.test. admin.test. 1 60 60 60 60
busy       IN MX 10 mx.busy
mx.busy    IN A 127.0.0.1
calm       IN MX 10 mx.calm
mx.calm    IN A 127.0.0.1
"""


async def test_a_busy_domain_does_not_delay_other_domains(tmp_path: Path) -> None:
    release = trio.Event()
    hold = {"on": True}

    def data_delay(rcpt: str) -> float:
        # Long enough that calm.test's deliveries end first on a loaded machine too.
        return 5.0 if rcpt.endswith("@busy.test") and hold["on"] else 0.0

    with TestMx(data_delay=data_delay) as mx:
        async with run_dns_server(ZONE_FILE) as dns:
            config = relay_config(
                tmp_path / "q",
                dns={"nameservers": [f"127.0.0.1:{dns.port}"]},
                zones={"default": {"port": mx.port, "connections": 10}, "bounces": to_mx(mx)},
                domains={"busy.test": {"max_connections": 2}},
            )
            async with running_relay(config) as (relay, info):
                events = relay.bus.subscribe()
                port = info.smtp_ports["feeder"]
                busy = await submit_async(
                    port, "s@o.test", [f"b{n}@busy.test" for n in range(8)], message("busy")
                )
                calm = await submit_async(
                    port, "s@o.test", [f"c{n}@calm.test" for n in range(4)], message("calm")
                )
                await collect_until(events, lambda ev: delivered(ev, calm) == 4)
                busy_now = len([m for m in mx.received() if m.recipients[0].endswith("busy.test")])
                hold["on"] = False
                release.set()
                await collect_until(events, lambda ev: delivered(ev, busy) == 8, seconds=30)
    # calm.test was delivered while busy.test's first two deliveries were still held in DATA:
    # the busy domain did not delay it (an order of events, not a stopwatch).
    assert busy_now == 0
    busy_peers_at_once = mx.max_active
    assert busy_peers_at_once <= 2 + 4

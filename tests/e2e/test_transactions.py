"""Several recipients of one message to one destination go in one SMTP transaction, each with
its own outcome: on loopback, with the aiosmtpd test MX recording each transaction and its
recipients, in the relay's process and with a delivery process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.dnsserver import run_dns_server
from tests.support.mx import TestMx
from tests.support.relay import (
    collect_until,
    relay_config,
    running_relay,
    states_of,
    submit_async,
    terminal,
)

MESSAGE = (
    b"From: Sender <s@origin.test>\r\n"
    b"To: undisclosed-recipients:;\r\n"
    b"Subject: together\r\n"
    b"Message-ID: <together@origin.test>\r\n"
    b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
    b"\r\n"
    b"one body for every recipient\r\n"
)

ZONE = """
$ORIGIN test.
$TTL 60
@            IN SOA ns.test. admin.test. 1 60 60 60 60
one          IN MX 10 mx.one
mx.one       IN A 127.0.0.1
two          IN MX 10 mx.two
mx.two       IN A 127.0.0.1
"""

PROCESSES = pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "delivery-process"])


def of(events: list[Any], message_id: str) -> dict[str, Any]:
    """The terminal event of each recipient of the message."""
    return {e.recipient: e for e in terminal(events) if e.id == message_id}


@PROCESSES
async def test_recipients_at_one_domain_go_in_one_transaction(
    tmp_path: Path, mx: TestMx, processes: int
) -> None:
    async with run_dns_server(ZONE) as dns:
        config = relay_config(
            tmp_path / "q",
            dns={"nameservers": [f"127.0.0.1:{dns.port}"], "timeout": "2s"},
            delivery={"processes": processes},
            zones={"default": {"port": mx.port}},
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            recipients = ["a@one.test", "b@one.test", "c@one.test", "d@two.test"]
            message_id = await submit_async(
                info.smtp_ports["feeder"], "s@origin.test", recipients, MESSAGE
            )
            seen = await collect_until(events, lambda ev: len(of(ev, message_id)) == 4)
            stored = await relay.store.get_message(message_id)
    assert {e.to_state for e in of(seen, message_id).values()} == {"delivered"}
    # One transaction per recipient domain: one MX lookup, one connection.
    assert sorted(m.recipients for m in mx.received()) == [
        ("a@one.test", "b@one.test", "c@one.test"),
        ("d@two.test",),
    ]
    for seq in (1, 2, 3, 4):  # each delivery still publishes its own steps
        path = states_of(seen, message_id, seq)
        assert path[:3] == ["queued", "locked", "resolving"], path
        assert path[-2:] == ["sending", "delivered"], path
    assert stored is None  # message and body went with the last delivery


@PROCESSES
async def test_refused_recipients_get_their_own_outcomes(tmp_path: Path, processes: int) -> None:
    refused: set[str] = set()

    def rcpt_reply(address: str) -> str | None:
        if address == "later@one.test" and address not in refused:
            refused.add(address)
            return "450 4.2.0 mailbox busy, try again"
        if address == "nobody@one.test":
            return "550 5.1.1 no such user"
        return None

    with TestMx(rcpt_reply=rcpt_reply) as mx:
        target = {"host": "127.0.0.1", "port": mx.port}
        config = relay_config(
            tmp_path / "q",
            delivery={"processes": processes},
            zones={"default": target, "bounces": {**target, "connections": 1}},
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            recipients = ["a@one.test", "later@one.test", "nobody@one.test", "b@one.test"]
            message_id = await submit_async(
                info.smtp_ports["feeder"], "s@origin.test", recipients, MESSAGE
            )
            # The four outcomes, and the DSN of the bounce delivered to the sender.
            seen = await collect_until(
                events,
                lambda ev: (
                    len(of(ev, message_id)) == 4
                    and any(e.recipient == "s@origin.test" for e in terminal(ev))
                ),
            )
    outcome = of(seen, message_id)
    assert {r: e.to_state for r, e in outcome.items()} == {
        "a@one.test": "delivered",
        "b@one.test": "delivered",
        "later@one.test": "delivered",
        "nobody@one.test": "bounced",
    }
    assert outcome["nobody@one.test"].response == "550 5.1.1 no such user"
    later = states_of(seen, message_id, 2)
    assert later.count("deferred") == 1, later
    deferral = next(e for e in seen if e.seq == 2 and e.to_state == "deferred")
    assert deferral.response == "450 4.2.0 mailbox busy, try again"
    # The first transaction carried all four; the server took two. The 450 was retried
    # alone; the 550 was not retried.
    transactions = [m.recipients for m in mx.received() if m.mail_from == "s@origin.test"]
    assert transactions == [("a@one.test", "b@one.test"), ("later@one.test",)]
    asked = [rcpt for rcpt, _ in mx.rcpt_peers]
    assert asked.count("later@one.test") == 2 and asked.count("nobody@one.test") == 1
    (dsn,) = [m for m in mx.received() if m.recipients == ("s@origin.test",)]
    assert b"nobody@one.test" in dsn.content and b"a@one.test" not in dsn.content


@PROCESSES
async def test_parts_for_different_hosts_go_at_once_each_reading_the_whole_body(
    tmp_path: Path, mx: TestMx, processes: int
) -> None:
    """A route hook sends b's delivery to a slow fixed MX; c's, of the same message and the
    same lease, goes to the zone's smart host. c must not wait for b's transaction, and
    both get the whole body, which is too large to be kept in memory (with a delivery
    process it is pulled from the relay as two body streams at the same time)."""
    body = b"".join(b"line %06d of a body streamed from the store\r\n" % i for i in range(4000))
    content = MESSAGE.replace(b"one body for every recipient\r\n", body)
    assert len(content) > 64 * 1024  # larger than what the intake keeps in memory
    with TestMx(data_delay=lambda recipient: 2.0) as slow:
        config = relay_config(
            tmp_path / "q",
            delivery={"processes": processes},
            intake={"processes": 0},  # the route hook is an intake hook
            zones={"default": {"host": "127.0.0.1", "port": mx.port}},
            plugins={
                "route": {
                    "module": "tests.support.route_plugin",
                    "domain": "slow.test",
                    "mx": f"127.0.0.1:{slow.port}",
                }
            },
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            recipients = ["b@slow.test", "c@fast.test"]
            message_id = await submit_async(
                info.smtp_ports["feeder"], "s@origin.test", recipients, content
            )
            seen = await collect_until(events, lambda got: len(of(got, message_id)) == 2)
    assert {e.to_state for e in of(seen, message_id).values()} == {"delivered"}
    leased = [e for e in seen if e.id == message_id and e.to_state == "locked"]
    assert len(leased) == 2  # one lease each, no retry
    (fast,), (late,) = mx.received(), slow.received()
    assert (fast.recipients, late.recipients) == (("c@fast.test",), ("b@slow.test",))
    assert fast.content.endswith(body) and late.content.endswith(body)
    # The slow MX takes b's message 2 s after its DATA began; c's was taken before that
    # (one after the other, c would have started only once b's transaction had ended).
    assert fast.time < late.time - 1.0

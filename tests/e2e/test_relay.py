"""End to end on loopback: smtplib submits to zonemta, zonemta delivers to an aiosmtpd MX,
through a smart host or through a real MX lookup answered by a DNS server on loopback."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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
    b"From: Sender <sender@origin.test>\r\n"
    b"To: a@one.test, b@two.test\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <1@origin.test>\r\n"
    b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
    b"\r\n"
    b"Body line 1\r\n"
    b".leading dot\r\n"
    b"..two dots\r\n"
    b"\r\n"
    b"end\r\n"
)


def without_received(content: bytes) -> bytes:
    """The message as submitted: the Received field zonemta prepends is taken off."""
    assert content.startswith(b"Received: "), content[:200]
    lines = content.split(b"\r\n")
    index = 1
    while lines[index][:1] in (b" ", b"\t"):
        index += 1
    return b"\r\n".join(lines[index:])


def smart_host(mx: TestMx) -> dict[str, object]:
    """Every zone (bounce notices too) delivers to the test MX."""
    target = {"host": "127.0.0.1", "port": mx.port}
    return {"default": target, "bounces": {**target, "connections": 1}}


@pytest.mark.parametrize("max_recipients", [50, 1])
async def test_smart_host_delivers_every_recipient_intact(
    tmp_path: Path, mx: TestMx, max_recipients: int
) -> None:
    zones = smart_host(mx)
    zones["default"] = {**zones["default"], "max_recipients": max_recipients}  # type: ignore[dict-item]
    config = relay_config(tmp_path / "q", zones=zones)
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        recipients = ["a@one.test", "b@two.test", "c@two.test"]
        message_id = await submit_async(
            info.smtp_ports["feeder"], "sender@origin.test", recipients, MESSAGE
        )
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == 3)
    assert {e.to_state for e in terminal(seen)} == {"delivered"}
    if max_recipients > 1:  # one transaction for the message (the smart host takes them all)
        assert [m.recipients for m in mx.received()] == [tuple(recipients)]
    got = {r: mx.for_recipient(r) for r in recipients}
    for recipient, messages in got.items():
        assert len(messages) == 1, recipient
        assert messages[0].mail_from == "sender@origin.test"
        assert without_received(messages[0].content) == MESSAGE
        head = messages[0].content.split(b"\r\n\r\n")[0]
        # The Received field names the recipient of a one-recipient transaction only.
        assert (f"for <{recipient}>".encode() in head) is (max_recipients == 1)
    for seq in (1, 2, 3):
        path = states_of(seen, message_id, seq)
        assert path[0] == "queued" and path[-1] == "delivered", path
        assert path[:2] == ["queued", "locked"]
        assert "sending" in path


MX_ZONE = """
$ORIGIN test.
$TTL 60
@            IN SOA ns.test. admin.test. 1 60 60 60 60
one          IN MX 10 mx.one
mx.one       IN A 127.0.0.1
two          IN MX 5 mx1.two
two          IN MX 10 mx2.two
mx1.two      IN A 127.0.0.1
mx2.two      IN A 127.0.0.1
implicit     IN A 127.0.0.1
nullmx       IN MX 0 .
"""


async def test_mx_lookup_through_loopback_dns(tmp_path: Path, mx: TestMx) -> None:
    async with run_dns_server(MX_ZONE) as dns:
        config = relay_config(
            tmp_path / "q",
            dns={"nameservers": [f"127.0.0.1:{dns.port}"], "timeout": "2s"},
            zones={"default": {"port": mx.port}},
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            recipients = ["a@one.test", "b@two.test", "c@implicit.test", "d@nullmx.test"]
            message_id = await submit_async(
                info.smtp_ports["feeder"], "s@origin.test", recipients, MESSAGE
            )
            seen = await collect_until(
                events, lambda ev: len([e for e in terminal(ev) if e.id == message_id]) == 4
            )
    outcome = {e.recipient: e for e in terminal(seen) if e.id == message_id}
    for recipient in recipients[:3]:
        assert outcome[recipient].to_state == "delivered"
        assert without_received(mx.for_recipient(recipient)[0].content) == MESSAGE
    assert outcome["a@one.test"].mx == "mx.one.test"
    assert outcome["b@two.test"].mx == "mx1.two.test"
    null = outcome["d@nullmx.test"]
    assert null.to_state == "bounced"
    assert null.response is not None and "556" in null.response
    assert mx.for_recipient("d@nullmx.test") == []


async def test_temporary_failure_is_retried_then_delivered(tmp_path: Path) -> None:
    refusals: dict[str, int] = {}

    def rcpt_reply(address: str) -> str | None:
        if address == "later@one.test" and refusals.get(address, 0) < 2:
            refusals[address] = refusals.get(address, 0) + 1
            return "451 4.7.1 greylisted, try again"
        return None

    with TestMx(rcpt_reply=rcpt_reply) as mx:
        config = relay_config(tmp_path / "q", zones=smart_host(mx))
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            message_id = await submit_async(
                info.smtp_ports["feeder"], "s@origin.test", ["later@one.test"], MESSAGE
            )
            seen = await collect_until(events, lambda ev: len(terminal(ev)) == 1)
            remaining = await relay.store.deliveries_of(message_id)
    path = states_of(seen, message_id, 1)
    assert path.count("deferred") == 2, path
    assert path[-1] == "delivered"
    deferrals = [e for e in seen if e.to_state == "deferred"]
    assert all("451 4.7.1 greylisted" in (e.response or "") for e in deferrals)
    assert len(mx.for_recipient("later@one.test")) == 1
    assert remaining == []


async def test_permanent_failure_bounces_and_removes_the_message(tmp_path: Path) -> None:
    def rcpt_reply(address: str) -> str | None:
        return "550 5.1.1 no such user" if address.startswith("nobody@") else None

    with TestMx(rcpt_reply=rcpt_reply) as mx:
        config = relay_config(tmp_path / "q", zones=smart_host(mx))
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            message_id = await submit_async(
                info.smtp_ports["feeder"],
                "s@origin.test",
                ["nobody@one.test", "someone@one.test"],
                MESSAGE,
            )
            seen = await collect_until(
                events, lambda ev: len([e for e in terminal(ev) if e.id == message_id]) == 2
            )
            stored = await relay.store.get_message(message_id)
    outcome = {e.recipient: e for e in terminal(seen) if e.id == message_id}
    assert outcome["nobody@one.test"].to_state == "bounced"
    assert outcome["nobody@one.test"].response == "550 5.1.1 no such user"
    assert outcome["someone@one.test"].to_state == "delivered"
    assert stored is None  # the body went with the last delivery


async def test_twenty_megabyte_message_arrives_byte_for_byte(tmp_path: Path, mx: TestMx) -> None:
    line = os.urandom(38).hex().encode() + b"\r\n"  # 78 bytes per line
    lines = [line if n % 97 else b"." + line for n in range(20 * 1024 * 1024 // len(line))]
    message = (
        b"From: s@origin.test\r\nSubject: big\r\nMessage-ID: <big@origin.test>\r\n"
        b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n\r\n" + b"".join(lines)
    )
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        await submit_async(info.smtp_ports["feeder"], "s@origin.test", ["big@one.test"], message)
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == 1, seconds=90)
    assert terminal(seen)[0].to_state == "delivered"
    got = without_received(mx.for_recipient("big@one.test")[0].content)
    assert len(got) == len(message)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(message).hexdigest()


async def test_connection_is_reused_for_the_next_message(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(
        tmp_path / "q", zones={"default": {**smart_host(mx)["default"], "connections": 1}}
    )  # type: ignore[dict-item]
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        for n in range(3):
            await submit_async(
                info.smtp_ports["feeder"], "s@origin.test", [f"r{n}@one.test"], MESSAGE
            )
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == 3)
        reuses = relay.engine.pools["default"].reuses
    assert {e.to_state for e in terminal(seen)} == {"delivered"}
    assert reuses >= 1
    triggers = [e.details.get("trigger") for e in seen if e.details]
    assert "reuse_connection" in triggers


async def test_suppressed_recipients_are_dropped_without_delivery(
    tmp_path: Path, mx: TestMx
) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    async with running_relay(config) as (relay, info):
        await relay.engine.suppressions.add(address="gone@one.test", now=0.0)
        await relay.engine.suppressions.add(domain="closed.test", now=0.0)
        events = relay.bus.subscribe()
        recipients = ["gone@one.test", "x@closed.test", "here@one.test"]
        await submit_async(info.smtp_ports["feeder"], "s@origin.test", recipients, MESSAGE)
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == 3)
    outcome = {e.recipient: e for e in terminal(seen)}
    assert outcome["gone@one.test"].category == "suppressed"
    assert outcome["x@closed.test"].category == "suppressed"
    assert outcome["here@one.test"].to_state == "delivered"
    assert [m.recipients for m in mx.received()] == [("here@one.test",)]

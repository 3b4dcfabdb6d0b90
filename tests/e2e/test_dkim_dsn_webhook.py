"""End to end on loopback: messages relayed to an aiosmtpd MX carry DKIM signatures that
dkimpy verifies; refused deliveries produce RFC 3464 DSNs (queued through the bounces zone)
and bounce webhook calls to an HTTP server (hypercorn) that fails the first time; loops are
refused at intake."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import smtplib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import dkim
import httpx
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.support.http import HttpRecorder, http_server
from tests.support.mx import MxController, Received, _Handler
from tests.support.mx import TestMx as PlainTestMx
from tests.support.relay import (
    api_url,
    collect_until,
    relay_config,
    running_relay,
    submit_async,
)
from zonemta.conf import DkimAlgorithm, DkimKey
from zonemta.dkim import dns_record, load_key
from zonemta.engine.bus import Event

# --------------------------------------------------------------------------- helpers


class _NullSenderHandler(_Handler):
    """aiosmtpd refuses RCPT after ``MAIL FROM:<>`` ("503 need MAIL command"), which every
    real MTA accepts (RFC 5321 4.5.5) and DSNs need: record the null sender as ``<>``."""

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address or "<>"
        envelope.mail_options.extend(options)
        return "250 OK"


class TestMx(PlainTestMx):
    """The test MX, taking mail from the null sender too."""

    __test__ = False

    def __init__(self, *, rcpt_reply: Callable[[str], str | None] | None = None) -> None:
        super().__init__(rcpt_reply=rcpt_reply)
        self._controller = MxController(
            self,
            _NullSenderHandler(self),
            hostname=self.host,
            port=self.port,
            data_size_limit=None,
            ready_timeout=10,
        )


@pytest.fixture
def mx() -> Iterator[TestMx]:
    with TestMx() as server:
        yield server


@asynccontextmanager
async def hook_server(statuses: list[int]) -> AsyncIterator[tuple[HttpRecorder, str]]:
    """The webhook sink: a recording HTTP server and the URL to post bounces to."""
    async with http_server(statuses) as (recorder, base):
        yield recorder, f"{base}/bounces"


def smart_hosts(mx: TestMx) -> dict[str, object]:
    """Every zone, the bounces zone included, sends to the test MX."""
    return {
        "default": {"host": "127.0.0.1", "port": mx.port},
        "bounces": {"host": "127.0.0.1", "port": mx.port, "connections": 1},
    }


def terminal_in(zone: str) -> Callable[[list[Event]], list[Event]]:
    def pick(events: list[Event]) -> list[Event]:
        return [
            e
            for e in events
            if e.type == "delivery" and e.zone == zone and e.to_state in ("delivered", "bounced")
        ]

    return pick


def without_received(content: bytes) -> bytes:
    assert content.startswith(b"Received: "), content[:100]
    lines = content.split(b"\r\n")
    index = 1
    while lines[index][:1] in (b" ", b"\t"):
        index += 1
    return b"\r\n".join(lines[index:])


def dsns(mx: TestMx) -> list[Received]:
    return [m for m in mx.received() if m.mail_from == "<>"]


def parse(content: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


# ------------------------------------------------------------------------------ DKIM


@pytest.fixture
def dkim_keys(tmp_path: Path) -> dict[str, dict[str, str]]:
    rsa_path = tmp_path / "origin.pem"
    rsa_path.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ed_path = tmp_path / "origin.ed25519"
    seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    ed_path.write_bytes(base64.b64encode(seed))
    return {
        "origin.test": {"selector": "rsa2024", "private_key": str(rsa_path)},
        "origin.test-ed": {
            "selector": "ed2024",
            "private_key": str(ed_path),
            "algorithm": "ed25519-sha256",
            "domain": "origin.test",
        },
    }


def dnsfunc_for(keys: dict[str, dict[str, str]]) -> Callable[..., bytes | None]:
    records: dict[bytes, bytes] = {}
    for name, table in keys.items():
        key = load_key(
            name,
            DkimKey(
                selector=table["selector"],
                private_key=table["private_key"],
                algorithm=DkimAlgorithm(table.get("algorithm", "rsa-sha256")),
                domain=table.get("domain", ""),
            ),
        )
        records[f"{key.selector}._domainkey.{key.domain}.".encode()] = dns_record(key).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name if name.endswith(b".") else name + b".")

    return dnsfunc


def big_body(megabytes: int) -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyz  with  spaces \t and tabs\r\n"
    lines = [line if n % 53 else b"." + line for n in range(megabytes * 1024 * 1024 // len(line))]
    return b"".join(lines)


async def test_relayed_messages_verify_with_dkimpy(
    tmp_path: Path, mx: TestMx, dkim_keys: dict[str, dict[str, str]]
) -> None:
    messages = {
        "eightbit@one.test": (
            "From: Zoë <zoe@news.origin.test>\r\n"
            "To: eightbit@one.test\r\n"
            "Subject: caf\u00e9 cr\u00e8me\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n"
            "\r\n"
            "Gr\u00fc\u00dfe  aus   K\u00f6ln\t \r\n"
            ".a line starting with a dot\r\n"
            "..two dots\r\n"
            ".\tdot and tab\r\n"
            "\r\n\r\n"
        ).encode(),
        # No Date and no Message-ID: the intake adds them, the signature covers them.
        "big@one.test": (
            b"From: sender@origin.test\r\nTo: big@one.test\r\nSubject: big one\r\n\r\n"
            + big_body(3)
        ),
    }
    config = relay_config(
        tmp_path / "q", zones=smart_hosts(mx), dkim={"keys": dkim_keys, "timestamp": True}
    )
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        port = info.smtp_ports["feeder"]
        for recipient, content in messages.items():
            await trio.to_thread.run_sync(
                lambda r=recipient, c=content: smtplib.SMTP("127.0.0.1", port).sendmail(
                    "sender@origin.test", [r], c, mail_options=["BODY=8BITMIME"]
                )
            )
        seen = await collect_until(events, lambda ev: len(terminal_in("default")(ev)) == 2)
    assert {e.to_state for e in terminal_in("default")(seen)} == {"delivered"}
    dnsfunc = dnsfunc_for(dkim_keys)
    for recipient, submitted in messages.items():
        [got] = mx.for_recipient(recipient)
        content = got.content
        # Received is added at send time, after signing; it is not signed and breaks nothing.
        assert content.startswith(b"Received: ")
        assert content.count(b"DKIM-Signature:") == 2
        verifier = dkim.DKIM(content)
        assert verifier.verify(idx=0, dnsfunc=dnsfunc), recipient
        assert verifier.verify(idx=1, dnsfunc=dnsfunc), recipient
        assert dkim.verify(content, dnsfunc=dnsfunc)
        assert content.endswith(submitted.split(b"\r\n\r\n", 1)[1])  # body byte for byte
    big = mx.for_recipient("big@one.test")[0].content
    head = big.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nDate: " in head and b"\r\nMessage-ID: <" in head
    signed = head.split(b"h=", 1)[1].split(b";", 1)[0].replace(b"\r\n", b"").replace(b" ", b"")
    assert {b"date", b"message-id", b"from", b"subject", b"to"} <= set(signed.split(b":"))


async def test_messages_queued_while_signing_was_off_are_signed_once_keys_exist(
    tmp_path: Path, mx: TestMx, dkim_keys: dict[str, dict[str, str]]
) -> None:
    """The intake hashes bodies only where a key may sign; a message accepted without a
    hash is hashed when it goes out, so turning DKIM on signs what was already queued
    (a small body delivered from memory and a big one streamed from the store)."""
    small = b"From: sender@origin.test\r\nTo: small@one.test\r\n\r\nhello  there \t\r\n"
    big = b"From: sender@origin.test\r\nTo: big@one.test\r\n\r\n" + big_body(2)
    queue = tmp_path / "q"
    async with running_relay(relay_config(queue, zones=smart_hosts(mx))) as (relay, info):
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            response = await client.post("/suspend", json={"domain": "one.test", "for": "1h"})
            assert response.status_code == 201, response.text
            hold = response.json()["suspension"]["id"]
        port = info.smtp_ports["feeder"]
        ids = [
            await submit_async(port, "sender@origin.test", ["small@one.test"], small),
            await submit_async(port, "sender@origin.test", ["big@one.test"], big),
        ]
        for message_id in ids:
            record = await relay.store.get_message(message_id)
            assert record is not None and record.meta.dkim_bh == ""  # no key: not hashed
    assert mx.received() == []
    config = relay_config(queue, zones=smart_hosts(mx), dkim={"keys": dkim_keys})
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            response = await client.delete(f"/suspend/{hold}")
            assert response.status_code == 200, response.text
        seen = await collect_until(events, lambda ev: len(terminal_in("default")(ev)) == 2)
    assert {e.to_state for e in terminal_in("default")(seen)} == {"delivered"}
    dnsfunc = dnsfunc_for(dkim_keys)
    for recipient, submitted in (("small@one.test", small), ("big@one.test", big)):
        [got] = mx.for_recipient(recipient)
        assert got.content.count(b"DKIM-Signature:") == 2
        assert dkim.verify(got.content, dnsfunc=dnsfunc), recipient
        assert got.content.endswith(submitted.split(b"\r\n\r\n", 1)[1])


# ------------------------------------------------------------------ DSNs and webhook


async def test_bounce_sends_a_dsn_and_calls_the_webhook_again_after_a_failure(
    tmp_path: Path,
) -> None:
    def rcpt_reply(address: str) -> str | None:
        if address == "nobody@one.test":
            return "550 5.1.1 <nobody@one.test>: Recipient address rejected: User unknown"
        return None

    original = (
        b"From: Sender <sender@origin.test>\r\n"
        b"To: nobody@one.test, someone@one.test\r\n"
        b"Subject: quarterly report\r\n"
        b"Message-ID: <orig-1@origin.test>\r\n"
        b"\r\n"
        b"numbers\r\n"
    )
    with TestMx(rcpt_reply=rcpt_reply) as mx:
        async with hook_server([500, 200]) as (hook, url):
            config = relay_config(
                tmp_path / "q",
                zones=smart_hosts(mx),
                bounces={"webhook": {"url": url, "retry_delay": "20ms"}},
            )
            async with running_relay(config) as (relay, info):
                events = relay.bus.subscribe()
                message_id = await submit_async(
                    info.smtp_ports["feeder"],
                    "sender@origin.test",
                    ["nobody@one.test", "someone@one.test"],
                    original,
                )
                seen = await collect_until(
                    events,
                    lambda ev: (
                        len(terminal_in("default")(ev)) == 2
                        and len(terminal_in("bounces")(ev)) == 1
                    ),
                )
                with trio.fail_after(10):
                    calls = [await hook.receive.receive(), await hook.receive.receive()]
                stats = relay.engine.bounces.webhook.stats  # type: ignore[union-attr]
    outcome = {e.recipient: e for e in terminal_in("default")(seen)}
    bounce = outcome["nobody@one.test"]
    assert (bounce.to_state, bounce.category) == ("bounced", "recipient")
    assert outcome["someone@one.test"].to_state == "delivered"
    assert terminal_in("bounces")(seen)[0].to_state == "delivered"

    [dsn] = dsns(mx)
    assert dsn.recipients == ("sender@origin.test",)
    report = parse(without_received(dsn.content))
    assert report.get_content_type() == "multipart/report"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["In-Reply-To"] == "<orig-1@origin.test>"
    _text, status, headers = report.iter_parts()
    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; relay.test"
    assert per_message["X-Zonemta-Queue-ID"] == message_id
    assert per_recipient["Final-Recipient"] == "rfc822; nobody@one.test"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; 127.0.0.1"
    assert per_recipient["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <nobody@one.test>: Recipient address rejected: User unknown"
    )
    original_headers = headers.get_payload()
    assert "Subject: quarterly report" in str(original_headers)
    assert "Message-ID: <orig-1@origin.test>" in str(original_headers)

    assert [call.status for call in calls] == [500, 200]
    assert calls[0].body == calls[1].body
    assert calls[0].content_type == "application/json"
    payload = json.loads(calls[1].body)
    assert payload["id"] == message_id
    assert payload["seq"] == "001"
    assert payload["to"] == "nobody@one.test"
    assert payload["returnPath"] == "sender@origin.test"
    assert payload["category"] == "recipient"
    assert payload["response"].startswith("550 5.1.1")
    assert payload["messageId"] == "<orig-1@origin.test>"
    assert (stats.sent, stats.retried, stats.failed) == (1, 1, 0)


async def test_no_dsn_for_null_sender_or_auto_submitted_mail(tmp_path: Path) -> None:
    with TestMx(rcpt_reply=lambda address: "550 5.1.1 no such user") as mx:
        config = relay_config(tmp_path / "q", zones=smart_hosts(mx))
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            port = info.smtp_ports["feeder"]
            await submit_async(port, "", ["a@one.test"], b"Subject: a\r\n\r\nx\r\n")
            auto = b"Auto-Submitted: auto-generated\r\nSubject: b\r\n\r\nx\r\n"
            await submit_async(port, "s@origin.test", ["b@one.test"], auto)
            report = b"Content-Type: multipart/report; report-type=x\r\n\r\nx\r\n"
            await submit_async(port, "s@origin.test", ["c@one.test"], report)
            seen = await collect_until(events, lambda ev: len(terminal_in("default")(ev)) == 3)
            queued_notices = relay.engine.bounces.notices.queued
    assert {e.to_state for e in terminal_in("default")(seen)} == {"bounced"}
    # A DSN would have been queued before the bounce was published.
    assert queued_notices == 0
    assert not [
        e for e in seen if e.type == "message.queued" and e.to_json()["interface"] == "bounce"
    ]
    assert dsns(mx) == []


async def test_shutdown_lets_the_webhook_post_what_it_has_queued(tmp_path: Path) -> None:
    # The first POST fails and its retry is due 1 s later; the relay is asked to stop at
    # once. The shutdown grace (2 s here) is used to post the retry.
    def rcpt_reply(address: str) -> str | None:
        return "550 5.1.1 User unknown"

    with TestMx(rcpt_reply=rcpt_reply) as mx:
        async with hook_server([500, 200]) as (hook, url):
            config = relay_config(
                tmp_path / "q",
                zones=smart_hosts(mx),
                bounces={"webhook": {"url": url, "retry_delay": "1s"}, "dsn": {"enabled": False}},
            )
            async with running_relay(config) as (relay, info):
                message = b"From: s@origin.test\r\nSubject: x\r\n\r\nbody\r\n"
                await submit_async(
                    info.smtp_ports["feeder"], "sender@origin.test", ["gone@one.test"], message
                )
                with trio.fail_after(10):
                    first = await hook.receive.receive()
                webhook = relay.engine.bounces.webhook
                assert webhook is not None
            # running_relay stopped the relay on leaving the block
    assert first.status == 500
    assert [request.status for request in hook.requests] == [500, 200]
    assert (webhook.stats.sent, webhook.stats.retried, webhook.stats.failed) == (1, 1, 0)


async def test_delay_notice_then_failure_notice_and_form_webhook(tmp_path: Path) -> None:
    def rcpt_reply(address: str) -> str | None:
        return "451 4.7.1 Greylisted, try again" if address == "later@one.test" else None

    with TestMx(rcpt_reply=rcpt_reply) as mx:
        async with hook_server([]) as (hook, url):
            config = relay_config(
                tmp_path / "q",
                zones=smart_hosts(mx),
                queue={"retry_schedule": ["1s", "1s"]},
                bounces={
                    "dsn": {"delay_after": "1s"},
                    "webhook": {"url": url, "format": "form"},
                },
            )
            async with running_relay(config) as (relay, info):
                events = relay.bus.subscribe()
                message_id = await submit_async(
                    info.smtp_ports["feeder"],
                    "sender@origin.test",
                    ["later@one.test"],
                    b"From: sender@origin.test\r\nSubject: s\r\n\r\nx\r\n",
                )
                seen = await collect_until(
                    events,
                    lambda ev: (
                        len(terminal_in("default")(ev)) == 1
                        and len(terminal_in("bounces")(ev)) == 2
                    ),
                )
                with trio.fail_after(10):
                    call = await hook.receive.receive()
    deliveries = [e for e in seen if e.type == "delivery" and e.zone == "default"]
    assert [e.to_state for e in deliveries if e.to_state in ("deferred", "bounced")] == [
        "deferred",
        "deferred",
        "bounced",
    ]
    assert deliveries[-1].details is not None
    assert deliveries[-1].details["trigger"] == "retries_exhausted"
    assert deliveries[-1].category == "greylist"
    delayed, failed = (parse(without_received(m.content)) for m in dsns(mx))
    assert "Delay" in delayed["Subject"] and "Failure" in failed["Subject"]
    delayed_status = delayed.iter_parts()
    _t, status, _h = delayed_status
    recipient = status.get_payload()[1]
    assert (recipient["Action"], recipient["Status"]) == ("delayed", "4.7.1")
    assert recipient["Will-Retry-Until"]
    _t, status, _h = failed.iter_parts()
    recipient = status.get_payload()[1]
    assert (recipient["Action"], recipient["Status"]) == ("failed", "4.7.1")
    assert recipient["Diagnostic-Code"] == "smtp; 451 4.7.1 Greylisted, try again"
    assert call.content_type == "application/x-www-form-urlencoded"
    form = {key: values[0] for key, values in parse_qs(call.body.decode()).items()}
    assert form["id"] == message_id and form["to"] == "later@one.test"
    assert form["category"] == "greylist"
    assert int(form["time"]) > 0


async def test_dsns_can_be_disabled_per_zone(tmp_path: Path) -> None:
    with TestMx(rcpt_reply=lambda address: "550 5.1.1 no such user") as mx:
        zones = smart_hosts(mx)
        zones["default"] = {**zones["default"], "dsn": False}  # type: ignore[dict-item]
        config = relay_config(tmp_path / "q", zones=zones)
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            await submit_async(
                info.smtp_ports["feeder"],
                "s@origin.test",
                ["a@one.test"],
                b"Subject: a\r\n\r\nx\r\n",
            )
            await collect_until(events, lambda ev: len(terminal_in("default")(ev)) == 1)
            assert relay.engine.bounces.notices.queued == 0
    assert dsns(mx) == []


# ------------------------------------------------------------------------------ loops


async def test_too_many_received_headers_is_a_loop(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_hosts(mx), headers={"max_hops": 5})
    looping = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 6 + b"\r\nx\r\n"
    fine = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 5 + b"\r\nx\r\n"
    async with running_relay(config) as (_relay, info):
        port = info.smtp_ports["feeder"]

        def send(content: bytes) -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.ehlo("client.test")
                client.mail("s@origin.test")
                client.rcpt("r@one.test")
                return client.data(content)

        code, text = await trio.to_thread.run_sync(send, looping)
        assert code == 554 and text.startswith(b"5.4.6 Too many Received headers (6 > 5)")
        code, _text = await trio.to_thread.run_sync(send, fine)
        assert code == 250

"""Plugins end to end: the example plugin (examples/example_plugin.py) registers every hook;
each test proves hooks run at the right moment with the right data and that their powers
work, seen by smtplib, the test MX or a test HTTP server."""

from __future__ import annotations

import smtplib
import sys
from pathlib import Path
from typing import Any

import dkim
import httpx
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.http import http_server
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
from zonemta.app import Relay
from zonemta.conf import DkimKey
from zonemta.dkim import dns_record, load_key
from zonemta.engine.intake.auth import FailureThrottle
from zonemta.store import FixedRoute

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: examples/

EXAMPLE = "examples.example_plugin"


def message(subject: str) -> bytes:
    return (
        f"From: s@origin.test\r\nTo: r@dest.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@origin.test>\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
        f"\r\nbody of {subject}\r\n"
    ).encode()


# The plugins here hook into the intake and the sending, which run only in the relay's own
# process (also when the suite runs with ZONEMTA_TEST_DELIVERY_PROCESSES=1 or
# ZONEMTA_TEST_INTAKE_PROCESSES=2).
IN_PROCESS = {"processes": 0}


def zones(mx: TestMx, **more: Any) -> dict[str, Any]:
    smart = {"host": "127.0.0.1", "port": mx.port}
    return {"default": smart, "bounces": smart, **more}


def example_config(tmp_path: Path, mx: TestMx, **options: Any) -> Any:
    return relay_config(
        tmp_path / "q",
        delivery=IN_PROCESS,
        intake=IN_PROCESS,
        zones=zones(mx),
        plugins={"example": {"module": EXAMPLE, **options}},
    )


def example(relay: Relay, name: str = "example") -> Any:
    return next(p.plugin for p in relay.plugins.plugins if p.name == name)


def done(message_id: str, count: int = 1) -> Any:
    return lambda events: len([e for e in terminal(events) if e.id == message_id]) >= count


def sending(recipient: str) -> Any:
    return lambda events: any(
        e.type == "delivery" and e.recipient == recipient and e.to_state == "sending"
        for e in events
    )


def smtp_session(port: int, script: Any) -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        return script(client)


async def wait_for(predicate: Any, seconds: float = 10) -> None:
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - filled by the plugin's event task
            await trio.sleep(0.02)


# ---------------------------------------------------------------------- SMTP intake hooks


async def test_smtp_hooks_run_in_order_reject_with_their_reply_and_edit_headers(
    tmp_path: Path, mx: TestMx
) -> None:
    config = example_config(
        tmp_path,
        mx,
        reject_mail_from="bad@origin.test",
        reject_rcpt="no@dest.test",
        header="hello",
        send_header="sent",
    )
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        port = info.smtp_ports["feeder"]

        def script(client: smtplib.SMTP) -> Any:
            refused_mail = client.mail("bad@origin.test")
            client.rset()
            client.mail("s@origin.test")
            refused_rcpt = client.rcpt("no@dest.test")
            accepted = client.rcpt("r@dest.test")
            code, text = client.data(message("hooks"))
            return refused_mail, refused_rcpt, accepted, (code, text.decode())

        refused_mail, refused_rcpt, accepted, (code, text) = await trio.to_thread.run_sync(
            smtp_session, port, script
        )
        assert refused_mail == (550, b"5.7.1 example plugin says no")
        assert refused_rcpt == (550, b"5.1.1 no mail for this one, says the example")
        assert accepted[0] == 250 and code == 250
        message_id = text.rsplit(" ", 1)[-1]
        await collect_until(events, done(message_id))
        plugin = example(relay)
        await wait_for(lambda: "delivered" in plugin.names())
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{api_url(info)}/plugin/example/calls")
    got = mx.for_recipient("r@dest.test")[0].content
    head = got.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nX-Example: hello\r\n" in head  # headers hook (stored)
    assert head.endswith(b"\r\nX-Example-Send: sent")  # send_headers hook (per delivery)
    assert b"(Authenticated sender: example-user)" in head  # headers hook edited the envelope
    names = [n for n in plugin.names() if n != "event"]
    first = {name: names.index(name) for name in reversed(names)}
    order = ["connect", "mail_from", "rcpt_to", "data", "body", "headers", "queue", "route"]
    order += ["fetch", "before_connect", "send_headers", "delivered"]
    assert [first[n] for n in order] == sorted(first[n] for n in order)
    calls = dict(plugin.calls[::-1])
    session = calls["connect"]
    assert session.interface == "feeder" and session.client_address == "127.0.0.1"
    assert calls["mail_from"][0].helo == "client.test"
    assert calls["data"][1].recipients == ("r@dest.test",)
    assert calls["body"] == (message_id, b"body of hooks\r\n")
    assert calls["headers"] == (message_id, "hooks")
    assert calls["queue"].body_size == len(b"body of hooks\r\n")
    assert calls["route"] == ("r@dest.test", "default")
    assert calls["fetch"] == ("r@dest.test", None, None)
    assert calls["before_connect"] == ("r@dest.test", None, None)
    assert calls["delivered"].row.recipient == "r@dest.test"
    assert "250" in calls["delivered"].response
    seen_events = [data.type for name, data in plugin.calls if name == "event"]
    assert "message.queued" in seen_events and "delivery" in seen_events
    assert response.status_code == 200
    body = response.json()
    assert body["plugin"] == "example" and body["calls"]["connect"] >= 1


async def test_connect_hook_refuses_the_client(tmp_path: Path, mx: TestMx) -> None:
    config = example_config(tmp_path, mx, reject_connect=True)
    async with running_relay(config) as (_relay, info):
        with pytest.raises(smtplib.SMTPConnectError) as caught:
            await trio.to_thread.run_sync(
                lambda: smtplib.SMTP("127.0.0.1", info.smtp_ports["feeder"], timeout=10)
            )
    assert caught.value.smtp_code == 554
    assert caught.value.smtp_error == b"5.7.1 no service for you"


async def test_data_and_queue_hooks_refuse_and_drop(tmp_path: Path, mx: TestMx) -> None:
    config = example_config(
        tmp_path,
        mx,
        reject_data_from="data@origin.test",
        reject_subject="refuse me",
        drop_subject="drop me",
    )
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        port = info.smtp_ports["feeder"]

        def send(sender: str, subject: str) -> Any:
            def script(client: smtplib.SMTP) -> Any:
                client.mail(sender)
                client.rcpt("r@dest.test")
                code, text = client.data(message(subject))
                return code, text.decode()

            return smtp_session(port, script)

        assert await trio.to_thread.run_sync(send, "data@origin.test", "x") == (
            550,
            "5.7.1 example plugin says no",
        )
        assert await trio.to_thread.run_sync(send, "s@origin.test", "refuse me") == (
            550,
            "5.7.1 queue hook refuses this subject",
        )
        code, text = await trio.to_thread.run_sync(send, "s@origin.test", "drop me")
        assert code == 250
        dropped_id = text.rsplit(" ", 1)[-1]
        dropped = await collect_until(events, lambda ev: ev[-1].type == "message.dropped")
        assert dropped[-1].id == dropped_id
        assert await relay.store.get_message(dropped_id) is None
    assert mx.received() == []


async def test_crashing_intake_hook_is_a_451_and_the_retry_goes_through(
    tmp_path: Path, mx: TestMx
) -> None:
    config = example_config(tmp_path, mx, crash=["rcpt_to", "headers"])
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        port = info.smtp_ports["feeder"]

        def script(client: smtplib.SMTP) -> Any:
            client.mail("s@origin.test")
            first = client.rcpt("r@dest.test")
            second = client.rcpt("r@dest.test")
            refused = client.data(message("crash"))
            client.mail("s@origin.test")
            client.rcpt("r@dest.test")
            code, text = client.data(message("crash"))
            return first, second, refused, code, text.decode()

        first, second, refused, code, text = await trio.to_thread.run_sync(
            smtp_session, port, script
        )
        assert first == (451, b"4.3.0 temporary local problem, try again later")
        assert second[0] == 250
        assert refused == (451, b"4.3.0 temporary local problem, try again later")
        assert code == 250
        await collect_until(events, done(text.rsplit(" ", 1)[-1]))
    assert len(mx.received()) == 1


async def test_auth_hook_decides_and_http_auth_plugin_checks_basic_auth(
    tmp_path: Path, mx: TestMx
) -> None:
    users = tmp_path / "users"
    users.write_text("")
    async with http_server([]) as (auth_server, url):
        right = b"Basic YWxpY2U6cmlnaHQ="  # alice:right
        auth_server.decide = lambda r: 200 if r.headers.get(b"authorization") == right else 403
        config = relay_config(
            tmp_path / "q",
            delivery=IN_PROCESS,
            intake=IN_PROCESS,
            smtp={
                "feeder": {
                    "host": "127.0.0.1",
                    "port": 0,
                    "authentication": True,
                    "allow_insecure_auth": True,
                    "users_file": str(users),
                    "auth_failure_delay": "0.1s",
                }
            },
            zones=zones(mx),
            plugins={
                "example": {"module": EXAMPLE, "order": 1},
                "auth": {"module": "http-auth", "url": f"{url}/check", "order": 2},
            },
        )
        async with running_relay(config) as (relay, info):

            def login(password: str) -> Any:
                def script(client: smtplib.SMTP) -> Any:
                    try:
                        return client.login("alice", password)
                    except smtplib.SMTPAuthenticationError as exc:
                        return exc.smtp_code, exc.smtp_error

                return smtp_session(info.smtp_ports["feeder"], script)

            assert await trio.to_thread.run_sync(login, "right") == (
                235,
                b"2.7.0 Authentication successful",
            )
            assert await trio.to_thread.run_sync(login, "wrong") == (
                535,
                b"5.7.8 Authentication failed",
            )
            # The plugin's refusals (PLAIN, then LOGIN) earn the interface's failure delays.
            throttle = relay.interfaces[0].settings.auth_throttle
            assert isinstance(throttle, FailureThrottle)
            assert throttle.failures("127.0.0.1", trio.current_time()) == 2
            plugin = example(relay)
    # smtplib tries PLAIN, then LOGIN, with the wrong password: one check each.
    assert [r.path for r in auth_server.requests] == ["/check?transport=SMTP"] * 3
    assert auth_server.requests[0].headers[b"authorization"] == right
    assert [data[1] for name, data in plugin.calls if name == "auth"] == ["alice"] * 3


# --------------------------------------------------------------------------- HTTP intake


async def test_api_hook_refuses_a_submission(tmp_path: Path, mx: TestMx) -> None:
    config = example_config(tmp_path, mx, reject_api_from="api@origin.test")
    async with running_relay(config) as (relay, info), httpx.AsyncClient() as client:
        mail = {"from": "api@origin.test", "to": ["r@dest.test"], "subject": "x", "text": "y"}
        refused = await client.post(f"{api_url(info)}/send", json=mail)
        mail["from"] = "ok@origin.test"
        accepted = await client.post(f"{api_url(info)}/send", json=mail)
        plugin = example(relay)
    assert refused.status_code == 400
    assert refused.json() == {"error": "550 5.7.1 example plugin says no"}
    assert accepted.status_code == 200
    api_calls = [data for name, data in plugin.calls if name == "api"]
    assert [e.mail_from for e in api_calls] == ["api@origin.test", "ok@origin.test"]
    assert api_calls[0].interface == "api"


# ------------------------------------------------------------------------ routing hooks


async def test_route_hook_changes_the_zone_or_fixes_the_mx(tmp_path: Path, mx: TestMx) -> None:
    with TestMx() as other, TestMx() as fixed:
        config = relay_config(
            tmp_path / "q",
            delivery=IN_PROCESS,
            intake=IN_PROCESS,
            zones=zones(mx, other={"host": "127.0.0.1", "port": other.port}),
            plugins={
                "example": {
                    "module": EXAMPLE,
                    "reroute_domain": "moved.test",
                    "reroute_zone": "other",
                },
                "pinned": {
                    "module": EXAMPLE,
                    "reroute_domain": "pinned.test",
                    "fixed_mx": f"127.0.0.1:{fixed.port}",
                },
            },
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            recipients = ["a@moved.test", "b@pinned.test", "c@dest.test"]
            # The fixed MX holds DATA: b's delivery stays in flight, so the message is still
            # stored (with its routes) while b is being sent.
            fixed.stall_data.set()
            message_id = await submit_async(
                info.smtp_ports["feeder"], "s@origin.test", recipients, message("route")
            )
            seen = await collect_until(events, sending("b@pinned.test"))
            stored = await relay.store.get_message(message_id)
            fixed.stall_data.clear()  # a held DATA gets a 451; the retry delivers
            # a's outcome may already be among the events seen so far.
            seen += await collect_until(events, lambda more: done(message_id, 3)(seen + more))
            pinned = example(relay, "pinned")
        assert [m.recipients for m in other.received()] == [("a@moved.test",)]
        assert [m.recipients for m in fixed.received()] == [("b@pinned.test",)]
    assert [m.recipients for m in mx.received()] == [("c@dest.test",)]
    zones_of = {e.recipient: e.zone for e in seen if e.type == "delivery"}
    assert zones_of["a@moved.test"] == "other"
    seq_of = {e.recipient: e.seq for e in seen if e.type == "delivery"}
    assert stored is not None
    assert stored.meta.routes == {seq_of["b@pinned.test"]: FixedRoute(mx=f"127.0.0.1:{fixed.port}")}
    fetched = [data for name, data in pinned.calls if name == "fetch"]
    assert ("b@pinned.test", f"127.0.0.1:{fixed.port}", None) in fetched
    connect = [data for name, data in pinned.calls if name == "before_connect"]
    assert ("b@pinned.test", f"127.0.0.1:{fixed.port}", None) in connect


async def test_before_connect_hook_chooses_the_mx(tmp_path: Path, mx: TestMx) -> None:
    with TestMx() as chosen:
        config = example_config(
            tmp_path, mx, connect_domain="elsewhere.test", connect_mx=f"127.0.0.1:{chosen.port}"
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            message_id = await submit_async(
                info.smtp_ports["feeder"],
                "s@origin.test",
                ["x@elsewhere.test", "y@dest.test"],
                message("choose"),
            )
            seen = await collect_until(events, done(message_id, 2))
        assert [m.recipients for m in chosen.received()] == [("x@elsewhere.test",)]
    assert [m.recipients for m in mx.received()] == [("y@dest.test",)]
    mxs = {e.recipient: e.mx for e in terminal(seen)}
    assert mxs["x@elsewhere.test"] == "127.0.0.1"


async def test_fetch_hook_suppresses_a_delivery(tmp_path: Path, mx: TestMx) -> None:
    config = example_config(tmp_path, mx, suppress_recipient="quiet@dest.test")
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        message_id = await submit_async(
            info.smtp_ports["feeder"], "s@origin.test", ["quiet@dest.test"], message("quiet")
        )
        seen = await collect_until(events, done(message_id))
    final = terminal(seen)[0]
    assert final.to_state == "bounced" and final.response == "suppressed by a plugin"
    assert mx.received() == []


# ------------------------------------------------------------------------ HTTP delivery


async def test_route_hook_diverts_to_http_delivery(tmp_path: Path, mx: TestMx) -> None:
    async with http_server([]) as (web, url):
        config = relay_config(
            tmp_path / "q",
            delivery=IN_PROCESS,
            intake=IN_PROCESS,
            zones=zones(mx),
            plugins={
                "example": {
                    "module": EXAMPLE,
                    "reroute_domain": "web.test",
                    "http_url": f"{url}/inbox",
                },
                "http": {"module": "http-delivery"},
            },
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            message_id = await submit_async(
                info.smtp_ports["feeder"], "s@origin.test", ["h@web.test"], message("ok")
            )
            seen = await collect_until(events, done(message_id))
    assert states_of(seen, message_id, 1)[-1] == "delivered"
    assert len(web.requests) == 1
    first = web.requests[0]
    assert first.path == "/inbox"
    content_type = first.headers[b"content-type"].decode()
    assert content_type.startswith("multipart/form-data; boundary=")
    for field, value in (
        ("id", message_id),
        ("seq", "001"),
        ("from", "s@origin.test"),
        ("to", "h@web.test"),
        ("zone", "default"),
    ):
        assert f'name="{field}"\r\n\r\n{value}\r\n'.encode() in first.body
    assert b'filename="message.eml"\r\nContent-Type: message/rfc822' in first.body
    assert b"Subject: ok\r\n" in first.body and b"\r\n\r\nbody of ok\r\n" in first.body
    assert mx.received() == []


async def test_http_delivery_outcomes(tmp_path: Path, mx: TestMx) -> None:
    async with http_server([200, 400, 503, 200]) as (web, url):
        config = relay_config(
            tmp_path / "q",
            delivery=IN_PROCESS,
            intake=IN_PROCESS,
            zones=zones(mx, web={"host": "127.0.0.1", "port": mx.port}),
            routing={"default_zone": "default"},
            plugins={
                "http": {"module": "http-delivery", "url": f"{url}/z", "zones": ["web"]},
                "example": {"module": EXAMPLE, "reroute_domain": "web.test", "reroute_zone": "web"},
            },
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            port = info.smtp_ports["feeder"]
            outcomes = []
            for subject in ("ok", "bounce", "later"):
                message_id = await submit_async(
                    port, "s@origin.test", ["h@web.test"], message(subject)
                )
                seen = await collect_until(events, done(message_id), seconds=30)
                outcomes.append(states_of(seen, message_id, 1))
    assert outcomes[0][-1] == "delivered"
    assert outcomes[1][-1] == "bounced"
    assert "deferred" in outcomes[2] and outcomes[2][-1] == "delivered"
    assert [r.path for r in web.requests] == ["/z"] * 4
    assert mx.for_recipient("h@web.test") == []  # (the bounce's DSN went to the MX)


# --------------------------------------------------------------- delivery failure hooks


async def test_failure_hooks_and_a_crashing_fetch_hook_defers(tmp_path: Path) -> None:
    refused: set[str] = set()

    def rcpt_reply(address: str) -> str | None:
        if address.startswith("hard"):
            return "550 5.1.1 no such user"
        if address.startswith("soft") and address not in refused:
            refused.add(address)
            return "451 4.3.0 later"
        return None

    with TestMx(rcpt_reply=rcpt_reply) as mx:
        config = example_config(tmp_path, mx, crash=["fetch", "event"])
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            message_id = await submit_async(
                info.smtp_ports["feeder"],
                "s@origin.test",
                ["hard@dest.test", "soft@dest.test"],
                message("fail"),
            )
            seen = await collect_until(events, done(message_id, 2), seconds=30)
            plugin = example(relay)
            await wait_for(lambda: "bounce" in plugin.names())
    calls = plugin.calls
    bounces = [d for n, d in calls if n == "bounce" and d.row.recipient == "hard@dest.test"]
    assert bounces and "550" in bounces[0].response and bounces[0].message is not None
    errors = [d.row.recipient for n, d in calls if n == "response_error"]
    assert "hard@dest.test" in errors and "soft@dest.test" in errors
    assert any(n == "delayed" for n, _ in calls)
    # The first fetch crashed: that delivery was deferred, then delivered or bounced.
    crashed = [
        e for e in seen if e.type == "delivery" and e.response and "internal error" in e.response
    ]
    assert crashed and crashed[0].to_state == "deferred"
    assert len(mx.for_recipient("soft@dest.test")) == 1
    assert mx.for_recipient("hard@dest.test") == []


# ---------------------------------------------------------- header rules, signed by DKIM


async def test_header_rules_edit_each_delivery_before_dkim_signs_it(
    tmp_path: Path, mx: TestMx
) -> None:
    key_path = tmp_path / "origin.pem"
    key_path.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    rules = [
        {"recipient": ["one.test"], "replace": {"Subject": "rewritten"}, "remove": ["X-Drop"]},
        {"zone": ["default"], "sender": ["origin.test"], "add": {"X-Rule": "all"}},
        {"sender": ["nobody.test"], "add": {"X-Never": "1"}},
    ]
    config = relay_config(
        tmp_path / "q",
        delivery=IN_PROCESS,
        intake=IN_PROCESS,
        zones=zones(mx),
        dkim={"keys": {"origin.test": {"selector": "s1", "private_key": str(key_path)}}},
        plugins={"rules": {"module": "header-rules", "rules": rules}},
    )
    content = message("original").replace(b"\r\n\r\n", b"\r\nX-Drop: yes\r\n\r\n", 1)
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        message_id = await submit_async(
            info.smtp_ports["feeder"], "s@origin.test", ["a@one.test", "b@two.test"], content
        )
        await collect_until(events, done(message_id, 2))
    key = load_key("origin.test", DkimKey(selector="s1", private_key=str(key_path)))
    record = dns_record(key).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name.rstrip(b".") == b"s1._domainkey.origin.test" else None

    edited = mx.for_recipient("a@one.test")[0].content
    plain = mx.for_recipient("b@two.test")[0].content
    for got in (edited, plain):
        assert got.count(b"DKIM-Signature:") == 1
        assert dkim.verify(got, dnsfunc=dnsfunc)  # the signature covers the edited block
        assert b"\r\nX-Rule: all\r\n" in got and b"X-Never" not in got
    assert b"\r\nSubject: rewritten\r\n" in edited and b"X-Drop" not in edited
    assert b"\r\nSubject: original\r\n" in plain and b"\r\nX-Drop: yes\r\n" in plain

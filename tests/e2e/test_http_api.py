"""The HTTP API over real HTTP: httpx against hypercorn on a loopback port, a relay that
delivers to an aiosmtpd test MX through a smart-host zone."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.mx import TestMx
from tests.support.relay import api_url, collect_until, relay_config, running_relay, terminal
from zonemta.engine.bus import Event
from zonemta.store import MessageRecord, NewDelivery


def smart_host(mx: TestMx, **extra: Any) -> dict[str, Any]:
    return {"default": {"host": "127.0.0.1", "port": mx.port, **extra}}


def parse(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def without_received(content: bytes) -> bytes:
    lines = content.split(b"\r\n")
    assert lines[0].startswith(b"Received: ")
    index = 1
    while lines[index][:1] in (b" ", b"\t"):
        index += 1
    return b"\r\n".join(lines[index:])


async def pending(relay: Any) -> int:
    counts = await relay.store.zone_counts(0.0)
    return sum(c.active + c.deferred for c in counts.values())


def assert_error(response: httpx.Response, status: int, words: str = "") -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert words.lower() in body["error"].lower(), body


class Refusing:
    """RCPT answers for the test MX: addresses in ``defer`` get 451 while it is set."""

    def __init__(self, *addresses: str) -> None:
        self.defer = set(addresses)
        self.lock = threading.Lock()

    def __call__(self, address: str) -> str | None:
        with self.lock:
            if address in self.defer:
                return "451 4.7.1 try again later"
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        return None

    def accept_all(self) -> None:
        with self.lock:
            self.defer.clear()


async def test_send_composes_the_message_and_it_arrives(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    attachment = bytes(range(256)) * 40
    payload = {
        "from": {"name": "Sender Näme", "address": "sender@origin.test"},
        "to": "a@one.test, Bob <b@two.test>",
        "cc": ["c@two.test"],
        "bcc": "hidden@three.test",
        "subject": "Grüße from the API",
        "text": "hello\n.leading dot\nlast line",
        "html": "<p>hello <b>world</b></p>",
        "headers": {"X-Campaign": "spring"},
        "attachments": [
            {
                "filename": "data.bin",
                "content": base64.b64encode(attachment).decode(),
                "encoding": "base64",
            }
        ],
    }
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            response = await client.post(
                "/send",
                json=payload,
                headers={"X-Authenticated-User": "andris", "X-Originating-IP": "192.0.2.7"},
            )
        assert response.status_code == 200, response.text
        body = response.json()
        message_id = body["id"]
        assert body["from"] == "sender@origin.test"
        assert body["to"] == ["a@one.test", "b@two.test", "c@two.test", "hidden@three.test"]
        assert body["response"] == f"Message queued as {message_id}"
        stored = await relay.store.get_message(message_id)
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == 4)
    assert stored is not None
    assert stored.meta.interface == "api"
    assert stored.meta.user == "andris"
    assert stored.meta.client_address == "192.0.2.7"
    assert b"hidden@three.test" not in stored.headers
    assert {e.to_state for e in terminal(seen)} == {"delivered"}
    for recipient in body["to"]:
        got = mx.for_recipient(recipient)
        assert len(got) == 1 and got[0].mail_from == "sender@origin.test"
        message = parse(without_received(got[0].content))
        assert message["Subject"] == "Grüße from the API"
        assert message["From"].addresses[0].display_name == "Sender Näme"
        assert [a.addr_spec for a in message["To"].addresses] == ["a@one.test", "b@two.test"]
        assert message["Cc"] == "c@two.test"
        assert message["Bcc"] is None
        assert message["X-Campaign"] == "spring"
        assert message["Message-ID"] and message["Date"]
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        assert text is not None and html is not None
        assert text.get_content().splitlines() == ["hello", ".leading dot", "last line"]
        assert "<b>world</b>" in html.get_content()
        (part,) = list(message.iter_attachments())
        assert part.get_filename() == "data.bin"
        assert part.get_content() == attachment
        assert b"(Authenticated sender: andris)" in got[0].content.split(b"\r\n\r\n")[0]


SEND_ERRORS: list[tuple[Any, int, str]] = [
    ({"from": "a@b.test", "to": "c@d.test", "attachments": [{"path": "/etc/passwd"}]}, 400, "path"),
    ({"from": "a@b.test", "to": "c@d.test", "attachments": [{"href": "http://x/"}]}, 400, "href"),
    ({"from": "a@b.test", "subject": "nobody"}, 400, "no recipients"),
    ({"to": "c@d.test"}, 400, "from"),
    ({"from": "a@b.test", "to": "not an address"}, 400, "address"),
    ({"from": "a@b.test", "to": "c@d.test", "priority": "high"}, 400, "unknown key"),
    ({"from": "a@b.test", "to": "c@d.test", "headers": {"X-A": "1\r\nBcc: x@y.test"}}, 400, ""),
    ({"from": "a@b.test", "to": "c@d.test", "headers": {"Content-Type": "x/y"}}, 400, "header"),
    (["not", "an", "object"], 400, "object"),
]


@pytest.mark.parametrize(("payload", "status", "words"), SEND_ERRORS)
async def test_send_refuses_bad_messages(
    tmp_path: Path, mx: TestMx, payload: Any, status: int, words: str
) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    async with running_relay(config) as (relay, info):
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            assert_error(await client.post("/send", json=payload), status, words)
        assert await pending(relay) == 0


async def test_send_refuses_what_is_not_json(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx), api={"max_send_size": "2KB"})
    async with (
        running_relay(config) as (_relay, info),
        httpx.AsyncClient(base_url=api_url(info)) as client,
    ):
        response = await client.post(
            "/send", content=b"{bad", headers={"Content-Type": "application/json"}
        )
        assert_error(response, 400, "json")
        assert_error(await client.post("/send", content=b"x=1"), 415, "json")
        big = {"from": "a@b.test", "to": "c@d.test", "text": "x" * 4096}
        assert_error(await client.post("/send", json=big), 413)
        response = await client.post(
            "/send",
            json={"from": "a@b.test", "to": "c@d.test"},
            headers={"X-Originating-IP": "not-an-ip"},
        )
        assert_error(response, 400, "X-Originating-IP")


RAW = (
    b"From: Sender <sender@origin.test>\n"
    b"To: a@one.test\n"
    b"Cc: Carl <c@two.test>\n"
    b"Bcc: secret@three.test,\n"
    b" other@three.test\n"
    b"Subject: raw\n"
    b"Message-ID: <raw-1@origin.test>\n"
    b"Date: Mon, 02 Mar 2026 10:00:00 +0000\n"
    b"\n"
)


async def test_send_raw_streams_a_large_message_with_envelope_from_headers(
    tmp_path: Path, mx: TestMx
) -> None:
    lines = [b"line %07d with some text\n" % n for n in range(200_000)]  # ~5.6 MB, LF endings
    lines[5] = b".starts with a dot\n"
    body = b"".join(lines)
    expected = (RAW + body).replace(b"\n", b"\r\n")
    expected = expected.replace(b"Bcc: secret@three.test,\r\n other@three.test\r\n", b"")
    config = relay_config(tmp_path / "q", zones=smart_host(mx))

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: chunked encoding
        data = RAW + body
        for offset in range(0, len(data), 65_537):
            yield data[offset : offset + 65_537]

    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        async with httpx.AsyncClient(base_url=api_url(info), timeout=60) as client:
            response = await client.post(
                "/send-raw", content=chunked(), headers={"Content-Type": "message/rfc822"}
            )
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["from"] == "sender@origin.test"
        assert result["to"] == ["a@one.test", "c@two.test", "secret@three.test", "other@three.test"]
        await collect_until(events, lambda ev: len(terminal(ev)) == 4, seconds=60)
    for recipient in result["to"]:
        (got,) = mx.for_recipient(recipient)
        content = without_received(got.content)
        assert hashlib.sha256(content).hexdigest() == hashlib.sha256(expected).hexdigest()


async def test_send_raw_refusals(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx), api={"max_send_size": "64KB"})

    async def chunked(data: bytes) -> AsyncIterator[bytes]:
        for offset in range(0, len(data), 8192):
            yield data[offset : offset + 8192]

    async with running_relay(config) as (relay, info):
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            too_big = RAW + b"x" * 100 * 1024
            assert_error(await client.post("/send-raw", content=too_big), 413, "larger")
            response = await client.post("/send-raw", content=chunked(too_big))
            assert_error(response, 413, "larger")
            assert_error(await client.post("/send-raw", content=b""), 400, "empty")
            response = await client.post("/send-raw", content=b"To: a@b.test\r\n\r\nhi\r\n")
            assert_error(response, 400, "From")
            response = await client.post("/send-raw", content=b"From: a@b.test\r\n\r\nhi\r\n")
            assert_error(response, 400, "To")
            response = await client.post("/send-raw", content=b"no header here\r\n\r\nbody")
            assert_error(response, 400, "header")
            metrics = await client.get("/metrics")
        assert await pending(relay) == 0
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    assert families["zonemta_message_drop"].samples[0].value == 1  # the chunked one began
    assert families["zonemta_message_push"].samples[0].value == 0


async def test_queue_routes(tmp_path: Path) -> None:
    refusing = Refusing("later@one.test")
    with TestMx(rcpt_reply=refusing) as mx:
        config = relay_config(
            tmp_path / "q", zones=smart_host(mx), queue={"retry_schedule": ["1h", "1h", "1h"]}
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            async with httpx.AsyncClient(base_url=api_url(info)) as client:
                raw = RAW.replace(b"a@one.test", b"later@one.test") + b"body\n"
                first = (await client.post("/send-raw", content=raw)).json()["id"]
                second = (
                    await client.post(
                        "/send", json={"from": "s@origin.test", "to": "later@one.test"}
                    )
                ).json()["id"]
                # Wait for both deferrals and for the raw message's three other recipients
                # (delivered at once), so that nothing but the two deferrals is pending.
                deferred = await collect_until(
                    events,
                    lambda ev: (
                        sum(e.to_state == "deferred" for e in ev) == 2
                        and sum(e.to_state == "delivered" for e in ev) == 3
                    ),
                )
                assert {e.id for e in deferred if e.to_state == "deferred"} == {first, second}
                await check_listings(client, first, second)
                await check_message_and_fetch(client, first, raw)
                await check_send_now_and_delete(client, relay, events, refusing, first, second)


async def check_listings(client: httpx.AsyncClient, first: str, second: str) -> None:
    zones = await client.get("/zones")
    assert zones.json() == [{"name": "bounces"}, {"name": "default"}]
    everything = (await client.get("/counter/zone/")).json()
    assert everything["zone"] == "all"
    assert everything["deferred"]["rows"] == 2
    assert {"key": "default", "value": 2} in everything["deferred"]["entries"]
    # c@two.test, secret@, other@ were delivered at once: nothing else is pending.
    assert everything["active"]["rows"] == 0
    one = (await client.get("/counter/zone/default")).json()
    assert one["deferred"]["rows"] == 2 and one["zone"] == "default"
    assert_error(await client.get("/counter/zone/nope"), 404, "unknown zone")

    listing = (await client.get("/queued/deferred/default")).json()
    assert listing["zone"] == "default" and listing["type"] == "deferred"
    assert [row["id"] for row in listing["list"]] == [second, first]  # newest first
    row = listing["list"][1]
    assert row["recipient"] == "later@one.test" and row["deferred"] == 1 and row["seq"] == 1
    page = (await client.get("/queued/deferred/default?order=asc&start=1&pageSize=1")).json()
    assert [r["id"] for r in page["list"]] == [second]
    assert (await client.get("/queued/active/default")).json()["list"] == []
    assert_error(await client.get("/queued/bogus/default"), 400, "listing type")
    assert_error(await client.get("/queued/deferred/nope"), 404, "unknown zone")
    assert_error(await client.get("/queued/deferred/default?pageSize=0"), 400, "pageSize")
    assert_error(await client.get("/queued/deferred/default?start=x"), 400, "start")
    assert_error(await client.get("/queued/deferred/default?order=up"), 400, "order")


async def check_message_and_fetch(client: httpx.AsyncClient, first: str, raw: bytes) -> None:
    info = (await client.get(f"/message/{first}")).json()
    assert info["meta"]["id"] == first
    assert info["meta"]["from"] == "sender@origin.test"
    assert info["meta"]["interface"] == "api"
    assert info["meta"]["subject"] == "raw"
    assert {"key": "subject", "line": "Subject: raw"} in info["meta"]["headers"]
    (delivery,) = info["messages"]
    assert delivery["recipient"] == "later@one.test" and delivery["status"] == "DEFERRED"
    assert delivery["deferred"]["count"] == 1
    assert "451 4.7.1" in delivery["deferred"]["response"]
    assert_error(await client.get("/message/0123456789abcdef0123"), 404, "not in the queue")
    assert_error(await client.get("/message/not-an-id!"), 400, "invalid message id")

    fetched = await client.get(f"/fetch/{first}")
    assert fetched.status_code == 200
    assert fetched.headers["content-type"].startswith("message/rfc822")
    expected = raw.replace(b"\n", b"\r\n")
    expected = expected.replace(b"Bcc: secret@three.test,\r\n other@three.test\r\n", b"")
    assert fetched.content == expected
    body_only = await client.get(f"/fetch/{first}?body=yes")
    assert body_only.content == b"body\r\n"
    assert_error(await client.get("/fetch/0123456789abcdef0123"), 404)


async def check_send_now_and_delete(
    client: httpx.AsyncClient,
    relay: Any,
    events: Any,
    refusing: Refusing,
    first: str,
    second: str,
) -> None:
    assert_error(await client.put(f"/message/{first}/7"), 404)
    assert_error(await client.put(f"/message/{first}/x"), 400, "seq")
    # Still refused: sending now gives one more deferral at once (not in an hour).
    response = await client.put(f"/message/{first}/1")
    assert response.status_code == 200 and response.json()["rescheduled"] == 1
    await collect_until(events, lambda ev: any(e.to_state == "deferred" for e in ev))
    refusing.accept_all()
    response = await client.put(f"/message/{first}")
    assert response.json() == {
        "success": True,
        "id": first,
        "rescheduled": 1,
        "time": response.json()["time"],
    }
    done: list[Event] = await collect_until(events, lambda ev: len(terminal(ev)) == 1)
    assert terminal(done)[0].id == first and terminal(done)[0].to_state == "delivered"
    assert_error(await client.get(f"/message/{first}"), 404)

    response = await client.delete(f"/message/{second}/1")
    assert response.status_code == 200 and response.json()["deleted"] == 1
    assert_error(await client.get(f"/message/{second}"), 404)
    assert_error(await client.delete(f"/message/{second}"), 404)
    assert await relay.store.get_message(second) is None


async def test_counter_by_domain_is_exact_past_the_old_row_cap(tmp_path: Path) -> None:
    """More pending deliveries than the 20,000 the route used to read: every one counted."""
    config = relay_config(tmp_path / "q", zones={"bulk": {"connections": 1}})
    async with running_relay(config) as (relay, info):
        later = time.time() + 3600  # deferred: no scheduler touches them meanwhile
        domains = [f"d{n}.test" for n in range(7)]
        for zone, message_id, count in (("default", "m1", 21_000), ("bulk", "m2", 1_500)):
            body = relay.store.new_body(message_id)
            await body.write(b"hi\r\n")
            deliveries = [
                NewDelivery(seq, f"r{seq}@{domains[seq % 7]}", domains[seq % 7], zone, later)
                for seq in range(count)
            ]
            record = MessageRecord(message_id, "s@o.test", b"Subject: x\r\n", 4, time.time())
            await relay.store.commit_message(record, body, deliveries)
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            counts = (await client.get("/counter/domain/", params={"limit": 3})).json()
            bulk = (await client.get("/counter/domain/", params={"zone": "bulk"})).json()
    assert (counts["scanned"], counts["total"], counts["complete"]) == (22_500, 7, True)
    assert counts["domains"][0] == {
        "domain": "d0.test",
        "active": 0,
        "deferred": 3000 + 215,
        "zones": ["bulk", "default"],
    }
    assert [d["domain"] for d in counts["domains"]] == ["d0.test", "d1.test", "d2.test"]
    assert sum(d["deferred"] for d in bulk["domains"]) == bulk["scanned"] == 1_500
    assert {tuple(d["zones"]) for d in bulk["domains"]} == {("bulk",)}


async def test_suppression_list_routes_and_effect(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            added = await client.post("/suppressionlist", json={"address": "Gone@One.TEST"})
            assert added.status_code == 200
            entry = added.json()["suppressed"]
            assert entry["address"] == "Gone@one.test" and entry["id"]
            domain = (await client.post("/suppressionlist?domain=Closed.TEST")).json()
            assert domain["suppressed"]["domain"] == "closed.test"
            again = await client.post("/suppressionlist", json={"address": "Gone@one.test"})
            assert again.json()["suppressed"]["id"] == entry["id"]
            listed = (await client.get("/suppressionlist")).json()["suppressed"]
            assert {e["id"] for e in listed} == {entry["id"], domain["suppressed"]["id"]}
            assert_error(await client.post("/suppressionlist", json={}), 400, "exactly one")
            both = {"address": "a@b.test", "domain": "b.test"}
            assert_error(await client.post("/suppressionlist", json=both), 400, "exactly one")
            bad = {"address": "no-at-sign"}
            assert_error(await client.post("/suppressionlist", json=bad), 400, "address")

            recipients = "Gone@one.test, x@closed.test, here@one.test"
            await client.post("/send", json={"from": "s@origin.test", "to": recipients})
            seen = await collect_until(events, lambda ev: len(terminal(ev)) == 3)
            outcome = {e.recipient: e for e in terminal(seen)}
            assert outcome["Gone@one.test"].category == "suppressed"
            assert outcome["x@closed.test"].category == "suppressed"
            assert outcome["here@one.test"].to_state == "delivered"
            assert [m.recipients for m in mx.received()] == [("here@one.test",)]

            removed = await client.request(
                "DELETE", "/suppressionlist", json={"id": domain["suppressed"]["id"]}
            )
            assert removed.json() == {"deleted": domain["suppressed"]["id"]}
            assert_error(await client.delete("/suppressionlist?id=nope"), 404)
            assert_error(await client.delete("/suppressionlist"), 400, "id")
            await client.post("/send", json={"from": "s@origin.test", "to": "y@closed.test"})
            seen = await collect_until(events, lambda ev: len(terminal(ev)) == 1)
            assert terminal(seen)[0].to_state == "delivered"


async def test_token_auth(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx), api={"token": "s3cret-token"})
    async with (
        running_relay(config) as (_relay, info),
        httpx.AsyncClient(base_url=api_url(info)) as client,
    ):
        for method, path in [("GET", "/zones"), ("POST", "/send"), ("GET", "/openapi.json")]:
            response = await client.request(method, path)
            assert_error(response, 401, "authentication")
            assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = {"Authorization": "Bearer nope"}
        assert_error(await client.get("/zones", headers=wrong), 401)
        basic = {"Authorization": "Basic czNjcmV0LXRva2Vu"}
        assert_error(await client.get("/zones", headers=basic), 401)
        right = {"Authorization": "Bearer s3cret-token"}
        assert (await client.get("/zones", headers=right)).status_code == 200
        assert (await client.get("/metrics")).status_code == 200  # public by default


async def test_unknown_routes_and_methods_answer_json(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    async with (
        running_relay(config) as (_relay, info),
        httpx.AsyncClient(base_url=api_url(info)) as client,
    ):
        assert_error(await client.get("/nope"), 404, "no such route")
        assert_error(await client.post("/zones"), 405, "not allowed")


RULE_ARGS = {"mid": "id", "kind": "type"}  # route argument names → documented names


async def test_openapi_describes_every_route(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    async with running_relay(config) as (relay, info):
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            document = (await client.get("/openapi.json")).json()
        rules = list(relay.api.app.url_map.iter_rules())
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert len(rules) >= 17
    for rule in rules:
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<{name}>", "{" + RULE_ARGS.get(name, name) + "}")
        methods = {"get"} if rule.websocket else {m.lower() for m in rule.methods or ()}
        methods -= {"head", "options"}
        assert path in paths, path
        assert methods <= set(paths[path]), (path, methods)
        for method in methods:
            operation = paths[path][method]
            assert operation["summary"] and operation["responses"]
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == {RULE_ARGS.get(a, a) for a in rule.arguments}, (path, declared)


async def test_metrics_match_what_happened(tmp_path: Path) -> None:
    with TestMx(rcpt_reply=Refusing("later@one.test")) as mx:
        config = relay_config(
            tmp_path / "q",
            zones=smart_host(mx, connections=1),
            queue={"retry_schedule": ["1h", "1h", "1h"]},
            bounces={"dsn": {"enabled": False}},  # no notice messages in the counts
        )
        async with running_relay(config) as (relay, info):
            events = relay.bus.subscribe()
            async with httpx.AsyncClient(base_url=api_url(info)) as client:
                for n in range(3):
                    to = f"ok{n}@one.test, later@one.test" if n == 0 else f"ok{n}@one.test"
                    sent = await client.post("/send", json={"from": "s@o.test", "to": to})
                    assert sent.status_code == 200
                await client.post("/send", json={"from": "s@o.test", "to": "nobody@one.test"})
                await collect_until(
                    events,
                    lambda ev: len(terminal(ev)) == 4 and any(e.to_state == "deferred" for e in ev),
                )
                text = (await client.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(family: str, sample: str, **labels: str) -> float:
        for s in families[family].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        raise AssertionError(f"no {sample} {labels}")

    status = "zonemta_delivery_status"
    assert value(status, status + "_total", result="delivered", zone="default") == 3
    assert value(status, status + "_total", result="rejected", zone="default") == 1
    assert value(status, status + "_total", result="deferred", zone="default") == 1
    assert value(status, status + "_total", result="delivered", zone="bounces") == 0
    push = "zonemta_message_push"
    assert value(push, push + "_total", result="success") == 4
    assert value(push, push + "_total", result="fail") == 0
    assert value("zonemta_queue_size", "zonemta_queue_size", type="deferred") == 1
    assert value("zonemta_queue_size", "zonemta_queue_size", type="queued") == 0
    reuses = value("zonemta_connection_reuses", "zonemta_connection_reuses_total", zone="default")
    assert reuses >= 1  # one connection for the zone: later messages reuse it
    pool = value("zonemta_connection_pool_size", "zonemta_connection_pool_size", zone="default")
    assert pool <= 1
    queue_time = "zonemta_queue_time_seconds"
    assert value(queue_time, queue_time + "_count", result="delivered", zone="default") == 3
    assert value(queue_time, queue_time + "_count", result="rejected", zone="default") == 1
    assert 0 <= value(queue_time, queue_time + "_sum", result="delivered", zone="default") < 60
    attempts = "zonemta_smtp_attempt_duration_seconds"
    assert value(attempts, attempts + "_count", result="delivered", zone="default") == 3
    assert value(attempts, attempts + "_count", result="deferred", zone="default") == 1
    assert value(attempts, attempts + "_count", result="rejected", zone="default") == 1

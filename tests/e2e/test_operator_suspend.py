"""Suspensions in a running relay: held deliveries stay queued and say why, resume sends
them, and bad requests get a clear error (``POST/GET /suspend``, ``DELETE /suspend/<id>``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.support.mx import TestMx
from tests.support.relay import (
    api_url,
    collect_until,
    relay_config,
    running_relay,
    submit_async,
    terminal,
)
from zonemta.engine.bus import Event

MESSAGE = b"From: a@origin.test\r\nSubject: hold\r\n\r\nbody\r\n"


def smart_host(mx: TestMx, **extra: Any) -> dict[str, Any]:
    return {"default": {"host": "127.0.0.1", "port": mx.port, **extra}}


def delivered_to(events: list[Event], recipient: str) -> bool:
    return any(e.recipient == recipient and e.to_state == "delivered" for e in events)


async def reasons(client: httpx.AsyncClient, message_id: str) -> dict[str, list[dict[str, Any]]]:
    response = await client.get(f"/message/{message_id}/why")
    assert response.status_code == 200, response.text
    return {r["recipient"]: r["reasons"] for r in response.json()["recipients"]}


async def test_a_held_domain_waits_says_why_and_goes_on_resume(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            response = await client.post(
                "/suspend",
                json={
                    "domain": "Held.test",
                    "reason": "provider outage",
                    "who": "ops",
                    "for": "1h",
                },
            )
            assert response.status_code == 201, response.text
            entry = response.json()["suspension"]
            assert entry["domain"] == "held.test" and entry["who"] == "ops"
            assert entry["until"].endswith("Z")
            message_id = await submit_async(
                info.smtp_ports["feeder"], "a@origin.test", ["a@held.test", "b@free.test"], MESSAGE
            )
            seen = await collect_until(events, lambda evs: delivered_to(evs, "b@free.test"))
            why = await reasons(client, message_id)
            (held,) = why["a@held.test"]
            assert held["code"] == "suspended" and held["suspension"] == entry["id"]
            assert "provider outage" in held["text"] and "by ops" in held["text"]
            (row,) = [r for r in await relay.store.deliveries_of(message_id)]
            assert row.attempts == 0 and row.state.value == "queued"
            listed = (await client.get("/suspend")).json()["suspensions"]
            assert [e["id"] for e in listed] == [entry["id"]]

            response = await client.delete(f"/suspend/{entry['id']}")
            assert response.status_code == 200 and response.json()["deleted"] == entry["id"]
            seen += await collect_until(events, lambda evs: delivered_to(evs, "a@held.test"))
            assert (await client.get("/suspend")).json() == {"suspensions": []}
    assert [m.recipients for m in mx.received()] == [("b@free.test",), ("a@held.test",)]
    kinds = [e.type for e in seen if e.type.startswith("suspension.")]
    assert kinds == ["suspension.added", "suspension.removed"]


async def test_message_zone_and_source_holds(tmp_path: Path, mx: TestMx) -> None:
    zones = smart_host(mx, local_address="127.0.0.1")
    config = relay_config(tmp_path / "q", zones=zones)
    async with running_relay(config) as (relay, info):
        port_of = info.smtp_ports
        events = relay.bus.subscribe()
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            for scope in ({"zone": "default"}, {"source": "127.0.0.1"}):
                created = (await client.post("/suspend", json=scope)).json()["suspension"]
                message_id = await submit_async(
                    port_of["feeder"], "a@origin.test", ["c@x.test"], MESSAGE
                )
                codes = [r["code"] for r in (await reasons(client, message_id))["c@x.test"]]
                expected = "suspended" if "zone" in scope else "sources_suspended"
                assert codes == [expected]
                await client.delete(f"/suspend/{created['id']}")
                await collect_until(events, lambda evs: len(terminal(evs)) == 1)
                events = relay.bus.subscribe()

            # A message hold (made while the zone is held, so the message cannot have gone):
            # that message waits, the next one goes.
            zone_hold = (await client.post("/suspend", json={"zone": "default"})).json()
            held_id = await submit_async(port_of["feeder"], "a@origin.test", ["e@x.test"], MESSAGE)
            message_hold = (await client.post("/suspend", json={"message": held_id})).json()
            await client.delete(f"/suspend/{zone_hold['suspension']['id']}")
            await submit_async(port_of["feeder"], "a@origin.test", ["f@x.test"], MESSAGE)
            await collect_until(events, lambda evs: delivered_to(evs, "f@x.test"))
            codes = [r["code"] for r in (await reasons(client, held_id))["e@x.test"]]
            assert codes == ["suspended"]
            assert not mx.for_recipient("e@x.test")
            await client.delete(f"/suspend/{message_hold['suspension']['id']}")
            await collect_until(events, lambda evs: delivered_to(evs, "e@x.test"))


async def test_bad_suspension_requests_get_clear_errors(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    bad = [
        ({}, "give a 'zone'"),
        ({"zone": "nowhere"}, "no such zone"),
        ({"zone": "default", "message": "0123456789abcdef"}, "no other scope"),
        ({"message": "not-an-id"}, "invalid message id"),
        ({"domain": "x.test", "until": "2001-01-01T00:00:00Z"}, "future"),
        ({"domain": "x.test", "until": "yesterday"}, "ISO 8601"),
        ({"domain": "x.test", "for": "soon"}, "'for'"),
        ({"domain": "x.test", "for": "1h", "until": 4102444800}, "at most one"),
        ({"domain": 5}, "must be a string"),
        ({"zone": "default", "max_connections": 2}, "slows a 'domain'"),
        ({"domain": "x.test", "max_connections": 0}, "integer from 1 to 10000"),
        ({"domain": "x.test", "max_connections": "2"}, "integer from 1 to 10000"),
    ]
    async with (
        running_relay(config) as (_relay, info),
        httpx.AsyncClient(base_url=api_url(info)) as client,
    ):
        for body, words in bad:
            response = await client.post("/suspend", json=body)
            assert response.status_code == 400, (body, response.text)
            assert words in response.json()["error"], (body, response.json())
        response = await client.delete("/suspend/abcdef")
        assert response.status_code == 404 and "abcdef" in response.json()["error"]
        response = await client.get("/message/0123456789abcdef/why")
        assert response.status_code == 404
        assert (await client.get("/suspend")).json() == {"suspensions": []}


async def zonemta(*argv: str) -> tuple[int, str, str]:
    done = await trio.run_process(
        [sys.executable, "-m", "zonemta", *argv],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_the_cli_suspends_explains_and_resumes(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        url = api_url(info)
        code, out, err = await zonemta(
            "suspend", "--url", url, "--domain", "held.test", "--for", "2h", "--reason", "outage"
        )
        assert code == 0, err
        assert out.startswith("suspended: ") and "domain=held.test" in out and "'outage'" in out
        entry_id = out.split()[1]
        message_id = await submit_async(
            info.smtp_ports["feeder"], "a@origin.test", ["a@held.test"], MESSAGE
        )
        code, out, err = await zonemta("why", "--url", url, message_id)
        assert code == 0, err
        assert f"{message_id}.1 <a@held.test> zone=default QUEUED" in out
        assert f"suspended: held by suspension {entry_id}" in out
        code, out, _ = await zonemta("suspend", "--url", url, "--list", "--json")
        assert [json.loads(line)["id"] for line in out.splitlines()] == [entry_id]
        code, out, err = await zonemta("resume", "--url", url, entry_id)
        assert code == 0 and out.startswith(f"resumed: {entry_id}"), err
        await collect_until(events, lambda evs: delivered_to(evs, "a@held.test"))
        code, _, err = await zonemta("resume", "--url", url, entry_id)
        assert code == 1 and "HTTP 404" in err and entry_id in err
        code, _, err = await zonemta("suspend", "--url", url, "--zone", "nowhere")
        assert code == 1 and "no such zone" in err
        code, out, err = await zonemta(
            "suspend", "--url", url, "--domain", "slow.test", "--max-connections", "2"
        )
        assert code == 0 and "domain=slow.test max_connections=2" in out, err

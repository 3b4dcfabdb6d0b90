"""The ``/events`` websocket followed with trio-websocket while messages flow through to a
test MX; filters, heartbeats, slow subscribers, shutdown, token auth and ``zonemta events``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from tests.support.mx import TestMx
from tests.support.relay import api_url, relay_config, running_relay

Json = dict[str, Any]
FULL_PATH = ["queued", "locked", "resolving", "connecting", "sending"]
REUSED_PATH = ["queued", "locked", "sending"]


def smart_host(mx: TestMx) -> dict[str, Any]:
    return {"default": {"host": "127.0.0.1", "port": mx.port}}


def refuse_nobody(address: str) -> str | None:
    return "550 5.1.1 no such user" if address.startswith("nobody@") else None


@asynccontextmanager
async def subscribed(url: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
    """A websocket to ``/events`` whose subscription is in place (the first message)."""
    async with open_websocket_url(url, **kwargs) as ws:
        hello = json.loads(await ws.get_message())
        assert hello["type"] == "subscribed"
        yield ws


async def read_until(
    ws: WebSocketConnection, done: Callable[[list[Json]], bool], seconds: float = 20
) -> list[Json]:
    seen: list[Json] = []
    with trio.fail_after(seconds):
        while not done(seen):
            message = json.loads(await ws.get_message())
            if message["type"] != "heartbeat":
                seen.append(message)
    return seen


def finished(events: list[Json]) -> list[Json]:
    return [
        e for e in events if e["type"] == "delivery" and e["to_state"] in ("delivered", "bounced")
    ]


def paths(events: list[Json]) -> dict[tuple[str, int], list[str]]:
    found: dict[tuple[str, int], list[str]] = {}
    for event in events:
        if event["type"] == "delivery":
            path = found.setdefault((event["id"], event["seq"]), [event["from_state"]])
            assert path[-1] == event["from_state"], (path, event)
            path.append(event["to_state"])
    return found


async def send(client: httpx.AsyncClient, to: str) -> str:
    response = await client.post("/send", json={"from": "s@origin.test", "to": to, "text": "hi"})
    assert response.status_code == 200, response.text
    message_id: str = response.json()["id"]
    return message_id


async def test_stream_carries_every_transition_of_every_delivery(tmp_path: Path) -> None:
    with TestMx(rcpt_reply=refuse_nobody) as mx:
        config = relay_config(tmp_path / "q", zones=smart_host(mx))
        async with running_relay(config) as (relay, info):
            truth = relay.bus.subscribe()
            async with (
                subscribed(api_url(info, "ws") + "/events") as ws,
                httpx.AsyncClient(base_url=api_url(info)) as client,
            ):
                first = await send(client, "a@one.test, nobody@one.test")
                second = await send(client, "b@two.test")
                ours = {first, second}
                events = await read_until(
                    ws, lambda seen: len([e for e in finished(seen) if e["id"] in ours]) == 3
                )
            truth.close()
            expected = [json.loads(json.dumps(e.to_json())) async for e in truth.receive]
    assert events == expected[: len(events)]
    # The bounce of nobody@ queues a DSN message of its own: look at ours.
    events = [e for e in events if e["id"] in ours]
    queued = [e for e in events if e["type"] == "message.queued"]
    assert [e["id"] for e in queued] == [first, second]
    assert queued[0]["from"] == "s@origin.test" and queued[0]["recipients"] == 2
    assert queued[0]["interface"] == "api"
    routes = paths(events)
    assert set(routes) == {(first, 1), (first, 2), (second, 1)}
    for key, path in routes.items():
        assert path[:-1] in (FULL_PATH, REUSED_PATH), (key, path)
    assert routes[(first, 1)][-1] == "delivered" and routes[(second, 1)][-1] == "delivered"
    assert routes[(first, 2)][-1] == "bounced"
    for event in events:
        if event["type"] != "delivery":
            continue
        assert {"id", "seq", "zone", "recipient", "from_state", "to_state", "time"} <= set(event)
        assert event["zone"] == "default" and isinstance(event["time"], float)
        if event["to_state"] in ("sending", "delivered", "bounced"):
            assert event["mx"] == "127.0.0.1"
    outcome = {(e["id"], e["seq"]): e for e in finished(events)}
    assert outcome[(first, 2)]["response"] == "550 5.1.1 no such user"
    assert outcome[(first, 2)]["recipient"] == "nobody@one.test"
    assert outcome[(first, 1)]["response"].startswith("250")


async def test_filters_by_type_zone_and_id(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    async with running_relay(config) as (_relay, info):
        ws_url = api_url(info, "ws") + "/events"
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            async with (
                subscribed(ws_url + "?type=message") as messages,
                subscribed(ws_url + "?zone=bounces,nope") as other_zones,
                subscribed(ws_url + "?type=delivery&zone=default") as deliveries,
            ):
                first = await send(client, "a@one.test")
                only_messages = await read_until(messages, lambda seen: len(seen) == 1)
                only_deliveries = await read_until(
                    deliveries, lambda seen: len(finished(seen)) == 1
                )
                with trio.move_on_after(0.5):
                    unexpected = await other_zones.get_message()
                    raise AssertionError(f"event for another zone: {unexpected}")
            assert [e["type"] for e in only_messages] == ["message.queued"]
            assert only_messages[0]["id"] == first
            assert {e["type"] for e in only_deliveries} == {"delivery"}

            async with subscribed(ws_url + "?id=not-this-one") as by_id:
                await send(client, "b@one.test")
                with trio.move_on_after(0.5):
                    unexpected = await by_id.get_message()
                    raise AssertionError(f"event for another message: {unexpected}")


async def test_idle_stream_gets_heartbeats(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx), api={"heartbeat": "0.2s"})
    async with (
        running_relay(config) as (_relay, info),
        subscribed(api_url(info, "ws") + "/events") as ws,
    ):
        with trio.fail_after(5):
            beats = [json.loads(await ws.get_message()) for _ in range(2)]
    assert [b["type"] for b in beats] == ["heartbeat", "heartbeat"]
    assert beats[1]["time"] > beats[0]["time"]


async def connect_stalled(port: int, nursery: trio.Nursery) -> WebSocketConnection:
    """A websocket client that reads nothing: a small receive buffer and a one-message
    queue, so the server's writes soon block."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    return await wrap_client_stream(
        nursery, trio.SocketStream(sock), "127.0.0.1", "/events", message_queue_size=1
    )


async def test_slow_subscriber_is_disconnected_while_delivery_goes_on(
    tmp_path: Path, mx: TestMx
) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx), api={"event_buffer": 20})
    async with running_relay(config) as (relay, info):
        assert relay.api is not None
        registry = relay.api.metrics.registry

        def dropped() -> float:
            return registry.get_sample_value("zonemta_event_subscribers_dropped_total") or 0

        async with (
            trio.open_nursery() as nursery,
            httpx.AsyncClient(base_url=api_url(info)) as client,
            subscribed(api_url(info, "ws") + "/events?type=delivery") as fast,
        ):
            slow = await connect_stalled(info.api_port or 0, nursery)
            sent: list[str] = []
            for _batch in range(50):
                for _ in range(20):
                    sent.append(await send(client, f"r{len(sent)}@one.test"))
                await read_until(fast, lambda seen: len(finished(seen)) >= 20)
                if dropped() >= 1:
                    break
            assert dropped() == 1, "the stalled subscriber was never dropped"
            # Reading now, the slow client finds what was written, then the close frame.
            with trio.fail_after(20), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await slow.get_message()
            assert closed.value.reason.code == 1013
            assert "too slow" in (closed.value.reason.reason or "")
            # The fast subscriber is still served.
            last = await send(client, "after@one.test")
            tail = await read_until(fast, lambda seen: any(e["id"] == last for e in finished(seen)))
            assert finished(tail)[-1]["to_state"] == "delivered"
            await slow.aclose()
    assert len(mx.received()) == len(sent) + 1


async def test_shutdown_closes_streams_with_going_away(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    async with (
        running_relay(config) as (relay, info),
        subscribed(api_url(info, "ws") + "/events") as ws,
    ):
        relay.request_stop()
        with trio.fail_after(30), pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.get_message()
        # 1001 "going away" is the relay closing the stream itself; had it waited for
        # hypercorn's graceful timeout, the connection would have been cut (1006), not closed.
        assert closed.value.reason.code == 1001


async def test_websocket_needs_the_token(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx), api={"token": "tok"})
    async with running_relay(config) as (_relay, info):
        url = api_url(info, "ws") + "/events"
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(url):
                pass
        assert rejected.value.status_code == 401
        async with subscribed(url, extra_headers=[(b"authorization", b"Bearer tok")]):
            pass


async def wait_for_subscribers(relay: Any, count: int) -> None:
    with trio.fail_after(20):
        while relay.api.events.open_streams < count:  # noqa: ASYNC110 - another process
            await trio.sleep(0.05)


async def test_events_command_prints_json_and_readable_lines(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    async with running_relay(config) as (relay, info):
        url = api_url(info, "ws") + "/events"
        command = [sys.executable, "-m", "zonemta", "events", "--url", url]
        results: dict[str, subprocess.CompletedProcess[bytes]] = {}

        async def run(name: str, *args: str) -> None:
            results[name] = await trio.run_process(
                [*command, *args], capture_stdout=True, capture_stderr=True, check=False
            )

        async with trio.open_nursery() as nursery, httpx.AsyncClient(base_url=api_url(info)) as c:
            nursery.start_soon(run, "json", "--json", "--type", "delivery", "--count", "5")
            nursery.start_soon(run, "text", "--type", "message", "--count", "1")
            await wait_for_subscribers(relay, 2)
            message_id = await send(c, "cli@one.test")
    json_lines = [json.loads(line) for line in results["json"].stdout.decode().splitlines()]
    assert results["json"].returncode == 0, results["json"].stderr
    assert [e["to_state"] for e in json_lines] == [*FULL_PATH[1:], "delivered"]
    assert {e["id"] for e in json_lines} == {message_id}
    (line,) = results["text"].stdout.decode().splitlines()
    assert message_id in line and "message.queued" in line and "interface=api" in line

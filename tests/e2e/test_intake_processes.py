"""``[intake] processes = N``: SMTP sessions in child processes that inherit the listening
socket; the relay stores, counts clients and publishes. Real clients on loopback, a real
aiosmtpd MX receiving what the relay sends."""

from __future__ import annotations

import os
import signal
import smtplib
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_relay import MESSAGE, smart_host, without_received
from tests.support.mx import TestMx
from tests.support.relay import (
    api_url,
    collect_until,
    relay_config,
    running_relay,
    submit,
    submit_async,
    terminal,
)
from zonemta.app import Relay
from zonemta.conf import ConfigError
from zonemta.engine.bus import Event
from zonemta.store import BodyWriter, MessageRecord, NewDelivery, StoreError
from zonemta.store.sqlite import SqliteStore

TWO = {"processes": 2}


class CommitFailingStore(SqliteStore):
    """A real sqlite store whose commits fail (as with a full disk); what was written of a
    body stays until the caller aborts it."""

    async def commit_message(
        self,
        message: MessageRecord,
        body: BodyWriter,
        deliveries: Sequence[NewDelivery],
    ) -> None:
        raise StoreError("disk full")


def metric(text: str, sample: str, **labels: str) -> float:
    """The sum of ``sample`` over the series with ``labels`` in a /metrics page."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert found, f"no {sample} {labels}"
    return sum(found)


def chunk_rows(store: SqliteStore) -> int:
    with sqlite3.connect(store.path / "queue.sqlite3") as db:
        (count,) = db.execute("SELECT count(*) FROM chunks").fetchone()
    return int(count)


async def read_reply(stream: trio.SocketStream) -> bytes:
    """One whole SMTP reply (multi-line included)."""
    data = b""
    while True:
        with trio.fail_after(10):
            data += await stream.receive_some(4096)
        lines = data.split(b"\r\n")
        if len(lines) > 1 and lines[-2][3:4] == b" ":
            return data


async def open_session_in_data(port: int) -> trio.SocketStream:
    """A client that has sent DATA and part of a message, and waits."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    assert (await read_reply(stream)).startswith(b"220")
    for command in (b"EHLO c.test", b"MAIL FROM:<s@origin.test>", b"RCPT TO:<held@one.test>"):
        await stream.send_all(command + b"\r\n")
        assert (await read_reply(stream))[:1] == b"2"
    await stream.send_all(b"DATA\r\n")
    assert (await read_reply(stream)).startswith(b"354")
    await stream.send_all(b"Subject: half\r\n\r\n" + b"x" * 100_000 + b"\r\n")
    return stream


async def closed_by_peer(stream: trio.SocketStream) -> bool:
    """True once the other end closed (EOF, or a reset: it had unread data)."""
    try:
        return await stream.receive_some(100) == b""
    except trio.BrokenResourceError:
        return True


async def test_children_accept_and_the_relay_stores_and_publishes(
    tmp_path: Path, mx: TestMx
) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx), intake=TWO)
    async with running_relay(config) as (relay, info):
        pids = {process.pid for process in relay.intake_processes}
        assert len(pids) == 2 and os.getpid() not in pids and None not in pids
        events = relay.bus.subscribe()
        port = info.smtp_ports["feeder"]
        ids: list[str] = []

        async def one(n: int) -> None:
            ids.append(await submit_async(port, "s@origin.test", [f"r{n}@one.test"], MESSAGE))

        async with trio.open_nursery() as nursery:
            for n in range(12):
                nursery.start_soon(one, n)
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == 12)
        assert relay.interfaces[0].active == 0  # every client counted out again
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            metrics = (await client.get("/metrics")).text
    assert metric(metrics, "zonemta_message_push_total", result="success") == 12
    assert metric(metrics, "zonemta_delivery_status_total", result="delivered") == 12
    queued = {e.id: e for e in seen if e.type == "message.queued"}
    assert set(queued) == set(ids)  # published by the relay, before the deliveries
    assert all(e.details == {**(e.details or {}), "interface": "feeder"} for e in queued.values())
    assert {e.to_state for e in terminal(seen)} == {"delivered"}
    for n in range(12):
        [got] = mx.for_recipient(f"r{n}@one.test")
        assert without_received(got.content) == MESSAGE
    assert all(process.exit_status == 0 for process in relay.intake_processes)


async def test_a_large_body_crosses_the_pipe_in_acknowledged_pieces(
    tmp_path: Path, mx: TestMx
) -> None:
    body = b"".join(b"line %07d " % i + b"y" * 60 + b"\r\n" for i in range(40_000))  # 3 MB
    message = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
    config = relay_config(
        tmp_path / "q",
        zones=smart_host(mx),
        intake=TWO,
        queue={"path": str(tmp_path / "q"), "body_chunk_size": "4KB"},
    )
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        await submit_async(info.smtp_ports["feeder"], "s@origin.test", ["big@one.test"], message)
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == 1, seconds=60)
    assert terminal(seen)[0].to_state == "delivered"
    [got] = mx.for_recipient("big@one.test")
    assert without_received(got.content) == message


async def test_client_limits_hold_across_the_children(tmp_path: Path, mx: TestMx) -> None:
    feeder = {"host": "127.0.0.1", "port": 0, "max_clients": 3}
    config = relay_config(tmp_path / "q", zones=smart_host(mx), intake=TWO, smtp={"feeder": feeder})
    async with running_relay(config) as (relay, info):
        port = info.smtp_ports["feeder"]
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        for stream in held:
            assert (await read_reply(stream)).startswith(b"220")
        assert relay.interfaces[0].active == 3
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await read_reply(extra)).startswith(b"421 4.7.0 too many connections")
        await extra.aclose()
        for stream in held:
            await stream.aclose()
        with trio.fail_after(10):
            while relay.interfaces[0].active:  # noqa: ASYNC110 - set by the children's frames
                await trio.sleep(0.01)
        await submit_async(port, "s@origin.test", ["after@one.test"], MESSAGE)


async def test_killed_children_lose_nothing_they_answered_250_for(
    tmp_path: Path, mx: TestMx
) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx), intake=TWO)
    async with running_relay(config) as (relay, info):
        port = info.smtp_ports["feeder"]
        events = relay.bus.subscribe()
        before = [
            await submit_async(port, "s@origin.test", [f"b{n}@one.test"], MESSAGE) for n in range(4)
        ]
        held = await open_session_in_data(port)  # a reception in progress in one child
        assert relay.interfaces[0].active == 1
        first_pids = [process.pid for process in relay.intake_processes]
        for pid in first_pids:
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        processes = relay.intake_processes
        with trio.fail_after(20):
            assert await closed_by_peer(held)  # the held session died with its child
            while not all(p.restarts == 1 and p.ready.is_set() for p in processes):  # noqa: ASYNC110
                await trio.sleep(0.02)
        assert relay.interfaces[0].active == 0  # its client was counted out
        after = await submit_async(port, "s@origin.test", ["after@one.test"], MESSAGE)
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == 5)
        assert {p.pid for p in relay.intake_processes}.isdisjoint(first_pids)
        assert await relay.store.remove_orphans() == 0  # the half body was discarded
    delivered = {e.id for e in terminal(seen) if e.to_state == "delivered"}
    assert delivered == {*before, after}
    assert mx.for_recipient("held@one.test") == []


async def test_refusals_in_a_child_are_published_by_the_relay(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx), intake=TWO, headers={"max_hops": 1})
    looped = b"Received: from a\r\nReceived: from b\r\n" + MESSAGE
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        with pytest.raises(AssertionError, match="554"):
            await trio.to_thread.run_sync(
                submit, info.smtp_ports["feeder"], "s@origin.test", ["a@one.test"], looped
            )

        def rejected(seen: list[Event]) -> bool:
            return any(e.type == "message.rejected" for e in seen)

        [event] = [e for e in await collect_until(events, rejected) if e.type == "message.rejected"]
        async with httpx.AsyncClient(base_url=api_url(info)) as client:
            metrics = (await client.get("/metrics")).text
    assert metric(metrics, "zonemta_message_push_total", result="fail") == 1
    assert event.details is not None and event.details["interface"] == "feeder"
    assert "5.4.6" in event.details["reason"]


async def test_intake_plugins_need_the_relays_own_process(tmp_path: Path, mx: TestMx) -> None:
    plugin = {"http-auth": {"url": "http://127.0.0.1:1/check"}}
    feeder = {
        "host": "127.0.0.1",
        "port": 0,
        "authentication": True,
        "allow_insecure_auth": True,
    }
    explicit = relay_config(
        tmp_path / "q", zones=smart_host(mx), intake=TWO, smtp={"feeder": feeder}, plugins=plugin
    )
    with pytest.raises(BaseExceptionGroup) as raised:
        async with trio.open_nursery() as nursery:
            await nursery.start(Relay(explicit, shutdown_grace=1.0).run)
    match = raised.value.subgroup(ConfigError)
    assert match is not None and "config.intake.processes" in repr(match)
    automatic = relay_config(
        tmp_path / "q2",
        zones=smart_host(mx),
        intake={"processes": "auto"},
        smtp={"feeder": feeder},
        plugins=plugin,
    )
    async with running_relay(automatic) as (relay, info):
        assert relay.intake_processes == []  # "auto" keeps the intake here for the plugin

        def greet() -> int:
            with smtplib.SMTP("127.0.0.1", info.smtp_ports["feeder"], timeout=10) as client:
                return client.ehlo()[0]

        assert await trio.to_thread.run_sync(greet) == 250


async def test_a_store_failure_is_a_451_from_the_child_and_keeps_nothing(
    tmp_path: Path, mx: TestMx
) -> None:
    config = relay_config(
        tmp_path / "q",
        zones=smart_host(mx),
        intake=TWO,
        queue={"path": str(tmp_path / "q"), "body_chunk_size": "4KB"},
    )
    store = CommitFailingStore(tmp_path / "q", chunk_size=4096)  # the body below is 5 pieces
    relay = Relay(config, store=store, shutdown_grace=2.0)
    message = b"Subject: x\r\n\r\n" + b"body line\r\n" * 2000
    async with trio.open_nursery() as nursery:
        info = await nursery.start(relay.run)
        events = relay.bus.subscribe()
        with pytest.raises(AssertionError, match="451"):
            await trio.to_thread.run_sync(
                submit, info.smtp_ports["feeder"], "s@origin.test", ["a@one.test"], message
            )

        def rejected(seen: list[Event]) -> bool:
            return any(e.type == "message.rejected" for e in seen)

        seen = await collect_until(events, rejected)
        assert chunk_rows(store) == 0  # the relay removed the pieces it had stored
        assert await store.zone_counts(time.time()) == {}
        relay.request_stop()
    [event] = [e for e in seen if e.type == "message.rejected"]
    assert event.details is not None and "disk full" in event.details["reason"]


async def wait_for_counts(relay: Relay, active: int) -> None:
    """Until the relay has taken in the children's frames (Joined, Leave: no replies)."""
    with trio.fail_after(10):
        while relay.interfaces[0].active != active:  # noqa: ASYNC110 - set by the children's frames
            await trio.sleep(0.01)


async def test_trusted_clients_join_on_held_places_and_max_clients_holds(
    tmp_path: Path, mx: TestMx
) -> None:
    # max_clients 8 over 2 children: the relay holds 8 // (4 * 2) = 1 place for each.
    feeder = {"host": "127.0.0.1", "port": 0, "max_clients": 8}
    config = relay_config(tmp_path / "q", zones=smart_host(mx), intake=TWO, smtp={"feeder": feeder})
    async with running_relay(config) as (relay, info):
        counts = relay.interfaces[0].counts
        assert (counts.active, counts.held) == (0, 2)
        port = info.smtp_ports["feeder"]
        held: list[trio.SocketStream] = []
        while True:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            reply = await read_reply(stream)
            if not reply.startswith(b"220"):
                assert reply.startswith(b"421 4.7.0 too many connections")
                await stream.aclose()
                break
            held.append(stream)
            await wait_for_counts(relay, len(held))
            assert counts.active + counts.held <= 8
        # Never more than max_clients; refused early by at most the places held unused.
        assert 6 <= len(held) <= 8
        assert counts.active == len(held)
        for stream in held:
            await stream.aclose()
        await wait_for_counts(relay, 0)
        assert counts.held == 2  # every place given back
        await submit_async(port, "s@origin.test", ["after@one.test"], MESSAGE)
        await wait_for_counts(relay, 0)
        assert counts.held == 2


async def test_a_killed_child_gives_back_its_held_places(tmp_path: Path, mx: TestMx) -> None:
    feeder = {"host": "127.0.0.1", "port": 0, "max_clients": 8}
    config = relay_config(tmp_path / "q", zones=smart_host(mx), intake=TWO, smtp={"feeder": feeder})
    async with running_relay(config) as (relay, info):
        counts = relay.interfaces[0].counts
        port = info.smtp_ports["feeder"]
        clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        for stream in clients:
            assert (await read_reply(stream)).startswith(b"220")
        await wait_for_counts(relay, 3)
        assert counts.held < 2  # at least one client is on a held place
        first_pids = [process.pid for process in relay.intake_processes]
        for pid in first_pids:
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        with trio.fail_after(20):
            for stream in clients:
                assert await closed_by_peer(stream)
            while not all(p.restarts == 1 and p.ready.is_set() for p in relay.intake_processes):  # noqa: ASYNC110
                await trio.sleep(0.02)
        assert (counts.active, counts.held) == (0, 2)  # the new children hold theirs again
        await submit_async(port, "s@origin.test", ["after@one.test"], MESSAGE)

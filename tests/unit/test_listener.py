"""The SMTP listener driver over in-memory streams, with trio's clock under test control."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from zonemta.conf import config_from_dict
from zonemta.engine.bus import EventBus
from zonemta.engine.ids import QueueIdGenerator
from zonemta.engine.intake import Intake
from zonemta.engine.routing import Router
from zonemta.store import BodyWriter, MessageRecord, NewDelivery, StoreError
from zonemta.store.sqlite import SqliteStore, open_sqlite_store
from zonemta.transport.listener import InterfaceSettings, SmtpInterfaceService
from zonemta.transport.smtp.server import ServerSettings


def settings(**overrides: float) -> InterfaceSettings:
    values = {"idle_timeout": 300.0, "data_timeout": 600.0}
    values.update(overrides)
    return InterfaceSettings(
        name="feeder",
        host="127.0.0.1",
        port=0,
        server=ServerSettings(hostname="relay.test", max_size=1024 * 1024),
        idle_timeout=values["idle_timeout"],
        data_timeout=values["data_timeout"],
        max_clients=10,
        max_header_size=64 * 1024,
    )


def make_intake(store: SqliteStore) -> Intake:
    return Intake(
        store,
        Router(config_from_dict({})),
        EventBus(),
        ids=QueueIdGenerator(time.time),
        clock=time.time,
    )


class Client:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = await self.stream.receive_some(4096)
            if not data:
                raise EOFError(self.buffer)
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    async def reply(self) -> bytes:
        """One whole reply; the last line."""
        while True:
            line = await self.line()
            if line[3:4] != b"-":
                return line

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with open_sqlite_store(tmp_path / "q") as opened:
        yield opened


async def serve_one(nursery: trio.Nursery, service: SmtpInterfaceService) -> Client:
    client_side, server_side = trio.testing.memory_stream_pair()
    nursery.start_soon(service._handle, server_side)
    client = Client(client_side)
    assert (await client.reply()).startswith(b"220 relay.test")
    return client


async def test_idle_client_gets_421_after_the_idle_timeout(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    service = SmtpInterfaceService(settings(idle_timeout=30), make_intake(store))
    async with trio.open_nursery() as nursery:
        client = await serve_one(nursery, service)
        start = trio.current_time()
        assert await client.reply() == b"421 4.4.2 timeout exceeded, closing connection"
        assert trio.current_time() - start == pytest.approx(30)
        assert await client.stream.receive_some(10) == b""


async def test_a_slow_message_is_cut_at_the_data_timeout(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    service = SmtpInterfaceService(settings(idle_timeout=60, data_timeout=90), make_intake(store))
    async with trio.open_nursery() as nursery:
        client = await serve_one(nursery, service)
        await client.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        for _ in range(3):
            await client.reply()
        assert (await client.reply()).startswith(b"354")
        for _ in range(3):  # every 40 s a line: never idle 60 s, but 90 s in all
            await client.send(b"Subject: slow\r\n")
            await trio.sleep(40)
        assert (await client.reply()).startswith(b"421")
    assert await store.remove_orphans() == 0  # the partial body was discarded


async def test_shutdown_sends_421_to_idle_sessions(store: SqliteStore) -> None:
    service = SmtpInterfaceService(settings(), make_intake(store))
    async with trio.open_nursery() as nursery:
        client = await serve_one(nursery, service)
        await client.send(b"EHLO c\r\n")
        await client.reply()
        await service.stop(grace=5)
        assert (await client.reply()).startswith(b"421 4.3.2")


async def test_pipelined_transaction_is_stored_before_250(store: SqliteStore) -> None:
    service = SmtpInterfaceService(settings(), make_intake(store))
    async with trio.open_nursery() as nursery:
        client = await serve_one(nursery, service)
        await client.send(
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nRCPT TO:<y@e.test>\r\n"
            b"DATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n"
        )
        replies = [await client.reply() for _ in range(7)]
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"250", b"354", b"250", b"221"]
    queue_id = replies[5].rsplit(b" ", 1)[-1].decode()
    message = await store.get_message(queue_id)
    assert message is not None
    assert message.headers == b"Subject: hi\r\n"
    body = b"".join([chunk async for chunk in store.read_body(queue_id)])
    assert body == b".dot\r\n"
    assert [d.recipient for d in await store.deliveries_of(queue_id)] == ["x@d.test", "y@e.test"]


class FailingStore(SqliteStore):
    """A real sqlite store whose commit fails, as a full disk would make it."""

    async def commit_message(
        self,
        message: MessageRecord,
        body: BodyWriter,
        deliveries: list[NewDelivery],  # type: ignore[override]
    ) -> None:
        await body.abort()
        raise StoreError("disk full")


async def test_store_failure_answers_451_and_keeps_nothing(tmp_path: Path) -> None:
    store = FailingStore(tmp_path / "q")
    await store.open()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        service = SmtpInterfaceService(settings(), make_intake(store))
        client = await serve_one(nursery, service)
        await client.send(
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nDATA\r\n"
            b"Subject: x\r\n\r\nbody\r\n.\r\n"
        )
        replies = [await client.reply() for _ in range(5)]
        assert replies[-1].startswith(b"451 4.3.0")
        # The session goes on: the client may try again.
        await client.send(b"NOOP\r\n")
        assert (await client.reply()).startswith(b"250")
        assert await store.remove_orphans() == 0
        assert await store.zone_counts(time.time()) == {}
        nursery.cancel_scope.cancel()
    await store.aclose()

"""The SMTP listener driver over in-memory streams, with trio's clock under test control."""

from __future__ import annotations

import base64
import re
import sqlite3
import ssl
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trustme

from zonemta.conf import ConfigError, config_from_dict
from zonemta.engine.bus import EventBus
from zonemta.engine.hooks import SessionInfo
from zonemta.engine.ids import QueueIdGenerator
from zonemta.engine.intake.auth import FailureThrottle, hash_password
from zonemta.engine.intake.reception import Intake
from zonemta.engine.intake.routing import Router
from zonemta.inbound.interfaces import interface_settings
from zonemta.inbound.listener import Authenticator, InterfaceSettings, SmtpInterfaceService
from zonemta.store import BodyWriter, MessageRecord, NewDelivery, StoreError
from zonemta.store.sqlite import SqliteStore, open_sqlite_store
from zonemta.transport.smtp.reply import Reply
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


class _PeerSocket:
    def __init__(self, address: str) -> None:
        self.address = address

    def getpeername(self) -> tuple[str, int]:
        return (self.address, 40000)


class AddressedStream(trio.abc.Stream):
    """A memory stream that says which address it comes from, as a socket stream does."""

    def __init__(self, stream: trio.abc.Stream, address: str) -> None:
        self.stream = stream
        self.socket = _PeerSocket(address)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


def connect(
    nursery: trio.Nursery, service: SmtpInterfaceService, address: str = "127.0.0.1"
) -> Client:
    """A client connected to ``service`` from ``address``, over memory streams."""
    client_side, server_side = trio.testing.memory_stream_pair()
    nursery.start_soon(service._handle, AddressedStream(server_side, address))
    return Client(client_side)


async def serve_one(
    nursery: trio.Nursery, service: SmtpInterfaceService, address: str = "127.0.0.1"
) -> Client:
    client = connect(nursery, service, address)
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
    """A real sqlite store whose commit fails, as a full disk would make it. It leaves the
    body's chunks where they are: cleaning up is the intake's job, not the failing store's."""

    async def commit_message(
        self,
        message: MessageRecord,
        body: BodyWriter,
        deliveries: list[NewDelivery],  # type: ignore[override]
    ) -> None:
        raise StoreError("disk full")


def chunk_rows(store: SqliteStore) -> int:
    with sqlite3.connect(store.path / "queue.sqlite3") as db:
        (count,) = db.execute("SELECT count(*) FROM chunks").fetchone()
    return int(count)


async def test_store_failure_answers_451_and_keeps_nothing(tmp_path: Path) -> None:
    store = FailingStore(tmp_path / "q", chunk_size=1024)  # the body below is 5 chunks
    await store.open()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        intake = make_intake(store)
        events = intake.bus.subscribe()
        service = SmtpInterfaceService(settings(), intake)
        client = await serve_one(nursery, service)
        await client.send(
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nDATA\r\n"
            b"Subject: x\r\n\r\n" + b"body line\r\n" * 500 + b".\r\n"
        )
        replies = [await client.reply() for _ in range(5)]
        assert replies[-1].startswith(b"451 4.3.0")
        assert chunk_rows(store) == 0  # the intake removed the chunks it had written
        rejected = events.receive.receive_nowait()
        assert rejected.type == "message.rejected" and "disk full" in rejected.to_json()["reason"]
        # The session goes on: the client may try again.
        await client.send(b"NOOP\r\n")
        assert (await client.reply()).startswith(b"250")
        assert await store.remove_orphans() == 0
        assert await store.zone_counts(time.time()) == {}
        nursery.cancel_scope.cancel()
    await store.aclose()


# ---------------------------------------------------------------- submission security


def secure_settings(
    *,
    tls: ssl.SSLContext | None = None,
    implicit: bool = False,
    authenticator: Authenticator | None = None,
    server: dict[str, Any] | None = None,
    **fields: Any,
) -> InterfaceSettings:
    base = settings()
    server_fields: dict[str, Any] = {
        "starttls_available": tls is not None and not implicit,
        "implicit_tls": implicit,
        "auth_available": authenticator is not None,
        **(server or {}),
    }
    server_settings = attrs.evolve(base.server, **server_fields)
    return attrs.evolve(
        base, server=server_settings, tls_context=tls, authenticator=authenticator, **fields
    )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    ca.issue_cert("relay.test").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class Users:
    """An authenticator with one user, alice:wonderland, and the same throttling as the
    real one (engine/intake/auth.py) without argon2."""

    def __init__(self) -> None:
        self.throttle = FailureThrottle(1.0)
        self.calls: list[tuple[str, str]] = []

    async def authenticate(self, client_address: str, username: str, password: str) -> bool:
        self.calls.append((client_address, username))
        if (username, password) == ("alice", "wonderland"):
            return True
        await trio.sleep(self.throttle.failure(client_address, trio.current_time()))
        return False


def plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n"


async def tls_client(client: Client, context: ssl.SSLContext) -> Client:
    stream = trio.SSLStream(client.stream, context, server_hostname="relay.test")
    await stream.do_handshake()
    return Client(stream)


async def ehlo(client: Client) -> list[bytes]:
    await client.send(b"EHLO c\r\n")
    lines = []
    while True:
        line = await client.line()
        lines.append(line[4:])
        if line[3:4] == b" ":
            return lines


async def test_relay_control_refuses_unlisted_clients_at_rcpt(store: SqliteStore) -> None:
    service = SmtpInterfaceService(secure_settings(), make_intake(store))
    async with trio.open_nursery() as nursery:
        outsider = await serve_one(nursery, service, "192.0.2.5")
        await outsider.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nDATA\r\n")
        replies = [await outsider.reply() for _ in range(4)]
        assert replies[1:] == [
            b"250 2.1.0 sender ok",
            b"554 5.7.1 relay access denied",
            b"554 5.5.1 Error: no valid recipients",
        ]
        local = await serve_one(nursery, service, "::ffff:127.0.0.1")  # IPv4-mapped loopback
        await local.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\n")
        assert [(await local.reply())[:3] for _ in range(3)] == [b"250"] * 3
        nursery.cancel_scope.cancel()


async def test_starttls_then_auth_then_relay(
    store: SqliteStore, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    users = Users()
    service = SmtpInterfaceService(
        secure_settings(tls=server_tls, authenticator=users), make_intake(store)
    )
    async with trio.open_nursery() as nursery:
        client = await serve_one(nursery, service, "192.0.2.5")
        offered = await ehlo(client)
        assert b"STARTTLS" in offered and b"AUTH PLAIN LOGIN" not in offered
        await client.send(plain("alice", "wonderland"))
        assert (await client.reply()).startswith(b"538 5.7.11")  # never before TLS
        await client.send(b"STARTTLS\r\n")
        assert await client.reply() == b"220 2.0.0 Ready to start TLS"
        client = await tls_client(client, client_tls)
        offered = await ehlo(client)
        assert b"STARTTLS" not in offered and b"AUTH PLAIN LOGIN" in offered
        await client.send(plain("alice", "wonderland"))
        assert await client.reply() == b"235 2.7.0 Authentication successful"
        await client.send(
            b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nDATA\r\nSubject: s\r\n\r\nhi\r\n.\r\n"
        )
        replies = [await client.reply() for _ in range(4)]
        assert replies[-1].startswith(b"250 2.0.0 Message queued as ")
        nursery.cancel_scope.cancel()
    message = await store.get_message(replies[-1].rsplit(b" ", 1)[-1].decode())
    assert message is not None
    assert (message.meta.user, message.meta.transtype) == ("alice", "ESMTPSA")
    assert message.meta.client_address == "192.0.2.5"
    assert users.calls == [("192.0.2.5", "alice")]


async def test_implicit_tls_and_failed_auth_gets_535_after_a_growing_delay(
    store: SqliteStore,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    autojump_clock: trio.testing.MockClock,
) -> None:
    service = SmtpInterfaceService(
        secure_settings(tls=server_tls, implicit=True, authenticator=Users()), make_intake(store)
    )
    async with trio.open_nursery() as nursery:
        client = await tls_client(connect(nursery, service, "192.0.2.5"), client_tls)
        assert (await client.reply()).startswith(b"220 relay.test")
        assert b"AUTH PLAIN LOGIN" in await ehlo(client)
        waits = []
        for _ in range(3):
            start = trio.current_time()
            await client.send(plain("alice", "guess"))
            assert await client.reply() == b"535 5.7.8 Authentication credentials invalid"
            waits.append(trio.current_time() - start)
        assert waits == pytest.approx([1.0, 2.0, 4.0])
        await client.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\n")
        assert (await client.reply()).startswith(b"250")
        assert await client.reply() == b"554 5.7.1 relay access denied"
        nursery.cancel_scope.cancel()


async def test_failed_starttls_handshake_closes_the_connection(
    store: SqliteStore, server_tls: ssl.SSLContext, autojump_clock: trio.testing.MockClock
) -> None:
    service = SmtpInterfaceService(secure_settings(tls=server_tls), make_intake(store))
    async with trio.open_nursery() as nursery:
        client = await serve_one(nursery, service)
        await ehlo(client)
        await client.send(b"STARTTLS\r\n")
        assert (await client.reply()).startswith(b"220")
        await client.send(b"this is not a TLS ClientHello\r\n" * 4)
        with pytest.raises(EOFError):
            await client.line()
    assert service.active == 0 and service.per_address == {}


async def test_plaintext_injected_after_starttls_is_refused_and_nothing_queued(
    store: SqliteStore, server_tls: ssl.SSLContext
) -> None:
    service = SmtpInterfaceService(secure_settings(tls=server_tls), make_intake(store))
    async with trio.open_nursery() as nursery:
        client = await serve_one(nursery, service)
        await ehlo(client)
        await client.send(
            b"STARTTLS\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nDATA\r\nx\r\n.\r\n"
        )
        assert await client.reply() == b"554 5.5.1 Error: command pipelining after STARTTLS"
        with pytest.raises(EOFError):
            await client.line()
    assert await store.zone_counts(time.time()) == {}


async def test_per_address_limit_spares_relay_networks(store: SqliteStore) -> None:
    service = SmtpInterfaceService(secure_settings(max_clients_per_address=2), make_intake(store))
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            await serve_one(nursery, service, "192.0.2.5")
        third = connect(nursery, service, "192.0.2.5")
        assert await third.reply() == (
            b"421 4.7.0 too many connections from your address, try again later"
        )
        await serve_one(nursery, service, "192.0.2.6")
        for _ in range(3):
            await serve_one(nursery, service, "127.0.0.1")  # relay network: not limited
        assert service.per_address == {"192.0.2.5": 2, "192.0.2.6": 1, "127.0.0.1": 3}
        nursery.cancel_scope.cancel()


async def test_max_clients_answers_421(store: SqliteStore) -> None:
    service = SmtpInterfaceService(attrs.evolve(settings(), max_clients=1), make_intake(store))
    async with trio.open_nursery() as nursery:
        await serve_one(nursery, service)
        second = connect(nursery, service)
        assert await second.reply() == b"421 4.7.0 too many connections, try again later"
        nursery.cancel_scope.cancel()


async def test_error_cap_closes_a_session_with_421(store: SqliteStore) -> None:
    service = SmtpInterfaceService(secure_settings(server={"max_errors": 3}), make_intake(store))
    async with trio.open_nursery() as nursery:
        client = await serve_one(nursery, service, "192.0.2.5")
        await client.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n" + b"RCPT TO:<x@d.test>\r\n" * 4)
        replies = [await client.reply() for _ in range(6)]
        assert replies[2:] == [b"554 5.7.1 relay access denied"] * 3 + [
            b"421 4.7.0 Too many errors, closing connection"
        ]
        with pytest.raises(EOFError):
            await client.line()


async def test_proxy_protocol_gives_the_real_client_address(store: SqliteStore) -> None:
    service = SmtpInterfaceService(secure_settings(proxy_protocol=True), make_intake(store))
    async with trio.open_nursery() as nursery:
        proxied = connect(nursery, service, "127.0.0.1")
        await proxied.send(b"PROXY TCP4 192.0.2.9 127.0.0.1 4000 25\r\n")
        assert (await proxied.reply()).startswith(b"220")
        await proxied.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\n")
        assert (await proxied.reply(), await proxied.reply(), await proxied.reply())[2] == (
            b"554 5.7.1 relay access denied"
        )
        local = connect(nursery, service, "127.0.0.1")  # v2 LOCAL: the proxy's own address
        await local.send(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00EHLO c\r\n")
        assert (await local.reply()).startswith(b"220")
        assert (await local.reply()).startswith(b"250")
        for peer, first_bytes in [("192.0.2.1", b"PROXY UNKNOWN\r\n"), ("127.0.0.1", b"EHLO")]:
            refused = connect(nursery, service, peer)  # not a proxy / no header
            await refused.send(first_bytes + b"\r\n")
            with pytest.raises(EOFError):
                await refused.line()
        assert service.per_address == {"192.0.2.9": 1, "127.0.0.1": 1}
        nursery.cancel_scope.cancel()


async def test_silent_tls_and_proxy_clients_are_cut_at_the_handshake_timeout(
    store: SqliteStore,
    server_tls: ssl.SSLContext,
    autojump_clock: trio.testing.MockClock,
) -> None:
    # idle_timeout is 300 s; a client that never finishes its TLS handshake, sends no PROXY
    # header or stalls after STARTTLS is closed after handshake_timeout (30 s) instead.
    implicit = SmtpInterfaceService(
        secure_settings(tls=server_tls, implicit=True), make_intake(store)
    )
    proxied = SmtpInterfaceService(secure_settings(proxy_protocol=True), make_intake(store))
    starttls = SmtpInterfaceService(secure_settings(tls=server_tls), make_intake(store))
    async with trio.open_nursery() as nursery:
        for service in (implicit, proxied):
            start = trio.current_time()
            silent = connect(nursery, service, "127.0.0.1")
            with pytest.raises(EOFError):
                await silent.line()
            assert trio.current_time() - start == pytest.approx(30.0)
        client = await serve_one(nursery, starttls)
        await ehlo(client)
        await client.send(b"STARTTLS\r\n")
        assert (await client.reply()).startswith(b"220")
        start = trio.current_time()
        with pytest.raises(EOFError):
            await client.line()  # no ClientHello ever comes
        assert trio.current_time() - start == pytest.approx(30.0)
        nursery.cancel_scope.cancel()


def test_interface_settings_need_their_tls_context() -> None:
    with pytest.raises(ValueError, match="context"):
        secure_settings(server={"starttls_available": True})


async def test_auth_without_users_file_or_deciding_plugin_fails(store: SqliteStore) -> None:
    # With no users file AUTH is the plugins' to answer; when none does, it fails.
    service = SmtpInterfaceService(
        secure_settings(server={"auth_available": True, "allow_insecure_auth": True}),
        make_intake(store),
    )
    async with trio.open_nursery() as nursery:
        client = await serve_one(nursery, service)
        assert b"AUTH PLAIN LOGIN" in await ehlo(client)
        await client.send(plain("alice", "wonderland"))
        assert (await client.reply()).startswith(b"535")
        nursery.cancel_scope.cancel()


async def test_auth_failures_decided_by_plugins_are_throttled_like_ours(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    # No users file: a plugin refuses wrong passwords (535), accepts the right one; nobody
    # answers for "bob". Every refusal from one address earns the growing delay.
    async def decide(session: SessionInfo, username: str, password: str) -> Reply | None:
        if username == "bob":
            return None
        if password == "right":
            return Reply(235, ("Authentication successful",), "2.7.0")
        return Reply(535, ("Authentication credentials invalid",), "5.7.8")

    intake = make_intake(store)
    intake.hooks.auth.append(decide)
    throttle = FailureThrottle(1.0)
    service = SmtpInterfaceService(
        secure_settings(
            server={"auth_available": True, "allow_insecure_auth": True}, auth_throttle=throttle
        ),
        intake,
    )
    async with trio.open_nursery() as nursery:
        client = await serve_one(nursery, service, "192.0.2.7")
        await ehlo(client)
        waits = []
        for user in ("alice", "alice", "bob"):
            start = trio.current_time()
            await client.send(plain(user, "guess"))
            assert (await client.reply()).startswith(b"535 5.7.8")
            waits.append(trio.current_time() - start)
        assert waits == pytest.approx([1.0, 2.0, 4.0])
        await client.send(plain("alice", "right"))
        assert (await client.reply()).startswith(b"235")
        assert throttle.failures("192.0.2.7", trio.current_time()) == 0  # forgiven
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- configuration rules


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"host": "0.0.0.0"}, "'host' '0.0.0.0' is not a loopback address"),
        ({"host": "mail.example"}, "is not a loopback address"),
        ({"host": "::", "relay_networks": ["::1/128"]}, "is not a loopback address"),
        ({"relay_networks": ["0.0.0.0/0"]}, "covers every address"),
        ({"proxy_networks": ["::/0"]}, "covers every address"),
        ({"relay_networks": ["10.0.0.1/8"]}, "host bits set"),
        ({"relay_networks": ["nonsense"]}, "bad network 'nonsense'"),
        ({"starttls": True, "cert": "c.pem"}, "'starttls' needs 'cert' and 'key'"),
        ({"secure": True, "starttls": True}, "exclude each other"),
        ({"authentication": True}, "'authentication' needs 'users_file' or an enabled plugin"),
        ({"max_errors": -1}, "max_errors"),
    ],
)
def test_config_refuses_unsafe_interfaces(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict({"smtp": {"public": table}})


@pytest.mark.parametrize(
    "table",
    [
        {"host": "0.0.0.0", "relay_networks": ["192.0.2.0/24"]},
        {"host": "::", "authentication": True, "users_file": "users"},
        {"host": "localhost"},
        {"host": "127.0.0.2", "relay_networks": []},
    ],
)
def test_config_accepts_safe_interfaces(table: dict[str, Any]) -> None:
    interface = config_from_dict({"smtp": {"public": table}}).smtp["public"]
    for key, value in table.items():  # kept as given, not replaced by a safer default
        got = getattr(interface, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


def test_interface_settings_load_cert_and_users(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("relay.test")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    (tmp_path / "users").write_text("alice:" + hash_password("pw") + "\n")
    table = {
        "host": "0.0.0.0",
        "secure": True,
        "cert": str(tmp_path / "cert.pem"),
        "key": str(tmp_path / "key.pem"),
        "authentication": True,
        "users_file": str(tmp_path / "users"),
        "relay_networks": ["192.0.2.0/24"],
        "proxy_protocol": True,
        "max_errors": 7,
        "handshake_timeout": "10s",
    }
    built = interface_settings(config_from_dict({"smtp": {"s": table}}), "s")
    assert built.tls_context is not None
    assert built.tls_context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert built.server.implicit_tls and built.server.auth_available
    assert not built.server.starttls_available and built.server.max_errors == 7
    assert built.handshake_timeout == 10.0
    assert built.authenticator is not None and built.proxy_protocol
    assert built.auth_throttle is getattr(built.authenticator, "throttle", None)
    assert [str(n) for n in built.relay_networks] == ["192.0.2.0/24"]
    table["key"] = str(tmp_path / "cert.pem")  # a certificate is not its key
    with pytest.raises(ConfigError, match=r"config.smtp.s.cert/key: cannot load"):
        interface_settings(config_from_dict({"smtp": {"s": table}}), "s")
    table["cert"] = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"config.smtp.s.cert: file not found"):
        interface_settings(config_from_dict({"smtp": {"s": table}}), "s")


def test_the_submission_example_in_the_docs_loads() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    text = docs.read_text(encoding="utf-8")
    example = text.split("A submission port for users", 1)[1].split("```\n", 2)[1]
    iface = config_from_dict(tomllib.loads(example)).smtp["submission"]
    assert (iface.host, iface.starttls, iface.authentication) == ("0.0.0.0", True, True)


async def test_refused_and_abandoned_receptions_are_published(store: SqliteStore) -> None:
    intake = make_intake(store)
    events = intake.bus.subscribe()
    service = SmtpInterfaceService(settings(), intake)
    async with trio.open_nursery() as nursery:
        client = await serve_one(nursery, service)
        too_big = b"Subject: x\r\n\r\n" + b"y" * (1024 * 1024 + 10) + b"\r\n.\r\n"
        await client.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@d.test>\r\nDATA\r\n")
        for _ in range(3):
            await client.reply()
        assert (await client.reply()).startswith(b"354")
        await client.send(too_big)
        assert (await client.reply()).startswith(b"552")
        nursery.cancel_scope.cancel()
    kinds = [events.receive.receive_nowait().type for _ in range(1)]
    assert kinds == ["message.dropped"]

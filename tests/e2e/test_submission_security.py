"""Submission security end to end on loopback, with smtplib (an independent client) and raw
sockets: STARTTLS and implicit TLS with a trustme CA, AUTH PLAIN and LOGIN, relay control,
STARTTLS injection, abuse limits, SMTP smuggling, PROXY protocol and random bytes."""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import argon2
import pytest
import trio
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.mx import TestMx
from tests.support.relay import collect_until, relay_config, running_relay, terminal
from zonemta.app import Relay
from zonemta.engine.intake.auth import hash_password

FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
MESSAGE = b"From: a@origin.test\r\nSubject: hello\r\n\r\nbody\r\n"
OUTSIDER = ("127.0.0.2", 0)  # a client address outside relay_networks = ["127.0.0.1/32"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def secure_files(tmp_path: Path, ca: trustme.CA) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    (tmp_path / "users").write_text(f"alice:{hash_password('wonderland', FAST)}\n")
    return {
        "cert": str(tmp_path / "cert.pem"),
        "key": str(tmp_path / "key.pem"),
        "users_file": str(tmp_path / "users"),
    }


def feeder(**table: Any) -> dict[str, Any]:
    return {"feeder": {"host": "127.0.0.1", "port": 0, "relay_networks": ["127.0.0.1/32"], **table}}


def smart_host(mx: TestMx) -> dict[str, Any]:
    return {"default": {"host": "127.0.0.1", "port": mx.port}}


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(function, *args)


def header_block(content: bytes) -> bytes:
    return content.split(b"\r\n\r\n", 1)[0]


# ---------------------------------------------------------------- TLS and AUTH


async def test_starttls_then_auth_plain_relays_and_records_the_user(
    tmp_path: Path, mx: TestMx, secure_files: dict[str, str], client_tls: ssl.SSLContext
) -> None:
    smtp = feeder(starttls=True, authentication=True, **secure_files)
    config = relay_config(tmp_path / "q", smtp=smtp, zones=smart_host(mx))

    def session(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, source_address=OUTSIDER, timeout=30) as client:
            client.ehlo("client.test")
            assert client.has_extn("starttls") and not client.has_extn("auth")
            with pytest.raises(smtplib.SMTPNotSupportedError):
                client.login("alice", "wonderland")
            code, _ = client.docmd("AUTH", "PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=")
            assert code == 538  # AUTH before TLS refused, even when forced
            client.starttls(context=client_tls)
            client.ehlo("client.test")
            assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
            assert not client.has_extn("starttls")
            assert client.login("alice", "wonderland")[0] == 235  # smtplib picks PLAIN
            client.sendmail("a@origin.test", ["r@one.test"], MESSAGE)

    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        await in_thread(session, info.smtp_ports["feeder"])
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == 1)
    assert terminal(seen)[0].to_state == "delivered"
    received = header_block(mx.for_recipient("r@one.test")[0].content)
    assert b"(Authenticated sender: alice)" in received
    assert b"with ESMTPSA id" in received
    assert b"([127.0.0.2])" in received


async def test_implicit_tls_with_auth_login_and_wrong_passwords(
    tmp_path: Path, mx: TestMx, secure_files: dict[str, str], client_tls: ssl.SSLContext
) -> None:
    smtp = feeder(secure=True, authentication=True, auth_failure_delay="50ms", **secure_files)
    config = relay_config(tmp_path / "q", smtp=smtp, zones=smart_host(mx))

    def session(port: int) -> list[int]:
        codes = []
        with smtplib.SMTP_SSL(
            "127.0.0.1", port, source_address=OUTSIDER, context=client_tls, timeout=30
        ) as client:
            client.ehlo("client.test")
            assert client.has_extn("auth") and not client.has_extn("starttls")
            for password in ("nope", "wonderland"):
                client.user, client.password = "alice", password
                try:
                    codes.append(client.auth("LOGIN", client.auth_login)[0])
                except smtplib.SMTPAuthenticationError as exc:
                    codes.append(exc.smtp_code)
            client.sendmail("a@origin.test", ["s@one.test"], MESSAGE)
        return codes

    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        assert await in_thread(session, info.smtp_ports["feeder"]) == [535, 235]
        await collect_until(events, lambda ev: len(terminal(ev)) == 1)
    assert b"with ESMTPSA id" in header_block(mx.for_recipient("s@one.test")[0].content)


async def test_failed_implicit_tls_handshake_closes_the_socket(
    tmp_path: Path, secure_files: dict[str, str]
) -> None:
    config = relay_config(tmp_path / "q", smtp=feeder(secure=True, **secure_files))

    def garbage(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"EHLO plaintext.test\r\n")
            return sock.recv(100)

    async with running_relay(config) as (_relay, info):
        assert await in_thread(garbage, info.smtp_ports["feeder"]) == b""


# ---------------------------------------------------------------- relay control, injection


async def test_relay_from_an_unlisted_address_is_refused_at_rcpt(tmp_path: Path) -> None:
    config = relay_config(tmp_path / "q", smtp=feeder())

    def rcpt(port: int, source: tuple[str, int]) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, source_address=source, timeout=30) as client:
            client.ehlo("client.test")
            assert client.mail("a@origin.test")[0] == 250
            return client.rcpt("r@one.test")

    async with running_relay(config) as (_relay, info):
        port = info.smtp_ports["feeder"]
        assert await in_thread(rcpt, port, OUTSIDER) == (554, b"5.7.1 relay access denied")
        assert (await in_thread(rcpt, port, ("127.0.0.1", 0)))[0] == 250


def raw_session(port: int, *chunks: bytes, source: str = "127.0.0.1") -> bytes:
    """Send each chunk (one send each) and return everything the server said until it
    closed the connection, or until we close ours after the last chunk."""
    with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as s:
        s.recv(1000)  # greeting
        for chunk in chunks:
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        received = b""
        while data := s.recv(65536):
            received += data
        return received


async def test_plaintext_injected_after_starttls_is_refused(
    tmp_path: Path, secure_files: dict[str, str]
) -> None:
    config = relay_config(tmp_path / "q", smtp=feeder(starttls=True, **secure_files))
    async with running_relay(config) as (relay, info):
        said = await in_thread(
            raw_session,
            info.smtp_ports["feeder"],
            b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@origin.test>\r\nRCPT TO:<r@one.test>\r\n",
        )
        assert said.endswith(b"554 5.5.1 Error: command pipelining after STARTTLS\r\n")
        assert b"220 2.0.0" not in said
        assert await relay.store.zone_counts(time.time()) == {}


# ---------------------------------------------------------------- abuse limits


async def test_each_limit_answers_and_nothing_half_received_is_queued(tmp_path: Path) -> None:
    smtp = feeder(
        max_clients=2,
        max_clients_per_address=1,
        max_errors=3,
        max_line_length=512,
        max_header_size="1KB",
        max_size=4096,
    )
    config = relay_config(tmp_path / "q", smtp=smtp)
    start = b"EHLO c\r\nMAIL FROM:<a@origin.test>\r\nRCPT TO:<r@one.test>\r\nDATA\r\n"

    def connections(port: int) -> tuple[bytes, bytes]:
        # Each greeting is read before the next connection opens: with intake processes
        # two connections opened together may be admitted in either order.
        def connect(source: str) -> tuple[socket.socket, bytes]:
            client = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
            return client, client.recv(200)

        first, greeting = connect("127.0.0.2")
        second, per_address = connect("127.0.0.2")
        other, other_greeting = connect("127.0.0.3")
        third, full = connect("127.0.0.1")
        with first, second, other, third:
            assert greeting.startswith(b"220") and other_greeting.startswith(b"220")
            return per_address, full

    async with running_relay(config) as (relay, info):
        port = info.smtp_ports["feeder"]
        per_address, full = await in_thread(connections, port)
        assert per_address.startswith(b"421 4.7.0 too many connections from your address")
        assert full.startswith(b"421 4.7.0 too many connections,")
        # The relay counts a client out when its session has seen the close: with intake
        # processes that report arrives asynchronously, so wait for it before going on.
        with trio.fail_after(10):
            while relay.interfaces[0].active:  # noqa: ASYNC110 - counted from other processes
                await trio.sleep(0.01)
        said = await in_thread(raw_session, port, b"EHLO c\r\nX\r\nY\r\nZ\r\nNOOP\r\n")
        assert said.endswith(b"421 4.7.0 Too many errors, closing connection\r\n")
        said = await in_thread(raw_session, port, b"NOOP " + b"x" * 600 + b"\r\nQUIT\r\n")
        assert said == b"500 5.5.2 Error: line too long\r\n221 2.0.0 Bye\r\n"
        big_header = b"X-Big: " + b"y" * 2000 + b"\r\n\r\nbody\r\n.\r\n"
        said = await in_thread(raw_session, port, start, big_header)
        assert said.endswith(b"552 5.3.4 Message header block too large\r\n")
        said = await in_thread(
            raw_session, port, start, b"S: x\r\n\r\n" + b"z" * 5000 + b"\r\n.\r\n"
        )
        assert said.endswith(b"552 5.3.4 Message size exceeds fixed limit\r\n")
        # A client that goes away in the middle of DATA leaves nothing behind.
        await in_thread(raw_session, port, start, b"Subject: cut\r\n\r\nhalf a messa")
        assert await relay.store.zone_counts(time.time()) == {}
        assert await relay.store.remove_orphans() == 0


# ---------------------------------------------------------------- SMTP smuggling


SMUGGLING_VECTORS = [b"\n.\n", b"\n.\r\n", b"\r.\n", b"\r\n.\n", b"\r.\r\n"]


async def test_smuggling_vectors_never_end_the_data(tmp_path: Path, mx: TestMx) -> None:
    config = relay_config(tmp_path / "q", zones=smart_host(mx))
    # What a smuggling client hopes is a second message after a fake end of data; the real
    # end of data closes it, so all of it must arrive as the content of the first message.
    smuggled = (
        b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@one.test>\r\nDATA\r\n"
        b"From: ceo@origin.test\r\nSubject: smuggled\r\n\r\nsend money\r\n.\r\n"
    )
    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        port = info.smtp_ports["feeder"]
        for index, vector in enumerate(SMUGGLING_VECTORS):
            envelope = (
                f"EHLO c\r\nMAIL FROM:<a@origin.test>\r\nRCPT TO:<r{index}@one.test>\r\nDATA\r\n"
            ).encode()
            said = await in_thread(
                raw_session,
                port,
                envelope,
                b"Subject: innocent\r\n\r\nhello" + vector + smuggled + b"QUIT\r\n",
            )
            replies = said.split(b"\r\n")
            assert sum(r.startswith(b"250 2.0.0 Message queued") for r in replies) == 1, said
            assert sum(r.startswith(b"354") for r in replies) == 1, said
        seen = await collect_until(events, lambda ev: len(terminal(ev)) == len(SMUGGLING_VECTORS))
    assert {e.recipient for e in terminal(seen)} == {
        f"r{i}@one.test" for i in range(len(SMUGGLING_VECTORS))
    }
    assert mx.for_recipient("victim@one.test") == []
    assert len(mx.received()) == len(SMUGGLING_VECTORS)
    for message in mx.received():
        assert message.mail_from == "a@origin.test"
        assert b"MAIL FROM:<evil@attacker.test>" in message.content
        assert message.content.endswith(b"\r\n\r\nsend money\r\n")


# ---------------------------------------------------------------- PROXY protocol


class ProxiedSMTP(smtplib.SMTP):
    """smtplib behind a load balancer: the PROXY header goes first on the connection."""

    def __init__(self, header: bytes, port: int) -> None:
        self.header = header
        super().__init__("127.0.0.1", port, timeout=30)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        sock.sendall(self.header)
        return sock  # type: ignore[no-any-return]


async def test_proxy_protocol_relay_control_and_received_see_the_real_client(
    tmp_path: Path, mx: TestMx
) -> None:
    smtp = feeder(proxy_protocol=True, relay_networks=["192.0.2.0/24"])
    config = relay_config(tmp_path / "q", smtp=smtp, zones=smart_host(mx))

    def send(port: int, header: bytes) -> tuple[int, bytes]:
        with ProxiedSMTP(header, port) as client:
            client.ehlo("client.test")
            client.mail("a@origin.test")
            code, text = client.rcpt("p@one.test")
            if code == 250:
                client.data(MESSAGE)
            return code, text

    async with running_relay(config) as (relay, info):
        events = relay.bus.subscribe()
        port = info.smtp_ports["feeder"]
        outside = b"PROXY TCP4 198.51.100.7 127.0.0.1 5000 25\r\n"
        assert await in_thread(send, port, outside) == (554, b"5.7.1 relay access denied")
        inside = b"PROXY TCP4 192.0.2.9 127.0.0.1 5000 25\r\n"
        assert (await in_thread(send, port, inside))[0] == 250
        await collect_until(events, lambda ev: len(terminal(ev)) == 1)
    assert b"([192.0.2.9])" in header_block(mx.for_recipient("p@one.test")[0].content)


# ---------------------------------------------------------------- random bytes


@contextmanager
def relay_in_thread(config: Any) -> Iterator[int]:
    """Run a relay in its own trio loop in a thread; yields its SMTP port."""
    relay = Relay(config, shutdown_grace=2.0)
    started = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        state["token"] = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            state["info"] = await nursery.start(relay.run)
            started.set()

    def target() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test below
            state["error"] = exc
            started.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert started.wait(30)
    assert "error" not in state, state.get("error")
    try:
        yield state["info"].smtp_ports["feeder"]
    finally:
        trio.from_thread.run_sync(relay.request_stop, trio_token=state["token"])
        thread.join(30)
        assert "error" not in state, state["error"]


@pytest.fixture(scope="module")
def live_port(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[int]:
    with TestMx() as mx:
        tmp = tmp_path_factory.mktemp("fuzz")
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
        (tmp / "users").write_text(f"alice:{hash_password('pw', FAST)}\n")
        smtp = feeder(
            starttls=True,
            cert=str(tmp / "cert.pem"),
            key=str(tmp / "key.pem"),
            authentication=True,
            users_file=str(tmp / "users"),
            max_clients_per_address=0,
            idle_timeout="20s",
        )
        with relay_in_thread(relay_config(tmp / "q", smtp=smtp, zones=smart_host(mx))) as port:
            yield port


TOKENS = [
    b"EHLO x\r\n", b"MAIL FROM:<a@b.test>\r\n", b"RCPT TO:<c@d.test>\r\n", b"DATA\r\n",
    b"STARTTLS\r\n", b"AUTH PLAIN AGEAYg==\r\n", b"AUTH LOGIN\r\n", b"\r\n.\r\n", b"\n.\n",
    b"\r", b"\n", b".", b"RSET\r\n", b"\x16\x03\x01\x00\x05", b"PROXY TCP4 1.2.3.4\r\n",
]  # fmt: skip


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(junk=st.lists(st.sampled_from(TOKENS) | st.binary(max_size=200), max_size=20).map(b"".join))
def test_random_bytes_never_stop_the_relay_serving_others(live_port: int, junk: bytes) -> None:
    with socket.create_connection(("127.0.0.1", live_port), timeout=30) as attacker:
        attacker.sendall(junk)
        # While the junk is being chewed on, a well-behaved client is served.
        with smtplib.SMTP("127.0.0.1", live_port, timeout=30) as client:
            assert client.ehlo("good.test")[0] == 250
            assert client.sendmail("a@origin.test", ["good@one.test"], MESSAGE) == {}
        attacker.shutdown(socket.SHUT_WR)
        said = b""
        while data := attacker.recv(65536):
            said += data
    assert said.startswith(b"220 ")  # the server answered and then closed: no hang, no crash

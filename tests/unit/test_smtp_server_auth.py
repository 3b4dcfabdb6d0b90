"""The sans-IO SMTP server: AUTH PLAIN and LOGIN, implicit TLS, and the per-session error cap."""

from __future__ import annotations

import base64

import pytest

from tests.unit.test_smtp_server import (
    SPLITS,
    codes,
    cuts_for,
    feed,
    make,
    parse_replies,
    ready,
)
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.smtp.server import (
    Auth,
    ConnectionClosed,
    DataEnd,
    Event,
    Helo,
    RcptTo,
    SessionState,
)
from zonemta.transport.smtp.server_auth import Challenge, Credentials, Mechanism, SaslExchange
from zonemta.transport.smtp.server_parse import Refusal

GRANTED = Reply(235, ("Authentication successful",), "2.7.0")
DENIED = Reply(535, ("Authentication credentials invalid",), "5.7.8")


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def grant(event: Event) -> Reply:
    return GRANTED if isinstance(event, Auth) else Reply(250, ("Ok",), "2.0.0")


def deny(event: Event) -> Reply:
    return DENIED if isinstance(event, Auth) else Reply(250, ("Ok",), "2.0.0")


def secure(**kwargs: object) -> object:
    return ready(implicit_tls=True, auth_available=True, **kwargs)


# ---------------------------------------------------------------- offering AUTH


@pytest.mark.parametrize(
    ("kwargs", "offered"),
    [
        ({}, False),
        ({"auth_available": True}, False),  # plaintext: not offered
        ({"auth_available": True, "allow_insecure_auth": True}, True),
        ({"auth_available": True, "implicit_tls": True}, True),
        ({"implicit_tls": True}, False),
    ],
)
def test_ehlo_offers_auth_only_inside_tls_or_when_insecure_is_allowed(
    kwargs: dict[str, bool], offered: bool
) -> None:
    conn = make(**kwargs)
    feed(conn, b"EHLO c\r\n")
    lines = parse_replies(conn.data_to_send())[0].lines
    assert ("AUTH PLAIN LOGIN" in lines) is offered


def test_implicit_tls_does_not_offer_starttls() -> None:
    conn = make(implicit_tls=True, starttls_available=True)
    assert conn.tls_active
    feed(conn, b"EHLO c\r\nSTARTTLS\r\n")
    replies = parse_replies(conn.data_to_send())
    assert "STARTTLS" not in replies[0].lines
    assert str(replies[1]).startswith("503 5.5.1")


def test_auth_refusals_before_any_exchange() -> None:
    conn = make()
    feed(conn, b"AUTH PLAIN\r\nEHLO c\r\nAUTH PLAIN\r\n")
    assert codes(conn) == ["503 5.5.1", "250", "502 5.5.1"]
    conn = ready(auth_available=True, starttls_available=True)
    feed(conn, b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n")
    assert codes(conn) == ["538 5.7.11"]  # never before TLS
    conn = ready(auth_available=True, implicit_tls=True)
    feed(conn, b"MAIL FROM:<a@b.test>\r\nAUTH PLAIN\r\n")
    assert codes(conn) == ["250 2.0.0", "503 5.5.1"]  # not inside a transaction


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"AUTH\r\n", "501 5.5.2"),
        (b"AUTH CRAM-MD5\r\n", "504 5.5.4"),
        (b"AUTH PLAIN not*base64\r\n", "501 5.5.2"),
        (b"AUTH PLAIN " + b64(b"user-pass") + b"\r\n", "501 5.5.2"),  # no NULs
        (b"AUTH PLAIN " + b64(b"other\0user\0pw") + b"\r\n", "501 5.5.2"),  # authzid differs
        (b"AUTH PLAIN " + b64(b"\0\0pw") + b"\r\n", "501 5.5.2"),  # empty user
        (b"AUTH PLAIN " + b64(b"\0\xff\0pw") + b"\r\n", "501 5.5.2"),  # not UTF-8
        (b"AUTH PLAIN a b\r\n", "501 5.5.2"),
        (b"AUTH LOGIN =\r\n", "501 5.5.2"),  # empty user name
    ],
)
def test_malformed_auth(line: bytes, expected: str) -> None:
    conn = secure()
    assert feed(conn, line) == []
    assert codes(conn) == [expected]
    assert conn.state is SessionState.READY and not conn.authenticated


# ---------------------------------------------------------------- PLAIN and LOGIN


@pytest.mark.parametrize("mode", SPLITS)
def test_plain_with_initial_response(mode: str) -> None:
    conn = secure()
    data = b"AUTH PLAIN " + b64(b"\0alice\0s3cret") + b"\r\nMAIL FROM:<a@b.test>\r\n"
    events = feed(conn, data, cuts_for(mode, data), answer=grant)
    assert events[0] == Auth("PLAIN", "alice", "s3cret")
    assert conn.authenticated
    assert codes(conn) == ["235 2.7.0", "250 2.0.0"]


@pytest.mark.parametrize("mode", SPLITS)
def test_plain_with_a_challenge(mode: str) -> None:
    conn = secure()
    assert feed(conn, b"auth plain\r\n") == []
    assert conn.data_to_send() == b"334 \r\n"
    assert conn.state is SessionState.AUTH
    data = b64(b"alice\0alice\0pw") + b"\r\n"
    assert feed(conn, data, cuts_for(mode, data), answer=grant) == [Auth("PLAIN", "alice", "pw")]
    assert conn.state is SessionState.READY and conn.authenticated


@pytest.mark.parametrize("mode", SPLITS)
def test_login(mode: str) -> None:
    conn = secure()
    data = b"AUTH LOGIN\r\n"
    feed(conn, data, cuts_for(mode, data))
    assert conn.data_to_send() == b"334 VXNlcm5hbWU6\r\n"
    data = b64("bjørn".encode()) + b"\r\n"
    feed(conn, data, cuts_for(mode, data))
    assert conn.data_to_send() == b"334 UGFzc3dvcmQ6\r\n"
    data = b64(b"pw") + b"\r\n"
    assert feed(conn, data, cuts_for(mode, data), answer=deny) == [Auth("LOGIN", "bjørn", "pw")]
    assert codes(conn) == ["535 5.7.8"]
    assert not conn.authenticated and conn.state is SessionState.READY


def test_login_with_initial_user_name_and_empty_password() -> None:
    conn = secure()
    feed(conn, b"AUTH LOGIN " + b64(b"bob") + b"\r\n")
    assert conn.data_to_send() == b"334 UGFzc3dvcmQ6\r\n"
    assert feed(conn, b"=\r\n", answer=deny) == [Auth("LOGIN", "bob", "")]


def test_cancel_and_bad_responses_end_the_exchange() -> None:
    conn = secure()
    feed(conn, b"AUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n!!!\r\nAUTH PLAIN\r\n" + b"A" * 3000 + b"\r\n")
    assert codes(conn) == ["334", "501 5.0.0", "334", "501 5.5.2", "334", "500 5.5.6"]
    assert conn.state is SessionState.READY


def test_a_refused_attempt_may_be_retried_and_success_is_final() -> None:
    conn = secure()
    answers = iter([DENIED, GRANTED])
    line = b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n"
    feed(conn, line * 3, answer=lambda _e: next(answers))
    assert codes(conn) == ["535 5.7.8", "235 2.7.0", "503 5.5.1"]
    assert conn.authenticated


def test_starttls_forgets_an_insecure_authentication() -> None:
    conn = ready(auth_available=True, allow_insecure_auth=True, starttls_available=True)
    feed(conn, b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\nSTARTTLS\r\n", answer=grant)
    assert conn.authenticated is False and conn.tls_active  # feed() finished the handshake
    assert conn.state is SessionState.CONNECTED


def test_eof_inside_the_exchange_closes() -> None:
    conn = secure()
    events = feed(conn, b"AUTH LOGIN\r\n" + b64(b"u"), eof=True)
    assert events == [ConnectionClosed()]


def test_auth_event_hides_the_password() -> None:
    event = Auth("PLAIN", "alice", "hunter2")
    assert "hunter2" not in repr(event)
    assert "hunter2" not in repr(Credentials(Mechanism.PLAIN, "alice", "hunter2"))
    with pytest.raises(ValueError):
        Auth("PLAIN", "", "x")


def test_sasl_exchange_directly() -> None:
    exchange = SaslExchange()
    assert exchange.start("LOGIN") == Challenge("VXNlcm5hbWU6")
    assert exchange.step(b64(b"u").decode()) == Challenge("UGFzc3dvcmQ6")
    assert exchange.step(b64(b"p").decode()) == Credentials(Mechanism.LOGIN, "u", "p")
    with pytest.raises(Refusal):
        SaslExchange().start("PLAIN =")


# ---------------------------------------------------------------- error cap


def test_error_cap_closes_with_421() -> None:
    conn = ready(max_errors=3)
    events = feed(conn, b"BOGUS\r\nMAIL FROM:<bad\r\nRCPT TO:<x@y.test>\r\nNOOP\r\n")
    assert events == [ConnectionClosed()]
    assert codes(conn) == ["500 5.5.1", "501 5.5.2", "503 5.5.1", "421 4.7.0"]
    assert conn.closed


def test_error_cap_counts_refused_policy_answers_but_not_452() -> None:
    conn = ready(max_errors=2, max_recipients=1)
    refuse = Reply(554, ("relay access denied",), "5.7.1")
    events = feed(
        conn,
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\n",
        answer=lambda e: Reply(250, ("Ok",), "2.0.0") if not isinstance(e, RcptTo) else refuse,
    )
    assert codes(conn) == ["250 2.0.0", "554 5.7.1", "554 5.7.1", "421 4.7.0"]
    assert isinstance(events[-1], ConnectionClosed)
    conn = ready(max_errors=2, max_recipients=1)
    feed(conn, b"MAIL FROM:<a@b.test>\r\n" + b"RCPT TO:<c@d.test>\r\n" * 5)
    assert codes(conn) == ["250 2.0.0", "250 2.0.0"] + ["452 4.5.3"] * 4
    assert not conn.closed


def test_an_accepted_message_resets_the_error_count() -> None:
    conn = ready(max_errors=2)
    feed(conn, b"BOGUS\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nx\r\n.\r\n")
    feed(conn, b"BOGUS\r\nNOOP\r\n")
    first = ["500 5.5.1", "250 2.0.0", "250 2.0.0", "354", "250 2.0.0"]
    assert codes(conn) == [*first, "500 5.5.1", "250 2.0.0"]
    assert not conn.closed


def test_error_cap_zero_is_off() -> None:
    conn = ready()
    events = feed(conn, b"BOGUS\r\n" * 50)
    assert events == [] and not conn.closed


def test_auth_failures_count_towards_the_cap() -> None:
    conn = secure(max_errors=2)
    line = b"AUTH PLAIN " + b64(b"\0u\0p") + b"\r\n"
    events = feed(conn, line * 3, answer=deny)
    assert [type(e) for e in events] == [Auth, Auth, ConnectionClosed]
    assert codes(conn) == ["535 5.7.8", "535 5.7.8", "421 4.7.0"]


def test_helo_and_data_end_still_work_with_auth_settings() -> None:
    conn = make(auth_available=True, implicit_tls=True)
    events = feed(
        conn, b"HELO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nx\r\n.\r\n"
    )
    assert events[0] == Helo("c", extended=False)
    assert events[-1] == DataEnd()

"""The sans-IO SMTP server's per-session shortcuts: replies built once per settings object,
and a received chunk that is one whole command line taken as it is."""

from __future__ import annotations

from zonemta.transport.smtp.server import (
    NEED_DATA,
    Helo,
    ServerSettings,
    SMTPServerConnection,
    StartTLS,
)


def _ehlo(conn: SMTPServerConnection) -> bytes:
    conn.receive_data(b"EHLO client.test\r\n")
    assert isinstance(conn.next_event(), Helo)
    assert conn.next_event() is NEED_DATA
    return conn.data_to_send()


def test_greeting_and_helo_are_built_once_per_settings() -> None:
    settings = ServerSettings("mx.test", 0, banner="ESMTP hi")
    first, second = SMTPServerConnection(settings), SMTPServerConnection(settings)
    assert first.data_to_send() == b"220 mx.test ESMTP hi\r\n"
    assert second.data_to_send() == b"220 mx.test ESMTP hi\r\n"
    assert settings.greeting is settings.greeting
    for conn in (first, second):
        conn.receive_data(b"HELO client.test\r\n")
        assert conn.next_event() == Helo("client.test", extended=False)
        assert conn.data_to_send() == b"250 mx.test\r\n"


def test_settings_with_other_values_get_their_own_replies() -> None:
    one = ServerSettings("one.test", 0)
    other = ServerSettings("other.test", 1000)
    assert SMTPServerConnection(one).data_to_send() == b"220 one.test ESMTP zonemta\r\n"
    assert SMTPServerConnection(other).data_to_send() == b"220 other.test ESMTP zonemta\r\n"
    assert b"250-SIZE\r\n" in _ehlo(SMTPServerConnection(one))
    assert b"250-SIZE 1000\r\n" in _ehlo(SMTPServerConnection(other))


def test_the_ehlo_reply_follows_each_sessions_tls_and_auth() -> None:
    # One settings object, sessions in different states: the cached answers must not mix.
    settings = ServerSettings("mx.test", 0, starttls_available=True, auth_available=True)
    plain = SMTPServerConnection(settings)
    plain.data_to_send()
    before = _ehlo(plain)
    assert b"250-STARTTLS\r\n" in before
    assert b"AUTH" not in before  # not offered outside TLS
    plain.receive_data(b"STARTTLS\r\n")
    assert isinstance(plain.next_event(), StartTLS)
    plain.tls_started()
    plain.data_to_send()
    after = _ehlo(plain)
    assert b"STARTTLS" not in after
    assert b"250-AUTH PLAIN LOGIN\r\n" in after
    fresh = SMTPServerConnection(settings)
    fresh.data_to_send()
    assert _ehlo(fresh) == before
    insecure = ServerSettings(
        "mx.test", 0, starttls_available=True, auth_available=True, allow_insecure_auth=True
    )
    conn = SMTPServerConnection(insecure)
    conn.data_to_send()
    assert b"AUTH PLAIN LOGIN" in _ehlo(conn)


def test_a_chunk_of_one_over_long_line_is_refused() -> None:
    settings = ServerSettings("mx.test", 0, max_line_length=512)
    conn = SMTPServerConnection(settings)
    conn.data_to_send()
    conn.receive_data(b"HELO " + b"a" * 600 + b"\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"500 5.5.2 Error: line too long\r\n"
    exact = b"HELO " + b"a" * (512 - 7) + b"\r\n"  # exactly the limit: accepted
    conn.receive_data(exact)
    assert conn.next_event() == Helo("a" * (512 - 7), extended=False)


def test_chunks_that_are_not_one_line_are_still_split_into_lines() -> None:
    conn = SMTPServerConnection(ServerSettings("mx.test", 0))
    conn.data_to_send()
    conn.receive_data(b"HELO a.test\r\nNOOP\r\nNO")  # two lines and a part
    assert conn.next_event() == Helo("a.test", extended=False)
    assert conn.next_event() is not NEED_DATA  # the NOOP
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"OP\r\n")  # completes the buffered part
    assert conn.next_event() is not NEED_DATA
    assert conn.data_to_send() == b"250 mx.test\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"
    conn.receive_data(b"HELO b.test\n")  # a bare LF ends a line too
    assert conn.next_event() == Helo("b.test", extended=False)

"""The sans-IO SMTP server: every command path, policy flow, DATA decoding, limits, STARTTLS."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from zonemta.transport.smtp.errors import LocalProtocolError, RemoteProtocolError
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.smtp.server import (
    NEED_DATA,
    Auth,
    ConnectionClosed,
    DataAbort,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    Helo,
    MailFrom,
    Noop,
    Quit,
    RcptTo,
    Rset,
    ServerSettings,
    SessionState,
    SMTPServerConnection,
    StartTLS,
)
from zonemta.transport.smtp.server_data import DataDecoder
from zonemta.transport.smtp.server_states import (
    COMMAND_STATES,
    COMMAND_TABLE,
    Trigger,
    Verb,
    sequence_refusal,
    transition,
)

# ---------------------------------------------------------------- helpers (used by the fuzz too)

OK = Reply(250, ("Ok",), "2.0.0")
POLICY = (MailFrom, RcptTo, DataEnd, Auth)
Answer = Callable[[Event], Reply]


def always_ok(_event: Event) -> Reply:
    return OK


def make(hostname: str = "mx.test", max_size: int = 0, **kwargs: Any) -> SMTPServerConnection:
    """A connection with its greeting already drained."""
    conn = SMTPServerConnection(ServerSettings(hostname, max_size, **kwargs))
    assert conn.data_to_send().startswith(b"220 ")
    return conn


def pump(conn: SMTPServerConnection, answer: Answer = always_ok) -> list[Event]:
    """Drain events until NEED_DATA or ConnectionClosed, answering policy events."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        assert isinstance(event, Event)
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events
        if isinstance(event, POLICY):
            conn.respond(answer(event))
        elif isinstance(event, StartTLS):
            conn.tls_started()


def pieces(data: bytes, cuts: Iterable[int]) -> Iterator[bytes]:
    """``data`` cut at the given offsets (sorted, deduplicated, in range)."""
    start = 0
    for cut in sorted({c for c in cuts if 0 < c < len(data)}):
        yield data[start:cut]
        start = cut
    if start < len(data):
        yield data[start:]


def feed(
    conn: SMTPServerConnection,
    data: bytes,
    cuts: Iterable[int] = (),
    answer: Answer = always_ok,
    eof: bool = False,
) -> list[Event]:
    """Feed ``data`` in pieces, pumping events after each piece."""
    events: list[Event] = []
    for piece in pieces(data, cuts):
        conn.receive_data(piece)
        events += pump(conn, answer)
    if eof:
        conn.receive_data(b"")
        events += pump(conn, answer)
    return events


def merged(events: list[Event]) -> list[Event]:
    """Consecutive DataChunks joined: the chunking of content is not part of the meaning."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, DataChunk) and out and isinstance(out[-1], DataChunk):
            out[-1] = DataChunk(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def content(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataChunk))


_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([^\r\n]*)\r\n")


def parse_replies(wire: bytes) -> list[Reply]:
    """Parse server output, asserting it is a sequence of well-formed (multi-line) replies."""
    replies: list[Reply] = []
    lines: list[str] = []
    code: int | None = None
    pos = 0
    while pos < len(wire):
        match = _REPLY_LINE.match(wire, pos)
        assert match, f"malformed reply bytes: {wire[pos : pos + 80]!r}"
        assert code is None or int(match[1]) == code, "code changed inside a multi-line reply"
        code = int(match[1])
        lines.append(match[3].decode("utf-8"))
        pos = match.end()
        if match[2] == b" ":
            replies.append(Reply.from_lines(code, lines))
            lines, code = [], None
    assert not lines, "unterminated multi-line reply"
    return replies


def codes(conn: SMTPServerConnection) -> list[str]:
    """Drained replies as 'code enhanced' strings, e.g. '503 5.5.1'."""
    return [
        f"{r.code} {r.enhanced}" if r.enhanced else str(r.code)
        for r in parse_replies(conn.data_to_send())
    ]


def ready(**kwargs: Any) -> SMTPServerConnection:
    conn = make(**kwargs)
    assert feed(conn, b"EHLO client.test\r\n") == [Helo("client.test", extended=True)]
    conn.data_to_send()
    return conn


def in_data(**kwargs: Any) -> SMTPServerConnection:
    conn = ready(**kwargs)
    events = feed(conn, b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
    assert events[-1] == DataStart()
    assert conn.state is SessionState.DATA
    assert codes(conn) == ["250 2.0.0", "250 2.0.0", "354"]
    return conn


SPLITS = ["whole", "bytewise", "random"]


def cuts_for(mode: str, data: bytes, seed: int = 0) -> list[int]:
    if mode == "whole":
        return []
    if mode == "bytewise":
        return list(range(1, len(data)))
    rng = random.Random(seed)
    return [rng.randrange(1, max(2, len(data))) for _ in range(len(data) // 3 + 1)]


# ---------------------------------------------------------------- greeting, HELO, EHLO


def test_greeting_uses_hostname_and_banner() -> None:
    conn = SMTPServerConnection(ServerSettings("mx.example", 10, banner="ESMTP hi"))
    assert conn.data_to_send() == b"220 mx.example ESMTP hi\r\n"
    assert conn.data_to_send() == b""
    assert conn.state is SessionState.CONNECTED and not conn.closed


def test_ehlo_advertises_extensions() -> None:
    conn = make(max_size=1000, starttls_available=True)
    assert feed(conn, b"EHLO client\r\n") == [Helo("client", extended=True)]
    assert conn.data_to_send() == (
        b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250 HELP\r\n"
    )
    assert conn.state is SessionState.READY


def test_ehlo_size_without_limit_and_no_starttls() -> None:
    conn = make(max_size=0)
    feed(conn, b"ehlo client\r\n")
    lines = parse_replies(conn.data_to_send())[0].lines
    assert "SIZE" in lines and "STARTTLS" not in lines


def test_helo() -> None:
    conn = make()
    assert feed(conn, b"HELO client\r\n") == [Helo("client", extended=False)]
    assert conn.data_to_send() == b"250 mx.test\r\n"


@pytest.mark.parametrize("line", [b"HELO\r\n", b"EHLO\r\n", b"EHLO   \r\n"])
def test_helo_needs_a_name(line: bytes) -> None:
    conn = make()
    assert feed(conn, line) == []
    assert codes(conn) == ["501 5.5.2"]
    assert conn.state is SessionState.CONNECTED


def test_ehlo_in_a_transaction_resets_it() -> None:
    conn = ready()
    feed(
        conn, b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nEHLO again\r\nRCPT TO:<e@d.test>\r\n"
    )
    assert conn.state is SessionState.READY
    assert codes(conn)[-1] == "503 5.5.1"


# ---------------------------------------------------------------- sequencing


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (b"MAIL FROM:<a@b.test>\r\n", ["503 5.5.1"]),
        (b"RCPT TO:<a@b.test>\r\n", ["503 5.5.1"]),
        (b"DATA\r\n", ["503 5.5.1"]),
        (b"STARTTLS\r\n", ["503 5.5.1"]),
        (b"EHLO x\r\nRCPT TO:<a@b.test>\r\n", ["250", "503 5.5.1"]),
        (b"EHLO x\r\nDATA\r\n", ["250", "503 5.5.1"]),
        (b"EHLO x\r\nMAIL FROM:<>\r\nMAIL FROM:<>\r\n", ["250", "250 2.0.0", "503 5.5.1"]),
        (b"EHLO x\r\nMAIL FROM:<>\r\nDATA\r\n", ["250", "250 2.0.0", "554 5.5.1"]),
    ],
)
def test_bad_sequence(script: bytes, expected: list[str]) -> None:
    conn = make()
    feed(conn, script)
    assert codes(conn) == expected


def test_pipelined_transaction_yields_policy_events_one_at_a_time() -> None:
    conn = ready()
    conn.receive_data(
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@d.test>\r\nDATA\r\n"
    )
    assert conn.next_event() == MailFrom("a@b.test", {})
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.respond(OK)
    assert conn.state is SessionState.MAIL
    assert conn.next_event() == RcptTo("c@d.test", {})
    conn.respond(Reply(550, ("no such user",), "5.1.1"))
    assert conn.next_event() == RcptTo("e@d.test", {})
    conn.respond(OK)
    assert conn.next_event() == DataStart()
    assert conn.next_event() is NEED_DATA
    assert codes(conn) == ["250 2.0.0", "550 5.1.1", "250 2.0.0", "354"]


def test_refused_mail_makes_pipelined_rcpt_and_data_fail_in_order() -> None:
    conn = ready()
    data = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@d.test>\r\nDATA\r\nNOOP\r\n"
    events = feed(conn, data, answer=lambda _e: Reply(550, ("go away",), "5.7.1"))
    assert events == [MailFrom("a@b.test", {}), Noop()]
    assert codes(conn) == ["550 5.7.1", "503 5.5.1", "503 5.5.1", "503 5.5.1", "250 2.0.0"]
    assert conn.state is SessionState.READY


def test_all_recipients_refused_then_pipelined_data_gets_554() -> None:
    conn = ready()

    def answer(event: Event) -> Reply:
        return OK if isinstance(event, MailFrom) else Reply(550, ("no",), "5.1.1")

    feed(conn, b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n", answer=answer)
    assert codes(conn) == ["250 2.0.0", "550 5.1.1", "554 5.5.1"]
    assert conn.state is SessionState.MAIL


def test_respond_misuse() -> None:
    conn = ready()
    with pytest.raises(LocalProtocolError):
        conn.respond(OK)
    feed(conn, b"MAIL FROM:<a@b.test>\r\n", answer=always_ok)
    conn.receive_data(b"RCPT TO:<c@d.test>\r\n")
    assert isinstance(conn.next_event(), RcptTo)
    with pytest.raises(LocalProtocolError):
        conn.respond(Reply(354, ("go ahead",)))


def test_respond_421_closes() -> None:
    conn = ready()
    conn.receive_data(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.respond(Reply(421, ("shutting down",), "4.3.2"))
    assert conn.closed
    assert conn.next_event() == ConnectionClosed()
    assert codes(conn) == ["421 4.3.2"]


def test_rset_noop_vrfy_help() -> None:
    conn = ready()
    events = feed(
        conn,
        b"MAIL FROM:<a@b.test>\r\nRSET\r\nRCPT TO:<c@d.test>\r\nNOOP whatever\r\nVRFY bob\r\n"
        b"VRFY\r\nHELP\r\nRSET x\r\n",
    )
    assert events == [MailFrom("a@b.test", {}), Rset(), Noop()]
    assert codes(conn) == [
        "250 2.0.0", "250 2.0.0", "503 5.5.1", "250 2.0.0", "252 2.5.0", "501 5.5.4",
        "214 2.0.0", "501 5.5.4",
    ]  # fmt: skip


def test_rset_before_helo_keeps_needing_helo() -> None:
    conn = make()
    assert feed(conn, b"RSET\r\nNOOP\r\n") == [Rset(), Noop()]
    assert conn.state is SessionState.CONNECTED


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"FOO\r\n", "500 5.5.1"),
        (b"EXPN list\r\n", "502 5.5.1"),
        (b"BDAT 10 LAST\r\n", "502 5.5.1"),
        (b"\r\n", "500 5.5.1"),
        (b"NOOP\xff\r\n", "500 5.5.2"),
        (b"qu\xc4\xb1t\r\n", "500 5.5.1"),  # dotless i upper-cases to I: no "QUIT" by accident
    ],
)
def test_automatic_errors(line: bytes, expected: str) -> None:
    conn = ready()
    assert feed(conn, line) == []
    assert codes(conn) == [expected]
    assert not conn.closed


def test_data_takes_no_parameters() -> None:
    conn = ready()
    feed(conn, b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA now\r\n")
    assert codes(conn) == ["250 2.0.0", "250 2.0.0", "501 5.5.4"]
    assert conn.state is SessionState.RCPT


def test_commands_are_case_insensitive_and_bare_lf_is_tolerated() -> None:
    conn = make()
    events = feed(conn, b"eHlO x\nmail from:<a@b.test>\nrcpt to:<c@d.test>\r\nnoop\n")
    assert events == [
        Helo("x", extended=True), MailFrom("a@b.test", {}), RcptTo("c@d.test", {}), Noop()
    ]  # fmt: skip


def test_quit() -> None:
    conn = ready()
    events = feed(conn, b"QUIT\r\nNOOP\r\n")
    assert events == [Quit(), ConnectionClosed()]
    assert codes(conn) == ["221 2.0.0"]
    assert conn.closed and conn.state is SessionState.CLOSED
    conn.receive_data(b"NOOP\r\n")  # ignored after close
    assert conn.next_event() == ConnectionClosed()
    assert conn.data_to_send() == b""


def test_eof() -> None:
    conn = ready()
    assert feed(conn, b"NOOP\r\nMAIL FROM:<a", eof=True) == [Noop(), ConnectionClosed()]
    assert conn.closed
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_close_with() -> None:
    conn = ready()
    conn.receive_data(b"MAIL FROM:<a@b.test>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.close_with(Reply(421, ("timeout",), "4.4.2"))
    assert conn.closed and conn.next_event() == ConnectionClosed()
    conn.close_with(Reply(421, ("again",), "4.4.2"))  # no-op once closed
    assert codes(conn) == ["421 4.4.2"]


# ---------------------------------------------------------------- line length


def test_line_too_long_is_discarded_and_session_continues() -> None:
    conn = ready(max_line_length=512)
    long_line = b"NOOP " + b"x" * 5000 + b"\r\n"
    events = feed(conn, long_line + b"NOOP\r\n", cuts=range(100, len(long_line), 100))
    assert events == [Noop()]
    assert codes(conn) == ["500 5.5.2", "250 2.0.0"]
    assert len(conn._line_buf) < 512  # bounded while discarding


def test_line_length_boundary() -> None:
    conn = ready(max_line_length=512)
    exact = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(exact) == 512
    over = b"NOOP " + b"x" * (512 - 6) + b"\r\n"
    feed(conn, exact + over, cuts=cuts_for("bytewise", exact + over))
    assert codes(conn) == ["250 2.0.0", "500 5.5.2"]


# ---------------------------------------------------------------- MAIL / RCPT arguments


@pytest.mark.parametrize(
    ("arg", "address", "params"),
    [
        (b"FROM:<>", "", {}),
        (b"FROM: <a@b.test>", "a@b.test", {}),
        (b"FROM:a@b.test", "a@b.test", {}),
        (
            b"FROM:<a@b.test> size=100 body=8bitmime",
            "a@b.test",
            {"SIZE": "100", "BODY": "8BITMIME"},
        ),
        (b"FROM:<@r1.test,@r2.test:a@b.test>", "a@b.test", {}),
        (b'FROM:<"john doe>"@b.test>', '"john doe>"@b.test', {}),
        (b"FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]", {}),
        (b"FROM:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]", {}),
        (b"FROM:<\xc3\xa9@b.test> SMTPUTF8", "\u00e9@b.test", {"SMTPUTF8": None}),
        (b"FROM:<a@b.test> SMTPUTF8 BODY=7bit", "a@b.test", {"SMTPUTF8": None, "BODY": "7BIT"}),
    ],
)
def test_mail_from_accepted(arg: bytes, address: str, params: dict[str, str | None]) -> None:
    conn = ready(max_size=1000)
    assert feed(conn, b"MAIL " + arg + b"\r\n") == [MailFrom(address, params)]


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (b"TO:<a@b.test>", "501 5.5.2"),
        (b"FROM<a@b.test>", "501 5.5.2"),
        (b"FROM:<a@b.test", "501 5.5.2"),
        (b"FROM:<a@b.test>x", "501 5.5.2"),
        (b"FROM:", "501 5.5.2"),
        (b"FROM:<a b@c.test>", "501 5.5.2"),
        (b"FROM:<ab.test>", "501 5.5.2"),
        (b"FROM:<a@>", "501 5.5.2"),
        (b"FROM:<a@b..test>", "501 5.5.2"),
        (b"FROM:<@r1:>", "501 5.5.2"),
        (b"FROM:<a@[999.1.1.1]>", "501 5.5.2"),
        (b"FROM:<\xc3\xa9@b.test>", "553 5.6.7"),
        (b"FROM:<" + b"x" * 65 + b"@b.test>", "553 5.1.3"),
        (b"FROM:<a@" + b"b" * 60 + (b".bbbbbbbbbb" * 20) + b">", "553 5.1.3"),
        (b"FROM:<a@b.test> SIZE=1001", "552 5.3.4"),
        (b"FROM:<a@b.test> SIZE=ten", "501 5.5.4"),
        (b"FROM:<a@b.test> SIZE", "501 5.5.4"),
        (b"FROM:<a@b.test> BODY=BINARYMIME", "501 5.5.4"),
        (b"FROM:<a@b.test> SMTPUTF8=yes", "501 5.5.4"),
        (b"FROM:<a@b.test> RET=FULL", "555 5.5.4"),
        (b"FROM:<a@b.test> SIZE=1 SIZE=2", "501 5.5.4"),
        (b"FROM:<a@b.test> =x", "501 5.5.4"),
        (b"FROM:<a@b.test> SIZE=", "501 5.5.4"),
    ],
)
def test_mail_from_refused(arg: bytes, expected: str) -> None:
    conn = ready(max_size=1000)
    assert feed(conn, b"MAIL " + arg + b"\r\n") == []
    assert codes(conn) == [expected]
    assert conn.state is SessionState.READY


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (b"TO:<>", "501 5.1.3"),
        (b"FROM:<a@b.test>", "501 5.5.2"),
        (b"TO:<c@d.test> NOTIFY=NEVER", "555 5.5.4"),
        (b"TO:<\xc3\xa9@d.test>", "553 5.6.7"),
        (b"TO:<c@d_>", "250 2.0.0"),
        (b"TO:<Postmaster>", "250 2.0.0"),
        (b"TO:<bob>", "501 5.5.2"),
    ],
)
def test_rcpt_arguments(arg: bytes, expected: str) -> None:
    conn = ready()
    feed(conn, b"MAIL FROM:<a@b.test>\r\nRCPT " + arg + b"\r\n")
    assert codes(conn) == ["250 2.0.0", expected]


def test_utf8_recipient_needs_smtputf8_on_mail() -> None:
    conn = ready()
    events = feed(conn, b"MAIL FROM:<a@b.test> SMTPUTF8\r\nRCPT TO:<\xc3\xa9@d.test>\r\n")
    assert events[-1] == RcptTo("\u00e9@d.test", {})
    feed(conn, b"RSET\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<\xc3\xa9@d.test>\r\n")
    assert codes(conn)[-1] == "553 5.6.7"


def test_recipient_limit() -> None:
    conn = ready(max_recipients=2)

    def answer(event: Event) -> Reply:
        if isinstance(event, RcptTo) and event.address.startswith("bad"):
            return Reply(550, ("no",), "5.1.1")
        return OK

    script = b"MAIL FROM:<a@b.test>\r\n" + b"".join(
        b"RCPT TO:<%s@d.test>\r\n" % name for name in (b"bad", b"r1", b"r2", b"r3", b"r4")
    )
    events = feed(conn, script, answer=answer)
    assert [e.address for e in events if isinstance(e, RcptTo)] == [
        "bad@d.test", "r1@d.test", "r2@d.test"
    ]  # fmt: skip
    assert codes(conn) == ["250 2.0.0", "550 5.1.1", "250 2.0.0", "250 2.0.0", "452 4.5.3",
                           "452 4.5.3"]  # fmt: skip
    # A new transaction starts counting afresh.
    feed(conn, b"RSET\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r5@d.test>\r\n", answer=answer)
    assert codes(conn) == ["250 2.0.0", "250 2.0.0", "250 2.0.0"]


# ---------------------------------------------------------------- DATA


BODY_CASES = [
    # (raw content up to and including the terminator, expected content)
    (b".\r\n", b""),
    (b"hello\r\n.\r\n", b"hello\r\n"),
    (b"a\r\n..b\r\n...\r\n.\r\n", b"a\r\n.b\r\n..\r\n"),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"bare\nlf\nend\r\n.\r\n", b"bare\r\nlf\r\nend\r\n"),
    (b"bare\rcr\r\r\n.\r\n", b"bare\r\ncr\r\n\r\n"),
    (b"a\n..b\r.c\r\n.\r\n", b"a\r\n.b\r\nc\r\n"),
    (b"\r\n\r\n.\r\n", b"\r\n\r\n"),
    (b"no-final-newline\r\n.\r\n", b"no-final-newline\r\n"),
    (b"x" * 3000 + b"\r\n.\r\n", b"x" * 3000 + b"\r\n"),
]

SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\n", b"\r\n.\n", b"\r.\r\n", b"\n.\r"]


@pytest.mark.parametrize("mode", SPLITS)
@pytest.mark.parametrize(("raw", "expected"), BODY_CASES)
def test_data_decoding_three_ways(raw: bytes, expected: bytes, mode: str) -> None:
    conn = in_data()
    trailing = b"NOOP\r\nMAIL FROM:<x@y.test>\r\n"
    wire = raw + trailing
    events = feed(conn, wire, cuts_for(mode, wire, seed=len(raw)))
    assert content(events) == expected
    assert [e for e in events if not isinstance(e, DataChunk)] == [
        DataEnd(), Noop(), MailFrom("x@y.test", {})
    ]  # fmt: skip
    assert codes(conn) == ["250 2.0.0", "250 2.0.0", "250 2.0.0"]
    assert conn.state is SessionState.MAIL


@pytest.mark.parametrize("mode", SPLITS)
@pytest.mark.parametrize("vector", SMUGGLING)
def test_smuggling_vectors_do_not_end_data(vector: bytes, mode: str) -> None:
    conn = in_data()
    wire = b"Subject: a\r\n\r\nbody" + vector + b"MAIL FROM:<evil@x.test>\r\n\r\n.\r\n"
    events = feed(conn, wire, cuts_for(mode, wire))
    assert not any(isinstance(e, MailFrom) for e in events)
    assert events[-1] == DataEnd()
    body = content(events)
    assert b"MAIL FROM:<evil@x.test>\r\n" in body
    assert b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b"")


def test_data_chunks_stream_without_waiting_for_lines() -> None:
    conn = in_data()
    assert feed(conn, b"partial line without end") == [DataChunk(b"partial line without end")]
    assert feed(conn, b" more\r") == [DataChunk(b" more")]  # only the CR is held back
    assert feed(conn, b"\n.") == [DataChunk(b"\r\n")]  # the line-start dot is held back
    assert feed(conn, b"\r") == []
    assert feed(conn, b"\n") == [DataEnd()]


def test_data_after_bare_lf_command_line() -> None:
    conn = ready()
    feed(conn, b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
    # "DATA\n" did not end in CRLF, so the ".\r\n" right after it is a stuffed empty line.
    events = feed(conn, b"DATA\n.\r\nx\r\n.\r\n")
    assert content(events) == b"\r\nx\r\n" and events[-1] == DataEnd()


def test_eof_in_data_is_connection_closed_without_abort() -> None:
    conn = in_data()
    events = feed(conn, b"Subject: x\r\n\r\npartial", eof=True)
    assert events == [DataChunk(b"Subject: x\r\n\r\npartial"), ConnectionClosed()]
    assert conn.closed


def test_refused_message_resets_transaction() -> None:
    conn = in_data()
    events = feed(
        conn,
        b"x\r\n.\r\nRCPT TO:<c@d.test>\r\n",
        answer=lambda _e: Reply(451, ("try later",), "4.3.0"),
    )
    assert events == [DataChunk(b"x\r\n"), DataEnd()]
    assert codes(conn) == ["451 4.3.0", "503 5.5.1"]
    assert conn.state is SessionState.READY


# ---------------------------------------------------------------- limits in DATA


@pytest.mark.parametrize("mode", SPLITS)
def test_size_limit_aborts_then_drains_then_session_works(mode: str) -> None:
    conn = in_data(max_size=100)
    body = (b"line of text\r\n" * 20) + b".\r\n"
    wire = body + b"MAIL FROM:<a@b.test>\r\n"
    events = feed(conn, wire, cuts_for(mode, wire, seed=7))
    aborts = [e for e in events if isinstance(e, DataAbort)]
    assert len(aborts) == 1 and aborts[0].reply.code == 552
    assert aborts[0].reply.enhanced == "5.3.4"
    assert not any(isinstance(e, DataEnd) for e in events)
    assert len(content(events)) <= 100
    assert events[-1] == MailFrom("a@b.test", {})
    assert codes(conn) == ["552 5.3.4", "250 2.0.0"]


def test_content_of_exactly_max_size_is_accepted() -> None:
    conn = in_data(max_size=10)
    events = feed(conn, b"12345678\r\n.\r\n")
    assert content(events) == b"12345678\r\n" and events[-1] == DataEnd()


def test_size_counts_unstuffed_content() -> None:
    conn = in_data(max_size=10)
    events = feed(conn, b"..234567\r\n.\r\n")  # 11 bytes on the wire, 10 of content
    assert events[-1] == DataEnd()


@pytest.mark.parametrize("mode", SPLITS)
def test_header_block_limit(mode: str) -> None:
    conn = in_data(max_header_size=40)
    wire = b"Subject: " + b"h" * 50 + b"\r\n\r\nbody\r\n.\r\n"
    events = feed(conn, wire, cuts_for(mode, wire, seed=3))
    assert [type(e) for e in events if not isinstance(e, DataChunk)] == [DataAbort]
    abort = next(e for e in events if isinstance(e, DataAbort))
    assert "header" in abort.reply.text
    assert codes(conn) == ["552 5.3.4"]
    assert conn.state is SessionState.READY


@pytest.mark.parametrize("mode", SPLITS)
def test_large_body_after_small_header_is_fine(mode: str) -> None:
    conn = in_data(max_header_size=40)
    wire = b"Subject: x\r\n\r\n" + b"b" * 200 + b"\r\n.\r\n"
    events = feed(conn, wire, cuts_for(mode, wire, seed=5))
    assert events[-1] == DataEnd() and len(content(events)) == 14 + 202


def test_header_block_without_blank_line_over_limit() -> None:
    conn = in_data(max_header_size=40)
    events = feed(conn, b"X: y\r\n" * 10 + b".\r\n")
    assert any(isinstance(e, DataAbort) for e in events)


def test_empty_header_block_is_small() -> None:
    conn = in_data(max_header_size=1)
    events = feed(conn, b"\r\n" + b"body " * 50 + b"\r\n.\r\n")
    assert events[-1] == DataEnd()


def test_decoder_holds_back_at_most_two_bytes() -> None:
    decoder = DataDecoder(0, 0)
    for piece in (b"abc\r", b"\n.", b"\r", b"x\r\n.\r", b"y"):
        decoder.feed(piece)
        assert len(decoder._tail) <= 2
    assert not decoder.finished
    assert decoder.feed(b"\r\n.\r\nrest").rest == b"rest"


# ---------------------------------------------------------------- STARTTLS


def test_starttls_flow() -> None:
    conn = ready(starttls_available=True)
    conn.receive_data(b"STARTTLS\r\n")
    assert conn.next_event() == StartTLS()
    assert conn.state is SessionState.STARTTLS
    assert conn.data_to_send() == b"220 2.0.0 Ready to start TLS\r\n"
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.tls_started()
    assert conn.state.name == "CONNECTED"
    feed(conn, b"MAIL FROM:<a@b.test>\r\nEHLO again\r\nSTARTTLS\r\n")
    replies = parse_replies(conn.data_to_send())
    assert replies[0].code == 503
    assert "STARTTLS" not in replies[1].lines
    assert (replies[2].code, replies[2].enhanced) == (503, "5.5.1")


def test_starttls_with_pipelined_plaintext_is_an_injection() -> None:
    conn = ready(starttls_available=True)
    conn.receive_data(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reply is not None and info.value.reply.is_permanent
    assert conn.closed
    assert conn.data_to_send() == b""  # no 220: the driver closes
    assert conn.next_event() == ConnectionClosed()


def test_starttls_injection_split_across_packets() -> None:
    conn = ready(starttls_available=True)
    conn.receive_data(b"STARTTLS\r")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\nNOOP\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_plaintext_before_handshake_completes() -> None:
    conn = ready(starttls_available=True)
    conn.receive_data(b"STARTTLS\r\n")
    assert conn.next_event() == StartTLS()
    conn.receive_data(b"NOOP\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.tls_started()
    assert conn.closed


def test_starttls_unavailable_or_misplaced() -> None:
    conn = ready()
    feed(conn, b"STARTTLS\r\n")
    assert codes(conn) == ["502 5.5.1"]
    conn = ready(starttls_available=True)
    feed(conn, b"STARTTLS now\r\nMAIL FROM:<>\r\nSTARTTLS\r\n")
    assert codes(conn) == ["501 5.5.4", "250 2.0.0", "503 5.5.1"]
    with pytest.raises(LocalProtocolError):
        conn.tls_started()


# ---------------------------------------------------------------- tables, settings, events


def test_transition_table_rejects_unknown_pairs() -> None:
    with pytest.raises(LocalProtocolError, match=r"DATA_DONE.*READY"):
        transition(SessionState.READY, Trigger.DATA_DONE)
    assert transition(SessionState.RCPT, Trigger.DATA) is SessionState.DATA


def test_command_table_covers_every_verb_and_state() -> None:
    assert set(COMMAND_TABLE) == set(Verb)
    # RFC 5321 4.1.4 and 3.3, written out independently of the table: the refused pairs
    # and their codes; every other pair may run.
    connected, ready, mail, rcpt = COMMAND_STATES
    refused = {
        (Verb.MAIL, connected): 503,
        (Verb.MAIL, mail): 503,
        (Verb.MAIL, rcpt): 503,
        (Verb.RCPT, connected): 503,
        (Verb.RCPT, ready): 503,
        (Verb.DATA, connected): 503,
        (Verb.DATA, ready): 503,
        (Verb.DATA, mail): 554,
        (Verb.STARTTLS, connected): 503,
        (Verb.STARTTLS, mail): 503,
        (Verb.STARTTLS, rcpt): 503,
        (Verb.AUTH, connected): 503,
        (Verb.AUTH, mail): 503,
        (Verb.AUTH, rcpt): 503,
    }
    for verb in Verb:
        for state in COMMAND_STATES:
            refusal = sequence_refusal(state, verb)
            code = None if refusal is None else refusal.code
            assert code == refused.get((verb, state)), (verb, state, refusal)
    with pytest.raises(LocalProtocolError):
        sequence_refusal(SessionState.DATA, Verb.NOOP)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hostname": "", "max_size": 0},
        {"hostname": "a b", "max_size": 0},
        {"hostname": "mx", "max_size": -1},
        {"hostname": "mx", "max_size": 0, "max_line_length": 511},
        {"hostname": "mx", "max_size": 0, "max_recipients": 0},
    ],
)
def test_settings_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ServerSettings(**kwargs)  # type: ignore[arg-type]


def test_events_validate() -> None:
    with pytest.raises(ValueError):
        DataChunk(b"")
    with pytest.raises(ValueError):
        RcptTo("", {})
    with pytest.raises(TypeError):
        NEED_DATA()
    event = MailFrom("a@b", {"SIZE": "1"})
    with pytest.raises(TypeError):
        event.params["SIZE"] = "2"  # type: ignore[index]

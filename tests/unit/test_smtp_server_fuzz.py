"""Hypothesis tests for the sans-IO SMTP server: any input in any chunking; dot-stuffing."""

from __future__ import annotations

import itertools
import re

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_smtp_server import (
    POLICY,
    content,
    feed,
    in_data,
    merged,
    parse_replies,
    pieces,
)
from zonemta.transport.smtp.dotstuff import DotStuffer
from zonemta.transport.smtp.errors import RemoteProtocolError
from zonemta.transport.smtp.reply import MAX_REPLY_LINE, Reply
from zonemta.transport.smtp.server import (
    NEED_DATA,
    ConnectionClosed,
    DataAbort,
    DataChunk,
    DataEnd,
    Event,
    Noop,
    ServerSettings,
    SMTPServerConnection,
    StartTLS,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Fragments that reach deep states quickly, mixed with arbitrary bytes.
TOKENS = [
    b"EHLO x\r\n", b"HELO x\r\n", b"MAIL FROM:<a@b.c>\r\n", b"MAIL FROM:<>", b" SIZE=12",
    b" SMTPUTF8", b" BODY=8BITMIME", b"RCPT TO:<d@e.f>\r\n", b"RCPT TO:<\xc3\xa9@e.f>\r\n",
    b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"STARTTLS\r\n", b"VRFY x\r\n",
    b"HELP\r\n", b"\r\n", b"\r", b"\n", b".", b"..", b".\r\n", b"\r\n.\r\n", b"x" * 40,
    b"Subject: y", b"\xff\xfe", b"<", b">", b'"', b"@", b":", b" ", b"\x00",
    b"AUTH PLAIN\r\n", b"AUTH PLAIN AHUAcA==\r\n", b"AUTH LOGIN\r\n", b"AUTH LOGIN dQ==\r\n",
    b"dQ==\r\n", b"AHUAcA==\r\n", b"*\r\n", b"=\r\n", b"AUTH X\r\n",
]  # fmt: skip
ANSWERS = [
    Reply(250, ("Ok",), "2.0.0"),
    Reply(451, ("later",), "4.3.0"),
    Reply(550, ("no",), "5.7.1"),
    Reply(421, ("bye",), "4.3.2"),
    Reply(235, ("Authentication successful",), "2.7.0"),
    Reply(535, ("Authentication credentials invalid",), "5.7.8"),
]

COMMANDS = [t for t in TOKENS if t.endswith(b"\r\n") and len(t) > 3]
BODY_BITS = [b"\r\n", b"\r", b"\n", b".", b"..", b"Subject: y", b"\r\n\r\n", b"x" * 40, b"\xc3"]
ENDINGS = [b"\r\n.\r\n", b".\r\n", b"\n.\n", b"\r\n.\n", b"\r.\r\n", b""]

_junk = st.sampled_from(TOKENS) | st.binary(max_size=20)
_body = st.lists(st.sampled_from(BODY_BITS) | st.binary(max_size=20), max_size=12).map(b"".join)
_transaction = st.tuples(
    st.sampled_from([b"MAIL FROM:<a@b.c>", b"MAIL FROM:<>", b"MAIL FROM:<a@b.c> SMTPUTF8"]),
    st.sampled_from([b"\r\n", b" SIZE=50\r\n", b" BODY=8BITMIME\r\n", b" X=1\r\n"]),
    st.lists(
        st.sampled_from([b"RCPT TO:<d@e.f>\r\n", b"RCPT TO:<\xc3\xa9@e.f>\r\n"]), max_size=3
    ).map(b"".join),
    st.sampled_from([b"DATA\r\n", b"DATA\n", b""]),
    _body,
    st.sampled_from(ENDINGS),
).map(b"".join)
# Whole sessions: a greeting, then transactions, commands and junk in any order.
sessions = st.tuples(
    st.sampled_from([b"EHLO x\r\n", b"HELO x\r\n", b""]),
    st.lists(_transaction | st.sampled_from(COMMANDS) | _junk, max_size=8).map(b"".join),
).map(b"".join)
smtpish = st.one_of(sessions, st.lists(_junk, max_size=40).map(b"".join))
inputs = st.one_of(st.binary(max_size=600), smtpish, sessions)
cut_lists = st.lists(st.integers(min_value=1, max_value=700), max_size=30)
server_settings = st.builds(
    ServerSettings,
    hostname=st.just("mx.test"),
    max_size=st.sampled_from([0, 30, 1000]),
    max_recipients=st.sampled_from([1, 3, 1000]),
    max_line_length=st.sampled_from([512, 2048]),
    max_header_size=st.sampled_from([0, 20, 1024]),
    starttls_available=st.booleans(),
    implicit_tls=st.booleans(),
    auth_available=st.booleans(),
    allow_insecure_auth=st.booleans(),
    max_errors=st.sampled_from([0, 1, 5]),
)

_REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][^\r\n]*\r\n")


def drive(
    conn: SMTPServerConnection,
    data: bytes,
    cuts: list[int],
    answers: list[Reply],
    sent: list[bytes] | None = None,
) -> tuple[list[Event], bytes]:
    """A well-behaved driver: feed pieces, answer policy from ``answers`` in turn, finish TLS.

    Returns the events and every byte sent. Stops at the first RemoteProtocolError (re-raised)
    or when the connection is closed.
    """
    cycle = itertools.cycle(answers)
    events: list[Event] = []
    sent = [] if sent is None else sent
    sent.append(conn.data_to_send())
    for piece in itertools.chain(pieces(data, cuts), [b""]):
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            sent.append(conn.data_to_send())
            if event is NEED_DATA:
                break
            assert isinstance(event, Event)
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events, b"".join(sent)
            if isinstance(event, POLICY):
                conn.respond(next(cycle))
                sent.append(conn.data_to_send())
            elif isinstance(event, StartTLS):
                conn.tls_started()
    raise AssertionError("EOF was fed but no ConnectionClosed came")


@FUZZ
@given(
    config=server_settings,
    data=inputs,
    cuts=cut_lists,
    answers=st.lists(st.sampled_from(ANSWERS), min_size=1, max_size=4),
)
def test_any_input_any_chunking_yields_events_or_remote_error(
    config: ServerSettings, data: bytes, cuts: list[int], answers: list[Reply]
) -> None:
    conn = SMTPServerConnection(config)
    output: list[bytes] = []
    try:
        events, _ = drive(conn, data, cuts, answers, output)
    except RemoteProtocolError as exc:
        assert exc.reply is not None and exc.reply.is_permanent
        events = []
    assert conn.closed
    assert events == [] or isinstance(events[-1], ConnectionClosed)
    # Output is always a sequence of well-formed replies, never a fragment.
    sent = b"".join(output) + conn.data_to_send()
    replies = parse_replies(sent)
    assert replies[0].code == 220
    assert all(_REPLY_LINE.fullmatch(line + b"\r\n") for line in sent.split(b"\r\n")[:-1])
    assert all(len(line) + 2 <= MAX_REPLY_LINE for line in sent.split(b"\r\n"))


@FUZZ
@given(
    config=server_settings,
    data=smtpish,
    cuts=cut_lists,
    answers=st.lists(st.sampled_from([*ANSWERS[:3], *ANSWERS[4:]]), min_size=1, max_size=3),
)
def test_chunking_does_not_change_meaning(
    config: ServerSettings, data: bytes, cuts: list[int], answers: list[Reply]
) -> None:
    """Whole, arbitrary pieces and byte by byte give the same events and the same replies.

    STARTTLS is off here: whether plaintext pipelined after it is seen before the handshake
    (an injection) depends on the chunking by nature.
    """
    config = attrs.evolve(config, starttls_available=False)
    outcomes = []
    for cut in ([], cuts, list(range(1, len(data)))):
        try:
            events, sent = drive(SMTPServerConnection(config), data, cut, answers)
            outcomes.append((meaning(events), sent))
        except RemoteProtocolError:
            outcomes.append(([], b"injection"))
    assert outcomes[0] == outcomes[1] == outcomes[2]


def meaning(events: list[Event]) -> list[Event]:
    """Events with content chunking erased, and without the partial content of an aborted body
    (how much of it came before the DataAbort depends on the chunking; the driver discards it).
    """
    out = merged(events)
    return [
        e
        for i, e in enumerate(out)
        if not (isinstance(e, DataChunk) and i + 1 < len(out) and isinstance(out[i + 1], DataAbort))
    ]


def normalise(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def dot_stuff(data: bytes) -> bytes:
    """A dot at the start of the data or after any line ending (CRLF, LF, CR) gets doubled."""
    return re.sub(rb"(\A|\r\n|\n|\r(?!\n))\.", rb"\1..", data)


@FUZZ
@given(
    body=st.lists(
        st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"x", b"\r\n.\r\n"])
        | st.binary(max_size=30),
        max_size=30,
    ).map(b"".join),
    cuts=cut_lists,
)
def test_stuffed_content_round_trips(body: bytes, cuts: list[int]) -> None:
    stuffed = dot_stuff(body)
    ending = b"" if stuffed.endswith(b"\r\n") or not stuffed else b"\r\n"
    wire = stuffed + ending + b".\r\nNOOP\r\n"
    conn = in_data()
    events = feed(conn, wire, cuts)
    assert content(events) == normalise(body + ending)
    assert [e for e in events if not isinstance(e, DataChunk)] == [DataEnd(), Noop()]


@FUZZ
@given(
    body=st.lists(
        st.sampled_from([b"\r\n", b".", b"..", b"x", b"\r\n.\r\n", b"\r\n..\r\n"])
        | st.binary(max_size=30).map(normalise),
        max_size=30,
    ).map(b"".join),
    cuts=cut_lists,
)
def test_round_trip_with_the_client_dot_stuffer(body: bytes, cuts: list[int]) -> None:
    """Our client's DotStuffer and this decoder are inverses on CRLF content."""
    stuffer = DotStuffer()
    wire = b"".join(stuffer.feed(piece) for piece in pieces(body, cuts)) + stuffer.finish()
    conn = in_data()
    events = feed(conn, wire + b"NOOP\r\n", cuts)
    expected = body if body.endswith(b"\r\n") or not body else body + b"\r\n"
    assert content(events) == expected
    assert [e for e in events if not isinstance(e, DataChunk)] == [DataEnd(), Noop()]

"""SMTPClientConnection, Extensions and plan_transaction: the sans-IO SMTP client."""

from __future__ import annotations

import itertools
import string
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zonemta.transport.smtp.client import (
    MAX_REPLY_LINE_LENGTH,
    MAX_REPLY_LINES,
    NEED_DATA,
    Extensions,
    RefusalReason,
    SMTPClientConnection,
    TransactionPlan,
    TransactionRefusal,
    check_address,
    plan_transaction,
)
from zonemta.transport.smtp.dotstuff import DotStuffer
from zonemta.transport.smtp.errors import LocalProtocolError, RemoteProtocolError
from zonemta.transport.smtp.reply import Reply

# --- helpers ----------------------------------------------------------------------------------


def expecting(count: int) -> SMTPClientConnection:
    """A fresh connection owed ``count`` replies: the greeting, then NOOPs."""
    conn = SMTPClientConnection()
    for _ in range(count - 1):
        conn.noop()
    assert conn.pending == count
    return conn


def drain(conn: SMTPClientConnection) -> list[Reply]:
    replies = []
    while isinstance(reply := conn.next_reply(), Reply):
        replies.append(reply)
    assert reply is NEED_DATA
    return replies


def feed(conn: SMTPClientConnection, chunks: Iterable[bytes]) -> list[Reply]:
    replies = []
    for chunk in chunks:
        conn.receive_data(chunk)
        replies.extend(drain(conn))
    return replies


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Non-empty pieces of ``data`` cut at ``cuts`` (an empty piece would mean EOF)."""
    points = sorted({min(cut, len(data)) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if a < b]


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def halves(data: bytes) -> list[bytes]:
    return [data[: len(data) // 2], data[len(data) // 2 :]]


CHUNKINGS: list[Callable[[bytes], list[bytes]]] = [whole, bytewise, halves]

EHLO_POSTFIX = (
    b"250-mail.example.org\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-VRFY\r\n"
    b"250-ETRN\r\n"
    b"250-STARTTLS\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-8BITMIME\r\n"
    b"250-DSN\r\n"
    b"250-SMTPUTF8\r\n"
    b"250 CHUNKING\r\n"
)
EHLO_GMAIL = (
    b"250-mx.google.com at your service, [203.0.113.7]\r\n"
    b"250-SIZE 157286400\r\n"
    b"250-8BITMIME\r\n"
    b"250-STARTTLS\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-PIPELINING\r\n"
    b"250-CHUNKING\r\n"
    b"250 SMTPUTF8\r\n"
)
EHLO_EXCHANGE = (
    b"250-EX01.corp.example.com Hello [198.51.100.4]\r\n"
    b"250-SIZE 37748736\r\n"
    b"250-PIPELINING\r\n"
    b"250-DSN\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-STARTTLS\r\n"
    b"250-X-ANONYMOUSTLS\r\n"
    b"250-AUTH NTLM LOGIN\r\n"
    b"250-X-EXPS GSSAPI NTLM\r\n"
    b"250-8BITMIME\r\n"
    b"250-BINARYMIME\r\n"
    b"250-CHUNKING\r\n"
    b"250-XRDST\r\n"
    b"250 XSHADOWREQUEST\r\n"
)


# --- reply parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_greeting(chunking: Callable[[bytes], list[bytes]]) -> None:
    conn = SMTPClientConnection()
    assert conn.pending == 1
    assert conn.next_reply() is NEED_DATA
    replies = feed(conn, chunking(b"220 mx.example.org ESMTP Postfix\r\n"))
    assert replies == [Reply(220, ("mx.example.org ESMTP Postfix",))]
    assert conn.pending == 0


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_multiline_reply(chunking: Callable[[bytes], list[bytes]]) -> None:
    conn = SMTPClientConnection()
    replies = feed(conn, chunking(EHLO_POSTFIX))
    assert len(replies) == 1
    assert replies[0].code == 250
    assert replies[0].lines[0] == "mail.example.org"
    assert replies[0].lines[-1] == "CHUNKING"
    assert len(replies[0].lines) == 11


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_trailing_bytes_stay_for_the_next_reply(chunking: Callable[[bytes], list[bytes]]) -> None:
    conn = expecting(3)
    packet = b"220 hi\r\n250-a\r\n250 b\r\n550 5.7.1 not yet compl"
    replies = feed(conn, chunking(packet))
    assert replies == [Reply(220, ("hi",)), Reply(250, ("a", "b"))]
    assert conn.pending == 1
    assert feed(conn, [b"ete\r\n"]) == [Reply(550, ("not yet complete",), "5.7.1")]
    assert conn.pending == 0


def test_a_partial_reply_waits_for_the_rest() -> None:
    conn = expecting(2)
    assert feed(conn, [b"220 hi\r\n250-a\r\n25"]) == [Reply(220, ("hi",))]
    assert conn.pending == 1
    assert feed(conn, [b"0 b\r\n"]) == [Reply(250, ("a", "b"))]


@pytest.mark.parametrize(
    ("wire", "reply"),
    [
        (b"550 5.1.1 User unknown\r\n", Reply(550, ("User unknown",), "5.1.1")),
        (
            b"452-4.2.2 The email account is over quota.\r\n452 4.2.2 Try again later\r\n",
            Reply(452, ("The email account is over quota.", "Try again later"), "4.2.2"),
        ),
        (b"250 2.0.0 Ok: queued as 4Xb\r\n", Reply(250, ("Ok: queued as 4Xb",), "2.0.0")),
        # An enhanced code of another class is text, not an enhanced code.
        (b"250 5.1.1 odd\r\n", Reply(250, ("5.1.1 odd",))),
        (b"250\r\n", Reply(250, ("",))),
        (b"250 \r\n", Reply(250, ("",))),
        (b"250-\r\n250 last\r\n", Reply(250, ("", "last"))),
        # Bare LF line endings are tolerated in replies (as smtplib and Postfix do).
        (b"250-a\n250 b\n", Reply(250, ("a", "b"))),
        # Undecodable text is kept, replaced, rather than failing the delivery.
        (b"250 caf\xe9\r\n", Reply(250, ("caf\ufffd",))),
    ],
)
def test_reply_forms(wire: bytes, reply: Reply) -> None:
    for chunking in CHUNKINGS:
        assert feed(expecting(1), chunking(wire)) == [reply]


@pytest.mark.parametrize(
    "wire",
    [
        b"25 x\r\n",
        b"2500 x\r\n",
        b"250-a\r\n251 b\r\n",
        b"250-a\r\n550 b\r\n",
        b"hello there\r\n",
        b"\r\n",
        b"abc x\r\n",
        b"250_x\r\n",
        b"199 too low\r\n",
        b"600 too high\r\n",
        b"000 zero\r\n",
        b"250 bare\rcr\r\n",
        b" 250 x\r\n",
        b"\xd9\xa2\xd9\xa5\xd9\xa0 x\r\n",  # Arabic-Indic digits are not digits here
    ],
)
def test_malformed_replies_are_remote_errors(wire: bytes) -> None:
    for chunking in CHUNKINGS:
        conn = expecting(2)
        with pytest.raises(RemoteProtocolError):
            feed(conn, chunking(wire))
        # The connection stays broken.
        with pytest.raises(RemoteProtocolError):
            conn.next_reply()


def test_bare_cr_inside_a_reply_line() -> None:
    with pytest.raises(RemoteProtocolError, match="bare CR"):
        feed(expecting(1), [b"250 ok\rMAIL FROM:<x>\r\n"])


def test_line_length_limit() -> None:
    longest = b"250 " + b"x" * (MAX_REPLY_LINE_LENGTH - 4) + b"\r\n"
    assert feed(expecting(1), [longest])[0].lines == ("x" * (MAX_REPLY_LINE_LENGTH - 4),)
    too_long = b"250 " + b"x" * (MAX_REPLY_LINE_LENGTH - 3) + b"\r\n"
    with pytest.raises(RemoteProtocolError, match="longer"):
        feed(expecting(1), [too_long])


def test_endless_line_without_newline_is_refused_early() -> None:
    conn = expecting(1)
    conn.receive_data(b"250 " + b"x" * MAX_REPLY_LINE_LENGTH)
    with pytest.raises(RemoteProtocolError, match="longer"):
        conn.next_reply()


def test_line_count_limit() -> None:
    conn = expecting(1)
    conn.receive_data(b"250-x\r\n" * (MAX_REPLY_LINES - 1) + b"250 end\r\n")
    assert len(drain(conn)[0].lines) == MAX_REPLY_LINES
    conn = expecting(1)
    conn.receive_data(b"250-x\r\n" * MAX_REPLY_LINES)
    with pytest.raises(RemoteProtocolError, match="lines"):
        conn.next_reply()


@pytest.mark.parametrize(
    "partial", [b"2", b"250", b"250 no line end", b"250-a\r\n", b"250-a\r\n25"]
)
def test_eof_mid_reply(partial: bytes) -> None:
    conn = expecting(1)
    conn.receive_data(partial)
    assert conn.next_reply() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed"):
        conn.next_reply()


def test_eof_while_a_reply_is_outstanding() -> None:
    conn = expecting(1)
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="greeting"):
        conn.next_reply()


def test_eof_when_nothing_is_outstanding() -> None:
    conn = SMTPClientConnection()
    assert feed(conn, [b"220 hi\r\n"])
    conn.quit()
    assert feed(conn, [b"221 bye\r\n", b""]) == [Reply(221, ("bye",))]
    assert conn.next_reply() is NEED_DATA
    conn.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_unsolicited_reply() -> None:
    conn = SMTPClientConnection()
    feed(conn, [b"220 hi\r\n"])
    conn.receive_data(b"250 nobody asked\r\n")
    with pytest.raises(RemoteProtocolError, match="unsolicited"):
        conn.next_reply()


def test_expect_greeting_once() -> None:
    conn = SMTPClientConnection()
    conn.expect_greeting()  # already expected by the constructor: no second expectation
    assert conn.pending == 1
    feed(conn, [b"220 hi\r\n"])
    with pytest.raises(LocalProtocolError):
        conn.expect_greeting()
    conn.starttls()
    feed(conn, [b"220 go ahead\r\n"])
    conn.tls_started()
    with pytest.raises(LocalProtocolError):
        conn.expect_greeting()  # no second greeting after TLS either


# --- commands ---------------------------------------------------------------------------------


def test_command_bytes() -> None:
    conn = SMTPClientConnection()
    assert conn.ehlo("relay.example.net") == b"EHLO relay.example.net\r\n"
    assert conn.helo("[192.0.2.1]") == b"HELO [192.0.2.1]\r\n"
    assert conn.starttls() == b"STARTTLS\r\n"
    assert conn.mail("") == b"MAIL FROM:<>\r\n"
    assert conn.mail("a@example.com", size=1234, body_8bit=True) == (
        b"MAIL FROM:<a@example.com> SIZE=1234 BODY=8BITMIME\r\n"
    )
    assert conn.mail("a@example.com", size=0) == b"MAIL FROM:<a@example.com> SIZE=0\r\n"
    assert conn.rcpt("b@example.org") == b"RCPT TO:<b@example.org>\r\n"
    assert conn.data() == b"DATA\r\n"
    assert conn.rset() == b"RSET\r\n"
    assert conn.noop() == b"NOOP\r\n"
    assert conn.quit() == b"QUIT\r\n"
    assert conn.pending == 12  # the greeting and eleven commands


def test_smtputf8_addresses() -> None:
    conn = SMTPClientConnection()
    assert conn.mail("josé@exämple.com", smtputf8=True) == (
        "MAIL FROM:<josé@exämple.com> SMTPUTF8\r\n".encode()
    )
    assert conn.rcpt("用户@例子.广告") == "RCPT TO:<用户@例子.广告>\r\n".encode()
    conn.rset()
    with pytest.raises(LocalProtocolError, match="SMTPUTF8"):
        conn.rcpt("用户@例子.广告")
    with pytest.raises(LocalProtocolError, match="SMTPUTF8"):
        conn.mail("josé@example.com")


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.mail("a@example.com\r\nRCPT TO:<victim@example.org>"),
        lambda c: c.mail("a@example.com\n"),
        lambda c: c.mail("a@example.com> SIZE=1"),
        lambda c: c.mail("<a@example.com"),
        lambda c: c.mail("a\0@example.com"),
        lambda c: c.mail("a@example.com", size=-1),
        lambda c: c.rcpt("b@example.org\rDATA"),
        lambda c: c.rcpt(""),
        lambda c: c.ehlo("relay.example.net\r\nMAIL FROM:<x>"),
        lambda c: c.ehlo(""),
        lambda c: c.ehlo("two words"),
        lambda c: c.helo("héllo.example"),
    ],
)
def test_unsafe_arguments_are_refused(call: Callable[[SMTPClientConnection], bytes]) -> None:
    conn = SMTPClientConnection()
    with pytest.raises(LocalProtocolError):
        call(conn)
    assert conn.pending == 1  # nothing was recorded as sent


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_pipelined_group(chunking: Callable[[bytes], list[bytes]]) -> None:
    conn = SMTPClientConnection()
    feed(conn, [b"220 hi\r\n"])
    wire = (
        conn.mail("a@example.com", size=10)
        + conn.rcpt("b@example.org")
        + conn.rcpt("c@example.org")
        + conn.data()
    )
    assert wire.count(b"\r\n") == 4
    assert conn.pending == 4
    packet = (
        b"250 2.1.0 Ok\r\n"
        b"250 2.1.5 Ok\r\n"
        b"550-5.1.1 No such user\r\n550 5.1.1 here\r\n"
        b"354 End data with <CR><LF>.<CR><LF>\r\n"
    )
    replies = feed(conn, chunking(packet))
    assert [r.code for r in replies] == [250, 250, 550, 354]
    assert replies[2].enhanced == "5.1.1"
    assert replies[2].lines == ("No such user", "here")
    assert conn.pending == 0

    stuffer = DotStuffer()
    body = stuffer.feed(b"Subject: x\r\n\r\n.dot\r\n") + stuffer.finish()
    assert body == b"Subject: x\r\n\r\n..dot\r\n.\r\n"
    conn.end_data()
    assert conn.pending == 1
    assert feed(conn, [b"250 2.0.0 Ok: queued as ABC\r\n"]) == [
        Reply(250, ("Ok: queued as ABC",), "2.0.0")
    ]


def test_end_data_needs_a_354() -> None:
    conn = SMTPClientConnection()
    feed(conn, [b"220 hi\r\n"])
    with pytest.raises(LocalProtocolError):
        conn.end_data()
    conn.data()
    with pytest.raises(LocalProtocolError):
        conn.end_data()  # the reply to DATA was not read yet
    feed(conn, [b"554 5.5.1 No valid recipients\r\n"])
    with pytest.raises(LocalProtocolError, match="refused"):
        conn.end_data()
    conn.data()
    feed(conn, [b"354 go\r\n"])
    conn.end_data()
    with pytest.raises(LocalProtocolError):
        conn.end_data()  # twice


# --- STARTTLS ---------------------------------------------------------------------------------


def test_starttls_then_fresh_ehlo() -> None:
    conn = SMTPClientConnection()
    feed(conn, [b"220 hi\r\n"])
    conn.starttls()
    assert feed(conn, [b"220 2.0.0 Ready to start TLS\r\n"])[0].code == 220
    conn.tls_started()
    assert conn.pending == 0
    assert conn.next_reply() is NEED_DATA
    conn.ehlo("relay.example.net")
    assert feed(conn, bytewise(EHLO_GMAIL))[0].lines[-1] == "SMTPUTF8"


@pytest.mark.parametrize(
    "packet",
    [
        b"220 Ready to start TLS\r\n250 injected\r\n",
        b"220 Ready to start TLS\r\nX",
        b"220 Ready to start TLS\r\n\r\n",
    ],
)
def test_starttls_injection_is_detected(packet: bytes) -> None:
    conn = SMTPClientConnection()
    feed(conn, [b"220 hi\r\n"])
    conn.starttls()
    conn.receive_data(packet)
    reply = conn.next_reply()
    assert isinstance(reply, Reply)
    assert reply.code == 220
    with pytest.raises(RemoteProtocolError, match="injection"):
        conn.tls_started()
    with pytest.raises(RemoteProtocolError):
        conn.next_reply()


def test_tls_started_needs_a_220_to_starttls() -> None:
    conn = SMTPClientConnection()
    with pytest.raises(LocalProtocolError):
        conn.tls_started()  # greeting not even read
    feed(conn, [b"220 hi\r\n"])
    with pytest.raises(LocalProtocolError):
        conn.tls_started()  # last reply was the greeting, not STARTTLS
    conn.starttls()
    with pytest.raises(LocalProtocolError):
        conn.tls_started()  # reply not read yet
    feed(conn, [b"454 4.7.0 TLS not available\r\n"])
    with pytest.raises(LocalProtocolError, match="refused"):
        conn.tls_started()


# --- Extensions -------------------------------------------------------------------------------


def parse_reply(wire: bytes) -> Reply:
    (reply,) = feed(expecting(1), [wire])
    return reply


def test_extensions_postfix() -> None:
    assert Extensions.from_ehlo(parse_reply(EHLO_POSTFIX)) == Extensions(
        pipelining=True,
        size=10240000,
        eightbitmime=True,
        smtputf8=True,
        starttls=True,
        enhancedstatuscodes=True,
        chunking=True,
    )


def test_extensions_gmail() -> None:
    ext = Extensions.from_ehlo(parse_reply(EHLO_GMAIL))
    assert ext == Extensions(
        pipelining=True,
        size=157286400,
        eightbitmime=True,
        smtputf8=True,
        starttls=True,
        enhancedstatuscodes=True,
        chunking=True,
    )


def test_extensions_exchange() -> None:
    ext = Extensions.from_ehlo(parse_reply(EHLO_EXCHANGE))
    assert ext == Extensions(
        pipelining=True,
        size=37748736,
        eightbitmime=True,
        smtputf8=False,
        starttls=True,
        enhancedstatuscodes=True,
        chunking=True,
        auth=frozenset({"NTLM", "LOGIN"}),
    )


def test_extensions_odd_forms() -> None:
    wire = (
        b"250-host.example says hello\r\n"
        b"250-pipelining\r\n"
        b"250-Size\r\n"
        b"250-AUTH=LOGIN PLAIN\r\n"
        b"250-auth cram-md5 plain\r\n"
        b"250-\r\n"
        b"250 8bitmime\r\n"
    )
    assert Extensions.from_ehlo(parse_reply(wire)) == Extensions(
        pipelining=True,
        size=0,
        eightbitmime=True,
        auth=frozenset({"LOGIN", "PLAIN", "CRAM-MD5"}),
    )
    assert Extensions.from_ehlo(parse_reply(b"250-h\r\n250 SIZE lots\r\n")).size == 0
    # The first line is the greeting text, never a keyword.
    assert Extensions.from_ehlo(parse_reply(b"250 PIPELINING\r\n")) == Extensions()


def test_extensions_from_a_failed_ehlo_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Extensions.from_ehlo(Reply(502, ("5.5.2 Error: command not recognized",)))


# --- plan_transaction -------------------------------------------------------------------------


GMAIL = Extensions(pipelining=True, size=1000, eightbitmime=True, smtputf8=True)
OLD = Extensions()


def test_plan_uses_what_is_offered() -> None:
    assert plan_transaction(GMAIL, size=10, body_8bit=True, smtputf8=True) == TransactionPlan(
        pipelining=True, size=10, body_8bit=True, smtputf8=True
    )
    assert plan_transaction(OLD, size=10, body_8bit=True, smtputf8=False) == TransactionPlan(
        pipelining=False, size=None, body_8bit=False, smtputf8=False
    )
    unlimited = Extensions(size=0)
    plan = plan_transaction(unlimited, size=10**9, body_8bit=False, smtputf8=False)
    assert plan == TransactionPlan(pipelining=False, size=10**9, body_8bit=False, smtputf8=False)
    assert plan_transaction(GMAIL, size=1000, body_8bit=False, smtputf8=False) == (
        TransactionPlan(pipelining=True, size=1000, body_8bit=False, smtputf8=False)
    )


def test_plan_refuses_smtputf8_to_a_server_without_it() -> None:
    refusal = plan_transaction(OLD, size=10, body_8bit=False, smtputf8=True)
    assert isinstance(refusal, TransactionRefusal)
    assert refusal.reason is RefusalReason.SMTPUTF8_UNSUPPORTED
    assert refusal.reply.is_permanent
    assert refusal.reply.enhanced == "5.6.7"


def test_plan_refuses_too_big() -> None:
    refusal = plan_transaction(GMAIL, size=1001, body_8bit=False, smtputf8=False)
    assert isinstance(refusal, TransactionRefusal)
    assert refusal.reason is RefusalReason.MESSAGE_TOO_BIG
    assert refusal.reply.code == 552
    assert refusal.reply.enhanced == "5.3.4"
    with pytest.raises(LocalProtocolError):
        plan_transaction(GMAIL, size=-1, body_8bit=False, smtputf8=False)


# --- fuzzing ----------------------------------------------------------------------------------


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=12))
def test_fuzz_any_bytes_give_replies_or_remote_errors(data: bytes, cuts: list[int]) -> None:
    conn = expecting(50)
    try:
        replies = feed(conn, [*split_at(data, cuts), b""])
    except RemoteProtocolError:
        return
    assert all(isinstance(reply, Reply) for reply in replies)
    assert conn.pending == 50 - len(replies)


_text_line = st.text(alphabet=string.ascii_letters + string.digits + " .:,", max_size=30).map(
    lambda s: s.strip() if s[:1].isalpha() else "x" + s.strip()
)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    code = draw(st.integers(200, 599))
    enhanced = None
    if code // 100 != 3 and draw(st.booleans()):
        enhanced = f"{code // 100}.{draw(st.integers(0, 7))}.{draw(st.integers(0, 99))}"
    return Reply(code, tuple(draw(st.lists(_text_line, min_size=1, max_size=4))), enhanced)


@given(sent=st.lists(replies(), min_size=1, max_size=5), data=st.data())
def test_fuzz_round_trip(sent: list[Reply], data: st.DataObject) -> None:
    wire = b"".join(reply.to_bytes() for reply in sent)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=10))
    conn = expecting(len(sent))
    assert feed(conn, split_at(wire, cuts)) == sent
    assert conn.pending == 0


@pytest.mark.parametrize("unsafe", ["\r", "\n", "\0", "<", ">"])
def test_an_address_with_a_character_that_breaks_the_command_is_refused(unsafe: str) -> None:
    for address in (f"a{unsafe}b@x.test", f"{unsafe}a@x.test", f"a@x.test{unsafe}"):
        with pytest.raises(LocalProtocolError, match="unsafe character in RCPT address"):
            check_address(address, utf8=True, what="RCPT")


@given(st.text(alphabet=st.characters(blacklist_characters="\r\n\0<>")))
def test_an_address_without_them_is_taken_as_it_is(address: str) -> None:
    assert check_address(address, utf8=True, what="MAIL") is address

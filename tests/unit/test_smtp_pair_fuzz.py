"""Hypothesis: our client session and our server paired in memory, everything random.

Random envelopes, contents cut into random chunks, random piece sizes on both byte streams,
random refusals by the server's policy (421 included), with or without EHLO, PIPELINING and
STARTTLS. Invariants: no exception at all (both sides behave); every recipient gets exactly
one outcome, the one a model of the policy predicts; the server delivers exactly the
transactions the client reports accepted, to exactly their accepted recipients, with the
content intact.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_smtp_pair import (
    QUEUED,
    Delivered,
    Pair,
    ServerPeer,
    refusing,
    sent_body,
)
from zonemta.transport.smtp.client_events import (
    Envelope,
    RecipientStatus,
    Stage,
    TransactionResult,
    UpgradeTLS,
)
from zonemta.transport.smtp.reply import Reply
from zonemta.transport.smtp.server import DataEnd, Event, MailFrom, RcptTo

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

OK = Reply(250, ("Ok",), "2.0.0")
ANSWERS = [
    OK, OK, OK, OK,
    Reply(450, ("mailbox busy",), "4.2.1"),
    Reply(451, ("later",), "4.3.0"),
    Reply(452, ("too many recipients",), "4.5.3"),
    Reply(550, ("no such user",), "5.1.1"),
    Reply(553, ("not allowed",), "5.7.1"),
    Reply(421, ("shutting down",), "4.3.2"),
]  # fmt: skip
SENDERS = ["", "s@origin.test", "ü@origin.test"]
RECIPIENTS = ["a@x.test", "b@x.test", "c@y.test", "d@y.test", "é@x.test"]
BODY_BITS = [
    b"\r\n",
    b".",
    b"..",
    b".\r\n",
    b"\r\n.\r\n",
    b"x" * 30,
    b"Subject: y\r\n",
    b"\r\n\r\n",
]

bodies = st.lists(
    st.sampled_from(BODY_BITS)
    | st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"\r\n")),
    max_size=20,
).map(b"".join)


@st.composite
def transactions(draw: st.DrawFn) -> tuple[Envelope, list[bytes]]:
    sender = draw(st.sampled_from(SENDERS))
    recipients = tuple(draw(st.lists(st.sampled_from(RECIPIENTS), min_size=1, max_size=5)))
    body = draw(bodies)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=6))))
    content = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if a < b]
    utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
    return Envelope(sender, recipients, len(body), smtputf8=utf8), content


Outcome = tuple[str, RecipientStatus, Stage, int]


def refused(recipient: str, stage: Stage, reply: Reply) -> Outcome:
    status = RecipientStatus.PERM_FAILED if reply.is_permanent else RecipientStatus.TEMP_FAILED
    return recipient, status, stage, reply.code


def expected(
    envelope: Envelope, answers: dict[str, Reply], data: Reply, extended: bool
) -> tuple[list[Outcome], bool]:
    """A model of the outcomes the policy must lead to, and whether the server closes."""
    recipients = envelope.recipients
    if envelope.smtputf8 and not extended:  # after HELO nothing is offered: refused locally
        return [(r, RecipientStatus.PERM_FAILED, Stage.MAIL, 553) for r in recipients], False
    mail = answers.get(envelope.mail_from, OK)
    if not mail.is_positive:
        return [refused(r, Stage.MAIL, mail) for r in recipients], mail.code == 421
    rcpt = [answers.get(r, OK) for r in recipients]
    closing = next((reply for reply in rcpt if reply.code == 421), None)
    if closing is not None:
        # The server closes at that RCPT: who was refused before keeps the refusal, everyone
        # else (accepted before it, it, and those never answered) gets the 421.
        first = rcpt.index(closing)
        return [
            refused(r, Stage.RCPT, reply if i < first and not reply.is_positive else closing)
            for i, (r, reply) in enumerate(zip(recipients, rcpt, strict=True))
        ], True
    if not any(reply.is_positive for reply in rcpt):
        return [
            refused(r, Stage.RCPT, reply) for r, reply in zip(recipients, rcpt, strict=True)
        ], False
    return [
        (
            refused(r, Stage.RCPT, reply)
            if not reply.is_positive
            else (r, RecipientStatus.ACCEPTED, Stage.FINAL, data.code)
            if data.is_positive
            else refused(r, Stage.FINAL, data)
        )
        for r, reply in zip(recipients, rcpt, strict=True)
    ], data.code == 421


@FUZZ
@given(
    work=st.lists(transactions(), min_size=1, max_size=3),
    refusals=st.dictionaries(st.sampled_from(SENDERS + RECIPIENTS), st.sampled_from(ANSWERS)),
    data_answers=st.lists(st.sampled_from([QUEUED, *ANSWERS[4:]]), min_size=1, max_size=3),
    refuse_ehlo=st.booleans(),
    pipelining=st.booleans(),
    starttls=st.booleans(),
    to_server=st.lists(st.integers(1, 40), max_size=8),
    to_client=st.lists(st.integers(1, 40), max_size=8),
)
def test_paired_sessions_agree(
    work: list[tuple[Envelope, list[bytes]]],
    refusals: dict[str, Reply],
    data_answers: list[Reply],
    refuse_ehlo: bool,
    pipelining: bool,
    starttls: bool,
    to_server: list[int],
    to_client: list[int],
) -> None:
    answers = iter(data_answers * len(work))
    current_data = [QUEUED]

    def data_policy(event: Event) -> Reply:
        if isinstance(event, DataEnd):
            return current_data[0]
        assert isinstance(event, (MailFrom, RcptTo))
        return refusing(refusals)(event)

    peer = ServerPeer(data_policy, refuse_ehlo=refuse_ehlo, pipelining=pipelining)
    pair = Pair(peer, to_server=to_server, to_client=to_client)
    ready = pair.ready()
    assert ready.extended is not refuse_ehlo
    if starttls and ready.extensions.starttls:
        pair.client.start_tls()
        assert isinstance(pair.event(), UpgradeTLS)
        pair.client.tls_started()
        ready = pair.ready()
        assert ready.tls
    delivered: list[Delivered] = []
    for envelope, content in work:
        current_data[0] = next(answers)
        result: TransactionResult = pair.transaction(envelope, content)
        got = [(o.recipient, o.status, o.stage, o.reply.code) for o in result.outcomes]
        want, closes = expected(envelope, refusals, current_data[0], ready.extended)
        assert got == want
        if result.accepted:
            delivered.append(Delivered(envelope.mail_from, result.accepted, sent_body(content)))
        assert pair.client.closed is closes
        if closes:
            break
    assert peer.delivered == delivered
    if pair.client.usable:
        closed = pair.quit()
        assert closed.reply is not None and closed.reply.code == 221
    assert pair.server.closed

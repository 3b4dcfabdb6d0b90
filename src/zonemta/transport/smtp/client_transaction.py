"""One mail transaction of the client session: its commands, its replies, its outcomes.

:class:`TransactionProgress` is the session's private record of a transaction in progress
(mutable; the session owns exactly one at a time). It formats the MAIL/RCPT/DATA commands
through the command/reply layer, pipelined (RFC 2920: the whole group at once) or lock-step
(each command after the previous reply), classifies every reply into the session's next
trigger, and builds the :class:`TransactionResult` with one outcome per recipient.
"""

from __future__ import annotations

import collections

from zonemta.transport.smtp.client import SMTPClientConnection, check_address
from zonemta.transport.smtp.client_events import (
    Envelope,
    RecipientOutcome,
    RecipientStatus,
    Stage,
    TransactionResult,
)
from zonemta.transport.smtp.client_plan import (
    Extensions,
    TransactionPlan,
    TransactionRefusal,
    plan_transaction,
)
from zonemta.transport.smtp.client_states import ClientTrigger
from zonemta.transport.smtp.errors import LocalProtocolError, RemoteProtocolError
from zonemta.transport.smtp.reply import Reply

__all__ = ["CLOSING", "TransactionProgress"]

# RFC 5321 3.8: the server is closing the connection; nothing more will be answered.
CLOSING = 421
START_MAIL_INPUT = 354

T = ClientTrigger


class TransactionProgress:
    """The commands sent and the replies read for one transaction."""

    __slots__ = (
        "closing",
        "conn",
        "data",
        "due",
        "envelope",
        "final",
        "mail",
        "plan",
        "rcpt",
        "sent",
    )

    def __init__(
        self, envelope: Envelope, plan: TransactionPlan, conn: SMTPClientConnection
    ) -> None:
        self.envelope = envelope
        self.plan = plan
        self.conn = conn
        self.due: collections.deque[Stage] = collections.deque()  # replies still to come
        self.sent = 0  # RCPT commands sent
        self.mail: Reply | None = None
        self.rcpt: list[Reply] = []
        self.data: Reply | None = None
        self.final: Reply | None = None
        self.closing: tuple[Stage, Reply] | None = None  # where the server said 421

    @classmethod
    def begin(
        cls, envelope: Envelope, extensions: Extensions, conn: SMTPClientConnection
    ) -> TransactionProgress | TransactionResult:
        """Plan the transaction against what the server offers. A message it cannot take
        (SMTPUTF8 missing, over its SIZE) is a finished result: every recipient refused at
        MAIL with the locally made 5xx. Raises ``LocalProtocolError`` for an unsafe address
        before anything is formatted."""
        plan = plan_transaction(
            extensions,
            size=envelope.size,
            body_8bit=envelope.body_8bit,
            smtputf8=envelope.smtputf8,
        )
        if isinstance(plan, TransactionRefusal):
            outcomes = tuple(
                RecipientOutcome.refused(r, Stage.MAIL, plan.reply) for r in envelope.recipients
            )
            return TransactionResult(envelope, outcomes, plan.reply)
        check_address(envelope.mail_from, utf8=plan.smtputf8, what="sender")
        for recipient in envelope.recipients:
            check_address(recipient, utf8=plan.smtputf8, what="recipient")
        return cls(envelope, plan, conn)

    def start(self) -> list[bytes]:
        """The first commands: MAIL, and when pipelining every RCPT and DATA with it."""
        envelope, plan = self.envelope, self.plan
        out = [
            self.conn.mail(
                envelope.mail_from,
                size=plan.size,
                body_8bit=plan.body_8bit,
                smtputf8=plan.smtputf8,
            )
        ]
        self.due.append(Stage.MAIL)
        if plan.pipelining:
            out += [self._rcpt() for _ in envelope.recipients]
            out.append(self._data())
        return out

    def on_reply(self, reply: Reply, out: list[bytes]) -> ClientTrigger:
        """Record the reply due and classify it into the session's trigger, appending the
        next lock-step command to ``out``: REPLY (more to read), GO_AHEAD (send the content),
        DISCARD (354 but nobody accepted), ABANDON (refused: reset) or CLOSE (421)."""
        stage = self.due.popleft()
        if stage is Stage.MAIL:
            self.mail = reply
        elif stage is Stage.RCPT:
            self.rcpt.append(reply)
        else:
            self.data = reply
        if reply.code == CLOSING:
            self.closing = (stage, reply)
            return T.CLOSE
        if stage is Stage.DATA:
            if not reply.is_intermediate:
                return T.ABANDON
            if reply.code != START_MAIL_INPUT:  # e.g. a 334: no server means that
                raise RemoteProtocolError(f"DATA answered with {reply}, not 354")
            return T.GO_AHEAD if self.any_accepted else T.DISCARD
        if self.due:  # pipelined: the rest of the group is answered next
            return T.REPLY
        # Lock-step: the next command, or the end of a refused transaction.
        if not (self.mail is not None and self.mail.is_positive):
            return T.ABANDON
        if self.sent < len(self.envelope.recipients):
            out.append(self._rcpt())
        elif self.any_accepted:
            out.append(self._data())
        else:
            return T.ABANDON
        return T.REPLY

    def _rcpt(self) -> bytes:
        command = self.conn.rcpt(self.envelope.recipients[self.sent])
        self.sent += 1
        self.due.append(Stage.RCPT)
        return command

    def _data(self) -> bytes:
        self.due.append(Stage.DATA)
        return self.conn.data()

    @property
    def any_accepted(self) -> bool:
        """MAIL and at least one RCPT were accepted."""
        mail = self.mail
        if mail is None or not 200 <= mail.code < 300:  # Reply.is_positive, without a call
            return False
        return any([200 <= reply.code < 300 for reply in self.rcpt])

    def result(self) -> TransactionResult:
        """One outcome per recipient from the replies read (see RecipientOutcome.stage).

        Raises ``LocalProtocolError`` when called before the transaction ended.
        """
        mail = self.mail
        if mail is None:
            raise LocalProtocolError("a transaction ended before its MAIL reply")
        outcomes = tuple([self._outcome(i, mail) for i in range(len(self.envelope.recipients))])
        return TransactionResult(self.envelope, outcomes, mail, self.data, self.final)

    def _outcome(self, index: int, mail: Reply) -> RecipientOutcome:
        recipient = self.envelope.recipients[index]
        if not mail.is_positive:
            return RecipientOutcome.refused(recipient, Stage.MAIL, mail)
        if index < len(self.rcpt) and not self.rcpt[index].is_positive:
            return RecipientOutcome.refused(recipient, Stage.RCPT, self.rcpt[index])
        if index >= len(self.rcpt) or self.data is None:
            # Never answered, or no DATA reply: the server closed the connection (421).
            if self.closing is None:
                raise LocalProtocolError(f"no reply decided recipient {recipient!r}")
            return RecipientOutcome.refused(recipient, *self.closing)
        if not self.data.is_intermediate:
            return RecipientOutcome.refused(recipient, Stage.DATA, self.data)
        final = self.final
        if final is None:
            raise LocalProtocolError(f"no final reply for recipient {recipient!r}")
        if final.is_positive:
            return RecipientOutcome(recipient, RecipientStatus.ACCEPTED, Stage.FINAL, final)
        return RecipientOutcome.refused(recipient, Stage.FINAL, final)

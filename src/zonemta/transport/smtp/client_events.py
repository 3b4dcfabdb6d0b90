"""Values of the client transaction object: what it is asked to send, what it reports.

The driver hands :class:`SMTPClientSession` an :class:`Envelope` and gets back, through
``next_event()``, the events below; a finished transaction is one :class:`TransactionResult`
with one :class:`RecipientOutcome` per recipient. :class:`Stage` names the step a reply (or a
transport failure) belongs to, :class:`Wait` the RFC 5321 4.5.3.2 timeout that applies to
what the session waits for. All frozen; constructors validate (``LocalProtocolError``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from zonemta.identity_enum import IdentityEnum
from zonemta.transport.smtp.client_plan import Extensions
from zonemta.transport.smtp.errors import LocalProtocolError
from zonemta.transport.smtp.reply import Reply

__all__ = [
    "RFC5321_TIMEOUTS",
    "ClientEvent",
    "Closed",
    "Envelope",
    "Ready",
    "RecipientOutcome",
    "RecipientStatus",
    "SendBody",
    "SessionRefused",
    "Stage",
    "TlsRefused",
    "TransactionDone",
    "TransactionResult",
    "UpgradeTLS",
    "Wait",
]


class Stage(IdentityEnum):
    """The step of a session a reply or a failure belongs to (``CONNECT``: the driver's)."""

    CONNECT = "connect"
    GREETING = "greeting"
    EHLO = "ehlo"  # EHLO, and HELO after it
    STARTTLS = "starttls"
    MAIL = "mail"  # also RSET after a refused transaction
    RCPT = "rcpt"
    DATA = "data"
    BODY = "body"  # the content going out, after 354
    FINAL = "final"  # the reply to the end of data (and to QUIT)


class Wait(IdentityEnum):
    """Which timeout applies to what the session waits for (RFC 5321 4.5.3.2)."""

    GREETING = "greeting"  # 4.5.3.2.1 initial 220
    COMMAND = "command"  # EHLO, HELO, STARTTLS, RSET, QUIT: no RFC value, MAIL's is used
    MAIL = "mail"  # 4.5.3.2.2
    RCPT = "rcpt"  # 4.5.3.2.3
    DATA_INITIATION = "data_initiation"  # 4.5.3.2.4: the 354
    DATA_BLOCK = "data_block"  # 4.5.3.2.5: each send of content
    DATA_TERMINATION = "data_termination"  # 4.5.3.2.6: the reply to the end of data


# RFC 5321 4.5.3.2, in seconds: the minimums the RFC asks a client to wait. The driver maps
# them onto its configured timeouts (transport/outbound.py ``Timeouts``).
RFC5321_TIMEOUTS: Mapping[Wait, float] = {
    Wait.GREETING: 300.0,
    Wait.COMMAND: 300.0,
    Wait.MAIL: 300.0,
    Wait.RCPT: 300.0,
    Wait.DATA_INITIATION: 120.0,
    Wait.DATA_BLOCK: 180.0,
    Wait.DATA_TERMINATION: 600.0,
}


def _recipients(_instance: object, _attribute: object, value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple) or not value:
        raise LocalProtocolError("an envelope needs a non-empty tuple of recipients")
    for address in value:
        if not isinstance(address, str) or not address:
            raise LocalProtocolError(f"empty recipient address in {value!r}")


def _size(_instance: object, _attribute: object, value: int) -> None:
    if value < 0:
        raise LocalProtocolError(f"negative message size: {value}")


@attrs.frozen
class Envelope:
    """One mail transaction: a sender ("" for the null reverse path), one or more recipients,
    the content's size (for SIZE=) and whether it needs 8BITMIME / SMTPUTF8."""

    mail_from: str
    recipients: tuple[str, ...] = attrs.field(validator=_recipients)
    size: int = attrs.field(validator=_size)
    body_8bit: bool = False
    smtputf8: bool = False


class RecipientStatus(enum.Enum):
    """Where one recipient of a transaction ended."""

    ACCEPTED = "accepted"  # the reply to the end of data was 2xx
    TEMP_FAILED = "temp_failed"  # refused with anything but 5xx, or the server closed (421)
    PERM_FAILED = "perm_failed"  # refused with 5xx


@attrs.frozen
class RecipientOutcome:
    """The outcome of one recipient: ``reply`` decided it, at ``stage`` (MAIL: the sender was
    refused, or the transaction was refused locally; RCPT: this recipient; DATA: the 354 was
    not given; FINAL: the reply to the end of data, for every recipient the server took)."""

    recipient: str
    status: RecipientStatus
    stage: Stage
    reply: Reply

    @classmethod
    def refused(cls, recipient: str, stage: Stage, reply: Reply) -> RecipientOutcome:
        """A failure; permanent exactly when ``reply`` is 5xx."""
        status = RecipientStatus.PERM_FAILED if reply.is_permanent else RecipientStatus.TEMP_FAILED
        return cls(recipient, status, stage, reply)

    @property
    def accepted(self) -> bool:
        return self.status is RecipientStatus.ACCEPTED

    @property
    def temporary(self) -> bool:
        """Trying again later may help (``TEMP_FAILED``)."""
        return self.status is RecipientStatus.TEMP_FAILED


@attrs.frozen
class TransactionResult:
    """What one transaction came to. ``outcomes`` has one entry per envelope recipient, in
    order. ``mail`` is the MAIL reply (a locally made 5xx when the transaction was refused
    before sending, see ``plan_transaction``); ``data`` the reply to DATA and ``final`` the
    reply to the end of data, None when not reached."""

    envelope: Envelope
    outcomes: tuple[RecipientOutcome, ...]
    mail: Reply
    data: Reply | None = None
    final: Reply | None = None

    @property
    def accepted(self) -> tuple[str, ...]:
        """The recipients the server took the message for."""
        return tuple(o.recipient for o in self.outcomes if o.accepted)

    @property
    def body_sent(self) -> bool:
        """The content went out and its end was answered (the message counts as sent)."""
        return self.final is not None


class ClientEvent:
    """Base of everything ``SMTPClientSession.next_event()`` returns besides ``NEED_DATA``."""

    __slots__ = ()


@attrs.frozen
class Ready(ClientEvent):
    """Greeted and EHLO'd (``extended``) or HELO'd: the session is idle, a transaction or
    STARTTLS may start. ``reply`` is the EHLO/HELO reply; after STARTTLS it comes again."""

    reply: Reply
    extensions: Extensions
    extended: bool
    tls: bool


@attrs.frozen
class SessionRefused(ClientEvent):
    """The greeting was not 2xx, or EHLO (and HELO) refused: the session is closed."""

    stage: Stage
    reply: Reply


@attrs.frozen
class UpgradeTLS(ClientEvent):
    """The 220 to STARTTLS: do the handshake, then call ``tls_started()`` (or
    ``tls_failed()``). Nothing may be read or sent in plaintext meanwhile."""


@attrs.frozen
class TlsRefused(ClientEvent):
    """STARTTLS was answered with ``reply`` (not 220): the session goes on in plaintext and is
    idle again, unless the reply was 421 (then it is closed)."""

    reply: Reply


@attrs.frozen
class SendBody(ClientEvent):
    """354 with at least one recipient accepted: feed the content to ``send_body()``, then
    call ``end_body()``."""


@attrs.frozen
class TransactionDone(ClientEvent):
    """The transaction is over (a refused one also reset with RSET). The session is idle
    again, or closed when the server said 421 or refused the RSET (``usable`` tells)."""

    result: TransactionResult


@attrs.frozen
class Closed(ClientEvent):
    """The session is over: the reply to QUIT, a 421, or None for EOF while idle."""

    reply: Reply | None = None

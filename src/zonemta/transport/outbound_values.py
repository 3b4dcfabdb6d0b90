"""Values of the outbound driver (:mod:`zonemta.transport.outbound`): the typed failure of
an attempt (:class:`DeliveryFailure`, with its :class:`Stage` and the remote reply when there
is one), the seconds allowed per wait (:class:`Timeouts`) and the one-recipient
:class:`Transaction` of ``OutboundConnection.send``. Nothing here does I/O.
"""

from __future__ import annotations

import attrs

from zonemta.transport.smtp.client_events import Stage, Wait
from zonemta.transport.smtp.reply import Reply

__all__ = ["DeliveryFailure", "Timeouts", "Transaction"]


class DeliveryFailure(Exception):
    """An attempt failed at ``stage``. ``reply`` is the remote answer when the failure was
    one; ``temporary`` says whether trying again later can help; ``category`` overrides the
    default category of a failure without a reply (``network``), e.g. ``tls``."""

    def __init__(
        self,
        stage: Stage,
        message: str,
        *,
        reply: Reply | None = None,
        temporary: bool = True,
        category: str | None = None,
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.reply = reply
        self.temporary = temporary
        self.category = category

    @property
    def response(self) -> str:
        return str(self.reply) if self.reply is not None else str(self)

    @classmethod
    def from_reply(cls, stage: Stage, reply: Reply) -> DeliveryFailure:
        return cls(stage, str(reply), reply=reply, temporary=not reply.is_permanent)


@attrs.frozen
class Timeouts:
    """Seconds per wait. ``greeting``: the 220; ``command``: the reply to every command but
    the end of data (RFC 5321 4.5.3.2 MAIL, RCPT, DATA initiation); ``data``: sending the
    content and the reply to its end (data block, DATA termination)."""

    connect: float = 60.0
    greeting: float = 300.0
    command: float = 300.0
    data: float = 600.0

    def of(self, wait: Wait | None) -> float:
        """The seconds allowed for ``wait`` (what the session says it waits for)."""
        if wait is Wait.GREETING:
            return self.greeting
        if wait in (Wait.DATA_BLOCK, Wait.DATA_TERMINATION):
            return self.data
        return self.command


@attrs.frozen
class Transaction:
    """One message to one recipient (see :meth:`OutboundConnection.send`)."""

    mail_from: str
    recipient: str
    size: int
    body_8bit: bool = False
    smtputf8: bool = False

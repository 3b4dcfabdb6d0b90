"""Protocol errors, two-sided as in h11: who broke the protocol, and what to answer."""

from __future__ import annotations

from zonemta.transport.smtp.reply import Reply


class ProtocolError(Exception):
    """Base of all SMTP protocol errors."""


class LocalProtocolError(ProtocolError):
    """We used the protocol object wrongly (a bug in our own driver)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol. ``reply`` is what a server should answer, if anything."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply

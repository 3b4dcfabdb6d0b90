"""The ``Received`` trace field a delivery adds in front of the stored header block."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

from zonemta.store import Delivery, MessageRecord

__all__ = ["received_header"]


def received_header(
    message: MessageRecord, row: Delivery, hostname: str, *, single: bool = True
) -> bytes:
    """The Received trace field for this delivery (RFC 5321 4.4), never stored. The FOR
    clause names the recipient only when the transaction has one (``single``); the id is
    the (first) delivery's."""
    meta = message.meta
    helo = meta.helo or "unknown"
    client = meta.client_address
    transtype = meta.transtype or "ESMTP"
    user = meta.user
    when = format_datetime(datetime.fromtimestamp(message.received_at, UTC))
    parts = [f"Received: from {helo} ([{client}])" if client else f"Received: from {helo}"]
    if user:
        parts.append(f"\t(Authenticated sender: {user})")
    by = f"\tby {hostname} (zonemta) with {transtype} id {message.id}.{row.seq:03x}"
    parts += [by, f"\tfor <{row.recipient}>; {when}"] if single else [f"{by}; {when}"]
    return ("\r\n".join(parts) + "\r\n").encode("utf-8", "surrogateescape")

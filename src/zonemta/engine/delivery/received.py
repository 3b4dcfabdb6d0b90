"""The ``Received`` trace field a delivery adds in front of the stored header block."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

from zonemta.store import Delivery, MessageRecord

__all__ = ["received_header"]

# The date of the last whole second formatted: (second, text). Messages received in the same
# second share it; a timestamp whose fraction could round up to the next second (by
# datetime's microsecond rounding) is formatted as before.
_last_date: tuple[int, str] = (-1, "")
_ROUNDS_UP = 0.999999  # well below the half microsecond that rounds up


def _date(timestamp: float) -> str:
    """``format_datetime`` of ``timestamp`` in UTC (RFC 5322 date), once per second."""
    global _last_date
    second = int(timestamp)
    if second == _last_date[0] and timestamp - second < _ROUNDS_UP:
        return _last_date[1]
    text = format_datetime(datetime.fromtimestamp(timestamp, UTC))
    if timestamp >= 0 and timestamp - second < _ROUNDS_UP:
        _last_date = (second, text)
    return text


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
    when = _date(message.received_at)
    parts = [f"Received: from {helo} ([{client}])" if client else f"Received: from {helo}"]
    if user:
        parts.append(f"\t(Authenticated sender: {user})")
    by = f"\tby {hostname} (zonemta) with {transtype} id {message.id}.{row.seq:03x}"
    parts += [by, f"\tfor <{row.recipient}>; {when}"] if single else [f"{by}; {when}"]
    return ("\r\n".join(parts) + "\r\n").encode("utf-8", "surrogateescape")

"""Small conversions shared by the routes: times, ids, query parameters, records as JSON."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from zonemta.http.errors import ApiError
from zonemta.store import Delivery, MessageRecord, RowState, SuppressionEntry

_QUEUE_ID_RE = re.compile(r"[0-9a-f]{14,40}")


def iso(timestamp: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC time with milliseconds (``...Z``)."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def queue_id(text: str) -> str:
    """A queue id from a URL path. Raises :class:`ApiError` (400) when it cannot be one."""
    if _QUEUE_ID_RE.fullmatch(text) is None:
        raise ApiError(400, f"invalid message id {text!r}")
    return text


def seq_number(text: str | None) -> int | None:
    """A delivery's ``seq`` from a URL path (the integer of the JSON listings), or None."""
    if text is None:
        return None
    if not text.isdigit() or len(text) > 6:
        raise ApiError(400, f"invalid delivery seq {text!r} (a number such as 1)")
    return int(text)


def int_param(args: Any, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``. Raises ApiError (400)."""
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r} must be an integer: {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"query parameter {name!r} must be between {low} and {high}")
    return value


def header_lines(headers: bytes) -> list[dict[str, str]]:
    """The stored header block as ``[{key, line}]`` (unfolded lines keep their folding)."""
    fields: list[dict[str, str]] = []
    for raw in headers.decode("utf-8", "replace").split("\r\n"):
        if not raw:
            continue
        if raw[:1] in (" ", "\t") and fields:
            fields[-1]["line"] += "\r\n" + raw
            continue
        fields.append({"key": raw.partition(":")[0].strip().lower(), "line": raw})
    return fields


def header_value(fields: list[dict[str, str]], key: str) -> str | None:
    for field in fields:
        if field["key"] == key:
            return field["line"].partition(":")[2].replace("\r\n", "").strip()
    return None


def message_meta(message: MessageRecord) -> dict[str, Any]:
    """What the API tells about a stored message (``GET /message/<id>``)."""
    meta = message.meta
    fields = header_lines(message.headers)
    return {
        "id": message.id,
        "from": message.mail_from,
        "interface": meta.interface,
        "origin": meta.client_address or None,
        "originhost": meta.helo or None,
        "transtype": meta.transtype,
        "user": meta.user,
        "time": iso(message.received_at),
        "messageId": header_value(fields, "message-id"),
        "date": header_value(fields, "date"),
        "subject": header_value(fields, "subject"),
        "headers": fields,
        "bodySize": message.body_size,
        "body8bit": meta.body_8bit,
        "smtputf8": meta.smtputf8,
    }


def delivery_status(row: Delivery) -> str:
    return {
        RowState.QUEUED: "QUEUED",
        RowState.DEFERRED: "DEFERRED",
        RowState.LOCKED: "LOCKED",
    }[row.state]


def delivery_json(row: Delivery) -> dict[str, Any]:
    """One pending delivery (``GET /message/<id>``)."""
    out: dict[str, Any] = {
        "id": row.message_id,
        "seq": row.seq,
        "zone": row.zone,
        "recipient": row.recipient,
        "status": delivery_status(row),
        "created": iso(row.created),
        "next": iso(row.next_attempt),
        "attempts": row.attempts,
    }
    if row.lease_owner is not None:
        out["lock"] = {"owner": row.lease_owner, "until": iso(row.lease_until)}
    if row.attempts:
        out["deferred"] = {
            "first": iso(row.first_failure),
            "next": iso(row.next_attempt),
            "count": row.attempts,
            "response": row.last_response,
        }
    return out


def listing_json(row: Delivery) -> dict[str, Any]:
    """One row of ``GET /queued/<type>/<zone>``."""
    return {
        "id": row.message_id,
        "seq": row.seq,
        "zone": row.zone,
        "recipient": row.recipient,
        "created": iso(row.created),
        "queued": iso(row.next_attempt),
        "deferred": row.attempts,
    }


def suppression_json(entry: SuppressionEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"id": entry.id, "created": iso(entry.created)}
    if entry.address is not None:
        out["address"] = entry.address
    if entry.domain is not None:
        out["domain"] = entry.domain
    return out

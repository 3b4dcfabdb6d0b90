"""Suspensions over HTTP: ``POST /suspend``, ``GET /suspend``, ``DELETE /suspend/<id>``.

Changes go through the engine's :class:`~zonemta.engine.delivery.suspensions.Suspensions`, so this
instance obeys them at once and the others on the same store within their refresh interval.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from zonemta.conf.units import parse_duration
from zonemta.engine.delivery.suspensions import suspension_details
from zonemta.http.context import ApiContext
from zonemta.http.convert import iso
from zonemta.http.errors import ApiError
from zonemta.http.routes_suppression import request_params
from zonemta.store import Suspension

_DOMAIN_RE = re.compile(r"[^\s@/]+")
_MESSAGE_RE = re.compile(r"[0-9a-f]{14,40}")
_ENTRY_RE = re.compile(r"[0-9a-f]{1,64}")
_TEXT_LIMIT = 1000
#: The furthest expiry accepted (ten years): a time, not a way to write "forever".
_MAX_AHEAD = 10 * 365 * 86400.0


def suspension_json(entry: Suspension) -> dict[str, Any]:
    out: dict[str, Any] = {"id": entry.id, "created": iso(entry.created)}
    if entry.zone is not None:
        out["zone"] = entry.zone
    out.update(suspension_details(entry))
    if entry.until is not None:
        out["until"] = iso(entry.until)
    return out


def _text(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name!r} must be a string")
    value = value.strip()
    if len(value) > _TEXT_LIMIT:
        raise ApiError(400, f"{name!r} is longer than {_TEXT_LIMIT} characters")
    return value


def _until(params: dict[str, Any], now: float) -> float | None:
    """``until`` (epoch seconds or an ISO 8601 time) or ``for`` (a duration such as "2h")."""
    until, duration = params.get("until"), params.get("for")
    if until not in (None, "") and duration not in (None, ""):
        raise ApiError(400, "give at most one of 'until' and 'for'")
    if duration not in (None, ""):
        if not isinstance(duration, str | int | float) or isinstance(duration, bool):
            raise ApiError(400, '\'for\' must be a duration such as "90s", "2h" or seconds')
        try:
            seconds = parse_duration(duration).total_seconds()
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"'for': {exc}") from None
        if not 0 < seconds <= _MAX_AHEAD:
            raise ApiError(400, "'for' must be longer than 0 s and at most ten years")
        return now + seconds
    if until in (None, ""):
        return None
    if isinstance(until, int | float) and not isinstance(until, bool):
        moment = float(until)
    elif isinstance(until, str):
        try:
            moment = datetime.fromisoformat(until.replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError):
            raise ApiError(400, f"'until' is not an ISO 8601 time: {until!r}") from None
    else:
        raise ApiError(400, "'until' must be epoch seconds or an ISO 8601 time")
    if not math.isfinite(moment) or moment <= now:
        raise ApiError(400, "'until' must be in the future")
    if moment > now + _MAX_AHEAD:
        raise ApiError(400, "'until' must be at most ten years ahead (omit it: no expiry)")
    return moment


class SuspendRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def register(self, app: Any) -> None:
        app.add_url_rule("/suspend", "suspensions", self.list, methods=["GET"])
        app.add_url_rule("/suspend", "suspend", self.add, methods=["POST"])
        app.add_url_rule("/suspend/<entry_id>", "resume", self.remove, methods=["DELETE"])

    async def list(self) -> Any:
        """Every unexpired entry in the store (those of other instances included)."""
        entries = await self.ctx.store.list_suspensions(self.ctx.clock())
        return {"suspensions": [suspension_json(e) for e in entries]}

    async def add(self) -> Any:
        params = await request_params()
        zone, domain = _text(params, "zone"), _text(params, "domain")
        source, message = _text(params, "source"), _text(params, "message")
        if zone is not None and zone not in self.ctx.config.zones:
            raise ApiError(400, f"no such zone: {zone!r}")
        if domain is not None:
            domain = domain.rstrip(".").lower()
            if _DOMAIN_RE.fullmatch(domain) is None:
                raise ApiError(400, f"not a domain name: {domain!r}")
        if message is not None and _MESSAGE_RE.fullmatch(message) is None:
            raise ApiError(400, f"invalid message id {message!r}")
        if not (zone or domain or source or message):
            raise ApiError(
                400, "give a 'zone', 'domain' (optionally with 'zone'), 'source' or 'message'"
            )
        if (source or message) and sum(1 for v in (zone, domain, source, message) if v) > 1:
            raise ApiError(400, "'source' and 'message' each take no other scope")
        slow = params.get("max_connections")
        if slow is not None and (
            isinstance(slow, bool) or not isinstance(slow, int) or not 1 <= slow <= 10_000
        ):
            raise ApiError(400, "'max_connections' must be an integer from 1 to 10000")
        if slow is not None and domain is None:
            raise ApiError(400, "'max_connections' slows a 'domain' (optionally with 'zone')")
        until = _until(params, self.ctx.clock())
        entry = await self.ctx.engine.suspensions.add(
            zone=zone,
            domain=domain,
            source=source,
            message_id=message,
            until=until,
            reason=_text(params, "reason") or "",
            who=_text(params, "who") or "api",
            max_connections=slow,
        )
        return {"suspension": suspension_json(entry)}, 201

    async def remove(self, entry_id: str) -> Any:
        if _ENTRY_RE.fullmatch(entry_id) is None:
            raise ApiError(400, f"invalid suspension id {entry_id!r}")
        entry = await self.ctx.engine.suspensions.remove(entry_id)
        if entry is None:
            raise ApiError(404, f"no suspension with id {entry_id!r}")
        return {"deleted": entry_id, "suspension": suspension_json(entry)}

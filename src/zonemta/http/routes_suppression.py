"""The suppression list: recipients (addresses or whole domains) that are dropped without a
bounce. Changes go through the engine's in-memory copy, so the delivery path sees them at
once."""

from __future__ import annotations

import re
from typing import Any

from quart import request
from werkzeug.exceptions import BadRequest

from zonemta.http.context import ApiContext
from zonemta.http.convert import suppression_json
from zonemta.http.errors import ApiError

_ADDRESS_RE = re.compile(r"[^\s@]+@[^\s@]+")
_DOMAIN_RE = re.compile(r"[^\s@/]+")


async def request_params() -> dict[str, Any]:
    """Query parameters, overlaid with a JSON object body or a form body."""
    params: dict[str, Any] = dict(request.args.items())
    if request.mimetype == "application/json":
        try:
            data = await request.get_json()
        except (BadRequest, UnicodeDecodeError):  # quart decodes the body as UTF-8 first
            raise ApiError(400, "the request body is not valid JSON") from None
        if data is not None and not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        params.update(data or {})
    elif request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        params.update((await request.form).items())
    return params


def _text(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name!r} must be a string")
    return value.strip()


class SuppressionRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def register(self, app: Any) -> None:
        app.add_url_rule("/suppressionlist", "suppressions", self.list, methods=["GET"])
        app.add_url_rule("/suppressionlist", "suppress", self.add, methods=["POST"])
        app.add_url_rule("/suppressionlist", "unsuppress", self.remove, methods=["DELETE"])

    async def list(self) -> Any:
        entries = await self.ctx.store.list_suppressions()
        return {"suppressed": [suppression_json(e) for e in entries]}

    async def add(self) -> Any:
        """``{address}`` or ``{domain}``; adding an existing entry returns that entry."""
        params = await request_params()
        address, domain = _text(params, "address"), _text(params, "domain")
        if (address is None) == (domain is None):
            raise ApiError(400, "give exactly one of 'address' or 'domain'")
        if address is not None and _ADDRESS_RE.fullmatch(address) is None:
            raise ApiError(400, f"not an email address: {address!r}")
        if domain is not None:
            domain = domain.rstrip(".").lower()
            if _DOMAIN_RE.fullmatch(domain) is None:
                raise ApiError(400, f"not a domain name: {domain!r}")
        entry = await self.ctx.engine.suppressions.add(
            address=address, domain=domain, now=self.ctx.clock()
        )
        return {"suppressed": suppression_json(entry)}

    async def remove(self) -> Any:
        params = await request_params()
        entry_id = _text(params, "id")
        if entry_id is None:
            raise ApiError(400, "give the 'id' of the entry to delete")
        if not await self.ctx.engine.suppressions.remove(entry_id):
            raise ApiError(404, f"no suppression entry with id {entry_id!r}")
        return {"deleted": entry_id}

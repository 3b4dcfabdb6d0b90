"""Queue routes: zones, counters, listings, one message's state, its content, send now,
delete."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from quart import Response, request

from zonemta.http.context import ApiContext
from zonemta.http.convert import (
    delivery_json,
    int_param,
    iso,
    listing_json,
    message_meta,
    queue_id,
    seq_number,
)
from zonemta.http.errors import ApiError
from zonemta.store import Delivery, RowState, StoreError, ZoneCounts

log = logging.getLogger(__name__)

MAX_PAGE = 1000
_LISTING_TYPES = {"active": False, "queued": False, "deferred": True}


def _counter_block(counts: dict[str, ZoneCounts], attr: str) -> dict[str, Any]:
    entries = [{"key": zone, "value": getattr(c, attr)} for zone, c in counts.items()]
    return {"entries": entries, "rows": sum(e["value"] for e in entries)}


class QueueRoutes:
    """Handlers over the store and the engine; :meth:`register` adds them to the app."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def register(self, app: Any) -> None:
        app.add_url_rule("/zones", "zones", self.zones, methods=["GET"])
        app.add_url_rule("/counter/zone/", "counter_all", self.counter_all, methods=["GET"])
        app.add_url_rule("/counter/zone/<zone>", "counter_zone", self.counter, methods=["GET"])
        app.add_url_rule("/counter/domain/", "counter_domains", self.domains, methods=["GET"])
        app.add_url_rule("/queued/<kind>/<zone>", "queued", self.queued, methods=["GET"])
        app.add_url_rule("/message/<mid>", "message", self.message, methods=["GET"])
        app.add_url_rule("/fetch/<mid>", "fetch", self.fetch, methods=["GET"])
        app.add_url_rule("/blacklist", "blacklist", self.blacklist, methods=["GET"])
        for rule in ("/message/<mid>", "/message/<mid>/<seq>"):
            suffix = "_one" if "seq" in rule else ""
            app.add_url_rule(rule, "send_now" + suffix, self.send_now, methods=["PUT"])
            app.add_url_rule(rule, "delete" + suffix, self.delete, methods=["DELETE"])

    def _zone(self, zone: str) -> str:
        if zone not in self.ctx.config.zones:
            raise ApiError(404, f"unknown zone {zone!r}")
        return zone

    async def _counts(self) -> dict[str, ZoneCounts]:
        stored = await self.ctx.store.zone_counts(self.ctx.clock())
        zones = sorted({*self.ctx.config.zones, *stored}, key=str.lower)
        return {zone: stored.get(zone, ZoneCounts(0, 0)) for zone in zones}

    async def blacklist(self) -> Any:
        """``{list: [{domain, address, response, created, expires}]}``: local addresses
        currently disabled per recipient domain, soonest expiry first."""
        return {
            "list": [
                {
                    "domain": entry.domain,
                    "address": entry.address,
                    "response": entry.response,
                    "created": iso(entry.created),
                    "expires": iso(entry.expires),
                }
                for entry in self.ctx.engine.blacklist.entries()
            ]
        }

    async def zones(self) -> Any:
        """``[{name}]``, sorted case-insensitively; disabled zones only with
        ``?includeDisabled=true|yes|1``."""
        include = request.args.get("includeDisabled", "").lower() in ("true", "yes", "1")
        zones = self.ctx.config.zones
        return [
            {"name": name}
            for name in sorted(zones, key=str.lower)
            if include or not zones[name].disabled
        ]

    async def counter_all(self) -> Any:
        counts = await self._counts()
        return {
            "zone": "all",
            "active": _counter_block(counts, "active"),
            "deferred": _counter_block(counts, "deferred"),
        }

    async def counter(self, zone: str) -> Any:
        self._zone(zone)
        counts = {zone: (await self._counts())[zone]}
        return {
            "zone": zone,
            "active": _counter_block(counts, "active"),
            "deferred": _counter_block(counts, "deferred"),
        }

    async def domains(self) -> Any:
        """Pending deliveries per recipient domain (``?zone=`` one zone), busiest first, at
        most ``?limit=`` domains: exact, from one store query (:meth:`Store.domain_counts`).
        ``scanned`` says how many deliveries were counted, ``complete`` is always true."""
        zone = request.args.get("zone") or None
        if zone is not None:
            self._zone(zone)
        limit = int_param(request.args, "limit", 100, 1, MAX_PAGE)
        counts = await self.ctx.store.domain_counts(self.ctx.clock(), zone=zone)
        found: dict[str, dict[str, Any]] = {}
        for (name, domain), count in counts.items():
            entry = found.setdefault(domain, {"active": 0, "deferred": 0, "zones": set()})
            entry["active"] += count.active
            entry["deferred"] += count.deferred
            entry["zones"].add(name)
        scanned = sum(count.active + count.deferred for count in counts.values())
        ranked = sorted(
            found.items(), key=lambda item: (-(item[1]["active"] + item[1]["deferred"]), item[0])
        )
        return {
            "zone": zone or "all",
            "domains": [
                {
                    "domain": domain,
                    "active": entry["active"],
                    "deferred": entry["deferred"],
                    "zones": sorted(entry["zones"], key=str.lower),
                }
                for domain, entry in ranked[:limit]
            ],
            "total": len(found),
            "scanned": scanned,
            "complete": True,
        }

    async def queued(self, kind: str, zone: str) -> Any:
        if kind not in _LISTING_TYPES:
            raise ApiError(400, f"unknown listing type {kind!r} (use active, queued or deferred)")
        self._zone(zone)
        args = request.args
        start = int_param(args, "start", 0, 0, 1_000_000_000)
        page_size = int_param(args, "pageSize", MAX_PAGE, 1, MAX_PAGE)
        order = args.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"query parameter 'order' must be asc or desc: {order!r}")
        rows = await self.ctx.store.list_deliveries(
            zone,
            deferred=_LISTING_TYPES[kind],
            now=self.ctx.clock(),
            start=start,
            limit=page_size,
            descending=order == "desc",
        )
        return {
            "zone": zone,
            "type": "deferred" if _LISTING_TYPES[kind] else "active",
            "start": start,
            "pageSize": page_size,
            "order": order,
            "list": [listing_json(row) for row in rows],
        }

    async def message(self, mid: str) -> Any:
        mid = queue_id(mid)
        message = await self.ctx.store.get_message(mid)
        rows = await self.ctx.store.deliveries_of(mid)
        if message is None or not rows:
            raise ApiError(404, f"message {mid} is not in the queue")
        return {"meta": message_meta(message), "messages": [delivery_json(r) for r in rows]}

    async def fetch(self, mid: str) -> Any:
        """The stored message as ``message/rfc822``, streamed: header block, then body
        chunks from the store (``?body=yes``: the body only)."""
        mid = queue_id(mid)
        message = await self.ctx.store.get_message(mid)
        if message is None:
            raise ApiError(404, f"message {mid} is not in the queue")
        body_only = request.args.get("body", "").lower() in ("yes", "true", "1")
        store = self.ctx.store

        async def content() -> AsyncIterator[bytes]:
            if not body_only:
                yield message.headers + b"\r\n"
            if not message.body_size:
                return
            try:
                async for chunk in store.read_body(mid):
                    yield chunk
            except StoreError as exc:  # removed meanwhile: the stream ends short
                log.warning("streaming %s stopped: %s", mid, exc)

        size = message.body_size + (0 if body_only else len(message.headers) + 2)
        response = Response(content(), mimetype="message/rfc822")
        response.headers["Content-Length"] = str(size)
        response.headers["Content-Disposition"] = f'inline; filename="{mid}.eml"'
        return response

    async def _matching(self, mid: str, seq: int | None) -> list[Delivery]:
        rows = await self.ctx.store.deliveries_of(mid)
        rows = [r for r in rows if seq is None or r.seq == seq]
        if not rows:
            what = f"delivery {mid} seq {seq}" if seq is not None else f"message {mid}"
            raise ApiError(404, f"{what} is not in the queue")
        return rows

    @staticmethod
    def _busy(rows: list[Delivery]) -> ApiError:
        return ApiError(
            409,
            "every matching delivery is being attempted right now; try again later",
            locked=[r.seq for r in rows if r.state is RowState.LOCKED],
        )

    async def send_now(self, mid: str, seq: str | None = None) -> Any:
        """Make the message's pending deliveries (or one) due now and wake their zones."""
        mid, number = queue_id(mid), seq_number(seq)
        rows = await self._matching(mid, number)
        changed = await self.ctx.store.reschedule(mid, number, next_attempt=self.ctx.clock())
        if not changed:
            raise self._busy(rows)
        self.ctx.engine.wake({r.zone for r in rows})
        return {"success": True, "id": mid, "rescheduled": changed, "time": iso(self.ctx.clock())}

    async def delete(self, mid: str, seq: str | None = None) -> Any:
        """Remove the message's pending deliveries (or one) without a bounce."""
        mid, number = queue_id(mid), seq_number(seq)
        rows = await self._matching(mid, number)
        removed = await self.ctx.store.remove_deliveries(mid, number)
        if not removed:
            raise self._busy(rows)
        return {"success": True, "id": mid, "deleted": removed}

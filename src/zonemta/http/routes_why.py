"""``GET /message/<id>/why``: for each pending delivery of a message, why it has not gone
yet (see :mod:`zonemta.engine.why` for the reasons)."""

from __future__ import annotations

from typing import Any

from zonemta.engine.why import Reason, explain, trio_to_epoch
from zonemta.http.context import ApiContext
from zonemta.http.convert import delivery_status, iso, queue_id
from zonemta.http.errors import ApiError

#: Reason details that are epoch times; the JSON has them as ISO 8601.
_TIMES = frozenset({"next_attempt", "lease_until", "next_token", "until", "next_day"})


def reason_json(reason: Reason) -> dict[str, Any]:
    return {
        key: iso(value) if key in _TIMES and isinstance(value, float) else value
        for key, value in reason.to_json().items()
    }


class WhyRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def register(self, app: Any) -> None:
        app.add_url_rule("/message/<mid>/why", "why", self.why, methods=["GET"])

    async def why(self, mid: str) -> Any:
        message_id = queue_id(mid)
        rows = await self.ctx.store.deliveries_of(message_id)
        if not rows:
            raise ApiError(404, f"no pending deliveries of message {message_id!r}")
        now = self.ctx.clock()
        to_epoch = trio_to_epoch(self.ctx.clock)
        return {
            "id": message_id,
            "recipients": [
                {
                    "seq": row.seq,
                    "recipient": row.recipient,
                    "zone": row.zone,
                    "status": delivery_status(row),
                    "reasons": [
                        reason_json(r)
                        for r in explain(self.ctx.engine, row, now=now, to_epoch=to_epoch)
                    ],
                }
                for row in rows
            ],
        }

"""The OpenAPI description of the queue routes (:mod:`zonemta.http.routes_queue`): zones,
counters, listings, one message's state and content, send now, delete, the blacklist."""

from __future__ import annotations

from typing import Any

from zonemta.http.openapi_common import errors, json_body, param, ref

MESSAGE_ID = param("id", "path", "Queue id")
SEQ = param("seq", "path", "Delivery number within the message", type="integer")
ZONE = param("zone", "path", "Sending zone name")
COUNTER = {
    "type": "object",
    "properties": {
        "zone": {"type": "string"},
        "active": ref("CounterBlock"),
        "deferred": ref("CounterBlock"),
    },
}
SUCCESS = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean"},
        "id": {"type": "string"},
        "rescheduled": {"type": "integer"},
        "deleted": {"type": "integer"},
    },
}


def _message_op(summary: str, operation_id: str, success: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "operationId": operation_id,
        "responses": {"200": json_body(success, "Done"), **errors(400, 401, 404, 409)},
    }


QUEUE_PATHS: dict[str, dict[str, Any]] = {
    "/blacklist": {
        "get": {
            "summary": "Local addresses disabled per recipient domain after blacklist replies",
            "operationId": "blacklist",
            "responses": {
                "200": json_body(
                    {
                        "type": "object",
                        "properties": {
                            "list": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        name: {"type": "string"}
                                        for name in (
                                            "domain",
                                            "address",
                                            "response",
                                            "created",
                                            "expires",
                                        )
                                    },
                                },
                            }
                        },
                    },
                    "Entries, soonest expiry first",
                ),
                **errors(401),
            },
        }
    },
    "/zones": {
        "get": {
            "summary": "The sending zones",
            "operationId": "zones",
            "parameters": [
                param("includeDisabled", "query", "true, yes or 1: list disabled zones too")
            ],
            "responses": {
                "200": json_body(
                    {
                        "type": "array",
                        "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                    },
                    "Zones, sorted by name",
                ),
                **errors(401),
            },
        }
    },
    "/counter/zone/": {
        "get": {
            "summary": "Pending deliveries of every zone",
            "operationId": "countersAll",
            "responses": {"200": json_body(COUNTER, "Counters"), **errors(401)},
        }
    },
    "/counter/zone/{zone}": {
        "get": {
            "summary": "Pending deliveries of one zone",
            "operationId": "counters",
            "parameters": [ZONE],
            "responses": {"200": json_body(COUNTER, "Counters"), **errors(401, 404)},
        }
    },
    "/counter/domain/": {
        "get": {
            "summary": "Pending deliveries per recipient domain, busiest first",
            "description": (
                "Exact: counted by the store in one query per request, per zone and "
                "recipient domain. 'scanned' is the number of pending deliveries counted; "
                "'complete' is always true (kept for clients of the earlier, capped count)."
            ),
            "operationId": "countersByDomain",
            "parameters": [
                param("zone", "query", "Only this zone"),
                param(
                    "limit", "query", "Most domains listed", type="integer", minimum=1, maximum=1000
                ),
            ],
            "responses": {
                "200": json_body(ref("DomainCounters"), "Counters"),
                **errors(400, 401, 404),
            },
        }
    },
    "/queued/{type}/{zone}": {
        "get": {
            "summary": "List a zone's active (due or being attempted) or deferred deliveries",
            "operationId": "queued",
            "parameters": [
                param(
                    "type",
                    "path",
                    "active, queued or deferred",
                    enum=["active", "queued", "deferred"],
                ),
                ZONE,
                param("start", "query", "Rows to skip", type="integer", minimum=0),
                param("pageSize", "query", "Rows (max 1000)", type="integer", maximum=1000),
                param("order", "query", "By creation time", enum=["asc", "desc"]),
            ],
            "responses": {"200": json_body(ref("Listing"), "One page"), **errors(400, 401, 404)},
        }
    },
    "/message/{id}": {
        "get": {
            "summary": "A message's stored facts and its pending deliveries",
            "operationId": "message",
            "parameters": [MESSAGE_ID],
            "responses": {"200": json_body(ref("MessageInfo"), "Found"), **errors(400, 401, 404)},
        },
        "put": {
            **_message_op("Send every pending delivery now", "sendNow", SUCCESS),
            "parameters": [MESSAGE_ID],
        },
        "delete": {
            **_message_op("Delete every pending delivery (no bounce)", "deleteMessage", SUCCESS),
            "parameters": [MESSAGE_ID],
        },
    },
    "/message/{id}/{seq}": {
        "put": {
            **_message_op("Send one delivery now", "sendNowOne", SUCCESS),
            "parameters": [MESSAGE_ID, SEQ],
        },
        "delete": {
            **_message_op("Delete one delivery (no bounce)", "deleteOne", SUCCESS),
            "parameters": [MESSAGE_ID, SEQ],
        },
    },
    "/fetch/{id}": {
        "get": {
            "summary": "The stored message (without the Received header added at delivery)",
            "operationId": "fetch",
            "parameters": [MESSAGE_ID, param("body", "query", "yes: the body only")],
            "responses": {
                "200": {
                    "description": "The message, streamed",
                    "content": {
                        "message/rfc822": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
                **errors(400, 401, 404),
            },
        }
    },
}

QUEUE_SCHEMAS: dict[str, Any] = {
    "CounterBlock": {
        "type": "object",
        "properties": {
            "rows": {"type": "integer"},
            "entries": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"key": {"type": "string"}, "value": {"type": "integer"}},
                },
            },
        },
    },
    "DomainCounters": {
        "type": "object",
        "properties": {
            "zone": {"type": "string", "description": "The zone asked for, or 'all'"},
            "domains": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "domain": {"type": "string"},
                        "active": {"type": "integer"},
                        "deferred": {"type": "integer"},
                        "zones": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "total": {"type": "integer", "description": "Domains found"},
            "scanned": {"type": "integer", "description": "Pending deliveries counted"},
            "complete": {"type": "boolean", "description": "Always true: the count is exact"},
        },
    },
    "Listing": {
        "type": "object",
        "properties": {
            "zone": {"type": "string"},
            "type": {"type": "string"},
            "start": {"type": "integer"},
            "pageSize": {"type": "integer"},
            "list": {"type": "array", "items": ref("ListedDelivery")},
        },
    },
    "ListedDelivery": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "seq": {"type": "integer"},
            "zone": {"type": "string"},
            "recipient": {"type": "string"},
            "created": {"type": "string", "format": "date-time"},
            "queued": {"type": "string", "format": "date-time"},
            "deferred": {"type": "integer", "description": "Attempts so far"},
        },
    },
    "MessageInfo": {
        "type": "object",
        "properties": {
            "meta": {"type": "object"},
            "messages": {"type": "array", "items": {"type": "object"}},
        },
    },
}

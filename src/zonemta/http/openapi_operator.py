"""The OpenAPI description of operator control: suspensions (``/suspend``) and "why is this
message waiting" (``/message/{id}/why``)."""

from __future__ import annotations

from typing import Any

from zonemta.http.openapi_common import errors, json_body, param, ref

_TIME = {"type": "string", "format": "date-time"}
_TEXT = {"type": "string"}

OPERATOR_PATHS: dict[str, dict[str, Any]] = {
    "/suspend": {
        "get": {
            "summary": "Every suspension in force (of every instance on the store)",
            "operationId": "listSuspensions",
            "responses": {
                "200": json_body(
                    {
                        "type": "object",
                        "properties": {
                            "suspensions": {"type": "array", "items": ref("Suspension")}
                        },
                    },
                    "Unexpired suspensions, oldest first",
                ),
                **errors(401, 503),
            },
        },
        "post": {
            "summary": "Hold a zone, a recipient domain (optionally in one zone), a source "
            "address or a message",
            "description": (
                "Held deliveries stay queued or deferred (GET /message/{id}/why says so); no "
                "attempt is made or counted, and the time held is added to their queue time "
                "limit when the suspension ends. Give one scope: zone; domain (with an "
                "optional zone); source; or message. At most one of until and for."
            ),
            "operationId": "suspend",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("SuspendRequest")}},
            },
            "responses": {
                "201": json_body(
                    {"type": "object", "properties": {"suspension": ref("Suspension")}},
                    "Stored; this instance obeys it at once, the others within 10 s",
                ),
                **errors(400, 401, 503),
            },
        },
    },
    "/suspend/{entry_id}": {
        "delete": {
            "summary": "Remove a suspension: what it held is sent again",
            "operationId": "resume",
            "parameters": [param("entry_id", "path", "Suspension id")],
            "responses": {
                "200": json_body(
                    {
                        "type": "object",
                        "properties": {"deleted": _TEXT, "suspension": ref("Suspension")},
                    },
                    "Removed",
                ),
                **errors(400, 401, 404, 503),
            },
        }
    },
    "/message/{id}/why": {
        "get": {
            "summary": "Why each pending delivery of a message has not gone yet",
            "operationId": "why",
            "parameters": [param("id", "path", "Queue id")],
            "responses": {
                "200": json_body(ref("Why"), "Per recipient, the reasons, most binding first"),
                **errors(400, 401, 404, 503),
            },
        }
    },
}

OPERATOR_SCHEMAS: dict[str, Any] = {
    "SuspendRequest": {
        "type": "object",
        "properties": {
            "zone": {**_TEXT, "description": "A configured sending zone"},
            "domain": {**_TEXT, "description": "A recipient domain"},
            "source": {**_TEXT, "description": "A local (source) address, in every zone"},
            "message": {**_TEXT, "description": "A queue id"},
            "until": {"description": "Expiry: epoch seconds or an ISO 8601 time"},
            "for": {"description": 'Expiry as a duration from now: "90s", "2h", "3d" or seconds'},
            "reason": _TEXT,
            "who": {**_TEXT, "description": 'Who suspends (default "api")'},
            "max_connections": {
                "type": "integer",
                "minimum": 1,
                "maximum": 10000,
                "description": "Slow the domain to this many deliveries at once instead of "
                "holding it",
            },
        },
    },
    "Suspension": {
        "type": "object",
        "required": ["id", "created"],
        "properties": {
            "id": _TEXT,
            "created": _TIME,
            "zone": _TEXT,
            "domain": _TEXT,
            "source": _TEXT,
            "message_id": _TEXT,
            "until": _TIME,
            "reason": _TEXT,
            "who": _TEXT,
            "rule": {**_TEXT, "description": "The backoff rule that made it"},
            "response": {**_TEXT, "description": "The remote reply that matched the rule"},
            "max_connections": {"type": "integer", "description": "Set: slowed, not held"},
        },
    },
    "Why": {
        "type": "object",
        "properties": {
            "id": _TEXT,
            "recipients": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "seq": {"type": "integer"},
                        "recipient": _TEXT,
                        "zone": _TEXT,
                        "status": {"type": "string", "enum": ["QUEUED", "DEFERRED", "LOCKED"]},
                        "reasons": {"type": "array", "items": ref("WhyReason")},
                    },
                },
            },
        },
    },
    "WhyReason": {
        "type": "object",
        "required": ["code", "text"],
        "description": "Further fields depend on the code (see docs/operator.md)",
        "properties": {
            "code": {
                "type": "string",
                "enum": [
                    "leased",
                    "in_flight",
                    "zone_disabled",
                    "suspended",
                    "sources_suspended",
                    "retry",
                    "dns",
                    "domain_connections",
                    "rate",
                    "zone_capacity",
                    "source_blacklisted",
                    "warmup",
                    "due",
                ],
            },
            "text": _TEXT,
            "next_attempt": _TIME,
            "attempts": {"type": "integer"},
            "last_response": _TEXT,
            "owner": _TEXT,
            "lease_until": _TIME,
            "live": _TEXT,
            "suspension": _TEXT,
            "rule": _TEXT,
            "response": _TEXT,
            "site": _TEXT,
            "in_use": {"type": "integer"},
            "limit": {"type": "integer"},
            "next_token": _TIME,
            "rate": _TEXT,
            "in_flight": {"type": "integer"},
            "addresses": {
                "description": "source_blacklisted: the addresses; warmup: address -> {cap, used}"
            },
            "next_day": _TIME,
        },
    },
}

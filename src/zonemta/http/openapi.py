"""The OpenAPI 3 description of every route (served at ``GET /openapi.json``).

Kept as data beside the routes; a test checks that every route the app registers is here.
Operator control (suspensions, "why") is described in :mod:`zonemta.http.openapi_operator`.
"""

from __future__ import annotations

from typing import Any

from zonemta.http.openapi_common import errors as _errors
from zonemta.http.openapi_common import json_body as _json
from zonemta.http.openapi_common import param as _param
from zonemta.http.openapi_common import ref as _ref
from zonemta.http.openapi_operator import OPERATOR_PATHS, OPERATOR_SCHEMAS
from zonemta.http.openapi_ui import UI_PATHS

MESSAGE_ID = _param("id", "path", "Queue id")
SEQ = _param("seq", "path", "Delivery number within the message", type="integer")
ZONE = _param("zone", "path", "Sending zone name")
SUBMITTER = [
    _param("X-Authenticated-User", "header", "Recorded as the submitting user"),
    _param("X-Originating-IP", "header", "Recorded as the client address (an IP)"),
]
COUNTER = {
    "type": "object",
    "properties": {
        "zone": {"type": "string"},
        "active": _ref("CounterBlock"),
        "deferred": _ref("CounterBlock"),
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
        "responses": {"200": _json(success, "Done"), **_errors(400, 401, 404, 409)},
    }


PATHS: dict[str, dict[str, Any]] = {
    "/send": {
        "post": {
            "summary": "Queue a message given as Nodemailer-style JSON",
            "operationId": "send",
            "parameters": SUBMITTER,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("NodemailerMessage")}},
            },
            "responses": {
                "200": _json(_ref("Queued"), "Stored; delivery starts"),
                **_errors(400, 401, 413, 415, 503),
            },
        }
    },
    "/send-raw": {
        "post": {
            "summary": "Queue an RFC 5322 message; the envelope comes from its headers",
            "operationId": "sendRaw",
            "parameters": SUBMITTER,
            "requestBody": {
                "required": True,
                "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
            },
            "responses": {
                "200": _json(_ref("Queued"), "Stored; delivery starts"),
                **_errors(400, 401, 408, 413, 503),
            },
        }
    },
    "/blacklist": {
        "get": {
            "summary": "Local addresses disabled per recipient domain after blacklist replies",
            "operationId": "blacklist",
            "responses": {
                "200": _json(
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
                **_errors(401),
            },
        }
    },
    "/zones": {
        "get": {
            "summary": "The sending zones",
            "operationId": "zones",
            "parameters": [
                _param("includeDisabled", "query", "true, yes or 1: list disabled zones too")
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "array",
                        "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                    },
                    "Zones, sorted by name",
                ),
                **_errors(401),
            },
        }
    },
    "/counter/zone/": {
        "get": {
            "summary": "Pending deliveries of every zone",
            "operationId": "countersAll",
            "responses": {"200": _json(COUNTER, "Counters"), **_errors(401)},
        }
    },
    "/counter/zone/{zone}": {
        "get": {
            "summary": "Pending deliveries of one zone",
            "operationId": "counters",
            "parameters": [ZONE],
            "responses": {"200": _json(COUNTER, "Counters"), **_errors(401, 404)},
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
                _param("zone", "query", "Only this zone"),
                _param(
                    "limit", "query", "Most domains listed", type="integer", minimum=1, maximum=1000
                ),
            ],
            "responses": {
                "200": _json(_ref("DomainCounters"), "Counters"),
                **_errors(400, 401, 404),
            },
        }
    },
    "/queued/{type}/{zone}": {
        "get": {
            "summary": "List a zone's active (due or being attempted) or deferred deliveries",
            "operationId": "queued",
            "parameters": [
                _param(
                    "type",
                    "path",
                    "active, queued or deferred",
                    enum=["active", "queued", "deferred"],
                ),
                ZONE,
                _param("start", "query", "Rows to skip", type="integer", minimum=0),
                _param("pageSize", "query", "Rows (max 1000)", type="integer", maximum=1000),
                _param("order", "query", "By creation time", enum=["asc", "desc"]),
            ],
            "responses": {"200": _json(_ref("Listing"), "One page"), **_errors(400, 401, 404)},
        }
    },
    "/message/{id}": {
        "get": {
            "summary": "A message's stored facts and its pending deliveries",
            "operationId": "message",
            "parameters": [MESSAGE_ID],
            "responses": {"200": _json(_ref("MessageInfo"), "Found"), **_errors(400, 401, 404)},
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
            "parameters": [MESSAGE_ID, _param("body", "query", "yes: the body only")],
            "responses": {
                "200": {
                    "description": "The message, streamed",
                    "content": {
                        "message/rfc822": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
                **_errors(400, 401, 404),
            },
        }
    },
    "/suppressionlist": {
        "get": {
            "summary": "Suppressed addresses and domains, newest first",
            "operationId": "suppressions",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "suppressed": {"type": "array", "items": _ref("Suppression")}
                        },
                    },
                    "Entries",
                ),
                **_errors(401),
            },
        },
        "post": {
            "summary": "Suppress an address or a domain (JSON, form or query)",
            "operationId": "suppress",
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "address": {"type": "string"},
                                "domain": {"type": "string"},
                            },
                        }
                    }
                }
            },
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"suppressed": _ref("Suppression")}},
                    "Added (or already there)",
                ),
                **_errors(400, 401),
            },
        },
        "delete": {
            "summary": "Remove an entry by id (JSON, form or query)",
            "operationId": "unsuppress",
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"id": {"type": "string"}}}
                    }
                }
            },
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"deleted": {"type": "string"}}}, "Removed"
                ),
                **_errors(400, 401, 404),
            },
        },
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "operationId": "metrics",
            "responses": {
                "200": {"description": "Exposition", "content": {"text/plain": {}}},
                **_errors(401),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3"), **_errors(401)},
        }
    },
    "/events": {
        "get": {
            "summary": "Websocket: live delivery and message events as JSON messages",
            "description": (
                "Upgrade to a websocket. The first message is {type: 'subscribed'}; then one "
                "message per event ({type, id, seq, zone, recipient, from_state, to_state, "
                "time, mx, local_address, response, category, ...}) and {type: 'heartbeat'} "
                "when idle. A subscriber that falls behind is closed with code 1013; at "
                "shutdown streams close with 1001."
            ),
            "operationId": "events",
            "parameters": [
                _param("zone", "query", "Only these zones (comma-separated)"),
                _param("id", "query", "Only these messages (comma-separated)"),
                _param("type", "query", "Only these event types, e.g. delivery, message"),
            ],
            "responses": {
                "101": {"description": "Switching to the websocket protocol"},
                **_errors(401),
            },
        }
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Queued": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "from": {"type": "string"},
            "to": {"type": "array", "items": {"type": "string"}},
            "response": {"type": "string", "example": "Message queued as 019abc2d4e5f6001a3f09c"},
        },
    },
    "NodemailerMessage": {
        "type": "object",
        "required": ["from"],
        "properties": {
            **{
                key: {"description": "Address string, {name, address} or a list of them"}
                for key in ("from", "sender", "to", "cc", "bcc", "replyTo")
            },
            **{
                key: {"type": "string"}
                for key in (
                    "subject",
                    "text",
                    "html",
                    "messageId",
                    "date",
                    "inReplyTo",
                    "references",
                )
            },
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "envelope": {"type": "object", "properties": {"from": {}, "to": {}}},
            "attachments": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "filename": {"type": "string"},
                        "content": {"type": "string"},
                        "encoding": {"type": "string", "enum": ["base64", "utf-8"]},
                        "contentType": {"type": "string"},
                        "cid": {"type": "string"},
                        "contentDisposition": {"type": "string", "enum": ["attachment", "inline"]},
                    },
                },
            },
        },
    },
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
            "list": {"type": "array", "items": _ref("ListedDelivery")},
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
    "Suppression": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "created": {"type": "string", "format": "date-time"},
            "address": {"type": "string"},
            "domain": {"type": "string"},
        },
    },
}


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "zonemta HTTP API", "version": version},
        "components": {
            "schemas": {**SCHEMAS, **OPERATOR_SCHEMAS},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": {**PATHS, **OPERATOR_PATHS, **UI_PATHS},
    }

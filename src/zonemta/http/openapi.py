"""The OpenAPI 3 description of every route (served at ``GET /openapi.json``).

Kept as data beside the routes, one module per route group: submission
(:mod:`~zonemta.http.openapi_send`), the queue (:mod:`~zonemta.http.openapi_queue`), the
suppression list (:mod:`~zonemta.http.openapi_suppression`), operator control
(:mod:`~zonemta.http.openapi_operator`) and the dashboard (:mod:`~zonemta.http.openapi_ui`);
this module describes the rest (metrics, this document, the event stream) and assembles the
document. A test checks that every route the app registers is here.
"""

from __future__ import annotations

from typing import Any

from zonemta.http.openapi_common import errors, json_body, param
from zonemta.http.openapi_operator import OPERATOR_PATHS, OPERATOR_SCHEMAS
from zonemta.http.openapi_queue import QUEUE_PATHS, QUEUE_SCHEMAS
from zonemta.http.openapi_send import SEND_PATHS, SEND_SCHEMAS
from zonemta.http.openapi_suppression import SUPPRESSION_PATHS, SUPPRESSION_SCHEMAS
from zonemta.http.openapi_ui import UI_PATHS

PATHS: dict[str, dict[str, Any]] = {
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "operationId": "metrics",
            "responses": {
                "200": {"description": "Exposition", "content": {"text/plain": {}}},
                **errors(401),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {"200": json_body({"type": "object"}, "OpenAPI 3"), **errors(401)},
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
                param("zone", "query", "Only these zones (comma-separated)"),
                param("id", "query", "Only these messages (comma-separated)"),
                param("type", "query", "Only these event types, e.g. delivery, message"),
            ],
            "responses": {
                "101": {"description": "Switching to the websocket protocol"},
                **errors(401),
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
}


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "zonemta HTTP API", "version": version},
        "components": {
            "schemas": {
                **SCHEMAS,
                **SEND_SCHEMAS,
                **QUEUE_SCHEMAS,
                **SUPPRESSION_SCHEMAS,
                **OPERATOR_SCHEMAS,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            **SEND_PATHS,
            **QUEUE_PATHS,
            **SUPPRESSION_PATHS,
            **PATHS,
            **OPERATOR_PATHS,
            **UI_PATHS,
        },
    }

"""The OpenAPI description of the suppression list (:mod:`zonemta.http.routes_suppression`)."""

from __future__ import annotations

from typing import Any

from zonemta.http.openapi_common import errors, json_body, ref

SUPPRESSION_PATHS: dict[str, dict[str, Any]] = {
    "/suppressionlist": {
        "get": {
            "summary": "Suppressed addresses and domains, newest first",
            "operationId": "suppressions",
            "responses": {
                "200": json_body(
                    {
                        "type": "object",
                        "properties": {
                            "suppressed": {"type": "array", "items": ref("Suppression")}
                        },
                    },
                    "Entries",
                ),
                **errors(401),
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
                "200": json_body(
                    {"type": "object", "properties": {"suppressed": ref("Suppression")}},
                    "Added (or already there)",
                ),
                **errors(400, 401),
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
                "200": json_body(
                    {"type": "object", "properties": {"deleted": {"type": "string"}}}, "Removed"
                ),
                **errors(400, 401, 404),
            },
        },
    },
}

SUPPRESSION_SCHEMAS: dict[str, Any] = {
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

"""The OpenAPI description of the dashboard's routes (``/ui``): static files served without
the token, and the one setting the page reads before it has one."""

from __future__ import annotations

from typing import Any

from zonemta.http.openapi_common import errors, json_body, param
from zonemta.http.routes_ui import UI_FILES

_PUBLIC: list[dict[str, list[str]]] = [{}]  # served without the token

UI_PATHS: dict[str, dict[str, Any]] = {
    "/ui": {
        "get": {
            "summary": "The web dashboard: redirects to /ui/",
            "operationId": "uiRoot",
            "security": _PUBLIC,
            "responses": {"308": {"description": "Location: ui/"}},
        }
    },
    "/ui/": {
        "get": {
            "summary": "The web dashboard's page (it asks for the token; see docs/dashboard.md)",
            "operationId": "uiIndex",
            "security": _PUBLIC,
            "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
        }
    },
    "/ui/settings.json": {
        "get": {
            "summary": "What the dashboard needs to know before it has a token",
            "operationId": "uiSettings",
            "security": _PUBLIC,
            "responses": {
                "200": json_body(
                    {
                        "type": "object",
                        "properties": {"token_required": {"type": "boolean"}},
                    },
                    "Whether the API needs a Bearer token",
                )
            },
        }
    },
    "/ui/{name}": {
        "get": {
            "summary": "One of the dashboard's files (script or style sheet)",
            "operationId": "uiFile",
            "security": _PUBLIC,
            "parameters": [
                param("name", "path", "File name", type="string", enum=sorted(UI_FILES))
            ],
            "responses": {
                "200": {
                    "description": "The file",
                    "content": {"text/javascript": {}, "text/css": {}},
                },
                **errors(404),
            },
        }
    },
}

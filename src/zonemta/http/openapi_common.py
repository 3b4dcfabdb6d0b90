"""Building blocks of the OpenAPI document (references, JSON bodies, errors, parameters),
shared by the modules that describe the routes."""

from __future__ import annotations

from typing import Any


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Bad request",
        401: "Missing or wrong Bearer token",
        404: "Not found",
        408: "The request body did not arrive in time",
        409: "Every matching delivery is being attempted right now",
        413: "Larger than [api] max_send_size",
        415: "Wrong Content-Type",
        503: "The store failed; try again",
    }
    return {str(code): json_body(ref("Error"), text[code]) for code in codes}


def param(name: str, where: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema or {"type": "string"},
    }

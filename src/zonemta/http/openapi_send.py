"""The OpenAPI description of submission: ``/send`` (Nodemailer-style JSON) and ``/send-raw``
(an RFC 5322 message), as :mod:`zonemta.http.routes_send` serves them."""

from __future__ import annotations

from typing import Any

from zonemta.http.openapi_common import errors, json_body, param, ref

SUBMITTER = [
    param("X-Authenticated-User", "header", "Recorded as the submitting user"),
    param("X-Originating-IP", "header", "Recorded as the client address (an IP)"),
]

SEND_PATHS: dict[str, dict[str, Any]] = {
    "/send": {
        "post": {
            "summary": "Queue a message given as Nodemailer-style JSON",
            "operationId": "send",
            "parameters": SUBMITTER,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("NodemailerMessage")}},
            },
            "responses": {
                "200": json_body(ref("Queued"), "Stored; delivery starts"),
                **errors(400, 401, 413, 415, 503),
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
                "200": json_body(ref("Queued"), "Stored; delivery starts"),
                **errors(400, 401, 408, 413, 503),
            },
        }
    },
}

SEND_SCHEMAS: dict[str, Any] = {
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
}

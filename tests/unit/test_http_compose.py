"""/send: Nodemailer JSON composed with the email package, parsed back and checked."""

from __future__ import annotations

import base64
import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest

from zonemta.http.compose import ComposeError, compose


def parsed(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_minimal_message_is_crlf_with_id_and_date() -> None:
    out = compose({"from": "a@x.test", "to": "b@y.test", "text": "hi\nthere"}, hostname="h.test")
    assert out.mail_from == "a@x.test" and out.recipients == ("b@y.test",)
    assert b"\n" not in out.content.replace(b"\r\n", b"")
    message = parsed(out.content)
    assert message["Message-ID"].endswith("@h.test>")
    assert message["Date"]
    assert message.get_content().splitlines() == ["hi", "there"]
    assert not out.smtputf8


def test_address_shapes_envelope_and_bcc() -> None:
    out = compose(
        {
            "from": {"name": "Ä", "address": "a@x.test"},
            "to": [{"name": "B", "address": "b@y.test"}, "c@y.test"],
            "cc": "D <d@y.test>, b@y.test",
            "bcc": ["e@z.test"],
            "replyTo": "r@x.test",
        },
        hostname="h.test",
    )
    assert out.recipients == ("b@y.test", "c@y.test", "d@y.test", "e@z.test")
    message = parsed(out.content)
    assert message["Bcc"] is None and b"e@z.test" not in out.content
    assert message["From"].addresses[0].display_name == "Ä"
    assert message["Reply-To"] == "r@x.test"


def test_envelope_overrides_headers() -> None:
    out = compose(
        {"from": "a@x.test", "to": "b@y.test", "envelope": {"from": "bounce@x.test", "to": "z@q"}},
        hostname="h.test",
    )
    assert out.mail_from == "bounce@x.test" and out.recipients == ("z@q",)


def test_attachments_inline_images_and_alternatives() -> None:
    out = compose(
        {
            "from": "a@x.test",
            "to": "b@y.test",
            "text": "plain",
            "html": '<img src="cid:logo">',
            "attachments": [
                {
                    "filename": "r.pdf",
                    "content": base64.b64encode(b"%PDF").decode(),
                    "encoding": "base64",
                },
                {
                    "filename": "l.png",
                    "content": base64.b64encode(b"PNG").decode(),
                    "encoding": "base64",
                    "cid": "logo",
                },
                {"filename": "n.txt", "content": "utf-8 text ✓"},
            ],
        },
        hostname="h.test",
    )
    message = parsed(out.content)
    files = {p.get_filename(): p for p in message.iter_attachments()}
    assert files["r.pdf"].get_content_type() == "application/pdf"
    assert files["r.pdf"].get_content() == b"%PDF"
    assert files["n.txt"].get_content().strip() == "utf-8 text ✓"
    html = message.get_body(("html",))
    assert html is not None
    related = [p for p in message.walk() if p.get("Content-ID") == "<logo>"]
    assert len(related) == 1 and related[0].get_content() == b"PNG"


def test_non_ascii_address_needs_smtputf8() -> None:
    out = compose({"from": "ä@x.test", "to": "b@y.test"}, hostname="h.test")
    assert out.smtputf8 and "ä@x.test".encode() in out.content


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"from": "a@x.test", "to": "b@y.test", "attachments": [{"path": "/x"}]}, "path"),
        ({"from": "a@x.test", "to": "b@y.test", "attachments": [{"href": "http://x"}]}, "href"),
        (
            {
                "from": "a@x.test",
                "to": "b@y.test",
                "attachments": [{"content": "!!", "encoding": "base64"}],
            },
            "base64",
        ),
        ({"from": "a@x.test", "to": "b@y.test", "attachments": [{"content": 1}]}, "content"),
        ({"from": "a@x.test"}, "no recipients"),
        ({"from": "a@x.test, c@x.test", "to": "b@y.test"}, "exactly one"),
        ({"from": "a@x.test", "to": "b"}, "address"),
        ({"from": "a@x.test", "to": "b@y.test", "subject": 3}, "string"),
        ({"from": "a@x.test", "to": "b@y.test", "headers": {"Bcc": "x@y"}}, "cannot be set"),
        ({"from": "a@x.test", "to": "b@y.test", "headers": {"bad name": "x"}}, "header name"),
        ({"from": "a@x.test", "to": "b@y.test", "headers": {"X-A": "a\nB: c"}}, "linefeed"),
        ({"from": "a@x.test", "to": "b@y.test", "amp": "x"}, "unknown key"),
        ("a string", "object"),
    ],
)
def test_refusals_name_the_problem(data: Any, words: str) -> None:
    with pytest.raises(ComposeError, match=words):
        compose(data, hostname="h.test")

"""Messages that carry a unique token, so a sink can tell each one apart and check that it
arrived whole, and a submitter that reports refusals instead of raising."""

from __future__ import annotations

import hashlib
import re
import smtplib

TOKEN_RE = re.compile(rb"X-Token: (t-[0-9a-z_-]+)\r\n")
DIGEST_RE = re.compile(rb"X-Body-Sha256: ([0-9a-f]{64})\r\n")


def token_message(token: str, body_bytes: int = 2000) -> bytes:
    """A message whose headers name ``token`` and the SHA-256 of its body; the body lines
    repeat the token, so any lost, doubled or foreign chunk changes the digest."""
    line = f"{token} the quick brown fox jumps over the lazy dog\r\n".encode()
    body = line * max(1, body_bytes // len(line))
    return (
        b"From: s@origin.test\r\nSubject: reliability\r\n"
        + f"X-Token: {token}\r\nX-Body-Sha256: {hashlib.sha256(body).hexdigest()}\r\n".encode()
        + b"\r\n"
        + body
    )


def check_intact(content: bytes) -> str:
    """The token of a delivered message, after checking its body against its digest.
    Raises AssertionError for a corrupted message."""
    token = TOKEN_RE.search(content)
    digest = DIGEST_RE.search(content)
    assert token and digest, f"no token or digest in {content[:300]!r}"
    body = content.split(b"\r\n\r\n", 1)[1]
    assert hashlib.sha256(body).hexdigest().encode() == digest[1], f"corrupted: {token[1]!r}"
    return token[1].decode()


def try_submit(port: int, recipient: str, message: bytes) -> tuple[int, str]:
    """One SMTP transaction; the reply to DATA (or the first refusal before it) as (code,
    text). A connection lost on the way is (0, reason): the message was not accepted."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.test")
            for code, text in (client.mail("s@origin.test"), client.rcpt(recipient)):
                if code != 250:
                    return code, text.decode()
            code, text = client.data(message)
            return code, text.decode()
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code, exc.smtp_error.decode("utf-8", "replace")
    except (smtplib.SMTPException, OSError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"

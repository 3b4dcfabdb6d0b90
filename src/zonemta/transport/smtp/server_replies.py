"""The replies the sans-IO SMTP server queues by itself, in one place.

Enhanced status codes follow RFC 3463 and are sent because the server advertises
ENHANCEDSTATUSCODES (RFC 2034). The greeting and the HELO/EHLO replies carry none (RFC 2034
section 3), nor does the intermediate 354.
"""

from __future__ import annotations

from zonemta.transport.smtp.reply import Reply


def _r(code: int, enhanced: str, text: str) -> Reply:
    return Reply(code, (text,), enhanced)


OK = _r(250, "2.0.0", "Ok")
BYE = _r(221, "2.0.0", "Bye")
VRFY_CANNOT = _r(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
START_DATA = Reply(354, ("End data with <CR><LF>.<CR><LF>",))
READY_FOR_TLS = _r(220, "2.0.0", "Ready to start TLS")

# Syntax and command errors.
UNKNOWN_COMMAND = _r(500, "5.5.1", "Error: command not recognized")
NOT_IMPLEMENTED = _r(502, "5.5.1", "Error: command not implemented")
LINE_TOO_LONG = _r(500, "5.5.2", "Error: line too long")
BAD_UTF8 = _r(500, "5.5.2", "Error: command is not valid UTF-8")
HELO_SYNTAX = _r(501, "5.5.2", "Syntax: HELO hostname")
EHLO_SYNTAX = _r(501, "5.5.2", "Syntax: EHLO hostname")
NO_PARAMETERS = _r(501, "5.5.4", "Syntax error: no parameters allowed")
VRFY_SYNTAX = _r(501, "5.5.4", "Syntax: VRFY address")
MAIL_SYNTAX = _r(501, "5.5.2", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = _r(501, "5.5.2", "Syntax: RCPT TO:<address>")
BAD_SENDER = _r(501, "5.5.2", "Bad sender address syntax")
BAD_RECIPIENT = _r(501, "5.5.2", "Bad recipient address syntax")
NULL_RECIPIENT = _r(501, "5.1.3", "Bad recipient address syntax: null recipient")
NEEDS_SMTPUTF8 = _r(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
ADDRESS_TOO_LONG = _r(553, "5.1.3", "Address too long (local part over 64 or domain over 255)")
PARAMETER_SYNTAX = _r(501, "5.5.4", "Bad parameter syntax")
DUPLICATE_PARAMETER = _r(501, "5.5.4", "Duplicate parameter")
BAD_SIZE = _r(501, "5.5.4", "Bad SIZE parameter")
BAD_BODY = _r(501, "5.5.4", "Bad BODY parameter (7BIT or 8BITMIME)")
BAD_SMTPUTF8 = _r(501, "5.5.4", "SMTPUTF8 takes no value")


def unsupported_parameter(name: str) -> Reply:
    """555 for an ESMTP parameter we did not advertise (RFC 5321 4.1.1.11)."""
    return _r(555, "5.5.4", f"Unsupported parameter: {name}")


# Limits.
SIZE_EXCEEDED = _r(552, "5.3.4", "Message size exceeds fixed limit")
HEADER_TOO_LARGE = _r(552, "5.3.4", "Message header block too large")
TOO_MANY_RECIPIENTS = _r(452, "4.5.3", "Error: too many recipients")

# Bad sequence (RFC 5321 4.3.2).
NEED_HELO = _r(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = _r(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = _r(503, "5.5.1", "Error: need MAIL command")
NO_VALID_RECIPIENTS = _r(554, "5.5.1", "Error: no valid recipients")
TLS_IN_TRANSACTION = _r(503, "5.5.1", "Error: STARTTLS not allowed during a mail transaction")
TLS_ALREADY_ACTIVE = _r(503, "5.5.1", "Error: TLS already active")
TLS_NOT_AVAILABLE = _r(502, "5.5.1", "Error: STARTTLS not available")
TLS_INJECTION = _r(554, "5.5.1", "Error: command pipelining after STARTTLS")
AUTH_IN_TRANSACTION = _r(503, "5.5.1", "Error: AUTH not allowed during a mail transaction")

# AUTH (RFC 4954).
AUTH_NOT_AVAILABLE = _r(502, "5.5.1", "Error: authentication not enabled")
AUTH_ALREADY = _r(503, "5.5.1", "Error: already authenticated")
AUTH_NEEDS_TLS = _r(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_UNKNOWN_MECHANISM = _r(504, "5.5.4", "Unrecognized authentication type")
AUTH_SYNTAX = _r(501, "5.5.2", "Syntax: AUTH mechanism [initial-response]")
AUTH_CANNOT_DECODE = _r(501, "5.5.2", "Cannot decode response")
AUTH_BAD_CREDENTIALS_SYNTAX = _r(501, "5.5.2", "Malformed credentials")
AUTH_CANCELLED = _r(501, "5.0.0", "Authentication cancelled")
AUTH_LINE_TOO_LONG = _r(500, "5.5.6", "Authentication exchange line too long")

# The session's error cap (Postfix smtpd_hard_error_limit precedent).
TOO_MANY_ERRORS = _r(421, "4.7.0", "Too many errors, closing connection")

HELP = _r(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH")

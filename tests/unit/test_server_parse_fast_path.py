"""The fast path of MAIL/RCPT argument parsing answers exactly as the full parse does."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from zonemta.transport.smtp import server_parse
from zonemta.transport.smtp.server_parse import (
    Refusal,
    _parse_mail_from,
    _parse_rcpt_to,
    parse_mail_from,
    parse_rcpt_to,
)

_ALPHABET = "aZ09._-+=!#~`{}|@<>\"' :,[]\\\u00e9\u212a\u017f\t"
_PREFIXES = ["FROM:", "from:", "FrOm:", "TO:", "to:", "tO:", "FROM: ", "TO:  ", "FRO:", ""]


def _outcome(parse: object, arg: str, **kwargs: object) -> object:
    try:
        return parse(arg, **kwargs)  # type: ignore[operator]
    except Refusal as refusal:
        return ("refused", refusal.reply)


def _same(arg: str) -> None:
    for utf8 in (False, True):
        assert _outcome(parse_rcpt_to, arg, utf8=utf8) == _outcome(_parse_rcpt_to, arg, utf8=utf8)
    for max_size in (0, 100):
        assert _outcome(parse_mail_from, arg, max_size=max_size) == _outcome(
            _parse_mail_from, arg, max_size=max_size
        )


@settings(max_examples=3000)
@given(st.sampled_from(_PREFIXES), st.text(_ALPHABET, max_size=40))
@example("FROM:", "<a@b.test>")
@example("TO:", "<1c@d.test>")
@example("from:", "<a..b.@x_y.z-1>")
@example("TO:", "<a@b.test> SIZE=10")
@example("FROM:", "<@r.test:a@b.test>")
@example("TO:", "<a@b..test>")
@example("TO:", "<a@.test>")
@example("TO:", "<a@test.>")
@example("FROM:", "<\u212a@b.test>")
def test_the_fast_path_answers_as_the_full_parse(prefix: str, rest: str) -> None:
    _same(prefix + rest)


def test_the_fast_path_agrees_at_the_length_limits() -> None:
    label = "l" * 63
    for local in ("a" * 64, "a" * 65):
        for domain in (
            label + ".test",
            "m" * 64 + ".test",
            ".".join([label] * 4)[:255],
            ".".join([label] * 4)[:254] + ".x",
            ".".join([label] * 4),
        ):
            for prefix in ("FROM:<", "TO:<", "to: <"):
                _same(f"{prefix}{local}@{domain}>")


def test_the_usual_arguments_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is the one taken for plain addresses (the full parse is not called)."""

    def fail(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("full parse called")

    monkeypatch.setattr(server_parse, "_parse_mail_from", fail)
    monkeypatch.setattr(server_parse, "_parse_rcpt_to", fail)
    assert parse_mail_from("FROM:<a@b.test>", max_size=0) == ("a@b.test", {})
    assert parse_rcpt_to("TO:<1c@d.test>", utf8=False) == ("1c@d.test", {})

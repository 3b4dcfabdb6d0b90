"""A reply's wire form is built once, and is not part of the value."""

from __future__ import annotations

import pickle

import attrs

from zonemta.transport.smtp.reply import Reply


def test_the_wire_form_is_built_once_per_reply() -> None:
    reply = Reply(250, ("first", "second"), "2.0.0")
    wire = reply.to_bytes()
    assert wire == b"250-2.0.0 first\r\n250 2.0.0 second\r\n"
    assert reply.to_bytes() is wire


def test_the_cached_wire_form_stays_out_of_equality_pickles_and_dicts() -> None:
    reply = Reply(421, ("bye",), "4.4.2")
    reply.to_bytes()
    assert reply == Reply(421, ("bye",), "4.4.2")
    assert hash(reply) == hash(Reply(421, ("bye",), "4.4.2"))
    assert attrs.asdict(reply) == {"code": 421, "lines": ("bye",), "enhanced": "4.4.2"}
    copy = pickle.loads(pickle.dumps(reply))
    assert copy == reply and copy.to_bytes() == b"421 4.4.2 bye\r\n"

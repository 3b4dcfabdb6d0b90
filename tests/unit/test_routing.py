from __future__ import annotations

from typing import Any

from zonemta.conf import config_from_dict
from zonemta.engine.intake.routing import Router, strip_routing_fields
from zonemta.headers import unfolded_fields


def router(**zones: Any) -> Router:
    return Router(config_from_dict({"zones": zones}))


def zones_of(routes: list[Any]) -> list[str]:
    return [r.zone for r in routes]


ZONES = {
    "fast": {},
    "news": {"sender_domains": ["News.Test"]},
    "vip": {"recipient_domains": ["vip.test"]},
    "user42": {"routing_headers": {"X-User-ID": "42"}},
    "off": {"disabled": True, "recipient_domains": ["off.test"]},
}


def test_x_sending_zone_only_from_allowed_interfaces() -> None:
    r = router(**ZONES)
    headers = b"Subject: x\r\nX-Sending-Zone: fast\r\n"
    assert zones_of(r.route(["a@x.test"], interface="api", headers=headers)) == ["fast"]
    assert zones_of(r.route(["a@x.test"], interface="bounce", headers=headers)) == ["fast"]
    assert zones_of(r.route(["a@x.test"], interface="feeder", headers=headers)) == ["default"]


def test_x_sending_zone_naming_an_unknown_or_disabled_zone_falls_through() -> None:
    r = router(**ZONES)
    for zone in ("nope", "off"):
        headers = f"X-Sending-Zone: {zone}\r\n".encode()
        assert zones_of(r.route(["a@x.test"], interface="api", headers=headers)) == ["default"]


def test_routing_headers_match_the_lowest_field_case_insensitively() -> None:
    r = router(**ZONES)
    assert zones_of(r.route(["a@x.test"], headers=b"x-user-id:  42 \r\n")) == ["user42"]
    assert zones_of(r.route(["a@x.test"], headers=b"X-User-ID: 43\r\n")) == ["default"]


def test_sender_then_recipient_domains_then_default() -> None:
    r = router(**ZONES)
    routes = r.route(["a@vip.test", "b@other.test"], mail_from="me@news.test")
    assert zones_of(routes) == ["news", "news"]  # the sender's rule decides for the message
    routes = r.route(["a@VIP.test", "b@other.test", "c@off.test"], mail_from="me@x.test")
    assert zones_of(routes) == ["vip", "default", "default"]


def test_an_internal_submission_names_its_zone() -> None:
    r = router(**ZONES)
    assert zones_of(r.route(["a@vip.test"], zone="bounces")) == ["bounces"]


def test_default_zone_is_configurable() -> None:
    config = config_from_dict({"zones": {"main": {}}, "routing": {"default_zone": "main"}})
    assert zones_of(Router(config).route(["a@x.test"])) == ["main"]


def test_strip_routing_fields_removes_folded_fields_and_keeps_the_rest() -> None:
    headers = (
        b"From: a@x.test\r\nBcc: hidden@x.test,\r\n\tother@x.test\r\n"
        b"X-Sending-Zone: fast\r\nSubject: about bcc\r\nbcc :late@x.test\r\n"
    )
    assert strip_routing_fields(headers) == b"From: a@x.test\r\nSubject: about bcc\r\n"
    plain = b"From: a@x.test\r\nSubject: hi\r\n"
    assert strip_routing_fields(plain) is plain


def test_header_fields_unfold() -> None:
    assert unfolded_fields(b"A: one\r\n two\r\nB:x\r\n") == [("a", "one two"), ("b", "x")]

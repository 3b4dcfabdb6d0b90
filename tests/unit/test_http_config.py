"""[api] configuration and the `zonemta events` command's pieces."""

from __future__ import annotations

import argparse

import pytest

from zonemta.conf import ConfigError, config_from_dict
from zonemta.events_cli import EventsOptions, add_arguments, format_event, stream_url


def test_defaults() -> None:
    api = config_from_dict({}).api
    assert (api.enabled, api.host, api.port, api.token) == (True, "127.0.0.1", 12080, "")
    assert api.public == ("/metrics",) and api.max_send_size == 30 * 1024 * 1024


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"host": "0.0.0.0"}, "config.api: 'host' '0.0.0.0' is not a loopback address"),
        ({"port": 70000}, "'port' must be <= 65535"),
        ({"public": ["metrics"]}, "must start with '/'"),
        ({"token": "has space"}, "Bearer token"),
        ({"max_send_size": "10B"}, "'max_send_size' must be >= 1024"),
        ({"event_buffer": 0}, "'event_buffer' must be >= 1"),
        ({"heartbeat": 0}, "heartbeat"),
        ({"tokn": "x"}, "unknown key(s): tokn"),
    ],
)
def test_bad_values_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict({"api": table})
    assert message in str(error.value)


def test_public_address_with_token_is_allowed() -> None:
    api = config_from_dict({"api": {"host": "0.0.0.0", "token": "abc"}}).api
    assert api.host == "0.0.0.0"


def test_stream_url_carries_filters() -> None:
    options = EventsOptions(url="http://127.0.0.1:9/events", zones=("a", "b"), ids=("x",))
    assert stream_url(options) == "ws://127.0.0.1:9/events?zone=a&zone=b&id=x"


def test_options_from_a_config_file(tmp_path: object) -> None:
    from zonemta.events_cli import options_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["-c", "x.toml", "--zone", "z", "--json"])
    config = config_from_dict({"api": {"host": "::1", "port": 8080, "token": "tok"}})
    options = options_from_args(args, lambda _path: config)
    assert options.url == "ws://[::1]:8080/events" and options.token == "tok"
    assert options.zones == ("z",) and options.json_lines


def test_readable_lines() -> None:
    line = format_event(
        {
            "type": "delivery",
            "id": "abc",
            "seq": 2,
            "time": 0.25,
            "zone": "default",
            "recipient": "r@x.test",
            "from_state": "sending",
            "to_state": "delivered",
            "mx": "mx.x.test",
            "response": "250 2.0.0 OK",
        }
    )
    assert line == (
        "00:00:00.250 abc.2 default sending→delivered to=<r@x.test> mx=mx.x.test "
        "response='250 2.0.0 OK'"
    )
    queued = format_event({"type": "message.queued", "id": "abc", "time": 0, "size": 10})
    assert queued == "00:00:00.000 abc message.queued size=10"

"""zonemta.conf: the model's defaults, the strict loader, units, and the TOML round trip."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zonemta.conf import (
    ByteSize,
    Config,
    ConfigError,
    Durability,
    LogLevel,
    QueueBackend,
    SmtpInterface,
    TlsMode,
    ZoneConfig,
    config_from_dict,
    dump_config,
    format_duration,
    format_size,
    load_config,
    parse_duration,
    parse_nameserver,
    parse_size,
    to_toml,
)

MB = 1024 * 1024

FULL_EXAMPLE = """\
hostname = "mta.example.com"

[smtp.feeder]
host = "127.0.0.1"
port = 2525
max_size = "50MB"
max_recipients = 500
max_line_length = 4096
max_header_size = "512KB"
idle_timeout = "2m"
data_timeout = 900
max_clients = 200

[smtp.submission]
enabled = false
host = "127.0.0.2"
port = 587
hostname = "submit.example.com"

[queue]
backend = "sqlite"
path = "/var/spool/zonemta"
instance_id = "mta-1.eu"
retry_schedule = ["1m", "90s", "1.5h", 7200]
max_queue_time = "3d"
lease_time = "30s"
durability = "normal"
body_chunk_size = "1MB"

[dns]
nameservers = ["127.0.0.1:5353", "8.8.8.8", "[::1]:53", "2001:db8::1"]
timeout = 2.5
cache_size = 500

[delivery]
connect_timeout = "30s"
greeting_timeout = "2m"
command_timeout = "2m"
data_timeout = "15m"
max_mx_hosts = 5

[zones.default]
connections = 20

[zones.fast]
connections = 50
local_address = "192.0.2.10"
name = "fast.example.com"
tls = "required"

[zones.v6]
ignore_ipv6 = false
prefer_ipv6 = true
local_address = "2001:db8::25"

[zones.relay]
host = "smtp.relay.example"
port = 587
tls = "none"

[log]
level = "debug"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "zonemta.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _errors(data: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return info.value.errors


def _only_error(data: dict[str, Any]) -> str:
    errors = _errors(data)
    assert len(errors) == 1, errors
    return errors[0]


# ------------------------------------------------------------------------------------ defaults


def test_defaults() -> None:
    config = load_config(None)
    assert config == Config()
    assert config == config_from_dict({})
    assert config.hostname
    assert list(config.smtp) == ["feeder"]
    feeder = config.smtp["feeder"]
    assert (feeder.host, feeder.port, feeder.enabled) == ("127.0.0.1", 2525, True)
    assert feeder.max_size == 30 * MB
    assert isinstance(feeder.max_size, ByteSize)
    assert feeder.max_line_length == 2048
    assert feeder.max_header_size == MB
    assert feeder.idle_timeout == timedelta(minutes=5)
    assert feeder.data_timeout == timedelta(minutes=10)
    assert (feeder.max_recipients, feeder.max_clients) == (1000, 1000)
    queue = config.queue
    assert queue.backend is QueueBackend.SQLITE
    assert queue.path == Path("zonemta-data")
    assert queue.instance_id == "default"
    assert queue.retry_schedule[:6] == tuple(timedelta(minutes=m) for m in (5, 7, 8, 25, 75, 120))
    assert queue.retry_schedule[6:] == (timedelta(hours=4),) * 11
    assert queue.max_queue_time == timedelta(days=5)
    assert queue.lease_time == timedelta(minutes=5)
    assert queue.durability is Durability.FULL
    assert queue.body_chunk_size == 256 * 1024
    assert config.dns.nameservers == ()
    assert config.dns.timeout == timedelta(seconds=5)
    assert config.dns.cache_size == 10000
    delivery = config.delivery
    assert delivery.connect_timeout == timedelta(seconds=60)
    assert delivery.greeting_timeout == delivery.command_timeout == timedelta(minutes=5)
    assert delivery.data_timeout == timedelta(minutes=10)
    assert delivery.max_mx_hosts == 10
    assert config.zones == {"default": ZoneConfig(), "bounces": ZoneConfig(connections=1)}
    zone = config.zones["default"]
    assert (zone.connections, zone.port, zone.tls) == (10, 25, TlsMode.OPPORTUNISTIC)
    assert (zone.ignore_ipv6, zone.prefer_ipv6, zone.smart_host) == (True, False, False)
    assert config.log.level is LogLevel.INFO
    assert config.log.level.logging_level == 20


def test_builtin_zones_added_but_not_overridden() -> None:
    config = config_from_dict({"zones": {"bounces": {"connections": 3}, "x": {}}})
    assert set(config.zones) == {"default", "bounces", "x"}
    assert config.zones["bounces"].connections == 3
    assert config.zones["default"] == ZoneConfig()
    assert set(Config(zones={"y": ZoneConfig()}).zones) == {"y", "default", "bounces"}


def test_hostname_resolution() -> None:
    config = config_from_dict(
        {
            "hostname": "main.example",
            "smtp": {"a": {}, "b": {"hostname": "b.example"}},
            "zones": {"z": {"name": "z.example"}},
        }
    )
    assert config.interface_hostname("a") == "main.example"
    assert config.interface_hostname("b") == "b.example"
    assert config.zone_hostname("default") == "main.example"
    assert config.zone_hostname("z") == "z.example"
    with pytest.raises(KeyError):
        config.zone_hostname("missing")


def test_configured_smtp_replaces_default_interface() -> None:
    config = config_from_dict({"smtp": {"mx": {"port": 25}}})
    assert list(config.smtp) == ["mx"]


def test_model_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.hostname = "x"  # type: ignore[misc]


# ---------------------------------------------------------------------------- full file


def test_full_example_loads(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, FULL_EXAMPLE))
    assert config.hostname == "mta.example.com"
    assert config.smtp["feeder"].max_size == 50 * MB
    assert config.smtp["feeder"].max_line_length == 4096
    assert config.smtp["feeder"].data_timeout == timedelta(minutes=15)
    assert config.smtp["submission"].enabled is False
    assert config.interface_hostname("submission") == "submit.example.com"
    assert config.queue.retry_schedule == (
        timedelta(minutes=1),
        timedelta(seconds=90),
        timedelta(minutes=90),
        timedelta(hours=2),
    )
    assert config.queue.durability is Durability.NORMAL
    assert config.dns.timeout == timedelta(seconds=2.5)
    assert config.dns.parsed_nameservers() == [
        ("127.0.0.1", 5353),
        ("8.8.8.8", 53),
        ("::1", 53),
        ("2001:db8::1", 53),
    ]
    assert config.zones["fast"].tls is TlsMode.REQUIRED
    assert type(config.zones["fast"].tls) is TlsMode
    assert config.zones["relay"].smart_host
    assert config.zones["bounces"].connections == 1
    assert config.log.level is LogLevel.DEBUG


def test_dump_round_trips(tmp_path: Path) -> None:
    original = load_config(_write(tmp_path, FULL_EXAMPLE))
    text = dump_config(original)
    again = load_config(_write(tmp_path, text))
    assert again == original
    assert dump_config(again) == text
    assert 'max_size = "50MB"' in text
    assert 'retry_schedule = ["1m", "90s", "90m", "2h"]' in text
    assert 'timeout = "2.5s"' in text


def test_dump_defaults_round_trips() -> None:
    config = Config(hostname="h.example")
    assert config_from_dict(tomllib.loads(dump_config(config))) == config


def test_to_toml_values() -> None:
    data = {
        "a": 'quote " back \\ tab \t nl \n bell \x07',
        "f": 1.5,
        "inf": float("inf"),
        "t": True,
        "list": [1, 2],
        "inline": [{"x": 1, "y": "z"}, {}],
        "key with space": 1,
        "empty": {},
        "nested": {"deep": {"v": -1}},
    }
    assert tomllib.loads(to_toml(data)) == data
    # An unset optional setting is left out; None where a value must stand cannot be written.
    assert tomllib.loads(to_toml({"x": None, "t": {"k": None, "v": 1}})) == {"t": {"v": 1}}
    with pytest.raises(TypeError, match="cannot write"):
        to_toml({"x": [None]})


# ------------------------------------------------------------------------- strict scalars


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("zones.default", "connections", "ten", "expected int, got str 'ten'"),
        ("zones.default", "connections", "25", "expected int, got str '25'"),
        ("zones.default", "connections", True, "expected int, got bool True"),
        ("zones.default", "connections", 2.5, "expected int, got float 2.5"),
        ("zones.default", "ignore_ipv6", "false", "expected bool, got str 'false'"),
        ("zones.default", "ignore_ipv6", 0, "expected bool, got int 0"),
        ("zones.default", "host", 1, "expected str, got int 1"),
        ("zones.default", "host", ["a"], "expected str, got list ['a']"),
        ("smtp.feeder", "max_size", 1.5, "expected size (bytes or e.g. '30MB'), got float 1.5"),
        ("smtp.feeder", "max_size", True, "expected size (bytes or e.g. '30MB'), got bool True"),
        ("smtp.feeder", "idle_timeout", False, "expected duration"),
        ("queue", "path", 3, "expected str (a path), got int 3"),
        ("queue", "retry_schedule", "5m", "expected array, got str '5m'"),
        ("dns", "nameservers", "1.1.1.1", "expected array, got str '1.1.1.1'"),
    ],
)
def test_no_coercion(section: str, key: str, value: object, message: str) -> None:
    data: dict[str, Any] = {}
    table = data
    for part in section.split("."):
        table = table.setdefault(part, {})
    table[key] = value
    error = _only_error(data)
    assert error.startswith(f"config.{section}.{key}: {message}")


def test_float_hook_accepts_int_and_rejects_others() -> None:
    from zonemta.conf.loader import converter

    assert converter.structure(3, float) == 3.0
    assert type(converter.structure(3, float)) is float
    assert converter.structure(2.5, float) == 2.5
    for bad in ("3", True, None):
        with pytest.raises(TypeError, match="expected float"):
            converter.structure(bad, float)


@pytest.mark.parametrize(
    ("section", "key", "enum_name"),
    [
        ("zones.default", "tls", "TlsMode"),
        ("queue", "backend", "QueueBackend"),
        ("queue", "durability", "Durability"),
        ("log", "level", "LogLevel"),
    ],
)
def test_str_enums_are_validated(section: str, key: str, enum_name: str) -> None:
    # The str hook is found by singledispatch for str-subclass enums too; it must not let an
    # arbitrary string through as the enum's value.
    data: dict[str, Any] = {}
    table = data
    for part in section.split("."):
        table = table.setdefault(part, {})
    table[key] = "sometimes"
    error = _only_error(data)
    assert error.startswith(f"config.{section}.{key}: 'sometimes' is not a valid {enum_name}")
    table[key] = 1
    assert "expected one of" in _only_error(data)


def test_enum_values_structure_to_members() -> None:
    config = config_from_dict({"zones": {"z": {"tls": "none"}}, "log": {"level": "error"}})
    assert type(config.zones["z"].tls) is TlsMode
    assert config.zones["z"].tls is TlsMode.NONE
    assert config.log.level is LogLevel.ERROR


# ------------------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"max_sise": 1}, "config"),
        ({"smtp": {"feeder": {"max_sise": 1}}}, "config.smtp.feeder"),
        ({"queue": {"max_sise": 1}}, "config.queue"),
        ({"dns": {"max_sise": 1}}, "config.dns"),
        ({"delivery": {"max_sise": 1}}, "config.delivery"),
        ({"zones": {"default": {"max_sise": 1}}}, "config.zones.default"),
        ({"log": {"max_sise": 1}}, "config.log"),
    ],
)
def test_unknown_keys_at_every_level(data: dict[str, Any], path: str) -> None:
    assert _only_error(data) == f"{path}: unknown key(s): max_sise"


def test_several_unknown_keys_listed_sorted() -> None:
    assert _only_error({"log": {"b": 1, "a": 2}}) == "config.log: unknown key(s): a, b"


def test_bad_names_and_non_tables() -> None:
    errors = _errors(
        {"zones": {"bad name": {}, "ok": 3}, "smtp": {"é": {}}, "queue": 5},
    )
    assert set(errors) == {
        "config.zones: bad name 'bad name' (use letters, digits, '_' and '-')",
        "config.zones.ok: expected table, got int 3",
        "config.smtp: bad name 'é' (use letters, digits, '_' and '-')",
        "config.queue: expected table, got int 5",
    }


def test_top_level_not_a_table() -> None:
    with pytest.raises(ConfigError, match="config: expected table, got list"):
        config_from_dict([])  # type: ignore[arg-type]


# ---------------------------------------------------------------------- errors reported together


def test_every_error_reported_in_one_message(tmp_path: Path) -> None:
    text = """\
[smtp.feeder]
max_sise = 3
enabled = "false"

[zones.default]
connections = "ten"

[zones.fast]
connections = 0
tls = "sometimes"

[queue]
retry_schedule = ["5m", "ten minutes"]

[delivery]
max_mx_hosts = 2.5
"""
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    message = str(info.value)
    expected = [
        "config.smtp.feeder.enabled: expected bool, got str 'false'",
        "config.smtp.feeder: unknown key(s): max_sise",
        "config.queue.retry_schedule[1]: bad duration 'ten minutes' "
        "(use seconds or e.g. '30s', '5m', '2h', '3d')",
        "config.delivery.max_mx_hosts: expected int, got float 2.5",
        "config.zones.default.connections: expected int, got str 'ten'",
        "config.zones.fast.tls: 'sometimes' is not a valid TlsMode",
    ]
    for line in expected:
        assert line in message
    assert message.splitlines()[0] == f"invalid configuration ({tmp_path / 'zonemta.toml'}):"
    assert len(info.value.errors) == len(expected)


def test_validator_messages_survive() -> None:
    assert _only_error({"smtp": {"feeder": {"port": 70000}}}) == (
        "config.smtp.feeder: 'port' must be <= 65535: 70000"
    )
    errors = _errors(
        {
            "zones": {"fast": {"connections": 0}, "b": {"local_address": "300.1.1.1"}},
            "queue": {"lease_time": "5s", "body_chunk_size": "1KB"},
        }
    )
    assert "config.zones.fast: 'connections' must be >= 1: 0" in errors
    assert "config.zones.b: 'local_address' must be an IP address or empty: '300.1.1.1'" in errors
    assert "config.queue: 'lease_time' must be >= 10s: 5s" in errors
    assert len(errors) == 3  # queue stops at its first failing validator


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"smtp": {"a": {"max_line_length": 100}}}, "'max_line_length' must be >= 512: 100"),
        ({"smtp": {"a": {"port": -1}}}, "'port' must be >= 0: -1"),
        ({"smtp": {"a": {"idle_timeout": 0}}}, "'idle_timeout' must be > 0s: 0s"),
        ({"zones": {"z": {"port": 0}}}, "'port' must be >= 1: 0"),
        ({"zones": {"z": {"prefer_ipv6": True}}}, "'prefer_ipv6' needs 'ignore_ipv6 = false'"),
        ({"zones": {"z": {"local_address": "::1"}}}, "is IPv6 but 'ignore_ipv6' is true"),
        ({"queue": {"retry_schedule": []}}, "'retry_schedule' must not be empty"),
        ({"queue": {"retry_schedule": ["5m", 0]}}, "entries must be > 0s: [1] is 0s"),
        ({"queue": {"instance_id": ""}}, "'instance_id' must be letters"),
        ({"queue": {"instance_id": "a/b"}}, "'instance_id' must be letters"),
        ({"queue": {"body_chunk_size": "32MB"}}, "'body_chunk_size' must be <= 16777216"),
        ({"queue": {"path": ""}}, "path must not be empty"),
        ({"hostname": "two words"}, "'hostname' must be a host name without spaces"),
    ],
)
def test_model_limits(data: dict[str, Any], fragment: str) -> None:
    assert fragment in _only_error(data)


def test_zone_ipv6_local_address_allowed_when_ipv6_enabled() -> None:
    zone = ZoneConfig(ignore_ipv6=False, local_address="2001:db8::1")
    assert zone.local_address == "2001:db8::1"


def test_code_built_sizes_become_bytesize() -> None:
    assert type(SmtpInterface(max_size=1000).max_size) is ByteSize


# ---------------------------------------------------------------------------- file handling


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, 'hostname = "x"\n[zones.default\nconnections = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (error,) = info.value.errors
    assert error.startswith(f"{path}:2:")
    assert "TOML syntax error at line 2, column" in error


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="file not found") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_directory_and_bad_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)
    path = tmp_path / "bad.toml"
    path.write_bytes(b'hostname = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# -------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("3d", timedelta(days=3)),
        ("1w", timedelta(weeks=1)),
        ("1.5h", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        (" 10 M ", timedelta(minutes=10)),
        ("45", timedelta(seconds=45)),
        (30, timedelta(seconds=30)),
        (0, timedelta(0)),
        (1.25, timedelta(seconds=1.25)),
    ],
)
def test_parse_duration(text: str | int | float, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "bad", ["ten minutes", "5 minutes", "", "-5m", "5x", "1e3s", "m", True, -1, -0.5, float("nan")]
)
def test_parse_duration_rejects(bad: str | int | float) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(bad)


def test_bad_duration_message() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("ten minutes")
    assert str(info.value) == (
        "bad duration 'ten minutes' (use seconds or e.g. '30s', '5m', '2h', '3d')"
    )


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(hours=2), "2h"),
        (timedelta(seconds=90), "90s"),
        (timedelta(minutes=90), "90m"),
        (timedelta(milliseconds=1500), "1.5s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(microseconds=1), "0.001ms"),
        (timedelta(days=14), "2w"),
        (timedelta(days=5), "5d"),
        (timedelta(seconds=61), "61s"),
    ],
)
def test_format_duration(td: timedelta, text: str) -> None:
    assert format_duration(td) == text


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(timedelta(seconds=-1))


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10_000)))
def test_duration_round_trip(td: timedelta) -> None:
    assert parse_duration(format_duration(td)) == td


# ------------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30MB", 30 * MB),
        ("512KB", 512 * 1024),
        ("1GB", 1024**3),
        ("100B", 100),
        ("30MiB", 30 * MB),
        ("30mb", 30 * MB),
        ("4k", 4096),
        ("1.5KB", 1536),
        ("2048", 2048),
        (2048, 2048),
        (0, 0),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    result = parse_size(text)
    assert result == expected
    assert isinstance(result, ByteSize)


@pytest.mark.parametrize("bad", ["ten", "30 megs", "", "-1KB", "0.5B", "1.1KB", "MB", True, -1])
def test_parse_size_rejects(bad: str | int) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("n", "text"),
    [(30 * MB, "30MB"), (2048, "2KB"), (1000, "1000B"), (0, "0B"), (1024**3, "1GB")],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@given(st.integers(min_value=0, max_value=2**50))
def test_size_round_trip(n: int) -> None:
    assert parse_size(format_size(n)) == n


# ------------------------------------------------------------------------------ nameservers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.1.1.1", ("1.1.1.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("2001:db8::1", ("2001:db8::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[2001:db8::1]", ("2001:db8::1", 53)),
    ],
)
def test_parse_nameserver(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "1.2.3",
        "dns.google",
        "1.1.1.1:0",
        "1.1.1.1:70000",
        "1.1.1.1:x",
        "[1.1.1.1]:53",
        "[::1]x",
        "",
    ],
)
def test_parse_nameserver_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="bad nameserver"):
        parse_nameserver(bad)


def test_nameservers_validated_in_config() -> None:
    error = _only_error({"dns": {"nameservers": ["1.1.1.1", "1.2.3"]}})
    assert error == (
        "config.dns: 'nameservers'[1]: bad nameserver '1.2.3' "
        "(use 'ip', 'ip:port' or '[ipv6]:port')"
    )
    assert "expected str, got int 53" in _only_error({"dns": {"nameservers": [53]}})


def test_docs_example_loads(tmp_path: Path) -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    text = docs.read_text(encoding="utf-8")
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    config = load_config(_write(tmp_path, example))
    assert config.zones["fast"].tls is TlsMode.REQUIRED
    assert set(config.zones) == {"default", "bounces", "fast", "relay"}


def test_zone_max_recipients_defaults_to_50_and_errors_name_the_key() -> None:
    assert config_from_dict({}).zones["default"].max_recipients == 50
    assert (
        config_from_dict({"zones": {"default": {"max_recipients": 1}}})
        .zones["default"]
        .max_recipients
        == 1
    )
    for bad in (0, 1001, "many"):
        with pytest.raises(ConfigError) as info:
            config_from_dict({"zones": {"default": {"max_recipients": bad}}})
        assert "config.zones.default" in str(info.value)
        assert "max_recipients" in str(info.value)

"""The outbound TLS settings: ``[outbound_tls]`` and the zones' ``tls``, ``mta_sts``, ``dane``."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from zonemta.conf import ConfigError, TlsMode, config_from_dict, dump_config
from zonemta.transport.dns import MxResolver
from zonemta.transport.tls_policy import OutboundTls


def test_defaults_keep_opportunistic_tls_with_mta_sts_and_dane() -> None:
    config = config_from_dict({})
    zone = config.zones["default"]
    assert (zone.tls, zone.mta_sts, zone.dane) == (TlsMode.OPPORTUNISTIC, True, True)
    tls = config.outbound_tls
    assert (tls.ca_file, tls.mta_sts_port, tls.mta_sts_cache_size) == ("", 443, 1000)
    assert tls.mta_sts_timeout == timedelta(seconds=20)


def test_settings_load_and_round_trip_through_the_dump(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not read by the model\n")
    config = config_from_dict(
        {
            "outbound_tls": {"ca_file": str(ca_file), "mta_sts_port": 8443},
            "zones": {"secure": {"tls": "verify", "mta_sts": False, "dane": False}},
        }
    )
    zone = config.zones["secure"]
    assert (zone.tls, zone.mta_sts, zone.dane) == (TlsMode.VERIFY, False, False)
    dumped = tomllib.loads(dump_config(config))
    assert dumped["outbound_tls"]["mta_sts_port"] == 8443
    assert config_from_dict(dumped) == config


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"outbound_tls": {"ca_file": "/nowhere/ca.pem"}}, "file not found: '/nowhere/ca.pem'"),
        ({"outbound_tls": {"mta_sts_port": 0}}, "config.outbound_tls"),
        ({"outbound_tls": {"mta_sts_timeout": "0s"}}, "'mta_sts_timeout' must be > 0s"),
        ({"outbound_tls": {"max_age": 5}}, "config.outbound_tls: unknown key(s): max_age"),
        ({"zones": {"default": {"tls": "strict"}}}, "config.zones.default.tls"),
        ({"zones": {"default": {"dane": "yes"}}}, "config.zones.default.dane"),
    ],
)
def test_bad_settings_name_the_key(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    assert fragment in str(caught.value)


def test_a_ca_file_that_is_not_pem_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("this is not a certificate\n")
    config = config_from_dict({"outbound_tls": {"ca_file": str(ca_file)}})
    with pytest.raises(ConfigError, match=r"config\.outbound_tls\.ca_file: cannot load"):
        OutboundTls.from_config(config, MxResolver(nameservers=[("127.0.0.1", 1)]))

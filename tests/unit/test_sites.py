"""Sites (MX rollup) in the domain policy: learned from MX hosts served by a loopback DNS
server; domains of one site share one settings table and one rate bucket."""

from __future__ import annotations

import pytest

from tests.support.dnsserver import run_dns_server
from zonemta.conf import ConfigError, config_from_dict
from zonemta.engine.delivery.zones import DomainPolicy
from zonemta.transport.dns import MxResolver

ZONE_FILE = """
$ORIGIN test.
$TTL 300
@            IN SOA ns.test. admin.test. 1 7200 3600 1209600 300
a            IN MX 10 aspmx.provider.test.
b            IN MX 10 alt.aspmx.provider.test.
own          IN MX 10 mx.own.test.
aspmx.provider     IN A 127.0.0.1
alt.aspmx.provider IN A 127.0.0.1
mx.own       IN A 127.0.0.1
"""


def test_site_tables_are_checked() -> None:
    config_from_dict({"domains": {"*.provider.test": {"max_connections": 2}}})
    with pytest.raises(ConfigError, match=r"'domains'.*'\*bad'"):
        config_from_dict({"domains": {"*bad": {"max_connections": 2}}})


async def test_domains_at_one_provider_share_a_site_and_its_bucket() -> None:
    async with run_dns_server(ZONE_FILE) as dns:
        config = config_from_dict(
            {
                "domains": {
                    "default": {"max_connections": 3},
                    "*.provider.test": {"rate": "10/minute"},
                }
            }
        )
        resolver = MxResolver(nameservers=[("127.0.0.1", dns.port)], timeout=2.0)
        policy = DomainPolicy(config, resolver)
        assert policy.site_of("a.test") == "a.test"  # not learned yet
        assert policy.needs_site("a.test")
        assert await policy.learn_site("a.test") == "*.provider.test"
        assert await policy.learn_site("b.test") == "*.provider.test"
        assert await policy.learn_site("own.test") == "own.test"
        assert await policy.learn_site("missing.test") == "missing.test"  # NXDOMAIN
        assert not policy.needs_site("a.test")
        assert policy.members("*.provider.test") == {"*.provider.test", "a.test", "b.test"}
        site = policy.settings(policy.site_of("b.test"))
        assert site.max_connections == 3 and str(site.rate) == "10/minute"
        assert policy.bucket(policy.site_of("a.test")) is policy.bucket(policy.site_of("b.test"))
        assert policy.bucket("own.test") is None


async def test_without_site_tables_nothing_is_looked_up() -> None:
    policy = DomainPolicy(config_from_dict({}), MxResolver(nameservers=[("127.0.0.1", 1)]))
    assert not policy.needs_site("a.test")
    assert await policy.learn_site("a.test") == "a.test"


ROLLUP_ZONE = """
$ORIGIN test.
$TTL 300
@          IN SOA ns.test. admin.test. 1 7200 3600 1209600 300
one        IN MX 10 mx1.shared.test.
one        IN MX 20 mx2.shared.test.
two        IN MX 10 mx2.shared.test.
two        IN MX 10 mx1.shared.test.
three      IN MX 10 mx1.shared.test.
own        IN MX 10 mx1.shared.test.
own        IN MX 20 mx2.shared.test.
mx1.shared IN A 127.0.0.1
mx2.shared IN A 127.0.0.1
"""


async def test_mx_rollup_groups_domains_by_their_mx_host_set() -> None:
    async with run_dns_server(ROLLUP_ZONE) as dns:
        config = config_from_dict(
            {
                "domains": {
                    "default": {"mx_rollup": True, "max_connections": 2},
                    "own.test": {"max_connections": 7},
                }
            }
        )
        policy = DomainPolicy(config, MxResolver(nameservers=[("127.0.0.1", dns.port)]))
        group = "mx:mx1.shared.test,mx2.shared.test"
        assert await policy.learn_site("one.test") == group
        assert await policy.learn_site("two.test") == group  # same set, other preferences
        assert await policy.learn_site("three.test") == "mx:mx1.shared.test"  # another set
        assert await policy.learn_site("own.test") == "own.test"  # its own table wins
        assert policy.members(group) == {group, "one.test", "two.test"}
        assert policy.settings(group).max_connections == 2


def test_mx_rollup_belongs_in_the_default_table() -> None:
    with pytest.raises(ConfigError, match=r"'mx_rollup' goes in \[domains\.default\]"):
        config_from_dict({"domains": {"x.test": {"mx_rollup": True}}})

"""Run-time settings of the SMTP interfaces, built from the configuration (certificates and
users files loaded), for the relay and for its intake processes alike."""

from __future__ import annotations

from pathlib import Path

from zonemta.conf import Config
from zonemta.conf.security import parse_network
from zonemta.engine.intake.auth import FailureThrottle, PasswordAuthenticator, UserDatabase
from zonemta.inbound.listener import InterfaceSettings
from zonemta.transport.smtp.server import ServerSettings
from zonemta.transport.tls import server_context

__all__ = ["enabled_interfaces", "interface_settings"]


def interface_settings(config: Config, name: str) -> InterfaceSettings:
    """Run-time settings of SMTP interface ``name``: loads its TLS certificate and users file.

    Raises ``ConfigError`` when those files are missing or bad.
    """
    iface = config.smtp[name]
    where = f"config.smtp.{name}"
    tls = server_context(iface.cert, iface.key, where=where) if iface.cert else None
    throttle = FailureThrottle(iface.auth_failure_delay.total_seconds())
    authenticator = (
        PasswordAuthenticator(UserDatabase.load(Path(iface.users_file)), throttle)
        if iface.authentication and iface.users_file
        else None  # no users file: AUTH is answered by plugins (config checks there is one)
    )
    return InterfaceSettings(
        name=name,
        host=iface.host,
        port=iface.port,
        server=ServerSettings(
            hostname=config.interface_hostname(name),
            max_size=iface.max_size,
            max_recipients=iface.max_recipients,
            max_line_length=iface.max_line_length,
            max_header_size=iface.max_header_size,
            starttls_available=iface.starttls,
            implicit_tls=iface.secure,
            auth_available=iface.authentication,
            allow_insecure_auth=iface.allow_insecure_auth,
            max_errors=iface.max_errors,
        ),
        idle_timeout=iface.idle_timeout.total_seconds(),
        handshake_timeout=iface.handshake_timeout.total_seconds(),
        data_timeout=iface.data_timeout.total_seconds(),
        max_clients=iface.max_clients,
        max_header_size=iface.max_header_size,
        tls_context=tls,
        relay_networks=tuple(parse_network(n) for n in iface.relay_networks),
        max_clients_per_address=iface.max_clients_per_address,
        proxy_protocol=iface.proxy_protocol,
        proxy_networks=tuple(parse_network(n) for n in iface.proxy_networks),
        authenticator=authenticator,
        auth_throttle=throttle if iface.authentication else None,
    )


def enabled_interfaces(config: Config) -> list[InterfaceSettings]:
    """The settings of every enabled interface, in configuration order."""
    return [
        interface_settings(config, name) for name, iface in config.smtp.items() if iface.enabled
    ]

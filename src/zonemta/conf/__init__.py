"""Typed, strict configuration: TOML file → frozen attrs classes.

See ``docs/config.md`` for every key. Entry points: :func:`load_config` (file),
:func:`config_from_dict` (parsed data), :func:`dump_config` (effective config as TOML).
"""

from zonemta.conf.api import ApiConfig
from zonemta.conf.bounces import BouncesConfig, DsnConfig, WebhookConfig, WebhookFormat
from zonemta.conf.delivery import DeliveryConfig, DnsConfig, parse_nameserver
from zonemta.conf.dkim import DkimAlgorithm, DkimConfig, DkimKey, HeadersConfig
from zonemta.conf.dump import dump_config, to_toml
from zonemta.conf.intake import IntakeConfig
from zonemta.conf.loader import ConfigError, config_from_dict, converter, load_config
from zonemta.conf.model import Config, LogConfig, LogLevel
from zonemta.conf.plugins import PluginConfig, register_plugin_hooks
from zonemta.conf.queue import Durability, QueueBackend, QueueConfig
from zonemta.conf.smtp import SmtpInterface
from zonemta.conf.units import ByteSize, format_duration, format_size, parse_duration, parse_size
from zonemta.conf.zones import TlsMode, ZoneConfig

register_plugin_hooks(converter)  # [plugins.<name>]: core keys checked, options kept raw

__all__ = [
    "ApiConfig",
    "BouncesConfig",
    "ByteSize",
    "Config",
    "ConfigError",
    "DeliveryConfig",
    "DkimAlgorithm",
    "DkimConfig",
    "DkimKey",
    "DnsConfig",
    "DsnConfig",
    "Durability",
    "HeadersConfig",
    "IntakeConfig",
    "LogConfig",
    "LogLevel",
    "PluginConfig",
    "QueueBackend",
    "QueueConfig",
    "SmtpInterface",
    "TlsMode",
    "WebhookConfig",
    "WebhookFormat",
    "ZoneConfig",
    "config_from_dict",
    "dump_config",
    "format_duration",
    "format_size",
    "load_config",
    "parse_duration",
    "parse_nameserver",
    "parse_size",
    "to_toml",
]

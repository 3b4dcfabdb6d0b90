"""``[plugins.<name>]`` tables: which plugins load, in which order, with which options.

The core keys are ``enabled``, ``module`` and ``order``; every other key of the table is the
plugin's own option. The core model cannot know those, so they are kept as a raw table
(``options``) and structured into the plugin's own attrs class when the plugin loads
(:mod:`zonemta.plugins`), through the same strict converter: unknown or mistyped keys are
then a ``ConfigError`` naming ``config.plugins.<name>.<key>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import cattrs

__all__ = ["PluginConfig", "register_plugin_hooks"]

_CORE_KEYS = ("enabled", "module", "order")


@attrs.frozen
class _PluginCore:
    enabled: bool = True
    module: str = ""
    order: int = 0


@attrs.frozen
class PluginConfig:
    """One ``[plugins.<name>]`` table. ``module`` is a built-in plugin name
    (``http-delivery``, ``http-auth``, ``header-rules``) or an importable path
    (``package.module`` or ``package.module:attribute``); empty means the table's name.
    Lower ``order`` runs first (ties: table name order)."""

    enabled: bool = True
    module: str = ""
    order: int = 0
    options: Mapping[str, Any] = attrs.field(factory=dict)


def register_plugin_hooks(conv: cattrs.Converter) -> None:
    """Teach ``conv`` to read a plugin table (core keys checked, the rest kept raw) and to
    write it back flat (so a dumped config loads again)."""

    def structure(value: Any, _typ: type) -> PluginConfig:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a table, got {type(value).__name__}")
        core = conv.structure({k: v for k, v in value.items() if k in _CORE_KEYS}, _PluginCore)
        options = {k: v for k, v in value.items() if k not in _CORE_KEYS}
        return PluginConfig(core.enabled, core.module, core.order, options)

    def unstructure(plugin: PluginConfig) -> dict[str, Any]:
        data: dict[str, Any] = {"enabled": plugin.enabled, "order": plugin.order}
        if plugin.module:
            data["module"] = plugin.module
        data.update(plugin.options)
        return data

    conv.register_structure_hook(PluginConfig, structure)
    conv.register_unstructure_hook(PluginConfig, unstructure)

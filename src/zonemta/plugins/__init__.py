"""Plugins: loading (:mod:`zonemta.plugins.host`) and the built-in plugins
(``http-delivery``, ``http-auth``, ``header-rules``). See ``docs/plugins.md``."""

from zonemta.plugins.host import BUILTIN, Plugin, PluginApp, PluginHost, PluginRoute

__all__ = ["BUILTIN", "Plugin", "PluginApp", "PluginHost", "PluginRoute"]

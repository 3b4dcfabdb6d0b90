"""Plugin loading and configuration, the header block editor, the hook runners and the
built-in plugins' option checks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from zonemta.conf import ConfigError, config_from_dict, dump_config
from zonemta.conf.loader import load_config
from zonemta.engine.hooks import (
    REPLY_HOOK_FAILED,
    HeaderBlock,
    HookDrop,
    HookFailed,
    HookReject,
    Hooks,
    run_checks,
    run_notices,
)
from zonemta.plugins import PluginHost
from zonemta.plugins.header_rules import HeaderRule
from zonemta.transport.smtp.reply import Reply

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: examples/

EXAMPLE = "examples.example_plugin"


def host(plugins: dict[str, Any]) -> PluginHost:
    plugin_host = PluginHost(config_from_dict({"plugins": plugins}))
    plugin_host.load()
    return plugin_host


def config_error(plugins: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        host(plugins)
    return str(caught.value)


# -------------------------------------------------------------------------------- config


def test_plugin_tables_keep_their_options_raw_and_dump_flat(tmp_path: Path) -> None:
    config = config_from_dict(
        {"plugins": {"ex": {"module": EXAMPLE, "order": 3, "header": "x", "crash": ["a"]}}}
    )
    table = config.plugins["ex"]
    assert (table.enabled, table.module, table.order) == (True, EXAMPLE, 3)
    assert table.options == {"header": "x", "crash": ["a"]}
    path = tmp_path / "c.toml"
    path.write_text(dump_config(config))
    assert load_config(path).plugins == config.plugins


def test_core_plugin_keys_are_typed() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"plugins": {"ex": {"order": "first", "enabled": 1}}})
    assert "config.plugins.ex.order: expected int" in str(caught.value)
    assert "config.plugins.ex.enabled" in str(caught.value)
    with pytest.raises(ConfigError, match=r"config\.plugins: bad name 'bad name'"):
        config_from_dict({"plugins": {"bad name": {}}})


def test_unknown_or_mistyped_plugin_options_name_their_key() -> None:
    assert "config.plugins.ex: unknown key(s): nope" in config_error(
        {"ex": {"module": EXAMPLE, "nope": 1}}
    )
    assert "config.plugins.ex.reject_connect: expected bool" in config_error(
        {"ex": {"module": EXAMPLE, "reject_connect": "yes"}}
    )
    assert "config.plugins.auth.url" in config_error({"auth": {"module": "http-auth"}})
    assert "config.plugins.auth: 'url' must be an http(s) URL" in config_error(
        {"auth": {"module": "http-auth", "url": "ftp://x"}}
    )


def test_bad_modules_are_config_errors() -> None:
    assert "config.plugins.x.module: cannot import 'no_such_module_here'" in config_error(
        {"x": {"module": "no_such_module_here"}}
    )
    assert "config.plugins.x.module: 'zonemta.conf' has no 'plugin'" in config_error(
        {"x": {"module": "zonemta.conf"}}
    )
    assert "has no 'nothing'" in config_error({"x": {"module": f"{EXAMPLE}:nothing"}})
    # The table name is the module when 'module' is missing: a built-in by its name.
    assert "config.plugins.http-auth.url" in config_error({"http-auth": {}})


def test_plugins_load_in_order_and_disabled_ones_not_at_all() -> None:
    loaded = host(
        {
            "b": {"module": EXAMPLE, "order": 1},
            "a": {"module": EXAMPLE, "order": 2},
            "c": {"module": EXAMPLE, "order": 1},
            "off": {"module": "no_such_module_here", "enabled": False},
        }
    )
    assert [p.name for p in loaded.plugins] == ["b", "c", "a"]
    assert loaded.plugins[0].plugin is not loaded.plugins[1].plugin  # a class: one each


def test_builtin_plugin_options() -> None:
    loaded = host(
        {
            "rules": {
                "module": "header-rules",
                "rules": [{"zone": ["default"], "add": {"X-A": "1"}, "remove": ["X-B"]}],
            },
            "http": {"module": "http-delivery", "url": "http://127.0.0.1:1/x", "zones": ["z"]},
        }
    )
    rules = next(p for p in loaded.plugins if p.name == "rules").options.rules
    assert rules == (HeaderRule(zone=("default",), add={"X-A": "1"}, remove=("X-B",)),)
    assert "'zones' needs an http(s) 'url'" in config_error(
        {"http": {"module": "http-delivery", "zones": ["z"]}}
    )
    assert "config.plugins.rules.rules[0]: unknown key(s): color" in config_error(
        {"rules": {"module": "header-rules", "rules": [{"color": "red"}]}}
    )


def test_header_rules_match_sender_recipient_and_zone() -> None:
    rule = HeaderRule(sender=("origin.test",), recipient=("r@dest.test",), zone=("default",))
    assert rule.matches("S@Origin.test", "r@dest.test", "default")
    assert not rule.matches("s@other.test", "r@dest.test", "default")
    assert not rule.matches("s@origin.test", "x@dest.test", "default")
    assert not rule.matches("s@origin.test", "r@dest.test", "other")
    assert HeaderRule().matches("a@b", "c@d", "z")


# ------------------------------------------------------------------------- header block


def test_header_block_edits() -> None:
    raw = b"From: a@b\r\nSubject: one\r\n two\r\nX-Tag: 1\r\nx-tag: 2\r\nTo: c@d\r\n"
    block = HeaderBlock(raw)
    assert block.to_bytes() == raw and not block.changed
    assert block.get("subject") == "one two"
    assert block.get_all("X-TAG") == ["1", "2"]
    assert block.get("missing") is None
    block.replace("X-Tag", "3")
    assert block.to_bytes() == b"From: a@b\r\nSubject: one\r\n two\r\nX-Tag: 3\r\nTo: c@d\r\n"
    assert block.remove("subject") == 1 and block.remove("nothing") == 0
    block.add("X-Top", "t", top=True)
    block.add("X-End", "e")
    block.replace("X-New", "n")  # no such field yet: added at the bottom
    assert block.changed
    assert block.to_bytes() == (
        b"X-Top: t\r\nFrom: a@b\r\nX-Tag: 3\r\nTo: c@d\r\nX-End: e\r\nX-New: n\r\n"
    )
    with pytest.raises(ValueError):
        block.add("Bad Name", "x")
    with pytest.raises(ValueError):
        block.add("X-Inject", "x\r\nBcc: evil@x")


# --------------------------------------------------------------------------- hook runners


async def test_run_checks_returns_the_first_reply_and_wraps_crashes() -> None:
    seen: list[str] = []
    reply = Reply(550, ("no",), "5.7.1")

    async def passes(arg: str) -> Reply | None:
        seen.append("passes:" + arg)
        return None

    async def raises_reject(arg: str) -> Reply | None:
        seen.append("rejects")
        raise HookReject(reply)

    async def never(arg: str) -> Reply | None:
        seen.append("never")
        return None

    async def crashes(arg: str) -> Reply | None:
        raise KeyError(arg)

    async def drops(arg: str) -> Reply | None:
        raise HookDrop("spam")

    assert await run_checks("x", [passes, passes], "a") is None
    assert await run_checks("x", [passes, raises_reject, never], "b") == reply
    assert seen == ["passes:a", "passes:a", "passes:b", "rejects"]
    with pytest.raises(HookFailed) as caught:
        await run_checks("x", [crashes], "c")
    assert caught.value.reply == REPLY_HOOK_FAILED
    assert str(REPLY_HOOK_FAILED).startswith("451 4.3.0")
    with pytest.raises(HookDrop):
        await run_checks("queue", [drops], "d", allow_drop=True)
    with pytest.raises(HookFailed):  # a drop is only a queue hook's power
        await run_checks("rcpt_to", [drops], "d")


async def test_run_notices_logs_failures_and_goes_on() -> None:
    seen: list[int] = []

    async def crashes(value: int) -> None:
        raise RuntimeError("boom")

    async def records(value: int) -> None:
        seen.append(value)

    await run_notices("event", [crashes, records], 7)
    assert seen == [7]


def test_no_plugins_means_empty_hook_lists() -> None:
    hooks = Hooks()
    assert not any(getattr(hooks, name) for name in attr_names(hooks))
    assert host({}).plugins == []


def attr_names(hooks: Hooks) -> list[str]:
    return [field.name for field in hooks.__attrs_attrs__]

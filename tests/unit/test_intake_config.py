"""``[intake] processes``: parsing, the effective config, and how many processes run."""

from __future__ import annotations

import os
from typing import Any

import pytest

from zonemta.conf import ConfigError, config_from_dict, dump_config
from zonemta.engine.hooks import Hooks
from zonemta.engine.processes.intake_process import AUTO_MAX, intake_processes


def intake(value: Any) -> Any:
    return config_from_dict({"intake": {"processes": value}})


def test_auto_is_the_default_and_numbers_are_taken_as_they_are() -> None:
    assert 'processes = "auto"' in dump_config(config_from_dict({}))
    assert intake(0).intake.processes == 0
    assert intake(3).intake.processes == 3
    assert 'processes = "auto"' in dump_config(intake("auto"))
    assert "[intake]\nprocesses = 3" in dump_config(intake(3))


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("many", "expected 'auto' or a whole number of processes, got 'many'"),
        (65, "processes must be 'auto' or 0 to 64, got 65"),
        (-1, "processes must be 'auto' or 0 to 64, got -1"),
        (True, "expected 'auto' or a number of processes, got bool True"),
        (1.5, "expected 'auto' or a number of processes"),
    ],
)
def test_bad_values_name_the_key(value: Any, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        intake(value)
    assert f"config.intake.processes: {says}" in str(raised.value)


def hooks_with(name: str) -> Hooks:
    hooks = Hooks()

    async def hook(*_args: Any) -> None:
        return None

    getattr(hooks, name).append(hook)
    return hooks


def test_auto_is_one_per_core_up_to_the_cap() -> None:
    expected = max(1, min(os.cpu_count() or 1, AUTO_MAX))
    assert intake_processes(intake("auto"), Hooks()) == expected
    assert intake_processes(intake(5), Hooks()) == 5
    assert intake_processes(intake(0), Hooks()) == 0


@pytest.mark.parametrize("name", ["connect", "auth", "mail_from", "rcpt_to", "data", "route"])
def test_intake_hooks_keep_auto_in_the_relay_and_refuse_a_number(name: str) -> None:
    assert intake_processes(intake("auto"), hooks_with(name)) == 0
    assert intake_processes(intake(0), hooks_with(name)) == 0
    with pytest.raises(ConfigError, match=f"config.intake.processes: .*{name}"):
        intake_processes(intake(2), hooks_with(name))


@pytest.mark.parametrize("name", ["fetch", "delivered", "api", "event"])
def test_other_hooks_leave_the_intake_processes_alone(name: str) -> None:
    assert intake_processes(intake(2), hooks_with(name)) == 2

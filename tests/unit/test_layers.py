"""The import direction of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src" / "zonemta"


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules(*parts: str) -> list[Path]:
    found: list[Path] = []
    for part in parts:
        target = SRC / part
        found.extend([target] if target.is_file() else sorted(target.rglob("*.py")))
    return found


PURE = modules("conf", "statemachine", "transport/smtp", "dkim", "headers.py", "identity_enum.py")
BELOW_ENGINE = modules("conf", "statemachine", "transport", "store")


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(SRC)))
def test_pure_layer_does_no_io(path: Path) -> None:
    forbidden = {"trio", "socket", "sqlite3", "pymongo", "dns"}
    if path.parent.name == "conf":
        forbidden.discard("socket")  # the default hostname comes from the system
    used = {name.split(".")[0] for name in imports_of(path)}
    assert not used & forbidden, f"{path.name} imports {used & forbidden}"


ADAPTERS = ("zonemta.inbound", "zonemta.http", "zonemta.app", "zonemta.cli", "zonemta.plugins")


@pytest.mark.parametrize("path", BELOW_ENGINE, ids=lambda p: str(p.relative_to(SRC)))
def test_lower_layers_do_not_import_the_engine_or_adapters(path: Path) -> None:
    bad = {name for name in imports_of(path) if name.startswith(("zonemta.engine", *ADAPTERS))}
    assert not bad, f"{path.relative_to(SRC)} imports {bad}"


@pytest.mark.parametrize("path", modules("engine"), ids=lambda p: str(p.relative_to(SRC)))
def test_the_engine_imports_no_adapter(path: Path) -> None:
    bad = {name for name in imports_of(path) if name.startswith(ADAPTERS)}
    assert not bad, f"{path.relative_to(SRC)} imports {bad}"


def test_only_the_cli_imports_the_app() -> None:
    for path in modules("."):
        if path.name in ("cli.py", "app.py"):
            continue
        assert "zonemta.app" not in imports_of(path), path


def test_the_intake_process_does_not_load_the_outbound_stack() -> None:
    """An intake process only receives and stores mail; each one is a separate process on
    every core, so what it imports is paid in memory once per core. The outbound SMTP, TLS
    policy (httpx), DNS and DKIM-signing modules belong to the delivery side."""
    code = "import sys, zonemta.inbound.intake_worker\nprint('\\n'.join(sorted(sys.modules)))\n"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    outbound = {"httpx", "dns.resolver", "dkim", "zonemta.transport.outbound"}
    assert not outbound & loaded, f"the intake process loads {sorted(outbound & loaded)}"

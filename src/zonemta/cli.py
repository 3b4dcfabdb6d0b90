"""Command line: ``zonemta run | config``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from zonemta import __version__
from zonemta.conf import Config, ConfigError, dump_config, load_config


def _load(path: str | None) -> Config:
    return load_config(Path(path) if path else None)


def _setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.log.level.value.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from zonemta.app import Relay

    config = _load(args.config)
    _setup_logging(config)
    try:
        trio.run(Relay(config).run_until_signalled)
    except OSError as exc:
        logging.getLogger("zonemta").error("cannot start: %s", exc)
        return 1
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(_load(args.config)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zonemta", description="Outbound SMTP relay")
    parser.add_argument("--version", action="version", version=f"zonemta {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the relay")
    run.add_argument("-c", "--config", help="TOML configuration file (default: built-in defaults)")
    run.set_defaults(func=cmd_run)
    config = commands.add_parser("config", help="print the effective configuration as TOML")
    config.add_argument("-c", "--config", help="TOML configuration file")
    config.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"zonemta: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``zonemta run | config | passwd | events | check-bounce | suspend | resume |
why``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from zonemta import __version__
from zonemta.conf import Config, ConfigError, dump_config, load_config
from zonemta.events_cli import add_arguments as add_event_arguments
from zonemta.events_cli import options_from_args, run_events
from zonemta.operator_cli import (
    add_resume_arguments,
    add_suspend_arguments,
    add_why_arguments,
    cmd_resume,
    cmd_suspend,
    cmd_why,
)


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
    from zonemta.engine.processes.child_entry import tune_gc
    from zonemta.engine.processes.delivery_process import StartError

    config = _load(args.config)
    _setup_logging(config)
    relay = Relay(config)
    tune_gc()
    try:
        trio.run(relay.run_until_signalled)
    except (OSError, StartError) as exc:
        logging.getLogger("zonemta").error("cannot start: %s", exc)
        return 1
    except BaseExceptionGroup as group:  # raised inside the relay's nurseries
        config_error = _first(group, ConfigError)
        if config_error is not None:
            raise config_error from None  # main() prints it, exit status 2
        start_error = _first(group, (OSError, StartError))
        if start_error is None:
            raise
        logging.getLogger("zonemta").error("cannot start: %s", start_error)
        return 1
    return 0


def _first(
    group: BaseExceptionGroup[BaseException], kind: type[Exception] | tuple[type[Exception], ...]
) -> Exception | None:
    """The first exception of ``kind`` in ``group`` (nested groups included)."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            found = _first(error, kind)
            if found is not None:
                return found
        elif isinstance(error, kind):
            return error
    return None


def cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(_load(args.config)))
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    """Print a users-file line ``USER:argon2-hash``; the password comes from the terminal
    (asked twice) or from the first line of standard input."""
    import getpass

    from zonemta.engine.intake.auth import hash_password

    user: str = args.user
    if not user or ":" in user or any(c.isspace() for c in user):
        print(
            "zonemta passwd: the user name must be non-empty, without ':' or spaces",
            file=sys.stderr,
        )
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("zonemta passwd: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("zonemta passwd: empty password", file=sys.stderr)
        return 1
    print(f"{user}:{hash_password(password)}")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    return run_events(options_from_args(args, _load))


def cmd_check_bounce(args: argparse.Namespace) -> int:
    """Classify the SMTP reply on standard input with the bounce rules (the built-in ones,
    after ``--rules FILE`` or the configured ``[bounces] rules_file``)."""
    from zonemta.engine.bounces.classifier import BounceClassifier, RulesError

    rules = args.rules or _load(args.config).bounces.rules_file or None
    try:
        classifier = BounceClassifier.load(rules)
    except RulesError as exc:
        print(f"zonemta check-bounce: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(classifier.format(classifier.classify(sys.stdin.read())))
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
    passwd = commands.add_parser("passwd", help="print a users-file line for SMTP AUTH")
    passwd.add_argument("user", help="the user name")
    passwd.set_defaults(func=cmd_passwd)
    events = commands.add_parser("events", help="follow the live delivery event stream")
    add_event_arguments(events)
    events.set_defaults(func=cmd_events)
    check = commands.add_parser("check-bounce", help="classify an SMTP reply read from stdin")
    check.add_argument("-c", "--config", help="TOML configuration file (for its rules_file)")
    check.add_argument("--rules", help="extra bounce rules file, tried before the built-in")
    check.set_defaults(func=cmd_check_bounce)
    suspend = commands.add_parser("suspend", help="hold a zone, domain, source or message")
    add_suspend_arguments(suspend)
    suspend.set_defaults(func=lambda args: cmd_suspend(args, _load))
    resume = commands.add_parser("resume", help="remove a suspension (resume what it held)")
    add_resume_arguments(resume)
    resume.set_defaults(func=lambda args: cmd_resume(args, _load))
    why = commands.add_parser("why", help="why a message's recipients have not gone yet")
    add_why_arguments(why)
    why.set_defaults(func=lambda args: cmd_why(args, _load))
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

"""SMTP AUTH users: the users file, argon2 verification, failure throttling, ``zonemta passwd``."""

from __future__ import annotations

import io
import os
from pathlib import Path

import argon2
import pytest
import trio
import trio.testing

from zonemta.cli import main
from zonemta.conf import ConfigError
from zonemta.engine.intake.auth import (
    FORGET_AFTER,
    MAX_FAILURE_DELAY,
    FailureThrottle,
    PasswordAuthenticator,
    UserDatabase,
    hash_password,
    parse_users,
)

# Cheap parameters keep the tests fast; they travel inside each hash string.
FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def users_file(tmp_path: Path, **passwords: str) -> Path:
    path = tmp_path / "users"
    lines = ["# SMTP users", ""] + [f"{u}:{hash_password(p, FAST)}" for u, p in passwords.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hashes_are_salted_argon2id() -> None:
    first, second = hash_password("pw", FAST), hash_password("pw", FAST)
    assert first.startswith("$argon2id$") and first != second
    assert argon2.PasswordHasher().verify(first, "pw")


def test_parse_users_reports_every_bad_line() -> None:
    text = "ok:$argon2id$x\nnocolon\n:$argon2id$y\nplain:secret\nok:$argon2id$z\n"
    with pytest.raises(ConfigError) as info:
        parse_users(text, "users.txt")
    assert info.value.errors == (
        "users.txt:2: expected 'username:hash'",
        "users.txt:3: expected 'username:hash'",
        "users.txt:4: hash of 'plain' is not an argon2 hash ($argon2id$...)",
        "users.txt:5: user 'ok' listed twice",
    )
    assert parse_users("# only a comment\n\n  \n", "f") == {}


def test_missing_or_undecodable_users_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read users file"):
        UserDatabase.load(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\xff\xfe:$argon2id$\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        UserDatabase.load(bad)


def test_verify(tmp_path: Path) -> None:
    users = UserDatabase.load(users_file(tmp_path, alice="wonderland", bob="builder"))
    assert users.usernames == {"alice", "bob"}
    assert users.verify("alice", "wonderland")
    assert not users.verify("alice", "builder")
    assert not users.verify("carol", "wonderland")  # unknown user: same work, False
    assert not users.verify("alice", "")
    assert not users.verify("", "")


def test_users_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = users_file(tmp_path, alice="one")
    users = UserDatabase.load(path)
    mtime = path.stat().st_mtime_ns
    path.write_text(f"alice:{hash_password('two', FAST)}\n")
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    assert users.verify("alice", "two")
    assert not users.verify("alice", "one")
    # A broken file keeps the users loaded before (and logs); so does a vanished one.
    path.write_text("garbage\n")
    os.utime(path, ns=(mtime + 2 * 10**9, mtime + 2 * 10**9))
    assert users.verify("alice", "two")
    path.unlink()
    assert users.verify("alice", "two")


def test_throttle_doubles_per_failure_up_to_the_cap_and_forgets() -> None:
    throttle = FailureThrottle(1.0)
    delays = [throttle.failure("192.0.2.1", now=float(t)) for t in range(8)]
    assert delays == [1, 2, 4, 8, 16, 32, MAX_FAILURE_DELAY, MAX_FAILURE_DELAY]
    assert throttle.failure("192.0.2.2", now=8.0) == 1  # per address
    assert throttle.failures("192.0.2.1", now=7.0 + FORGET_AFTER + 1) == 0
    assert throttle.failure("192.0.2.1", now=7.0 + FORGET_AFTER + 1) == 1
    throttle.success("192.0.2.1")
    assert throttle.failures("192.0.2.1", now=0.0) == 0


def test_throttle_memory_is_bounded() -> None:
    throttle = FailureThrottle(1.0, max_entries=3)
    for index in range(10):
        throttle.failure(f"192.0.2.{index}", now=0.0)
    assert [throttle.failures(f"192.0.2.{i}", 0.0) for i in range(10)] == [0] * 7 + [1] * 3
    with pytest.raises(ValueError):
        FailureThrottle(-1.0)


async def test_authenticator_answers_failures_after_a_growing_delay(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    authenticator = PasswordAuthenticator.from_users_file(users_file(tmp_path, alice="pw"), 2.0)
    waited = []
    for password in ("x", "y", "z"):
        start = trio.current_time()
        assert not await authenticator.authenticate("192.0.2.9", "alice", password)
        waited.append(trio.current_time() - start)
    assert waited == pytest.approx([2.0, 4.0, 8.0], abs=0.5)
    # Another address is not slowed down by this one's failures.
    start = trio.current_time()
    assert not await authenticator.authenticate("192.0.2.10", "alice", "x")
    assert trio.current_time() - start == pytest.approx(2.0, abs=0.5)
    # A success answers without a delay and forgets the address's failures.
    start = trio.current_time()
    assert await authenticator.authenticate("192.0.2.9", "alice", "pw")
    assert trio.current_time() - start < 0.5
    assert authenticator.throttle.failures("192.0.2.9", trio.current_time()) == 0


def test_passwd_command_prints_a_users_file_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["passwd", "alice"]) == 0
    line = capsys.readouterr().out.strip()
    path = tmp_path / "users"
    path.write_text(line + "\n")
    users = UserDatabase.load(path)
    assert users.verify("alice", "s3cret") and not users.verify("alice", "s3cret\n")


@pytest.mark.parametrize(("user", "stdin", "code"), [("a:b", "pw\n", 2), ("a", "\n", 1)])
def test_passwd_refuses_bad_input(
    user: str, stdin: str, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(["passwd", user]) == code

"""SMTP AUTH users: the users file, password verification and failure throttling.

The users file has one ``username:hash`` line per user; ``#`` starts a comment line and blank
lines are ignored. Hashes are argon2id strings in the PHC format (``$argon2id$v=19$...``) made
by argon2-cffi's ``PasswordHasher`` (salted, parameters inside the string), e.g. with
``zonemta passwd USER``. The file is read at start (a bad file is a configuration error) and
read again when its modification time changes; a file that became unreadable or invalid keeps
the users last loaded (and is logged).

Verification runs argon2 in a worker thread. A failure is answered only after a delay that
doubles with each recent failure from the same client address (:class:`FailureThrottle`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

import argon2
import attrs
import trio
from argon2.exceptions import InvalidHashError, VerificationError

from zonemta.conf import ConfigError

__all__ = [
    "MAX_FAILURE_DELAY",
    "FailureThrottle",
    "PasswordAuthenticator",
    "UserDatabase",
    "hash_password",
    "parse_users",
]

log = logging.getLogger(__name__)

#: The longest wait before a 535, however many failures an address has made.
MAX_FAILURE_DELAY = 60.0
#: Failures older than this (since the address's last failure) are forgotten.
FORGET_AFTER = 15 * 60.0
#: Addresses remembered at most (the oldest are forgotten first): bounded memory.
MAX_TRACKED_ADDRESSES = 10_000
#: Argon2 verifications running at once (each takes ~0.1 s of CPU and 64 MiB with defaults).
VERIFY_THREADS = 4

_HASH_PREFIX = "$argon2"


def hash_password(password: str, hasher: argon2.PasswordHasher | None = None) -> str:
    """A salted argon2id hash of ``password`` for the users file (default parameters)."""
    return (hasher or argon2.PasswordHasher()).hash(password)


def parse_users(text: str, source: str) -> dict[str, str]:
    """The ``username -> hash`` entries of a users file's text.

    Raises :class:`ConfigError` naming ``source`` and the line of every bad entry: no colon,
    an empty or duplicate user name, or a hash that is not an argon2 PHC string.
    """
    users: dict[str, str] = {}
    errors: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        username, colon, stored = line.partition(":")
        where = f"{source}:{number}"
        if not colon or not username:
            errors.append(f"{where}: expected 'username:hash'")
        elif not stored.startswith(_HASH_PREFIX):
            errors.append(f"{where}: hash of {username!r} is not an argon2 hash ($argon2id$...)")
        elif username in users:
            errors.append(f"{where}: user {username!r} listed twice")
        else:
            users[username] = stored
    if errors:
        raise ConfigError(source, errors)
    return users


class UserDatabase:
    """The users of one users file. :meth:`verify` blocks (argon2): call it from a thread."""

    def __init__(self, path: Path, users: dict[str, str], mtime_ns: int) -> None:
        self.path = path
        self._users = users
        self._mtime_ns = mtime_ns
        self._lock = threading.Lock()
        self._hasher = argon2.PasswordHasher()
        # Unknown users are checked against this, so they cost as much as known ones.
        self._dummy = self._hasher.hash("not a password anyone has")

    @classmethod
    def load(cls, path: Path) -> UserDatabase:
        """Read the users file. Raises :class:`ConfigError` when it is missing, unreadable,
        not UTF-8 or has bad entries."""
        source = str(path)
        try:
            mtime_ns = path.stat().st_mtime_ns
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(source, [f"{source}: cannot read users file: {exc}"]) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(source, [f"{source}: users file is not UTF-8"]) from exc
        return cls(path, parse_users(text, source), mtime_ns)

    @property
    def usernames(self) -> frozenset[str]:
        return frozenset(self._users)

    def verify(self, username: str, password: str) -> bool:
        """True when ``password`` matches the stored hash of ``username``. Never raises for
        any input; reloads the file first when it changed."""
        self._reload_if_changed()
        stored = self._users.get(username)
        try:
            if stored is None:
                self._hasher.verify(self._dummy, password)
                return False
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    def _reload_if_changed(self) -> None:
        with self._lock:
            try:
                mtime_ns = self.path.stat().st_mtime_ns
            except OSError as exc:
                log.warning("users file %s: %s; keeping the users loaded before", self.path, exc)
                return
            if mtime_ns == self._mtime_ns:
                return
            self._mtime_ns = mtime_ns
            try:
                fresh = UserDatabase.load(self.path)
            except ConfigError as exc:
                log.warning("users file not reloaded, keeping the users loaded before: %s", exc)
                return
            self._users = fresh._users
            log.info("users file %s reloaded: %d users", self.path, len(self._users))


@attrs.define
class _Failures:
    count: int
    last: float


class FailureThrottle:
    """Recent authentication failures per client address, and the delay they earn.

    The first failure waits ``base_delay``; every further one within ``FORGET_AFTER`` of the
    previous doubles it, up to ``MAX_FAILURE_DELAY``. A success forgets the address.
    """

    def __init__(self, base_delay: float, *, max_entries: int = MAX_TRACKED_ADDRESSES) -> None:
        if base_delay < 0:
            raise ValueError(f"base_delay must be >= 0, got {base_delay}")
        self.base_delay = base_delay
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Failures] = OrderedDict()

    def failures(self, address: str, now: float) -> int:
        """Recent failures of ``address`` (0 once forgotten)."""
        entry = self._entries.get(address)
        if entry is None or now - entry.last > FORGET_AFTER:
            return 0
        return entry.count

    def failure(self, address: str, now: float) -> float:
        """Record a failure of ``address`` at ``now``; returns the seconds to wait before 535."""
        count = self.failures(address, now) + 1
        self._entries[address] = _Failures(count, now)
        self._entries.move_to_end(address)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        delay: float = self.base_delay * 2.0 ** min(count - 1, 32)
        return min(delay, MAX_FAILURE_DELAY)

    def success(self, address: str) -> None:
        self._entries.pop(address, None)


class PasswordAuthenticator:
    """Checks AUTH credentials against a :class:`UserDatabase`; the listener's authenticator.

    A failure returns only after the throttle's delay (a trio sleep), so a guessing client
    gets ever slower answers, on every connection from the same address.
    """

    def __init__(self, users: UserDatabase, throttle: FailureThrottle) -> None:
        self.users = users
        self.throttle = throttle
        self._limiter = trio.CapacityLimiter(VERIFY_THREADS)

    @classmethod
    def from_users_file(cls, path: Path, base_delay: float) -> PasswordAuthenticator:
        """An authenticator over the users file at ``path``, first failure delay
        ``base_delay`` seconds. Raises :class:`ConfigError` for a missing or bad file."""
        return cls(UserDatabase.load(path), FailureThrottle(base_delay))

    async def authenticate(self, client_address: str, username: str, password: str) -> bool:
        """True for valid credentials. Raises nothing but cancellation."""
        valid = await trio.to_thread.run_sync(
            self.users.verify, username, password, limiter=self._limiter
        )
        if valid:
            self.throttle.success(client_address)
            return True
        delay = self.throttle.failure(client_address, trio.current_time())
        log.info(
            "authentication failed for %r from %s (waiting %.1fs)", username, client_address, delay
        )
        await trio.sleep(delay)
        return False

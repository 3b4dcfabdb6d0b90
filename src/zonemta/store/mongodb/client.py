"""Connecting to MongoDB and calling pymongo from trio.

pymongo blocks, so every call runs in a worker thread through :meth:`MongoRunner.run`, under
one :class:`trio.CapacityLimiter` per store. pymongo errors become :class:`StoreError`: a
database that is down or slow fails the caller within the client's timeouts, never hangs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlsplit

import trio
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError

from zonemta.store.errors import StoreError

T = TypeVar("T")

Db = Database[dict[str, Any]]

#: Client options the store sets unless the URI sets them itself. Short timeouts: while the
#: database is unreachable, a submitter gets its ``451`` within seconds and a scheduler
#: backs off, instead of worker threads hanging on pymongo's 30 s defaults.
DEFAULT_OPTIONS: Final[Mapping[str, Any]] = {
    "timeoutMS": 5000,  # bounds each operation, server selection included
    "serverSelectionTimeoutMS": 5000,
    "connectTimeoutMS": 5000,
    "appname": "zonemta",
}

#: Write concern per ``[queue] durability``: ``full`` waits for a majority and the journal.
WRITE_CONCERNS: Final[Mapping[str, Mapping[str, Any]]] = {
    "full": {"w": "majority", "journal": True},
    "normal": {"w": 1},
}


#: Characters of a pymongo error kept in a StoreError's message.
MAX_ERROR_TEXT: Final = 300


def uri_options(uri: str) -> set[str]:
    """The (lower-cased) option names given in the query part of ``uri``."""
    return {key.lower() for key, _ in parse_qsl(urlsplit(uri).query, keep_blank_values=True)}


def client_options(uri: str, durability: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword options for :class:`MongoClient`: our defaults and the write concern for
    ``durability``, then ``overrides``, leaving out whatever the URI sets itself (the
    operator's URI wins). Raises ValueError for an unknown durability."""
    if durability not in WRITE_CONCERNS:
        raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
    given = uri_options(uri)
    options = {**DEFAULT_OPTIONS, **WRITE_CONCERNS[durability], **overrides}
    if "w" in given:
        options.pop("journal", None)
    return {key: value for key, value in options.items() if key.lower() not in given}


class DatabaseUnavailable(StoreError):
    """The database could not be reached or did not answer in time: nothing more can be
    done there until it is back (cleanups are left to garbage collection)."""


def as_store_error(exc: PyMongoError) -> StoreError:
    """``exc`` as the store's callers see it (the caller chains it as the cause)."""
    unavailable = isinstance(exc, ConnectionFailure | ExecutionTimeout) or getattr(
        exc, "timeout", False
    )
    # Server selection errors append the whole topology description: keep the log line short.
    text = str(exc).split(", Timeout: ", 1)[0][:MAX_ERROR_TEXT]
    return (DatabaseUnavailable if unavailable else StoreError)(f"mongodb: {text}")


class MongoRunner:
    """Owns the :class:`MongoClient` once connected, and runs blocking calls on it."""

    def __init__(self, *, threads: int) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.limiter = trio.CapacityLimiter(threads)
        self._client: MongoClient[dict[str, Any]] | None = None
        self._db: Db | None = None

    @property
    def connected(self) -> bool:
        return self._db is not None

    async def connect(self, uri: str, database: str, options: Mapping[str, Any]) -> None:
        """Create the client (in a thread: a ``mongodb+srv`` URI needs DNS) and check that
        the server answers. Raises :class:`StoreError`."""

        def connect() -> tuple[MongoClient[dict[str, Any]], Db]:
            client: MongoClient[dict[str, Any]] = MongoClient(uri, **options)
            try:
                client.admin.command("ping")
            except BaseException:
                client.close()
                raise
            return client, client.get_database(database)

        try:
            self._client, self._db = await trio.to_thread.run_sync(connect, limiter=self.limiter)
        except (PyMongoError, ValueError, TypeError) as exc:
            raise StoreError(f"cannot reach MongoDB database {database!r}: {exc}") from exc

    async def run(self, fn: Callable[[Db], T]) -> T:
        """``fn(db)`` in a worker thread. Raises :class:`StoreError` for pymongo errors (and
        when not connected), :class:`DatabaseUnavailable` when the database is unreachable
        or too slow; what ``fn`` raises itself (LeaseLost, StoreError, ...) passes."""
        db = self._db
        if db is None:
            raise StoreError("the store is not open")
        try:
            return await trio.to_thread.run_sync(fn, db, limiter=self.limiter)
        except PyMongoError as exc:
            raise as_store_error(exc) from exc

    async def aclose(self) -> None:
        """Close the client after the calls in progress finished (new calls fail)."""
        client, self._client, self._db = self._client, None, None
        if client is None:
            return
        tokens = [object() for _ in range(int(self.limiter.total_tokens))]
        for token in tokens:
            await self.limiter.acquire_on_behalf_of(token)
        try:
            await trio.to_thread.run_sync(client.close)
        finally:
            for token in tokens:
                self.limiter.release_on_behalf_of(token)

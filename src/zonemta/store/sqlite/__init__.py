"""The embedded sqlite queue backend: WAL, one group-commit writer, bodies as chunk rows.

Typical use::

    async with open_sqlite_store(Path("zonemta-data")) as store:
        ...

or, inside a component that owns a nursery::

    store = SqliteStore(path)
    await store.open()
    await nursery.start(store.run)
    ...
    await store.aclose()
"""

from zonemta.store.sqlite.body import SqliteBodyWriter
from zonemta.store.sqlite.store import SqliteStore, open_sqlite_store
from zonemta.store.sqlite.writer import GroupCommitWriter, WriterStats

__all__ = [
    "GroupCommitWriter",
    "SqliteBodyWriter",
    "SqliteStore",
    "WriterStats",
    "open_sqlite_store",
]

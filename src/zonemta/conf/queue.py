"""The durable queue (``[queue]``): the backend and where it lives, the retry schedule,
leases, durability and body chunks."""

from __future__ import annotations

import enum
import re
from datetime import timedelta
from pathlib import Path

import attrs
from attrs import validators as v

from zonemta.conf.units import ByteSize
from zonemta.conf.validators import (
    KB,
    MB,
    duration_at_least,
    matches,
    positive_duration,
    show_duration,
    to_bytesize,
)

__all__ = ["Durability", "QueueBackend", "QueueConfig"]

_INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9_.-]+")
#: A MongoDB database name: no ``/\. "$``, no NUL, at most 63 bytes (MongoDB's limits).
_MONGO_DATABASE_RE = re.compile(r'[^/\\. "$\x00]{1,63}')
_MONGO_URI_RE = re.compile(r"mongodb(\+srv)?://\S+")


class QueueBackend(enum.StrEnum):
    """Where the queue lives."""

    SQLITE = "sqlite"
    MONGODB = "mongodb"  # shared by several instances (``mongodb_uri``, ``database``)


class Durability(enum.StrEnum):
    """How hard the store pushes commits to disk."""

    FULL = "full"  # fsync on every commit (sqlite synchronous=FULL)
    NORMAL = "normal"  # survives a process crash, may lose the last commits on power loss


_DEFAULT_RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(minutes=5),
    timedelta(minutes=7),
    timedelta(minutes=8),
    timedelta(minutes=25),
    timedelta(minutes=75),
    timedelta(hours=2),
    *(timedelta(hours=4),) * 11,
)


def _retry_schedule(
    _inst: object, attribute: attrs.Attribute[tuple[timedelta, ...]], value: tuple[timedelta, ...]
) -> None:
    if not value:
        raise ValueError("'retry_schedule' must not be empty")
    for index, step in enumerate(value):
        if step <= timedelta(0):
            raise ValueError(
                f"'retry_schedule' entries must be > 0s: [{index}] is {show_duration(step)}"
            )


@attrs.frozen
class QueueConfig:
    """The durable queue (``[queue]``)."""

    backend: QueueBackend = QueueBackend.SQLITE
    path: Path = Path("zonemta-data")
    instance_id: str = attrs.field(
        default="default", validator=matches(_INSTANCE_ID_RE, "letters, digits, '_', '.', '-'")
    )
    retry_schedule: tuple[timedelta, ...] = attrs.field(
        default=_DEFAULT_RETRY_SCHEDULE, validator=_retry_schedule
    )
    max_queue_time: timedelta = attrs.field(default=timedelta(days=5), validator=positive_duration)
    lease_time: timedelta = attrs.field(
        default=timedelta(minutes=5), validator=duration_at_least(timedelta(seconds=10))
    )
    durability: Durability = Durability.FULL
    body_chunk_size: ByteSize = attrs.field(
        default=ByteSize(256 * KB),
        converter=to_bytesize,
        validator=[v.ge(ByteSize(4 * KB)), v.le(ByteSize(16 * MB))],
    )
    # The sqlite queue's size limit (0: none); past it submissions get 452 4.3.1.
    max_size: ByteSize = attrs.field(default=ByteSize(0), converter=to_bytesize)
    mongodb_uri: str = attrs.field(
        default="",
        validator=matches(
            _MONGO_URI_RE, "a 'mongodb://' or 'mongodb+srv://' URI", allow_empty=True
        ),
    )
    database: str = attrs.field(
        default="zonemta", validator=matches(_MONGO_DATABASE_RE, "a MongoDB database name")
    )

    def __attrs_post_init__(self) -> None:
        if self.backend is QueueBackend.MONGODB and not self.mongodb_uri:
            raise ValueError("'mongodb_uri' is required when 'backend' is 'mongodb'")
        if self.max_size and self.max_size < 1 * MB:
            raise ValueError(f"'max_size' must be 0 (no limit) or at least 1MB: {self.max_size}")
        if self.max_size and self.backend is QueueBackend.MONGODB:
            raise ValueError("'max_size' applies to the sqlite queue only (size MongoDB itself)")

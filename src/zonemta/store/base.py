"""The queue storage contract: every backend implements :class:`Store` and passes
``tests/store_contract.py`` unchanged.

Vocabulary
----------
* A **message** is stored once: envelope sender, the header block, metadata and the body
  (as chunks). Its id is a queue id made by ``zonemta.engine.ids``.
* A **delivery** is one row per recipient (``message_id``, ``seq``) with its zone, state,
  lease, next-attempt time, attempt count and last response.
* A **lease** is how an engine claims a delivery: ``lease_owner`` (the instance id) and
  ``lease_until`` (epoch seconds). An expired lease is as good as none.

Durability: every ``async`` method that changes data returns only after the change is
committed durably (fsync'd). Times are wall-clock epoch seconds (float) passed in by the
caller, so tests control them.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import AsyncIterator, Collection, Sequence

import trio

from zonemta.store.records import (
    BlacklistEntry,
    Delivery,
    DeliveryKey,
    MessageRecord,
    NewDelivery,
    RowState,
    SuppressionEntry,
    Suspension,
    ZoneCounts,
    normalize_address,
)


class BodyWriter(abc.ABC):
    """Receives one message body in chunks. Memory held is bounded by the backend's chunk
    size whatever the message size. Either :meth:`Store.commit_message` consumes it, or
    :meth:`abort` discards what was written; never both."""

    message_id: str
    size: int

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None:
        """Append ``chunk`` to the body. Raises :class:`StoreError`."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Discard everything written so far. Safe to call twice; never raises StoreError
        (failures are logged and left to orphan collection)."""


class Store(abc.ABC):
    """One queue backend. All methods may raise :class:`StoreError`."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or open the storage, ready for use. Idempotent schema creation."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The backend's long-running service (e.g. the sqlite group-commit writer), started
        with ``await nursery.start(store.run)`` after :meth:`open`. Backends that need none
        report started and wait until cancelled."""
        task_status.started()
        await trio.sleep_forever()

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Finish pending writes and release resources."""

    @abc.abstractmethod
    def new_body(self, message_id: str) -> BodyWriter:
        """A writer for the body of a message that is being received."""

    @abc.abstractmethod
    async def commit_message(
        self, message: MessageRecord, body: BodyWriter, deliveries: Sequence[NewDelivery]
    ) -> None:
        """Store message, the rest of its body and its deliveries atomically and durably.

        On any failure nothing of the message remains visible (its body is discarded) and
        StoreError is raised. ``deliveries`` is not empty."""

    @abc.abstractmethod
    async def lease(
        self,
        zone: str,
        *,
        owner: str,
        now: float,
        lease_until: float,
        limit: int,
        skip_domains: Collection[str] = (),
        skip_messages: Collection[str] = (),
    ) -> list[Delivery]:
        """Claim up to ``limit`` deliveries of ``zone`` that are due (``next_attempt <= now``)
        and not leased (or whose lease expired before ``now``), oldest due first, skipping
        recipient domains in ``skip_domains`` and messages in ``skip_messages``. Returned
        rows are LOCKED by ``owner``."""

    @abc.abstractmethod
    async def renew(self, keys: Sequence[DeliveryKey], *, owner: str, lease_until: float) -> None:
        """Extend leases held by ``owner``; keys no longer held are ignored."""

    async def release(
        self, key: DeliveryKey, *, owner: str, next_attempt: float, state: RowState
    ) -> None:
        """Give a leased delivery back without counting an attempt (shutdown, lease not
        used): it waits in ``state`` (QUEUED or DEFERRED: the delivery state machine's
        table decides which; the store writes what it is told) until ``next_attempt``. A
        delivery ``owner`` no longer holds is left untouched (no error: the lease is gone
        either way). Raises ValueError for ``state`` LOCKED."""
        if state is RowState.LOCKED:
            raise ValueError("a released delivery is queued or deferred, not locked")
        await self._release(key, owner, next_attempt, state)

    @abc.abstractmethod
    async def _release(
        self, key: DeliveryKey, owner: str, next_attempt: float, state: RowState
    ) -> None:
        """:meth:`release` with ``state`` checked."""

    @abc.abstractmethod
    async def defer(
        self,
        key: DeliveryKey,
        *,
        owner: str,
        now: float,
        next_attempt: float,
        response: str,
        delay_notified: bool = False,
    ) -> None:
        """Record a failed attempt: attempts+1, state DEFERRED, lease cleared, ``first_failure``
        set to ``now`` if unset; with ``delay_notified`` the row remembers for good that its
        delay notice was sent. Raises :class:`LeaseLost` if ``owner`` does not hold it."""

    @abc.abstractmethod
    async def complete(self, key: DeliveryKey, *, owner: str) -> None:
        """The delivery ended (delivered or bounced): remove its row, and the message and
        body when no delivery of it remains. Raises :class:`LeaseLost` if not held."""

    @abc.abstractmethod
    async def next_due(self, zone: str) -> float | None:
        """The earliest ``next_attempt`` among unleased deliveries of ``zone``, if any."""

    @abc.abstractmethod
    async def leased_elsewhere(self, zone: str, *, owner: str, now: float) -> dict[str, int]:
        """How many deliveries of ``zone`` other instances (lease owner not ``owner``) hold
        leased at ``now``, per recipient domain: their share of a domain's connection
        limit when instances share the store."""

    @abc.abstractmethod
    async def get_message(self, message_id: str) -> MessageRecord | None:
        """The stored message (without body), or None."""

    @abc.abstractmethod
    def read_body(self, message_id: str) -> AsyncIterator[bytes]:
        """The body's chunks in order. Raises StoreError if the message does not exist."""

    @abc.abstractmethod
    async def deliveries_of(self, message_id: str) -> list[Delivery]:
        """All pending deliveries of a message, by seq."""

    @abc.abstractmethod
    async def recover_leases(self, owner: str) -> int:
        """At start: every lease held by ``owner`` returns to the queue (a previous process
        with this instance id died), QUEUED when it has no attempt counted and DEFERRED
        when it has (what ``zonemta.statemachine.waiting_state`` says). Returns how many."""

    @abc.abstractmethod
    async def zone_counts(self, now: float) -> dict[str, ZoneCounts]:
        """Pending deliveries per zone."""

    @abc.abstractmethod
    async def domain_counts(
        self, now: float, *, zone: str | None = None
    ) -> dict[tuple[str, str], ZoneCounts]:
        """Pending deliveries per ``(zone, recipient domain)`` (of one ``zone``, or of every
        zone when None), split as :meth:`zone_counts` splits them: exact, in one query."""

    async def list_deliveries(
        self,
        zone: str,
        *,
        deferred: bool,
        now: float,
        start: int = 0,
        limit: int = 1000,
        descending: bool = False,
    ) -> list[Delivery]:
        """Pending deliveries of ``zone`` for listings: ``deferred=False`` lists the active
        ones (due at ``now`` or leased), ``deferred=True`` those waiting for a later
        ``next_attempt`` (the split of :meth:`zone_counts`). Ordered by ``(created,
        message_id, seq)``, ascending unless ``descending``; ``start``/``limit`` page it.
        Raises ValueError for a negative ``start`` or ``limit``."""
        if start < 0 or limit < 0:
            raise ValueError("start and limit must not be negative")
        return await self._list_deliveries(zone, deferred, now, start, limit, descending)

    @abc.abstractmethod
    async def _list_deliveries(
        self, zone: str, deferred: bool, now: float, start: int, limit: int, descending: bool
    ) -> list[Delivery]:
        """:meth:`list_deliveries` with its arguments checked."""

    @abc.abstractmethod
    async def reschedule(self, message_id: str, seq: int | None, *, next_attempt: float) -> int:
        """ "Send now": set ``next_attempt`` of the message's unleased deliveries (all, or
        the one ``seq``). Leased ones are left alone. Returns how many changed."""

    @abc.abstractmethod
    async def remove_deliveries(self, message_id: str, seq: int | None) -> int:
        """Delete the message's unleased deliveries (all, or the one ``seq``) without a
        bounce; the message and body go with the last delivery. Leased ones are left alone.
        Returns how many were removed."""

    async def add_suppression(
        self, *, address: str | None = None, domain: str | None = None, now: float
    ) -> SuppressionEntry:
        """Add an address (compared case-insensitively in the domain part, exactly in the
        local part) or a domain (lower-case). Exactly one must be given (ValueError
        otherwise). Adding an existing one returns the existing entry."""
        if (address is None) == (domain is None):
            raise ValueError("give exactly one of address and domain")
        return await self._add_suppression(
            secrets.token_hex(12),
            normalize_address(address) if address is not None else None,
            domain.lower() if domain is not None else None,
            now,
        )

    @abc.abstractmethod
    async def _add_suppression(
        self, entry_id: str, address: str | None, domain: str | None, now: float
    ) -> SuppressionEntry:
        """Store a normalised entry under ``entry_id`` unless the same address or domain is
        there; return the stored entry."""

    @abc.abstractmethod
    async def list_suppressions(self) -> list[SuppressionEntry]:
        """All entries, newest first."""

    @abc.abstractmethod
    async def remove_suppression(self, entry_id: str) -> bool:
        """Remove by id; False when there is no such entry."""

    @abc.abstractmethod
    async def is_suppressed(self, recipient: str) -> bool:
        """Whether the recipient address or its domain is on the suppression list."""

    @abc.abstractmethod
    async def put_blacklist(self, entry: BlacklistEntry) -> None:
        """Store an entry, replacing an earlier one for the same (domain, address)."""

    @abc.abstractmethod
    async def list_blacklist(self, now: float) -> list[BlacklistEntry]:
        """Entries that have not expired at ``now``, soonest expiry first."""

    @abc.abstractmethod
    async def purge_blacklist(self, now: float) -> int:
        """Delete entries expired at ``now``; returns how many."""

    @abc.abstractmethod
    async def add_suspension(self, entry: Suspension) -> None:
        """Store ``entry`` (its id is new)."""

    @abc.abstractmethod
    async def list_suspensions(self, now: float) -> list[Suspension]:
        """Entries not expired at ``now``, oldest first."""

    @abc.abstractmethod
    async def remove_suspension(self, entry_id: str, *, now: float) -> Suspension | None:
        """Remove the entry ``entry_id`` and credit the time it held (see
        :meth:`Suspension.held_seconds`) to the deliveries it held: their ``created`` moves
        forward by that much, so ``max_queue_time`` does not count time spent held. Returns
        the removed entry, or None when there is none (removed by another instance)."""

    @abc.abstractmethod
    async def expire_suspensions(self, now: float) -> list[Suspension]:
        """Remove the entries whose ``until`` has passed at ``now``, crediting the time each
        held as :meth:`remove_suspension` does; each entry is removed (and credited) by one
        caller only. Returns the removed entries."""

    @abc.abstractmethod
    async def credit_held_time(
        self, *, zone: str | None, domains: Collection[str], seconds: float
    ) -> None:
        """Move ``created`` of the deliveries to ``domains`` (in ``zone``, or in every zone
        when None) forward by ``seconds``: the credit of a suspension of a site, whose member
        domains only the engine knows (:meth:`remove_suspension` credits the entry's own
        scope)."""

    @abc.abstractmethod
    async def add_to_counter(self, name: str, amount: int, *, expires: float) -> int:
        """Add ``amount`` to the shared counter ``name`` (created at 0, kept until
        ``expires``) and return its new value: one atomic step, so instances sharing the
        store count together (warm-up caps, cross-instance rates)."""

    @abc.abstractmethod
    async def get_counters(self, names: Collection[str]) -> dict[str, int]:
        """The values of the counters in ``names`` that exist."""

    @abc.abstractmethod
    async def purge_counters(self, now: float) -> int:
        """Delete counters that expired at ``now``; returns how many."""

    @abc.abstractmethod
    async def remove_orphans(self) -> int:
        """Remove bodies and messages that no delivery references (aborted receptions,
        crashes). Returns how many messages' data were removed."""

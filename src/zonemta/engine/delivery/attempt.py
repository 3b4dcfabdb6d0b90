"""One delivery attempt: from a leased row to delivered, deferred or bounced.

The attempt reads the message, lets its zone's :class:`~zonemta.engine.delivery.transmit.Sender`
(in this process or in a delivery process) turn the attempt into an outcome, fires the
outcome's trigger on the delivery's state machine and has the
:class:`~zonemta.engine.delivery.effects.EffectApplier` carry out the transition's effects.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from functools import partial

import trio

from zonemta.engine.bounces.notices import BounceNotices
from zonemta.engine.bounces.suppression import SuppressionList
from zonemta.engine.bus import EventBus
from zonemta.engine.delivery.backoff import Backoff
from zonemta.engine.delivery.blacklist import Blacklist
from zonemta.engine.delivery.effects import EffectApplier
from zonemta.engine.delivery.machine import DeliveryMachine
from zonemta.engine.delivery.messages import MessageCache
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.engine.delivery.suspensions import Suspensions, describe
from zonemta.engine.delivery.transmit import Outcome, Sender
from zonemta.engine.delivery.warmup import WarmupCaps
from zonemta.engine.hooks import Hooks
from zonemta.engine.processes.delivery_process import DeliveryProcess
from zonemta.statemachine import FailureCategory as Category
from zonemta.statemachine import Transition, Trigger, release_trigger
from zonemta.store import Delivery, MessageRecord, Store

log = logging.getLogger(__name__)

PROCESS_LOST = "delivery process exited during the attempt"
WARMUP_USED = "every source address has used its warm-up cap today"


class Deliverer:
    """Runs attempts for one zone."""

    def __init__(
        self,
        *,
        sender: Sender,
        store: Store,
        messages: MessageCache,
        bus: EventBus,
        retry: RetryPolicy,
        suppressions: SuppressionList,
        owner: str,
        clock: Callable[[], float],
        notices: BounceNotices | None = None,
        blacklist: Blacklist | None = None,
        hooks: Hooks | None = None,
        remote: DeliveryProcess | None = None,
        suspensions: Suspensions | None = None,
        backoff: Backoff | None = None,
        warmup: WarmupCaps | None = None,
    ) -> None:
        self.sender = sender  # DNS, connection and SMTP transaction (engine/delivery/transmit.py)
        self.zone = sender.zone
        self.store = store
        self.messages = messages
        self.bus = bus
        self.retry = retry
        self.suppressions = suppressions
        self.owner = owner
        self.clock = clock
        self.notices = notices  # DSNs and the bounce webhook
        self.blacklist = blacklist  # local addresses blacklisted per domain
        self.hooks = hooks if hooks is not None else Hooks()  # plugins (engine/hooks.py)
        self.remote = remote  # a delivery process sends instead of ``sender``
        self.suspensions = suspensions  # holds: a held delivery is released unattempted
        self.backoff = backoff  # "too fast" replies suspend the (zone, domain) for a while
        self.warmup = warmup  # daily caps of new source addresses
        # Every consequence of a transition (engine/delivery/effects.py).
        self.effects = EffectApplier(
            store=store,
            owner=owner,
            messages=messages,
            retry=retry,
            clock=clock,
            notices=notices,
            blacklist=blacklist,
            backoff=backoff,
            hooks=self.hooks,
        )

    def destination_of(self, row: Delivery) -> str:
        return self.sender.destination_of(row)

    async def release(self, machine: DeliveryMachine, reason: str = "released at shutdown") -> None:
        """Give the lease back without an attempt (cancelled before the attempt began, or
        held back by a limit)."""
        await self._finish(machine, released(machine.row, reason))

    async def deliver(self, machine: DeliveryMachine) -> None:
        """Attempt the leased delivery and persist the outcome. On cancellation (shutdown)
        the lease is released in a shielded scope so the delivery is tried again later."""
        row = machine.row
        try:
            try:
                outcome = await self._attempt(machine)
            finally:
                if self.warmup is not None:
                    self.warmup.done()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._finish(machine, released(row, "released at shutdown"))
            raise
        except Exception as exc:  # never lose a delivery to a bug: defer it
            log.exception("delivery %s.%03x failed unexpectedly", row.message_id, row.seq)
            outcome = self.sender.temporary(row, f"internal error: {exc!r}", Category.INTERNAL)
        with trio.CancelScope(shield=True):
            await self._finish(machine, outcome)

    async def _attempt(self, machine: DeliveryMachine) -> Outcome:
        row = machine.row
        held = self.suspensions.holding(row) if self.suspensions is not None else None
        if held is not None:  # suspended after it was leased: wait, nothing counted
            return released(row, f"held by suspension {held.id}: {describe(held)}")
        message = await self.messages.get(row.message_id)
        if message is None:
            return Outcome(Trigger.PERMANENT_FAILURE, "message data is missing", Category.INTERNAL)
        if self.retry.is_expired(created=row.created, now=self.clock()):
            return Outcome(Trigger.EXPIRED, "message expired in the queue", Category.EXPIRED)
        if self.suppressions.is_suppressed(row.recipient):
            return Outcome(
                Trigger.SUPPRESSED, "recipient is on the suppression list", Category.SUPPRESSED
            )
        if self.warmup is not None and self.warmup.ramps and not await self._count_warmup(row):
            return released(row, WARMUP_USED)  # waits for the next day
        if self.remote is not None:
            outcome = await self.remote.transmit(machine, message, self.messages)
            if outcome is None:  # the process died; the retry goes to its successor
                return self.sender.temporary(row, PROCESS_LOST, Category.INTERNAL)
            return outcome
        return await self.sender.transmit(machine, message, partial(self._body, message))

    async def _count_warmup(self, row: Delivery) -> bool:
        """Count the attempt against the warm-up cap of the address the sender will choose
        (the same stable choice, made here first), before it goes: attempts starting at the
        same time see each other's counts. False when warm-up caps leave no address."""
        assert self.warmup is not None
        sender = self.sender
        source = sender.sources.choose(
            str(row.key),
            excluded=sender.domains.settings(row.domain).disabled_addresses,
            blacklisted=sender.blacklist.disabled_for(row.domain) if sender.blacklist else (),
        )
        if source is None:
            return not self.warmup.capped()
        if source.address:
            await self.warmup.record(source.address)
        return True

    async def _body(self, message: MessageRecord) -> AsyncIterator[bytes]:
        if message.body_size:
            async for chunk in self.messages.body(message):
                yield chunk

    async def _finish(self, machine: DeliveryMachine, outcome: Outcome) -> None:
        """Advance on the outcome's trigger, carry out the transition's effects (the store
        last), then publish (so a subscriber that sees the event finds the store already
        updated)."""
        row_transition: Transition = machine.advance(outcome.trigger)
        await self.effects.apply(machine, row_transition, outcome)
        self.messages.attempted(machine.row.message_id)
        machine.publish(row_transition, response=outcome.response, category=outcome.category)
        log_outcome(machine.row, machine, outcome)


def released(row: Delivery, reason: str) -> Outcome:
    """The outcome of a lease given back without an attempt: the table returns the row to
    the state it waited in (``release_trigger``)."""
    return Outcome(release_trigger(row.attempts), reason)


def log_outcome(row: Delivery, machine: DeliveryMachine, outcome: Outcome) -> None:
    log.info(
        "%s.%03x %s to=<%s> zone=%s mx=%s tls=%s response=%r",
        row.message_id,
        row.seq,
        machine.state.value.upper(),
        row.recipient,
        row.zone,
        machine.mx or "-",
        machine.tls or "-",
        outcome.response,
    )

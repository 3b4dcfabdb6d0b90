"""One delivery attempt: from leased rows to delivered, deferred or bounced.

An attempt takes a group of leased rows — recipients of one message to one destination,
which go in one SMTP transaction — reads the message once, checks each row (a suspension's
hold, expiry, the suppression list, warm-up caps: a row settled here leaves the group), lets
its zone's :class:`~zonemta.engine.delivery.transmit.Sender` (in this process or in a
delivery process) turn the rest into one outcome per row, fires each outcome's trigger on
that row's state machine and has the
:class:`~zonemta.engine.delivery.effects.EffectApplier` carry out the transition's effects,
row by row.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
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
from zonemta.engine.delivery.outcome import Outcome, ReleaseReason
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.engine.delivery.shared_connections import SHARED_CONNECTIONS_USED
from zonemta.engine.delivery.shared_rate import SHARED_RATE_USED
from zonemta.engine.delivery.suspensions import Suspensions, describe
from zonemta.engine.delivery.transmit import Sender
from zonemta.engine.delivery.warmup import WarmupCaps
from zonemta.engine.hooks import Hooks
from zonemta.engine.processes.delivery_process import DeliveryProcess
from zonemta.statemachine import FailureCategory as Category
from zonemta.statemachine import Transition, Trigger, release_trigger
from zonemta.store import Delivery, MessageRecord, Store

log = logging.getLogger(__name__)

PROCESS_LOST = "delivery process exited during the attempt"
WARMUP_USED = "every source address has used its warm-up cap today"
RELEASED_AT_SHUTDOWN = "released at shutdown"
#: The response of a release, by its reason (a suspension's names the suspension).
RELEASE_TEXTS = {
    ReleaseReason.SHUTDOWN: RELEASED_AT_SHUTDOWN,
    ReleaseReason.SUSPENDED: "held by suspension",
    ReleaseReason.WARMUP: WARMUP_USED,
    ReleaseReason.SHARED_RATE: SHARED_RATE_USED,
    ReleaseReason.SHARED_CONNECTIONS: SHARED_CONNECTIONS_USED,
}


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

    async def release(
        self, machine: DeliveryMachine, reason: ReleaseReason, text: str | None = None
    ) -> None:
        """Give the lease back without an attempt (cancelled before the attempt began, or
        held back by a limit): ``reason`` is why (the event's ``release`` detail), ``text``
        its response (by default the reason's, ``RELEASE_TEXTS``)."""
        await self._finish(machine, released(machine.row, reason, text))

    async def deliver(self, machines: Sequence[DeliveryMachine]) -> None:
        """Attempt the leased deliveries (one message, one destination: one transaction)
        and persist each one's outcome. On cancellation (shutdown) the leases are released
        in a shielded scope so the deliveries are tried again later."""
        try:
            try:
                outcomes = await self._attempt(machines)
            finally:
                if self.warmup is not None:
                    self.warmup.done()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                for machine in machines:
                    await self._finish(machine, released(machine.row, ReleaseReason.SHUTDOWN))
            raise
        except Exception as exc:  # never lose a delivery to a bug: defer it
            row = machines[0].row
            log.exception("delivery %s.%03x failed unexpectedly", row.message_id, row.seq)
            outcomes = [
                self.sender.temporary(m.row, f"internal error: {exc!r}", Category.INTERNAL)
                for m in machines
            ]
        with trio.CancelScope(shield=True):
            for machine, outcome in zip(machines, outcomes, strict=True):
                await self._finish(machine, outcome)

    async def _attempt(self, machines: Sequence[DeliveryMachine]) -> list[Outcome]:
        """One outcome per machine, in order: the per-row checks first; the rows they leave
        go to the sender together."""
        outcomes: dict[int, Outcome] = {}
        for index, machine in enumerate(machines):
            held = self.suspensions.holding(machine.row) if self.suspensions is not None else None
            if held is not None:  # suspended after it was leased: wait, nothing counted
                text = f"held by suspension {held.id}: {describe(held)}"
                outcomes[index] = released(machine.row, ReleaseReason.SUSPENDED, text)
        if len(outcomes) == len(machines):
            return [outcomes[index] for index in range(len(machines))]
        message = await self.messages.get(machines[0].row.message_id)
        for index, machine in enumerate(machines):
            if index not in outcomes:
                checked = self._check(machine.row, message)
                if checked is not None:
                    outcomes[index] = checked
        going = [index for index in range(len(machines)) if index not in outcomes]
        ramps = self.warmup is not None and self.warmup.ramps
        if going and ramps and not await self._count_warmup([machines[i].row for i in going]):
            outcomes.update((i, released(machines[i].row, ReleaseReason.WARMUP)) for i in going)
            going = []  # they wait for the next day
        if going:
            assert message is not None
            group = [machines[index] for index in going]
            outcomes.update(zip(going, await self._transmit(group, message), strict=True))
        return [outcomes[index] for index in range(len(machines))]

    def _check(self, row: Delivery, message: MessageRecord | None) -> Outcome | None:
        """The outcome of a row that must not be sent (message gone, expired, suppressed),
        or None."""
        if message is None:
            return Outcome(Trigger.PERMANENT_FAILURE, "message data is missing", Category.INTERNAL)
        if self.retry.is_expired(created=row.created, now=self.clock()):
            return Outcome(Trigger.EXPIRED, "message expired in the queue", Category.EXPIRED)
        if self.suppressions.is_suppressed(row.recipient):
            return Outcome(
                Trigger.SUPPRESSED, "recipient is on the suppression list", Category.SUPPRESSED
            )
        return None

    async def _transmit(
        self, machines: Sequence[DeliveryMachine], message: MessageRecord
    ) -> list[Outcome]:
        if self.remote is not None:
            outcomes = await self.remote.transmit(machines, message, self.messages)
            if outcomes is None:  # the process died; the retry goes to its successor
                return [
                    self.sender.temporary(m.row, PROCESS_LOST, Category.INTERNAL) for m in machines
                ]
            return outcomes
        return await self.sender.transmit(machines, message, partial(self._body, message))

    async def _count_warmup(self, rows: Sequence[Delivery]) -> bool:
        """Count the deliveries against the warm-up cap of the address the sender will
        choose for them (the same stable choice, made here first), before they go:
        attempts starting at the same time see each other's counts. False when warm-up
        caps leave no address."""
        assert self.warmup is not None
        source = self.sender.source_for(rows)
        if source is None:
            return not self.warmup.capped()
        if source.address:
            await self.warmup.record(source.address, len(rows))
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
        # A release says why the lease was given back (the metrics' reason label).
        why = {} if outcome.release is None else {"release": outcome.release.value}
        machine.publish(row_transition, response=outcome.response, category=outcome.category, **why)
        log_outcome(machine.row, machine, outcome)


def released(row: Delivery, reason_code: ReleaseReason, text: str | None = None) -> Outcome:
    """The outcome of a lease given back without an attempt, for ``reason_code`` (``text``
    is its response, by default the reason's in ``RELEASE_TEXTS``): the table returns the
    row to the state it waited in (``release_trigger``)."""
    response = RELEASE_TEXTS[reason_code] if text is None else text
    return Outcome(release_trigger(row.attempts), response, release=reason_code)


#: The line :func:`log_outcome` writes (``log.info`` arguments).
OUTCOME_FORMAT = "%s.%03x %s to=<%s> zone=%s mx=%s tls=%s response=%r"

# (pathname, lineno, funcName) of the records log_outcome makes: logging's findCaller
# gives the same answer for every call, so it is asked once.
_outcome_caller: tuple[str, int, str] | None = None


def log_outcome(row: Delivery, machine: DeliveryMachine, outcome: Outcome) -> None:
    """``log.info(OUTCOME_FORMAT, ...)`` without its search of the stack for the caller
    (the same record: it is made and handled as ``Logger._log`` does it)."""
    global _outcome_caller
    if not log.isEnabledFor(logging.INFO):
        return
    args = (
        row.message_id,
        row.seq,
        machine.state.value.upper(),
        row.recipient,
        row.zone,
        machine.mx or "-",
        machine.tls or "-",
        outcome.response,
    )
    caller = _outcome_caller
    if caller is None:
        fn, lno, func, _stack = log.findCaller()
        caller = _outcome_caller = (fn, lno, func)
    fn, lno, func = caller
    log.handle(log.makeRecord(log.name, logging.INFO, fn, lno, OUTCOME_FORMAT, args, None, func))

"""The one place that carries out a delivery transition's effects.

The transition table (``zonemta.statemachine``) lists every consequence of a transition as
typed effects, in order; :class:`EffectApplier` does each of them — the blacklist, the
backoff, the bounce webhook, the DSN, the plugins' report and, last, the store's write of
the row — and decides nothing the table has not said. The only facts it brings are the
outcome's: its response, its category (a ``blacklist`` effect acts only on a reply of that
category) and the retry schedule's next time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from zonemta.engine.bounces.notices import BounceNotices
from zonemta.engine.delivery.backoff import Backoff
from zonemta.engine.delivery.blacklist import Blacklist
from zonemta.engine.delivery.machine import MachineBase
from zonemta.engine.delivery.messages import MessageCache
from zonemta.engine.delivery.outcome import Outcome
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.engine.hooks import DeliveryReport, Hooks, run_notices
from zonemta.statemachine import (
    BlacklistSource,
    BounceWebhook,
    ConsiderBackoff,
    DeferRow,
    DsnKind,
    FailureCategory,
    LeaseRow,
    NotifySender,
    ReleaseRow,
    RemoveRow,
    Report,
    ReportHook,
    RowWrite,
    Transition,
)
from zonemta.store import Delivery, LeaseLost, MessageRecord, RowState, Store, StoreError

__all__ = ["EffectApplier"]

log = logging.getLogger(__name__)


class EffectApplier:
    """Carries out the effects of one zone's transitions (built by the Deliverer)."""

    def __init__(
        self,
        *,
        store: Store,
        owner: str,
        messages: MessageCache,
        retry: RetryPolicy,
        clock: Callable[[], float],
        notices: BounceNotices | None = None,
        blacklist: Blacklist | None = None,
        backoff: Backoff | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.messages = messages
        self.retry = retry
        self.clock = clock
        self.notices = notices  # DSNs and the bounce webhook
        self.blacklist = blacklist  # local addresses blacklisted per domain
        self.backoff = backoff  # "too fast" replies suspend the (zone, domain) for a while
        self.hooks = hooks if hooks is not None else Hooks()

    async def apply(
        self, machine: MachineBase, row_transition: Transition, outcome: Outcome
    ) -> None:
        """Do what ``row_transition`` says, in its order, for ``outcome``. Failures of the
        notices and reports are logged (the delivery's own outcome matters more); a store
        write that fails is logged too: the lease expires and the delivery is tried again
        (at-least-once)."""
        row = machine.row
        delay_notified = False
        for effect in row_transition.effects:
            match effect:
                case BlacklistSource():
                    if outcome.category is FailureCategory.BLACKLIST and self.blacklist is not None:
                        address = machine.local_address or ""
                        await self.blacklist.add(row.domain, address, outcome.response)
                case ConsiderBackoff():
                    if self.backoff is not None:
                        await self.backoff.consider(row.zone, row.domain, outcome.response)
                case BounceWebhook():
                    message = await self._message(row) if self.notices is not None else None
                    if self.notices is not None and message is not None:
                        self.notices.webhook_nowait(
                            row,
                            message,
                            row_transition.trigger,
                            response=outcome.response,
                            category=outcome.category,
                            mx=machine.mx,
                        )
                case NotifySender(kind=DsnKind.FAILED):
                    message = await self._message(row) if self.notices is not None else None
                    if self.notices is not None and message is not None:
                        await self.notices.failed(
                            row,
                            message,
                            row_transition.trigger,
                            response=outcome.response,
                            mx=machine.mx,
                        )
                case NotifySender(kind=DsnKind.DELAYED):
                    if self.notices is not None:
                        delay_notified = await self.notices.delayed(
                            row, response=outcome.response, mx=machine.mx
                        )
                case Report(hook=hook):
                    await self._report(hook, row, outcome, machine.mx)
                case LeaseRow() | ReleaseRow() | DeferRow() | RemoveRow():
                    await self._write(effect, row, outcome, delay_notified=delay_notified)

    async def _message(self, row: Delivery) -> MessageRecord | None:
        try:
            return await self.messages.get(row.message_id)
        except StoreError as exc:
            log.error("reading message %s for its notices failed: %s", row.message_id, exc)
            return None

    async def _write(
        self, write: RowWrite, row: Delivery, outcome: Outcome, *, delay_notified: bool
    ) -> None:
        """The store's write of the row: exactly the state the table gives."""
        now = self.clock()
        try:
            match write:
                case LeaseRow():
                    pass  # the lease query that found the row wrote it
                case ReleaseRow(state=state):
                    await self.store.release(
                        row.key, owner=self.owner, next_attempt=now, state=RowState(state.value)
                    )
                case DeferRow():
                    await self.store.defer(
                        row.key,
                        owner=self.owner,
                        now=now,
                        next_attempt=self.retry.next_attempt(attempts=row.attempts, now=now),
                        response=outcome.response,
                        delay_notified=delay_notified,
                    )
                case RemoveRow():
                    await self.store.complete(row.key, owner=self.owner)
        except LeaseLost:
            log.warning("lease of %s lost before its outcome was stored", row.key)
        except StoreError as exc:
            # The lease expires and the delivery is tried again: at-least-once.
            log.error("storing the outcome of %s failed: %s", row.key, exc)

    async def _report(
        self, hook: ReportHook, row: Delivery, outcome: Outcome, mx: str | None
    ) -> None:
        """The plugins' ``delivered``, ``bounce`` or ``delayed`` hooks. Failures are only
        logged."""
        hooks = {
            ReportHook.DELIVERED: self.hooks.delivered,
            ReportHook.BOUNCE: self.hooks.bounce,
            ReportHook.DELAYED: self.hooks.delayed,
        }[hook]
        if not hooks:
            return
        try:
            message = await self.messages.get(row.message_id)
        except StoreError:
            message = None
        report = DeliveryReport(row, message, outcome.response, outcome.category, mx)
        await run_notices(hook.value, hooks, report)

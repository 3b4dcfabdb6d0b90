"""What happens after an attempt besides the queue update: telling the sender (DSNs through
the intake into the bounces zone) and the bounce webhook.

Which of them an outcome calls for is the transition table's to say (its ``NotifySender``
and ``BounceWebhook`` effects); the engine's effect applier calls these methods *before* it
persists the outcome, so the original message is still in the store when a bounce needs its
headers, and a DSN is queued durably before the bounced delivery disappears (a crash in
between sends the DSN twice rather than never).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import attrs
import trio

from zonemta.conf import Config, ConfigError
from zonemta.conf.bounces import DsnConfig
from zonemta.dkim.signer import DkimKeyError, DkimSigner, load_signer
from zonemta.engine.bounces.classifier import BounceClassifier, RulesError
from zonemta.engine.bounces.dsn import Notice, NoticeKind, build_dsn, delay_notice_due, why_no_dsn
from zonemta.engine.bounces.webhook import BounceWebhook, bounce_payload
from zonemta.engine.delivery.messages import MessageCache
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.engine.intake.reception import Envelope, Intake, IntakeRejected
from zonemta.statemachine import FailureCategory, Trigger
from zonemta.store import Delivery, MessageRecord, StoreError

__all__ = ["BounceHandling", "BounceNotices"]

log = logging.getLogger(__name__)

# Queuing a DSN is one store commit; never hold a finished attempt longer than this for it.
_QUEUE_TIMEOUT = 30.0


class BounceNotices:
    """DSNs and webhook calls for delivery outcomes. :meth:`attach` the intake before the
    first delivery runs."""

    def __init__(
        self,
        *,
        messages: MessageCache,
        config: DsnConfig,
        reporting_mta: str,
        retry: RetryPolicy,
        zones_without_dsn: Collection[str] = (),
        webhook: BounceWebhook | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.messages = messages
        self.config = config
        self.reporting_mta = reporting_mta
        self.retry = retry
        self.zones_without_dsn = frozenset(zones_without_dsn)
        self.webhook = webhook
        self.clock = clock
        self.intake: Intake | None = None
        self.queued = 0  # DSNs queued (failure and delay notices)

    def attach(self, intake: Intake) -> None:
        self.intake = intake

    def _dsn_enabled(self, row: Delivery) -> bool:
        return (
            self.config.enabled
            and self.intake is not None
            and (row.zone not in self.zones_without_dsn)
        )

    def webhook_nowait(
        self,
        row: Delivery,
        message: MessageRecord,
        trigger: Trigger,
        *,
        response: str,
        category: FailureCategory | None,
        mx: str | None,
    ) -> None:
        """Post the bounce of ``row`` to the webhook, when one is configured (in the
        background: never waits, never raises)."""
        if self.webhook is not None:
            self.webhook.submit_nowait(
                bounce_payload(
                    row,
                    message,
                    response=_detail(row, trigger, response),
                    category=category,
                    mx=mx,
                    now=self.clock(),
                )
            )

    async def failed(
        self,
        row: Delivery,
        message: MessageRecord,
        trigger: Trigger,
        *,
        response: str,
        mx: str | None,
    ) -> None:
        """Queue the failure DSN of a bounced delivery (unless DSNs are off for it). A DSN
        that cannot be queued is logged."""
        if not self._dsn_enabled(row):
            return
        now = self.clock()
        notice = Notice(
            NoticeKind.FAILED,
            message,
            row.recipient,
            row.seq,
            _detail(row, trigger, response),
            remote_mta=mx,
            last_attempt=now,
            expired=trigger in (Trigger.EXPIRED, Trigger.RETRIES_EXHAUSTED),
        )
        await self._queue(notice, now)

    async def delayed(self, row: Delivery, *, response: str, mx: str | None) -> bool:
        """Queue the delay DSN of a deferred delivery when it is due. True when this
        deferral settled the delivery's delay notice (queued, or not to be sent for this
        message): the deferral is stored with ``delay_notified`` so it is never sent again.
        A delay notice that could not be queued is logged and tried at the next deferral."""
        if not self._delay_due(row):
            return False
        message = await self.messages.get(row.message_id)
        if message is None:
            return True  # nothing left to tell anyone about
        now = self.clock()
        notice = Notice(
            NoticeKind.DELAYED,
            message,
            row.recipient,
            row.seq,
            response,
            remote_mta=mx,
            last_attempt=now,
            retry_until=row.created + self.retry.max_queue_time,
        )
        return await self._queue(notice, now)

    def _delay_due(self, row: Delivery) -> bool:
        if not self._dsn_enabled(row):
            return False
        after = self.config.delay_after.total_seconds()
        return delay_notice_due(row, now=self.clock(), after=after)

    async def _queue(self, notice: Notice, now: float) -> bool:
        """Queue the DSN; True when that is settled (queued, or none is due for this
        message), False when queuing failed."""
        message = notice.message
        reason = why_no_dsn(message)
        if reason is not None:
            log.info("%s.%03x no DSN: %s", message.id, notice.seq, reason)
            return True
        intake = self.intake
        assert intake is not None  # _dsn_enabled checked it
        content = build_dsn(notice, reporting_mta=self.reporting_mta, now=now)
        envelope = Envelope(
            mail_from="",
            recipients=(message.mail_from,),
            interface="bounce",
            transtype="LOCAL",
            body_8bit=not content.isascii(),
            smtputf8=not message.mail_from.isascii(),
            zone=self.config.zone,
        )
        try:
            reception = intake.begin(envelope)
            with trio.fail_after(_QUEUE_TIMEOUT):
                try:
                    await reception.feed(content)
                    queued = await reception.commit()
                finally:
                    with trio.CancelScope(shield=True):
                        await reception.abort()  # no-op once committed
        except (IntakeRejected, StoreError, trio.TooSlowError) as exc:
            log.error("%s.%03x queuing the DSN failed: %r", message.id, notice.seq, exc)
            return False
        self.queued += 1
        log.info(
            "%s.%03x DSN (%s) to <%s> queued as %s",
            message.id,
            notice.seq,
            notice.kind.value,
            message.mail_from,
            queued,
        )
        return True


def _detail(row: Delivery, trigger: Trigger, response: str) -> str:
    """What a bounce reports: an expiry is found before any attempt, so the last real
    answer is the one on the row."""
    if trigger is Trigger.EXPIRED and row.last_response:
        return row.last_response
    return response


@attrs.frozen
class BounceHandling:
    """Everything the deliverers need for message hygiene on the way out and for bounces,
    built once from the configuration."""

    classifier: BounceClassifier
    signer: DkimSigner | None
    notices: BounceNotices
    webhook: BounceWebhook | None

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        messages: MessageCache,
        retry: RetryPolicy,
        clock: Callable[[], float],
    ) -> BounceHandling:
        """Load the bounce rules and DKIM keys (once, at start). Raises
        :class:`ConfigError` naming the bad key, rules file or zone."""
        errors: list[str] = []
        classifier: BounceClassifier | None = None
        signer: DkimSigner | None = None
        try:
            classifier = BounceClassifier.load(config.bounces.rules_file or None)
        except RulesError as exc:
            errors.append(f"config.bounces.rules_file: {exc}")
        try:
            signer = load_signer(config.dkim, clock=clock)
        except DkimKeyError as exc:
            errors.append(str(exc))
        dsn = config.bounces.dsn
        if dsn.zone not in config.zones:
            errors.append(f"config.bounces.dsn.zone: no zone named {dsn.zone!r}")
        if errors or classifier is None:
            raise ConfigError("configuration", errors)
        webhook = BounceWebhook(config.bounces.webhook) if config.bounces.webhook.url else None
        notices = BounceNotices(
            messages=messages,
            config=dsn,
            reporting_mta=dsn.hostname or config.hostname,
            retry=retry,
            zones_without_dsn=[name for name, zone in config.zones.items() if not zone.dsn],
            webhook=webhook,
            clock=clock,
        )
        return cls(classifier, signer, notices, webhook)

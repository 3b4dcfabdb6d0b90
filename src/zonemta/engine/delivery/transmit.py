"""Sending one delivery: local address, DNS, connection, SMTP transaction, and the
classification of whatever happened into an outcome.

A :class:`Sender` runs in the relay's process, or in a delivery process
(``[delivery] processes``), where it gets the message and its body over a pipe. It touches
no store: the caller reads the message and persists the outcome.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Protocol

import attrs

from zonemta.dkim.signer import DkimSigner
from zonemta.engine.bounces.classifier import BounceClassifier
from zonemta.engine.delivery.connections import Slot, ZoneConnections
from zonemta.engine.delivery.machine import MachineBase
from zonemta.engine.delivery.pools import PoolAddress
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.engine.delivery.zones import DomainPolicy, SourceAddresses
from zonemta.engine.hooks import (
    ConnectTarget,
    DeliveryReport,
    FetchedDelivery,
    HeaderBlock,
    HookReject,
    Hooks,
    OutgoingHeaders,
    run_notices,
)
from zonemta.statemachine import FailureCategory, Trigger
from zonemta.store import Delivery, MessageRecord
from zonemta.transport.dns import MxResolver
from zonemta.transport.dns_results import Destination, DnsFailure, MxHost
from zonemta.transport.outbound import (
    DeliveryFailure,
    OutboundConnection,
    Stage,
    Timeouts,
    TlsPolicy,
    Transaction,
)
from zonemta.transport.tls_policy import OutboundTls, TlsPlan

log = logging.getLogger(__name__)

# The message body, read when the transaction reaches DATA (from the cache, the store, or
# the relay process over the delivery pipe).
BodySource = Callable[[], AsyncIterator[bytes]]


@attrs.frozen
class ZoneRoute:
    """How a zone sends: smart host or MX, from which address, with which name."""

    name: str
    smart_host: str | None
    port: int
    ipv6: bool
    prefer_ipv6: bool
    tls: TlsPolicy
    max_mx_hosts: int
    connections: int = 10
    mta_sts: bool = True  # MX deliveries honour MTA-STS policies
    dane: bool = True  # MX deliveries honour DANE TLSA records


@attrs.frozen
class Outcome:
    trigger: Trigger
    response: str
    category: FailureCategory | None = None


def failure_category(exc: DeliveryFailure) -> FailureCategory:
    """The category of a transport failure without a reply (``network`` unless the
    transport named another, e.g. ``tls``)."""
    if exc.category is None:
        return FailureCategory.NETWORK
    try:
        return FailureCategory(exc.category)
    except ValueError:  # a kind the transport names but the categories lack
        log.warning("unknown failure category %r", exc.category)
        return FailureCategory.NETWORK


class BlacklistView(Protocol):
    def disabled_for(self, domain: str) -> frozenset[str]: ...


def received_header(message: MessageRecord, row: Delivery, hostname: str) -> bytes:
    """The Received trace field for this delivery (RFC 5321 4.4), never stored."""
    meta = message.meta
    helo = meta.helo or "unknown"
    client = meta.client_address
    transtype = meta.transtype or "ESMTP"
    user = meta.user
    when = format_datetime(datetime.fromtimestamp(message.received_at, UTC))
    parts = [f"Received: from {helo} ([{client}])" if client else f"Received: from {helo}"]
    if user:
        parts.append(f"\t(Authenticated sender: {user})")
    parts.append(f"\tby {hostname} (zonemta) with {transtype} id {message.id}.{row.seq:03x}")
    parts.append(f"\tfor <{row.recipient}>; {when}")
    return ("\r\n".join(parts) + "\r\n").encode("utf-8", "surrogateescape")


class Sender:
    """Sends the deliveries of one zone over its connection pool."""

    def __init__(
        self,
        *,
        zone: ZoneRoute,
        connections: ZoneConnections,
        resolver: MxResolver,
        retry: RetryPolicy,
        timeouts: Timeouts,
        clock: Callable[[], float],
        sources: SourceAddresses,
        domains: DomainPolicy,
        classifier: BounceClassifier | None = None,
        signer: DkimSigner | None = None,
        blacklist: BlacklistView | None = None,
        hooks: Hooks | None = None,
        tls_policy: OutboundTls | None = None,
    ) -> None:
        self.zone = zone
        self.connections = connections
        self.resolver = resolver
        self.retry = retry
        self.timeouts = timeouts
        self.clock = clock
        self.sources = sources  # local addresses of the zone (pool)
        self.domains = domains  # per recipient domain limits
        self.classifier = classifier  # SMTP replies -> defer or bounce, and a category
        self.signer = signer  # DKIM at send time
        self.blacklist = blacklist  # local addresses blacklisted per domain
        self.hooks = hooks if hooks is not None else Hooks()  # plugins (engine/hooks.py)
        # TLS per host: the zone's mode, MTA-STS and DANE (None: the zone's mode alone).
        self.tls_policy = tls_policy if tls_policy is not None else OutboundTls()

    def destination_of(self, row: Delivery) -> str:
        if self.zone.smart_host:
            return f"{self.zone.smart_host}:{self.zone.port}"
        return row.domain

    def temporary(self, row: Delivery, response: str, category: FailureCategory | None) -> Outcome:
        trigger = self.retry.on_temporary_failure(
            attempts=row.attempts, created=row.created, now=self.clock()
        )
        return Outcome(trigger, response, category)

    def _failure(self, row: Delivery, exc: DeliveryFailure | DnsFailure) -> Outcome:
        if isinstance(exc, DnsFailure):
            category: FailureCategory | None = FailureCategory.DNS
            response = str(exc.reply)
        else:
            category = failure_category(exc) if exc.reply is None else None
            response = exc.response
            if exc.reply is not None and self.classifier is not None:
                verdict = self.classifier.classify(response)
                if verdict.temporary:
                    return self.temporary(row, response, verdict.category)
                return Outcome(Trigger.PERMANENT_FAILURE, response, verdict.category)
        if exc.temporary:
            return self.temporary(row, response, category)
        return Outcome(Trigger.PERMANENT_FAILURE, response, category)

    async def transmit(
        self, machine: MachineBase, message: MessageRecord, body: BodySource
    ) -> Outcome:
        """Send ``message`` to the delivery's recipient and classify what happened. Failures
        of DNS and SMTP become outcomes; anything else (a plugin's exception, a bug)
        propagates, and the caller defers the delivery."""
        row = machine.row
        fixed_mx: str | None = None
        routes = message.meta.routes
        if routes or self.hooks.fetch:
            route = routes.get(row.seq)
            fetched = FetchedDelivery(row, message)
            if route is not None:
                fetched.http_url, fetched.mx = route.http_url, route.mx
            decided = await self._fetched(machine, fetched, body)
            if decided is not None:
                return decided
            fixed_mx = fetched.mx
        source = self._source(row)
        if source is None:
            return Outcome(
                Trigger.PERMANENT_FAILURE,
                f"every local address of zone {self.zone.name} is blacklisted by {row.domain}",
                FailureCategory.BLACKLIST,
            )
        if self.hooks.before_connect:
            target = ConnectTarget(row, message, fixed_mx, source.address or None)
            for hook in self.hooks.before_connect:
                await hook(target)  # an exception defers the delivery (deliver())
            fixed_mx = target.mx
            if (target.local_address or "") != source.address:
                source = PoolAddress(target.local_address or "", source.name)
        machine.local_address = source.address or None
        key = (source.address, fixed_mx or self.destination_of(row))
        slot = await self.connections.checkout(key)
        try:
            return await self._attempt_on(machine, message, body, slot, source, mx=fixed_mx)
        except (DeliveryFailure, DnsFailure) as exc:
            if self.hooks.response_error:
                report = DeliveryReport(row, message, str(exc), mx=machine.mx)
                await run_notices("response_error", self.hooks.response_error, report)
            return self._failure(row, exc)
        finally:
            self.connections.checkin(slot)

    async def _fetched(
        self, machine: MachineBase, fetched: FetchedDelivery, body: BodySource
    ) -> Outcome | None:
        """Run the ``fetch`` hooks; an outcome when they settle the delivery (suppressed,
        rejected, diverted), None to go on with SMTP. Other exceptions propagate (deferral)."""
        row = machine.row
        try:
            for hook in self.hooks.fetch:
                await hook(fetched)
        except HookReject as exc:
            if exc.reply.code >= 500:
                return Outcome(Trigger.PERMANENT_FAILURE, str(exc.reply), FailureCategory.PLUGIN)
            return self.temporary(row, str(exc.reply), FailureCategory.PLUGIN)
        if fetched.suppress:
            return Outcome(Trigger.SUPPRESSED, "suppressed by a plugin", FailureCategory.SUPPRESSED)
        if fetched.divert is not None:
            machine.fire(Trigger.RESOLVE)
            machine.mx = fetched.http_url or "divert"
            machine.fire(Trigger.RESOLVED, hosts=[machine.mx])
            machine.fire(Trigger.CONNECTED, tls=False)
            head = fetched.message.headers + b"\r\n"
            result = await fetched.divert(fetched, self._content(head, body))
            if result.status == "delivered":
                return Outcome(Trigger.ACCEPTED, result.response)
            if result.status == "bounced":
                return Outcome(Trigger.PERMANENT_FAILURE, result.response, FailureCategory.HTTP)
            return self.temporary(row, result.response, FailureCategory.HTTP)
        if fetched.http_url:
            return self.temporary(row, "no plugin delivers to HTTP targets", FailureCategory.PLUGIN)
        return None

    def _source(self, row: Delivery, *, ipv6: bool | None = None) -> PoolAddress | None:
        """The local address for this delivery (stable across retries)."""
        blacklisted = self.blacklist.disabled_for(row.domain) if self.blacklist else ()
        return self.sources.choose(
            str(row.key),
            excluded=self.domains.settings(row.domain).disabled_addresses,
            blacklisted=blacklisted,
            ipv6=ipv6,
        )

    async def _throttle(self, slot: Slot) -> None:
        """The zone's per-connection pace: wait for this connection's next turn."""
        if slot.throttle is not None:
            await slot.throttle.wait()

    async def _attempt_on(
        self,
        machine: MachineBase,
        message: MessageRecord,
        body: BodySource,
        slot: Slot,
        source: PoolAddress,
        *,
        mx: str | None = None,
    ) -> Outcome:
        row = machine.row
        if slot.connection is not None:
            machine.mx = slot.connection.mx
            machine.fire(Trigger.REUSE_CONNECTION, **slot.connection.tls_details)
            try:
                await self._throttle(slot)
                reply = await self._send(slot.connection, message, body, row)
                return Outcome(Trigger.ACCEPTED, str(reply))
            except DeliveryFailure as exc:
                if exc.reply is not None or exc.stage not in (Stage.MAIL, Stage.RCPT, Stage.DATA):
                    raise
                # The idle connection was closed by the server: open a fresh one.
                slot.connection.broken = True
                await slot.connection.aclose(polite=False)
                slot.connection = None
                machine.fire(Trigger.RECONNECT, response=exc.response)
        else:
            machine.fire(Trigger.RESOLVE)
        port = self.zone.port
        if mx is not None:  # fixed by a plugin: "host" or "host:port"
            host, _, given = mx.rpartition(":") if mx.count(":") == 1 else (mx, "", "")
            mx, port = (host, int(given)) if given.isdigit() else (mx, port)
            destination = await self.resolver.resolve_host(
                mx, port=port, ipv6=self.zone.ipv6, prefer_ipv6=self.zone.prefer_ipv6
            )
            plan = self.tls_policy.fixed(self.zone.tls, destination.hosts)
        else:
            destination = await self._resolve(row)
            plan = await self._tls_plan(destination, port)
        machine.fire(Trigger.RESOLVED, hosts=[host.name for host in destination.hosts])
        slot.connection = await self._connect(plan, destination, machine, source, port=port)
        connection = slot.connection
        machine.fire(Trigger.CONNECTED, tls=connection.tls, **connection.tls_details)
        await self._throttle(slot)
        reply = await self._send(slot.connection, message, body, row)
        return Outcome(Trigger.ACCEPTED, str(reply))

    async def _resolve(self, row: Delivery) -> Destination:
        zone = self.zone
        if zone.smart_host:
            return await self.resolver.resolve_host(
                zone.smart_host,
                port=zone.port,
                ipv6=zone.ipv6,
                prefer_ipv6=zone.prefer_ipv6,
            )
        return await self.resolver.resolve(
            row.domain, ipv6=zone.ipv6, prefer_ipv6=zone.prefer_ipv6, max_hosts=zone.max_mx_hosts
        )

    async def _tls_plan(self, destination: Destination, port: int) -> TlsPlan:
        zone = self.zone
        if zone.smart_host:
            return self.tls_policy.fixed(zone.tls, destination.hosts)
        return await self.tls_policy.plan(
            destination, mode=zone.tls, port=port, mta_sts=zone.mta_sts, dane=zone.dane
        )

    async def _connect(
        self,
        plan: TlsPlan,
        destination: Destination,
        machine: MachineBase,
        source: PoolAddress,
        *,
        port: int | None = None,
    ) -> OutboundConnection:
        zone = self.zone
        port = zone.port if port is None else port
        last: DeliveryFailure | None = None
        host: MxHost
        for host, need in plan.hosts:
            for address in host.addresses:
                ipv6 = ":" in address
                local = source
                if source.address and source.is_ipv6 != ipv6:
                    # The pool's address of the other family, if it has one.
                    other = self._source(machine.row, ipv6=ipv6)
                    if other is None:
                        continue
                    local = other
                machine.mx = host.name
                machine.local_address = local.address or None
                try:
                    return await OutboundConnection.connect(
                        address,
                        port,
                        mx=host.name,
                        ehlo_name=local.name,
                        local_address=local.address or None,
                        tls=need,
                        timeouts=self.timeouts,
                    )
                except DeliveryFailure as exc:
                    log.info("%s [%s]:%s: %s", host.name, address, port, exc)
                    last = exc
        if last is None and plan.refused:
            reasons = "; ".join(plan.refused)
            raise DeliveryFailure(
                Stage.CONNECT,
                f"no MX host of {destination.domain} usable: {reasons}",
                category=FailureCategory.TLS,
            )
        if last is None:
            raise DeliveryFailure(Stage.CONNECT, f"no usable address for {destination.domain}")
        raise last

    async def _send(
        self,
        connection: OutboundConnection,
        message: MessageRecord,
        body: BodySource,
        row: Delivery,
    ) -> object:
        received = received_header(message, row, connection.ehlo_name)
        headers, cache_key = message.headers, message.id
        if self.hooks.send_headers:  # the last edit; DKIM signs the edited block
            outgoing = OutgoingHeaders(row, message, HeaderBlock(headers))
            for hook in self.hooks.send_headers:
                await hook(outgoing)
            if outgoing.headers.changed:
                headers, cache_key = outgoing.headers.to_bytes(), ""
        signatures = b""
        if self.signer is not None:  # over the final header block, Received excepted
            signatures = self.signer.sign(
                headers,
                body_hash=message.meta.dkim_bh,
                mail_from=message.mail_from,
                cache_key=cache_key,
            )
        head = received + signatures + headers + b"\r\n"
        transaction = Transaction(
            mail_from=message.mail_from,
            recipient=row.recipient,
            size=len(head) + message.body_size,
            body_8bit=message.meta.body_8bit,
            smtputf8=message.meta.smtputf8,
        )
        return await connection.send(transaction, self._content(head, body))

    async def _content(self, head: bytes, body: BodySource) -> AsyncIterator[bytes]:
        yield head
        async for chunk in body():
            yield chunk

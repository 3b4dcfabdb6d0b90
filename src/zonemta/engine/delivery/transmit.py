"""Sending one delivery: local address, DNS, connection, SMTP transaction, and the
classification of whatever happened into an outcome.

A :class:`Sender` runs in the relay's process, or in a delivery process
(``[delivery] processes``), where it gets the message and its body over a pipe. It touches
no store: the caller reads the message and persists the outcome.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

import attrs
import trio

from zonemta.dkim.bodyhash import RelaxedBodyHasher, relaxed_body_hash
from zonemta.dkim.signer import DkimSigner
from zonemta.engine.bounces.classifier import BounceClassifier
from zonemta.engine.delivery.connections import Slot, ZoneConnections
from zonemta.engine.delivery.machine import MachineBase, MachineGroup
from zonemta.engine.delivery.outcome import Outcome
from zonemta.engine.delivery.pools import PoolAddress
from zonemta.engine.delivery.received import received_header
from zonemta.engine.delivery.retry import RetryPolicy
from zonemta.engine.delivery.zones import DomainPolicy, SourceAddresses
from zonemta.engine.exception_groups import first_leaf
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
    Envelope,
    OutboundConnection,
    RecipientOutcome,
    Stage,
    Timeouts,
    TlsPolicy,
    TransactionResult,
)
from zonemta.transport.tls_policy import OutboundTls, TlsPlan

log = logging.getLogger(__name__)

# The message body, read when the transaction reaches DATA (from the cache, the store, or
# the relay process over the delivery pipe).
BodySource = Callable[[], AsyncIterator[bytes]]


class BodyBytes:
    """A :data:`BodySource` whose body is already in memory (a delivery process gets small
    bodies in the attempt itself): sent without an async iterator per message."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __call__(self) -> AsyncIterator[bytes]:
        return _one(self.data)


async def body_hash_of(body: BodySource) -> str:
    """The DKIM body hash (relaxed, sha256, base64) of a stored body, for a message queued
    without one: the intake hashes only where a key may sign, so a message accepted while
    signing was off is hashed here if a key applies when it goes out."""
    if type(body) is BodyBytes:
        return relaxed_body_hash(body.data)
    hasher = RelaxedBodyHasher()
    async for chunk in body():
        hasher.update(chunk)
    return hasher.b64digest()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


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
    max_recipients: int = 50  # recipients of one message in one SMTP transaction


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
        self, machines: Sequence[MachineBase], message: MessageRecord, body: BodySource
    ) -> list[Outcome]:
        """Send ``message`` to the deliveries' recipients (one message, one destination: a
        group the scheduler formed) and classify what happened to each: one outcome per
        machine, in order. The recipients that leave from the same local address to the
        same host go in one SMTP transaction; a plugin's routing (``fetch``,
        ``before_connect``) can part them, and ``send_headers`` hooks (which edit the
        headers per delivery) give each its own; parts for different hosts are sent at the
        same time. Failures of DNS and SMTP become outcomes, and so does anything else raised
        while a part is sent (a plugin's exception, a bug: that part is deferred as an
        internal error); an exception of the ``fetch`` or ``before_connect`` hooks
        propagates, and the caller defers the deliveries."""
        rows = [machine.row for machine in machines]
        if len(machines) == 1:  # one delivery: one part, for one host
            prepared = await self._prepare(machines[0], message, body, rows)
            if isinstance(prepared, Outcome):
                return [prepared]
            return await self._send_part(machines, rows, message, body, *prepared, [0])
        outcomes: dict[int, Outcome] = {}
        # (local address, fixed MX) -> the deliveries that go that way, in one transaction
        parts: dict[object, tuple[tuple[PoolAddress, str | None], list[int]]] = {}
        for index, machine in enumerate(machines):
            prepared = await self._prepare(machine, message, body, rows)
            if isinstance(prepared, Outcome):
                outcomes[index] = prepared
                continue
            part = index if self.hooks.send_headers else prepared
            parts.setdefault(part, (prepared, []))[1].append(index)
        # Parts for different hosts go at the same time (a slow or stalled host must not
        # hold the others back); parts for the same host one after another, as the
        # scheduler counted one connection to it for the group.
        by_host: dict[str, list[tuple[PoolAddress, str | None, list[int]]]] = {}
        for (source, fixed_mx), indexes in parts.values():
            host = fixed_mx or self.destination_of(rows[indexes[0]])
            by_host.setdefault(host, []).append((source, fixed_mx, indexes))

        async def send_parts(host_parts: list[tuple[PoolAddress, str | None, list[int]]]) -> None:
            for source, fixed_mx, indexes in host_parts:
                sent = await self._send_part(
                    machines, rows, message, body, source, fixed_mx, indexes
                )
                outcomes.update(zip(indexes, sent, strict=True))

        if len(by_host) == 1:
            await send_parts(next(iter(by_host.values())))
        else:
            try:
                async with trio.open_nursery() as nursery:
                    for host_parts in by_host.values():
                        nursery.start_soon(send_parts, host_parts)
            except BaseExceptionGroup as group:  # only cancellation gets out of send_parts
                raise first_leaf(group) from None  # the plain trio.Cancelled callers handle
        return [outcomes[index] for index in range(len(machines))]

    async def _send_part(
        self,
        machines: Sequence[MachineBase],
        rows: list[Delivery],
        message: MessageRecord,
        body: BodySource,
        source: PoolAddress,
        fixed_mx: str | None,
        indexes: list[int],
    ) -> list[Outcome]:
        """One part's transaction: the outcomes of the machines at ``indexes``."""
        group = MachineGroup([machines[i] for i in indexes], rows)
        try:
            return await self._transmit_on(group, message, body, source, fixed_mx)
        except Exception as exc:  # a plugin's or our bug: this part only is deferred
            log.exception("delivery %s.%03x failed unexpectedly", message.id, group.row.seq)
            error = f"internal error: {exc!r}"
            return [self.temporary(rows[i], error, FailureCategory.INTERNAL) for i in indexes]

    async def _prepare(
        self,
        machine: MachineBase,
        message: MessageRecord,
        body: BodySource,
        rows: Sequence[Delivery],
    ) -> Outcome | tuple[PoolAddress, str | None]:
        """One delivery before the connection: the ``fetch`` hooks (or the message's
        routes), the local address (the group's, chosen for ``rows``) and the
        ``before_connect`` hooks. An outcome when they settle the delivery, else where it
        goes: (local address, fixed MX or None)."""
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
        source = self.source_for(rows)
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
        return source, fixed_mx

    async def _transmit_on(
        self,
        group: MachineGroup,
        message: MessageRecord,
        body: BodySource,
        source: PoolAddress,
        fixed_mx: str | None,
    ) -> list[Outcome]:
        """One SMTP transaction for the group's recipients, on a connection of the pool
        (reused or opened): an outcome per machine. A failure without a per-recipient reply
        (DNS, connection, TLS, a timeout) is every recipient's."""
        key = (source.address, fixed_mx or self.destination_of(group.row))
        slot = await self.connections.checkout(key)
        try:
            result = await self._attempt_on(group, message, body, slot, source, mx=fixed_mx)
        except (DeliveryFailure, DnsFailure) as exc:
            return [await self._failed(m, message, exc) for m in group.machines]
        finally:
            self.connections.checkin(slot)
        outcomes = []
        for machine, recipient in zip(group.machines, result.outcomes, strict=True):
            outcomes.append(await self._recipient_outcome(machine, message, recipient))
        return outcomes

    async def _recipient_outcome(
        self, machine: MachineBase, message: MessageRecord, outcome: RecipientOutcome
    ) -> Outcome:
        """A recipient's outcome in the transaction: accepted (the reply to the end of
        data), or refused with its reply (RCPT's own, or MAIL's, DATA's or the end of
        data's, which are every recipient's), classified as a failure."""
        if outcome.accepted:
            return Outcome(Trigger.ACCEPTED, str(outcome.reply))
        refusal = DeliveryFailure.from_reply(outcome.stage, outcome.reply)
        return await self._failed(machine, message, refusal)

    async def _failed(
        self, machine: MachineBase, message: MessageRecord, exc: DeliveryFailure | DnsFailure
    ) -> Outcome:
        """The ``response_error`` hooks, then the failure's outcome for one delivery."""
        if self.hooks.response_error:
            report = DeliveryReport(machine.row, message, str(exc), mx=machine.mx)
            await run_notices("response_error", self.hooks.response_error, report)
        return self._failure(machine.row, exc)

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

    def source_for(
        self, rows: Sequence[Delivery], *, ipv6: bool | None = None
    ) -> PoolAddress | None:
        """The local address for deliveries that go together (one transaction): chosen by
        the first one's key, so a delivery alone keeps its address across retries, and
        never one that any of their domains disables or blacklisted."""
        pool = self.sources.pool
        if ipv6 is None and pool.single is not None:
            # One address with a share: SourceAddresses.choose gives it unless blacklisted
            # (disabled_addresses are ignored when they would leave nothing): no hash, no sets.
            single = pool.single
            if self.blacklist is not None:
                for row in rows:
                    if single.address in self.blacklist.disabled_for(row.domain):
                        return None
            return single
        domains = {row.domain for row in rows}
        excluded: set[str] = set()
        blacklisted: set[str] = set()
        for domain in domains:
            excluded |= self.domains.settings(domain).disabled_addresses
            if self.blacklist is not None:
                blacklisted |= self.blacklist.disabled_for(domain)
        return self.sources.choose(
            str(rows[0].key), excluded=excluded, blacklisted=blacklisted, ipv6=ipv6
        )

    async def _throttle(self, slot: Slot) -> None:
        """The zone's per-connection pace: wait for this connection's next turn."""
        if slot.throttle is not None:
            await slot.throttle.wait()

    async def _attempt_on(
        self,
        machine: MachineGroup,
        message: MessageRecord,
        body: BodySource,
        slot: Slot,
        source: PoolAddress,
        *,
        mx: str | None = None,
    ) -> TransactionResult:
        row = machine.row
        if slot.connection is not None:
            machine.mx = slot.connection.mx
            machine.fire(Trigger.REUSE_CONNECTION, **slot.connection.tls_details)
            try:
                if slot.throttle is not None:
                    await self._throttle(slot)
                return await self._send(slot.connection, message, body, machine)
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
        return await self._send(slot.connection, message, body, machine)

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
        machine: MachineGroup,
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
                    other = self.source_for(machine.source_rows, ipv6=ipv6)
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
                        timers=self.connections.timers,
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
        group: MachineGroup,
    ) -> TransactionResult:
        """One transaction for the group's recipients: Received, the ``send_headers``
        hooks, one DKIM signature, then the content."""
        row, rows = group.row, [machine.row for machine in group.machines]
        received = received_header(message, row, connection.ehlo_name, single=len(rows) == 1)
        headers, cache_key = message.headers, message.id
        if self.hooks.send_headers:  # the last edit; DKIM signs the edited block
            outgoing = OutgoingHeaders(row, message, HeaderBlock(headers))
            for hook in self.hooks.send_headers:
                await hook(outgoing)
            if outgoing.headers.changed:
                headers, cache_key = outgoing.headers.to_bytes(), ""
        signatures = b""
        signer = self.signer
        if signer is not None:  # over the final header block, Received excepted
            body_hash = message.meta.dkim_bh
            if not body_hash and signer.keys_for(headers, message.mail_from):
                body_hash = await body_hash_of(body)  # queued while no key could sign
            signatures = signer.sign(
                headers, body_hash=body_hash, mail_from=message.mail_from, cache_key=cache_key
            )
        head = received + signatures + headers + b"\r\n"
        envelope = Envelope(
            mail_from=message.mail_from,
            recipients=tuple([r.recipient for r in rows]),
            size=len(head) + message.body_size,
            body_8bit=message.meta.body_8bit,
            smtputf8=message.meta.smtputf8,
        )
        if type(body) is BodyBytes:  # the whole content at hand: no async iteration
            data = body.data
            return await connection.deliver(envelope, (head, data) if data else (head,))
        return await connection.deliver(envelope, self._content(head, body))

    async def _content(self, head: bytes, body: BodySource) -> AsyncIterator[bytes]:
        yield head
        async for chunk in body():
            yield chunk

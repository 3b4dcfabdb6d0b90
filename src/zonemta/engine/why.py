""" "Why is this message waiting?": each delivery's concrete reasons, read from the state the
schedulers act on (suspensions, leases, retry times, domain limits, rate buckets, pools),
not reconstructed from logs.

Reasons, by ``code``:

``leased``              another instance holds the lease (until when)
``in_flight``           this instance is attempting it now (the delivery's live state)
``zone_disabled``       its zone is disabled or no longer configured
``suspended``           a suspension holds it (operator's or a backoff rule's, with the reply)
``sources_suspended``   every source address of its zone is suspended
``retry``               deferred: the next retry time, attempts so far and the last reply
``dns``                 the last attempt failed in DNS (with the reply)
``domain_connections``  its recipient domain is at ``max_connections`` in the zone (use/limit)
``rate``                its recipient domain's ``rate`` has no token before the given time
``zone_capacity``       the zone has as many attempts in flight as it takes
``warmup``              every source address of the zone has used its warm-up cap today
                        (``addresses``: cap and use of each; ``next_day``)
``source_blacklisted``  every source address of the zone is blacklisted by the domain (the
                        next attempt bounces unless an entry expires first)
``due``                 nothing holds it: the scheduler leases it next
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from zonemta.engine.delivery.suspensions import describe
from zonemta.store import Delivery, RowState

if TYPE_CHECKING:
    from zonemta.engine.delivery.scheduler import ZoneScheduler
    from zonemta.engine.engine import DeliveryEngine


@attrs.frozen
class Reason:
    code: str
    text: str
    details: dict[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "text": self.text, **self.details}


def _dns_failure(response: str | None) -> bool:
    return response is not None and ("DNS lookup failed" in response or " 4.4.3 " in response)


def explain(
    engine: DeliveryEngine, row: Delivery, *, now: float, to_epoch: Callable[[float], float]
) -> list[Reason]:
    """The reasons ``row`` has not been delivered yet at ``now`` (epoch seconds), most
    binding first. ``to_epoch`` turns a trio time into epoch seconds (rate tokens)."""
    reasons: list[Reason] = []
    owner = engine.config.queue.instance_id
    if row.state is RowState.LOCKED and row.lease_until is not None and row.lease_until > now:
        if row.lease_owner != owner:
            return [
                Reason(
                    "leased",
                    f"leased by instance {row.lease_owner} until the lease expires",
                    {"owner": row.lease_owner, "lease_until": row.lease_until},
                )
            ]
        scheduler = engine.schedulers.get(row.zone)
        machine = scheduler.inflight.get(row.key) if scheduler is not None else None
        state = machine.state.value if machine is not None else "locked"
        return [Reason("in_flight", f"being attempted now ({state})", {"live": state})]
    scheduler = engine.schedulers.get(row.zone)
    if scheduler is None:
        return [Reason("zone_disabled", f"zone {row.zone} is disabled or not configured")]
    entry = engine.suspensions.holding(row)
    if entry is not None:
        reasons.append(_suspended(entry.id, describe(entry), entry.rule, entry.response))
    zone_entry = engine.suspensions.zone_hold(row.zone)
    held = scheduler.zone_held() if zone_entry is None else None
    if held is not None and "warm-up" in held:
        warmup = engine.warmup
        caps = {
            a: {"cap": warmup.cap(a), "used": warmup.used(a)}
            for a in sorted(scheduler.deliverer.sender.sources.addresses)
            if a in warmup.ramps
        }
        details = {"addresses": caps, "next_day": warmup.next_day()}
        reasons.append(Reason("warmup", held, details))
    elif held is not None:
        reasons.append(
            Reason("sources_suspended", f"every source address of zone {row.zone} is suspended")
        )
    if row.next_attempt > now:
        reasons.append(
            Reason(
                "retry",
                f"deferred after {row.attempts} attempt(s); next retry at the given time",
                {
                    "next_attempt": row.next_attempt,
                    "attempts": row.attempts,
                    "last_response": row.last_response,
                },
            )
        )
    if _dns_failure(row.last_response):
        reasons.append(
            Reason("dns", "the last attempt failed in DNS", {"last_response": row.last_response})
        )
    reasons += _limits(engine, row, to_epoch)
    if not reasons:
        reasons.append(Reason("due", "due now: the scheduler leases it next"))
    return reasons


def _suspended(entry_id: str, text: str, rule: str | None, response: str | None) -> Reason:
    details: dict[str, Any] = {"suspension": entry_id}
    if rule is not None:
        details.update(rule=rule, response=response)
    return Reason("suspended", f"held by suspension {entry_id}: {text}", details)


def _elsewhere(scheduler: ZoneScheduler, destination: str) -> dict[str, Any]:
    """``{"elsewhere": n}``: of the deliveries in use, those other instances hold leased."""
    if scheduler.shared_connections is None:
        return {}
    return {"elsewhere": scheduler.used_elsewhere(destination)}


def _slowed(engine: DeliveryEngine, row: Delivery) -> dict[str, Any]:
    """``{"slowed_by": id}`` when a slowing entry lowers the domain's limit."""
    entry = engine.suspensions.slowed(row.zone, row.domain)
    return {} if entry is None else {"slowed_by": entry.id}


def _limits(
    engine: DeliveryEngine, row: Delivery, to_epoch: Callable[[float], float]
) -> list[Reason]:
    """The zone's and the domain's limits as the scheduler sees them now."""
    reasons: list[Reason] = []
    scheduler = engine.schedulers[row.zone]
    zone = scheduler.deliverer.zone
    if not zone.smart_host:
        destination = scheduler.destination_of(row)
        use, limit = scheduler.destination_use(destination), scheduler.destination_limit(row)
        if use >= limit:
            reasons.append(
                Reason(
                    "domain_connections",
                    f"{destination} takes {limit} deliveries at once in zone {zone.name}, and"
                    f" {use} are leased for it (sending or waiting for their turn)",
                    {
                        "site": destination,
                        "in_use": use,
                        "limit": limit,
                        **_elsewhere(scheduler, destination),
                        **_slowed(engine, row),
                    },
                )
            )
    rate_key = engine.domains.site_of(row.domain)
    slot = scheduler.rate_slot(rate_key)
    if slot is not None:
        rate = engine.domains.settings(rate_key).rate
        reasons.append(
            Reason(
                "rate",
                f"{rate_key} is at its rate ({rate}); the next token is due at the given time",
                {"next_token": to_epoch(slot), "rate": str(rate), "site": rate_key},
            )
        )
    if len(scheduler.inflight) >= scheduler.max_inflight:
        reasons.append(
            Reason(
                "zone_capacity",
                f"zone {zone.name} has {len(scheduler.inflight)} attempts in flight, its maximum",
                {"in_flight": len(scheduler.inflight), "limit": scheduler.max_inflight},
            )
        )
    sources = scheduler.deliverer.sender.sources.addresses
    blacklisted = (
        engine.blacklist.disabled_for(row.domain)
        - set(engine.suspensions.held_sources())
        - engine.warmup.capped()
    )
    if sources and sources <= blacklisted:
        reasons.append(
            Reason(
                "source_blacklisted",
                f"every source address of zone {zone.name} is blacklisted by {row.domain}"
                " (the next attempt bounces unless an entry expires before it)",
                {"addresses": sorted(sources)},
            )
        )
    return reasons


def trio_to_epoch(clock: Callable[[], float]) -> Callable[[float], float]:
    """A converter from trio time to the epoch time ``clock`` gives (for rate tokens)."""
    offset = clock() - trio.current_time()
    return lambda moment: moment + offset

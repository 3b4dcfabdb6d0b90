"""MTA-STS (RFC 8461): the ``_mta-sts`` TXT record, the HTTPS policy fetch, a cache bounded by
each policy's ``max_age``, and MX pattern matching.

:class:`MtaStsPolicies` is the only stateful part; it lives in the process that sends (the
relay, or each delivery process). A policy is fetched from
``https://mta-sts.<domain>:<port>/.well-known/mta-sts.txt``, the host name resolved through
the relay's own resolver (``PolicyDns`` is not used for addresses: ``MxResolver`` is), the
certificate verified for ``mta-sts.<domain>`` against the configured CA bundle, no
redirects, at most 64 KiB.
"""

from __future__ import annotations

import enum
import logging
import re
import ssl
from collections import OrderedDict
from collections.abc import Callable

import attrs
import httpx
import trio

from zonemta.transport.dns import MxResolver
from zonemta.transport.dns_results import DnsFailure
from zonemta.transport.policy_dns import PolicyDns

__all__ = [
    "MtaStsMode",
    "MtaStsPolicies",
    "Policy",
    "PolicyError",
    "mx_matches",
    "parse_policy",
    "parse_txt_id",
]

log = logging.getLogger(__name__)

# RFC 8461 3.2: max_age is at most 31557600 seconds (about a year).
MAX_AGE_LIMIT = 31_557_600
# RFC 8461 3.3: senders may limit the policy body; 64 KiB is the common bound.
MAX_POLICY_BYTES = 64 * 1024
WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"
# A domain whose fetch failed is not asked again for this long (unless its id changes).
FETCH_FAILURE_BACKOFF = 300.0
_ID_RE = re.compile(r"[A-Za-z0-9]{1,32}")
_MAX_AGE_RE = re.compile(r"[0-9]{1,10}")  # RFC 8461 3.2: 1*10DIGIT


class MtaStsMode(enum.StrEnum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


class PolicyError(Exception):
    """A TXT record or policy that cannot be used (the message says why)."""


@attrs.frozen
class Policy:
    """A fetched policy (RFC 8461 3.2). ``policy_id`` is the TXT ``id`` it was fetched for."""

    mode: MtaStsMode
    mx: tuple[str, ...]
    max_age: int
    policy_id: str = ""

    def allows(self, host: str) -> bool:
        """True when MX ``host`` matches one of the policy's ``mx`` patterns."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def parse_txt_id(texts: tuple[str, ...]) -> str | None:
    """The ``id`` of the one ``v=STSv1`` TXT record, or None when there is none.

    Raises :class:`PolicyError` for several such records or a bad one (RFC 8461 3.1: then
    the domain is treated as having no policy)."""
    records = [t for t in texts if t.startswith("v=STSv1")]
    if not records:
        return None
    if len(records) > 1:
        raise PolicyError("more than one v=STSv1 TXT record")
    fields: dict[str, str] = {}
    for part in records[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "STSv1":
        raise PolicyError(f"bad TXT record {records[0]!r}")
    policy_id = fields.get("id", "")
    if not _ID_RE.fullmatch(policy_id):
        raise PolicyError(f"bad id in TXT record {records[0]!r}")
    return policy_id


def parse_policy(text: str, *, policy_id: str = "") -> Policy:
    """A policy body: ``key: value`` lines (CRLF or LF). Raises :class:`PolicyError`."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"bad policy line {line!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError(f"bad or missing version: {fields.get('version')!r}")
    try:
        mode = MtaStsMode(fields.get("mode", ""))
    except ValueError:
        raise PolicyError(f"bad or missing mode: {fields.get('mode')!r}") from None
    max_age_text = fields.get("max_age", "")
    if not _MAX_AGE_RE.fullmatch(max_age_text):
        raise PolicyError(f"bad or missing max_age: {max_age_text!r}")
    if mode is not MtaStsMode.NONE and not mx:
        raise PolicyError(f"mode {mode} without mx patterns")
    max_age = min(int(max_age_text), MAX_AGE_LIMIT)
    return Policy(mode, tuple(mx), max_age, policy_id)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: ``mx.example.com`` matches itself; ``*.example.com`` matches exactly one
    more leftmost label (``a.example.com``, not ``example.com`` nor ``a.b.example.com``)."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, _, rest = host.partition(".")
        return bool(label) and rest == pattern[2:]
    return pattern == host


@attrs.define
class _Cached:
    policy: Policy
    expires: float


class MtaStsPolicies:
    """The policy in force for a recipient domain, cached (RFC 8461 5.1).

    ``clock`` is monotonic seconds. A TXT ``id`` equal to the cached one (or no TXT record, or
    a failed lookup) keeps the cached policy until its ``max_age``; a new ``id`` fetches again,
    and a failed fetch keeps the cached policy (or none). ``policy_for`` never raises for the
    domain's faults: it returns None when there is no usable policy.
    """

    def __init__(
        self,
        *,
        dns: PolicyDns,
        resolver: MxResolver,
        ssl_context: ssl.SSLContext,
        port: int = 443,
        timeout: float = 20.0,
        cache_size: int = 1000,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.dns = dns
        self.resolver = resolver
        self.ssl_context = ssl_context
        self.port = port
        self.timeout = timeout
        self.cache_size = cache_size
        self.clock = clock
        self.fetches = 0  # policy fetches tried (for tests and metrics)
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._failed: dict[tuple[str, str], float] = {}
        self._flights: dict[str, trio.Event] = {}

    async def policy_for(self, domain: str) -> Policy | None:
        """The policy of ``domain`` to apply now (None: none, or mode ``none``)."""
        domain = domain.lower().rstrip(".")
        while domain in self._flights:  # one lookup per domain at a time
            await self._flights[domain].wait()
        flight = self._flights[domain] = trio.Event()
        try:
            policy = await self._current(domain)
        finally:
            del self._flights[domain]
            flight.set()
        if policy is None or policy.mode is MtaStsMode.NONE:
            return None
        return policy

    async def _current(self, domain: str) -> Policy | None:
        now = self.clock()
        cached = self._cache.get(domain)
        if cached is not None and cached.expires <= now:
            del self._cache[domain]
            cached = None
        answer = await self.dns.txt(f"_mta-sts.{domain}")
        try:
            policy_id = parse_txt_id(answer.texts)
        except PolicyError as exc:
            log.info("MTA-STS %s: %s", domain, exc)
            policy_id = None
        if policy_id is None or (cached is not None and cached.policy.policy_id == policy_id):
            return cached.policy if cached is not None else None
        if self._failed.get((domain, policy_id), 0.0) > now:
            return cached.policy if cached is not None else None
        try:
            policy = await self.fetch(domain, policy_id)
        except PolicyError as exc:
            log.warning("MTA-STS %s: policy id %s not fetched: %s", domain, policy_id, exc)
            if len(self._failed) >= self.cache_size:  # forget the failures that expired
                self._failed = {k: t for k, t in self._failed.items() if t > now}
            self._failed[(domain, policy_id)] = now + FETCH_FAILURE_BACKOFF
            return cached.policy if cached is not None else None
        self._failed.pop((domain, policy_id), None)
        self._cache[domain] = _Cached(policy, self.clock() + policy.max_age)
        self._cache.move_to_end(domain)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return policy

    async def fetch(self, domain: str, policy_id: str) -> Policy:
        """GET the policy of ``domain`` over HTTPS. Raises :class:`PolicyError`."""
        self.fetches += 1
        host = f"mta-sts.{domain}"
        try:
            destination = await self.resolver.resolve_host(host, port=self.port, ipv6=True)
        except DnsFailure as exc:
            raise PolicyError(f"{host}: {exc}") from exc
        problems: list[str] = []
        for address in destination.hosts[0].addresses:
            literal = f"[{address}]" if ":" in address else address
            url = f"https://{literal}:{self.port}{WELL_KNOWN_PATH}"
            try:
                with trio.fail_after(self.timeout):
                    body = await self._get(url, host)
            except (httpx.TransportError, trio.TooSlowError) as exc:
                problems.append(f"{address}: {exc!r}")
                continue
            return parse_policy(body, policy_id=policy_id)
        raise PolicyError(f"{host}: {'; '.join(problems) or 'no address'}")

    async def _get(self, url: str, host: str) -> str:
        async with (
            httpx.AsyncClient(
                verify=self.ssl_context, follow_redirects=False, timeout=self.timeout
            ) as client,
            client.stream(
                "GET", url, headers={"Host": host}, extensions={"sni_hostname": host}
            ) as response,
        ):
            if response.status_code != 200:
                raise PolicyError(f"{host}: HTTP {response.status_code} (redirects not followed)")
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
            if media_type.lower() != "text/plain":
                raise PolicyError(f"{host}: content type {media_type!r}, not text/plain")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_POLICY_BYTES:
                    raise PolicyError(f"{host}: policy larger than {MAX_POLICY_BYTES} bytes")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{host}: policy is not UTF-8") from exc

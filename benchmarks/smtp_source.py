"""Postfix's ``smtp-source`` as the load generator (``--injector smtp-source``).

``smtp-source`` (Debian: ``/usr/sbin/smtp-source``, installed by ``install-postfix.sh``) is
the load tool Postfix's own performance notes use; it is independent of this project, so a
figure measured with it cannot be an artefact of our injector. How it behaves (checked
against a capturing server): HELO (not EHLO), no pipelining, one message per session unless
``-d``; with ``-d`` the ``-s`` sessions stay open and share the ``-m`` messages; ``-N``
prepends a sequence number to the recipient; ``-c`` writes ``N\\r`` to stdout each time a
DATA completes; the headers it adds (From, To, Date, Message-Id) come on top of the ``-l``
payload (about 150 bytes); it exits non-zero on a reply it did not expect.

The load shape of :class:`~benchmarks.inject.LoadPlan` maps onto it as follows
(:func:`plan_runs`):

- ``per_connection == 1``: one ``smtp-source -s C -m M``: a new session per message, C at
  a time (what smtp-source and most applications do).
- ``per_connection >= ceil(M / C)``: one ``smtp-source -s C -d -m M``: C sessions that stay
  open and share the messages, as the trio injector does when K is never reached.
- otherwise: C workers, each running ``smtp-source -s 1 -d -m K`` again and again (the last
  ones with what is left) until M messages were handed out: C concurrent sessions that close
  after K messages each.

What it cannot tell: which message an acceptance belongs to. The messages carry no
``X-Bench-Id``; the sink tells them apart by their (numbered, so unique) recipient, which
finds duplicates, but latency per message cannot be measured: the figures say so.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from benchmarks.inject import LoadPlan

SMTP_SOURCE = Path("/usr/sbin/smtp-source")
HELO_NAME = "bench.sender.test"
#: Bytes of smtp-source's stderr kept for the report.
STDERR_KEEP = 2000

AcceptCallback = Callable[[int, float], None]


class SmtpSourceError(Exception):
    """smtp-source is not installed."""


def find_smtp_source() -> Path | None:
    """Debian's ``/usr/sbin/smtp-source``, else one on PATH; None when absent."""
    if os.access(SMTP_SOURCE, os.X_OK):
        return SMTP_SOURCE
    found = shutil.which("smtp-source")
    return Path(found) if found else None


@attrs.frozen
class SourceRun:
    """One smtp-source process: ``messages`` over ``sessions`` parallel sessions, which stay
    open for several messages when ``keep_open`` (``-d``). ``recipient`` is the address
    that ``-N`` numbers."""

    sessions: int
    messages: int
    keep_open: bool
    recipient: str


@attrs.frozen
class SourcePlan:
    """How a load plan is run with smtp-source: ``runs`` in parallel, and then, when
    ``chunk`` is set, ``workers`` loops that each run ``-s 1 -d -m chunk`` until the
    ``messages`` are handed out (see the module docstring)."""

    shape: str
    runs: tuple[SourceRun, ...] = ()
    workers: int = 0
    chunk: int = 0
    messages: int = 0


def plan_runs(plan: LoadPlan) -> SourcePlan:
    """The smtp-source processes that offer ``plan``; raises ValueError for a paced plan
    (smtp-source has per-session delays, not an overall rate)."""
    if plan.rate:
        raise ValueError("--rate is not supported with --injector smtp-source")
    domain = plan.recipient_domain
    sessions = max(1, min(plan.connections, plan.messages))
    if plan.per_connection == 1:
        run = SourceRun(sessions, plan.messages, keep_open=False, recipient=f"user@{domain}")
        return SourcePlan("a new session per message", runs=(run,))
    if plan.per_connection >= math.ceil(plan.messages / sessions):
        run = SourceRun(sessions, plan.messages, keep_open=True, recipient=f"user@{domain}")
        return SourcePlan("sessions open for the whole run", runs=(run,))
    return SourcePlan(
        f"{plan.per_connection} messages per session",
        workers=sessions,
        chunk=plan.per_connection,
        messages=plan.messages,
    )


def command(
    executable: Path | str, host: str, port: int, run: SourceRun, *, size: int, sender: str
) -> list[str]:
    """The command line of one smtp-source process (``-l`` is the payload: ``size``)."""
    args = [str(executable), "-c", "-N", "-s", str(run.sessions), "-m", str(run.messages)]
    if run.keep_open:
        args.append("-d")
    args += ["-l", str(size), "-f", sender, "-t", run.recipient, "-M", HELO_NAME]
    args.append(f"{host}:{port}")
    return args


class SmtpSourceInjector:
    """Offers a :class:`LoadPlan` to ``host:port`` through smtp-source processes.

    Same surface as :class:`benchmarks.inject.Injector` (``run``, the counts,
    ``on_accepted(n, time.monotonic())`` per acceptance, read from ``-c``'s counter as it
    comes, so a little after the 250), but ``tags_messages`` is False: acceptances are
    numbered in the order they happen and do not name a message. Owns its processes:
    cancelling :meth:`run` terminates them.
    """

    tags_messages = False

    def __init__(
        self,
        host: str,
        port: int,
        plan: LoadPlan,
        on_accepted: AcceptCallback,
        executable: Path | None = None,
    ) -> None:
        found = executable or find_smtp_source()
        if found is None:
            raise SmtpSourceError("smtp-source is not installed: run benchmarks/install-postfix.sh")
        self.executable = found
        self.host = host
        self.port = port
        self.plan = plan
        self.source_plan = plan_runs(plan)
        self.on_accepted = on_accepted
        self.accepted = 0
        self.rejected = 0  # smtp-source stops at an unexpected reply: see ``failed``
        self.failed = 0
        self.sessions = 0
        self.processes = 0
        self.commands: list[list[str]] = []
        self.errors: list[str] = []
        self._handed_out = 0

    @property
    def notes(self) -> list[str]:
        """What the report should say about this injector's run."""
        shape = self.source_plan.shape
        first = " ".join(self.commands[0]) if self.commands else ""
        notes = [
            f"injector: smtp-source ({shape}; {self.processes} processes; first: {first})",
            "latency not measured: smtp-source does not say which message each 250 is for",
        ]
        return notes + self.errors

    async def run(self) -> None:
        """Run every process of the plan; returns when all have exited."""
        async with trio.open_nursery() as nursery:
            for run in self.source_plan.runs:
                nursery.start_soon(self._run_one, run)
            for _ in range(self.source_plan.workers):
                nursery.start_soon(self._worker)
        if self.errors:
            self.failed = max(0, self.plan.messages - self.accepted - self.rejected)

    async def _worker(self) -> None:
        while self._handed_out < self.source_plan.messages:
            count = min(self.source_plan.chunk, self.source_plan.messages - self._handed_out)
            spawn = self.processes
            self._handed_out += count
            recipient = f"user.{spawn}@{self.plan.recipient_domain}"
            if not await self._run_one(SourceRun(1, count, keep_open=True, recipient=recipient)):
                return

    async def _run_one(self, run: SourceRun) -> bool:
        """One smtp-source process; False when it failed."""
        args = command(
            self.executable, self.host, self.port, run, size=self.plan.size, sender=self.plan.sender
        )
        self.commands.append(args)
        self.processes += 1
        self.sessions += run.sessions if run.keep_open else run.messages
        stderr = bytearray()
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            assert process.stdout is not None and process.stderr is not None
            nursery.start_soon(_collect, process.stderr, stderr)
            async with process.stdout:
                while data := await process.stdout.receive_some(65536):
                    for _ in range(data.count(b"\r")):
                        now = time.monotonic()
                        self.on_accepted(self.accepted, now)
                        self.accepted += 1
        if process.returncode != 0:
            text = bytes(stderr[-STDERR_KEEP:]).decode(errors="replace").strip()
            self.errors.append(f"smtp-source exited with {process.returncode}: {text}")
            return False
        return True


async def _collect(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            into += data
            del into[:-STDERR_KEEP]

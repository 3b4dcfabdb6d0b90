"""``python -m benchmarks.relay``: relay a bounded load through zonemta (and Postfix) to a sink.

For each system: start a fresh sink, start the system relaying to it, wait for its 220,
offer the load, wait until every accepted message reached the sink (or ``--timeout``), then
stop everything. Prints a table (side by side with ratios under ``--compare postfix``) and
writes ``--json``. See ``benchmarks/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import attrs
import trio

from benchmarks import ports, procstat, report
from benchmarks.inject import Injector, LoadPlan
from benchmarks.mongo import EMULATOR_NOTE, SecantusServer
from benchmarks.postfix import PostfixInstance, postfix_version
from benchmarks.sinkctl import SinkProcess, SinkThread
from benchmarks.smtp_source import SmtpSourceInjector, find_smtp_source
from benchmarks.zonemta_relay import ZonemtaRelay, build_config, find_zonemta, load_toml

SYSTEMS = ("zonemta", "postfix", "direct")
INJECTORS = ("trio", "smtp-source")
BACKENDS = ("sqlite", "mongodb")
#: How often peak memory is sampled during a run (more often for a handful of big messages).
MEMORY_SAMPLE_INTERVAL_S = 0.5
MEMORY_SAMPLE_INTERVAL_FEW_S = 0.1
#: How often the harness checks whether every accepted message arrived (this only decides
#: when a run stops: the times in the figures are the sink's). Each check costs the harness
#: CPU that the relay would otherwise have.
DELIVERY_POLL_S = 0.05
#: How long a started relay may take to greet.
READY_TIMEOUT_S = 60.0

_MEMORY_METHODS = {
    "zonemta": "peak_rss_mb = largest sum of VmHWM (kernel peak RSS per process) over the "
    "live processes of the relay's tree (relay, delivery and intake processes); peak_pss_mb = "
    "peak of PSS summed over the tree; both sampled every {interval} s",
    "postfix": "peak_rss_mb = peak_pss_mb = peak of PSS (smaps_rollup) summed over every "
    "Postfix process, sampled every {interval} s (RSS would double-count shared pages)",
    "direct": "no relay: injector straight into the sink",
}


@attrs.frozen
class Params:
    """Everything that defines one benchmark invocation."""

    messages: int
    size: int
    connections: int
    per_connection: int
    rate: float | None
    timeout: float
    profile: bool
    config: Path | None
    target: str | None
    target_pid: int | None
    sink_port: int
    sink_mode: str
    workdir: Path | None
    keep: bool
    delivery_processes: int = 1
    injector: str = "trio"
    #: ``[intake] processes`` (a count or "auto"); None: not written (zonemta's default).
    intake_processes: int | str | None = None
    backend: str = "sqlite"

    def plan(self) -> LoadPlan:
        return LoadPlan(
            messages=self.messages,
            size=self.size,
            connections=self.connections,
            per_connection=self.per_connection,
            rate=self.rate,
        )

    def public(self) -> dict[str, Any]:
        """The parameters as recorded in the JSON file."""
        return {
            "messages": self.messages,
            "size_bytes": self.size,
            "connections": self.connections,
            "messages_per_connection": self.per_connection,
            "rate_per_s": self.rate,
            "timeout_s": self.timeout,
            "profile": self.profile,
            "config": None if self.config is None else str(self.config),
            "target": self.target,
            "sink_mode": self.sink_mode,
            "delivery_processes": self.delivery_processes,
            "injector": self.injector,
            "intake_processes": self.intake_processes,
            "queue_backend": self.backend,
        }


def _harness_cpu_seconds() -> float:
    """CPU seconds of this process and of its reaped children (smtp-source processes)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


async def _watch_sigterm() -> None:
    """Inside the trio loop, SIGTERM becomes a KeyboardInterrupt raised by this task."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            raise KeyboardInterrupt


class _Run:
    """One system's measurement inside the harness's trio loop."""

    def __init__(
        self,
        system: str,
        params: Params,
        host: str,
        port: int,
        sink: SinkProcess | SinkThread,
        root_pid: int | None,
        backend_pid: int | None = None,
    ) -> None:
        self.system = system
        self.params = params
        self.host = host
        self.port = port
        self.sink = sink
        self.root_pid = root_pid
        self.accepted: dict[int, float] = {}
        self.sampler = None if root_pid is None else procstat.MemorySampler(root_pid)
        self.backend_pid = backend_pid
        self.backend_sampler = None if backend_pid is None else procstat.MemorySampler(backend_pid)
        self.sample_interval = (
            MEMORY_SAMPLE_INTERVAL_FEW_S if params.messages <= 10 else MEMORY_SAMPLE_INTERVAL_S
        )

    async def _sample_memory(self) -> None:
        while True:
            parents = procstat.parent_map()  # one scan of /proc for both trees
            for sampler in (self.sampler, self.backend_sampler):
                if sampler is not None:
                    sampler.sample(parents)
            await trio.sleep(self.sample_interval)

    def _injector(self) -> Injector | SmtpSourceInjector:
        plan = self.params.plan()
        if self.params.injector == "smtp-source":
            return SmtpSourceInjector(self.host, self.port, plan, self.accepted.__setitem__)
        return Injector(self.host, self.port, plan, self.accepted.__setitem__)

    def _arrived(self, injector: Injector | SmtpSourceInjector) -> dict[str, float]:
        """The sink's arrivals that are messages of this load."""
        if injector.tags_messages:
            arrivals = self.sink.arrivals
            return {str(n): arrivals[str(n)] for n in self.accepted if str(n) in arrivals}
        suffix = f"@{self.params.plan().recipient_domain}"
        return {
            key: when
            for key, when in self.sink.arrivals.items()
            if key.startswith("to:") and key.endswith(suffix)
        }

    def _all_delivered(self, injector: Injector | SmtpSourceInjector) -> bool:
        arrivals = self.sink.arrivals
        if len(arrivals) < len(self.accepted):
            return False
        if injector.tags_messages:
            return all(str(n) in arrivals for n in self.accepted)
        return len(self._arrived(injector)) >= len(self.accepted)

    async def _progress(self, injector: Injector | SmtpSourceInjector) -> None:
        total = max(1, self.params.messages)
        width = 30
        while True:
            delivered = len(self.sink.arrivals)
            filled = min(width, width * delivered // total)
            sys.stdout.write(
                f"\r{self.system:8} [{'#' * filled}{'.' * (width - filled)}] "
                f"accepted {injector.accepted}/{total} delivered {delivered}/{total} "
            )
            sys.stdout.flush()
            await trio.sleep(0.2)

    async def measure(self) -> report.RunRecord:
        """Offer the load and wait for delivery, bounded by ``params.timeout``."""
        injector = self._injector()
        cpu_before = None if self.root_pid is None else procstat.tree_cpu_seconds(self.root_pid)
        backend_before = (
            None if self.backend_pid is None else procstat.tree_cpu_seconds(self.backend_pid)
        )
        harness_before = _harness_cpu_seconds()
        started = time.monotonic()
        notes: list[str] = []
        with trio.move_on_after(self.params.timeout) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.sink.pump)
                nursery.start_soon(_watch_sigterm)
                if self.sampler is not None or self.backend_sampler is not None:
                    nursery.start_soon(self._sample_memory)
                if sys.stdout.isatty():
                    nursery.start_soon(self._progress, injector)
                await injector.run()
                while True:  # the sink's counts change under us: poll them
                    if self._all_delivered(injector):
                        break
                    # Only when to stop depends on this; arrival times come from the sink.
                    await trio.sleep(DELIVERY_POLL_S)
                nursery.cancel_scope.cancel()
        if sys.stdout.isatty():
            sys.stdout.write("\n")
        harness_cpu_s = _harness_cpu_seconds() - harness_before
        cpu_s = None
        if self.root_pid is not None and cpu_before is not None:
            cpu_s = procstat.tree_cpu_seconds(self.root_pid) - cpu_before
        backend_cpu_s = None
        if self.backend_pid is not None and backend_before is not None:
            backend_cpu_s = procstat.tree_cpu_seconds(self.backend_pid) - backend_before
        for sampler in (self.sampler, self.backend_sampler):
            if sampler is not None:
                sampler.sample()
        notes.extend(injector.notes)
        if scope.cancelled_caught:
            notes.append(f"timed out after {self.params.timeout} s")
        duplicates = self.sink.total - len(self.sink.arrivals) - self.sink.anonymous
        if duplicates > 0:
            notes.append(f"{duplicates} duplicate deliveries")
        if self.sink.anonymous:
            notes.append(f"{self.sink.anonymous} messages at the sink with no id or recipient")
        arrived = self._arrived(injector)
        latencies = report.latencies(self.accepted, arrived) if injector.tags_messages else []
        return report.RunRecord(
            system=self.system,
            offered=self.params.messages,
            accepted=injector.accepted,
            rejected=injector.rejected,
            failed=injector.failed,
            delivered=len(arrived),
            started=started,
            last_accept=max(self.accepted.values(), default=None),
            last_delivery=max(arrived.values(), default=None),
            latencies_s=tuple(latencies),
            cpu_s=cpu_s,
            peak_rss_kb=self._peak_rss_kb(),
            peak_pss_kb=None if self.sampler is None else self.sampler.peak_pss_kb,
            memory_method=_MEMORY_METHODS.get(self.system, "").format(
                interval=self.sample_interval
            ),
            sink_connections=self.sink.connections,
            sessions=injector.sessions,
            complete=not scope.cancelled_caught and len(arrived) == self.params.messages,
            notes=tuple(notes),
            latency_measured=injector.tags_messages,
            harness_cpu_s=harness_cpu_s,
            backend_cpu_s=backend_cpu_s,
            backend_peak_rss_kb=self._backend_peak_kb(),
            processes_seen=None if self.sampler is None else len(self.sampler.seen),
            peak_processes=None if self.sampler is None else self.sampler.peak_processes,
        )

    def _backend_peak_kb(self) -> int | None:
        return None if self.backend_sampler is None else self.backend_sampler.peak_hwm_kb

    def _peak_rss_kb(self) -> int | None:
        if self.sampler is None:
            return None
        if self.system == "postfix":
            return self.sampler.peak_pss_kb
        return self.sampler.peak_hwm_kb


def run_system(system: str, params: Params, workdir: Path) -> tuple[report.RunRecord, list[str]]:
    """Start a sink and ``system``, measure one load, stop both; returns the record and notes.

    Everything started here is stopped before returning, also on errors and Ctrl-C.
    Raises the start-up errors of the system (PostfixError, ZonemtaError, TimeoutError).
    """
    notes: list[str] = []
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        sink: SinkProcess | SinkThread = (
            SinkThread(params.sink_port)
            if params.sink_mode == "thread"
            else SinkProcess(params.sink_port)
        )
        stack.callback(sink.stop)
        sink_port = sink.start()
        host, port, root_pid = ports.LOOPBACK, sink_port, None
        backend_pid: int | None = None
        if system == "postfix":
            size_limit = max(10_240_000, params.size * 2 + 1024 * 1024)

            def start_postfix(picked: int) -> PostfixInstance:
                instance = PostfixInstance(
                    workdir, port=picked, relay_port=sink_port, message_size_limit=size_limit
                )
                try:
                    instance.start()
                except BaseException:
                    instance.stop()  # nothing of a failed start is left for the next try
                    raise
                return instance

            # Postfix must be told its port in master.cf: a picked one, again if taken.
            instance = ports.start_on_a_picked_port(start_postfix)
            stack.callback(instance.stop)
            port = instance.port
            ports.wait_for_greeting(host, port, READY_TIMEOUT_S)
            root_pid = instance.master_pid()
            notes.append(f"postfix {postfix_version()}")
        elif system == "zonemta" and params.target is not None:
            host, port = ports.parse_target(params.target)
            root_pid = params.target_pid
            notes.append(f"running relay at {params.target}; it must deliver to the sink port")
        elif system == "zonemta":
            extra = load_toml(params.config) if params.config is not None else None
            mongodb_uri = None
            if params.backend == "mongodb":
                server = SecantusServer(workdir / "mongo")
                stack.callback(server.stop)
                server.start()
                mongodb_uri, backend_pid = server.uri, server.pid
                notes.append(EMULATOR_NOTE)
            config = build_config(
                queue_dir=workdir / "queue",
                port=0,  # the relay binds a port the kernel picks and logs which
                sink_port=sink_port,
                delivery_processes=params.delivery_processes,
                intake_processes=params.intake_processes,
                mongodb_uri=mongodb_uri,
                extra=extra,
            )
            relay = ZonemtaRelay(workdir, config, profile=params.profile)
            stack.callback(relay.stop)
            relay.start()
            port = relay.wait_ready(READY_TIMEOUT_S)
            ports.wait_for_greeting(host, port, READY_TIMEOUT_S, check=relay.check_running)
            root_pid = relay.pid
        try:
            run = _Run(system, params, host, port, sink, root_pid, backend_pid)
            record = trio.run(run.measure)
        except BaseExceptionGroup as group:
            raise _simplify(group) from group
        if system == "zonemta" and params.target is None and params.profile:
            relay.stop()
            if relay.profile_path is not None and relay.profile_path.exists():
                saved = Path.cwd() / relay.profile_path.name
                shutil.copyfile(relay.profile_path, saved)
                notes.append(f"profile saved to {saved}")
            else:
                notes.append(f"no profile written; relay log: {relay.log_tail(5)}")
    return record, notes


def _simplify(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to report for a nursery's group: Ctrl-C first, else a lone error."""
    if group.subgroup(KeyboardInterrupt) is not None:
        return KeyboardInterrupt()
    leaves: list[BaseException] = []

    def _collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                _collect(inner)
        else:
            leaves.append(exc)

    _collect(group)
    return leaves[0] if len(leaves) == 1 else group


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.relay",
        description="Relay a bounded SMTP load through zonemta (and Postfix) to a loopback sink.",
    )
    add = parser.add_argument
    add("--messages", type=int, default=1000, help="messages to inject (default 1000)")
    add("--size", type=int, default=4096, help="message size in bytes (default 4096)")
    add("--connections", type=int, default=20, help="concurrent SMTP sessions (default 20)")
    add("--per-connection", type=int, default=100, help="messages per SMTP session (100)")
    add("--compare", choices=["postfix"], help="also run the same load through Postfix")
    add("--only", choices=SYSTEMS, help="run just this system ('direct': no relay at all)")
    add("--json", type=Path, help="write the figures to this JSON file")
    add("--profile", action="store_true", help="run zonemta under py-spy or cProfile")
    add("--config", type=Path, help="extra zonemta TOML merged over the generated config")
    add("--target", help="HOST:PORT of a running relay to use instead of starting zonemta")
    add("--target-pid", type=int, help="pid of the --target relay, for CPU and memory figures")
    add("--sink-port", type=int, default=0, help="sink port (default: any free port)")
    add("--sink-mode", choices=["process", "thread"], default="process")
    add("--rate", type=float, help="offered load in messages/s (default: as fast as accepted)")
    add("--timeout", type=float, default=300.0, help="hard bound per system run, s (300)")
    add("--big-message-mb", type=int, help="memory scenario: relay ONE message of this many MiB")
    add("--workdir", type=Path, help="where configs, queues and logs go (default: a temp dir)")
    add("--keep", action="store_true", help="keep the work directory")
    add(
        "--delivery-processes",
        type=int,
        default=1,
        help="zonemta's [delivery] processes (default 1; 0 sends from the relay's process)",
    )
    add(
        "--injector",
        choices=INJECTORS,
        default="trio",
        help="load generator: the harness's trio client, or Postfix's smtp-source (trio)",
    )
    add(
        "--intake-processes",
        type=_process_count,
        metavar="N|auto",
        help="zonemta's [intake] processes (written only when given)",
    )
    add(
        "--backend",
        choices=BACKENDS,
        default="sqlite",
        help="zonemta's queue: sqlite, or mongodb against a SecantusDB emulator (sqlite)",
    )
    return parser


def _process_count(text: str) -> int | str:
    """``auto`` or a count of 0 or more (``[intake] processes``)."""
    if text == "auto":
        return text
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a count of 0 or more, not {text!r}")
    return count


def _check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, or None."""
    if args.messages < 1 or args.size < 0 or args.connections < 1:
        return "--messages and --connections must be at least 1"
    if args.per_connection < 1:
        return "--per-connection must be at least 1"
    if args.target is not None and (args.intake_processes is not None or args.backend != "sqlite"):
        return "--intake-processes and --backend apply to a zonemta the harness starts"
    if args.injector == "smtp-source":
        if args.rate:
            return "--rate is not supported with --injector smtp-source (it has no overall rate)"
        if find_smtp_source() is None:
            return "smtp-source is not installed: run benchmarks/install-postfix.sh"
    return None


def _systems(args: argparse.Namespace) -> list[str]:
    if args.only:
        return [args.only]
    return ["zonemta", "postfix"] if args.compare else ["zonemta"]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 0 when every run completed, 1 otherwise."""
    args = _parser().parse_args(argv)
    if args.big_message_mb:
        args.messages, args.connections = 1, 1
        args.size = args.big_message_mb * 1024 * 1024
    problem = _check_args(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    params = Params(
        messages=args.messages,
        size=args.size,
        connections=args.connections,
        per_connection=args.per_connection,
        rate=args.rate,
        timeout=args.timeout,
        profile=args.profile,
        config=args.config,
        target=args.target,
        target_pid=args.target_pid,
        sink_port=args.sink_port,
        sink_mode=args.sink_mode,
        workdir=args.workdir,
        keep=args.keep,
        delivery_processes=args.delivery_processes,
        injector=args.injector,
        intake_processes=args.intake_processes,
        backend=args.backend,
    )
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="zonemta-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # Postfix's daemons (user postfix) must reach their data directory
    machine = report.machine_info()
    results: dict[str, dict[str, Any]] = {}
    status = 0
    try:
        for system in _systems(args):
            if system == "zonemta" and args.target is None and find_zonemta() is None:
                print("zonemta: skipped, no zonemta executable (pip install -e .)", file=sys.stderr)
                status = 1
                continue
            try:
                record, notes = run_system(system, params, root / system)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # report and go on to the next system
                print(f"{system}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                status = 1
                continue
            figures = report.figures(record)
            figures["notes"] = [*figures["notes"], *notes]
            figures["params"] = params.public()
            figures["machine"] = machine
            results[system] = figures
            if not record.complete:
                status = 1
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    if results:
        print(report.format_table(results))
        for system, figures in results.items():
            for note in figures["notes"]:
                print(f"{system}: {note}")
    if args.json is not None:
        report.write_json(args.json, results)
    return status


if __name__ == "__main__":
    sys.exit(main())

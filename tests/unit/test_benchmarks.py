"""Smoke tests of the benchmark harness pieces on tiny loads (no relay, no Postfix needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import trio
import trio.testing

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a top-level package beside src/
    sys.path.insert(0, str(ROOT))

from benchmarks import ports, procstat, relay, report  # noqa: E402
from benchmarks.inject import LINE, Injector, LoadPlan, iter_body, message_head  # noqa: E402
from benchmarks.sink import find_bench_id, handle_session, recipient_id, serve_sink  # noqa: E402
from benchmarks.sinkctl import SinkProcess  # noqa: E402
from benchmarks.smtp_source import SourceRun, command, find_smtp_source, plan_runs  # noqa: E402
from benchmarks.zonemta_relay import build_config, dump_toml  # noqa: E402


class _Recorder:
    def __init__(self) -> None:
        self.arrivals: list[tuple[str | None, float]] = []
        self.connections = 0

    def arrival(self, bench_id: str | None, when: float) -> None:
        self.arrivals.append((bench_id, when))

    def connection(self) -> None:
        self.connections += 1


async def test_inject_twenty_messages_into_sink() -> None:
    sink = _Recorder()
    accepted: dict[int, float] = {}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_sink(
                sink.arrival, sink.connection, port=0, task_status=task_status
            )
        )
        plan = LoadPlan(messages=20, size=2000, connections=3, per_connection=4)
        stats = await Injector("127.0.0.1", port, plan, accepted.__setitem__).run()
        nursery.cancel_scope.cancel()
    assert stats.accepted == 20
    assert stats.rejected == stats.failed == 0
    assert sorted(accepted) == list(range(20))
    assert sorted(int(bench_id or -1) for bench_id, _ in sink.arrivals) == list(range(20))
    # 20 messages, at most 4 per session: at least 5 sessions, each one a sink connection.
    assert stats.sessions >= 5
    assert sink.connections == stats.sessions


async def test_rate_paces_the_offered_load(autojump_clock: trio.testing.MockClock) -> None:
    sink = _Recorder()
    accepted: dict[int, float] = {}
    async with trio.open_nursery() as nursery:

        async def _connect() -> trio.abc.Stream:
            client, server = trio.testing.memory_stream_pair()

            async def _serve() -> None:
                async with server:
                    await handle_session(server, sink.arrival)

            nursery.start_soon(_serve)
            return client

        plan = LoadPlan(messages=10, size=300, connections=3, per_connection=4, rate=5.0)
        start = trio.current_time()
        stats = await Injector("unused", 0, plan, accepted.__setitem__, connect=_connect).run()
        elapsed = trio.current_time() - start
    assert stats.accepted == 10
    assert len(sink.arrivals) == 10
    # Message 9 may not start before 9 / 5 s; nothing else waits in a memory stream.
    assert 1.8 <= elapsed < 1.9


async def test_sink_session_fed_one_byte_at_a_time() -> None:
    client, server = trio.testing.memory_stream_pair()
    sink = _Recorder()
    message = message_head(7, "user7@sink.test", "a@b.test") + b"".join(iter_body(300))
    script = (
        b"EHLO me\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<user7@sink.test>\r\nDATA\r\n"
        + message
        + b".\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@sink.test>\r\nDATA\r\n"
        + b"Subject: no id\r\n\r\n.\r\nQUIT\r\n"
    )
    replies = bytearray()

    async def _client() -> None:
        for index in range(len(script)):
            await client.send_all(script[index : index + 1])
        while data := await client.receive_some(4096):
            replies.extend(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_client)
        await handle_session(server, sink.arrival)
        await server.aclose()
    assert [bench_id for bench_id, _ in sink.arrivals] == ["7", "to:x@sink.test"]
    codes = [line[:3] for line in bytes(replies).split(b"\r\n") if line and line[3:4] == b" "]
    # greeting, EHLO, MAIL, RCPT, DATA, end of data, then the same again, QUIT
    expected = b"220 250 250 250 354 250 250 250 354 250 221".split()
    assert codes == expected


def test_find_bench_id() -> None:
    assert find_bench_id(b"X-Bench-Id: 42\r\nSubject: x\r\n\r\nbody") == "42"
    assert find_bench_id(b"Received: by x\r\nx-bench-id:  9 \r\n\r\n") == "9"
    assert find_bench_id(b"Subject: x\r\n\r\nX-Bench-Id: 5\r\n") is None  # in the body
    assert find_bench_id(b"Subject: x\r\nX-Bench-Identity: 5\r\n\r\n") is None
    assert find_bench_id(b"Subject: x\r\n") is None


@pytest.mark.parametrize("length", [0, 1, 2, 81, 4096, 3 * 1024 * 1024 + 17])
def test_iter_body_is_whole_lines_of_the_asked_length(length: int) -> None:
    body = b"".join(iter_body(length))
    assert length - 1 <= len(body) <= length
    if body:
        assert body.endswith(b"\r\n")
        assert not any(line.startswith(b".") for line in body.split(b"\r\n"))
        assert max(len(line) for line in body.split(b"\r\n")) <= len(LINE) - 2


def test_percentile_matches_linear_interpolation() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert report.percentile(values, 0) == 1.0
    assert report.percentile(values, 50) == 3.0
    assert report.percentile(values, 100) == 5.0
    assert report.percentile(values, 95) == pytest.approx(4.8)
    assert report.percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert report.percentile([], 50) is None
    with pytest.raises(ValueError, match="outside"):
        report.percentile(values, 101)


def _record(system: str, delivered: int, cpu_s: float) -> report.RunRecord:
    return report.RunRecord(
        system=system,
        offered=100,
        accepted=100,
        rejected=0,
        failed=0,
        delivered=delivered,
        started=10.0,
        last_accept=12.0,
        last_delivery=14.0,
        latencies_s=(0.1, 0.2, 0.3),
        cpu_s=cpu_s,
        peak_rss_kb=51200,
        peak_pss_kb=40960,
        memory_method="test",
        sink_connections=7,
        sessions=5,
        complete=delivered == 100,
    )


def test_figures_and_side_by_side_table() -> None:
    zonemta = report.figures(_record("zonemta", 100, 0.5))
    postfix = report.figures(_record("postfix", 100, 2.0))
    assert zonemta["accepted_per_s"] == 50.0  # 100 accepted in 2 s
    assert zonemta["delivered_per_s"] == 25.0  # 100 delivered in 4 s
    assert zonemta["latency_p50_s"] == pytest.approx(0.2)
    assert zonemta["cpu_s_per_msg"] == pytest.approx(0.005)
    assert zonemta["peak_rss_mb"] == 50.0
    assert zonemta["complete"] is True
    table = report.format_table({"postfix": postfix, "zonemta": zonemta})
    header, _, *rows = table.splitlines()
    assert header.split() == ["figure", "zonemta", "postfix", "zonemta/postfix"]
    cpu_row = next(row for row in rows if row.startswith("CPU ms/msg"))
    assert cpu_row.split()[-3:] == ["5.00", "20.00", "0.25"]
    assert report.ratio(1.0, 0) is None


def test_zonemta_config_merges_user_tables() -> None:
    extra = {"zones": {"default": {"connections": 50}}, "log": {"level": "debug"}}
    config = build_config(queue_dir=Path("/q"), port=2525, sink_port=2626, extra=extra)
    parsed = tomllib.loads(dump_toml(config))
    assert parsed["smtp"]["feeder"] == {"host": "127.0.0.1", "port": 2525, "max_size": "2GB"}
    assert parsed["zones"]["default"] == {"host": "127.0.0.1", "port": 2626, "connections": 50}
    assert parsed["queue"]["path"] == "/q"
    assert parsed["log"]["level"] == "debug"
    assert parsed["delivery"] == {"processes": 1}  # the harness's default


def test_procstat_reads_own_process() -> None:
    pid = os.getpid()
    assert pid in procstat.tree_pids(pid)
    assert procstat.tree_cpu_seconds(pid) > 0
    sampler = procstat.MemorySampler(pid)
    sampler.sample()
    assert sampler.peak_hwm_kb >= sampler.peak_rss_kb // 2 > 0
    assert sampler.peak_pss_kb > 0
    assert procstat.tree_pids(2**22 + 1) == []


async def test_sink_process_reports_arrivals() -> None:
    sink = SinkProcess()
    port = sink.start()
    try:
        accepted: dict[int, float] = {}
        plan = LoadPlan(messages=20, size=1000, connections=2)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sink.pump)
                await Injector("127.0.0.1", port, plan, accepted.__setitem__).run()
                while True:  # the pump fills sink.arrivals from the sink's pipe
                    if len(sink.arrivals) >= 20:
                        break
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    finally:
        sink.stop()
    assert set(sink.arrivals) == {str(n) for n in range(20)}
    assert sink.total == 20
    assert sink.connections == 2


def test_harness_direct_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = "--only direct --messages 30 --size 512 --connections 3 --per-connection 3 --json"
    status = relay.main([*args.split(), str(out), "--timeout", "30"])
    assert status == 0
    result = json.loads(out.read_text())["direct"]
    for key in ("accepted_per_s", "delivered_per_s", "latency_p50_s", "latency_p99_s"):
        assert result[key] is not None
    assert result["delivered"] == 30
    assert result["params"]["messages"] == 30
    # The machine's processors as /proc/cpuinfo lists them (not the os.cpu_count() that
    # machine_info itself calls, which would make this compare a value with itself).
    listed = [
        line
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.split(":")[0].strip() == "processor"
    ]
    assert result["machine"]["cores"] == len(listed) > 0
    assert result["params"]["injector"] == "trio"
    assert result["params"]["intake_processes"] is None
    # At most 3 messages per session; only the sessions that end the run may carry fewer.
    assert result["smtp_sessions_in"] == result["sink_connections"]
    assert 10 <= result["smtp_sessions_in"] <= 10 + 3


async def test_one_message_per_session_opens_a_session_per_message() -> None:
    sink = _Recorder()
    accepted: dict[int, float] = {}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_sink(
                sink.arrival, sink.connection, port=0, task_status=task_status
            )
        )
        plan = LoadPlan(messages=12, size=500, connections=5, per_connection=1)
        stats = await Injector("127.0.0.1", port, plan, accepted.__setitem__).run()
        nursery.cancel_scope.cancel()
    assert stats.accepted == 12
    # Exactly one session per message: no session is opened once the messages ran out.
    assert stats.sessions == sink.connections == 12


def test_sink_names_untagged_messages_by_recipient() -> None:
    assert recipient_id(b"RCPT TO:<17user@sink.test>") == "to:17user@sink.test"
    assert recipient_id(b"rcpt to: <a b@x.test> NOTIFY=NEVER") == "to:a_b@x.test"
    assert recipient_id(b"RCPT TO:bare@x.test SIZE=1") == "to:bare@x.test"
    assert recipient_id(b"RCPT TO:<>") is None
    assert recipient_id(b"RCPT") is None


def test_new_options_parse() -> None:
    parser = relay._parser()
    defaults = parser.parse_args([])
    assert (defaults.injector, defaults.intake_processes, defaults.backend) == (
        "trio",
        None,
        "sqlite",
    )
    args = parser.parse_args(
        ["--injector", "smtp-source", "--intake-processes", "4", "--backend", "mongodb"]
    )
    assert (args.injector, args.intake_processes, args.backend) == ("smtp-source", 4, "mongodb")
    assert parser.parse_args(["--intake-processes", "auto"]).intake_processes == "auto"
    for bad in (["--intake-processes", "-1"], ["--injector", "swaks"], ["--backend", "redis"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


@pytest.mark.parametrize(
    "argv",
    [
        "--injector smtp-source --rate 10",
        "--target 127.0.0.1:2525 --backend mongodb",
        "--target 127.0.0.1:2525 --intake-processes 2",
        "--per-connection 0",
    ],
)
def test_conflicting_options_are_refused(argv: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert relay.main(argv.split()) == 2
    assert capsys.readouterr().err.strip()


def test_smtp_source_shapes() -> None:
    one = plan_runs(LoadPlan(messages=20000, size=4096, connections=20, per_connection=1))
    assert one.runs == (SourceRun(20, 20000, keep_open=False, recipient="user@sink.test"),)
    assert one.workers == 0
    kept = plan_runs(LoadPlan(messages=20000, size=4096, connections=20, per_connection=1000))
    assert kept.runs == (SourceRun(20, 20000, keep_open=True, recipient="user@sink.test"),)
    # 20 sessions of 100 cannot carry 20000 messages: workers reconnect every 100.
    chunked = plan_runs(LoadPlan(messages=20000, size=4096, connections=20, per_connection=100))
    assert (chunked.runs, chunked.workers, chunked.chunk, chunked.messages) == ((), 20, 100, 20000)
    few = plan_runs(LoadPlan(messages=3, size=10, connections=20, per_connection=1))
    assert few.runs[0].sessions == 3
    with pytest.raises(ValueError, match="rate"):
        plan_runs(LoadPlan(messages=3, size=10, rate=5.0))


def test_smtp_source_command_line() -> None:
    run = SourceRun(20, 5000, keep_open=False, recipient="user@sink.test")
    args = command("/usr/sbin/smtp-source", "127.0.0.1", 2525, run, size=4096, sender="b@s.test")
    assert args == [
        "/usr/sbin/smtp-source",
        "-c",  # the counter the harness reads acceptances from
        "-N",  # numbered recipients: the sink tells the messages apart
        *("-s", "20", "-m", "5000"),
        *("-l", "4096", "-f", "b@s.test", "-t", "user@sink.test", "-M", "bench.sender.test"),
        "127.0.0.1:2525",
    ]
    kept = SourceRun(1, 7, keep_open=True, recipient="user.3@sink.test")
    args = command("smtp-source", "127.0.0.1", 25, kept, size=100, sender="b@s.test")
    assert args[:9] == ["smtp-source", "-c", "-N", "-s", "1", "-m", "7", "-d", "-l"]
    assert args[args.index("-t") + 1] == "user.3@sink.test"


def test_zonemta_config_options() -> None:
    plain = build_config(queue_dir=Path("/q"), port=1, sink_port=2)
    assert "intake" not in plain  # a zonemta without the setting still starts
    assert plain["queue"] == {"path": "/q"}
    config = build_config(
        queue_dir=Path("/q"),
        port=1,
        sink_port=2,
        intake_processes=4,
        mongodb_uri="mongodb://127.0.0.1:27017/?directConnection=true",
    )
    parsed = tomllib.loads(dump_toml(config))
    assert parsed["intake"] == {"processes": 4}
    assert parsed["queue"]["backend"] == "mongodb"
    assert parsed["queue"]["mongodb_uri"] == "mongodb://127.0.0.1:27017/?directConnection=true"
    assert tomllib.loads(
        dump_toml(build_config(queue_dir=Path("/q"), port=1, sink_port=2, intake_processes="auto"))
    )["intake"] == {"processes": "auto"}


def test_zonemta_accepts_the_generated_mongodb_config() -> None:
    from zonemta.conf import QueueBackend, config_from_dict

    uri = "mongodb://127.0.0.1:27017/?directConnection=true"
    config = config_from_dict(
        build_config(queue_dir=Path("/q"), port=1, sink_port=2, mongodb_uri=uri)
    )
    assert config.queue.backend is QueueBackend.MONGODB
    assert config.queue.mongodb_uri == uri


def test_the_generated_config_never_reads_the_machines_resolver() -> None:
    from zonemta.conf import config_from_dict

    config = config_from_dict(build_config(queue_dir=Path("/q"), port=0, sink_port=2))
    assert config.dns.parsed_nameservers()  # none would mean /etc/resolv.conf
    assert all(host.startswith("127.") for host, _port in config.dns.parsed_nameservers())
    assert config.smtp["feeder"].port == 0  # the relay picks its port and logs it


def test_a_server_told_its_port_gets_another_when_the_port_was_taken() -> None:
    sockets: list[socket.socket] = []
    tried: list[int] = []

    def start(port: int) -> socket.socket:
        tried.append(port)
        if len(tried) == 1:  # another process binds the picked port first
            thief = socket.socket()
            sockets.append(thief)
            thief.bind((ports.LOOPBACK, port))
        server = socket.socket()
        sockets.append(server)
        try:
            server.bind((ports.LOOPBACK, port))
        except OSError as exc:
            raise ports.PortInUse(f"port {port}: {exc}") from exc
        return server

    try:
        server = ports.start_on_a_picked_port(start)
        assert len(tried) == 2
        assert server.getsockname() == (ports.LOOPBACK, tried[1]) != (ports.LOOPBACK, tried[0])
    finally:
        for sock in sockets:
            sock.close()


def test_picking_ports_gives_up_and_lets_other_errors_through() -> None:
    calls: list[int] = []

    def always_taken(port: int) -> None:
        calls.append(port)
        raise ports.PortInUse(f"port {port} taken")

    with pytest.raises(ports.PortInUse, match="3 tries"):
        ports.start_on_a_picked_port(always_taken, attempts=3)
    assert len(calls) == 3

    def broken(port: int) -> None:
        calls.append(port)
        raise RuntimeError("no such tool")

    calls.clear()
    with pytest.raises(RuntimeError, match="no such tool"):
        ports.start_on_a_picked_port(broken)
    assert len(calls) == 1


_TREE_HELPER = textwrap.dedent(
    """
    import subprocess, sys, time
    BURN = "import time\\nwhile time.process_time() < 0.3: pass\\nprint('burned', flush=True)\\n"
    live = None
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "reaped":  # a child that burns CPU, exits and is waited for
            subprocess.run([sys.executable, "-c", BURN], stdout=subprocess.DEVNULL, check=True)
            print("reaped", flush=True)
        elif line.strip() == "live":  # one that burns CPU and stays
            live = subprocess.Popen(
                [sys.executable, "-c", BURN + "import sys\\nsys.stdin.read()\\n"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )
            live.stdout.readline()
            print("live", live.pid, flush=True)
    if live is not None:
        live.stdin.close()
        live.wait()
    """
)


def test_procstat_counts_children_started_later_and_reaped_ones() -> None:
    root = subprocess.Popen(
        [sys.executable, "-c", _TREE_HELPER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert root.stdin is not None and root.stdout is not None
    try:
        assert root.stdout.readline().strip() == "ready"
        sampler = procstat.MemorySampler(root.pid)
        sampler.sample()
        before = procstat.tree_cpu_seconds(root.pid)
        root.stdin.write("reaped\n")
        root.stdin.flush()
        assert root.stdout.readline().strip() == "reaped"
        root.stdin.write("live\n")
        root.stdin.flush()
        word, pid = root.stdout.readline().split()
        assert word == "live"
        sampler.sample()
        used = procstat.tree_cpu_seconds(root.pid) - before
        assert int(pid) in procstat.tree_pids(root.pid)
    finally:
        root.stdin.close()
        root.wait(30)
    # Each child burned 0.3 s of CPU after the baseline: one counts through the cutime of
    # the parent that reaped it, the other (started after the baseline) in its own stat.
    assert used >= 0.58
    assert sampler.peak_processes == 2
    assert len(sampler.seen) == 2
    assert sampler.peak_hwm_kb > 0


def _smtp_source_run(tmp_path: Path, argv: str) -> dict[str, object]:
    out = tmp_path / "bench.json"
    status = relay.main([*argv.split(), "--timeout", "60", "--json", str(out)])
    assert status == 0
    result: dict[str, object] = json.loads(out.read_text())["direct"]
    return result


@pytest.mark.skipif(find_smtp_source() is None, reason="smtp-source is not installed")
@pytest.mark.parametrize(
    ("shape", "sessions"),
    [
        ("--messages 40 --connections 4 --per-connection 1", 40),  # a session per message
        ("--messages 30 --connections 4 --per-connection 3", 10),  # reconnect every 3
        ("--messages 30 --connections 3 --per-connection 100", 3),  # sessions stay open
    ],
)
def test_smtp_source_injector_real_run(tmp_path: Path, shape: str, sessions: int) -> None:
    result = _smtp_source_run(tmp_path, f"--only direct --injector smtp-source --size 600 {shape}")
    offered = int(shape.split()[1])
    assert result["delivered"] == result["accepted"] == offered
    assert result["sink_connections"] == result["smtp_sessions_in"] == sessions
    assert result["accepted_per_s"] is not None and result["delivered_per_s"] is not None
    # No tags, so no latency: the figures say so instead of inventing one.
    assert result["latency_measured"] is False
    assert result["latency_p50_s"] is None
    assert any("latency not measured" in str(note) for note in result["notes"])  # type: ignore[attr-defined]
    assert result["params"]["injector"] == "smtp-source"  # type: ignore[index]


def _zonemta_has_intake_processes() -> bool:
    try:
        from zonemta.conf import IntakeConfig  # noqa: F401
    except ImportError:
        return False
    return relay.find_zonemta() is not None


@pytest.mark.skipif(
    not _zonemta_has_intake_processes(), reason="zonemta without [intake] processes"
)
def test_zonemta_figures_cover_every_process_of_the_relay(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = "--messages 20 --size 600 --connections 2 --delivery-processes 1 --intake-processes 2"
    assert relay.main([*argv.split(), "--timeout", "60", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["zonemta"]
    assert result["delivered"] == 20
    # The relay, its delivery process and two intake processes, started after the relay.
    assert result["relay_processes_peak"] == result["relay_processes_seen"] == 4
    assert result["params"]["intake_processes"] == 2
    assert result["cpu_s_per_msg"] > 0

"""A private Postfix instance on loopback, relaying everything to the benchmark sink.

The harness writes its own ``main.cf``/``master.cf`` into a temporary directory (queue, data
and log beside them), starts it with ``postfix -c DIR start`` and stops it with
``postfix -c DIR stop``. :meth:`PostfixInstance.stop` then makes sure nothing of the instance
is left: it kills the master named in ``QUEUE/pid/master.pid`` if it lingers, and any process
whose environment carries ``MAIL_CONFIG=DIR`` (every Postfix daemon of this instance does).
See ``/work/shared/reference/postfix-peer.md`` for where these settings come from.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from benchmarks import ports, procstat

POSTFIX = "/usr/sbin/postfix"
#: How long ``postfix stop`` and the master's exit may take before the master is killed.
STOP_GRACE_S = 15.0

_MAIN_CF = """\
compatibility_level = 3.6
myhostname = postfix.bench.local
mydomain = bench.local
myorigin = $myhostname
queue_directory = {root}/spool
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{relay_port}
disable_dns_lookups = yes
smtp_host_lookup = native
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
message_size_limit = {message_size_limit}
mailbox_size_limit = 0
virtual_mailbox_limit = 0
biff = no
"""

# Debian's stock service list with chroot off everywhere; smtpd on the benchmark port only.
_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(Exception):
    """Postfix is not installed, or the private instance would not start."""


class PostfixPortInUse(PostfixError, ports.PortInUse):
    """The instance's master could not bind its smtpd port: another process has it."""


def postfix_available() -> bool:
    """True when Debian's postfix binaries are installed (see install-postfix.sh)."""
    return os.access(POSTFIX, os.X_OK)


def postfix_version() -> str:
    """The installed ``mail_version``, or ``"unknown"``."""
    try:
        out = subprocess.run(
            ["/usr/sbin/postconf", "-d", "-h", "mail_version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


class PostfixInstance:
    """One private Postfix on ``127.0.0.1:port`` relaying to ``127.0.0.1:relay_port``.

    Owns ``root`` (a directory the caller created and will remove) and every process started
    from it. Use as a context manager, or call :meth:`start` and then always :meth:`stop`.
    """

    def __init__(
        self, root: Path, port: int, relay_port: int, message_size_limit: int = 10_240_000
    ) -> None:
        self.root = root
        self.port = port
        self.relay_port = relay_port
        self.message_size_limit = message_size_limit
        self.config_dir = root / "etc"
        self.queue_dir = root / "spool"

    def write_config(self) -> None:
        """Write main.cf and master.cf and create the directories they name."""
        for sub in ("etc", "spool", "data"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # Postfix daemons run as the postfix user and must reach data_directory.
        shutil.chown(self.root / "data", user="postfix")
        self.root.chmod(0o755)
        for ancestor in self.root.resolve().parents:
            if not ancestor.stat().st_mode & 0o001:
                raise PostfixError(f"{ancestor} is not searchable by the postfix user")
        (self.config_dir / "main.cf").write_text(
            _MAIN_CF.format(
                root=self.root,
                relay_port=self.relay_port,
                message_size_limit=self.message_size_limit,
            )
        )
        (self.config_dir / "master.cf").write_text(_MASTER_CF.format(port=self.port))

    def _postfix(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        """Write the config, create the queue, check and start; raises PostfixError, and
        PostfixPortInUse when the master could not bind ``port`` (``postfix start`` waits
        for the master's initialisation, so that failure is its exit status)."""
        if not postfix_available():
            raise PostfixError("postfix is not installed: run benchmarks/install-postfix.sh")
        self.write_config()
        for args in (("set-permissions",), ("check",), ("start",)):
            done = self._postfix(*args)
            if done.returncode != 0:
                problem = f"postfix {' '.join(args)} failed: {done.stderr.strip()} "
                problem += self._log_tail()
                if "Address already in use" in problem:
                    raise PostfixPortInUse(problem)
                raise PostfixError(problem)
        deadline = time.monotonic() + 10
        while self.master_pid() is None:
            if time.monotonic() > deadline:
                raise PostfixError(f"postfix master did not start; see {self.root}/maillog")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            lines = (self.root / "maillog").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-5:])

    def master_pid(self) -> int | None:
        """PID of this instance's running master, or None."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def instance_pids(self) -> list[int]:
        """Every live process whose environment says it belongs to this instance."""
        marker = f"MAIL_CONFIG={self.config_dir}".encode()
        found: list[int] = []
        for entry in procstat.PROC.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.append(int(entry.name))
        return found

    def queue_size(self) -> int:
        """Messages still in the instance's queue (``postqueue -p``), -1 when unknown."""
        try:
            done = subprocess.run(
                ["/usr/sbin/postqueue", "-c", str(self.config_dir), "-j"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return -1
        return len([line for line in done.stdout.splitlines() if line.strip()])

    def stop(self) -> None:
        """Stop the instance and make sure none of its processes survive. Never raises."""
        master = self.master_pid()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self._postfix("stop", timeout=STOP_GRACE_S)
        deadline = time.monotonic() + STOP_GRACE_S
        while master is not None and _alive(master) and time.monotonic() < deadline:
            time.sleep(0.05)
        if master is not None and _alive(master):
            _kill(master, signal.SIGKILL)
        for pid in self.instance_pids():
            _kill(pid, signal.SIGKILL)

    def __enter__(self) -> PostfixInstance:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    fields = procstat._stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)

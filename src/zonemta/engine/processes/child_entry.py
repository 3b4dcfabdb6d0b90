"""The child's side of a relay child process (delivery or intake): the pipe to the relay,
the ``Init`` frame, logging, and the process's entry point.

A child ignores SIGINT and SIGTERM (the relay decides when it stops) and exits quietly when
the relay goes away.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from zonemta.engine.processes.frames import Init
from zonemta.engine.processes.pipe import Frame, FramedPipe
from zonemta.transport.direct_stream import DirectSocketStream

__all__ = ["RelayPipe", "child_main", "connect_to_relay", "tune_gc"]


RelayPipe = tuple[FramedPipe, AsyncIterator[Frame], Any, Any]


async def connect_to_relay(fd: int, kind: str) -> RelayPipe:
    """Open the pipe on ``fd``, read the :class:`~zonemta.engine.processes.frames.Init` frame
    and set up logging as ``[kind-index]``. Returns the pipe, the frames that follow, the
    config and what the relay gave this kind of process (its zones, its sockets)."""
    pipe = FramedPipe(DirectSocketStream(socket.socket(fileno=fd)))
    frames = pipe.frames()
    init = await anext(frames, None)
    if not isinstance(init, Init):
        raise SystemExit(f"zonemta {kind} process: no init frame from the relay")
    logging.basicConfig(
        level=init.log_level,
        format=f"%(asctime)s %(levelname)s %(name)s[{kind}-{init.index}]: %(message)s",
        stream=sys.stderr,
    )
    return pipe, frames, init.config, init.given


def tune_gc() -> None:
    """For every zonemta process once it has started: everything imported and built so far
    lives as long as the process, so keep it out of the cyclic collector's generations, and
    let young collections run less often (a message makes many short-lived objects, almost
    none of them in cycles)."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def child_main(argv: list[str], run: Callable[[int], Awaitable[None]], module: str) -> int:
    """``python -m MODULE FD [FD...]``: run ``run(FD)`` (the pipe; further descriptors are
    inherited sockets the init frame names). Returns the exit status."""
    if len(argv) < 2 or not all(arg.isdigit() for arg in argv[1:]):
        print(f"usage: python -m {module} FD [FD...] (started by the relay)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the relay stops us through the pipe
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_gc()
    try:
        trio.run(run, int(argv[1]))
    except (trio.BrokenResourceError, ConnectionError):
        return 0  # the relay went away
    finally:
        logging.shutdown()
    return 0

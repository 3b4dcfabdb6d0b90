"""The trio driver of the SMTP server protocol object: one task per client connection.

It owns sockets, timeouts and policy; the protocol object owns the SMTP grammar. Message
content goes from the socket to :class:`zonemta.engine.intake.Reception` chunk by chunk.
"""

from __future__ import annotations

import logging
from functools import partial

import attrs
import trio

from zonemta.engine.intake import Envelope, Intake, IntakeRejected, Reception
from zonemta.store import StoreError
from zonemta.transport.smtp import server as smtp
from zonemta.transport.smtp.errors import RemoteProtocolError
from zonemta.transport.smtp.reply import Reply

log = logging.getLogger(__name__)

RECEIVE_SIZE = 64 * 1024

REPLY_IDLE_TIMEOUT = Reply(421, ("timeout exceeded, closing connection",), "4.4.2")
REPLY_SHUTDOWN = Reply(421, ("server shutting down, try again later",), "4.3.2")
REPLY_TOO_MANY = Reply(421, ("too many connections, try again later",), "4.7.0")
REPLY_STORE_FAILED = Reply(451, ("temporary failure storing the message, try again",), "4.3.0")


@attrs.frozen
class InterfaceSettings:
    """What one SMTP interface needs at run time (built from the config by the app)."""

    name: str
    host: str
    port: int
    server: smtp.ServerSettings
    idle_timeout: float
    data_timeout: float
    max_clients: int
    max_header_size: int


class SmtpInterfaceService:
    """Listens on one interface and serves each client in its own task."""

    def __init__(self, settings: InterfaceSettings, intake: Intake) -> None:
        self.settings = settings
        self.intake = intake
        self.active = 0
        self._closing = False
        self._accepting = trio.CancelScope()
        self._sessions_nursery: trio.Nursery | None = None
        self._live: set[SmtpSession] = set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`stop`. Reports the bound port through ``task_status``."""
        listeners = await trio.open_tcp_listeners(self.settings.port, host=self.settings.host)
        port = listeners[0].socket.getsockname()[1]
        log.info(
            "SMTP interface %s listening on %s:%s", self.settings.name, self.settings.host, port
        )
        async with trio.open_nursery() as sessions:
            self._sessions_nursery = sessions
            with self._accepting:
                await sessions.start(
                    partial(trio.serve_listeners, self._handle, listeners, handler_nursery=sessions)
                )
                task_status.started(port)
                await trio.sleep_forever()
            # No longer accepting; sessions end by themselves (see stop()).

    async def stop(self, grace: float) -> None:
        """Stop accepting; idle sessions get 421 at once, a session receiving a message
        finishes it first; after ``grace`` seconds the rest are cut off."""
        self._closing = True
        self._accepting.cancel()
        for session in list(self._live):
            session.interrupt_idle()
        if self._sessions_nursery is not None:
            self._sessions_nursery.cancel_scope.deadline = trio.current_time() + grace

    async def _handle(self, stream: trio.abc.Stream) -> None:
        if self.active >= self.settings.max_clients:
            with trio.move_on_after(5):
                await stream.send_all(REPLY_TOO_MANY.to_bytes())
            await trio.aclose_forcefully(stream)
            return
        self.active += 1
        session = SmtpSession(self, stream)
        self._live.add(session)
        try:
            await session.serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("SMTP session on %s failed", self.settings.name)
        finally:
            self._live.discard(session)
            self.active -= 1
            await trio.aclose_forcefully(stream)


def _peer(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return ""
    try:
        address = sock.getpeername()
    except OSError:
        return ""
    return str(address[0]) if isinstance(address, tuple) else str(address)


class SmtpSession:
    """One client connection."""

    def __init__(self, service: SmtpInterfaceService, stream: trio.abc.Stream) -> None:
        self.service = service
        self.settings = service.settings
        self.stream = stream
        self.protocol = smtp.SMTPServerConnection(service.settings.server)
        self.client_address = _peer(stream)
        self.helo = ""
        self.extended = False
        self.mail_from: str | None = None
        self.mail_params: dict[str, str | None] = {}
        self.recipients: list[str] = []
        self.reception: Reception | None = None
        self._data_deadline = float("inf")
        self._read_scope: trio.CancelScope | None = None

    def interrupt_idle(self) -> None:
        """Shutdown: a session waiting for a command stops waiting (and gets 421)."""
        if self.reception is None and self._read_scope is not None:
            self._read_scope.cancel()

    async def serve(self) -> None:
        try:
            while not self.protocol.closed:
                event = self.protocol.next_event()
                if event is smtp.NEED_DATA:
                    if not await self._receive():
                        break
                    continue
                await self._dispatch(event)
            await self._flush()
        except RemoteProtocolError as exc:
            log.info("SMTP protocol error from %s: %s", self.client_address, exc)
            if exc.reply is not None:
                with trio.move_on_after(5):
                    await self.stream.send_all(exc.reply.to_bytes())
        finally:
            if self.reception is not None:
                await self.reception.abort()
                self.reception = None

    async def _flush(self) -> None:
        out = self.protocol.data_to_send()
        if out:
            await self.stream.send_all(out)

    async def _receive(self) -> bool:
        """Send what is queued, then read more. False when the session is over."""
        await self._flush()
        if self.service._closing and self.reception is None:
            self._close_with(REPLY_SHUTDOWN)
            await self._flush()
            return False
        deadline = trio.current_time() + self.settings.idle_timeout
        deadline = min(deadline, self._data_deadline)
        with trio.CancelScope(deadline=deadline) as scope:
            self._read_scope = scope
            data = await self.stream.receive_some(RECEIVE_SIZE)
            self.protocol.receive_data(bytes(data))
            return True
        self._read_scope = None
        self._close_with(REPLY_SHUTDOWN if self.service._closing else REPLY_IDLE_TIMEOUT)
        await self._flush()
        return False

    def _close_with(self, reply: Reply) -> None:
        if not self.protocol.closed:
            self.protocol.close_with(reply)

    async def _dispatch(self, event: object) -> None:
        match event:
            case smtp.Helo(name=name, extended=extended):
                self.helo, self.extended = name, extended
                self._reset_transaction()
            case smtp.MailFrom(address=address, params=params):
                self._reset_transaction()
                self.mail_from = address
                self.mail_params = dict(params)
                self.protocol.respond(Reply(250, ("sender ok",), "2.1.0"))
            case smtp.RcptTo(address=address):
                self.recipients.append(address)
                self.protocol.respond(Reply(250, ("recipient ok",), "2.1.5"))
            case smtp.DataStart():
                self._begin_data()
            case smtp.DataChunk(data=data):
                if self.reception is not None:
                    await self.reception.feed(data)
            case smtp.DataAbort():
                await self._abort_data()
            case smtp.DataEnd():
                await self._end_data()
            case smtp.Rset():
                await self._abort_data()
                self._reset_transaction()
            case smtp.ConnectionClosed():
                await self._abort_data()
            case _:
                pass

    def _reset_transaction(self) -> None:
        self.mail_from = None
        self.mail_params = {}
        self.recipients = []

    def _begin_data(self) -> None:
        assert self.mail_from is not None
        body = (self.mail_params.get("BODY") or "").upper()
        envelope = Envelope(
            mail_from=self.mail_from,
            recipients=tuple(self.recipients),
            interface=self.settings.name,
            client_address=self.client_address,
            helo=self.helo,
            transtype="ESMTP" if self.extended else "SMTP",
            body_8bit=body == "8BITMIME",
            smtputf8="SMTPUTF8" in self.mail_params,
        )
        self.reception = self.service.intake.begin(
            envelope, max_header=self.settings.max_header_size
        )
        self._data_deadline = trio.current_time() + self.settings.data_timeout

    async def _abort_data(self) -> None:
        self._data_deadline = float("inf")
        if self.reception is not None:
            reception, self.reception = self.reception, None
            await reception.abort()

    async def _end_data(self) -> None:
        self._data_deadline = float("inf")
        reception, self.reception = self.reception, None
        self._reset_transaction()
        if reception is None:
            self.protocol.respond(REPLY_STORE_FAILED)
            return
        try:
            with trio.CancelScope(shield=True):
                queue_id = await reception.commit()
        except IntakeRejected as exc:
            self.protocol.respond(exc.reply)
            return
        except StoreError as exc:
            log.warning("message from %s not stored: %s", self.client_address, exc)
            self.protocol.respond(REPLY_STORE_FAILED)
            return
        self.protocol.respond(Reply(250, (f"Message queued as {queue_id}",), "2.0.0"))

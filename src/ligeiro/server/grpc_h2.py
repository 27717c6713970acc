"""V2 gRPC over our own HTTP/2 framing on the worker's event loop (ADR 0007).

grpc.aio spends about 700 µs of CPU per call in its Python server machinery, and the
``h2`` library about 200 µs per call in its state machines; a gRPC server only needs a
small part of HTTP/2, so ``_h2connection.py`` frames it by hand, as ``http.py`` does
HTTP/1.1 with httptools, and this module is gRPC on top: 5-byte length-prefixed
messages, ``grpc-timeout``, ``grpc-encoding`` (only identity), the message limit in both
directions, trailers with ``grpc-status`` and a percent-encoded ``grpc-message``; the
answer's headers are literals that need no table.

Calls and writes go by loop pass (``H2GrpcServer``): the frames every connection sent
are read first, then the calls they completed run, then each connection's answers leave
in one write. A client woken once per burst instead of once per answer is what made
gRPC as cheap per call as REST (ADR 0007, "Second pass").

The methods themselves are ``GrpcService``'s (``server/grpc.py``), the same code and
the same error → status table as the grpc.aio transport.

Besides HTTP/2's limits (``_h2connection.py``), a worker holds its peers to
``[grpc]``'s: connections open at once, a unary call's message arriving within
``request_timeout_s``, and the bytes of messages still arriving, summed over its calls.
One timer a second (``H2GrpcServer``) sweeps every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, NoReturn, final

from . import eager
from ._grpc_routes import read_route
from ._h2connection import H2Connection, H2Stream
from ._h2output import H2Output
from ._h2wire import (
    ACCEPT_ENCODING,
    CONTENT_TYPE,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    HEADERS,
    OK_TRAILERS,
    frame,
    hpack_int,
    status_block,
    unary_answer,
)
from .grpc import SERVICE_NAME, StatusCode, status_for, unary_methods

if TYPE_CHECKING:
    import socket
    from collections.abc import AsyncIterator, Coroutine, Sequence

    from ..settings import GrpcSettings
    from ._grpc_routes import Route
    from ._h2headers import HeaderBlock
    from .grpc import GrpcService, UnaryHandler
    from .tls import ServerTls

__all__ = ["H2GrpcServer", "start_h2_grpc_server"]

logger = logging.getLogger(__name__)

_OK = StatusCode.OK
_INTERNAL = StatusCode.INTERNAL
_UNIMPLEMENTED = StatusCode.UNIMPLEMENTED
_UNAVAILABLE = StatusCode.UNAVAILABLE
_RESOURCE_EXHAUSTED = StatusCode.RESOURCE_EXHAUSTED
_DEADLINE_EXCEEDED = StatusCode.DEADLINE_EXCEEDED
_STREAMING = "ModelStreamInfer"
_SWEEP_INTERVAL_S = 1.0


class _Abort(Exception):
    """A call ends with this status (``context.abort``)."""

    def __init__(self, code: StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@final
class _Messages:
    """A stream's request messages as ModelStreamInfer reads them, in order."""

    __slots__ = ("_connection", "_queue", "_stream")

    def __init__(self, connection: H2GrpcConnection, stream: _Call) -> None:
        self._connection = connection
        self._stream = stream
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def put(self, message: bytes | None) -> None:
        self._queue.put_nowait(message)

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> bytes:
        message = await self._queue.get()
        if message is None:
            raise StopAsyncIteration
        self._connection.taken(self._stream, len(message) + 5)
        return message


@final
class _Call(H2Stream):
    """One call: its stream, what of its request has arrived, and its task.

    It is also what ``GrpcService``'s methods ask of their call (``CallContext``): its
    metadata, and abort.
    """

    __slots__ = (
        "buffer", "handler", "is_streaming", "message", "messages", "needed", "opened_at", "task",
    )  # fmt: skip

    def __init__(
        self, stream_id: int, headers: Sequence[tuple[bytes, bytes]], window: int, now: float
    ):
        # By name rather than through super(): Python 3.11 makes a super object for it,
        # 830 instructions of a ModelInfer call's 183k (ADR 0009, 2026-12-06).
        H2Stream.__init__(self, stream_id, headers, window)
        self.opened_at = now
        self.handler: UnaryHandler | None = None
        # The start of a message that has not all arrived (a bytearray once there is one).
        self.buffer: bytearray | bytes = b""
        self.needed = 0
        self.message: bytes | None = None
        self.is_streaming = False  # ModelStreamInfer
        self.messages: _Messages | None = None  # its messages, once the first arrives
        self.task: asyncio.Task[None] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self.headers
            if not name.startswith(b":")
        )

    async def abort(self, code: StatusCode, details: str = "") -> NoReturn:
        raise _Abort(code, details)


@final
class H2GrpcConnection(H2Connection[_Call]):
    """One HTTP/2 connection carrying gRPC calls."""

    def __init__(self, server: H2GrpcServer) -> None:
        super().__init__(server.flush_soon, server.settings)
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        limit = self._server.settings.max_connections
        if len(self._server.connections) >= limit:
            self._fail(ENHANCE_YOUR_CALM, f"this worker has {limit} connections open",
                       linger=False)  # fmt: skip
            return
        self._server.connections.add(self)

    def swept(self, now: float) -> None:
        super().swept(now)
        timeout = self._server.settings.request_timeout_s
        # Calls are stamped with the last sweep's time, up to a sweep before they opened:
        # a sweep more and none ends early.
        late = timeout + _SWEEP_INTERVAL_S
        for stream in list(self._streams.values()):
            if (
                stream.handler is not None  # a unary call still waiting for its request
                and not stream.is_remote_closed
                and not stream.done
                and now - stream.opened_at > late
            ):
                text = f"the request message did not arrive within {timeout:g} s"
                self._finish(stream, _DEADLINE_EXCEEDED, text)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        super().connection_lost(exc)

    def peer(self) -> str:
        """The client's address (the rate limit's key)."""
        peer = None if self._transport is None else self._transport.get_extra_info("peername")
        return peer[0] if isinstance(peer, tuple) else ""

    # -- streams ----------------------------------------------------------------------

    def _open(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> _Call:
        self._server.calls += 1
        # The sweep's clock, not loop.time(): a call pays no clock read for its timeout.
        return _Call(stream_id, headers, self._initial_window, self._server.now)

    def _opened(self, stream: _Call, headers: HeaderBlock) -> None:
        server = self._server
        route: Route | None = headers.route  # what the headers say, read once per block
        if route is None:
            route = headers.route = read_route(headers.fields, server.unary, server.stream_path)
        if route.refusal is not None:
            self._refuse(stream, *route.refusal)
        elif (service := server.service).access.is_guarding and (
            denied := service.admit(route.path, route.authorization, self.peer)
        ):  # tokens or a rate limit (checked only when there are any, as HTTP/1.1 does)
            self._finish(stream, status_for(denied), str(denied))  # before any message is read
        elif route.encoding_error is not None:
            self._finish(stream, _UNIMPLEMENTED, route.encoding_error, ACCEPT_ENCODING)
        elif server.calls > server.settings.max_concurrent_rpcs:
            self._finish(stream, _RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
        elif route.is_streaming:
            stream.is_streaming = True  # it starts with its first message (_start_stream)
        elif route.handler is not None:
            stream.handler = route.handler
        else:
            self._finish(stream, _UNIMPLEMENTED, route.missing)
        if route.has_timeout and not stream.done:
            if route.timeout is None:
                self._finish(stream, _INTERNAL, "malformed grpc-timeout header")
            else:
                stream.deadline = self._loop.call_later(route.timeout, self._expire, stream)

    def _received(self, stream: _Call, data: bytes) -> None:
        buffer = stream.buffer
        server = self._server
        if (
            not buffer
            and stream.message is None
            and stream.handler is not None
            and data[:1] == b"\x00"
            and int.from_bytes(data[1:5], "big") + 5 == len(data)
            and len(data) - 5 <= server.settings.max_message_bytes
        ):  # the usual unary call: its whole message, uncompressed, in one DATA frame
            stream.message = data[5:]
            return
        if buffer:
            buffer += data
            server.buffered += len(data)
            if len(buffer) < stream.needed:  # a large message still arriving
                if server.buffered > server.settings.max_buffered_bytes:
                    self._over_buffered(stream)
                return
            data = bytes(buffer)
            server.buffered -= len(buffer)
            buffer.clear()
        position, size = 0, len(data)
        limit = self._server.settings.max_message_bytes
        while size - position >= 5:
            flag = data[position]
            length = int.from_bytes(data[position + 1 : position + 5], "big")
            if length > limit:
                text = f"received message larger than max ({length} vs. {limit})"
                self._finish(stream, _RESOURCE_EXHAUSTED, text)
                return
            if flag != 0:
                self._finish(stream, _INTERNAL,
                             "compressed message without grpc-encoding"
                             if flag == 1 else f"bad message flag {flag}")  # fmt: skip
                return
            end = position + 5 + length
            if end > size:
                break
            message = data[position + 5 : end] if position or end != size else data[5:]
            position = end
            if stream.is_streaming:
                stream.queued += length + 5
                (stream.messages or self._start_stream(stream)).put(message)
            elif stream.message is None and stream.handler is not None:
                stream.message = message
            else:
                self._finish(stream, _UNIMPLEMENTED, "a unary call sent more than one message")
                return
        if position < size:
            if not isinstance(buffer, bytearray):
                buffer = stream.buffer = bytearray()
            buffer += data[position:]
            server.buffered += size - position
            stream.needed = 5
            if len(buffer) >= 5:
                stream.needed = 5 + int.from_bytes(buffer[1:5], "big")
            if server.buffered > server.settings.max_buffered_bytes:
                self._over_buffered(stream)

    def _over_buffered(self, stream: _Call) -> None:
        limit = self._server.settings.max_buffered_bytes
        self._finish(stream, _RESOURCE_EXHAUSTED, "this worker holds its limit of request "
                     f"messages still arriving ({limit} bytes); try again")  # fmt: skip

    def _request_ended(self, stream: _Call) -> None:
        if stream.buffer:
            self._finish(stream, _INTERNAL, "the request ended inside a message")
        elif stream.is_streaming:
            (stream.messages or self._start_stream(stream)).put(None)
        elif stream.message is None:
            self._finish(stream, _UNIMPLEMENTED, "a unary call ended without a message")
        elif stream.handler is not None:
            message, stream.message = stream.message, None
            # It runs once every connection's frames of this loop pass are read.
            self._server.start_soon(self, stream, self._unary(stream, stream.handler, message))

    def _start_stream(self, stream: _Call) -> _Messages:
        """ModelStreamInfer's task, once the stream has something for it: a stream
        opened and reset, or left silent, costs no task (rapid reset)."""
        messages = stream.messages = _Messages(self, stream)
        stream.task = self._loop.create_task(self._streaming(stream, messages))
        return messages

    def start_silent_streams(self) -> None:
        """Shutting down: silent streams start, so that the service can end them."""
        for stream in list(self._streams.values()):
            if stream.is_streaming and stream.messages is None and not stream.done:
                self._start_stream(stream)

    def _dropped(self, stream: _Call, *, cancel: bool) -> None:
        self._server.calls -= 1
        if stream.buffer:
            self._server.buffered -= len(stream.buffer)
            stream.buffer.clear()
        if cancel and stream.task is not None and not stream.task.done():
            stream.task.cancel()
        if stream.messages is not None:
            stream.messages.put(None)
        draining = self._server.draining
        if draining is not None and not self._server.calls and not draining.done():
            draining.set_result(None)  # the last call a graceful stop waits for

    # -- calls ------------------------------------------------------------------------

    def run_call(self, stream: _Call, call: Coroutine[Any, Any, None]) -> None:
        """Run ``call`` up to its first real wait here, and only then as a task.

        An unbatched ModelInfer never waits, so it answers without a task
        (``eager.start``). A call whose stream ended while it was due is not run.
        """
        if stream.done or self._transport is None:
            call.close()
            return
        stream.task, _ = eager.start(self._loop, call)

    async def _unary(self, stream: _Call, handler: UnaryHandler, message: bytes) -> None:
        try:
            data = await handler(message, stream)
        except Exception as exc:  # not CancelledError: a cancelled call answers nothing
            self._failed(stream, exc)
        else:
            size = len(data) + 5
            if (
                size <= self._max_frame
                and size <= stream.send_window
                and size <= self._send_window
                and size <= self._server.settings.max_message_bytes
                and not stream.is_started
                and not stream.done
                and self._transport is not None
            ):  # the usual answer: headers, one DATA frame and trailers together
                stream.is_started = stream.done = True
                stream.send_window -= size
                self._send_window -= size
                self._write(unary_answer(stream.id, data))
                self._ended(stream)
            else:
                self._answer(stream, data, OK_TRAILERS)

    async def _streaming(self, stream: _Call, messages: _Messages) -> None:
        service = self._server.service
        answers: AsyncIterator[bytes] = service.ModelStreamInfer(messages, stream)
        try:
            async for response in answers:
                if stream.done or self._transport is None:
                    return
                self._answer(stream, response, None)
        except Exception as exc:
            self._failed(stream, exc)
        else:
            if not stream.done:
                self._send(stream, None, OK_TRAILERS)

    def _failed(self, stream: _Call, error: Exception) -> None:
        """End a call whose method raised: its abort's status, or INTERNAL (logged)."""
        if isinstance(error, _Abort):
            self._finish(stream, error.code, error.details)
        else:
            logger.error("unexpected error in a gRPC call", exc_info=error)
            self._finish(stream, _INTERNAL, "internal server error (logged)")

    def _expire(self, stream: _Call) -> None:
        stream.deadline = None
        if stream.done:
            return
        if stream.task is not None:
            stream.task.cancel()
        self._finish(stream, _DEADLINE_EXCEEDED, "Deadline Exceeded")

    def abort_calls(self) -> None:
        """The grace is over: end what still runs with UNAVAILABLE, and close."""
        for stream in list(self._streams.values()):
            if stream.task is not None:
                stream.task.cancel()
            if not stream.done:
                self._finish(stream, _UNAVAILABLE, "the server is shutting down")
        self._close()

    # -- answers ----------------------------------------------------------------------

    def _answer(self, stream: _Call, data: bytes, trailers: bytes | None) -> None:
        limit = self._server.settings.max_message_bytes
        if len(data) > limit:
            self._finish(stream, _RESOURCE_EXHAUSTED,
                         f"Sent message larger than max ({len(data)} vs. {limit})")  # fmt: skip
            return
        self._send(stream, b"\x00" + len(data).to_bytes(4, "big") + data, trailers)

    def _finish(self, stream: _Call, code: StatusCode, message: str, extra: bytes = b"") -> None:
        """End the call with this status (trailers-only when nothing was sent)."""
        if stream.done:
            return
        stream.outbox.clear()
        self._send(stream, None, status_block(code, message) + extra)

    def _refuse(self, stream: _Call, status: bytes, code: StatusCode, message: str) -> None:
        # Not gRPC (wrong method or content-type): an HTTP status an HTTP/2 client can read.
        # ":status" by its static table name (index 8), as a literal value.
        block = b"\x08" + hpack_int(len(status), 7, 0) + status
        block += CONTENT_TYPE + status_block(code, message)
        stream.done = True
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._ended(stream)


@final
class H2GrpcServer:
    """A started HTTP/2 gRPC server: its port, and a graceful stop.

    Args:
        service: the methods (shared with the grpc.aio transport).
        settings: ``[grpc]``: the message limit and the concurrent call limit.
    """

    def __init__(self, service: GrpcService, settings: GrpcSettings) -> None:
        self.service = service
        self.settings = settings
        self.unary = {
            f"/{SERVICE_NAME}/{name}".encode(): handler
            for name, handler in unary_methods(service).items()
        }
        self.stream_path = f"/{SERVICE_NAME}/{_STREAMING}".encode()
        self.connections: set[H2GrpcConnection] = set()
        self.calls = 0
        self.buffered = 0  # bytes of request messages still arriving, every call's
        self._sweeper: asyncio.TimerHandle | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        # While a graceful stop waits for the calls still running: done when none is left.
        self.draining: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self.now = self._loop.time()  # as of the last sweep
        # Calls due and connections with frames to write, run and written once per loop
        # pass: every connection's frames are read before the first call runs, and the
        # answers leave together after the last (H2GrpcConnection._write).
        self._due: list[tuple[H2GrpcConnection, _Call, Coroutine[Any, Any, None]]] = []
        self._is_running_due = False
        self._unflushed: list[H2Output[Any]] = []

    def _sweep(self) -> None:
        now = self.now = self._loop.time()
        try:
            for connection in list(self.connections):
                connection.swept(now)
        finally:  # one connection's surprise must not end every connection's limits
            self._sweeper = self._loop.call_later(_SWEEP_INTERVAL_S, self._sweep)
            self._flush()

    def start_soon(
        self, connection: H2GrpcConnection, stream: _Call, call: Coroutine[Any, Any, None]
    ) -> None:
        if not self._due:
            self._loop.call_soon(self._run_due)
        self._due.append((connection, stream, call))

    def _run_due(self) -> None:
        due, self._due = self._due, []
        self._is_running_due = True
        try:
            for connection, stream, call in due:
                connection.run_call(stream, call)
        finally:
            self._is_running_due = False
            self._flush()

    def flush_soon(self, connection: H2Output[Any]) -> None:
        # Calls due or running flush when they are done: no loop pass of its own then.
        if not (self._unflushed or self._due or self._is_running_due):
            self._loop.call_soon(self._flush)
        self._unflushed.append(connection)

    def _flush(self) -> None:
        unflushed, self._unflushed = self._unflushed, []
        for connection in unflushed:
            connection.flush_out()

    async def listen(
        self, host: str, port: int, *, reuse_port: bool, tls: ServerTls | None = None
    ) -> None:
        """Bind ``host:port`` (0 picks a free port) and start accepting (over TLS, with
        ALPN h2, when ``tls`` is given).

        Raises:
            OSError: the address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: H2GrpcConnection(self), host, port, reuse_port=reuse_port or None,
            backlog=1024, ssl=None if tls is None else tls.grpc,
            ssl_handshake_timeout=None if tls is None else self.settings.handshake_timeout_s,
        )  # fmt: skip
        sock: socket.socket = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self._sweeper = loop.call_later(_SWEEP_INTERVAL_S, self._sweep)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls; let running ones finish within ``grace_s``; end idle streams."""
        self.service.close_streams()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.start_silent_streams()
            connection.shutdown()
        if self.calls:
            self.draining = self._loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.draining, grace_s)
        for connection in list(self.connections):
            connection.abort_calls()


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def start_h2_grpc_server(
    service: GrpcService,
    settings: GrpcSettings,
    address: str,
    *,
    reuse_port: bool,
    tls: ServerTls | None = None,
) -> H2GrpcServer:
    """Serve ``service`` over our HTTP/2 framing on the running loop.

    Args:
        address: ``host:port`` to bind (an IPv6 host in brackets); port 0 picks a free one.
        reuse_port: share the port with other workers (``SO_REUSEPORT``).
        tls: serve over TLS with ``tls.grpc``.

    Raises:
        OSError: the address cannot be bound.
    """
    server = H2GrpcServer(service, settings)
    host, port = _split_address(address)
    try:
        await server.listen(host, port, reuse_port=reuse_port, tls=tls)
    except OSError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc.strerror or exc}") from None
    return server

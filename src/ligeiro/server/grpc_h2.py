"""V2 gRPC over our own HTTP/2 framing on the worker's event loop (ADR 0007).

grpc.aio spends about 700 µs of CPU per call in its Python server machinery, and the
``h2`` library about 200 µs per call in its state machines; a gRPC server only needs a
small part of HTTP/2, so this module frames it by hand, as ``http.py`` does HTTP/1.1
with httptools. ``hpack`` decodes the request headers (a block that changes nothing
in the decoder's table is decoded once per connection and then looked up); the answer's
headers are literals that need no table. Frames are parsed with ``int.from_bytes``.

What is implemented: the connection preface, SETTINGS (and its ACK), PING answers,
WINDOW_UPDATE in both directions (received data is credited back as it is taken; large
answers wait for the peer's window), RST_STREAM, GOAWAY both ways, HEADERS with
CONTINUATION, padding and priority fields. gRPC on top: 5-byte length-prefixed
messages, ``grpc-timeout``, ``grpc-encoding`` (only identity), the message limit in
both directions, trailers with ``grpc-status`` and a percent-encoded ``grpc-message``.

Calls and writes go by loop pass (``H2GrpcServer``): the frames every connection sent
are read first, then the calls they completed run, then each connection's answers leave
in one write. A client woken once per burst instead of once per answer is what made
gRPC as cheap per call as REST (ADR 0007, "Second pass").

The methods themselves are ``GrpcService``'s (``server/grpc.py``), the same code and
the same error → status table as the grpc.aio transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import struct
import types
from collections import deque
from typing import TYPE_CHECKING, Any, NoReturn, cast, final

from hpack import Decoder, HPACKError

from ._h2wire import (
    ACCEPT_ENCODING,
    ACK,
    COMPRESSION_ERROR,
    CONTENT_TYPE,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_HEADER,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    NO_ERROR,
    OK_TRAILERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RESPONSE_HEADERS,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    ConnectionFailure,
    frame,
    hpack_int,
    status_block,
    timeout_s,
    unary_answer,
    unpadded,
)
from .grpc import _SERVICE, StatusCode, unary_methods

if TYPE_CHECKING:
    import socket
    from collections.abc import AsyncIterator, Coroutine, Generator, Sequence

    from ..settings import GrpcSettings
    from .grpc import GrpcService, UnaryHandler

__all__ = ["H2GrpcServer", "start_h2_grpc_server"]

logger = logging.getLogger(__name__)

# What we let a peer send before it must wait for our WINDOW_UPDATE: the connection's
# window is large because every byte of it is taken as soon as it arrives; a stream's
# bounds what one ModelStreamInfer may queue ahead of the model.
_CONNECTION_WINDOW = 16 * 1024 * 1024
_STREAM_WINDOW = 1024 * 1024
_MAX_FRAME = 1024 * 1024  # what we accept; we send no more than the peer's setting
_MAX_HEADER_LIST = 64 * 1024
_HEADER_CACHE = 64  # decoded header blocks kept per connection

_OK = StatusCode.OK
_INTERNAL = StatusCode.INTERNAL
_UNIMPLEMENTED = StatusCode.UNIMPLEMENTED
_UNAVAILABLE = StatusCode.UNAVAILABLE
_RESOURCE_EXHAUSTED = StatusCode.RESOURCE_EXHAUSTED
_DEADLINE_EXCEEDED = StatusCode.DEADLINE_EXCEEDED
_INVALID_ARGUMENT = StatusCode.INVALID_ARGUMENT
_STREAMING = "ModelStreamInfer"

if TYPE_CHECKING:
    # A decoded header block: the list as sent, and a dict for lookups.
    _Headers = tuple[list[tuple[bytes, bytes]], dict[bytes, bytes]]


class _Abort(Exception):
    """A call ends with this status (``context.abort``)."""

    def __init__(self, code: StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@final
class _Context:
    """What ``GrpcService``'s methods ask of their call: its metadata, and abort."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self._headers = headers

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self._headers
            if not name.startswith(b":")
        )

    async def abort(self, code: StatusCode, details: str = "") -> NoReturn:
        raise _Abort(code, details)


@final
class _Messages:
    """A stream's request messages as ModelStreamInfer reads them, in order."""

    __slots__ = ("_connection", "_queue", "_stream")

    def __init__(self, connection: H2GrpcConnection, stream: _Stream) -> None:
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
class _Stream:
    """One call: what has arrived, what waits to be sent, and its task."""

    __slots__ = (
        "buffer", "deadline", "done", "handler", "headers", "id", "is_remote_closed",
        "is_started", "message", "messages", "needed", "outbox", "owed", "queued",
        "send_window", "task", "trailers", "unacked",
    )  # fmt: skip

    def __init__(self, stream_id: int, headers: Sequence[tuple[bytes, bytes]], window: int):
        self.id = stream_id
        self.headers = headers
        self.handler: UnaryHandler | None = None
        self.buffer = bytearray()  # the start of a message that has not all arrived
        self.needed = 0
        self.message: bytes | None = None
        self.messages: _Messages | None = None
        self.is_remote_closed = False
        self.is_started = False  # our response headers are written
        self.done = False  # our trailers are written (or queued behind the data)
        self.task: asyncio.Task[None] | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.send_window = window
        self.outbox: deque[memoryview] = deque()
        self.trailers: bytes | None = None
        self.unacked = 0  # received bytes not yet credited back to the peer
        self.queued = 0  # bytes of messages waiting for ModelStreamInfer
        self.owed = 0  # credit held back until those are taken


@final
class H2GrpcConnection(asyncio.Protocol):
    """One HTTP/2 connection carrying gRPC calls."""

    def __init__(self, server: H2GrpcServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()  # the start of a frame that has not all arrived
        self._needed = 0  # how long the buffer must grow before it is worth parsing
        self._has_preface = False
        self._decoder = Decoder(max_header_list_size=_MAX_HEADER_LIST)
        self._header_cache: dict[bytes, _Headers] = {}
        self._streams: dict[int, _Stream] = {}
        self._last_stream_id = 0
        self._continuation: tuple[int, int, bytearray] | None = None  # stream, flags, block
        self._send_window = DEFAULT_WINDOW  # the peer's, for what we send
        self._initial_window = DEFAULT_WINDOW
        self._max_frame = 16_384
        self._unacked = 0
        self._is_going_away = False
        self._blocked: dict[int, _Stream] = {}  # streams with data waiting for window
        self._out: list[bytes] = []  # frames written since the server's last flush

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self._transport = transport
        self._server.connections.add(self)
        # No SETTINGS_MAX_CONCURRENT_STREAMS: a client would queue calls past it, where
        # grpc.aio answers RESOURCE_EXHAUSTED over the limit (and so do we).
        settings = struct.pack(
            ">HIHIHI",
            SETTINGS_INITIAL_WINDOW_SIZE, _STREAM_WINDOW,
            SETTINGS_MAX_FRAME_SIZE, _MAX_FRAME,
            SETTINGS_MAX_HEADER_LIST_SIZE, _MAX_HEADER_LIST,
        )  # fmt: skip
        window = struct.pack(">I", _CONNECTION_WINDOW - DEFAULT_WINDOW)
        self._write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, window))

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        for stream in list(self._streams.values()):
            self._drop(stream, cancel=True)
        self._transport = None
        self._out.clear()

    def pause_writing(self) -> None:
        # A peer that does not read what we send (answers, PING acks) is not read from
        # either until it catches up: what we hold for it stays bounded.
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._needed:  # a large frame still arriving: wait for all of it
                return
            data = bytes(buffer)
            buffer.clear()
        position, size = 0, len(data)
        try:
            if not self._has_preface:
                if size < len(PREFACE):
                    if not PREFACE.startswith(data):
                        raise ConnectionFailure(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    buffer += data
                    self._needed = len(PREFACE)
                    return
                if not data.startswith(PREFACE):
                    raise ConnectionFailure(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                position = len(PREFACE)
                self._has_preface = True
            unpack = FRAME_HEADER.unpack_from
            while size - position >= 9:
                high, low, kind, flags, stream_id = unpack(data, position)
                end = position + 9 + (high << 16 | low)
                if end - position - 9 > _MAX_FRAME:
                    raise ConnectionFailure(FRAME_SIZE_ERROR, f"a frame over {_MAX_FRAME} bytes")
                if end > size:
                    break
                payload = data[position + 9 : end]
                position = end
                self._frame_received(kind, flags, stream_id & 0x7FFFFFFF, payload)
                if self._transport is None:
                    return
            if position < size:
                buffer += data[position:]
                self._needed = 9
                if len(buffer) >= 9:
                    self._needed = 9 + int.from_bytes(buffer[:3], "big")
        except ConnectionFailure as exc:
            self._fail(exc.code, str(exc))

    # -- frames in --------------------------------------------------------------------

    def _frame_received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is not None and kind != CONTINUATION:
            raise ConnectionFailure(PROTOCOL_ERROR, "expected a CONTINUATION frame")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers_frame(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if self._continuation is None or self._continuation[0] != stream_id:
                raise ConnectionFailure(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            _, first_flags, block = self._continuation
            block += payload
            if len(block) > _MAX_HEADER_LIST:
                raise ConnectionFailure(PROTOCOL_ERROR, "header block too large")
            if flags & END_HEADERS:
                self._continuation = None
                self._headers_complete(stream_id, bytes(block), bool(first_flags & END_STREAM))
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if stream_id != 0:
                raise ConnectionFailure(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise ConnectionFailure(PROTOCOL_ERROR, "malformed RST_STREAM")
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._drop(stream, cancel=True)
        elif kind == GOAWAY:
            self._is_going_away = True
            self._close_if_idle()
        elif kind == PRIORITY:
            if len(payload) != 5:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "PRIORITY payload is not 5 bytes")
        elif kind == PUSH_PROMISE:
            raise ConnectionFailure(PROTOCOL_ERROR, "a client cannot push")
        # Unknown frame types are ignored (§5.5).

    def _headers_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = unpadded(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "HEADERS priority field cut short")
            block = block[5:]
        if flags & END_HEADERS:
            self._headers_complete(stream_id, block, bool(flags & END_STREAM))
        else:
            self._continuation = (stream_id, flags, bytearray(block))

    def _decode(self, block: bytes) -> _Headers:
        # A block that leaves the dynamic table as it was means the same headers every
        # time it comes back: clients send the same indexed block call after call.
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        try:
            headers = [
                (bytes(name), bytes(value)) for name, value in self._decoder.decode(block, raw=True)
            ]
        except HPACKError as exc:
            raise ConnectionFailure(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        decoded = (headers, dict(headers))
        after = (len(entries), entries[0] if entries else None, table.maxsize)
        if before[0] == after[0] and before[1] is after[1] and before[2] == after[2]:
            if len(self._header_cache) >= _HEADER_CACHE:
                self._header_cache.clear()
            self._header_cache[block] = decoded
        else:
            self._header_cache.clear()
        return decoded

    def _headers_complete(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        headers, fields = self._decode(block)  # always: the table must follow the peer's
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client: they end its side
            if not end_stream:
                raise ConnectionFailure(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._remote_closed(stream)
            return
        if stream_id % 2 == 0 or stream_id <= self._last_stream_id:
            raise ConnectionFailure(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        self._last_stream_id = stream_id
        if self._is_going_away:
            self._write(frame(RST_STREAM, 0, stream_id, REFUSED_STREAM.to_bytes(4, "big")))
            return
        stream = _Stream(stream_id, headers, self._initial_window)
        self._streams[stream_id] = stream
        server = self._server
        server.calls += 1
        path = fields.get(b":path", b"")
        content_type = fields.get(b"content-type", b"")
        if fields.get(b":method") != b"POST":
            self._refuse(stream, b"405", _UNIMPLEMENTED, "gRPC calls are POST requests")
        elif not content_type.startswith(b"application/grpc"):
            found = content_type.decode("latin-1") or "none"
            self._refuse(stream, b"415", _INVALID_ARGUMENT,
                         f"content-type must be application/grpc, got {found}")  # fmt: skip
        elif (encoding := fields.get(b"grpc-encoding", b"identity")) != b"identity":
            text = encoding.decode("latin-1")
            self._finish(stream, _UNIMPLEMENTED, f"grpc-encoding {text} is not supported; "
                         "this server accepts identity", ACCEPT_ENCODING)  # fmt: skip
        elif server.calls > server.settings.max_concurrent_rpcs:
            self._finish(stream, _RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
        elif path == server.stream_path:
            messages = stream.messages = _Messages(self, stream)
            stream.task = self._loop.create_task(self._streaming(stream, messages))
        elif (handler := server.unary.get(path)) is not None:
            stream.handler = handler
        else:
            self._finish(stream, _UNIMPLEMENTED, f"Method not found: {path.decode('latin-1')}")
        if not stream.done and b"grpc-timeout" in fields:
            timeout = timeout_s(fields[b"grpc-timeout"])
            if timeout is None:
                self._finish(stream, _INTERNAL, "malformed grpc-timeout header")
            else:
                stream.deadline = self._loop.call_later(timeout, self._expire, stream)
        if end_stream:
            self._remote_closed(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "DATA on stream 0")
        self._unacked += len(payload)
        if self._unacked >= _CONNECTION_WINDOW // 4:
            self._write(frame(WINDOW_UPDATE, 0, 0, self._unacked.to_bytes(4, "big")))
            self._unacked = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream_id:
                raise ConnectionFailure(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream we have finished with: its data is dropped
        if stream.is_remote_closed:
            self._reset(stream, STREAM_CLOSED)
            return
        if not stream.done:
            self._messages_received(stream, unpadded(flags, payload) if flags & PADDED else payload)
        if flags & END_STREAM:
            self._remote_closed(stream)
        elif payload:
            stream.unacked += len(payload)
            self._credit(stream)

    def _messages_received(self, stream: _Stream, data: bytes) -> None:
        buffer = stream.buffer
        if buffer:
            buffer += data
            if len(buffer) < stream.needed:  # a large message still arriving
                return
            data = bytes(buffer)
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
            if stream.messages is not None:
                stream.queued += length + 5
                stream.messages.put(message)
            elif stream.message is None and stream.handler is not None:
                stream.message = message
            else:
                self._finish(stream, _UNIMPLEMENTED, "a unary call sent more than one message")
                return
        if position < size:
            buffer += data[position:]
            stream.needed = 5
            if len(buffer) >= 5:
                stream.needed = 5 + int.from_bytes(buffer[1:5], "big")

    def _remote_closed(self, stream: _Stream) -> None:
        stream.is_remote_closed = True
        if stream.done:
            if not stream.outbox:
                self._drop(stream)
            return
        if stream.buffer:
            self._finish(stream, _INTERNAL, "the request ended inside a message")
        elif stream.messages is not None:
            stream.messages.put(None)
        elif stream.message is None:
            self._finish(stream, _UNIMPLEMENTED, "a unary call ended without a message")
        elif stream.handler is not None:
            message, stream.message = stream.message, None
            self._start(stream, self._unary(stream, stream.handler, message))

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionFailure(FLOW_CONTROL_ERROR, "initial window over 2^31-1")
                delta = value - self._initial_window
                self._initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise ConnectionFailure(PROTOCOL_ERROR, f"bad SETTINGS_MAX_FRAME_SIZE {value}")
                self._max_frame = value
            elif key == SETTINGS_ENABLE_PUSH and value > 1:
                raise ConnectionFailure(PROTOCOL_ERROR, f"bad SETTINGS_ENABLE_PUSH {value}")
            # HEADER_TABLE_SIZE: our answers use no table. The rest are advice.
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionFailure(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionFailure(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            self._flush_blocked()
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if increment == 0 or stream.send_window + increment > MAX_WINDOW:
            self._reset(stream, PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR)
            return
        stream.send_window += increment
        if stream.outbox:
            self._flush(stream)

    # -- flow control for what we receive --------------------------------------------------

    def _credit(self, stream: _Stream) -> None:
        # Credit as it arrives, unless ModelStreamInfer has a window's worth queued.
        if stream.is_remote_closed or stream.done:
            stream.unacked = 0
            return
        if stream.queued > _STREAM_WINDOW:
            stream.owed += stream.unacked
            stream.unacked = 0
        elif stream.unacked >= _STREAM_WINDOW // 4:
            increment = stream.unacked + stream.owed
            stream.unacked = stream.owed = 0
            self._write(frame(WINDOW_UPDATE, 0, stream.id, increment.to_bytes(4, "big")))

    def taken(self, stream: _Stream, size: int) -> None:
        """ModelStreamInfer took a message of ``size`` bytes off the stream."""
        stream.queued -= size
        if stream.owed and stream.queued <= _STREAM_WINDOW:
            stream.unacked += stream.owed
            stream.owed = 0
            self._credit(stream)

    # -- calls ------------------------------------------------------------------------

    def _start(self, stream: _Stream, call: Coroutine[Any, Any, None]) -> None:
        """Run ``call`` once every connection's frames of this loop pass are read."""
        self._server.start_soon(self, stream, call)

    def run_call(self, stream: _Stream, call: Coroutine[Any, Any, None]) -> None:
        """Run ``call`` up to its first real wait here, and only then as a task.

        An unbatched ModelInfer never waits, so it answers without a task (Python 3.12's
        eager tasks, by hand). The call runs in its own copy of the context either way,
        as a task would. A call whose stream ended while it was due is not run.
        """
        if stream.done or self._transport is None:
            call.close()
            return
        context = contextvars.copy_context()
        try:
            waiting = context.run(call.send, None)
        except StopIteration:
            return
        stream.task = self._loop.create_task(_resumed(call, waiting), context=context)

    async def _unary(self, stream: _Stream, handler: UnaryHandler, message: bytes) -> None:
        try:
            data = await handler(message, _Context(stream.headers))
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

    async def _streaming(self, stream: _Stream, messages: _Messages) -> None:
        service = self._server.service
        answers: AsyncIterator[bytes] = service.ModelStreamInfer(
            messages,
            _Context(stream.headers),
        )
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

    def _failed(self, stream: _Stream, error: Exception) -> None:
        """End a call whose method raised: its abort's status, or INTERNAL (logged)."""
        if isinstance(error, _Abort):
            self._finish(stream, error.code, error.details)
        else:
            logger.error("unexpected error in a gRPC call", exc_info=error)
            self._finish(stream, _INTERNAL, "internal server error (logged)")

    def _expire(self, stream: _Stream) -> None:
        stream.deadline = None
        if stream.done:
            return
        if stream.task is not None:
            stream.task.cancel()
        self._finish(stream, _DEADLINE_EXCEEDED, "Deadline Exceeded")

    def shutdown(self) -> None:
        """Refuse new calls (GOAWAY); close once the running ones have answered."""
        if self._transport is None or self._is_going_away:
            return
        self._is_going_away = True
        payload = struct.pack(">II", self._last_stream_id, NO_ERROR)
        self._write(frame(GOAWAY, 0, 0, payload))
        self._close_if_idle()

    def abort_calls(self) -> None:
        """The grace is over: end what still runs with UNAVAILABLE, and close."""
        for stream in list(self._streams.values()):
            if stream.task is not None:
                stream.task.cancel()
            if not stream.done:
                self._finish(stream, _UNAVAILABLE, "the server is shutting down")
        self._close()

    # -- frames out -------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Queue frames; the server writes every connection's at the end of the loop pass.

        Answers leave in one burst rather than one by one between calls: on loopback
        (and on a busy client) a write that finds the client asleep pays for waking it,
        and a burst wakes it once (ADR 0007, "Second pass").
        """
        if self._transport is not None:
            if not self._out:
                self._server.flush_soon(self)
            self._out.append(data)

    def flush_out(self) -> None:
        """Write the queued frames, in one call."""
        out = self._out
        if out and self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def _close(self) -> None:
        if self._transport is not None:
            self.flush_out()
            self._transport.close()

    def _answer(self, stream: _Stream, data: bytes, trailers: bytes | None) -> None:
        limit = self._server.settings.max_message_bytes
        if len(data) > limit:
            self._finish(stream, _RESOURCE_EXHAUSTED,
                         f"Sent message larger than max ({len(data)} vs. {limit})")  # fmt: skip
            return
        self._send(stream, b"\x00" + len(data).to_bytes(4, "big") + data, trailers)

    def _finish(self, stream: _Stream, code: StatusCode, message: str, extra: bytes = b"") -> None:
        """End the call with this status (trailers-only when nothing was sent)."""
        if stream.done:
            return
        stream.outbox.clear()
        self._send(stream, None, status_block(code, message) + extra)

    def _refuse(self, stream: _Stream, status: bytes, code: StatusCode, message: str) -> None:
        # Not gRPC (wrong method or content-type): an HTTP status an HTTP/2 client can read.
        # ":status" by its static table name (index 8), as a literal value.
        block = b"\x08" + hpack_int(len(status), 7, 0) + status
        block += CONTENT_TYPE + status_block(code, message)
        stream.done = True
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._ended(stream)

    def _send(self, stream: _Stream, message: bytes | None, trailers: bytes | None) -> None:
        """Send a framed message and/or the trailers, as the windows allow."""
        if stream.done or self._transport is None:
            return
        out: list[bytes] = []
        if not stream.is_started:
            stream.is_started = True
            if message is None and trailers is not None:  # trailers-only
                stream.done = True
                block = RESPONSE_HEADERS + trailers
                self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
                self._ended(stream)
                return
            out.append(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
        if message is not None:
            size = len(message)
            if (
                not stream.outbox
                and size <= self._max_frame
                and size <= stream.send_window
                and size <= self._send_window
            ):
                stream.send_window -= size
                self._send_window -= size
                out.append(frame(DATA, 0, stream.id, message))
            else:
                stream.outbox.append(memoryview(message))
        if trailers is not None:
            stream.done = True
            if stream.outbox:
                stream.trailers = trailers
            else:
                out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, trailers))
        if out:
            self._write(b"".join(out))
        if stream.outbox:
            self._flush(stream)
        elif stream.done:
            self._ended(stream)

    def _flush(self, stream: _Stream) -> None:
        out: list[bytes] = []
        outbox = stream.outbox
        while outbox:
            allowed = min(stream.send_window, self._send_window, self._max_frame)
            if allowed <= 0:
                break
            chunk = outbox[0]
            if len(chunk) > allowed:
                piece, outbox[0] = chunk[:allowed], chunk[allowed:]
            else:
                piece = outbox.popleft()
            stream.send_window -= len(piece)
            self._send_window -= len(piece)
            out.append(frame(DATA, 0, stream.id, bytes(piece)))
        if outbox:
            self._blocked[stream.id] = stream
        else:
            self._blocked.pop(stream.id, None)
            if stream.done and stream.trailers:
                out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, stream.trailers))
        if out:
            self._write(b"".join(out))
        if not outbox and stream.done:
            self._ended(stream)

    def _flush_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self._send_window <= 0:
                return
            self._flush(stream)

    def _ended(self, stream: _Stream) -> None:
        """Our side is done; the stream goes once the client's side is too."""
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None
        if stream.is_remote_closed:
            self._drop(stream)
        else:
            # The client is still sending (an oversized message, say): it need not.
            self._reset(stream, NO_ERROR)

    def _reset(self, stream: _Stream, code: int) -> None:
        self._write(frame(RST_STREAM, 0, stream.id, code.to_bytes(4, "big")))
        self._drop(stream, cancel=True)

    def _drop(self, stream: _Stream, *, cancel: bool = False) -> None:
        if self._streams.pop(stream.id, None) is None:
            return
        self._server.calls -= 1
        self._blocked.pop(stream.id, None)
        stream.done = True
        stream.outbox.clear()
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None
        if cancel and stream.task is not None and not stream.task.done():
            stream.task.cancel()
        if stream.messages is not None:
            stream.messages.put(None)
        self._server.call_ended()
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self._is_going_away and not self._streams:
            self._close()

    def _fail(self, code: int, message: str) -> None:
        """A connection error (§5.4.1): GOAWAY with the reason, then close."""
        logger.debug("closing a gRPC connection: %s", message)
        payload = struct.pack(">II", self._last_stream_id, code) + message.encode()[:256]
        self._write(frame(GOAWAY, 0, 0, payload))
        self._close()
        self._buffer.clear()


@types.coroutine
def _resumed(call: Coroutine[Any, Any, None], waiting: Any) -> Generator[Any, Any, None]:
    """Go on with a coroutine already started by hand (``_start``), as a task's body."""
    while True:
        try:
            sent = yield waiting
        except BaseException as exc:  # a cancellation, forwarded
            try:
                waiting = call.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waiting = call.send(sent)
            except StopIteration:
                return


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
            f"/{_SERVICE}/{name}".encode(): handler
            for name, handler in unary_methods(service).items()
        }
        self.stream_path = f"/{_SERVICE}/{_STREAMING}".encode()
        self.connections: set[H2GrpcConnection] = set()
        self.calls = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._idle = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        # Calls due and connections with frames to write, run and written once per loop
        # pass: every connection's frames are read before the first call runs, and the
        # answers leave together after the last (H2GrpcConnection._write).
        self._due: list[tuple[H2GrpcConnection, _Stream, Coroutine[Any, Any, None]]] = []
        self._is_running_due = False
        self._unflushed: list[H2GrpcConnection] = []

    def call_ended(self) -> None:
        if self.calls == 0:
            self._idle.set()

    def start_soon(
        self, connection: H2GrpcConnection, stream: _Stream, call: Coroutine[Any, Any, None]
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

    def flush_soon(self, connection: H2GrpcConnection) -> None:
        # Calls due or running flush when they are done: no loop pass of its own then.
        if not (self._unflushed or self._due or self._is_running_due):
            self._loop.call_soon(self._flush)
        self._unflushed.append(connection)

    def _flush(self) -> None:
        unflushed, self._unflushed = self._unflushed, []
        for connection in unflushed:
            connection.flush_out()

    async def listen(self, host: str, port: int, *, reuse_port: bool) -> None:
        """Bind ``host:port`` (0 picks a free port) and start accepting.

        Raises:
            OSError: the address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: H2GrpcConnection(self), host, port, reuse_port=reuse_port or None,
            backlog=1024,
        )  # fmt: skip
        sock: socket.socket = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls; let running ones finish within ``grace_s``; end idle streams."""
        self.service.close_streams()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.shutdown()
        if self.calls:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        for connection in list(self.connections):
            connection.abort_calls()


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def start_h2_grpc_server(
    service: GrpcService, settings: GrpcSettings, address: str, *, reuse_port: bool
) -> H2GrpcServer:
    """Serve ``service`` over our HTTP/2 framing on the running loop.

    Args:
        address: ``host:port`` to bind (an IPv6 host in brackets); port 0 picks a free one.
        reuse_port: share the port with other workers (``SO_REUSEPORT``).

    Raises:
        OSError: the address cannot be bound.
    """
    server = H2GrpcServer(service, settings)
    host, port = _split_address(address)
    try:
        await server.listen(host, port, reuse_port=reuse_port)
    except OSError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc.strerror or exc}") from None
    return server

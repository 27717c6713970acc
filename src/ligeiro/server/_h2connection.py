"""A server-side HTTP/2 connection (RFC 9113), as much as a gRPC server needs (ADR 0007).

Frames are parsed with ``struct``; ``hpack`` decodes request headers (a block that
changes nothing in the decoder's table is decoded once per connection and then looked
up); what we send needs no table. Implemented: the preface, SETTINGS (and its ACK),
PING answers, WINDOW_UPDATE both ways (received data is credited back as it is taken;
large answers wait for the peer's window), RST_STREAM, GOAWAY both ways, HEADERS with
CONTINUATION, padding and priority fields; frames out are queued and written once per
loop pass (``flush_soon``).

``H2Connection`` knows streams, not what they carry (beyond the answer's first
headers, ``RESPONSE_HEADERS``, which are gRPC's): a subclass opens each stream
(``_open``, ``_opened``), takes its data (``_received``) and the end of the request
(``_request_ended``), and hears when it goes (``_dropped``). ``grpc_h2.py`` is the one
subclass, gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from hpack import Decoder, HPACKError

from ._h2wire import (
    ACK,
    COMPRESSION_ERROR,
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
    unpadded,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["H2Connection", "H2Stream"]

logger = logging.getLogger(__name__)

# What we let a peer send before it must wait for our WINDOW_UPDATE: the connection's
# window is large because every byte of it is taken as soon as it arrives; a stream's
# bounds what a consumer (ModelStreamInfer) may have queued ahead of it.
_CONNECTION_WINDOW = 16 * 1024 * 1024
_STREAM_WINDOW = 1024 * 1024
_MAX_FRAME = 1024 * 1024  # what we accept; we send no more than the peer's setting
_MAX_HEADER_LIST = 64 * 1024
_HEADER_CACHE = 64  # decoded header blocks kept per connection

if TYPE_CHECKING:
    # A decoded header block: the list as sent, and a dict for lookups.
    _Headers = tuple[list[tuple[bytes, bytes]], dict[bytes, bytes]]


class H2Stream:
    """One stream's HTTP/2 side: what waits to be sent, the windows, how far it is."""

    __slots__ = (
        "deadline", "done", "headers", "id", "is_remote_closed", "is_started", "outbox",
        "owed", "queued", "send_window", "trailers", "unacked",
    )  # fmt: skip

    def __init__(self, stream_id: int, headers: Sequence[tuple[bytes, bytes]], window: int):
        self.id = stream_id
        self.headers = headers
        self.is_remote_closed = False
        self.is_started = False  # our response headers are written
        self.done = False  # our trailers are written (or queued behind the data)
        self.deadline: asyncio.TimerHandle | None = None  # cancelled when the stream ends
        self.send_window = window
        self.outbox: deque[memoryview] = deque()
        self.trailers: bytes | None = None
        self.unacked = 0  # received bytes not yet credited back to the peer
        self.queued = 0  # bytes received and not yet taken by their consumer
        self.owed = 0  # credit held back until those are taken


_S = TypeVar("_S", bound=H2Stream)


class H2Connection(asyncio.Protocol, Generic[_S]):
    """One HTTP/2 connection, server side; a subclass gives its streams a meaning.

    Args:
        flush_soon: called with the connection when it queues frames after its last
            flush; whoever it is calls ``flush_out`` before the loop waits again.
    """

    def __init__(self, flush_soon: Callable[[H2Connection[_S]], None]) -> None:
        self._flush_soon = flush_soon
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()  # the start of a frame that has not all arrived
        self._needed = 0  # how long the buffer must grow before it is worth parsing
        self._has_preface = False
        self._decoder = Decoder(max_header_list_size=_MAX_HEADER_LIST)
        self._header_cache: dict[bytes, _Headers] = {}
        self._streams: dict[int, _S] = {}
        self._last_stream_id = 0
        self._continuation: tuple[int, int, bytearray] | None = None  # stream, flags, block
        self._send_window = DEFAULT_WINDOW  # the peer's, for what we send
        self._initial_window = DEFAULT_WINDOW
        self._max_frame = 16_384
        self._unacked = 0
        self._is_going_away = False
        self._blocked: dict[int, _S] = {}  # streams with data waiting for window
        self._out: list[bytes] = []  # frames queued since the last flush

    # -- what a subclass gives ---------------------------------------------------------

    def _open(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], fields: dict[bytes, bytes]
    ) -> _S:
        """A new stream for a request's headers (``fields``: the same, by name)."""
        raise NotImplementedError

    def _opened(self, stream: _S, fields: dict[bytes, bytes]) -> None:
        """The stream is registered: route it, or answer it at once."""
        raise NotImplementedError

    def _received(self, stream: _S, data: bytes) -> None:
        """Request data on a stream we have not finished answering."""
        raise NotImplementedError

    def _request_ended(self, stream: _S) -> None:
        """The client's side ended (END_STREAM) on a stream we have not finished."""
        raise NotImplementedError

    def _dropped(self, stream: _S, *, cancel: bool) -> None:
        """The stream is gone (answered, reset, or the connection lost)."""
        raise NotImplementedError

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self._transport = transport
        # No SETTINGS_MAX_CONCURRENT_STREAMS: a client would queue calls past it; the
        # layer above refuses what is over its own limit instead.
        settings = struct.pack(
            ">HIHIHI",
            SETTINGS_INITIAL_WINDOW_SIZE, _STREAM_WINDOW,
            SETTINGS_MAX_FRAME_SIZE, _MAX_FRAME,
            SETTINGS_MAX_HEADER_LIST_SIZE, _MAX_HEADER_LIST,
        )  # fmt: skip
        window = struct.pack(">I", _CONNECTION_WINDOW - DEFAULT_WINDOW)
        self._write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, window))

    def connection_lost(self, exc: Exception | None) -> None:
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

    # -- frames in ---------------------------------------------------------------------

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
        stream = self._open(stream_id, headers, fields)
        self._streams[stream_id] = stream
        self._opened(stream, fields)
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
            self._received(stream, unpadded(flags, payload) if flags & PADDED else payload)
        if flags & END_STREAM:
            self._remote_closed(stream)
        elif payload:
            stream.unacked += len(payload)
            self._credit(stream)

    def _remote_closed(self, stream: _S) -> None:
        stream.is_remote_closed = True
        if stream.done:
            if not stream.outbox:
                self._drop(stream)
            return
        self._request_ended(stream)

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

    # -- flow control for what we receive ----------------------------------------------

    def _credit(self, stream: _S) -> None:
        # Credit as it arrives, unless the stream's consumer has a window's worth queued.
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

    def taken(self, stream: _S, size: int) -> None:
        """The stream's consumer took ``size`` bytes of what it had queued."""
        stream.queued -= size
        if stream.owed and stream.queued <= _STREAM_WINDOW:
            stream.unacked += stream.owed
            stream.owed = 0
            self._credit(stream)

    # -- frames out --------------------------------------------------------------------

    def shutdown(self) -> None:
        """Refuse new streams (GOAWAY); close once the open ones have ended."""
        if self._transport is None or self._is_going_away:
            return
        self._is_going_away = True
        payload = struct.pack(">II", self._last_stream_id, NO_ERROR)
        self._write(frame(GOAWAY, 0, 0, payload))
        self._close_if_idle()

    def _write(self, data: bytes) -> None:
        """Queue frames; ``flush_soon`` has them written at the end of the loop pass.

        Answers leave in one burst rather than one by one between calls: on loopback
        (and on a busy client) a write that finds the client asleep pays for waking it,
        and a burst wakes it once (ADR 0007, "Second pass").
        """
        if self._transport is not None:
            if not self._out:
                self._flush_soon(self)
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

    def _send(self, stream: _S, message: bytes | None, trailers: bytes | None) -> None:
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

    def _flush(self, stream: _S) -> None:
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

    def _ended(self, stream: _S) -> None:
        """Our side is done; the stream goes once the client's side is too."""
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None
        if stream.is_remote_closed:
            self._drop(stream)
        else:
            # The client is still sending (an oversized message, say): it need not.
            self._reset(stream, NO_ERROR)

    def _reset(self, stream: _S, code: int) -> None:
        self._write(frame(RST_STREAM, 0, stream.id, code.to_bytes(4, "big")))
        self._drop(stream, cancel=True)

    def _drop(self, stream: _S, *, cancel: bool = False) -> None:
        if self._streams.pop(stream.id, None) is None:
            return
        self._blocked.pop(stream.id, None)
        stream.done = True
        stream.outbox.clear()
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None
        self._dropped(stream, cancel=cancel)
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self._is_going_away and not self._streams:
            self._close()

    def _fail(self, code: int, message: str) -> None:
        """A connection error (§5.4.1): GOAWAY with the reason, then close."""
        logger.debug("closing an HTTP/2 connection: %s", message)
        payload = struct.pack(">II", self._last_stream_id, code) + message.encode()[:256]
        self._write(frame(GOAWAY, 0, 0, payload))
        self._close()
        self._buffer.clear()

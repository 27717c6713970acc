"""A server-side HTTP/2 connection (RFC 9113), as much as a gRPC server needs (ADR 0007).

Frames are parsed with ``struct``; ``_h2headers.py`` decodes request headers; what we
send needs no table. Implemented: the preface, SETTINGS (and its ACK),
PING answers, WINDOW_UPDATE both ways (received data is credited back as it is taken;
large answers wait for the peer's window), RST_STREAM, GOAWAY both ways, HEADERS with
CONTINUATION, padding and priority fields. What we send, and when the windows let it
go, is ``H2Output``'s (``_h2output.py``).

A peer is held to ``[grpc]``'s limits, which nghttp2 would hold it to (docs/security.md):
streams open at once (advertised; REFUSED_STREAM past it), the header block's size as
its frames arrive, SETTINGS entries per frame, the windows we advertised (what it sends
and what it makes us send), and per-second budgets of resets and of frames that cost us
work without carrying a request (rapid reset, PING and SETTINGS floods): over a budget
it gets GOAWAY ENHANCE_YOUR_CALM. The hot path pays counters; the owner calls ``swept``
once a second to start the budgets again and close silent connections.

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
from typing import TYPE_CHECKING, TypeVar, cast

from ._h2headers import HeaderBlock, HeaderDecoder
from ._h2output import H2Output, H2Stream
from ._h2wire import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
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
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    ConnectionFailure,
    frame,
    unpadded,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..settings import GrpcSettings

__all__ = ["H2Connection", "H2Stream"]

logger = logging.getLogger(__name__)

# What we let a peer send before it must wait for our WINDOW_UPDATE: the connection's
# window is large because every byte of it is taken as soon as it arrives; a stream's
# bounds what a consumer (ModelStreamInfer) may have queued ahead of it.
_CONNECTION_WINDOW = 16 * 1024 * 1024
_STREAM_WINDOW = 1024 * 1024
_MAX_FRAME = 1024 * 1024  # what we accept; we send no more than the peer's setting
# A SETTINGS frame has 7 settings to set; one of thousands of entries, each walking every
# stream, froze a worker for seconds.
_MAX_SETTINGS_ENTRIES = 32
_LINGER_S = 1.0  # a failed connection's input is read and dropped this long

_S = TypeVar("_S", bound=H2Stream)


class H2Connection(H2Output[_S], asyncio.Protocol):
    """One HTTP/2 connection, server side; a subclass gives its streams a meaning.

    Args:
        flush_soon: called with the connection when it queues frames after its last
            flush; whoever it is calls ``flush_out`` before the loop waits again.
        limits: ``[grpc]``: the HTTP/2 limits a peer is held to.
    """

    def __init__(self, flush_soon: Callable[[H2Output[_S]], None], limits: GrpcSettings) -> None:
        super().__init__(flush_soon)
        self._limits = limits
        self._max_streams = limits.max_concurrent_streams
        self._max_header_block = limits.max_header_list_bytes
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()  # the start of a frame that has not all arrived
        self._needed = 0  # how long the buffer must grow before it is worth parsing
        self._has_preface = False
        self._has_settings = False  # the peer's first SETTINGS: its handshake is done
        self._headers = HeaderDecoder(limits.max_header_list_bytes)
        self._last_stream_id = 0
        self._continuation: tuple[int, int, bytearray] | None = None  # stream, flags, block
        self._initial_window = DEFAULT_WINDOW
        self._unacked = 0
        self._is_going_away = False
        # Since the last sweep: resets (and refused streams), frames that carry no
        # request, and whether anything arrived at all.
        self._resets = 0
        self._control_frames = 0
        self._is_active = False
        self._opened_at = self._last_active = self._loop.time()

    # -- what a subclass gives ---------------------------------------------------------

    def _open(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> _S:
        """A new stream for a request's headers."""
        raise NotImplementedError

    def _opened(self, stream: _S, headers: HeaderBlock) -> None:
        """The stream is registered: route it, or answer it at once. ``headers.route``
        is the subclass's to keep what it made of a block the decoder keeps."""
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
        # SETTINGS_MAX_CONCURRENT_STREAMS: a client queues its calls past it, and one
        # connection cannot take every call a worker runs.
        settings = struct.pack(
            ">HIHIHIHI",
            SETTINGS_MAX_CONCURRENT_STREAMS, self._max_streams,
            SETTINGS_INITIAL_WINDOW_SIZE, _STREAM_WINDOW,
            SETTINGS_MAX_FRAME_SIZE, _MAX_FRAME,
            SETTINGS_MAX_HEADER_LIST_SIZE, self._max_header_block,
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
        if self._transport is None:  # failed: closing in a moment (``_fail``)
            return
        self._is_active = True
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
                length = high << 16 | low
                if length > _MAX_FRAME:
                    raise ConnectionFailure(FRAME_SIZE_ERROR, f"a frame over {_MAX_FRAME} bytes")
                end = position + 9 + length
                if end > size:
                    break
                payload = data[position + 9 : end]
                position = end
                # A call's two frames, dispatched here rather than in _frame_received.
                if kind == DATA and self._continuation is None:
                    self._data(flags, stream_id & 0x7FFFFFFF, payload)
                elif kind == HEADERS and self._continuation is None:
                    self._headers_frame(flags, stream_id & 0x7FFFFFFF, payload)
                else:
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
        if kind == CONTINUATION:
            if self._continuation is None or self._continuation[0] != stream_id:
                raise ConnectionFailure(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            if not payload:
                self._count_control_frame()
            _, first_flags, block = self._continuation
            block += payload
            if len(block) > self._max_header_block:  # as it arrives, not once it is whole
                raise self._header_block_too_large()
            if flags & END_HEADERS:
                self._continuation = None
                self._headers_complete(stream_id, bytes(block), bool(first_flags & END_STREAM))
        elif kind == SETTINGS:
            self._count_control_frame()
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:  # not counted: a busy client sends many
            self._window_update(stream_id, payload)
        elif kind == PING:
            self._count_control_frame()
            if stream_id != 0:
                raise ConnectionFailure(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise ConnectionFailure(PROTOCOL_ERROR, "malformed RST_STREAM")
            self._count_reset()
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._drop(stream, cancel=True)
        elif kind == GOAWAY:
            self._is_going_away = True
            self._close_if_idle()
        elif kind == PRIORITY:
            self._count_control_frame()
            if len(payload) != 5:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "PRIORITY payload is not 5 bytes")
        elif kind == PUSH_PROMISE:
            raise ConnectionFailure(PROTOCOL_ERROR, "a client cannot push")
        else:  # unknown frame types are ignored (§5.5), within the budget
            self._count_control_frame()

    def _headers_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = unpadded(flags, payload) if flags & PADDED else payload
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "HEADERS priority field cut short")
            block = block[5:]
        if len(block) > self._max_header_block:  # one frame can carry 1 MiB of it
            raise self._header_block_too_large()
        if flags & END_HEADERS:
            self._headers_complete(stream_id, block, bool(flags & END_STREAM))
        else:
            self._continuation = (stream_id, flags, bytearray(block))

    def _headers_complete(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        # Always decoded: the table follows the peer's. A block seen before, as a client
        # sends its usual headers, is looked up without a call.
        decoder = self._headers
        decoded = decoder.known.get(block) or decoder.decode(block)
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client: they end its side
            if not end_stream:
                raise ConnectionFailure(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._remote_closed(stream)
            return
        if stream_id % 2 == 0 or stream_id <= self._last_stream_id:
            raise ConnectionFailure(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        self._last_stream_id = stream_id
        if self._is_going_away or len(self._streams) >= self._max_streams:
            self._write(frame(RST_STREAM, 0, stream_id, REFUSED_STREAM.to_bytes(4, "big")))
            if not self._is_going_away:  # a client that ignores our setting: a reset
                self._count_reset()
            return
        stream = self._open(stream_id, decoded.headers)
        self._streams[stream_id] = stream
        self._opened(stream, decoded)
        if end_stream:
            self._remote_closed(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        if not size and not flags & END_STREAM:
            self._count_control_frame()
        self._unacked += size
        if self._unacked > _CONNECTION_WINDOW:  # more than we let it send
            raise ConnectionFailure(FLOW_CONTROL_ERROR, "DATA past the connection's window")
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
        if stream.unacked + stream.owed + size > _STREAM_WINDOW:
            raise ConnectionFailure(FLOW_CONTROL_ERROR, f"DATA past stream {stream_id}'s window")
        if not stream.done:
            self._received(stream, unpadded(flags, payload) if flags & PADDED else payload)
        if flags & END_STREAM:
            self._remote_closed(stream)
        elif size:
            stream.unacked += size
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
        if len(payload) > 6 * _MAX_SETTINGS_ENTRIES:
            raise ConnectionFailure(
                ENHANCE_YOUR_CALM, f"a SETTINGS frame of more than {_MAX_SETTINGS_ENTRIES} entries"
            )
        self._has_settings = True
        window = self._initial_window
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionFailure(FLOW_CONTROL_ERROR, "initial window over 2^31-1")
                window = value  # the last one counts: the streams are walked once
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise ConnectionFailure(PROTOCOL_ERROR, f"bad SETTINGS_MAX_FRAME_SIZE {value}")
                self._max_frame = value
            elif key == SETTINGS_ENABLE_PUSH and value > 1:
                raise ConnectionFailure(PROTOCOL_ERROR, f"bad SETTINGS_ENABLE_PUSH {value}")
            # HEADER_TABLE_SIZE: our answers use no table. The rest are advice.
        if window != self._initial_window:
            delta = window - self._initial_window
            self._initial_window = window
            for stream in self._streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:  # §6.9.2
                    raise ConnectionFailure(
                        FLOW_CONTROL_ERROR,
                        f"SETTINGS pushed stream {stream.id}'s window over 2^31-1",
                    )
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

    # -- budgets -----------------------------------------------------------------------

    def _count_reset(self) -> None:
        self._resets += 1
        if self._resets > self._limits.max_resets_per_s:
            raise ConnectionFailure(
                ENHANCE_YOUR_CALM,
                f"more than {self._limits.max_resets_per_s} streams reset or refused in a second",
            )

    def _count_control_frame(self) -> None:
        self._control_frames += 1
        if self._control_frames > self._limits.max_control_frames_per_s:
            raise ConnectionFailure(
                ENHANCE_YOUR_CALM,
                f"more than {self._limits.max_control_frames_per_s} SETTINGS, PING, PRIORITY, "
                "empty or unknown frames in a second",
            )

    def _header_block_too_large(self) -> ConnectionFailure:
        return ConnectionFailure(
            ENHANCE_YOUR_CALM, f"a header block over {self._max_header_block} bytes"
        )

    def swept(self, now: float) -> None:
        """Once a second: the budgets start again; a silent connection is closed.

        Closed: one that has not finished its handshake (preface and SETTINGS) within
        ``handshake_timeout_s``, and one with no stream open that has sent nothing for
        ``idle_timeout_s`` (GOAWAY NO_ERROR: a client reconnects when it needs to). One
        whose every open stream has an answer waiting for window, and that has sent
        nothing for as long, is closed too: a peer that neither reads nor credits (a zero
        INITIAL_WINDOW_SIZE, found by tests/integration/test_fuzz_transports.py) would
        otherwise hold it, and a graceful shutdown, for good.
        """
        self._resets = self._control_frames = 0
        if self._is_active:
            self._is_active = False
            self._last_active = now
        if self._transport is None:
            return
        if not self._has_settings:
            if now - self._opened_at > self._limits.handshake_timeout_s:
                self._fail(PROTOCOL_ERROR, f"no HTTP/2 handshake within "
                           f"{self._limits.handshake_timeout_s:g} s")  # fmt: skip
        elif now - self._last_active > self._limits.idle_timeout_s:
            if not self._streams:
                self.shutdown()
            elif all(stream.outbox for stream in self._streams.values()):
                self._fail(NO_ERROR, "answers held back by a window the peer never opened")

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

    def _drop(self, stream: _S, *, cancel: bool = False) -> None:
        """The stream is gone: forget it, and tell the subclass."""
        if self._streams.pop(stream.id, None) is None:
            return
        self._blocked.pop(stream.id, None)
        stream.done = True
        stream.outbox.clear()
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None
        self._dropped(stream, cancel=cancel)
        if self._is_going_away and not self._streams:  # _close_if_idle, written out
            self._close()

    def _close_if_idle(self) -> None:
        if self._is_going_away and not self._streams:
            self._close()

    def _fail(self, code: int, message: str, *, linger: bool = True) -> None:
        """A connection error (§5.4.1): GOAWAY with the reason, then close.

        What the peer still sends is read and dropped for a moment before the close
        (``linger``): a socket closed with unread data is reset, and a reset can discard
        the GOAWAY before the peer reads why.
        """
        logger.debug("closing an HTTP/2 connection: %s", message)
        transport = self._transport
        if transport is None:
            return
        payload = struct.pack(">II", self._last_stream_id, code) + message.encode()[:256]
        self._write(frame(GOAWAY, 0, 0, payload))
        self.flush_out()
        self._transport = None  # nothing more is read or written
        self._buffer.clear()
        for stream in list(self._streams.values()):
            self._drop(stream, cancel=True)
        if transport.can_write_eof():
            transport.write_eof()
        if linger:
            transport.resume_reading()  # a peer that stopped reading may be paused
            self._loop.call_later(_LINGER_S, _close_now, transport)
        else:
            _close_now(transport)


def _close_now(transport: asyncio.Transport) -> None:
    """Close, without waiting for a peer that does not read to take what is left."""
    if transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()

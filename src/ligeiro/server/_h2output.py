"""The sending half of a server-side HTTP/2 connection (ADR 0007): streams and their answers.

``H2Output`` queues frames and has them written once per loop pass (``flush_soon``),
and sends each stream's answer as the peer's windows and frame size allow: what does not
fit waits in the stream's ``outbox`` until a WINDOW_UPDATE or SETTINGS lets it go.
``H2Connection`` (``_h2connection.py``) is the receiving half and the rest of the
protocol; it says when a stream goes (``_drop``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

from ._h2wire import (
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    NO_ERROR,
    RESPONSE_HEADERS,
    RST_STREAM,
    frame,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["H2Output", "H2Stream"]


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


class H2Output(Generic[_S]):
    """What a connection sends: frames queued per loop pass, answers within the windows.

    Args:
        flush_soon: called with the connection when it queues frames after its last
            flush; whoever it is calls ``flush_out`` before the loop waits again.
    """

    def __init__(self, flush_soon: Callable[[H2Output[_S]], None]) -> None:
        self._flush_soon = flush_soon
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _S] = {}
        self._send_window = DEFAULT_WINDOW  # the peer's, for what we send
        self._max_frame = 16_384
        self._blocked: dict[int, _S] = {}  # streams with data waiting for window
        self._out: list[bytes] = []  # frames queued since the last flush

    def _drop(self, stream: _S, *, cancel: bool = False) -> None:
        raise NotImplementedError

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

"""HTTP/1.1 connections: httptools parses, ``HttpApp`` answers, in request order.

A connection enforces the ``[http]`` limits while the bytes arrive, so that a hostile
client costs a bounded amount of memory and time:

- the request target (``max_url_bytes``, 414) and the head (``max_header_bytes``, 431):
  counted as each read arrives, before httptools (which buffers a header line whole)
  holds more than one read past the limit; header fields (``max_headers``, 431);
- the head within ``header_timeout_s`` of its first byte (and a new connection's first
  request within it of the accept), the whole request within ``request_timeout_s``, no
  silence longer than ``receive_timeout_s``: 408 past any of them. Total times, so a
  byte a second (slowloris) does not keep a request alive;
- ``max_connections`` per worker (one more gets 503 and is closed), ``max_pipelined``
  requests ahead of their answers (reading pauses), ``max_requests_per_connection``;
- the body: ``max_request_bytes``, and ``max_json_bytes`` for one without binary tensor
  data (413, before the body is read).

Answers: once a pass of the event loop has read every ready connection, one callback
computes all the answers due (``Connections.run_due``), then writes them, each
connection's in request order; an answer that has to wait goes on as a task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, final

import httptools
import msgspec

from . import eager

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ..settings import HttpSettings
    from .http import HttpApp

__all__ = ["Connections", "HttpConnection"]

logger = logging.getLogger(__name__)

_SWEEP_INTERVAL_S = 1.0
# At shutdown an idle keep-alive connection stays open this long for the request its
# client may be sending at that moment (answered with Connection: close), instead of
# being closed under it.
_SHUTDOWN_IDLE_S = 0.5
_CLOSE = b"connection: close\r\n"
# The lengths of the header names ``HttpConnection._note`` reads: content-length, expect,
# inference-header-content-length, traceparent, tracestate, content-encoding, authorization.
_NOTED_SIZES = frozenset(map(len, (
    b"content-length", b"expect", b"inference-header-content-length", b"traceparent",
    b"tracestate", b"content-encoding", b"authorization",
)))  # fmt: skip


def _closing(answer: bytes) -> bytes:
    """A keep-alive answer with ``Connection: close`` added after its status line."""
    end = answer.index(b"\r\n") + 2
    return b"".join((answer[:end], _CLOSE, answer[end:]))


async def _refused(answer: bytes) -> bytes:
    return answer


class _Refused(Exception):
    """Raised in a parser callback to stop parsing and answer ``status``, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Due(msgspec.Struct):
    """One request's answer, from parsed to written: its coroutine until it runs, then
    its task if it had to wait, then the answer (``None`` once cancelled).

    A msgspec struct: made in C, once a request, where a class with ``__init__`` costs
    a Python call (ADR 0009).
    """

    call: Coroutine[Any, Any, bytes] | None
    keep_alive: bool
    task: asyncio.Task[bytes] | None = None
    answer: bytes | None = None
    done: bool = False


@final
class Connections(set["HttpConnection"]):
    """A server's open connections: closes stalled and idle ones, tells when none is left.

    ``empty`` is set whenever the last connection closes (the shutdown drain waits on
    it); after ``shutdown``, a connection that opens (accepted as shutdown began) is
    shut down as it opens. Once a second a timer closes keep-alive connections idle for
    longer than ``keep_alive_timeout_s`` and answers 408 to requests past their time
    limits: one timer for all connections, none per request.
    """

    def __init__(self, settings: HttpSettings) -> None:
        super().__init__()
        self.settings = settings
        self.empty = asyncio.Event()
        self.empty.set()
        self._timer: asyncio.TimerHandle | None = None
        self.closing = False
        # The answers this pass of the loop computes (run_due), in arrival order.
        self.due: list[tuple[HttpConnection, _Due]] = []

    def add(self, connection: HttpConnection) -> None:
        super().add(connection)
        self.empty.clear()
        if self.closing:
            connection.shutdown()

    def shutdown(self) -> None:
        """Shut every connection down (``HttpConnection.shutdown``), and any that opens."""
        self.closing = True
        for connection in list(self):
            connection.shutdown()

    def run_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Compute the answers of this pass of the loop (``due``), then write them.

        Called once a pass, after the loop has read every connection's data
        (``HttpConnection._answer`` schedules it): the reads of a pass, then its answers,
        each run as a batch keep each one's code in the CPU's caches.
        """
        batch, self.due = self.due, []
        for connection, due in batch:
            # Up to its first real wait (eager.start); written below, or when it ends.
            call, due.call = due.call, None
            if call is None:
                continue  # the connection went away meanwhile
            task, answer = eager.start(loop, call)
            if task is None:
                due.answer, due.done = answer, True
            else:
                due.task = task
                task.add_done_callback(partial(connection.finished, due))
        now = loop.time()
        for connection, _ in batch:  # then the writes, together
            connection.write_answers(now)

    def abort(self) -> int:
        """Close every connection at once, mid-request or not; how many there were."""
        count = len(self)
        for connection in list(self):
            connection.abort()
        return count

    def discard(self, connection: object) -> None:
        super().discard(connection)
        if not self:
            self.empty.set()

    def start_sweeping(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(_SWEEP_INTERVAL_S, self._sweep, loop)

    def stop_sweeping(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for connection in list(self):
            connection.expire(now, self.settings)
        self._timer = loop.call_later(_SWEEP_INTERVAL_S, self._sweep, loop)


@final
class HttpConnection(asyncio.Protocol):
    """One client connection: parse with httptools, answer in order, drain on shutdown."""

    __slots__ = (
        "_app", "_authorization", "_began", "_body", "_body_limit", "_body_max", "_client",
        "_connections", "_content_encoding", "_content_length", "_denied",
        "_expect_continue", "_head_limit", "_head_reads", "_head_size", "_header_length",
        "_headers", "_headers_limit", "_in_head", "_json_limit", "_loop", "_parser",
        "_pending", "_pipelined", "_reading_paused", "_requests",
        "_requests_limit", "_settings", "_size", "_too_large", "_traceparent",
        "_tracestate", "_transport", "_url", "_url_limit", "_writing_paused", "is_closing",
        "is_receiving", "last_active",
    )  # fmt: skip

    def __init__(self, app: HttpApp, connections: Connections) -> None:
        self._app = app
        settings = self._settings = app.settings
        # The limits, as plain attributes: the parser callbacks read them every request.
        self._url_limit = settings.max_url_bytes
        self._head_limit = settings.max_header_bytes
        self._headers_limit = settings.max_headers
        self._body_max = settings.max_request_bytes
        self._json_limit = min(settings.max_request_bytes, settings.max_json_bytes)
        self._body_limit = self._json_limit  # this request's (on_headers_complete)
        self._requests_limit = settings.max_requests_per_connection
        self._pipelined = settings.max_pipelined
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        # Answers being computed, oldest first, with their keep-alive flag.
        self._pending: deque[_Due] = deque()
        self._url = b""
        self._body: list[bytes] = []
        self._size = 0
        self._content_length = 0
        self._expect_continue = False
        self._header_length: bytes | None = None
        self._content_encoding: bytes | None = None
        self._authorization: bytes | None = None
        self._traceparent: bytes | None = None
        self._tracestate: bytes | None = None
        self._too_large = False
        self._denied: bytes | None = None
        self._writing_paused = False
        self._reading_paused = False  # by _update_reading
        self._client = ""
        self._in_head = False
        self._head_size = 0  # the header fields parsed so far
        self._head_reads = 0  # the reads that ended inside the head
        self._headers = 0
        self._requests = 0
        self.is_receiving = False
        self.is_closing = False
        self.last_active = self._began = self._loop.time()

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        limit = self._settings.max_connections
        if len(self._connections) >= limit:
            # Answered and closed: a client gets a reason rather than a reset.
            self._fail(503, f"this worker has its limit of {limit} connections open; retry")
            return
        self._connections.add(self)
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, tuple) else ""

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        for due in self._pending:
            if due.task is not None:
                due.task.cancel()
            elif due.call is not None:
                due.call.close()  # never started
                due.call = None
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrade is not supported")
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._fail(refused.status, refused.message)
            else:
                self._fail(400, f"malformed HTTP request: {exc}")
            return
        if self._in_head:
            # The head is not complete after this read: count it whole. A long header
            # line sits in httptools' buffer until it ends, so it is cut here, one read
            # past the limit at most, rather than once it is all in memory. (The read
            # the head began in is not counted: it may hold the end of a request before.)
            self._head_reads += len(data) if self._head_reads >= 0 else 1
            limit = self._head_limit
            if self._head_reads > limit or self._head_size > limit:
                self._fail(431, f"request head over the limit of {limit} bytes")

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # -- httptools callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:
        self.is_receiving = True
        self._in_head = True
        self._began = self.last_active  # when the read this request starts in arrived
        self._head_size = 0
        self._head_reads = -1  # the read this head starts in is not counted
        self._headers = 0
        self._url = b""
        self._body = []
        self._size = 0
        self._content_length = 0
        self._expect_continue = False
        self._header_length = None
        self._traceparent = None
        self._tracestate = None
        self._content_encoding = None
        self._authorization = None
        self._too_large = False
        self._denied = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._url_limit:
            raise _Refused(414, f"request target over the limit of {self._url_limit} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The count is held to its limit here, so that a read full of tiny headers
        # costs at most max_headers calls; the head's size once a read (data_received)
        # and when the head ends (on_headers_complete): the read is in memory already.
        self._headers += 1
        if self._headers > self._headers_limit:
            raise _Refused(431, f"more than {self._headers_limit} header fields")
        size = len(name)
        self._head_size += size + len(value) + 4
        # Only seven headers matter here: one set test by length skips the others.
        if size in _NOTED_SIZES:
            if size == 14 and name.lower() == b"content-length":  # inline: nearly every request
                self._content_length = int(value) if value.isdigit() else 0
            else:
                self._note(size, name, value)

    def _note(self, size: int, name: bytes, value: bytes) -> None:
        """Keep ``name: value`` if it is one of the rare headers read here."""
        if size == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        elif size == 31 and name.lower() == b"inference-header-content-length":
            self._header_length = value  # the binary tensor extension; the codec parses it
        elif size == 11 and name.lower() == b"traceparent":  # W3C trace context, for tracing
            self._traceparent = value
        elif size == 10 and name.lower() == b"tracestate":
            self._tracestate = value
        elif size == 16 and name.lower() == b"content-encoding":
            value = value.strip().lower()
            self._content_encoding = None if value == b"identity" else value
        elif size == 13 and name.lower() == b"authorization":  # a bearer token
            self._authorization = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_size > self._head_limit:
            raise _Refused(431, f"request head over the limit of {self._head_limit} bytes")
        app = self._app
        if app.access.is_guarding:
            # Tokens and rate before the body: a refused request's body is read past,
            # never kept, and its answer waits its turn behind the ones before it.
            self._denied = app.admit(self._url, self._authorization, self._client)
            if self._denied is not None:
                return
        limit = self._json_limit
        if self._header_length is not None or self._content_encoding is not None:
            limit = self._body_max  # binary data, or compressed (held to the JSON limit decoded)
        self._body_limit = limit
        if self._content_length > limit:
            self._reject_too_large(self._content_length)
        elif self._expect_continue and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._too_large or self._denied is not None:
            return
        self._size += len(body)
        if self._size > self._body_limit:  # chunked bodies have no length
            self._reject_too_large(self._size)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.is_receiving = False
        transport = self._transport
        if self._too_large or transport is None or transport.is_closing():
            return
        self._requests += 1
        app = self._app
        if self._denied is not None:
            self._answer(_refused(self._denied), False)
            return
        keep_alive = (
            self._parser.should_keep_alive()
            and not self.is_closing
            and not self._connections.closing  # a stop signal just arrived
            and self._requests < self._requests_limit
        )
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        answer = app.handle(
            self._parser.get_method(),
            self._url,
            body,
            keep_alive,
            self._header_length,
            self._traceparent,
            self._tracestate,
            self._content_encoding,
            self._authorization,
        )
        self._answer(answer, keep_alive)

    # -- helpers -------------------------------------------------------------------

    def _answer(self, answer: Coroutine[Any, Any, bytes], keep_alive: bool) -> None:
        """Queue ``answer``: it is computed once this pass of the loop has read every
        connection (``Connections.run_due``) and written in its turn.

        Not here, inside the read: that measured 1.57x slower under wrk c=16 (ADR 0009);
        the reads of a pass, then its answers, each run as a batch keep each one's code
        in the CPU's caches. Not as a task either, unless it has to wait.
        """
        due = _Due(answer, keep_alive)
        self._pending.append(due)
        connections = self._connections
        if not connections.due:
            # The connection's loop, not get_running_loop(): that one makes a getpid
            # system call (its fork check), measured at 1.7 % of a worker's time.
            self._loop.call_soon(connections.run_due, self._loop)
        connections.due.append((self, due))
        if len(self._pending) == self._pipelined or not keep_alive:
            self._update_reading()

    def finished(self, due: _Due, task: asyncio.Task[bytes]) -> None:
        """``due``'s task ended (``Connections.run_due`` made it): write what is due."""
        due.answer, due.done = (None if task.cancelled() else task.result()), True
        self.write_answers(self._loop.time())

    def write_answers(self, now: float) -> None:
        """Write every finished answer at the head of the queue, in request order;
        ``now`` is the loop's time."""
        pending = self._pending
        transport = self._transport
        while pending and pending[0].done:
            due = pending.popleft()
            answer, keep_alive = due.answer, due.keep_alive
            if answer is None:  # cancelled
                continue
            if transport is None or transport.is_closing():
                return
            if keep_alive and self.is_closing and not pending and not self.is_receiving:
                # Computed before shutdown began, and the last: the client must not
                # send another request on a connection that closes now.
                answer, keep_alive = _closing(answer), False
            transport.write(answer)
            self.last_active = now
            if not keep_alive:
                transport.close()
                return
        if self._reading_paused and len(pending) < self._pipelined:
            # One read can queue more than the limit (the parser takes it all): resume
            # once below it, not at exactly one under, which a drain can step over.
            self._update_reading()

    def _update_reading(self) -> None:
        # Stop reading a client that does not read its answers or pipelines too far
        # ahead: memory per connection stays bounded. After the last request a
        # connection may carry, nothing more is read.
        if self._transport is None or self._transport.is_closing():
            return
        self._reading_paused = (
            self._writing_paused
            or len(self._pending) >= self._pipelined
            or self._requests >= self._requests_limit
        )
        if self._reading_paused:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    def _reject_too_large(self, size: int) -> None:
        # Answer before reading the body, then close: the rest of it is never read.
        self._too_large = True
        limit = self._body_max
        if self._header_length is None and self._content_encoding is None:
            limit = self._json_limit
        kind = "JSON request body" if limit < self._body_max else "request body"
        self._fail(413, f"{kind} of {size} bytes is over the limit of {limit} bytes")

    def _fail(self, status: int, message: str) -> None:
        self._in_head = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(self._app.error(status, message, keep_alive=False))
            self._transport.close()

    def expire(self, now: float, settings: HttpSettings) -> None:
        """Close if idle too long; answer 408 to a request past one of its time limits."""
        if self.is_receiving:
            if self._in_head and now - self._began > settings.header_timeout_s:
                self._fail(408, f"request head incomplete after {settings.header_timeout_s:g} s")
            elif now - self._began > settings.request_timeout_s:
                self._fail(408, f"request incomplete after {settings.request_timeout_s:g} s")
            elif now - self.last_active > settings.receive_timeout_s:
                self._fail(
                    408, f"request incomplete after {settings.receive_timeout_s:g} s of silence"
                )
        elif self._pending or self._transport is None:
            return
        elif self._requests == 0 and now - self._began > settings.header_timeout_s:
            self._transport.close()  # connected, and sent no request in time
        elif now - self.last_active > settings.keep_alive_timeout_s:
            self._transport.close()

    def shutdown(self) -> None:
        """Stop keeping alive: the last answer (to a request computed, being received, or
        arriving within ``_SHUTDOWN_IDLE_S`` on an idle connection) carries
        ``Connection: close``, and the connection closes after it; an idle connection
        that gets no request in that time is closed then."""
        self.is_closing = True
        if not self.is_receiving and not self._pending and self._transport is not None:
            self._loop.call_later(_SHUTDOWN_IDLE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if not self.is_receiving and not self._pending and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

"""Open-loop HTTP/1.1 load: requests leave at a constant rate, whatever the answers.

wrk and h2load run a closed loop: each connection sends its next request only when the
last one is answered, so a server that slows down is sent less, and an overloaded
server is never overloaded. This generator schedules request ``i`` at ``start + i /
rate`` and sends it then, answered or not, which is what clients on the Internet do.

How requests meet connections (the choice that matters for honesty):

- Connections are HTTP/1.1 keep-alive, opened on demand up to ``connections`` (default
  512) and reused; one request at a time on each (no pipelining: a server may answer
  pipelined requests in order only, which would turn one slow answer into many).
- A request that falls due while every connection is busy and the pool is at its limit
  is **not sent** and counted apart (``not_sent``), rather than queued in the client,
  where its wait would look like the server's. So ``sent / duration`` is the rate the
  server was really offered; a caller that wants an honest overload test checks that
  it is close to the target (``bench_overload`` requires 90 %).
- Latency runs from the request's scheduled time, not from when it left, so a late
  client does not hide its own delay (no coordinated omission); ``send_lag`` tells how
  late requests left.
- A request unanswered after ``timeout_s`` (default 10 s) is counted as **hung** and its
  connection closed; a connection that fails or closes mid-request counts an **error**.

It runs on uvloop with ``asyncio.Protocol`` connections and parses only the status line
and ``Content-Length``: enough for a few thousand requests per second from one core. A
sleep-and-catch-up loop sends every request that is due, so timer granularity (about
1 ms) delays requests a little but never drops or thins them.

``ClosedLoop`` is the other discipline on the same connections: ``concurrency``
connections, each sending its next request as soon as the last is answered (wrk's and
perf_analyzer's way); its latency runs from the send. ``OpenLoop.schedule_s`` replaces
the constant rate by any schedule (``ligeiro bench --stages`` ramps with it). Each
finished request leaves an ``Event`` (scheduled offset, outcome, latency), so a caller
can cut one run into stages after the fact.

Run: ``python -m ligeiro.bench._openloop URL --rate 2000 --duration 10 --body payload.json
[--body other.json:1] [--connections 512] [--timeout 10] [--json PATH]``
(``--body FILE:WEIGHT`` mixes bodies: ``a.json:9 b.json:1`` sends ``b`` every tenth).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import re
import statistics
import sys
import time
import urllib.parse
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, cast

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "HUNG",
    "NOT_SENT",
    "TRANSPORT_ERROR",
    "ClosedLoop",
    "Event",
    "OpenLoop",
    "OpenLoopResult",
    "http_request",
    "main",
    "percentile",
    "run_closed_loop",
    "run_open_loop",
]

_CONTENT_LENGTH: Final = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CLOSE: Final = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
_SWEEP_S: Final = 0.1
_MIN_SLEEP_S: Final = 0.001
_RECONNECT_DELAY_S: Final = 0.01
# Event outcomes that are not an HTTP status.
TRANSPORT_ERROR: Final = 0  # the connection failed or closed before the answer
HUNG: Final = -1  # no answer within timeout_s
NOT_SENT: Final = -2  # open loop: due while every connection was busy
# (offset of the scheduled send from the run's start in s, status or outcome, latency ms)
Event = tuple[float, int, float]


def http_request(url: str, body: bytes, content_type: str = "application/json") -> bytes:
    """The raw bytes of one HTTP/1.1 POST of ``body`` to ``url`` (keep-alive)."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = (
        f"POST {path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (``fraction`` in [0, 1]); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@dataclass(frozen=True)
class OpenLoop:
    """What to send, where, and how fast.

    ``requests`` are raw HTTP/1.1 requests (``http_request``), sent in turn: request
    ``i`` is ``requests[i % len(requests)]``.
    """

    host: str
    port: int
    requests: Sequence[bytes]
    rate_per_s: float
    duration_s: float
    connections: int = 512
    timeout_s: float = 10.0
    # Send offsets in s from the start, ascending; when given, they replace the rate.
    schedule_s: Sequence[float] | None = None


@dataclass(frozen=True)
class ClosedLoop:
    """``concurrency`` connections, each sending its next request when the last is answered."""

    host: str
    port: int
    requests: Sequence[bytes]
    concurrency: int
    duration_s: float
    timeout_s: float = 10.0


@dataclass
class OpenLoopResult:
    """Everything one open-loop run counted. Latencies are in ms, from the scheduled time."""

    target_rate_per_s: float
    duration_s: float
    scheduled: int = 0
    sent: int = 0
    not_sent: int = 0  # due while every connection was busy and the pool was full
    answered: Counter[int] = field(default_factory=Counter)  # status -> count
    hung: int = 0  # no answer within timeout_s
    errors: int = 0  # connection failed or closed before the answer
    latencies_ms: dict[int, list[float]] = field(default_factory=dict)  # status -> latencies
    send_lag_ms: list[float] = field(default_factory=list)
    connections_opened: int = 0
    send_window_s: float = 0.0  # first to last send
    client_cpu_s: float = 0.0
    events: list[Event] = field(default_factory=list)  # one per scheduled request

    @property
    def send_rate_per_s(self) -> float:
        """Requests really sent per second of the schedule."""
        return self.sent / self.duration_s if self.duration_s else 0.0

    def summary(self) -> dict[str, object]:
        """The counts and percentiles, without the per-request lists (for JSON)."""
        out: dict[str, object] = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("latencies_ms", "send_lag_ms", "answered", "events")
        }
        out["answered"] = {str(k): v for k, v in sorted(self.answered.items())}
        out["send_rate_per_s"] = self.send_rate_per_s
        out["latency_ms"] = {
            str(status): {
                "p50": percentile(values, 0.5),
                "p99": percentile(values, 0.99),
                "max": max(values),
                "mean": statistics.fmean(values),
            }
            for status, values in sorted(self.latencies_ms.items())
            if values
        }
        out["send_lag_ms"] = {
            "p50": percentile(self.send_lag_ms, 0.5),
            "p99": percentile(self.send_lag_ms, 0.99),
            "max": max(self.send_lag_ms, default=float("nan")),
        }
        return out


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying at most one request at a time."""

    def __init__(self, pool: _Pool | _ClosedPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.scheduled_at: float | None = None  # the in-flight request's scheduled time
        self.pending: bytes | None = None  # to send once connected
        self.is_closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = cast("asyncio.Transport", transport)
        if self.pending is not None:
            self.transport.write(self.pending)
            self.pending = None

    def send(self, request: bytes, scheduled_at: float) -> None:
        self.scheduled_at = scheduled_at
        self.buffer.clear()
        if self.transport is None:
            self.pending = request
        else:
            self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.scheduled_at is None:
            return
        head = bytes(self.buffer[: end + 2])
        length = _CONTENT_LENGTH.search(head)
        if length is None:  # chunked or close-delimited: not what a V2 server sends
            self.fail()
            return
        if len(self.buffer) < end + 4 + int(length[1]):
            return
        status = int(head[9:12])
        scheduled_at, self.scheduled_at = self.scheduled_at, None
        self.pool.answered(self, status, scheduled_at, keep=_CLOSE.search(head) is None)

    def fail(self, *, hung: bool = False) -> None:
        """The in-flight request failed (connection error or unreadable answer)."""
        if self.scheduled_at is not None:
            scheduled_at, self.scheduled_at = self.scheduled_at, None
            self.pool.failed(scheduled_at, HUNG if hung else TRANSPORT_ERROR)
        self.close()

    def time_out(self) -> None:
        """The in-flight request hung: count it and drop the connection."""
        self.fail(hung=True)

    def close(self) -> None:
        if not self.is_closing:
            self.is_closing = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail()


class _Target(Protocol):
    """Where a pool connects (both run configurations have these)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class _Accounting:
    """What both pools share: connecting, failures into the result, the timeout sweep."""

    config: _Target
    loop: asyncio.AbstractEventLoop
    result: OpenLoopResult
    busy: set[_Connection]
    timeout_s: float
    start: float  # the run's start on the monotonic clock

    async def _connect(self, connection: _Connection) -> None:
        try:
            await self.loop.create_connection(
                lambda: connection, self.config.host, self.config.port
            )
        except OSError:
            connection.fail()

    def failed(self, scheduled_at: float, outcome: int) -> None:
        if outcome == HUNG:
            self.result.hung += 1
        else:
            self.result.errors += 1
        latency_ms = (time.monotonic() - scheduled_at) * 1e3
        self.result.events.append((scheduled_at - self.start, outcome, latency_ms))

    def sweep(self, now: float) -> None:
        """Time out requests older than ``timeout_s``."""
        for connection in list(self.busy):
            started = connection.scheduled_at
            if started is not None and now - started > self.timeout_s:
                connection.time_out()


class _Pool(_Accounting):
    """Idle and busy connections, capped at ``limit``; the result they fill in."""

    config: OpenLoop

    def __init__(self, config: OpenLoop, result: OpenLoopResult) -> None:
        self.config = config
        self.result = result
        self.timeout_s = config.timeout_s
        self.idle: deque[_Connection] = deque()
        self.busy: set[_Connection] = set()
        self.loop = asyncio.get_running_loop()
        self.start = 0.0  # the run's start on the monotonic clock

    def send(self, request: bytes, scheduled_at: float) -> bool:
        """Send on an idle connection, or a new one; False when the pool is full."""
        if self.idle:
            connection = self.idle.pop()  # the most recently used: warm, surely open
        elif len(self.busy) < self.config.connections:
            connection = _Connection(self)
            self.result.connections_opened += 1
            self.loop.create_task(self._connect(connection))
        else:
            return False
        self.busy.add(connection)
        connection.send(request, scheduled_at)
        return True

    def answered(
        self, connection: _Connection, status: int, scheduled_at: float, *, keep: bool
    ) -> None:
        self.result.answered[status] += 1
        latency_ms = (time.monotonic() - scheduled_at) * 1e3
        self.result.latencies_ms.setdefault(status, []).append(latency_ms)
        self.result.events.append((scheduled_at - self.start, status, latency_ms))
        self.busy.discard(connection)
        if keep:
            self.idle.append(connection)
        else:
            connection.close()

    def forget(self, connection: _Connection) -> None:
        self.busy.discard(connection)
        with contextlib.suppress(ValueError):
            self.idle.remove(connection)

    def close_all(self) -> None:
        for connection in [*self.idle, *self.busy]:
            connection.close()


async def _run(config: OpenLoop) -> OpenLoopResult:
    result = OpenLoopResult(config.rate_per_s, config.duration_s)
    pool = _Pool(config, result)
    if config.schedule_s is not None:
        offsets: Sequence[float] | _Constant = config.schedule_s
    else:
        offsets = _Constant(config.rate_per_s, config.duration_s)
    total = len(offsets)
    cpu_before = time.process_time()
    start = time.monotonic() + 0.05  # a moment to settle before the first request
    pool.start = start
    next_sweep = start
    first_send = last_send = start
    index = 0
    while index < total:
        now = time.monotonic()
        # Send everything due: after a late wake-up this catches up at once.
        while index < total and (scheduled_at := start + offsets[index]) <= now:
            request = config.requests[index % len(config.requests)]
            index += 1
            result.scheduled += 1
            if pool.send(request, scheduled_at):
                result.sent += 1
                result.send_lag_ms.append((now - scheduled_at) * 1e3)
                if result.sent == 1:
                    first_send = now
                last_send = now
            else:
                result.not_sent += 1
                result.events.append((offsets[index - 1], NOT_SENT, 0.0))
        if now >= next_sweep:
            pool.sweep(now)
            next_sweep = now + _SWEEP_S
        if index < total:
            # Never less than the timer's resolution: a shorter sleep returns at once and
            # the loop would spin, taking the core the answers need.
            await asyncio.sleep(max(_MIN_SLEEP_S, start + offsets[index] - time.monotonic()))
    # Wait for the last answers; the sweep turns anything older than timeout_s into hung.
    while pool.busy:
        await asyncio.sleep(_SWEEP_S)
        pool.sweep(time.monotonic())
    pool.close_all()
    result.send_window_s = last_send - first_send
    result.client_cpu_s = time.process_time() - cpu_before
    return result


def run_open_loop(config: OpenLoop) -> OpenLoopResult:
    """Run ``config`` on a fresh uvloop event loop (asyncio's own when uvloop is missing).

    Returns:
        The counts, latencies and send lags of every scheduled request.
    """
    return _run_loop(_run(config))


def run_closed_loop(config: ClosedLoop) -> OpenLoopResult:
    """Run ``config`` like ``run_open_loop``; latencies run from each send.

    Returns:
        The counts and latencies of every request sent (``target_rate_per_s`` is 0).
    """
    return _run_loop(_run_closed(config))


def _run_loop(coroutine: Coroutine[object, object, OpenLoopResult]) -> OpenLoopResult:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


class _Constant:
    """The offsets ``i / rate`` for ``duration_s``, as a sequence computed on demand."""

    def __init__(self, rate_per_s: float, duration_s: float) -> None:
        self.interval_s = 1.0 / rate_per_s
        self.total = math.floor(duration_s * rate_per_s)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> float:
        return index * self.interval_s


class _ClosedPool(_Accounting):
    """``concurrency`` connections that each send again as soon as they are answered."""

    config: ClosedLoop

    def __init__(self, config: ClosedLoop, result: OpenLoopResult) -> None:
        self.config = config
        self.result = result
        self.timeout_s = config.timeout_s
        self.busy: set[_Connection] = set()
        self.loop = asyncio.get_running_loop()
        self.start = 0.0
        self.end = 0.0
        self.index = 0

    def open(self) -> None:
        """Open one connection and send its first request (if the run is not over)."""
        if self.loop.time() >= self.end:
            return
        connection = _Connection(self)
        self.result.connections_opened += 1
        self.loop.create_task(self._connect(connection))
        self._send(connection)

    def _send(self, connection: _Connection) -> None:
        request = self.config.requests[self.index % len(self.config.requests)]
        self.index += 1
        self.result.scheduled += 1
        self.result.sent += 1
        self.busy.add(connection)
        connection.send(request, time.monotonic())

    def answered(
        self, connection: _Connection, status: int, scheduled_at: float, *, keep: bool
    ) -> None:
        now = time.monotonic()
        self.result.answered[status] += 1
        latency_ms = (now - scheduled_at) * 1e3
        self.result.latencies_ms.setdefault(status, []).append(latency_ms)
        self.result.events.append((scheduled_at - self.start, status, latency_ms))
        if not keep:
            connection.close()  # forget() opens its replacement
        elif now < self.end:
            self._send(connection)
        else:
            self.busy.discard(connection)
            connection.close()

    def forget(self, connection: _Connection) -> None:
        if connection in self.busy:
            self.busy.discard(connection)
            # A refused connection would otherwise be retried in a tight loop.
            self.loop.call_later(_RECONNECT_DELAY_S, self.open)


async def _run_closed(config: ClosedLoop) -> OpenLoopResult:
    result = OpenLoopResult(0.0, config.duration_s)
    pool = _ClosedPool(config, result)
    cpu_before = time.process_time()
    pool.start = time.monotonic()
    pool.end = pool.loop.time() + config.duration_s
    for _ in range(config.concurrency):
        pool.open()
    while pool.busy or pool.loop.time() < pool.end:
        await asyncio.sleep(_SWEEP_S)
        pool.sweep(time.monotonic())
    for connection in list(pool.busy):
        connection.close()
    result.send_window_s = config.duration_s
    result.client_cpu_s = time.process_time() - cpu_before
    return result


def _body(spec: str) -> tuple[bytes, int]:
    path, _, weight = spec.partition(":")
    return Path(path).read_bytes(), int(weight or 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="http://HOST:PORT/path to POST to")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument(
        "--body",
        action="append",
        required=True,
        help="FILE[:WEIGHT] to POST; repeat to mix bodies in proportion to their weights",
    )
    parser.add_argument("--connections", type=int, default=512, help="pool limit (default 512)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before 'hung'")
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args(argv)
    parts = urllib.parse.urlsplit(args.url)
    if parts.scheme != "http" or parts.hostname is None:
        parser.error(f"expected an http://HOST:PORT/path URL, got {args.url}")
    requests = [
        http_request(args.url, body)
        for body, weight in map(_body, args.body)
        for _ in range(weight)
    ]
    result = run_open_loop(
        OpenLoop(
            host=parts.hostname,
            port=parts.port or 80,
            requests=requests,
            rate_per_s=args.rate,
            duration_s=args.duration,
            connections=args.connections,
            timeout_s=args.timeout,
        )
    )
    summary = result.summary()
    text = json.dumps(summary, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

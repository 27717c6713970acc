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

Run: ``python -m benchmarks._openloop URL --rate 2000 --duration 10 --body payload.json
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
from typing import TYPE_CHECKING, Final, cast

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

__all__ = ["OpenLoop", "OpenLoopResult", "http_request", "percentile", "run_open_loop"]

_CONTENT_LENGTH: Final = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CLOSE: Final = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
_SWEEP_S: Final = 0.1
_MIN_SLEEP_S: Final = 0.001


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

    @property
    def send_rate_per_s(self) -> float:
        """Requests really sent per second of the schedule."""
        return self.sent / self.duration_s if self.duration_s else 0.0

    def summary(self) -> dict[str, object]:
        """The counts and percentiles, without the per-request lists (for JSON)."""
        out: dict[str, object] = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("latencies_ms", "send_lag_ms", "answered")
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

    def __init__(self, pool: _Pool) -> None:
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

    def fail(self) -> None:
        """The in-flight request failed (connection error or unreadable answer)."""
        if self.scheduled_at is not None:
            self.scheduled_at = None
            self.pool.result.errors += 1
        self.close()

    def time_out(self) -> None:
        """The in-flight request hung: count it and drop the connection."""
        self.scheduled_at = None
        self.pool.result.hung += 1
        self.close()

    def close(self) -> None:
        if not self.is_closing:
            self.is_closing = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail()


class _Pool:
    """Idle and busy connections, capped at ``limit``; the result they fill in."""

    def __init__(self, config: OpenLoop, result: OpenLoopResult) -> None:
        self.config = config
        self.result = result
        self.idle: deque[_Connection] = deque()
        self.busy: set[_Connection] = set()
        self.loop = asyncio.get_running_loop()

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

    async def _connect(self, connection: _Connection) -> None:
        try:
            await self.loop.create_connection(
                lambda: connection, self.config.host, self.config.port
            )
        except OSError:
            connection.fail()

    def answered(
        self, connection: _Connection, status: int, scheduled_at: float, *, keep: bool
    ) -> None:
        self.result.answered[status] += 1
        latency_ms = (time.monotonic() - scheduled_at) * 1e3
        self.result.latencies_ms.setdefault(status, []).append(latency_ms)
        self.busy.discard(connection)
        if keep:
            self.idle.append(connection)
        else:
            connection.close()

    def forget(self, connection: _Connection) -> None:
        self.busy.discard(connection)
        with contextlib.suppress(ValueError):
            self.idle.remove(connection)

    def sweep(self, now: float) -> None:
        """Time out requests older than ``timeout_s``."""
        for connection in list(self.busy):
            started = connection.scheduled_at
            if started is not None and now - started > self.config.timeout_s:
                connection.time_out()

    def close_all(self) -> None:
        for connection in [*self.idle, *self.busy]:
            connection.close()


async def _run(config: OpenLoop) -> OpenLoopResult:
    result = OpenLoopResult(config.rate_per_s, config.duration_s)
    pool = _Pool(config, result)
    interval_s = 1.0 / config.rate_per_s
    total = math.floor(config.duration_s * config.rate_per_s)
    cpu_before = time.process_time()
    start = time.monotonic() + 0.05  # a moment to settle before the first request
    next_sweep = start
    first_send = last_send = start
    index = 0
    while index < total:
        now = time.monotonic()
        # Send everything due: after a late wake-up this catches up at once.
        while index < total and (scheduled_at := start + index * interval_s) <= now:
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
        if now >= next_sweep:
            pool.sweep(now)
            next_sweep = now + _SWEEP_S
        if index < total:
            # Never less than the timer's resolution: a shorter sleep returns at once and
            # the loop would spin, taking the core the answers need.
            await asyncio.sleep(max(_MIN_SLEEP_S, start + index * interval_s - time.monotonic()))
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
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(config))
    return uvloop.run(_run(config))


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

"""Load: wrk runs, what wrk reports, and what a run cost the server.

``run_wrk`` drives wrk (closed loop, pinned to the load core) with a Lua script made
from one ``HttpRequest``; ``measure`` warms a server up, loads it and reads its CPU
time and peak memory around the measured run (``_harness.ServerProcess``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._harness import LOAD_CORE, BenchmarkError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._harness import HttpRequest, ServerProcess

__all__ = [
    "LoadResult",
    "Measurement",
    "measure",
    "measure_load",
    "parse_wrk",
    "run_wrk",
    "wrk_script",
    "wrk_seconds",
]


@dataclass(frozen=True)
class LoadResult:
    """What wrk reports for one closed-loop run at a fixed number of connections."""

    connections: int
    duration_s: float
    requests: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


@dataclass(frozen=True)
class Measurement:
    """A load run plus what it cost the server."""

    load: LoadResult
    cpu_us_per_request: float
    peak_rss_mib: float


def _lua_string(text: str) -> str:
    """A Lua string literal for ``text``: printable ASCII kept, every other byte escaped.

    Lua has no JSON-style ``\\uXXXX``; three-digit ``\\ddd`` escapes are exact for any
    byte and never run into a following digit.
    """
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def wrk_script(request: HttpRequest) -> str:
    """The Lua script that makes wrk send ``request`` (wrk's default is a bare GET)."""
    lines = [
        f"wrk.method = {_lua_string(request.method)}",
        f"wrk.body = {_lua_string(request.body.decode())}",
    ]
    lines += [
        f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}"
        for name, value in (request.headers or {}).items()
    ]
    return "\n".join(lines) + "\n"


_TIME_UNITS_MS: Final = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_PERCENTILE = re.compile(r"^\s*(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(output: str, connections: int) -> LoadResult:
    """Read throughput, latency percentiles and errors from ``wrk --latency`` output.

    Raises:
        BenchmarkError: the output lacks a field (wrk failed, or its format changed).
    """
    percentiles = {
        int(match[1]): float(match[2]) * _TIME_UNITS_MS[match[3]]
        for match in _PERCENTILE.finditer(output)
    }
    requests, rate = _REQUESTS.search(output), _RATE.search(output)
    if requests is None or rate is None or not {50, 90, 99} <= percentiles.keys():
        raise BenchmarkError(f"cannot read wrk's output:\n{output}")
    non_2xx = _NON_2XX.search(output)
    socket_errors = _SOCKET_ERRORS.search(output)
    return LoadResult(
        connections=connections,
        duration_s=float(requests[2]) * _TIME_UNITS_MS[requests[3]] / 1e3,
        requests=int(requests[1]),
        requests_per_s=float(rate[1]),
        p50_ms=percentiles[50],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(map(int, socket_errors.groups())) if socket_errors else 0,
    )


def wrk_seconds(duration_s: float) -> int:
    """How long ``run_wrk`` really loads for: wrk takes whole seconds, one at the least."""
    return max(1, round(duration_s))


def run_wrk(
    request: HttpRequest,
    *,
    connections: int,
    duration_s: float,
    core: int | str = LOAD_CORE,
    threads: int = 1,
) -> LoadResult:
    """Load ``request.url`` with wrk on ``threads`` threads pinned to ``core`` (or a CPU list).

    One thread keeps wrk on its own core; it sustains far more than one Python core
    serves, so it is never the bottleneck here. Loading several server cores takes a
    thread per load core. ``$WRK`` names the binary when it is not on PATH.

    Raises:
        BenchmarkError: wrk failed or printed something unreadable.
    """
    with tempfile.TemporaryDirectory(prefix="ligeiro-wrk-") as folder:
        script = Path(folder) / "post.lua"
        script.write_text(wrk_script(request))
        command = [
            "taskset", "-c", str(core),
            os.environ.get("WRK", "wrk"), f"-t{threads}", f"-c{connections}",
            f"-d{wrk_seconds(duration_s)}s",
            "--latency", "-s", str(script), request.url,
        ]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=duration_s + 60
        )
    if done.returncode != 0:
        raise BenchmarkError(f"wrk exited with {done.returncode}: {done.stderr or done.stdout}")
    return parse_wrk(done.stdout, connections)


def measure(
    server: ServerProcess,
    request: HttpRequest,
    *,
    connections: int,
    duration_s: float,
    warmup_s: float,
    load_core: int | str = LOAD_CORE,
) -> Measurement:
    """Warm the server up at ``connections``, then load it and read what the load cost.

    The warm-up runs at the measured concurrency so that thread pools, connection
    buffers and allocator arenas are sized for it before the clock starts; its requests
    are not counted. CPU time is read around the measured run only.
    """
    if warmup_s > 0:
        run_wrk(request, connections=connections, duration_s=warmup_s, core=load_core)
    return measure_load(
        server,
        lambda: run_wrk(request, connections=connections, duration_s=duration_s, core=load_core),
    )


def measure_load(server: ServerProcess, load_server: Callable[[], LoadResult]) -> Measurement:
    """Run one load (``load_server``, any generator) and read what it cost ``server``.

    Raises:
        BenchmarkError: the load failed, or the server exited under it.
    """
    cpu_before = server.cpu_s()
    load = load_server()
    cpu_used_s = server.cpu_s() - cpu_before
    server.check_running()
    return Measurement(
        load=load,
        cpu_us_per_request=cpu_used_s * 1e6 / load.requests if load.requests else float("nan"),
        peak_rss_mib=server.peak_rss_bytes() / 2**20,
    )

"""Reusable pieces for ligeiro's benchmarks: one machine, one server, one load generator.

The machine has two cores and is shared, so every run follows the same rules:

- the whole run holds an exclusive ``flock`` on ``/tmp/ligeiro-bench.lock``, so two
  benchmark runs never compete for the cores;
- the server under test is pinned to core 0 (``taskset -c 0``) and ``wrk`` to core 1,
  so the load generator never steals the server's CPU and every server gets one core;
- the server's CPU time and peak memory are read from ``/proc`` for its whole process
  tree, so a server that forks workers cannot hide their cost.

Nothing here knows about a particular model or server: a ``bench_*.py`` module says what
to start and what to send; this module starts it, loads it, measures it and stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, Self, final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from types import TracebackType

logger = logging.getLogger(__name__)

__all__ = [
    "LOAD_CORE",
    "LOCK_PATH",
    "SERVER_CORE",
    "BenchmarkError",
    "HttpRequest",
    "LoadResult",
    "Machine",
    "Measurement",
    "ServerProcess",
    "ensure_tools",
    "exclusive_machine",
    "format_table",
    "free_port",
    "http_call",
    "machine_info",
    "measure",
    "measure_load",
    "parse_wrk",
    "run_wrk",
    "write_report",
    "wrk_script",
    "wrk_seconds",
]

LOCK_PATH: Final = Path("/tmp/ligeiro-bench.lock")
SERVER_CORE: Final = 0
LOAD_CORE: Final = 1
# The Debian package behind each command. The harness itself needs only wrk and taskset;
# hey is installed for open-loop checks by hand (``hey -q RATE``), which wrk cannot do.
TOOLS: Final = {"wrk": "wrk", "hey": "hey", "taskset": "util-linux"}
REQUIRED_TOOLS: Final = ("wrk", "taskset")
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
_BYTES_PER_KIB: Final = 1024


class BenchmarkError(Exception):
    """A benchmark cannot produce a trustworthy number: no server, or a wrong answer."""


# --- the machine --------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive_machine(path: Path = LOCK_PATH) -> Iterator[None]:
    """Hold an exclusive lock for a whole run, so benchmarks never overlap on two cores.

    Two runs at once would each measure the other's load; waiting is the only way to get
    numbers that mean anything, so this blocks (and says so) rather than failing.
    """
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another benchmark run to release {path} ...", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_tools(
    tools: Mapping[str, str] = TOOLS, required: Iterable[str] = REQUIRED_TOOLS
) -> None:
    """Install missing load-generation tools with apt-get, printing what it runs.

    Only Debian's own packages are used, so nothing unvetted lands on the machine. A tool
    that is not in ``required`` may stay missing with a warning.

    Raises:
        BenchmarkError: a required tool is still missing afterwards.
    """
    missing = sorted({package for tool, package in tools.items() if shutil.which(tool) is None})
    if missing:
        command = ["apt-get", "install", "-y", *missing]
        print(f"installing {', '.join(missing)}: {' '.join(command)}", flush=True)
        if subprocess.run(command, check=False).returncode != 0:
            # A fresh container often has no package lists yet; fetch them once and retry.
            print("apt-get install failed; running apt-get update and retrying", flush=True)
            subprocess.run(["apt-get", "update"], check=False)
            subprocess.run(command, check=False)
    for tool in tools:
        if shutil.which(tool) is None:
            if tool in required:
                raise BenchmarkError(f"{tool} is required but not installed (apt-get failed)")
            print(f"warning: {tool} is not installed; continuing without it", flush=True)


def _cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or the architecture when there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _wrk_version() -> str:
    """wrk's version, from the banner it prints (with a usage text and a non-zero exit)."""
    try:
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "wrk (not installed)"
    banner = (done.stdout or done.stderr).strip()
    # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer" -> "wrk debian/4.1.0-3+b2"
    return banner.splitlines()[0].split(" [")[0] if banner else "wrk (unknown version)"


@dataclass(frozen=True)
class Machine:
    """The machine and software a run measured, so published numbers carry their context."""

    date: str
    nproc: int
    cpu_model: str
    kernel: str
    load_average_1m: float
    python: str
    wrk: str
    packages: dict[str, str | None]

    def summary(self) -> str:
        """One sentence for a report: hardware, load, and the versions that matter."""
        versions = ", ".join(f"{name} {v}" for name, v in self.packages.items() if v)
        return (
            f"{self.cpu_model} ({self.nproc} cores, 1-min load average "
            f"{self.load_average_1m:.2f} at start), Linux {self.kernel}, "
            f"Python {self.python}, {versions}, {self.wrk}"
        )


def machine_info(packages: Sequence[str]) -> Machine:
    """Describe this machine and the installed versions of ``packages``."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return Machine(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        nproc=os.cpu_count() or 1,
        cpu_model=_cpu_model(),
        kernel=platform.release(),
        load_average_1m=os.getloadavg()[0],
        python=platform.python_version(),
        wrk=_wrk_version(),
        packages=versions,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now, for a server that must be told its port on its CLI.

    Servers started as separate commands cannot hand back the port of a port-0 bind, so
    this binds, reads the port and closes. The small race is harmless here: the run holds
    the machine's benchmark lock, and nothing else binds ephemeral listening ports.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


# --- HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    """One request, sent once by ``http_call`` and repeatedly by ``run_wrk``."""

    method: str
    url: str
    body: bytes = b""
    headers: Mapping[str, str] | None = None


def http_call(request: HttpRequest, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """Send ``request`` once; return the status and body, error statuses included.

    Raises:
        OSError: the connection failed (refused, reset, timed out).
    """
    outgoing = urllib.request.Request(
        request.url,
        data=request.body or None,
        headers=dict(request.headers or {}),
        method=request.method,
    )
    try:
        with urllib.request.urlopen(outgoing, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# --- the server process -------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name, which may hold spaces or parens."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def _process_tree(root: int) -> list[int]:
    """``root`` and every live descendant, found by walking parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return tree


def _tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of the live tree plus the children it has reaped."""
    ticks = 0
    for pid in _process_tree(root):
        with contextlib.suppress(OSError):
            # utime, stime, cutime, cstime are fields 14-17; [0] here is field 3.
            ticks += sum(int(value) for value in _stat_fields(pid)[11:15])
    return ticks / _CLOCK_TICKS


def _tree_peak_rss_bytes(root: int) -> int:
    """Sum of each live process's high-water resident set (VmHWM), in bytes."""
    total_kib = 0
    for pid in _process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
    return total_kib * _BYTES_PER_KIB


@final
class ServerProcess:
    """A server command pinned to ``core`` (a core, or a CPU list like ``"0-1"``), ready
    once an HTTP URL answers 200.

    Use as a context manager so the server is stopped even when a measurement fails::

        with ServerProcess(["python", "-m", "http.server", "8000"], "http://127.0.0.1:8000/",
                           log_path=Path(".bench/http.log")) as server:
            print(server.start(timeout_s=10), "s to ready")
    """

    def __init__(
        self,
        argv: Sequence[str],
        ready_url: str,
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        core: int | str = SERVER_CORE,
    ) -> None:
        self.argv = ["taskset", "-c", str(core), *argv]
        self.ready_url = ready_url
        self.log_path = log_path
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BenchmarkError("the server has not been started")
        return self._process.pid

    def start(self, timeout_s: float = 60.0) -> float:
        """Start the server and wait until it is ready.

        Returns:
            Seconds from launching the command to the first 200 from ``ready_url``.

        Raises:
            BenchmarkError: the server exited, or was not ready within ``timeout_s``.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        started = time.monotonic()
        # taskset execs the server, so the pid is the server's own. A new session lets
        # stop() signal the whole group, workers included. Output goes to a file, never a
        # pipe: a pipe nobody reads fills up and stalls a server that logs every request.
        self._process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready(started + timeout_s)
        return time.monotonic() - started

    def _wait_ready(self, deadline: float) -> None:
        """Poll the readiness URL: a separate process offers no event to wait on."""
        probe = HttpRequest("GET", self.ready_url)
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BenchmarkError(
                    f"server exited with code {self._process.returncode} before it was ready; "
                    f"last output:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if http_call(probe, timeout_s=1.0)[0] == 200:
                    return
            time.sleep(0.02)
        raise BenchmarkError(
            f"{self.ready_url} did not answer 200 in time; last output:\n{self.log_tail()}"
        )

    def check_running(self) -> None:
        """Raise if the server has exited, so a crash is never read as a measurement.

        Raises:
            BenchmarkError: the server is not running.
        """
        if self._process is None or self._process.poll() is not None:
            raise BenchmarkError(f"server is not running; last output:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server printed, to explain a failure."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no output)"

    def cpu_s(self) -> float:
        """CPU seconds the server's process tree has used so far."""
        return _tree_cpu_s(self.pid)

    def peak_rss_bytes(self) -> int:
        """Peak resident memory of the server's process tree so far."""
        return _tree_peak_rss_bytes(self.pid)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the server's process group; SIGKILL it if it outlives ``grace_s``."""
        process, self._process = self._process, None
        if process is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                try:
                    process.wait(timeout=grace_s)
                    break
                except subprocess.TimeoutExpired:
                    logger.warning("server %d ignored SIGTERM; killing it", process.pid)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# --- load -----------------------------------------------------------------------------------


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


# --- reporting ------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool) -> str:
    """Render rows as an aligned text table, or as a GitHub Markdown table.

    The first column is left-aligned (names); the others are right-aligned (numbers).
    """
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return f"| {' | '.join(padded)} |" if markdown else "  ".join(padded)

    if markdown:
        rule = (
            "| "
            + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths))
            + " |"
        )
    else:
        rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def write_report(path: Path, text: str) -> None:
    """Write a report file (``--json``, ``--markdown``), making its folder; say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")

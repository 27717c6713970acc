"""The benchmarks' library: paths, the machine, HTTP, one pinned server, the reports.

The machine has two cores and is shared, so every run follows the same rules:

- the whole run holds an exclusive ``flock`` on ``/tmp/ligeiro-bench.lock``, so two
  benchmark runs never compete for the cores;
- the server under test is pinned to core 0 (``taskset -c 0``) and ``wrk`` to core 1,
  so the load generator never steals the server's CPU and every server gets one core;
- the server's CPU time and peak memory are read from ``/proc`` for its whole process
  tree (``_procfs.py``), so a server that forks workers cannot hide their cost.

Nothing here knows about a particular model or server: a ``bench_*.py`` module says what
to start and what to send; this module starts it, checks it and stops it, ``_wrk.py``
loads it, ``_rounds.py`` repeats and summarises, and the reports are written here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, Self, final

from ._procfs import tree_cpu_s, tree_peak_rss_bytes

if TYPE_CHECKING:
    import re
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from types import TracebackType

logger = logging.getLogger(__name__)

__all__ = [
    "HOST",
    "JSON_HEADERS",
    "LIGEIRO",
    "LOAD_CORE",
    "LOCK_PATH",
    "MODELS",
    "ROOT",
    "SERVER_CORE",
    "WORK_DIR",
    "BenchmarkError",
    "HttpRequest",
    "Machine",
    "ServerProcess",
    "add_duration_options",
    "add_report_options",
    "cpu_model",
    "ensure_example",
    "ensure_tools",
    "exclusive_machine",
    "expect_answer",
    "format_table",
    "free_port",
    "http_call",
    "int_list",
    "machine_info",
    "options_document",
    "positive_int",
    "publish_markdown",
    "run_document",
    "v2_request",
    "wait_for_log",
    "wait_until",
    "write_report",
]

# --- paths and constants ------------------------------------------------------------------

ROOT: Final = Path(__file__).resolve().parent.parent
WORK_DIR: Final = ROOT / ".bench"  # built pickles, repositories, server logs (git-ignored)
MODELS: Final = ROOT / "examples" / "models"
HOST: Final = "127.0.0.1"
JSON_HEADERS: Final = {"Content-Type": "application/json"}
# ligeiro's own CLI, from the same virtual environment as this Python.
LIGEIRO: Final = str(Path(sys.executable).with_name("ligeiro"))
LOCK_PATH: Final = Path("/tmp/ligeiro-bench.lock")
SERVER_CORE: Final = 0
LOAD_CORE: Final = 1
# The Debian package behind each command. The harness itself needs only wrk and taskset;
# hey is installed for open-loop checks by hand (``hey -q RATE``), which wrk cannot do.
TOOLS: Final = {"wrk": "wrk", "hey": "hey", "taskset": "util-linux"}
REQUIRED_TOOLS: Final = ("wrk", "taskset")


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


def cpu_model() -> str:
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
        cpu_model=cpu_model(),
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


def ensure_example(name: str, build_script: Path) -> None:
    """Build ``examples/models/<name>`` with its ``examples/build_*.py`` when it is missing."""
    if not (MODELS / name / "1" / "model.onnx").exists():
        build = [sys.executable, str(build_script), "--out", str(MODELS)]
        print(f"building the {name} model: {' '.join(build)}", flush=True)
        subprocess.run(build, cwd=ROOT, check=True)


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


def v2_request(base_url: str, model: str, payload: Mapping[str, object]) -> HttpRequest:
    """``POST /v2/models/<model>/infer`` with ``payload`` as its JSON body."""
    return HttpRequest(
        "POST", f"{base_url}/v2/models/{model}/infer", json.dumps(payload).encode(), JSON_HEADERS
    )


def expect_answer(
    request: HttpRequest,
    is_expected: Callable[[object], bool],
    *,
    expected: str = "",
    timeout_s: float = 5.0,
) -> None:
    """Send ``request`` once; require a 200 whose JSON ``is_expected`` accepts.

    A benchmark calls this before it loads a server, so an error answered quickly is
    never counted as speed. ``expected`` says what a right answer holds, for the error.

    Raises:
        BenchmarkError: no answer, another status, or an answer ``is_expected`` rejects.
    """
    try:
        status, body = http_call(request, timeout_s=timeout_s)
        answer = json.loads(body)
    except (OSError, ValueError) as error:
        raise BenchmarkError(f"{request.method} {request.url} failed: {error}") from None
    if status != 200 or not is_expected(answer):
        wanted = f"expected 200 {expected}, " if expected else ""
        raise BenchmarkError(
            f"{request.method} {request.url}: {wanted}"
            f"got {status}: {body[:300].decode(errors='replace')}"
        )


# --- the server process -------------------------------------------------------------------


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
        return tree_cpu_s(self.pid)

    def peak_rss_bytes(self) -> int:
        """Peak resident memory of the server's process tree so far."""
        return tree_peak_rss_bytes(self.pid)

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


def wait_for_log(server: ServerProcess, pattern: re.Pattern[str], timeout_s: float) -> str:
    """Poll the server's log until a line matches ``pattern``; return that line.

    Raises:
        BenchmarkError: no such line within ``timeout_s``, or the server exited.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for line in server.log_path.read_text(errors="replace").splitlines():
                if pattern.search(line):
                    return line
        server.check_running()
        time.sleep(0.01)
    raise BenchmarkError(f"no log line matching {pattern.pattern!r}:\n{server.log_tail()}")


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` every 5 ms: a separate process offers nothing to wait on.

    Raises:
        BenchmarkError: it did not hold within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.005)


# --- the command line ---------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated whole numbers (``1,16,64``)."""
    return [int(c) for c in text.split(",")]


def add_duration_options(parser: argparse.ArgumentParser) -> None:
    """``--duration`` (seconds per run, 5) and ``--warmup`` (seconds of load before, 1)."""
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of load before each run (default 1)"
    )


def add_report_options(parser: argparse.ArgumentParser) -> None:
    """``--json PATH`` and ``--markdown PATH``: where a run writes its reports."""
    parser.add_argument("--json", type=Path, help="write every number and the machine here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown report here")


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


def publish_markdown(report: str, path: Path | None) -> None:
    """Print the Markdown report, and write it to ``path`` (``--markdown``) when given."""
    print(f"\nMarkdown (for docs/benchmarks.md):\n\n{report}")
    if path:
        write_report(path, report)


def options_document(options: argparse.Namespace) -> dict[str, object]:
    """The parsed options for a JSON report, paths as strings."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()}


def run_document(
    benchmark: str, command: str, machine: Machine, options: argparse.Namespace
) -> dict[str, object]:
    """The head of a JSON report: which benchmark, the command, the machine, the options."""
    return {
        "benchmark": benchmark,
        "command": command,
        "machine": dataclasses.asdict(machine),
        "options": options_document(options),
    }

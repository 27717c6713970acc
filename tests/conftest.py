"""Shared fixtures: real servers on real sockets (port 0), real ONNX models."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "models"
# The seed's first iris row (a setosa) as a V2 request.
IRIS_REQUEST: dict[str, Any] = {
    "inputs": [
        {"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
    ]
}
# The example models, as an "unknown model" error lists them (make builds them all
# before the tests; without make, the session fixture builds iris and mlp).
EXAMPLE_NAMES = (
    ", ".join(sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir() and p.name[0] != "."))
    if EXAMPLES.is_dir()
    else "iris, mlp"
)
_SERVING = re.compile(rb"serving .*on https?://([\d.]+|\[[0-9a-f:]+\]):(\d+)")
_GRPC_SERVING = re.compile(rb"serving .* grpcs?://([\d.]+|\[[0-9a-f:]+\]):(\d+)")


def build_examples() -> Path:
    """The example repository, built once if `make` has not built it."""
    for model in ("iris", "mlp"):
        if not (EXAMPLES / model / "1" / "model.onnx").is_file():
            script = ROOT / "examples" / f"build_{model}.py"
            subprocess.run([sys.executable, str(script), "--out", str(EXAMPLES)], check=True)
    return EXAMPLES


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """A ``ligeiro serve`` process and a keep-alive HTTP client to it."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log: list[bytes] = field(default_factory=list)
    pump: threading.Thread | None = None
    _conn: http.client.HTTPConnection | None = None
    grpc_port: int = 0

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the server's gRPC service."""
        return (
            f"[{self.host}]:{self.grpc_port}"
            if ":" in self.host
            else f"{self.host}:{self.grpc_port}"
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        if isinstance(body, dict):
            body = json.dumps(body)
        reused = self._conn is not None
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            self._conn.request(method, path, body=body, headers=headers or {})
            raw = self._conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self._conn.close()
            self._conn = None
            if not reused:
                raise
            # The server closed the connection after its keep-alive timeout (a shared
            # server sits idle while other tests run): once more on a new one.
            return self.request(method, path, body, headers)
        except BaseException:
            self._conn.close()
            self._conn = None
            raise
        response = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
        if raw.will_close:
            self._conn.close()
            self._conn = None
        return response

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post(self, path: str, body: bytes | str | dict[str, Any]) -> Response:
        return self.request("POST", path, body, {"content-type": "application/json"})

    def stop(self, timeout: float = 30) -> int:
        if self._conn is not None:
            self._conn.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        if self.pump is not None:
            self.pump.join(timeout)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code

    def output(self) -> str:
        return b"".join(self.log).decode(errors="replace")


def start_server(
    repository: Path,
    *args: str,
    timeout: float = 60,
    stdout: Path | None = None,
    ligeiro: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """Start ``ligeiro serve REPOSITORY --port 0 ARGS`` and wait until it says where it listens.

    One worker unless ``args`` say otherwise (the server's default is one per core).
    Its standard output goes to ``stdout`` when given, else nowhere. ``ligeiro`` is
    the command to run (default: this interpreter's ``-m ligeiro``), ``env`` its
    environment (default: this one).
    """
    workers = () if "--workers" in args else ("--workers", "1")
    command = [
        *(ligeiro or [sys.executable, "-m", "ligeiro"]), "serve", str(repository), "--port", "0",
        "--grpc-port", "0", *workers, *args,
    ]  # fmt: skip
    with open(stdout or os.devnull, "wb") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=out, env=env)
    assert process.stderr is not None
    log: list[bytes] = []
    found = threading.Event()
    address: list[tuple[str, int]] = []
    grpc_ports: list[int] = []

    def pump() -> None:  # keep reading so the server never blocks on a full pipe
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            match = _SERVING.search(line)
            if match and not found.is_set():
                address.append((match.group(1).decode().strip("[]"), int(match.group(2))))
                grpc_match = _GRPC_SERVING.search(line)
                if grpc_match:
                    grpc_ports.append(int(grpc_match.group(2)))
                found.set()
        found.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    if not found.wait(timeout) or not address:
        process.kill()
        process.wait()
        reader.join()
        process.stderr.close()
        raise RuntimeError("server did not start:\n" + b"".join(log).decode(errors="replace"))
    host, port = address[0]
    return Server(process, host, port, log, reader, grpc_port=grpc_ports[0] if grpc_ports else 0)


@pytest.fixture(scope="session")
def examples() -> Path:
    return build_examples()


@pytest.fixture(scope="session")
def server(examples: Path) -> Iterator[Server]:
    """One server on the example repository, shared by read-only tests."""
    srv = start_server(examples, "--threads", "1")
    yield srv
    srv.stop()


@pytest.fixture
def repository(tmp_path: Path, examples: Path) -> Path:
    """A fresh repository holding a copy of iris, for tests that add models beside it."""
    root = tmp_path / "models"
    shutil.copytree(examples / "iris", root / "iris")
    return root


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")


@pytest.fixture(scope="session")
def identity_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on the identity model (``in_<DATATYPE>`` → ``out_<DATATYPE>``), shared."""
    from tests.models import identity_model, write

    root = tmp_path_factory.mktemp("identity-session")
    write(identity_model(), root, "identity")
    srv = start_server(root, "--threads", "1")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding ligeiro and its runtime dependencies only (no extra).

    What a user has after ``pip install ligeiro``; built once per session (about a minute,
    from pip's cache), with the versions constraints.txt pins.
    """
    venv = tmp_path_factory.mktemp("core-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-c", str(ROOT / "constraints.txt"), "-e", str(ROOT)],
        check=True,
    )
    return venv


def debian_tool(binary: Path, package: str, *version_args: str) -> str:
    """The version line of a Debian tool `make test` unpacked into .venv, or a test failure
    that names the package (and the version found) instead of a traceback later on."""
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: `make test` unpacks Debian's {package} there")
    try:
        found = subprocess.run(
            [str(binary), *(version_args or ("--version",))],
            capture_output=True, text=True, timeout=30,
        )
    except OSError as exc:
        pytest.fail(f"Debian's {package} at {binary} does not start: {exc}")
    output = (found.stdout + found.stderr).strip()
    if found.returncode != 0 or not output:
        pytest.fail(f"Debian's {package} at {binary} fails `--version` ({found.returncode}): "
                    f"{output[-2000:]}")
    return output.splitlines()[0]

"""Cold start: process start → the first 200 answer to a real request (issue #19, part 4).

What a scaled-to-zero instance's first user waits for. Each target is started
``--rounds`` times, in turn; the clock starts just before ``Popen`` and stops when the
first predict request answers 200 (the client retries on a refused connection every
2 ms). Beside the wall clock, the CPU seconds the process had used by then: on a shared
machine the wall clock includes waiting for a core, the CPU time is close to what an
idle core would take (a start is one thread but for ONNX Runtime's loading). Targets:

- ``serve-iris``: ``ligeiro serve`` on a repository holding iris alone, one worker;
- ``serve-iris-rest``: the same with ``--no-grpc``;
- ``serve-text``: the same on the sentiment pipeline (tokenizer, MiniLM encoder, head);
- ``pyz-serve``: ``iris.pyz serve`` (``ligeiro package --format pyz``) under
  ``env -i /usr/bin/python3 -I``, shiv's folder already unpacked;
- ``pyz-predict``: ``iris.pyz predict --data ...``, start to answer printed and exit;
- ``load-iris``: ``python -c "import ligeiro; ligeiro.load(iris).predict(...)"``, start to exit.

    .venv/bin/python -m benchmarks.bench_cold_start --rounds 7
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ._harness import MODELS, ROOT, free_port
from ._iris import SEED_PAYLOAD, V2_PAYLOAD

LOAD = "import ligeiro; ligeiro.load({!r}).predict([[5.1, 3.5, 1.4, 0.2]])"
TEXT = ("sentiment", "text-tokenizer", "minilm-encoder", "sentiment-head")


def _first_200(port: int, path: str, body: bytes, process: subprocess.Popen[bytes]) -> None:
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status == 200:
                return
        except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
            pass
        time.sleep(0.002)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (clock ticks: 10 ms steps)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve(
    command: Callable[[int, int], list[str]],
    path: str,
    body: Mapping[str, object],
    env: dict[str, str] | None = None,
) -> tuple[float, float]:
    """Wall seconds from Popen to the first 200, and the CPU seconds the server used."""
    port, grpc_port = free_port(), free_port()
    start = time.perf_counter()
    process = subprocess.Popen(
        command(port, grpc_port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        _first_200(port, path, json.dumps(body).encode(), process)
        return time.perf_counter() - start, _cpu_seconds(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def _run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds from start to exit, and the CPU seconds the child used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_cold_start")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--targets", default="serve-iris,serve-iris-rest,serve-text,pyz-serve,pyz-predict,load-iris"
    )
    options = parser.parse_args(argv)
    # Byte-code caches on, as after pip install (which compiles them): a cold start that
    # compiled ligeiro's sources each time would measure the compiler.
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env = {**environ, "PYTHONPATH": str(ROOT / "src")}
    ligeiro = [sys.executable, "-m", "ligeiro"]
    one_worker = ["--workers", "1", "--threads", "1", "--log-level", "warning"]
    with tempfile.TemporaryDirectory(prefix="cold-start-") as scratch:
        iris_repo, text_repo = Path(scratch, "iris"), Path(scratch, "text")
        iris_repo.mkdir()
        (iris_repo / "iris").symlink_to(MODELS / "iris")
        text_repo.mkdir()
        for name in TEXT:
            (text_repo / name).symlink_to(MODELS / name)
        wanted = options.targets.split(",")
        pyz = Path(scratch, "iris.pyz")
        bare = {"SHIV_ROOT": str(Path(scratch, "shiv"))}
        if any(t.startswith("pyz") for t in wanted):
            subprocess.run(
                [*ligeiro, "package", str(MODELS / "iris"), "--out", scratch, "--format", "pyz"],
                check=True,
                env=env,
                capture_output=True,
            )
            unpack, _ = _run(["/usr/bin/python3", "-I", str(pyz), "metadata"], env=bare)
            print(
                f"pyz: {pyz.stat().st_size / 1e6:.1f} MB; first run (shiv unpacks) {unpack:.2f} s"
            )
        text_body = {
            "inputs": [
                {
                    "name": "text",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": ["a quiet, lovely film"],
                }
            ]
        }
        targets: dict[str, Callable[[], tuple[float, float]]] = {
            "serve-iris-rest": lambda: _serve(
                lambda p, g: [
                    *ligeiro,
                    "serve",
                    str(iris_repo),
                    "--port",
                    str(p),
                    "--no-grpc",
                    *one_worker,
                ],
                "/v2/models/iris/infer",
                V2_PAYLOAD,
                env,
            ),
            "serve-iris": lambda: _serve(
                lambda p, g: [
                    *ligeiro,
                    "serve",
                    str(iris_repo),
                    "--port",
                    str(p),
                    "--grpc-port",
                    str(g),
                    *one_worker,
                ],
                "/v2/models/iris/infer",
                V2_PAYLOAD,
                env,
            ),
            "serve-text": lambda: _serve(
                lambda p, g: [
                    *ligeiro,
                    "serve",
                    str(text_repo),
                    "--port",
                    str(p),
                    "--grpc-port",
                    str(g),
                    *one_worker,
                ],
                "/v2/models/sentiment/infer",
                text_body,
                env,
            ),
            "pyz-serve": lambda: _serve(
                lambda p, g: [
                    "/usr/bin/python3",
                    "-I",
                    str(pyz),
                    "serve",
                    "--port",
                    str(p),
                    "--grpc-port",
                    str(g),
                    *one_worker,
                ],
                "/v2/models/iris/infer",
                V2_PAYLOAD,
                bare,
            ),
            "pyz-predict": lambda: _run(
                ["/usr/bin/python3", "-I", str(pyz), "predict", "--data", json.dumps(SEED_PAYLOAD)],
                bare,
            ),
            "load-iris": lambda: _run(
                [sys.executable, "-c", LOAD.format(str(MODELS / "iris"))],
                env,
            ),
        }
        seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in wanted}
        load = os.getloadavg()[0]
        for _ in range(options.rounds):
            for name in wanted:
                seconds[name].append(targets[name]())
    print(f"1-min load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at the end")
    print("| target | wall s, median | wall s, min-max | CPU s, median | CPU s, min | rounds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, runs in seconds.items():
        wall, cpu = [w for w, _ in runs], [c for _, c in runs]
        print(
            f"| {name} | {statistics.median(wall):.3f} | {min(wall):.3f}-{max(wall):.3f} | "
            f"{statistics.median(cpu):.3f} | {min(cpu):.3f} | {len(runs)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

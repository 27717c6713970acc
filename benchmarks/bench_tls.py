"""What TLS and inference tokens cost on the iris hot path (issue 17), in rounds.

Three one-worker ligeiro servers on the iris model, run side by side on core 0 with wrk
on core 1: plain HTTP, plain HTTP with an inference token, and HTTPS with the token.
Each is loaded over keep-alive connections, and over a new connection per request
(``Connection: close``, so every request pays a TCP and, for HTTPS, a TLS handshake).
A round loads every server back to back; the ratio column is the median over rounds of
each server's req/s over plain HTTP's in the same round (``_rounds.py``'s rule).

The certificate is made with the ``openssl`` command line (RSA 2048, self-signed).

Run: ``python -m benchmarks.bench_tls [--rounds 3] [--duration 5] [--warmup 1]
[--connections 16] [--markdown PATH]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ._harness import (
    LOAD_CORE,
    MODELS,
    ROOT,
    HttpRequest,
    ServerProcess,
    ensure_tools,
    exclusive_machine,
    format_table,
    free_port,
    http_call,
    write_report,
)
from ._iris import V2_BODY
from ._wrk import measure

TOKEN = "bench-token"
BODY = V2_BODY
SERVERS = ("http", "http+token", "https+token")
LOADS = ("keep-alive", "new connection")


def _certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _server(name: str, folder: Path, cert: Path, key: Path) -> tuple[ServerProcess, str]:
    port = free_port()
    repository = folder / "repo"
    if not repository.exists():
        repository.mkdir()
        (repository / "iris").symlink_to(MODELS / "iris")
    argv = [sys.executable, "-m", "ligeiro", "serve", str(repository), "--workers", "1",
            "--threads", "1", "--port", str(port), "--no-grpc"]  # fmt: skip
    if "token" in name:
        argv += ["--inference-token", TOKEN]
    scheme = "http"
    if name.startswith("https"):
        argv += ["--tls-cert", str(cert), "--tls-key", str(key)]
        scheme = "https"
    base = f"{scheme}://127.0.0.1:{port}"
    env = {"PYTHONPATH": str(ROOT / "src")}
    return ServerProcess(argv, base + "/v2/health/ready", log_path=folder / f"{name}.log",
                         env=env), base  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    ensure_tools()
    os.sched_setaffinity(0, {LOAD_CORE})
    rates: dict[tuple[str, str], list[float]] = {}
    p99s: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    ratios: dict[tuple[str, str], list[float]] = {}
    with exclusive_machine(), tempfile.TemporaryDirectory(prefix="ligeiro-tls-") as tmp:
        folder = Path(tmp)
        cert, key = _certificate(folder)
        os.environ["SSL_CERT_FILE"] = str(cert)  # the readiness probe trusts it
        servers = {name: _server(name, folder, cert, key) for name in SERVERS}
        try:
            for process, _ in servers.values():
                process.start()
            for round_ in range(args.rounds):
                for load in LOADS:
                    measured: dict[str, float] = {}
                    order = SERVERS[round_ % 3 :] + SERVERS[: round_ % 3]
                    for name in order:
                        process, base = servers[name]
                        headers = {"content-type": "application/json",
                                   "authorization": f"Bearer {TOKEN}"}  # fmt: skip
                        if load == "new connection":
                            headers["connection"] = "close"
                        request = HttpRequest("POST", base + "/v2/models/iris/infer", BODY,
                                              headers)  # fmt: skip
                        status, answer = http_call(request)
                        if status != 200:
                            raise SystemExit(f"{name}: {status} {answer[:200]!r}")
                        result = measure(
                            process, request, connections=args.connections,
                            duration_s=args.duration, warmup_s=args.warmup,
                        )  # fmt: skip
                        if result.load.non_2xx:
                            print(f"warning: {name} {load}: {result.load}", flush=True)
                        measured[name] = result.load.requests_per_s
                        rates.setdefault((name, load), []).append(result.load.requests_per_s)
                        p99s.setdefault((name, load), []).append(result.load.p99_ms)
                        cpus.setdefault((name, load), []).append(result.cpu_us_per_request)
                    for name in SERVERS:
                        ratio = measured[name] / measured["http"]
                        ratios.setdefault((name, load), []).append(ratio)
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        finally:
            for process, _ in servers.values():
                process.stop()
    rows = [
        [name, load, f"{statistics.median(rates[name, load]):,.0f}",
         f"{min(rates[name, load]):,.0f}–{max(rates[name, load]):,.0f}",
         f"{statistics.median(p99s[name, load]):.2f}",
         f"{statistics.median(cpus[name, load]):.0f}",
         f"{statistics.median(ratios[name, load]):.2f}"]
        for load in LOADS
        for name in SERVERS
    ]  # fmt: skip
    headers = ["server", "connections", "req/s (median)", "range", "p99 ms", "CPU µs/req",
               "× http"]  # fmt: skip
    print(format_table(headers, rows, markdown=False))
    if args.markdown is not None:
        write_report(args.markdown, format_table(headers, rows, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

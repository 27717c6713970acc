"""Soak: steady load for a long time; memory must stay flat, nothing may fail.

One ``ligeiro serve --workers 1`` (pinned to core 0) serves a copy of a model; keep-alive
clients on core 1 (asyncio, raw HTTP/1.1) first find its capacity (``--probe`` seconds
as fast as they can), then hold ``--load`` of it (default 70 %) for ``--duration``
seconds. Every ``--sample`` seconds the server's resident memory (VmRSS of its process
tree), the requests answered, the errors and the p99 latency of that interval are
printed. Pass: no error (a status other than 200, or a connection that failed), and the
RSS at the end within ``--max-growth`` (5 %) of the RSS once the warm-up (the first
``--warmup`` of the run, default a fifth) has passed.

Cases: ``iris`` (the seed's pipeline) and ``sentiment`` (the text pipeline: tokenizer,
MiniLM encoder, head; needs ``make models``).

Run: ``python -m benchmarks.bench_soak [--model iris|sentiment] [--duration 60]
[--sample 5] [--json PATH] [--plot PATH.svg]``; the hour: ``--duration 3600 --sample 10``.
``--render PATH.json --plot PATH.svg`` draws a saved run again (RSS and p99 over time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from ._harness import (
    LOAD_CORE,
    MODELS,
    WORK_DIR,
    BenchmarkError,
    ServerProcess,
    exclusive_machine,
    free_port,
)
from ._iris import V2_PAYLOAD

_CONTENT_LENGTH: Final = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
_CLOSE: Final = re.compile(rb"(?i)\r\nconnection: *close")
_TEXT: Final = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a calm, kind film"]}
_BODIES: Final = {"iris": V2_PAYLOAD, "sentiment": {"inputs": [_TEXT]}}
# The models each case needs in its repository (a pipeline needs its steps).
_FOLDERS: Final = {
    "iris": ("iris",),
    "sentiment": ("sentiment", "text-tokenizer", "minilm-encoder", "sentiment-head"),
}


def _request(model: str) -> bytes:
    body = json.dumps(_BODIES[model]).encode()
    return (
        b"POST /v2/models/%s/infer HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (model.encode(), len(body), body)
    )


def _rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and its descendants."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pending.extend(int(c) for c in children)
    return total


@dataclass
class Sample:
    at_s: float
    requests: int
    errors: int
    p99_ms: float
    rss_mib: float


@dataclass
class Load:
    """Keep-alive clients; ``rate`` requests/s in all (0: as fast as they can)."""

    port: int
    request: bytes
    connections: int = 4
    rate: float = 0.0
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    stop: bool = False

    async def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(self._client(deadline) for _ in range(self.connections)))

    async def _client(self, deadline: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        interval = self.connections / self.rate if self.rate else 0.0
        due = time.monotonic()
        try:
            while not self.stop and time.monotonic() < deadline:
                if interval:
                    due += interval
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                started = time.perf_counter()
                writer.write(self.request)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head[9:12])
                    length = _CONTENT_LENGTH.search(head)
                    await reader.readexactly(int(length[1]) if length else 0)
                except (ValueError, OSError, asyncio.IncompleteReadError):
                    self.errors += 1
                    return
                self.latencies.append(time.perf_counter() - started)
                self.requests += 1
                self.errors += status != 200
                if _CLOSE.search(head):  # the server's last answer on this connection
                    writer.close()  # (http.max_requests_per_connection): a new one
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        finally:
            writer.close()


def _p99_ms(latencies: list[float]) -> float:
    if not latencies:
        return 0.0
    ordered = sorted(latencies)
    return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def _soak(args: argparse.Namespace, pid: int, port: int) -> tuple[float, list[Sample]]:
    request = _request(args.model)
    probe = Load(port, request, args.connections)
    await probe.run(args.probe)
    capacity = probe.requests / args.probe
    load = Load(port, request, args.connections, rate=capacity * args.load)
    samples: list[Sample] = []
    started = time.monotonic()
    running = asyncio.ensure_future(load.run(args.duration))
    seen = 0
    while not running.done():
        await asyncio.wait([running], timeout=args.sample)
        latencies, load.latencies = load.latencies, []
        samples.append(
            Sample(round(time.monotonic() - started, 1), load.requests - seen, load.errors,
                   round(_p99_ms(latencies), 2), round(_rss_bytes(pid) / 2**20, 1))
        )  # fmt: skip
        seen = load.requests
        print(f"  {samples[-1]}", flush=True)
    return capacity, samples


def plot(samples: list[dict[str, float]], path: Path, title: str) -> None:
    """RSS and the p99 of each interval over time, one panel each, as SVG (matplotlib)."""
    import matplotlib as mpl

    mpl.use("Agg")
    mpl.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "soak", "font.size": 9})
    import matplotlib.pyplot as plt

    minutes = [s["at_s"] / 60 for s in samples]
    figure, (rss, p99) = plt.subplots(2, 1, figsize=(8, 4.8), sharex=True)
    rss.plot(minutes, [s["rss_mib"] for s in samples], marker=".")
    rss.set_ylabel("server RSS (MiB)")
    rss.set_ylim(bottom=0)
    p99.plot(minutes, [s["p99_ms"] for s in samples], marker=".", color="tab:orange")
    p99.set_ylabel("p99 per interval (ms)")
    p99.set_ylim(bottom=0)
    p99.set_xlabel("minutes")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="svg")
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_soak")
    parser.add_argument("--model", choices=sorted(_BODIES), default="iris")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--sample", type=float, default=5.0)
    parser.add_argument("--probe", type=float, default=3.0)
    parser.add_argument("--load", type=float, default=0.7)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=0.2)
    parser.add_argument("--max-growth", type=float, default=0.05)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="an SVG of RSS and p99 over time")
    parser.add_argument("--render", type=Path, help="a saved --json run: only --plot it")
    args = parser.parse_args(argv)
    if args.render is not None:
        if args.plot is None:
            parser.error("--render needs --plot")
        saved = json.loads(args.render.read_text())
        plot(saved["samples"], args.plot, f"soak {saved['args']['model']}, "
             f"{float(saved['args']['duration']):g} s")  # fmt: skip
        return 0
    missing = [f for f in _FOLDERS[args.model] if not (MODELS / f).is_dir()]
    if missing:
        print(f"{args.model}: examples/models/{', '.join(missing)} missing (make models)")
        return 2
    print(f"soak {args.model}: {args.probe:g} s probe, then {args.duration:g} s at "
          f"{args.load:.0%} of it, a sample every {args.sample:g} s", flush=True)  # fmt: skip
    with exclusive_machine(), tempfile.TemporaryDirectory(prefix="ligeiro-soak-") as tmp:
        for name in _FOLDERS[args.model]:
            shutil.copytree(MODELS / name, Path(tmp) / name)
        port = free_port()
        argv_ = [sys.executable, "-m", "ligeiro", "serve", tmp, "--port", str(port),
                 "--workers", "1", "--no-grpc"]  # fmt: skip
        with ServerProcess(
            argv_, f"http://127.0.0.1:{port}/v2/health/ready", log_path=WORK_DIR / "soak.log"
        ) as server:
            server.start()
            os.sched_setaffinity(0, {LOAD_CORE})
            capacity, samples = asyncio.run(_soak(args, server.pid, port))
    after_warmup = [s for s in samples if s.at_s >= args.warmup * args.duration]
    if len(after_warmup) < 2:
        raise BenchmarkError("too few samples after the warm-up: a longer --duration")
    base, end = after_warmup[0].rss_mib, samples[-1].rss_mib
    growth = (end - base) / base
    total = sum(s.requests for s in samples)
    errors = samples[-1].errors
    p99s = [s.p99_ms for s in after_warmup]
    passed = errors == 0 and growth < args.max_growth
    print(f"{args.model}: capacity {capacity:.0f}/s, held {total / args.duration:.0f}/s; "
          f"{total} requests, {errors} errors; RSS {base:.1f} -> {end:.1f} MiB after the "
          f"warm-up ({growth:+.2%}); p99 {min(p99s):.2f}-{max(p99s):.2f} ms: "
          f"{'PASS' if passed else 'FAIL'}")  # fmt: skip
    if args.json is not None:
        report = {"args": {k: str(v) for k, v in vars(args).items()}, "capacity": capacity,
                  "samples": [asdict(s) for s in samples], "growth": growth, "passed": passed}
        args.json.write_text(json.dumps(report, indent=2))  # fmt: skip
    if args.plot is not None:
        plot([asdict(s) for s in samples], args.plot, f"soak {args.model}, {args.duration:g} s")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

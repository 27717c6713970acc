"""Python bytecodes one request executes, by function: where the hot path's time goes.

An iris request (the seed's row: V2 JSON, ``:predict``, or gRPC ``ModelInfer``) is fed,
as the bytes a client sends, to an ``HttpConnection`` (or, for gRPC, an
``H2GrpcConnection``, with HTTP/2 frames and HPACK headers as a client sends them) over
a transport that keeps what it is written (no socket), and its answer computed as a
loop pass computes it (``Connections.run_due``, ``H2GrpcServer._run_due``).
After a warm-up, ``sys.settrace`` with opcode events counts every bytecode the next
requests execute, per Python function, and prints the table.

Why count bytecodes: on this path the end-to-end CPU a request costs (bench_ab) has
followed the number of bytecodes it executes far better than ``timeit`` of one part in
isolation did (ADR 0009: -10 % bytecodes gave -11.6 % CPU per request, where
``timeit`` had promised a third of that). It is deterministic, so it says at once
where the Python is. It is not the cost: native code (ONNX Runtime, numpy, msgspec,
httptools, protobuf) is not counted (protobuf's parser has fewer bytecodes than our
scanner and measured slower), and changes of a few per cent of the bytecodes stay in
the machine's noise. A ``bench_ab`` run says what a change buys.

``--instructions N`` counts machine instructions instead: the same harness runs N
requests under valgrind's callgrind (Debian's valgrind, installed with apt-get when
missing), which counts only the loop over them (``--dump-before`` at a marker call).
That count includes the native code (ONNX Runtime, numpy, msgspec, httptools, the
interpreter itself) and not the kernel, and it is repeatable to about 0.1 %, whatever
else the machine is doing: an A/B of two commits is two runs, one at each. Where a
shared VM's noise hides a 1 % change from ``bench_ab`` (ADR 0009, 2026-12-04 evening),
this one shows it. It is not the time: the kernel's share (16 % in one perf profile,
more on a VM whose system calls cost more) is left out, and asyncio's loop here is
Python where uvloop's is native.

``--route floor`` feeds the same V2 request to the raw Python floor's connection
(``benchmarks/baselines/raw_floor.py``, bench_iris's reference): its count against
``--route v2``'s is the ratio of the user-space work, which the machine cannot blur.

Run: ``python -m benchmarks.bytecodes [--route v2|predict|grpc|floor] [--top 40]
[--instructions 1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from ._harness import MODELS, BenchmarkError, ensure_tools
from ._iris import SEED_PAYLOAD, V2_JSON

ROUTES = {
    "v2": (b"/v2/models/iris/infer", V2_JSON),
    "predict": (b"/v1/models/iris:predict", json.dumps(SEED_PAYLOAD).encode()),
    "grpc": (b"/inference.GRPCInferenceService/ModelInfer", b""),
    # The raw Python floor (benchmarks/baselines/raw_floor.py) answering the V2 request:
    # what bench_iris's ratio compares ligeiro's V2 route with.
    "floor": (b"/v2/models/iris/infer", V2_JSON),
}
_WARM_UP = 50
_COUNTED = 10


class _Transport(asyncio.Transport):
    """A transport that keeps the last answer written and never closes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written = bytes(data)

    def is_closing(self) -> bool:
        return False

    def is_reading(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def _name(frame: FrameType) -> str:
    path = frame.f_code.co_filename
    for marker in ("/src/", "site-packages/", "/lib/python"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{frame.f_code.co_qualname}"


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def _request(route: str) -> bytes:
    """The route's HTTP/1.1 request, as wrk sends it."""
    path, body = ROUTES[route]
    request = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n" % path
    return request + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body
    )  # fmt: skip


def _http1(plane: Any, route: str) -> tuple[Callable[[], None], _Transport, bytes]:
    """One HTTP/1.1 connection, a call that sends it the route's request and answers,
    and bytes its answer holds."""
    from ligeiro.server.http import HttpApp
    from ligeiro.server.http_connection import Connections, HttpConnection
    from ligeiro.settings import HttpSettings

    request = _request(route)
    settings = HttpSettings()
    connections = Connections(settings)
    connection = HttpConnection(HttpApp(plane, settings), connections)
    transport = _Transport()
    connection.connection_made(transport)

    def send() -> None:
        connection.data_received(request)
        connections.run_due(asyncio.get_running_loop())

    return send, transport, b"HTTP/1.1 200 OK"


def _grpc(plane: Any, requests: int) -> tuple[Callable[[], None], _Transport, bytes]:
    """One HTTP/2 connection (h2 transport), and a call that sends it one ModelInfer on
    the next stream, its headers HPACK-encoded by one encoder as a client's are."""
    import numpy as np
    from hpack import Encoder

    from ligeiro.protocol._generated import grpc_service_pb2 as pb
    from ligeiro.server.grpc import GrpcService
    from ligeiro.server.grpc_h2 import H2GrpcConnection, H2GrpcServer
    from ligeiro.settings import GrpcSettings

    row = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    message = pb.ModelInferRequest(model_name="iris", raw_input_contents=[row.tobytes()])
    message.inputs.add(name="float_input", datatype="FP32", shape=[1, 4])
    body = message.SerializeToString()
    data = b"\x00" + len(body).to_bytes(4, "big") + body
    server = H2GrpcServer(GrpcService(plane), GrpcSettings())
    connection = H2GrpcConnection(server)
    transport = _Transport()
    connection.connection_made(transport)
    largest = 2**31 - 1  # windows wide open: the answers never wait for the client
    settings = (4).to_bytes(2, "big") + largest.to_bytes(4, "big")  # INITIAL_WINDOW_SIZE
    connection.data_received(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, settings)
        + _frame(8, 0, 0, (largest - 65535).to_bytes(4, "big"))
    )  # fmt: skip
    encoder = Encoder()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", ROUTES["grpc"][0].decode()),
               (":authority", "127.0.0.1:8001"), ("content-type", "application/grpc"),
               ("te", "trailers")]  # fmt: skip
    # Every request's frames made beforehand: the client's encoding is not counted.
    frames = iter([
        _frame(1, 0x4, stream, encoder.encode(headers)) + _frame(0, 0x1, stream, data)
        for stream in range(1, 2 * requests, 2)
    ])  # fmt: skip

    def send() -> None:
        connection.data_received(next(frames))
        server._run_due()

    return send, transport, b"output_probability"  # an output's name: the answer's bytes


def _floor(repository: Path) -> tuple[Callable[[], None], _Transport, bytes]:
    """The raw floor's connection (its own ONNX Runtime session on the iris model), and
    a call that sends it the V2 request: it answers inside the parser's callback."""
    from .baselines.raw_floor import Connection, Iris

    connection = Connection(Iris(str(repository / "iris" / "1" / "model.onnx")))
    transport = _Transport()
    connection.connection_made(transport)
    request = _request("floor")

    def send() -> None:
        connection.data_received(request)

    return send, transport, b"output_probability"


async def _answering(
    repository: Path, route: str, requests: int
) -> Callable[[], None]:
    """The route's ``send`` (one request in, its answer computed and written), checked
    to answer, after ``_WARM_UP`` of the ``requests`` it may send."""
    from ligeiro.dataplane import DataPlane
    from ligeiro.engine import Engine
    from ligeiro.metrics import Metrics

    if route == "floor":
        send, transport, answered = _floor(repository)
    else:
        metrics = Metrics()
        plane = DataPlane(Engine.from_repository(repository, metrics=metrics), metrics)
        send, transport, answered = (
            _grpc(plane, _WARM_UP + requests) if route == "grpc" else _http1(plane, route)
        )
    for _ in range(_WARM_UP):
        send()
    if answered not in transport.written:
        raise SystemExit(f"the request was not answered: {transport.written[:200]!r}")
    return send


async def _count(
    repository: Path, route: str
) -> tuple[collections.Counter[str], collections.Counter[str]]:
    send = await _answering(repository, route, _COUNTED)
    bytecodes: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        if event == "call":
            calls[_name(frame)] += 1
            frame.f_trace_opcodes = True
        elif event == "opcode":
            bytecodes[_name(frame)] += 1
        return trace

    sys.settrace(trace)
    try:
        for _ in range(_COUNTED):
            send()
    finally:
        sys.settrace(None)
    return bytecodes, calls


async def _loop(repository: Path, route: str, requests: int) -> None:
    """Send ``requests`` between two ``os.getpgrp()`` calls, the markers callgrind
    splits its count at (``--dump-before``): nothing else calls it."""
    send = await _answering(repository, route, requests)
    os.getpgrp()
    for _ in range(requests):
        send()
    os.getpgrp()


def _instructions(route: str, requests: int) -> float:
    """Instructions a request executes: ``_loop`` under callgrind, its loop's count.

    Raises:
        BenchmarkError: valgrind is missing, or its run failed.
    """
    ensure_tools({"valgrind": "valgrind"}, required=("valgrind",))
    with tempfile.TemporaryDirectory(prefix="ligeiro-callgrind-") as folder:
        out = Path(folder, "callgrind.out")
        command = [
            "valgrind", "--tool=callgrind", "--dump-before=os_getpgrp*",
            f"--callgrind-out-file={out}", sys.executable, "-m", "benchmarks.bytecodes",
            "--route", route, "--loop", str(requests),
        ]  # fmt: skip
        # A fixed hash seed: the same dict and set layouts, run to run.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        # Parts: .1 up to the first marker, .2 the loop, the file itself what follows.
        loop = Path(f"{out}.2")
        if done.returncode != 0 or not loop.exists():
            raise BenchmarkError(f"callgrind failed ({done.returncode}): {done.stderr[-2000:]}")
        for line in loop.read_text().splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1]) / requests
    raise BenchmarkError(f"callgrind wrote no summary in {loop.name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bytecodes", description=__doc__)
    parser.add_argument("--route", choices=sorted(ROUTES), default="v2")
    parser.add_argument("--top", type=int, default=40, help="functions to list")
    parser.add_argument(
        "--instructions", type=int, metavar="N",
        help="count machine instructions over N requests under callgrind instead",
    )  # fmt: skip
    parser.add_argument("--loop", type=int, help=argparse.SUPPRESS)  # callgrind's child
    options = parser.parse_args(argv)
    if options.instructions is not None:
        if options.instructions < 1:
            parser.error(f"--instructions takes a number of requests >= 1, got {options.instructions}")
        try:
            count = _instructions(options.route, options.instructions)
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{options.route}: {count:,.0f} instructions a request (callgrind, "
              f"{options.instructions} requests; asyncio's loop here, no kernel)")  # fmt: skip
        return 0
    with tempfile.TemporaryDirectory(prefix="ligeiro-bytecodes-") as folder:
        repository = Path(folder)
        shutil.copytree(MODELS / "iris", repository / "iris")
        if options.loop is not None:
            asyncio.run(_loop(repository, options.route, options.loop))
            return 0
        bytecodes, calls = asyncio.run(_count(repository, options.route))
    total = sum(bytecodes.values()) / _COUNTED
    print(f"{options.route}: {total:.0f} bytecodes and {sum(calls.values()) / _COUNTED:.0f} "
          "Python calls a request (asyncio's loop here; uvloop's is native)")  # fmt: skip
    print(f"{'bytecodes':>9}  {'calls':>5}  function")
    for name, count in bytecodes.most_common(options.top):
        print(f"{count / _COUNTED:9.0f}  {calls[name] / _COUNTED:5.0f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

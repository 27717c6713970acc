"""Python bytecodes one request executes, by function: where the hot path's time goes.

An iris request (the seed's row, V2 JSON or ``:predict``) is fed, as the bytes a client
sends, to an ``HttpConnection`` over a transport that keeps what it is written (no
socket), and its answer computed as a loop pass computes it (``Connections._run_due``).
After a warm-up, ``sys.settrace`` with opcode events counts every bytecode the next
requests execute, per Python function, and prints the table.

Why count bytecodes: on this path the end-to-end CPU a request costs (bench_ab) has
followed the number of bytecodes it executes far better than ``timeit`` of one part in
isolation did (ADR 0009: -10 % bytecodes gave -11.6 % CPU per request, where
``timeit`` had promised a third of that). It is deterministic, so a change's effect is
read at once, without the machine's noise. Native code (ONNX Runtime, numpy, msgspec,
httptools) is not counted; a ``bench_ab`` run says what a change buys in the end.

Run: ``python -m benchmarks.bytecodes [--route v2|predict] [--top 40]``
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from ._harness import MODELS
from ._iris import SEED_PAYLOAD, V2_JSON

ROUTES = {
    "v2": (b"/v2/models/iris/infer", V2_JSON),
    "predict": (b"/v1/models/iris:predict", json.dumps(SEED_PAYLOAD).encode()),
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


async def _count(
    repository: Path, route: str
) -> tuple[collections.Counter[str], collections.Counter[str]]:
    from ligeiro.dataplane import DataPlane
    from ligeiro.engine import Engine
    from ligeiro.metrics import Metrics
    from ligeiro.server.http import HttpApp
    from ligeiro.server.http_connection import Connections, HttpConnection
    from ligeiro.settings import HttpSettings

    path, body = ROUTES[route]
    request = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n" % path
    request += b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    metrics = Metrics()
    settings = HttpSettings()
    app = HttpApp(DataPlane(Engine.from_repository(repository, metrics=metrics), metrics), settings)
    connections = Connections(settings)
    connection = HttpConnection(app, connections)
    transport = _Transport()
    connection.connection_made(transport)
    for _ in range(_WARM_UP):
        connection.data_received(request)
        connections._run_due()
    if not transport.written.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"the request was not answered 200: {transport.written[:200]!r}")
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
            connection.data_received(request)
            connections._run_due()
    finally:
        sys.settrace(None)
    return bytecodes, calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bytecodes", description=__doc__)
    parser.add_argument("--route", choices=sorted(ROUTES), default="v2")
    parser.add_argument("--top", type=int, default=40, help="functions to list")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ligeiro-bytecodes-") as folder:
        repository = Path(folder)
        shutil.copytree(MODELS / "iris", repository / "iris")
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

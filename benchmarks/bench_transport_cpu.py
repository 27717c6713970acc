"""CPU per iris ModelInfer through each transport in one process, without sockets.

The same server objects ``ligeiro serve`` builds (engine, metrics, ``HttpApp`` and
``HttpConnection``, ``GrpcService`` and ``H2GrpcConnection``) answer requests fed to
``data_received`` on a fake transport that only counts what is written: REST gets the V2
JSON request, gRPC the HTTP/2 frames a client sends for a ``ModelInferRequest`` with
``raw_input_contents`` (made by the ``h2`` library's client). ``--batch`` requests are
fed per loop pass, as from that many connections; every answer is checked. The number is
the process's thread CPU per call: what each transport and codec costs with the kernel
and the load generator out of the picture. Rounds alternate the transports.

Run: ``python -m benchmarks.bench_transport_cpu [--calls 20000] [--batch 16] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Final

from ._harness import MODELS, machine_info
from ._iris import V2_BODY, grpc_request

PATH: Final = b"/inference.GRPCInferenceService/ModelInfer"
REST_REQUEST: Final = (
    b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(V2_BODY), V2_BODY)
)


class _Transport:
    """What the protocols write to: counted and kept, never sent."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.reading = True

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_reading(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _grpc_frames(calls: int) -> tuple[bytes, list[bytes]]:
    """The connection's opening frames, and each call's HEADERS + DATA, as h2 sends them."""
    import h2.config
    import h2.connection

    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    # The server opens its connection window to 16 MiB; the fake client acks its
    # answers by opening ours to the most HTTP/2 allows.
    opening = (
        client.data_to_send()
        + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00"
        + (2**31 - 1 - 65_535).to_bytes(4, "big")
    )
    body = grpc_request()
    frames = []
    for _ in range(calls):
        client.outbound_flow_control_window = 2**30
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH),
            (b":authority", b"127.0.0.1"), (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ])  # fmt: skip
        client.send_data(stream, body, end_stream=True)
        frames.append(client.data_to_send())
        client.streams.pop(stream, None)  # answered, as far as the fake client cares
    return opening, frames


async def _measure(calls: int, batch: int, rounds: int) -> dict[str, list[float]]:
    from ligeiro.dataplane import DataPlane
    from ligeiro.engine import Engine
    from ligeiro.metrics import Metrics
    from ligeiro.server.grpc import GrpcService
    from ligeiro.server.grpc_h2 import H2GrpcConnection, H2GrpcServer
    from ligeiro.server.http import Connections, HttpApp, HttpConnection
    from ligeiro.settings import load_settings

    settings = load_settings({}, env={})
    metrics = Metrics()
    engine = Engine.from_repository(
        MODELS, threads=1, metrics=metrics, batching=settings.batching
    )
    plane = DataPlane(engine, metrics)
    app = HttpApp(plane, settings.http)
    grpc_server = H2GrpcServer(GrpcService(plane), settings.grpc)
    results: dict[str, list[float]] = {"rest": [], "grpc-h2": []}

    def connect(name: str) -> tuple[asyncio.Protocol, _Transport, list[bytes]]:
        """A connection with its fake transport, and the requests to feed it."""
        transport = _Transport()
        if name == "rest":
            rest = HttpConnection(app, Connections(settings.http))
            rest.connection_made(transport)  # type: ignore[arg-type]
            return rest, transport, [REST_REQUEST] * calls
        opening, frames = _grpc_frames(calls)
        grpc = H2GrpcConnection(grpc_server)
        grpc.connection_made(transport)  # type: ignore[arg-type]
        grpc.data_received(opening)
        return grpc, transport, frames

    try:
        for round_index in range(rounds + 1):  # the first round warms up, unrecorded
            names = ["rest", "grpc-h2"] if round_index % 2 else ["grpc-h2", "rest"]
            for name in names:
                connection, transport, requests = connect(name)
                await asyncio.sleep(0)
                transport.chunks.clear()
                started = time.thread_time()
                for start in range(0, calls, batch):
                    for data in requests[start : start + batch]:
                        connection.data_received(data)
                    await asyncio.sleep(0)  # the calls run (gRPC), the answers are written
                    await asyncio.sleep(0)
                spent = time.thread_time() - started
                _check(name, b"".join(transport.chunks), calls)
                if round_index:
                    results[name].append(spent / calls * 1e6)
    finally:
        engine.close()
    return results


# The answer's first raw output: tag 0x32, 8 bytes, the INT64 label 0.
_GRPC_LABEL_0: Final = b"\x32\x08" + bytes(8)


def _check(name: str, written: bytes, calls: int) -> None:
    """Every call answered, and answered with class 0."""
    if name == "rest":
        answered = written.count(b"HTTP/1.1 200 OK") == calls
        right = written.count(b'"data":[0]') == calls
    else:
        answered = written.count(b"\x0bgrpc-status\x010") == calls
        right = written.count(_GRPC_LABEL_0) == calls and b"grpc-message" not in written
    if not (answered and right):
        raise SystemExit(f"{name}: not every call was answered with class 0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=16, help="requests fed per loop pass")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import uvloop

    results = uvloop.run(_measure(args.calls, args.batch, args.rounds))
    machine = machine_info(["ligeiro", "protobuf", "hpack", "onnxruntime", "uvloop"])
    print(f"{machine.date}: {args.calls} calls x {args.rounds} rounds, {args.batch} per loop pass")
    print(f"on {machine.summary()}")
    rest = results["rest"]
    for name, values in results.items():
        ratios = [r / v for r, v in zip(rest, values, strict=True)]
        print(
            f"{name:8} CPU µs/call median {statistics.median(values):6.1f} "
            f"(range {min(values):.1f}-{max(values):.1f}); REST's / this: "
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

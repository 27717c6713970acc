"""The HTTP-layer candidates of ``bench_http_layer``: one V2 infer route, four servers.

Every candidate calls the same :meth:`IrisModel.handle` (V2 JSON → numpy → ONNX Runtime
→ V2 JSON, all with msgspec), so the only thing that differs between them is the HTTP
layer:

- ``httptools``: an :class:`asyncio.Protocol` on uvloop driving ``httptools``' parser,
  answering inside the parser callback;
- ``httptools-task``: the same, but each request runs as an asyncio task and replies are
  written in request order, which is what an async engine (a batcher) will need;
- ``raw``: the ``httptools`` protocol answering a precomputed response (the ceiling);
- ``granian``: an RSGI app, served by ``granian --interface rsgi --factory``;
- ``uvicorn``: a Starlette app, served by ``uvicorn --factory``.

The httptools servers run with ``python -m benchmarks._http_candidates CANDIDATE --port N``.
Every candidate reads the model path from ``LIGEIRO_BENCH_MODEL`` (granian and uvicorn
build their app from a factory that takes no arguments).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys
import time
from collections import deque
from email.utils import formatdate
from typing import TYPE_CHECKING, Final, cast

import httptools
import msgspec
import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from typing import TypeAlias

    from granian.rsgi import HTTPProtocol, Scope  # type: ignore[attr-defined]
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    Reply: TypeAlias = tuple[int, bytes]  # status, body
    Handler: TypeAlias = Callable[[bytes, bytes, bytes], Reply]  # method, url, body
    AsyncHandler: TypeAlias = Callable[[bytes, bytes, bytes], Awaitable[Reply]]

logger = logging.getLogger(__name__)

MODEL_ENV: Final = "LIGEIRO_BENCH_MODEL"
MODEL_NAME: Final = "iris"
MODEL_VERSION: Final = "1"
ROUTE: Final = f"/v2/models/{MODEL_NAME}/infer"
READY_ROUTE: Final = "/v2/health/ready"
CONTENT_TYPE: Final = "application/json"
NOT_FOUND: Final = b'{"error":"not found"}'
SHUTDOWN_GRACE_S: Final = 10.0
SAMPLE_REQUEST: Final = {
    "inputs": [
        {"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
    ]
}


class InputTensor(msgspec.Struct, frozen=True):
    """One V2 request tensor in JSON form."""

    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferenceRequest(msgspec.Struct, frozen=True):
    """The V2 infer request body (only what the benchmark sends)."""

    inputs: list[InputTensor]


class OutputTensor(msgspec.Struct, frozen=True):
    """One V2 response tensor in JSON form."""

    name: str
    datatype: str
    shape: list[int]
    data: list[float]


class InferenceResponse(msgspec.Struct, frozen=True):
    """The V2 infer response body."""

    model_name: str
    model_version: str
    outputs: list[OutputTensor]


_DECODER: Final = msgspec.json.Decoder(InferenceRequest)
_ENCODER: Final = msgspec.json.Encoder()
_V2_DATATYPES: Final = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


class IrisModel:
    """The per-request work every candidate shares: V2 JSON bytes in, V2 JSON bytes out."""

    def __init__(self, path: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # A spinning intra-op pool would burn the single server core between requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._output_names = [output.name for output in self._session.get_outputs()]

    def handle(self, body: bytes) -> tuple[int, bytes]:
        """Answer one infer request body with ``(status, response body)``."""
        try:
            request = _DECODER.decode(body)
            feeds = {
                tensor.name: np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
                for tensor in request.inputs
            }
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            return 400, _ENCODER.encode({"error": str(exc)})
        results = self._session.run(self._output_names, feeds)
        outputs = [
            OutputTensor(
                name=name,
                datatype=_V2_DATATYPES[result.dtype],
                shape=list(result.shape),
                data=result.ravel().tolist(),
            )
            for name, result in zip(self._output_names, results, strict=True)
        ]
        return 200, _ENCODER.encode(InferenceResponse(MODEL_NAME, MODEL_VERSION, outputs))


def load_model() -> IrisModel:
    """Load the model named by ``LIGEIRO_BENCH_MODEL``."""
    return IrisModel(os.environ[MODEL_ENV])


# --- (a) and (d): uvloop + httptools ---------------------------------------------------

_REASONS: Final = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Server Error"}
_RESPONSE: Final = (
    b"HTTP/1.1 %d %s\r\ncontent-type: " + CONTENT_TYPE.encode() + b"\r\ncontent-length: %d"
    b"\r\ndate: %s\r\n%s\r\n%s"
)


class _DateHeader:
    """The ``Date`` header, formatted at most once a second (every response carries one)."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_DATE: Final = _DateHeader()


class Connections:
    """The open connections of one server, so shutdown can close them and wait."""

    def __init__(self) -> None:
        self._open: set[HttpServerProtocol] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def __iter__(self) -> Iterator[HttpServerProtocol]:
        return iter(list(self._open))

    def add(self, connection: HttpServerProtocol) -> None:
        self._open.add(connection)
        self._empty.clear()

    def discard(self, connection: HttpServerProtocol) -> None:
        self._open.discard(connection)
        if not self._open:
            self._empty.set()

    async def wait_empty(self) -> None:
        await self._empty.wait()


class HttpServerProtocol(asyncio.Protocol):
    """HTTP/1.1 on one connection: keep-alive, in-order pipelining, Content-Length bodies.

    The handler is synchronous, so requests are answered inside the parser callback
    in the order they arrive, which is what makes pipelining correct without a queue.
    """

    def __init__(self, handler: Handler, connections: Connections) -> None:
        self._handler = handler
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._in_message = False
        self._is_closing = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self._transport = cast("asyncio.Transport", transport)
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._respond(400, b'{"error":"malformed HTTP request"}', keep_alive=False)

    def pause_writing(self) -> None:
        # A client that pipelines without reading must not grow our write buffer forever.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._headers.clear()
        self._body.clear()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Collected as a real server must (auth, content type, binary-extension lengths),
        # so the benchmark charges this candidate for header handling like the others.
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if (b"expect", b"100-continue") in self._headers and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._transport is None or self._transport.is_closing():
            return
        status, payload = self._handler(self._parser.get_method(), self._url, b"".join(self._body))
        keep_alive = self._parser.should_keep_alive() and not self._is_closing
        self._respond(status, payload, keep_alive=keep_alive)

    # shutdown
    def shutdown(self) -> None:
        """Close now if idle; otherwise answer the requests in flight, then close."""
        self._is_closing = True
        if self._is_idle() and self._transport is not None:
            self._transport.close()

    def _is_idle(self) -> bool:
        return not self._in_message

    def _respond(self, status: int, payload: bytes, *, keep_alive: bool) -> None:
        assert self._transport is not None
        # One write per response: uvloop sends each write at once (with TCP_NODELAY), so a
        # head and a body written apart would cost two syscalls and two packets.
        self._transport.write(
            _RESPONSE
            % (
                status,
                _REASONS[status],
                len(payload),
                _DATE.get(),
                b"" if keep_alive else b"connection: close\r\n",
                payload,
            )
        )
        if not keep_alive:
            self._transport.close()


class TaskHttpServerProtocol(HttpServerProtocol):
    """:class:`HttpServerProtocol` with an async handler: one task per request.

    Tasks may finish out of order, so each connection keeps them in a FIFO and writes a
    reply only once every earlier one is written: that keeps pipelining correct.
    """

    def __init__(self, handler: AsyncHandler, connections: Connections) -> None:
        super().__init__(_unused_sync_handler, connections)
        self._async_handler = handler
        self._pending: deque[tuple[asyncio.Task[Reply], bool]] = deque()

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._transport is None or self._transport.is_closing():
            return
        reply = self._async_handler(self._parser.get_method(), self._url, b"".join(self._body))
        task = asyncio.ensure_future(reply)
        self._pending.append((task, self._parser.should_keep_alive()))
        task.add_done_callback(self._write_done)

    def _write_done(self, _task: asyncio.Task[Reply]) -> None:
        while self._pending and self._pending[0][0].done():
            task, keep_alive = self._pending.popleft()
            if self._transport is None or self._transport.is_closing():
                continue
            # While shutting down, keep the connection open only for replies still owed.
            keep_alive = keep_alive and (bool(self._pending) or not self._is_closing)
            if task.cancelled() or task.exception() is not None:
                logger.error("handler failed: %r", None if task.cancelled() else task.exception())
                self._respond(500, b'{"error":"internal error"}', keep_alive=False)
            else:
                status, payload = task.result()
                self._respond(status, payload, keep_alive=keep_alive)

    def _is_idle(self) -> bool:
        return not self._in_message and not self._pending


def _unused_sync_handler(_method: bytes, _url: bytes, _body: bytes) -> Reply:
    raise AssertionError("TaskHttpServerProtocol answers through its async handler")


def _ready(_body: bytes) -> tuple[int, bytes]:
    return 200, b""


def _route(infer: Callable[[bytes], tuple[int, bytes]]) -> Handler:
    """Send ``POST /v2/models/iris/infer`` to ``infer``; answer readiness; 404 the rest."""
    routes = {(b"POST", ROUTE.encode()): infer, (b"GET", READY_ROUTE.encode()): _ready}

    def handler(method: bytes, url: bytes, body: bytes) -> tuple[int, bytes]:
        route = routes.get((method, url.partition(b"?")[0]))
        return route(body) if route is not None else (404, NOT_FOUND)

    return handler


async def serve_httptools(
    protocol: Callable[[Connections], HttpServerProtocol], host: str, port: int
) -> None:
    """Serve connections made by ``protocol`` until SIGTERM or SIGINT, then drain them."""
    loop = asyncio.get_running_loop()
    connections = Connections()
    server = await loop.create_server(lambda: protocol(connections), host, port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger.info("listening on %s:%d", host, port)
    await stop.wait()
    server.close()
    for connection in connections:
        connection.shutdown()
    try:
        await asyncio.wait_for(connections.wait_empty(), SHUTDOWN_GRACE_S)
    except TimeoutError:
        logger.warning("closing connections still open after %.0f s", SHUTDOWN_GRACE_S)
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    """Run the ``httptools``, ``httptools-task`` or ``raw`` candidate."""
    import uvloop

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("candidate", choices=["httptools", "httptools-task", "raw"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    model = load_model()
    protocol: Callable[[Connections], HttpServerProtocol]
    if args.candidate == "raw":
        # The floor does no work per request: the same bytes the model would answer.
        answer = model.handle(msgspec.json.encode(SAMPLE_REQUEST))
        protocol = functools.partial(HttpServerProtocol, _route(lambda _body: answer))
    elif args.candidate == "httptools":
        protocol = functools.partial(HttpServerProtocol, _route(model.handle))
    else:
        handler = _route(model.handle)

        async def handle(method: bytes, url: bytes, body: bytes) -> Reply:
            return handler(method, url, body)

        protocol = functools.partial(TaskHttpServerProtocol, handle)
    uvloop.run(serve_httptools(protocol, args.host, args.port))
    return 0


# --- (b): granian RSGI -----------------------------------------------------------------


class RsgiApp:
    """The infer route as an RSGI application."""

    def __init__(self, model: IrisModel) -> None:
        self._model = model
        self._headers = [("content-type", CONTENT_TYPE)]

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        if scope.method == "POST" and scope.path == ROUTE:
            status, payload = self._model.handle(await protocol())
        elif scope.method == "GET" and scope.path == READY_ROUTE:
            status, payload = 200, b""
        else:
            status, payload = 404, NOT_FOUND
        protocol.response_bytes(status, self._headers, payload)


def rsgi_app() -> RsgiApp:
    """Granian factory: ``granian --interface rsgi --factory ...:rsgi_app``."""
    return RsgiApp(load_model())


# --- (c): uvicorn + Starlette ----------------------------------------------------------


def starlette_app() -> Starlette:
    """Uvicorn factory: ``uvicorn --factory ...:starlette_app``."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    model = load_model()

    async def infer(request: Request) -> Response:
        status, payload = model.handle(await request.body())
        return Response(payload, status_code=status, media_type=CONTENT_TYPE)

    async def ready(_request: Request) -> Response:
        return Response(b"")

    return Starlette(
        routes=[Route(ROUTE, infer, methods=["POST"]), Route(READY_ROUTE, ready, methods=["GET"])]
    )


if __name__ == "__main__":
    sys.exit(main())

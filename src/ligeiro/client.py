"""Python clients for a ligeiro (or any V2) server: numpy in, numpy out.

``Client`` is synchronous and ``AsyncClient`` is for asyncio code; both keep one
keep-alive connection and reconnect when the server has closed it. They speak HTTP/1.1
over a plain socket and import only msgspec up front (numpy on the first ``infer``,
asyncio with ``AsyncClient``), so a one-shot script starts fast.

``GrpcClient`` and ``AsyncGrpcClient`` offer the same methods over V2 gRPC (one
``grpc`` channel each, tensors as ``raw_input_contents``); grpcio, protobuf and numpy
load when one is created, not on ``import ligeiro.client``.

Example:
    >>> import numpy as np
    >>> from ligeiro.client import Client
    >>> with Client("http://127.0.0.1:8000") as client:
    ...     x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    ...     client.infer("iris", {"float_input": x})["output_label"]
    array([0])

Errors the server answers come back as the ``ligeiro.errors`` class of their status
(400 ``InvalidInputError``, 404 ``ModelNotFoundError``, 503 ``ModelNotReadyError``,
429 ``ServerOverloadedError``, 504 ``DeadlineExceededError``, others ``InferenceError``)
with the server's message; over gRPC, of their status code (``_GRPC_ERRORS``).
``infer(..., timeout_us=N)`` lets the request wait at most N µs in the server's queue.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, Any, TypeVar, final
from urllib.parse import quote, urlsplit

import msgspec

from .errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    LigeiroError,
    ModelNotFoundError,
    ModelNotReadyError,
    RequestTooLargeError,
    ServerOverloadedError,
)

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Mapping, Sequence
    from types import TracebackType

    import numpy as np

    from .protocol.grpc_client import ClientCall

__all__ = ["AsyncClient", "AsyncGrpcClient", "Client", "GrpcClient"]

# The server's statuses back to the error classes (the reverse of server/http.py's table).
_ERRORS: dict[int, type[LigeiroError]] = {
    400: InvalidInputError,
    404: ModelNotFoundError,
    413: RequestTooLargeError,
    429: ServerOverloadedError,
    503: ModelNotReadyError,
    504: DeadlineExceededError,
}
# gRPC status codes (by name, so that grpc loads only with a gRPC client) back to the
# error classes: the reverse of server/grpc.py's table. Others are InferenceError.
_GRPC_ERRORS: dict[str, type[LigeiroError]] = {
    "INVALID_ARGUMENT": InvalidInputError,
    "NOT_FOUND": ModelNotFoundError,
    "UNAVAILABLE": ModelNotReadyError,
    "RESOURCE_EXHAUSTED": ServerOverloadedError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
}
# The server enforces its own message limit; grpc's default 4 MiB would refuse big answers.
_GRPC_OPTIONS = [("grpc.max_receive_message_length", -1)]
_HEAD_END = b"\r\n\r\n"
_T = TypeVar("_T")


def _parse_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"http://{url}")
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"expected a URL like http://127.0.0.1:8000, got {url!r}")
    return parts.hostname, parts.port or 80


def _request(method: str, path: str, host: str, body: bytes | None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n"
    if body is not None:
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """Status, body length and whether the server will close, from a response head."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, closes = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            closes = value.strip().lower() == "close"
    return status, length, closes


def _check(status: int, body: bytes) -> bytes:
    if status < 300:
        return body
    try:
        message = msgspec.json.decode(body)["error"]
    except (msgspec.DecodeError, KeyError, TypeError):
        message = body.decode("utf-8", "replace") or f"HTTP {status}"
    raise _ERRORS.get(status, InferenceError)(message)


def _model_path(model: str, version: str | None, action: str) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{quote(version, safe='')}"
    return path + action


@final
class Client:
    """A synchronous V2 REST client with one keep-alive connection.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
        timeout_s: socket timeout for connecting and for each answer.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", *, timeout_s: float = 30.0) -> None:
        self._host, self._port = _parse_url(url)
        self._timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buffer = b""

    def _exchange(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = _request(method, path, self._host, body)
        for attempt in (1, 2):  # a kept-alive connection the server closed: retry once
            if self._sock is None:
                self._sock = socket.create_connection((self._host, self._port), self._timeout_s)
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._buffer = b""
            try:
                self._sock.sendall(request)
                status, answer, closes = self._read()
                break
            except (ConnectionError, EOFError):
                self.close()
                if attempt == 2:
                    raise
        if closes:
            self.close()
        return _check(status, answer)

    def _read(self) -> tuple[int, bytes, bool]:
        assert self._sock is not None
        while _HEAD_END not in self._buffer:
            self._receive()
        head, _, self._buffer = self._buffer.partition(_HEAD_END)
        status, length, closes = _parse_head(head)
        while len(self._buffer) < length:
            self._receive()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return status, body, closes

    def _receive(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self._buffer += chunk

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """Send one request as is; return the answer's body (an error status raises)."""
        return self._exchange(method, path, body)

    def is_live(self) -> bool:
        """Whether ``GET /v2/health/live`` answers 200."""
        try:
            self._exchange("GET", "/v2/health/live")
        except LigeiroError:
            return False
        return True

    def is_ready(self) -> bool:
        """Whether ``GET /v2/health/ready`` answers 200."""
        try:
            self._exchange("GET", "/v2/health/ready")
        except LigeiroError:
            return False
        return True

    def model_metadata(self, model: str, version: str | None = None) -> Any:
        """``GET /v2/models/{model}``: name, versions, platform, inputs, outputs."""
        return msgspec.json.decode(self._exchange("GET", _model_path(model, version, "")))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        version: str | None = None,
        request_id: str | None = None,
        timeout_us: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on named numpy inputs; return its outputs as numpy arrays.

        Raises:
            InvalidInputError, ModelNotFoundError, ModelNotReadyError, ...: as the server
                answered, with its message.
        """
        from .protocol.client_codec import decode_infer_response, encode_infer_request

        body = encode_infer_request(inputs, outputs, request_id, timeout_us)
        answer = self._exchange("POST", _model_path(model, version, "/infer"), body)
        return decode_infer_response(answer)[1]

    def predict(self, model: str, payload: Any) -> Any:
        """``POST /v1/models/{model}:predict`` with named features or ``{"instances": [...]}``."""
        body = msgspec.json.encode(payload)
        return msgspec.json.decode(
            self._exchange("POST", f"/v1/models/{quote(model, safe='')}:predict", body)
        )

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@final
class AsyncClient:
    """The asyncio twin of ``Client``: one keep-alive connection, one request at a time.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
        timeout_s: the longest wait for connecting and for each answer.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", *, timeout_s: float = 30.0) -> None:
        import asyncio

        self._host, self._port = _parse_url(url)
        self._timeout_s = timeout_s
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def _exchange(self, method: str, path: str, body: bytes | None = None) -> bytes:
        import asyncio

        request = _request(method, path, self._host, body)
        async with self._lock:
            for attempt in (1, 2):
                if self._streams is None:
                    self._streams = await asyncio.wait_for(
                        asyncio.open_connection(self._host, self._port), self._timeout_s
                    )
                reader, writer = self._streams
                try:
                    writer.write(request)
                    head = await asyncio.wait_for(reader.readuntil(_HEAD_END), self._timeout_s)
                    status, length, closes = _parse_head(head[: -len(_HEAD_END)])
                    answer = await asyncio.wait_for(reader.readexactly(length), self._timeout_s)
                    break
                except (ConnectionError, asyncio.IncompleteReadError):
                    await self.aclose()
                    if attempt == 2:
                        raise
            if closes:
                await self.aclose()
        return _check(status, answer)

    async def is_ready(self) -> bool:
        """Whether ``GET /v2/health/ready`` answers 200."""
        try:
            await self._exchange("GET", "/v2/health/ready")
        except LigeiroError:
            return False
        return True

    async def model_metadata(self, model: str, version: str | None = None) -> Any:
        """``GET /v2/models/{model}``: name, versions, platform, inputs, outputs."""
        return msgspec.json.decode(await self._exchange("GET", _model_path(model, version, "")))

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        version: str | None = None,
        request_id: str | None = None,
        timeout_us: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on named numpy inputs; return its outputs as numpy arrays."""
        from .protocol.client_codec import decode_infer_response, encode_infer_request

        body = encode_infer_request(inputs, outputs, request_id, timeout_us)
        answer = await self._exchange("POST", _model_path(model, version, "/infer"), body)
        return decode_infer_response(answer)[1]

    async def predict(self, model: str, payload: Any) -> Any:
        """``POST /v1/models/{model}:predict`` with named features or ``{"instances": [...]}``."""
        body = msgspec.json.encode(payload)
        answer = await self._exchange("POST", f"/v1/models/{quote(model, safe='')}:predict", body)
        return msgspec.json.decode(answer)

    async def aclose(self) -> None:
        """Close the connection (the next call opens a new one)."""
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _grpc_error(exc: Exception) -> LigeiroError:
    """The ligeiro error for a failed gRPC call (a ``grpc.RpcError`` that is a call)."""
    code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
    return _GRPC_ERRORS.get(code.name, InferenceError)(details or f"gRPC {code.name}")


@final
class GrpcClient:
    """A synchronous V2 gRPC client over one channel, with ``Client``'s methods.

    Args:
        target: the server's gRPC ``host:port``.
        timeout_s: the deadline of each call.

    Example:
        >>> import numpy as np
        >>> with GrpcClient("127.0.0.1:8001") as client:
        ...     x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
        ...     client.infer("iris", {"float_input": x})["output_label"]
        array([0])
    """

    def __init__(self, target: str = "127.0.0.1:8001", *, timeout_s: float = 30.0) -> None:
        import grpc

        from .protocol._generated.grpc_service_pb2_grpc import GRPCInferenceServiceStub

        self._channel = grpc.insecure_channel(target, options=_GRPC_OPTIONS)
        self._stub = GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout_s = timeout_s

    def _run(self, call: ClientCall[_T]) -> _T:
        import grpc

        try:
            answer = getattr(self._stub, call.method)(call.request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise _grpc_error(exc) from None
        return call.decode(answer)

    def is_live(self) -> bool:
        """Whether the server answers ``ServerLive`` with live."""
        from .protocol.grpc_client import live_call

        return self._run(live_call())

    def is_ready(self) -> bool:
        """Whether the server answers ``ServerReady`` with ready."""
        from .protocol.grpc_client import ready_call

        return self._run(ready_call())

    def model_metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        """``ModelMetadata`` as ``Client.model_metadata``'s dict."""
        from .protocol.grpc_client import model_metadata_call

        return self._run(model_metadata_call(model, version))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        version: str | None = None,
        request_id: str | None = None,
        timeout_us: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on named numpy inputs; return its outputs as numpy arrays.

        Raises:
            InvalidInputError, ModelNotFoundError, ModelNotReadyError, ...: as the server
                answered, with its message.
        """
        from .protocol.grpc_client import infer_call

        return self._run(infer_call(model, inputs, outputs, version, request_id, timeout_us))

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@final
class AsyncGrpcClient:
    """The asyncio twin of ``GrpcClient`` (a ``grpc.aio`` channel; calls run concurrently).

    Create it inside the event loop that uses it.

    Args:
        target: the server's gRPC ``host:port``.
        timeout_s: the deadline of each call.
    """

    def __init__(self, target: str = "127.0.0.1:8001", *, timeout_s: float = 30.0) -> None:
        import grpc.aio

        from .protocol._generated.grpc_service_pb2_grpc import GRPCInferenceServiceStub

        self._channel = grpc.aio.insecure_channel(target, options=_GRPC_OPTIONS)
        self._stub = GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout_s = timeout_s

    async def _run(self, call: ClientCall[_T]) -> _T:
        import grpc

        try:
            answer = await getattr(self._stub, call.method)(call.request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise _grpc_error(exc) from None
        return call.decode(answer)

    async def is_live(self) -> bool:
        """Whether the server answers ``ServerLive`` with live."""
        from .protocol.grpc_client import live_call

        return await self._run(live_call())

    async def is_ready(self) -> bool:
        """Whether the server answers ``ServerReady`` with ready."""
        from .protocol.grpc_client import ready_call

        return await self._run(ready_call())

    async def model_metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        """``ModelMetadata`` as ``Client.model_metadata``'s dict."""
        from .protocol.grpc_client import model_metadata_call

        return await self._run(model_metadata_call(model, version))

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        version: str | None = None,
        request_id: str | None = None,
        timeout_us: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on named numpy inputs; return its outputs as numpy arrays."""
        from .protocol.grpc_client import infer_call

        return await self._run(infer_call(model, inputs, outputs, version, request_id, timeout_us))

    async def aclose(self) -> None:
        """Close the channel (calls in flight are cancelled)."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncGrpcClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

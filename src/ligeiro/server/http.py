"""V2 REST over HTTP/1.1: httptools parses, an asyncio protocol on uvloop serves.

The layer was chosen by measurement (docs/adr/0001-http-layer.md): each request runs
as an asyncio task (cheaper than answering inside the parser callback, and what an
async engine needs), and each connection writes its answers in request order, so
pipelining stays correct. Every error maps to a status in ``_STATUS``, the one table
between the domain's errors and HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from email.utils import formatdate
from functools import partial
from typing import TYPE_CHECKING, final
from urllib.parse import unquote

import httptools

from .. import __version__
from ..errors import (
    AuthenticationError,
    ControlDisabledError,
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    LigeiroError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    RequestTooLargeError,
    ServerOverloadedError,
    UnsupportedEncodingError,
)
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..dataplane import Transport
from ..protocol.codec import (
    BINARY_EXTENSION,
    RestInferCodec,
    decode_json_object,
    encode_error,
    encode_health,
    encode_model_metadata,
    encode_model_stats,
    encode_repository_index,
    encode_server_metadata,
)
from ..protocol.embeddings import EmbeddingsCodec, decode_embeddings
from ..protocol.predict import PredictCodec

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..dataplane import DataPlane
    from ..settings import HttpSettings
    from ..web import Page, Site
    from .control import Control

__all__ = ["Connections", "HttpApp", "HttpConnection", "status_for"]

logger = logging.getLogger(__name__)

# The single table from domain errors to HTTP status codes; first match on the MRO.
_STATUS: dict[type[LigeiroError], int] = {
    RequestTooLargeError: 413,
    UnsupportedEncodingError: 415,
    InvalidInputError: 400,
    ModelLoadError: 400,
    AuthenticationError: 401,
    ControlDisabledError: 403,
    ModelNotFoundError: 404,
    ModelNotReadyError: 503,
    ServerOverloadedError: 429,
    DeadlineExceededError: 504,
    InferenceError: 500,
}
_REASONS = {
    200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 415: b"Unsupported Media Type",
    429: b"Too Many Requests",
    500: b"Internal Server Error", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}  # fmt: skip
# A full queue empties within milliseconds; a second is the smallest Retry-After.
_RETRY_AFTER = b"retry-after: 1\r\n"
_JSON = b"application/json"
# Triton answers with binary tensor data as an octet stream, the JSON header first.
_BINARY = b"application/octet-stream"
# Requests a client may pipeline ahead of its answers before we stop reading from it.
_MAX_PIPELINED = 64
_EXTENSIONS: list[str] = [BINARY_EXTENSION]


def status_for(error: LigeiroError) -> int:
    """The HTTP status for a domain error (500 for anything unmapped)."""
    for cls in type(error).__mro__:
        status = _STATUS.get(cls)
        if status is not None:
            return status
    return 500


# What the data plane records of a request that came over HTTP, and its wire shapes.
_TRANSPORT = Transport("http", "200", "500", lambda error: str(status_for(error)))
_INFER = RestInferCodec()
_PREDICT = PredictCodec()
_EMBEDDINGS = EmbeddingsCodec()


class _Clock:
    """The ``Date`` header, formatted once a second rather than once a request."""

    __slots__ = ("_second", "header")

    def __init__(self) -> None:
        self._second = -1
        self.header = b""

    def date(self) -> bytes:
        now = int(time.time())  # wall clock on purpose: the Date header is calendar time
        if now != self._second:
            self._second = now
            self.header = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.header


@final
class HttpApp:
    """Routes V2 REST requests: inference to the data plane, the rest to the engine.

    Args:
        plane: the inference call (its engine and metrics serve the other routes).
        settings: transport limits.
        control: the repository API's model control (none: the API's index only).
        site: the dashboard, ``/docs`` and ``/openapi.json`` (ligeiro.web), if served.
    """

    def __init__(
        self,
        plane: DataPlane,
        settings: HttpSettings,
        *,
        control: Control | None = None,
        site: Site | None = None,
    ) -> None:
        self.plane = plane
        self.engine = plane.engine
        self.control = control
        self.metrics = plane.metrics
        self.settings = settings
        self._clock = _Clock()
        self._server_metadata = encode_server_metadata(__version__, _EXTENSIONS)
        self._live_body = encode_health("live", True)
        self._ready_body = encode_health("ready", True)
        self._get_routes = {
            b"/v2/health/live": self._live,
            b"/v2/health/ready": self._ready,
            b"/v2": self._metadata,
            b"/metrics": self._metrics,
        }
        if site is not None:
            for route, page in site.routes().items():
                self._get_routes[route] = partial(self._page, page)

    def response(
        self,
        status: int,
        body: bytes,
        *,
        keep_alive: bool = True,
        content_type: bytes = _JSON,
        headers: bytes = b"",
    ) -> bytes:
        """A whole HTTP/1.1 response, ready to write."""
        return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s%s\r\n%s" % (
            status,
            _REASONS.get(status, b""),
            content_type,
            len(body),
            self._clock.date(),
            headers,
            b"" if keep_alive else b"connection: close\r\n",
            body,
        )

    def error(
        self, status: int, message: str, *, keep_alive: bool = True, headers: bytes = b""
    ) -> bytes:
        if status == 429:
            headers += _RETRY_AFTER
        return self.response(status, encode_error(message), keep_alive=keep_alive, headers=headers)

    async def handle(
        self,
        method: bytes,
        url: bytes,
        body: bytes,
        keep_alive: bool,
        header_length: bytes | None = None,
        traceparent: bytes | None = None,
        tracestate: bytes | None = None,
        content_encoding: bytes | None = None,
        authorization: bytes | None = None,
    ) -> bytes:
        """Answer one request; never raises. HEAD gets GET's headers without the body.

        ``header_length`` is the raw ``Inference-Header-Content-Length`` value, if sent;
        ``traceparent`` and ``tracestate`` the W3C trace context headers;
        ``content_encoding`` the body's ``Content-Encoding`` (gzip and deflate decode);
        ``authorization`` the header the repository API checks.
        """
        if method == b"HEAD":
            answer = await self.handle(b"GET", url, body, keep_alive)
            return answer[: answer.index(b"\r\n\r\n") + 4]
        path = url.split(b"?", 1)[0]
        try:
            if content_encoding is not None:
                body = _decompress(body, content_encoding, self.settings.max_request_bytes)
            if path.startswith(b"/v2/models/"):
                return await self._model_route(
                    method, path[11:], body, header_length, keep_alive, traceparent, tracestate
                )
            if path == b"/v1/embeddings":
                if method != b"POST":
                    return self._not_allowed(b"POST", keep_alive)
                request = decode_embeddings(body)
                context = None if traceparent is None else _trace_context(traceparent, tracestate)
                answer = await self.plane.infer(
                    _TRANSPORT, request.model, None, (request, header_length), _EMBEDDINGS,
                    metadata=context,
                )  # fmt: skip
                return self.response(200, answer, keep_alive=keep_alive)
            if path.startswith(b"/v1/models/") and path.endswith(b":predict"):
                if method != b"POST":
                    return self._not_allowed(b"POST", keep_alive)
                return await self._predict(
                    _text(path[11:-8]), body, header_length, keep_alive, traceparent, tracestate
                )
            if path.startswith(b"/v2/repository/"):
                if method != b"POST":
                    return self._not_allowed(b"POST", keep_alive)
                return await self._repository(_text(path[15:]), body, authorization, keep_alive)
            route = self._get_routes.get(path.rstrip(b"/") or path)
            if route is None:
                return self.error(
                    404, f"no route for {path.decode('latin-1')}", keep_alive=keep_alive
                )
            if method != b"GET":
                return self._not_allowed(b"GET", keep_alive)
            return route(keep_alive)
        except LigeiroError as exc:
            status = status_for(exc)
            headers = b'www-authenticate: Bearer realm="ligeiro"\r\n' if status == 401 else b""
            return self.error(status, str(exc), keep_alive=keep_alive, headers=headers)
        except Exception:
            logger.exception(
                "unexpected error answering %s %s", method.decode(), url.decode("latin-1")
            )
            return self.error(500, "internal server error (logged)", keep_alive=keep_alive)

    # -- routes ---------------------------------------------------------------------

    def _not_allowed(self, allow: bytes, keep_alive: bool) -> bytes:
        return self.error(
            405,
            f"method not allowed; use {allow.decode()}",
            keep_alive=keep_alive,
            headers=b"allow: %s\r\n" % allow,
        )

    def _live(self, keep_alive: bool) -> bytes:
        return self.response(200, self._live_body, keep_alive=keep_alive)

    def _ready(self, keep_alive: bool) -> bytes:
        # Ready once the repository is loaded; a broken model is reported on its own
        # routes and does not take the server out of rotation.
        return self.response(200, self._ready_body, keep_alive=keep_alive)

    def _metadata(self, keep_alive: bool) -> bytes:
        return self.response(200, self._server_metadata, keep_alive=keep_alive)

    def _page(self, page: Page, keep_alive: bool) -> bytes:
        return self.response(
            200,
            page.body(),
            keep_alive=keep_alive,
            content_type=page.content_type,
            headers=page.headers,
        )

    def _metrics(self, keep_alive: bool) -> bytes:
        return self.response(
            200,
            self.metrics.exposition(),
            keep_alive=keep_alive,
            content_type=METRICS_CONTENT_TYPE.encode(),
        )

    async def _repository(
        self, rest: str, body: bytes, authorization: bytes | None, keep_alive: bool
    ) -> bytes:
        """``POST /v2/repository/index``, ``.../models/{m}/load`` and ``.../unload``."""
        control = self.control
        parts = rest.split("/")
        if parts == ["index"]:
            if control is not None:
                control.authorize(authorization, change=False)
            ready_only = bool(decode_json_object(body, "index request").get("ready", False))
            states = [s for s in self.engine.index() if s.is_ready or not ready_only]
            return self.response(200, encode_repository_index(states), keep_alive=keep_alive)
        if len(parts) != 3 or parts[0] != "models" or parts[2] not in ("load", "unload"):
            return self.error(404, f"no route for /v2/repository/{rest}", keep_alive=keep_alive)
        if control is None:
            raise ControlDisabledError("this server has no model control")
        control.authorize(authorization, change=True)
        name = parts[1]
        if parts[2] == "unload":
            states = await control.unload(name)
        else:
            parameters = decode_json_object(body, "load request").get("parameters") or {}
            config = parameters.get("config") if isinstance(parameters, dict) else None
            if config is not None and not isinstance(config, str):
                raise InvalidInputError(
                    "parameters.config must be a string holding the config as JSON, "
                    f"got {type(config).__name__}"
                )
            states = await control.load(name, None if config is None else config.encode())
        return self.response(200, encode_repository_index(states), keep_alive=keep_alive)

    async def _model_route(
        self,
        method: bytes,
        rest: bytes,
        body: bytes,
        header_length: bytes | None,
        keep_alive: bool,
        traceparent: bytes | None,
        tracestate: bytes | None,
    ) -> bytes:
        parts = _text(rest).split("/")
        name, version, tail = parts[0], None, parts[1:]
        if len(tail) >= 2 and tail[0] == "versions":
            version, tail = tail[1], tail[2:]
        if tail == ["infer"]:
            if method != b"POST":
                return self._not_allowed(b"POST", keep_alive)
            return await self._infer(
                name, version, body, header_length, keep_alive, traceparent, tracestate
            )
        if len(tail) > 1 or (tail and tail[0] not in ("ready", "stats")) or not name:
            return self.error(404, f"no route for /v2/models/{_text(rest)}", keep_alive=keep_alive)
        if method != b"GET":
            return self._not_allowed(b"GET", keep_alive)
        if name == "stats" and not tail and version is None:  # GET /v2/models/stats
            return self.response(
                200, encode_model_stats(self.engine.stats()), keep_alive=keep_alive
            )
        if tail == ["stats"]:
            body = encode_model_stats(self.engine.stats(name, version))
            return self.response(200, body, keep_alive=keep_alive)
        model = self.engine.model(name, version)
        if tail:
            return self.response(
                200, encode_health("ready", True, model.name), keep_alive=keep_alive
            )
        versions = self.engine.versions(name)
        body = encode_model_metadata(
            name,
            versions,
            model.config.platform,
            model.inputs.values(),
            model.outputs.values(),
            model.provider,
        )
        return self.response(200, body, keep_alive=keep_alive)

    async def _infer(
        self,
        name: str,
        version: str | None,
        body: bytes,
        header_length: bytes | None,
        keep_alive: bool,
        traceparent: bytes | None,
        tracestate: bytes | None,
    ) -> bytes:
        """``POST /v2/models/{m}[/versions/{v}]/infer`` through the data plane, framed."""
        answer, json_size = await self.plane.infer(
            _TRANSPORT, name, version, (body, header_length), _INFER,
            metadata=None if traceparent is None else _trace_context(traceparent, tracestate),
        )  # fmt: skip
        if json_size is None:
            return self.response(200, answer, keep_alive=keep_alive)
        return self.response(
            200,
            answer,
            keep_alive=keep_alive,
            content_type=_BINARY,
            headers=b"inference-header-content-length: %d\r\n" % json_size,
        )

    async def _predict(
        self,
        name: str,
        body: bytes,
        header_length: bytes | None,
        keep_alive: bool,
        traceparent: bytes | None,
        tracestate: bytes | None,
    ) -> bytes:
        """``POST /v1/models/{m}:predict`` through the data plane, framed."""
        answer = await self.plane.infer(
            _TRANSPORT, name, None, (body, header_length), _PREDICT,
            metadata=None if traceparent is None else _trace_context(traceparent, tracestate),
        )  # fmt: skip
        return self.response(200, answer, keep_alive=keep_alive)


def _trace_context(
    traceparent: bytes, tracestate: bytes | None
) -> Callable[[], list[tuple[str, str]]]:
    """The request's W3C trace context headers, read only when tracing is on."""

    def headers() -> list[tuple[str, str]]:
        pairs = [("traceparent", traceparent.decode("latin-1"))]
        if tracestate is not None:
            pairs.append(("tracestate", tracestate.decode("latin-1")))
        return pairs

    return headers


# Content-Encoding -> zlib's wbits: gzip's header and trailer, or zlib's (RFC 9110
# "deflate").
_ENCODINGS = {
    b"gzip": 16 + zlib.MAX_WBITS,
    b"x-gzip": 16 + zlib.MAX_WBITS,
    b"deflate": zlib.MAX_WBITS,
}


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    """The body decoded; never more than ``limit`` bytes of it (a small bomb stays small).

    Raises:
        UnsupportedEncodingError: an encoding other than gzip or deflate.
        RequestTooLargeError: the decoded body is over ``limit``.
        InvalidInputError: the body is not valid in its encoding, or is cut short.
    """
    wbits = _ENCODINGS.get(encoding)
    name = encoding.decode("latin-1")
    if wbits is None:
        raise UnsupportedEncodingError(
            f"Content-Encoding {name!r} is not supported; send gzip, deflate or identity"
        )
    decoder = zlib.decompressobj(wbits)
    try:
        data = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInputError(f"the body is not valid {name}: {exc}") from None
    if len(data) > limit:
        raise RequestTooLargeError(
            f"the {name} body decodes to more than the limit of {limit} bytes"
        )
    if not decoder.eof:
        raise InvalidInputError(f"the {name} body is cut short")
    return data


def _text(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    return unquote(text) if "%" in text else text


_SWEEP_INTERVAL_S = 1.0
# At shutdown an idle keep-alive connection stays open this long for the request its
# client may be sending at that moment (answered with Connection: close), instead of
# being closed under it.
_SHUTDOWN_IDLE_S = 0.5
_CLOSE = b"connection: close\r\n"


def _closing(answer: bytes) -> bytes:
    """A keep-alive answer with ``Connection: close`` added after its status line."""
    end = answer.index(b"\r\n") + 2
    return b"".join((answer[:end], _CLOSE, answer[end:]))


@final
class Connections(set["HttpConnection"]):
    """A server's open connections: closes stalled and idle ones, tells when none is left.

    ``empty`` is set whenever the last connection closes (the shutdown drain waits on
    it); after ``shutdown``, a connection that opens (accepted as shutdown began) is
    shut down as it opens. Once a second a timer closes keep-alive connections idle for longer than
    ``keep_alive_timeout_s`` and answers 408 to requests that stopped arriving for longer
    than ``receive_timeout_s``: one timer for all connections, none per request.
    """

    def __init__(self, settings: HttpSettings) -> None:
        super().__init__()
        self.settings = settings
        self.empty = asyncio.Event()
        self.empty.set()
        self._timer: asyncio.TimerHandle | None = None
        self.closing = False

    def add(self, connection: HttpConnection) -> None:
        super().add(connection)
        self.empty.clear()
        if self.closing:
            connection.shutdown()

    def shutdown(self) -> None:
        """Shut every connection down (``HttpConnection.shutdown``), and any that opens."""
        self.closing = True
        for connection in list(self):
            connection.shutdown()

    def abort(self) -> int:
        """Close every connection at once, mid-request or not; how many there were."""
        count = len(self)
        for connection in list(self):
            connection.abort()
        return count

    def discard(self, connection: object) -> None:
        super().discard(connection)
        if not self:
            self.empty.set()

    def start_sweeping(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(_SWEEP_INTERVAL_S, self._sweep, loop)

    def stop_sweeping(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for connection in list(self):
            connection.expire(now, self.settings)
        self._timer = loop.call_later(_SWEEP_INTERVAL_S, self._sweep, loop)


@final
class HttpConnection(asyncio.Protocol):
    """One client connection: parse with httptools, answer in order, drain on shutdown."""

    __slots__ = (
        "_app", "_authorization", "_body", "_connections", "_content_encoding", "_content_length",
        "_expect_continue", "_header_length", "_loop", "_parser", "_pending", "_size",
        "_too_large", "_traceparent", "_tracestate", "_transport", "_url", "_writing_paused",
        "is_closing", "is_receiving", "last_active",
    )  # fmt: skip

    def __init__(self, app: HttpApp, connections: Connections) -> None:
        self._app = app
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        # Answers being computed, oldest first, with their keep-alive flag.
        self._pending: deque[tuple[asyncio.Task[bytes], bool]] = deque()
        self._url = b""
        self._body: list[bytes] = []
        self._size = 0
        self._content_length = 0
        self._expect_continue = False
        self._header_length: bytes | None = None
        self._content_encoding: bytes | None = None
        self._authorization: bytes | None = None
        self._traceparent: bytes | None = None
        self._tracestate: bytes | None = None
        self._too_large = False
        self._writing_paused = False
        self.is_receiving = False
        self.is_closing = False
        self.last_active = self._loop.time()

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        for task, _ in self._pending:
            task.cancel()
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrade is not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # -- httptools callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:
        self.is_receiving = True
        self._url = b""
        self._body = []
        self._size = 0
        self._content_length = 0
        self._expect_continue = False
        self._header_length = None
        self._traceparent = None
        self._tracestate = None
        self._content_encoding = None
        self._authorization = None
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only seven headers matter here; compare lengths first to skip the others cheaply.
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            self._content_length = int(value) if value.isdigit() else 0
        elif size == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        elif size == 31 and name.lower() == b"inference-header-content-length":
            self._header_length = value  # the binary tensor extension; the codec parses it
        elif size == 11 and name.lower() == b"traceparent":  # W3C trace context, for tracing
            self._traceparent = value
        elif size == 10 and name.lower() == b"tracestate":
            self._tracestate = value
        elif size == 16 and name.lower() == b"content-encoding":
            value = value.strip().lower()
            self._content_encoding = None if value == b"identity" else value
        elif size == 13 and name.lower() == b"authorization":  # the repository API's token
            self._authorization = value

    def on_headers_complete(self) -> None:
        limit = self._app.settings.max_request_bytes
        if self._content_length > limit:
            self._reject_too_large(self._content_length)
        elif self._expect_continue and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._size += len(body)
        if self._size > self._app.settings.max_request_bytes:  # chunked bodies have no length
            self._reject_too_large(self._size)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.is_receiving = False
        transport = self._transport
        if self._too_large or transport is None or transport.is_closing():
            return
        keep_alive = self._parser.should_keep_alive() and not self.is_closing
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        answer = self._app.handle(
            self._parser.get_method(),
            self._url,
            body,
            keep_alive,
            self._header_length,
            self._traceparent,
            self._tracestate,
            self._content_encoding,
            self._authorization,
        )
        task = self._loop.create_task(answer)
        self._pending.append((task, keep_alive))
        task.add_done_callback(self._write_answers)
        if len(self._pending) == _MAX_PIPELINED:
            self._update_reading()

    # -- helpers -------------------------------------------------------------------

    def _write_answers(self, _done: asyncio.Task[bytes]) -> None:
        """Write every finished answer at the head of the queue, in request order."""
        pending = self._pending
        transport = self._transport
        while pending and pending[0][0].done():
            task, keep_alive = pending.popleft()
            if transport is None or transport.is_closing() or task.cancelled():
                continue
            answer = task.result()
            if keep_alive and self.is_closing and not pending and not self.is_receiving:
                # Computed before shutdown began, and the last: the client must not
                # send another request on a connection that closes now.
                answer, keep_alive = _closing(answer), False
            transport.write(answer)
            self.last_active = self._loop.time()
            if not keep_alive:
                transport.close()
                return
        if transport is None or transport.is_closing():
            return
        if len(pending) < _MAX_PIPELINED and not transport.is_reading():
            # One read can queue more than the limit (the parser takes it all): resume
            # once below it, not at exactly one under, which a drain can step over.
            self._update_reading()

    def _update_reading(self) -> None:
        # Stop reading a client that does not read its answers or pipelines too far
        # ahead: memory per connection stays bounded.
        if self._transport is None or self._transport.is_closing():
            return
        if self._writing_paused or len(self._pending) >= _MAX_PIPELINED:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    def _reject_too_large(self, size: int) -> None:
        # Answer before reading the body, then close: the rest of it is never read.
        self._too_large = True
        limit = self._app.settings.max_request_bytes
        self._fail(413, f"request body of {size} bytes is over the limit of {limit} bytes")

    def _fail(self, status: int, message: str) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(self._app.error(status, message, keep_alive=False))
            self._transport.close()

    def expire(self, now: float, settings: HttpSettings) -> None:
        """Close if idle too long; answer 408 if a request stopped arriving too long ago."""
        quiet = now - self.last_active
        if self.is_receiving:
            if quiet > settings.receive_timeout_s:
                self._fail(
                    408, f"request incomplete after {settings.receive_timeout_s:g} s of silence"
                )
        elif (
            not self._pending
            and quiet > settings.keep_alive_timeout_s
            and self._transport is not None
        ):
            self._transport.close()

    def shutdown(self) -> None:
        """Stop keeping alive: the last answer (to a request computed, being received, or
        arriving within ``_SHUTDOWN_IDLE_S`` on an idle connection) carries
        ``Connection: close``, and the connection closes after it; an idle connection
        that gets no request in that time is closed then."""
        self.is_closing = True
        if not self.is_receiving and not self._pending and self._transport is not None:
            self._loop.call_later(_SHUTDOWN_IDLE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if not self.is_receiving and not self._pending and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

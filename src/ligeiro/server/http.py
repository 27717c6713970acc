"""V2 REST over HTTP/1.1: httptools parses, an asyncio protocol on uvloop serves.

The layer was chosen by measurement (docs/adr/0001-http-layer.md): each request runs
as an asyncio task (cheaper than answering inside the parser callback, and what an
async engine needs), and each connection writes its answers in request order, so
pipelining stays correct. Every error maps to a status in ``_STATUS``, the one table
between the domain's errors and HTTP.

``ROUTE_ACCESS`` says which routes need an inference token (``server/access.py``): any
path it does not name is protected. The connection enforces the ``[http]`` limits as
bytes arrive: the URL (414), the head's bytes and fields (431, counted before the
parser buffers a long line whole), the head's and the request's total time (408,
slowloris), connections per worker (503), pipelined and keep-alive requests, and a JSON
body's size (413), lower than a binary one's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from email.utils import formatdate
from functools import partial
from typing import TYPE_CHECKING, final
from urllib.parse import unquote

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
    RateLimitedError,
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
from .access import Access, PathRedactor, Route
from .http_connection import Connections as Connections
from .http_connection import HttpConnection as HttpConnection

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..dataplane import DataPlane
    from ..settings import HttpSettings
    from ..web import Page, Site
    from .control import Control

__all__ = ["ROUTE_ACCESS", "Connections", "HttpApp", "HttpConnection", "route_access", "status_for"]

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
    408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    415: b"Unsupported Media Type", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}  # fmt: skip
# A full queue empties within milliseconds; a second is the smallest Retry-After.
_RETRY_AFTER = b"retry-after: 1\r\n"
_JSON = b"application/json"
# The head of a 200 JSON answer up to its content length: ``response``'s common case.
_OK_JSON = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
# Triton answers with binary tensor data as an octet stream, the JSON header first.
_BINARY = b"application/octet-stream"
_WWW_AUTHENTICATE = b'www-authenticate: Bearer realm="ligeiro"\r\n'
_EXTENSIONS: list[str] = [BINARY_EXTENSION]


# What each route needs (server/access.py); a path not named here is PROTECTED. The
# repository API's load and unload check the admin token themselves (Control).
ROUTE_ACCESS: dict[bytes, Route] = {
    b"/v2/health/live": Route.OPEN,
    b"/v2/health/ready": Route.OPEN,
    b"/metrics": Route.METRICS,
}
_ADMIN_PREFIX = b"/v2/repository/models/"
# Errors whose messages may carry the repository's paths: redacted for clients.
_REDACTED = (ModelNotReadyError, ModelNotFoundError, ModelLoadError, InferenceError)


def route_access(path: bytes) -> Route:
    """What a request path needs: ``ROUTE_ACCESS``'s entry, or PROTECTED."""
    route = ROUTE_ACCESS.get(path.rstrip(b"/") or path)
    if route is not None:
        return route
    return Route.ADMIN if path.startswith(_ADMIN_PREFIX) else Route.PROTECTED


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
_INFER_TAIL = ("infer",)
# Parses of /v2/models/... paths kept (HttpApp._model_path): at most 256 KiB of paths.
_MOST_MODEL_PATHS = 1024
_LONGEST_KEPT = 256


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
        access: the inference tokens and rate limit (none: every route open).
    """

    def __init__(
        self,
        plane: DataPlane,
        settings: HttpSettings,
        *,
        control: Control | None = None,
        site: Site | None = None,
        access: Access | None = None,
    ) -> None:
        self.plane = plane
        self.access = Access() if access is None else access
        self.redact = PathRedactor(plane.engine.root)
        self.engine = plane.engine
        self.control = control
        self.metrics = plane.metrics
        self.settings = settings
        self._clock = _Clock()
        self._model_paths: dict[bytes, tuple[str, str | None, tuple[str, ...]]] = {}
        self._server_metadata = encode_server_metadata(__version__, _EXTENSIONS)
        self._live_body = encode_health("live", True)
        self._ready_body = encode_health("ready", True)
        self._get_routes = {
            b"/v2/health/live": self._live,
            b"/v2/health/ready": self._ready,
            b"/v2": self._metadata,
            b"/metrics": self._metrics,
        }
        # The site's static pages and assets need no token (``Page.token``): a browser
        # cannot send one when it navigates; what shows the models still does.
        self._open_pages: frozenset[bytes] = frozenset()
        if site is not None:
            pages = site.routes()
            for route, page in pages.items():
                self._get_routes[route] = partial(self._page, page)
            self._open_pages = frozenset(r for r, page in pages.items() if page.token == "none")

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
        if status == 200 and content_type is _JSON and keep_alive and not headers:
            # Four fields to format instead of eight: 0.2 µs less on every inference.
            return b"%s%d\r\n%s\r\n%s" % (_OK_JSON, len(body), self._clock.date(), body)
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
        if status == 429 and b"retry-after" not in headers:
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
        ``authorization`` the repository API's admin token, if sent. The inference
        tokens and the rate limit were checked before the body was read (``admit``).
        """
        if method == b"HEAD":
            answer = await self.handle(
                b"GET", url, body, keep_alive, header_length, traceparent, tracestate,
                content_encoding, authorization,
            )  # fmt: skip
            return answer[: answer.index(b"\r\n\r\n") + 4]
        path = url.split(b"?", 1)[0]
        try:
            if content_encoding is not None:
                limit = self.settings.max_request_bytes
                if header_length is None:
                    limit = min(limit, self.settings.max_json_bytes)
                body = _decompress(body, content_encoding, limit)
            if path.startswith(b"/v2/models/"):
                name, version, tail = self._model_path(path)
                if tail != _INFER_TAIL:
                    return self._model_route(method, name, version, tail, keep_alive)
                if method != b"POST":
                    return self._not_allowed(b"POST", keep_alive)
                context = None if traceparent is None else _trace_context(traceparent, tracestate)
                answer, json_size = await self.plane.infer(
                    _TRANSPORT, name, version, (body, header_length), _INFER, metadata=context
                )
                return self._inferred(answer, json_size, keep_alive)
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
                context = None if traceparent is None else _trace_context(traceparent, tracestate)
                answer = await self.plane.infer(
                    _TRANSPORT, _text(path[11:-8]), None, (body, header_length), _PREDICT,
                    metadata=context,
                )  # fmt: skip
                return self.response(200, answer, keep_alive=keep_alive)
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
            headers = _WWW_AUTHENTICATE if status == 401 else b""
            message = self.redact(str(exc)) if isinstance(exc, _REDACTED) else str(exc)
            return self.error(status, message, keep_alive=keep_alive, headers=headers)
        except Exception:
            logger.exception(
                "unexpected error answering %s %s", method.decode(), url.decode("latin-1")
            )
            return self.error(500, "internal server error (logged)", keep_alive=keep_alive)

    def admit(self, url: bytes, authorization: bytes | None, client: str) -> bytes | None:
        """Check a request's token and rate once its head has arrived, before its body:
        ``None``, or the answer that refuses it (401 or 429; the connection then closes).
        Only called when ``access.is_guarding``."""
        access = self.access
        try:
            path = url.split(b"?", 1)[0]
            route = Route.OPEN if path in self._open_pages else route_access(path)
            access.check(route, authorization)
            access.admit(client)
        except LigeiroError as exc:
            headers = _WWW_AUTHENTICATE
            if isinstance(exc, RateLimitedError):
                headers = b"retry-after: %d\r\n" % max(1, math.ceil(exc.retry_after_s))
            return self.error(status_for(exc), str(exc), keep_alive=False, headers=headers)
        return None

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
            # With inference tokens the index is a protected route like the others (the
            # handler checked it); without, the admin token guards it when there is one.
            if control is not None and not self.access.is_enabled:
                control.authorize(authorization, change=False)
            ready_only = bool(decode_json_object(body, "index request").get("ready", False))
            states = [s for s in self.engine.index() if s.is_ready or not ready_only]
            body = encode_repository_index(states, self.redact)
            return self.response(200, body, keep_alive=keep_alive)
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
        return self.response(
            200, encode_repository_index(states, self.redact), keep_alive=keep_alive
        )

    def _model_path(self, path: bytes) -> tuple[str, str | None, tuple[str, ...]]:
        """``/v2/models/{m}[/versions/{v}]/{tail...}`` as (m, v or None, tail), kept: a
        server answers the same few paths. A client can vary them: at most
        ``_MOST_MODEL_PATHS`` are kept (then afresh), none longer than ``_LONGEST_KEPT``."""
        parsed = self._model_paths.get(path)
        if parsed is None:
            parts = _text(path[11:]).split("/")
            name, version, tail = parts[0], None, parts[1:]
            if len(tail) >= 2 and tail[0] == "versions":
                version, tail = tail[1], tail[2:]
            parsed = (name, version, tuple(tail))
            if len(path) <= _LONGEST_KEPT:
                if len(self._model_paths) >= _MOST_MODEL_PATHS:
                    self._model_paths.clear()
                self._model_paths[path] = parsed
        return parsed

    def _model_route(
        self, method: bytes, name: str, version: str | None, tail: tuple[str, ...],
        keep_alive: bool,
    ) -> bytes:  # fmt: skip
        """A model's routes but ``infer``: its metadata, ``ready`` and ``stats``."""
        if len(tail) > 1 or (tail and tail[0] not in ("ready", "stats")) or not name:
            rest = "/".join((name, *(() if version is None else ("versions", version)), *tail))
            return self.error(404, f"no route for /v2/models/{rest}", keep_alive=keep_alive)
        if method != b"GET":
            return self._not_allowed(b"GET", keep_alive)
        if name == "stats" and not tail and version is None:  # GET /v2/models/stats
            return self.response(
                200, encode_model_stats(self.engine.stats()), keep_alive=keep_alive
            )
        if tail == ("stats",):
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

    def _inferred(self, answer: bytes, json_size: int | None, keep_alive: bool) -> bytes:
        """The response to ``POST /v2/models/{m}[/versions/{v}]/infer``: JSON, or JSON
        then binary outputs (their JSON's size in ``Inference-Header-Content-Length``)."""
        if json_size is None:
            return self.response(200, answer, keep_alive=keep_alive)
        return self.response(
            200,
            answer,
            keep_alive=keep_alive,
            content_type=_BINARY,
            headers=b"inference-header-content-length: %d\r\n" % json_size,
        )


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

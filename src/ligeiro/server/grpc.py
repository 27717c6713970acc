"""V2 gRPC (``inference.GRPCInferenceService``): the service's methods over the engine.

It runs on the worker's event loop beside HTTP, carried by one of two transports
(``[grpc] transport``): our own HTTP/2 framing in ``grpc_h2.py`` (ADR 0007), or grpc.aio
in ``grpc_aio.py``, whose C core parses HTTP/2 and enforces the message limit. This
module imports no grpcio: the h2 transport never loads it. Both call the same
``GrpcService`` methods with a ``CallContext``; ``protocol/grpc_codec.py`` turns messages
into numpy. Every domain error maps to a
status in ``_STATUS``, the one table between the errors and gRPC.

``METHOD_ACCESS`` says which methods need an inference token (``server/access.py``):
a method it does not name is protected. Both transports ask ``GrpcService.admit`` once
per call, before its message is read (the h2 one when the stream opens).
"""

from __future__ import annotations

import asyncio
import logging
from enum import IntEnum
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, final

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
)
from .access import Access, PathRedactor, Route
from ..dataplane import Transport
from ..protocol.grpc_codec import (
    ModelInferCodec,
    decode_message,
    encode_infer_response,
    encode_model_metadata,
    encode_model_statistics,
    encode_stream_answer,
    parse_infer_request,
    pb,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence

    from google.protobuf.message import Message

    from ..dataplane import DataPlane
    from ..settings import GrpcSettings
    from .control import Control
    from .grpc_aio import GrpcServer
    from .grpc_h2 import H2GrpcServer
    from .tls import ServerTls

__all__ = [
    "METHOD_ACCESS",
    "SERVICE_NAME",
    "CallContext",
    "GrpcService",
    "StatusCode",
    "start_grpc_server",
    "status_for",
    "unary_methods",
]

logger = logging.getLogger(__name__)


class StatusCode(IntEnum):
    """gRPC's status codes (the spec's numbers), so that the service needs no grpcio."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# The single table from domain errors to gRPC status codes; first match on the MRO.
_STATUS: dict[type[LigeiroError], StatusCode] = {
    RequestTooLargeError: StatusCode.RESOURCE_EXHAUSTED,
    InvalidInputError: StatusCode.INVALID_ARGUMENT,
    ModelLoadError: StatusCode.INVALID_ARGUMENT,
    AuthenticationError: StatusCode.UNAUTHENTICATED,
    ControlDisabledError: StatusCode.PERMISSION_DENIED,
    ModelNotFoundError: StatusCode.NOT_FOUND,
    ModelNotReadyError: StatusCode.UNAVAILABLE,
    ServerOverloadedError: StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceededError: StatusCode.DEADLINE_EXCEEDED,
    InferenceError: StatusCode.INTERNAL,
}
_OK = StatusCode.OK
# Once the server shuts down, a stream silent for this long is ended.
_STREAM_GRACE_S = 1.0
_INTERNAL = StatusCode.INTERNAL
_INTERNAL_MESSAGE = "internal server error (logged)"
# What each method needs (server/access.py); a method not named here is PROTECTED. Load
# and unload check the admin token themselves (Control).
METHOD_ACCESS: dict[str, Route] = {
    "ServerLive": Route.OPEN,
    "ServerReady": Route.OPEN,
    "RepositoryModelLoad": Route.ADMIN,
    "RepositoryModelUnload": Route.ADMIN,
}
# Errors whose messages may carry the repository's paths: redacted for clients.
_REDACTED = (ModelNotReadyError, ModelNotFoundError, ModelLoadError, InferenceError)


class CallContext(Protocol):
    """What a method asks of its call, whichever transport carries it."""

    def invocation_metadata(self) -> Sequence[tuple[str, str]] | None: ...

    async def abort(self, code: StatusCode, details: str = "") -> NoReturn: ...


if TYPE_CHECKING:
    # A unary method behind its parsing: the request's bytes in, the answer's bytes out.
    UnaryHandler = Callable[[bytes, CallContext], Awaitable[bytes]]


def status_for(error: LigeiroError) -> StatusCode:
    """The gRPC status for a domain error (INTERNAL for anything unmapped)."""
    for cls in type(error).__mro__:
        status = _STATUS.get(cls)
        if status is not None:
            return status
    return _INTERNAL


# What the data plane records of a call that came over gRPC, and its wire shape.
_TRANSPORT = Transport("grpc", _OK.name, _INTERNAL.name, lambda error: status_for(error).name)
_CODEC = ModelInferCodec()


async def _abort(
    context: CallContext, error: Exception, redact: Callable[[str], str] | None = None
) -> NoReturn:
    if isinstance(error, LigeiroError):
        message = str(error)
        if redact is not None and isinstance(error, _REDACTED):
            message = redact(message)
        await context.abort(status_for(error), message)
    logger.error("unexpected error in a gRPC call", exc_info=error)
    await context.abort(_INTERNAL, _INTERNAL_MESSAGE)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


@final
class GrpcService:
    """The ``inference.GRPCInferenceService`` methods, each a thin call into the engine.

    Args:
        plane: the inference call (``protocol="grpc"``); its engine serves the rest.
        control: the repository API's model control (none: the index only).
        access: the inference tokens and rate limit (none: every method open).
    """

    def __init__(
        self, plane: DataPlane, control: Control | None = None, access: Access | None = None
    ) -> None:
        self.plane = plane
        self.engine = plane.engine
        self.control = control
        self.access = Access() if access is None else access
        self.redact = PathRedactor(plane.engine.root)
        self._closing = asyncio.Event()
        self._routes = {
            f"/{SERVICE_NAME}/{name}".encode(): route for name, route in METHOD_ACCESS.items()
        }

    def admit(
        self, path: bytes, authorization: bytes | str | None, peer: Callable[[], str]
    ) -> LigeiroError | None:
        """Whether a call to ``path`` (``/inference.GRPCInferenceService/<method>``) may
        run: ``None``, or the error to end it with (UNAUTHENTICATED, RESOURCE_EXHAUSTED).
        ``peer`` names the client, for the rate limit (called only when there is one)."""
        access = self.access
        if not access.is_guarding:
            return None
        try:
            access.check(self._routes.get(path, Route.PROTECTED), authorization)
            if access.rate_limit is not None:
                access.admit(peer())
        except LigeiroError as exc:
            return exc
        return None

    # -- health and metadata ----------------------------------------------------------

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: CallContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: CallContext
    ) -> pb.ServerReadyResponse:
        # Ready once the repository is loaded, as over HTTP.
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: CallContext
    ) -> pb.ModelReadyResponse:
        # Unknown or broken: not ready, as REST answers and tritonclient reads it.
        try:
            self.engine.model(request.name, request.version or None)
        except (ModelNotReadyError, ModelNotFoundError):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: CallContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="ligeiro", version=__version__, extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: CallContext
    ) -> pb.ModelMetadataResponse:
        try:
            model = self.engine.model(request.name, request.version or None)
        except LigeiroError as exc:
            await _abort(context, exc, self.redact)
        versions = self.engine.versions(model.name)
        return encode_model_metadata(
            model.name,
            versions,
            model.config.platform,
            model.inputs.values(),
            model.outputs.values(),
            model.provider,
        )

    # -- inference ----------------------------------------------------------------------

    def _infer(self, data: bytes, context: CallContext) -> Coroutine[Any, Any, bytes]:
        """A serialized ModelInferRequest through the data plane; raises the domain's errors.

        The request is parsed here and the data plane's coroutine returned, to be awaited
        by the caller: one coroutine a call fewer.
        """
        request = parse_infer_request(data)
        return self.plane.infer(
            _TRANSPORT,
            request.model_name,
            request.model_version or None,
            request,
            _CODEC,
            request_id=request.id or None,
            metadata=context.invocation_metadata,
        )

    async def ModelInfer(self, data: bytes, context: CallContext) -> bytes:
        """Takes the request's bytes (its own parser, ``parse_infer_request``), answers bytes."""
        try:
            return await self._infer(data, context)
        except Exception as exc:
            await _abort(context, exc, self.redact)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[bytes], context: CallContext
    ) -> AsyncIterator[bytes]:
        # As Triton does: a failed request answers with error_message and the stream
        # carries on with the next one. Messages arrive unparsed so that a malformed
        # one is answered like any other bad request. Once the server shuts down, a
        # stream that stays silent for _STREAM_GRACE_S is ended (OK), so an idle client
        # does not hold the shutdown for the whole graceful timeout.
        messages = aiter(request_iterator)
        closing = asyncio.ensure_future(self._closing.wait())
        receive: asyncio.Future[bytes] | None = None
        try:
            while True:
                receive = asyncio.ensure_future(anext(messages))
                await asyncio.wait((receive, closing), return_when=asyncio.FIRST_COMPLETED)
                try:
                    data = await (
                        asyncio.wait_for(receive, _STREAM_GRACE_S) if closing.done() else receive
                    )
                except (StopAsyncIteration, TimeoutError):
                    return
                yield await self._stream_answer(data, context)
        finally:
            closing.cancel()
            # A stream cancelled (reset by its client) leaves its read behind: cancel it,
            # or read its end, so that it is not logged with a traceback (a log flood).
            if receive is not None and not receive.cancel() and not receive.cancelled():
                receive.exception()

    async def _stream_answer(self, data: bytes, context: CallContext) -> bytes:
        """A serialized ModelStreamInferResponse: the answer, or the request's error."""
        try:
            response = await self._infer(data, context)
        except LigeiroError as exc:
            message = self.redact(str(exc)) if isinstance(exc, _REDACTED) else str(exc)
        except Exception:
            logger.exception("unexpected error in a gRPC stream request")
            message = _INTERNAL_MESSAGE
        else:
            return encode_stream_answer(response)
        answer: bytes = pb.ModelStreamInferResponse(error_message=message).SerializeToString()
        return answer

    def close_streams(self) -> None:
        """Shutting down: end each stream once it has been silent for a moment."""
        self._closing.set()

    # -- repository -----------------------------------------------------------------------

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: CallContext
    ) -> pb.ModelStatisticsResponse:
        try:
            stats = self.engine.stats(request.name or None, request.version or None)
        except LigeiroError as exc:
            await _abort(context, exc, self.redact)
        return encode_model_statistics(stats)

    def _authorize(self, context: CallContext, *, change: bool) -> Control:
        """The model control, once the call's ``authorization`` metadata passes it."""
        if self.control is None:
            raise ControlDisabledError("this server has no model control")
        token = next(
            (v for k, v in context.invocation_metadata() or () if k.lower() == "authorization"),
            None,
        )
        self.control.authorize(token.encode() if isinstance(token, str) else token, change=change)
        return self.control

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: CallContext
    ) -> pb.RepositoryIndexResponse:
        if self.control is not None and not self.access.is_enabled:
            try:
                self._authorize(context, change=False)
            except LigeiroError as exc:
                await _abort(context, exc, self.redact)
        models = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=s.name,
                version=s.version,
                state="READY" if s.is_ready else "UNAVAILABLE",
                reason=self.redact(s.index_reason) if s.index_reason else "",
            )
            for s in self.engine.index()
            if s.is_ready or not request.ready
        ]
        return pb.RepositoryIndexResponse(models=models)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: CallContext
    ) -> pb.RepositoryModelLoadResponse:
        """Reload a model; ``parameters["config"]`` (a JSON string) replaces its config."""
        try:
            control = self._authorize(context, change=True)
            config = None
            if "config" in request.parameters:
                parameter = request.parameters["config"]
                if parameter.WhichOneof("parameter_choice") != "string_param":
                    raise InvalidInputError(
                        "parameters['config'] must be a string_param holding the config as JSON"
                    )
                config = parameter.string_param.encode()
            await control.load(request.model_name, config)
        except LigeiroError as exc:
            await _abort(context, exc, self.redact)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: CallContext
    ) -> pb.RepositoryModelUnloadResponse:
        try:
            await self._authorize(context, change=True).unload(request.model_name)
        except LigeiroError as exc:
            await _abort(context, exc, self.redact)
        return pb.RepositoryModelUnloadResponse()


SERVICE_NAME = "inference.GRPCInferenceService"
"""The V2 gRPC service; both transports route ``/{SERVICE_NAME}/{method}``."""
# Each unary method but ModelInfer (which reads its bytes itself) and the name of the
# message it takes, read from ``pb`` on the first call (protobuf loads on first use).
_UNARY: dict[str, str] = {
    "ServerLive": "ServerLiveRequest",
    "ServerReady": "ServerReadyRequest",
    "ModelReady": "ModelReadyRequest",
    "ServerMetadata": "ServerMetadataRequest",
    "ModelMetadata": "ModelMetadataRequest",
    "ModelStatistics": "ModelStatisticsRequest",
    "RepositoryIndex": "RepositoryIndexRequest",
    "RepositoryModelLoad": "RepositoryModelLoadRequest",
    "RepositoryModelUnload": "RepositoryModelUnloadRequest",
}


def _parsing(
    method: Callable[[Any, CallContext], Awaitable[Message]],
    message_name: str,
) -> UnaryHandler:
    """``method`` behind our own parsing (grpc's would answer bad bytes with UNKNOWN),
    its answer serialized; it takes the message ``pb`` names ``message_name``."""

    async def handler(data: bytes, context: CallContext) -> bytes:
        try:
            request = decode_message(getattr(pb, message_name), data)
        except LigeiroError as exc:
            await _abort(context, exc)
        answer: bytes = (await method(request, context)).SerializeToString()
        return answer

    return handler


def unary_methods(service: GrpcService) -> dict[str, UnaryHandler]:
    """Each unary method by name, taking the request's bytes (both transports serve these)."""
    methods = {name: _parsing(getattr(service, name), type_) for name, type_ in _UNARY.items()}
    methods["ModelInfer"] = service.ModelInfer
    return methods


async def start_grpc_server(
    plane: DataPlane,
    settings: GrpcSettings,
    address: str,
    *,
    reuse_port: bool,
    control: Control | None = None,
    access: Access | None = None,
    tls: ServerTls | None = None,
) -> GrpcServer | H2GrpcServer:
    """Bind and start the gRPC service on the running loop, on ``settings.transport``.

    Args:
        plane: the inference call the service's ModelInfer goes through.
        address: ``host:port`` to bind; port 0 picks a free one.
        reuse_port: share the port with other workers (``SO_REUSEPORT``). Off, a port
            already taken is an error rather than silently shared.
        access: the inference tokens and rate limit every call is checked against.
        tls: serve gRPC over TLS (ALPN h2) with these contexts.

    Raises:
        OSError: the address cannot be bound.
    """
    service = GrpcService(plane, control, access)
    if settings.transport == "h2":
        from .grpc_h2 import start_h2_grpc_server

        return await start_h2_grpc_server(
            service, settings, address, reuse_port=reuse_port, tls=tls
        )
    from .grpc_aio import start_aio_grpc_server  # grpcio: imported only for this transport

    return await start_aio_grpc_server(service, settings, address, reuse_port=reuse_port, tls=tls)

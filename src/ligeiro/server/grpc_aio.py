"""The grpc.aio transport for the V2 gRPC service (``[grpc] transport = "grpcio"``).

grpcio's C core parses HTTP/2 and enforces the message limit (RESOURCE_EXHAUSTED before
any of our code runs); the methods are ``GrpcService``'s, shared with ``grpc_h2.py``.
Their ``abort`` speaks ligeiro's ``StatusCode``, which ``_Context`` translates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, final

import grpc
import grpc.aio

from .grpc import _SERVICE, GrpcService, StatusCode, unary_methods

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from ..settings import GrpcSettings

__all__ = ["GrpcServer", "start_aio_grpc_server"]


@final
class _Context:
    """A grpc.aio call's context as ``GrpcService`` asks for it."""

    __slots__ = ("_context",)

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context

    def invocation_metadata(self) -> Sequence[tuple[str, str]] | None:
        metadata: Sequence[tuple[str, str]] | None = self._context.invocation_metadata()
        return metadata

    async def abort(self, code: StatusCode, details: str = "") -> NoReturn:
        await self._context.abort(grpc.StatusCode[code.name], details)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _rpc_handlers(service: GrpcService) -> grpc.GenericRpcHandler:
    """The service's method table (what protoc's ``add_..._to_server`` would build)."""

    def unary(handler: Any) -> Any:
        async def call(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            answer: bytes = await handler(data, _Context(context))
            return answer

        return call

    async def stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for answer in service.ModelStreamInfer(requests, _Context(context)):
            yield answer

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(unary(handler))
        for name, handler in unary_methods(service).items()
    }
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(stream)
    return grpc.method_handlers_generic_handler(_SERVICE, handlers)


@final
class GrpcServer:
    """A started gRPC server: its port, and a graceful stop."""

    def __init__(self, server: grpc.aio.Server, service: GrpcService, port: int) -> None:
        self._server = server
        self._service = service
        self.port = port

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls; let running ones finish within ``grace_s``; end idle streams."""
        self._service.close_streams()
        await self._server.stop(grace_s)


async def start_aio_grpc_server(
    service: GrpcService, settings: GrpcSettings, address: str, *, reuse_port: bool
) -> GrpcServer:
    """Bind and start ``service`` on grpc.aio (see ``grpc.start_grpc_server``).

    Raises:
        OSError: the address cannot be bound.
    """
    limit = settings.max_message_bytes
    server = grpc.aio.server(
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
            ("grpc.max_metadata_size", settings.max_header_list_bytes),
        ],
    )
    server.add_generic_rpc_handlers((_rpc_handlers(service),))
    try:
        bound: int = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio raises this when the bind fails
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
    if bound == 0:  # older grpcio reports a failed bind this way
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    return GrpcServer(server, service, bound)

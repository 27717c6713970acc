"""The grpc.aio transport for the V2 gRPC service (``[grpc] transport = "grpcio"``).

grpcio's C core parses HTTP/2 and enforces the message limit (RESOURCE_EXHAUSTED before
any of our code runs); the methods are ``GrpcService``'s, shared with ``grpc_h2.py``.
Their ``abort`` speaks ligeiro's ``StatusCode``, which ``_Context`` translates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, final

import grpc
import grpc.aio

from ..errors import LigeiroError
from .grpc import SERVICE_NAME, GrpcService, StatusCode, status_for, unary_methods

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from ..settings import GrpcSettings
    from .tls import ServerTls

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

    async def admit(path: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # The tokens and rate limit, as the h2 transport checks them when a stream opens.
        if service.access.is_guarding:
            metadata = context.invocation_metadata() or ()
            token = next((v for k, v in metadata if k == "authorization"), None)
            denied = service.admit(path, token, lambda: _peer_address(context.peer()))
            if denied is not None:
                await context.abort(grpc.StatusCode[status_for(denied).name], str(denied))

    def unary(name: str, handler: Any) -> Any:
        path = f"/{SERVICE_NAME}/{name}".encode()

        async def call(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            await admit(path, context)
            answer: bytes = await handler(data, _Context(context))
            return answer

        return call

    stream_path = f"/{SERVICE_NAME}/ModelStreamInfer".encode()

    async def stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        await admit(stream_path, context)
        async for answer in service.ModelStreamInfer(requests, _Context(context)):
            yield answer

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(unary(name, handler))
        for name, handler in unary_methods(service).items()
    }
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(stream)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


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


def _credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """grpcio's TLS from ``tls``'s files, read again before the first handshake after
    each SIGHUP reload (grpcio asks the fetcher before every handshake)."""

    def configuration() -> Any:
        key, chain, client_ca = tls.files()
        return grpc.ssl_server_certificate_configuration([(key, chain)], client_ca)

    seen = [tls.generation]
    first = configuration()

    def fetch() -> Any:
        if tls.generation == seen[0]:
            return None
        seen[0] = tls.generation
        try:
            return configuration()
        except LigeiroError:  # the files changed again meanwhile: keep the current pair
            return None

    return grpc.dynamic_ssl_server_credentials(
        first, fetch, require_client_authentication=tls.settings.client_ca is not None
    )


def _peer_address(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` or ``ipv6:[::1]:5000`` as the address alone."""
    address = peer.partition(":")[2]
    return address.rpartition(":")[0].strip("[]") or address


async def start_aio_grpc_server(
    service: GrpcService,
    settings: GrpcSettings,
    address: str,
    *,
    reuse_port: bool,
    tls: ServerTls | None = None,
) -> GrpcServer:
    """Bind and start ``service`` on grpc.aio (see ``grpc.start_grpc_server``); over TLS
    with ``tls``'s files (read again after a SIGHUP reload).

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
        if tls is None:
            bound: int = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, _credentials(tls))
    except RuntimeError as exc:  # grpcio raises this when the bind fails
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
    if bound == 0:  # older grpcio reports a failed bind this way
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    return GrpcServer(server, service, bound)

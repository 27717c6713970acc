"""What a gRPC call's headers say, read once per decoded block (``server/_grpc_routes``)."""

from __future__ import annotations

from ligeiro.server._grpc_routes import Route, read_route
from ligeiro.server.grpc import StatusCode

_PATH = b"/inference.GRPCInferenceService/ModelInfer"
_STREAM = b"/inference.GRPCInferenceService/ModelStreamInfer"


async def _handler(data: bytes, context: object) -> bytes:  # pragma: no cover - not called
    return data


def _route(**extra: bytes) -> Route:
    fields = {b":method": b"POST", b":path": _PATH, b"content-type": b"application/grpc"}
    fields.update({name.replace("_", "-").encode(): value for name, value in extra.items()})
    return read_route(fields, {_PATH: _handler}, _STREAM)


def test_a_usual_call_is_routed_to_its_handler() -> None:
    route = read_route(
        {b":method": b"POST", b":path": _PATH, b"content-type": b"application/grpc+proto",
         b"authorization": b"Bearer t"},
        {_PATH: _handler}, _STREAM,
    )  # fmt: skip
    assert route.refusal is None and route.encoding_error is None
    assert route.handler is _handler and not route.is_streaming
    assert (route.path, route.authorization, route.has_timeout) == (_PATH, b"Bearer t", False)


def test_what_is_not_a_usual_call_is_read_as_before() -> None:
    fields = {b":path": _PATH, b"content-type": b"application/grpc"}
    assert read_route({**fields, b":method": b"GET"}, {}, _STREAM).refusal == (
        b"405", StatusCode.UNIMPLEMENTED, "gRPC calls are POST requests"
    )
    plain = read_route({b":method": b"POST", b":path": _PATH}, {}, _STREAM)
    assert plain.refusal == (b"415", StatusCode.INVALID_ARGUMENT,
                             "content-type must be application/grpc, got none")  # fmt: skip
    assert _route(grpc_encoding=b"gzip").encoding_error == (
        "grpc-encoding gzip is not supported; this server accepts identity"
    )
    unknown = read_route({**fields, b":method": b"POST", b":path": b"/x/Y"}, {}, _STREAM)
    assert unknown.handler is None and unknown.missing == "Method not found: /x/Y"
    assert read_route({**fields, b":method": b"POST", b":path": _STREAM}, {}, _STREAM).is_streaming
    assert _route(grpc_timeout=b"200m").timeout == 0.2
    malformed = _route(grpc_timeout=b"soon")
    assert malformed.has_timeout and malformed.timeout is None

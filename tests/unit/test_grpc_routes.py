"""What a gRPC call's headers say, read once per decoded block (``server/_grpc_routes``)."""

from __future__ import annotations

from ligeiro.server._grpc_routes import Routes
from ligeiro.server.grpc import StatusCode

_PATH = b"/inference.GRPCInferenceService/ModelInfer"
_STREAM = b"/inference.GRPCInferenceService/ModelStreamInfer"


async def _handler(data: bytes, context: object) -> bytes:  # pragma: no cover - not called
    return data


def _fields(**extra: bytes) -> dict[bytes, bytes]:
    fields = {b":method": b"POST", b":path": _PATH, b"content-type": b"application/grpc"}
    fields.update({name.replace("_", "-").encode(): value for name, value in extra.items()})
    return fields


def test_a_usual_call_is_routed_to_its_handler() -> None:
    route = Routes({_PATH: _handler}, _STREAM).of(_fields(authorization=b"Bearer t"))
    assert route.refusal is None and route.encoding_error is None
    assert route.handler is _handler and not route.is_streaming
    assert (route.path, route.authorization, route.has_timeout) == (_PATH, b"Bearer t", False)


def test_what_is_not_a_call_is_read_as_before() -> None:
    routes = Routes({_PATH: _handler}, _STREAM)
    assert routes.of({**_fields(), b":method": b"GET"}).refusal == (
        b"405", StatusCode.UNIMPLEMENTED, "gRPC calls are POST requests"
    )
    refusal = routes.of({**_fields(), b"content-type": b"text/plain"}).refusal
    assert refusal == (b"415", StatusCode.INVALID_ARGUMENT,
                       "content-type must be application/grpc, got text/plain")  # fmt: skip
    assert routes.of(_fields(grpc_encoding=b"gzip")).encoding_error == (
        "grpc-encoding gzip is not supported; this server accepts identity"
    )
    unknown = routes.of({**_fields(), b":path": b"/x/Y"})
    assert unknown.handler is None and unknown.missing == "Method not found: /x/Y"
    assert routes.of({**_fields(), b":path": _STREAM}).is_streaming
    assert routes.of(_fields(grpc_timeout=b"200m")).timeout == 0.2
    malformed = routes.of(_fields(grpc_timeout=b"soon"))
    assert malformed.has_timeout and malformed.timeout is None


def test_routes_are_kept_by_the_fields_they_were_read_from_and_bounded() -> None:
    routes = Routes({_PATH: _handler}, _STREAM)
    fields = _fields()
    assert routes.of(fields) is routes.of(fields)  # the decoder's same dict: kept
    # An equal dict decoded afresh is read anew, and one with other headers as what it says.
    assert routes.of(_fields()) == routes.of(fields)
    assert routes.of(_fields(grpc_encoding=b"gzip")).encoding_error is not None
    held = [_fields(authorization=str(i).encode()) for i in range(200)]
    for i, each in enumerate(held):
        assert routes.of(each).authorization == str(i).encode()
    assert len(routes._kept) <= 64

"""What a gRPC call's request headers say, read once per header block (ADR 0009).

A client sends the same headers call after call, and the HPACK decoder hands back the
same decoded block for a block it has seen (``_h2headers.HeaderDecoder.known``). What
they say about the call (not gRPC at all, an encoding we do not take, the method, its
timeout) is read here once (``read_route``) and kept with the block
(``HeaderBlock.route``, gone when the decoder lets the block go); what depends on the
moment (tokens and rate limit, the concurrent call limit, the deadline's timer) is still
checked by ``grpc_h2`` for every call, in the order it always was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import msgspec

from ._h2wire import timeout_s
from .grpc import StatusCode

if TYPE_CHECKING:
    from .grpc import UnaryHandler

__all__ = ["Route", "read_route"]


@final
class Route(msgspec.Struct, frozen=True, gc=False):
    """A call's headers, read: checked in this order, with the per-call checks between.

    ``refusal``: not a gRPC call (an HTTP status, the code, the message), before anything
    else. ``path`` and ``authorization``: what admission checks. ``encoding_error``: a
    ``grpc-encoding`` we do not take. Then the method: ``is_streaming``, a unary
    ``handler``, or ``missing`` (its message). ``has_timeout``: a ``grpc-timeout``
    header, ``timeout`` its value in seconds (None: malformed).
    """

    refusal: tuple[bytes, StatusCode, str] | None
    path: bytes
    authorization: bytes | None
    encoding_error: str | None
    is_streaming: bool
    handler: UnaryHandler | None
    missing: str
    has_timeout: bool
    timeout: float | None


def read_route(
    fields: dict[bytes, bytes], unary: dict[bytes, UnaryHandler], stream_path: bytes
) -> Route:
    """What ``fields`` (a request's headers by name) say about the call."""
    path = fields.get(b":path", b"")
    content_type = fields.get(b"content-type", b"")
    refusal: tuple[bytes, StatusCode, str] | None = None
    if fields.get(b":method") != b"POST":
        refusal = (b"405", StatusCode.UNIMPLEMENTED, "gRPC calls are POST requests")
    elif not content_type.startswith(b"application/grpc"):
        found = content_type.decode("latin-1") or "none"
        refusal = (b"415", StatusCode.INVALID_ARGUMENT,
                   f"content-type must be application/grpc, got {found}")  # fmt: skip
    encoding = fields.get(b"grpc-encoding", b"identity")
    timeout = fields.get(b"grpc-timeout")
    return Route(
        refusal=refusal,
        path=path,
        authorization=fields.get(b"authorization"),
        encoding_error=None if encoding == b"identity" else (
            f"grpc-encoding {encoding.decode('latin-1')} is not supported; "
            "this server accepts identity"
        ),
        is_streaming=path == stream_path,
        handler=unary.get(path),
        missing=f"Method not found: {path.decode('latin-1')}",
        has_timeout=timeout is not None,
        timeout=None if timeout is None else timeout_s(timeout),
    )

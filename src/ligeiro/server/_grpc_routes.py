"""What a gRPC call's request headers say, read once per header block (ADR 0009).

A client sends the same headers call after call, and the HPACK decoder hands back the
same decoded fields for a block it has seen (``_h2headers.HeaderDecoder.known``). What
they say about the call (not gRPC at all, an encoding we do not take, the method, its
timeout) is worked out here once and kept by the connection (``Routes``); what depends
on the moment (tokens and rate limit, the concurrent call limit, the deadline's timer)
is still checked by ``grpc_h2`` for every call, in the order it always was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import msgspec

from ._h2wire import timeout_s
from .grpc import StatusCode

if TYPE_CHECKING:
    from .grpc import UnaryHandler

__all__ = ["Route", "Routes"]

# Routes kept per connection; past it they start afresh (as the decoder's blocks do).
_ROUTES_KEPT = 64


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


def route(
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


@final
class Routes:
    """One connection's routes, by the decoded fields they were read from.

    Kept by the fields' identity: the decoder returns the same dict for a block it has
    seen. Each entry holds its dict, so that no other dict can take its id while it is
    kept; a dict decoded afresh (a block not seen before) is read and kept anew.
    """

    __slots__ = ("_kept", "_stream_path", "_unary")

    def __init__(self, unary: dict[bytes, UnaryHandler], stream_path: bytes) -> None:
        self._unary = unary
        self._stream_path = stream_path
        self._kept: dict[int, tuple[dict[bytes, bytes], Route]] = {}

    def of(self, fields: dict[bytes, bytes]) -> Route:
        """The route of a call with these headers."""
        kept = self._kept.get(id(fields))
        if kept is not None and kept[0] is fields:
            return kept[1]
        found = route(fields, self._unary, self._stream_path)
        if len(self._kept) >= _ROUTES_KEPT:
            self._kept.clear()
        self._kept[id(fields)] = (fields, found)
        return found

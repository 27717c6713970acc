"""HTTP/2 (RFC 9113) and HPACK (RFC 7541) on the wire, as much as a gRPC server needs.

The numbers the specifications give, frames as bytes, and the few header blocks a gRPC
answer is made of: literals without indexing, so they need no HPACK table and can be
built once. ``_h2connection.py`` and ``grpc_h2.py`` speak the protocol with these.
"""

from __future__ import annotations

import re
import struct
# Frame types (RFC 9113 §6) and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# Error codes (§7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB
# Settings (§6.5.2).
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH = 0x1, 0x2
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE = 0x3, 0x4
SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 0x5, 0x6

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
FRAME_HEADER = struct.Struct(">BHBBI")  # 24-bit length as 8 + 16 bits, type, flags, stream


TIMEOUT = re.compile(rb"(\d{1,8})([HMSmun])")
TIMEOUT_UNIT_S = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


class ConnectionFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with ``first``'s high bits before the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header as a literal without indexing, new name: it never touches a table."""
    return b"\x00" + hpack_int(len(name), 7, 0) + name + hpack_int(len(value), 7, 0) + value


def percent_encoded(text: str) -> bytes:
    """``grpc-message``'s encoding: UTF-8, then %XX for '%' and bytes outside 0x20-0x7E."""
    return b"".join(
        bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
        for b in text.encode("utf-8")
    )


STATUS_200 = b"\x88"  # ":status: 200", static table entry 8
CONTENT_TYPE = literal(b"content-type", b"application/grpc")
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE
OK_TRAILERS = literal(b"grpc-status", b"0")
ACCEPT_ENCODING = literal(b"grpc-accept-encoding", b"identity")


def status_block(code: int, message: str) -> bytes:
    """A gRPC status as trailers: ``grpc-status`` (a ``grpc.StatusCode``'s number) and,
    when there is one, ``grpc-message``."""
    block = literal(b"grpc-status", str(int(code)).encode())
    if message:
        block += literal(b"grpc-message", percent_encoded(message))
    return block


def timeout_s(value: bytes) -> float | None:
    match = TIMEOUT.fullmatch(value)
    if match is None:
        return None
    return int(match.group(1)) * TIMEOUT_UNIT_S[match.group(2)]


def unpadded(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ConnectionFailure(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


# A whole unary answer around its message: HEADERS, the DATA frame's header and the
# message's 5-byte prefix in one pack, the OK trailers in another.
_ANSWER_HEAD = struct.Struct(f">BHBBI{len(RESPONSE_HEADERS)}sBHBBIBI")
_ANSWER_TAIL = struct.Struct(f">BHBBI{len(OK_TRAILERS)}s")


def unary_answer(stream_id: int, message: bytes) -> bytes:
    """Response headers, ``message`` gRPC-framed in one DATA frame, and OK trailers.

    The caller checks that the framed message fits the peer's frame size and windows.
    """
    size = len(message) + 5
    return b"".join((
        _ANSWER_HEAD.pack(
            0, len(RESPONSE_HEADERS), HEADERS, END_HEADERS, stream_id, RESPONSE_HEADERS,
            size >> 16, size & 0xFFFF, DATA, 0, stream_id, 0, size - 5,
        ),
        message,
        _ANSWER_TAIL.pack(
            0, len(OK_TRAILERS), HEADERS, END_HEADERS | END_STREAM, stream_id, OK_TRAILERS
        ),
    ))  # fmt: skip

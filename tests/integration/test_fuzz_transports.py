"""Fuzzing both transports on real sockets: generated and mutated HTTP/1.1 and HTTP/2 streams.

One ``ligeiro serve`` (one worker, short timeouts) takes every example. Hypothesis
(fixed seed, bounded) builds HTTP/1.1 byte streams (request heads with odd methods,
header names and values holding odd bytes, bodies framed by Content-Length, chunked or
both, several requests pipelined) and HTTP/2 frame sequences (the ``h2`` library's
client opening gRPC calls, sending DATA, RST_STREAM, SETTINGS, PING and WINDOW_UPDATE,
raw CONTINUATION frames), each maybe with bytes changed, cut or inserted. Each must hold:

- the server answers well-formed HTTP (responses httptools parses; frames whose header
  blocks HPACK decodes), never a 500, an INTERNAL gRPC status or an INTERNAL_ERROR;
- an unmutated HTTP/1.1 sequence is answered request for request (or up to an answer
  that closes); the connection ends or goes quiet at once, and one left open is closed
  by the server within its timeouts (checked for all of them at the end);
- the worker never dies (the same pid) and serves a well-formed request after each
  example; nothing is logged as a traceback.

Bounded: a fixed seed, 400 and 300 examples (about 10 s each here); ``make fuzz`` runs
``FUZZ_EXAMPLES`` each from a new seed and keeps what fails in ``tests/fuzz-db``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
import hpack
import httptools
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ligeiro.protocol._generated import grpc_service_pb2 as pb
from tests.conftest import IRIS_REQUEST, Server, start_server
from tests.fuzz import fuzz
from tests.integration.test_grpc_transport import framed, iris_request, still_serving
from tests.integration.test_h2_defences import frame

HTTP1_EXAMPLES, HTTP2_EXAMPLES = 400, 300
# Short server timeouts, so a connection left waiting for bytes is closed soon.
TIMEOUTS = {
    "LIGEIRO_HTTP__HEADER_TIMEOUT_S": "1",
    "LIGEIRO_HTTP__RECEIVE_TIMEOUT_S": "1",
    "LIGEIRO_HTTP__REQUEST_TIMEOUT_S": "2",
    "LIGEIRO_HTTP__KEEP_ALIVE_TIMEOUT_S": "1",
    "LIGEIRO_GRPC__HANDSHAKE_TIMEOUT_S": "1",
    "LIGEIRO_GRPC__IDLE_TIMEOUT_S": "1",
    "LIGEIRO_GRPC__REQUEST_TIMEOUT_S": "1",
}
QUIET_S = 0.15  # no byte for this long after the last one: the server waits for more
CLOSE_BOUND_S = 6.0  # the longest timeout above, its 1 s sweep, and slack for a busy machine


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz-transports")
    (root / "iris").symlink_to(examples / "iris")
    srv = start_server(root, "--threads", "1", env={**os.environ, **TIMEOUTS})
    yield srv
    srv.stop()
    assert "Traceback" not in srv.output(), srv.output()


class Worker:
    """Checks, after each example, that the one worker is the same process and serves."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.pid = self._pid()
        # Connections left open by the server: since when, and what was sent on them.
        self.lingering: list[tuple[float, socket.socket, bytes]] = []

    def _pid(self) -> int:
        pid = self.server.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(children[0]) if children else pid

    def check(self) -> None:
        assert self.server.process.poll() is None, self.server.output()
        assert self._pid() == self.pid, "the worker was replaced"
        answer = self.server.post("/v2/models/iris/infer", IRIS_REQUEST)
        assert answer.status == 200, answer.body
        self.all_closed(due_only=True)  # a long run would run out of descriptors

    def all_closed(self, *, due_only: bool = False) -> None:
        """Every connection the server left open is closed within CLOSE_BOUND_S of the
        exchange; ``due_only``: check those whose time is up, keep the others."""
        now = time.monotonic()
        held, kept = [], []
        for since, sock, sent in self.lingering:
            deadline = since + CLOSE_BOUND_S
            if due_only and deadline > now:
                kept.append((since, sock, sent))
                continue
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    if not sock.recv(65536):
                        break
                except TimeoutError:
                    held.append(sent)
                    break
                except OSError:
                    break
            sock.close()
        self.lingering = kept
        assert not held, f"{len(held)} connection(s) held open past the server's timeouts: {held}"


@pytest.fixture(scope="module")
def worker(target: Server) -> Iterator[Worker]:
    checks = Worker(target)
    yield checks
    checks.all_closed()
    assert "Traceback" not in target.output(), target.output()


def exchange(
    worker: Worker, port: int, data: bytes, *, done: Any = None, may_hold: bool = False
) -> bytes:
    """Send ``data``, read until the server closes, goes quiet, or ``done(bytes)``.

    A connection still open then must be closed by the server within its timeouts
    (``Worker.all_closed``), unless ``may_hold``: a ModelStreamInfer call the client
    has not ended lasts as long as the client wants; such a connection is closed here.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    received = b""
    try:
        sock.sendall(data)
    except OSError:  # closed while we sent: an answer may have come before
        pass
    deadline = time.monotonic() + 5
    while True:
        sock.settimeout(QUIET_S)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            chunk = b""
        if not chunk:
            sock.close()
            return received
        received += chunk
        if (done is not None and done(received)) or time.monotonic() > deadline:
            break
    if may_hold:
        sock.close()
    else:  # checked at the end: closed by the server
        worker.lingering.append((time.monotonic(), sock, data))
    return received


# -- HTTP/1.1 ------------------------------------------------------------------------------

_ODD = st.binary(min_size=1, max_size=6)  # any bytes: NUL, DEL, CR, LF, 0xff, ...
# No HEAD: its answers carry a Content-Length but no body, which a response parser must be
# told request by request (test_v2_rest covers HEAD).
_METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])
_PATHS = st.sampled_from([
    b"/v2/models/iris/infer", b"/v2/health/ready", b"/v2/models/iris", b"/v2",
    b"/v1/models/iris:predict", b"/metrics", b"/v2/models/nope/infer", b"*", b"/%ff%00",
])  # fmt: skip
_BODIES = st.sampled_from([
    b'{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}',
    b'{"instances":[[5.1,3.5,1.4,0.2]]}', b"", b"{", b"\xff\xfe", b"[" * 50,
]) | st.binary(max_size=40)  # fmt: skip
_HEADER_NAMES = st.sampled_from([
    b"Host", b"Content-Type", b"Accept", b"Connection", b"Expect", b"Content-Encoding",
    b"Inference-Header-Content-Length", b"Authorization", b"traceparent", b"X-A",
]) | _ODD  # fmt: skip
_HEADER_VALUES = st.sampled_from([
    b"application/json", b"close", b"keep-alive", b"100-continue", b"gzip", b"0", b"-1",
    b"99999999999999999999", b"Bearer x", b"", b" ",
]) | _ODD  # fmt: skip


@st.composite
def http_request(draw: st.DrawFn) -> tuple[bytes, bool]:
    """One request and whether it is well-formed (its framing right, nothing odd in it)."""
    odd_method = draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans())
    method = draw(_ODD) if odd_method else draw(_METHODS)
    path = draw(_PATHS)
    version = draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9"]))
    headers = [(b"Host", b"localhost")]
    odd_headers = draw(st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=3))
    headers += odd_headers
    body = draw(_BODIES)
    framing = draw(st.sampled_from(["length", "length", "chunked", "none", "wrong length",
                                    "bad chunks", "both"]))  # fmt: skip
    if framing in ("length", "both"):
        headers.append((b"Content-Length", str(len(body)).encode()))
    if framing == "wrong length":
        headers.append((b"Content-Length", str(len(body) + draw(st.integers(1, 9))).encode()))
    if framing in ("chunked", "bad chunks", "both"):
        headers.append((b"Transfer-Encoding", b"chunked"))
        cut = draw(st.integers(0, len(body)))
        pieces = [body[:cut], body[cut:]]
        if framing == "bad chunks":
            size = draw(st.sampled_from([b"zz", b"-1", b"ffffffffffffffffff", b"1;x=\x00"]))
            body = size + b"\r\n" + body + b"\r\n0\r\n\r\n"
        else:
            ext = draw(st.sampled_from([b"", b";a=b"]))
            body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces if p)
            trailer = draw(st.sampled_from([b"", b"X-T: 1\r\n"]))
            body += b"0\r\n" + trailer + b"\r\n"
    elif framing == "none":
        body = b"" if method in (b"POST", b"PUT", b"PATCH") else body
    head = method + b" " + path + b" " + version + b"\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    plain = (
        not odd_method and not odd_headers and version == b"HTTP/1.1"
        and (framing in ("length", "chunked") or (framing == "none" and not body))
    )  # fmt: skip
    # (An unframed body after a GET is not part of it: it reads as the next request.)
    return head + body, plain


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a byte changed, a byte inserted, a cut, or a piece repeated."""
    if not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    kind = draw(st.sampled_from(["change", "insert", "cut", "repeat"]))
    if kind == "change":
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    if kind == "cut":
        return data[:at]
    return data[:at] + data[at : at + draw(st.integers(1, 64))] * draw(st.integers(2, 20))


@st.composite
def http_streams(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """Pipelined requests, maybe mutated; how many answers are due (None: not known)."""
    requests = draw(st.lists(http_request(), min_size=1, max_size=4))
    data = b"".join(request for request, _ in requests)
    if draw(st.booleans()) and draw(st.booleans()):
        return draw(mutated(data)), None
    plain = all(is_plain for _, is_plain in requests)
    return data, len(requests) if plain else None


class Answers:
    """HTTP/1.1 responses as httptools parses them; a parse error fails the test."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.closes: list[bool] = []
        self._parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        self.statuses.append(self._parser.get_status_code())
        self.closes.append(not self._parser.should_keep_alive())

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)


def _parse(data: bytes) -> Answers:
    answers = Answers()
    try:
        answers.feed(data)
    except httptools.HttpParserUpgrade:
        pass
    return answers


@fuzz(HTTP1_EXAMPLES)
@given(http_streams())
@example((b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n" * 70, 70))  # issue 21's stall
def test_http1_streams_are_answered_or_closed(
    target: Server, worker: Worker, stream: tuple[bytes, int | None]
) -> None:
    data, due = stream

    def done(received: bytes) -> bool:
        return due is not None and len(_parse(received).statuses) >= due

    received = exchange(worker, target.port, data, done=done)
    answers = _parse(received)  # raises on a malformed answer
    assert 500 not in answers.statuses, received[:2000]
    if due is not None:  # each request answered, up to one that closes the connection
        closed_at = answers.closes.index(True) + 1 if True in answers.closes else due
        assert len(answers.statuses) == min(due, closed_at), received[:2000]
    worker.check()


# -- HTTP/2 --------------------------------------------------------------------------------

DATA_FRAME, HEADERS_FRAME, RST_STREAM, SETTINGS_FRAME, PING = 0x0, 0x1, 0x3, 0x4, 0x6
GOAWAY, CONTINUATION = 0x7, 0x9
INTERNAL_ERROR = 0x2
# The INTERNAL answers gRPC gives a call whose framing is wrong (grpc-go's too); any other
# INTERNAL is a method that raised ("internal server error (logged)"): a defect.
FRAMING_ERRORS = (b"compressed message without grpc-encoding", b"bad message flag ",
                  b"malformed grpc-timeout header", b"the request ended inside a message")  # fmt: skip
_METHODS_H2 = ["ModelInfer", "ServerLive", "ModelReady", "ModelMetadata", "ModelStreamInfer",
               "Nope"]  # fmt: skip
_MESSAGES = st.sampled_from([
    framed(iris_request().SerializeToString()), framed(b""), framed(b"\x0a\x04iris"),
    framed(pb.ModelInferRequest(model_name="iris", id="x" * 300).SerializeToString()),
    b"\x01\x00\x00\x00\x03abc", b"\x00\xff\xff\xff\xff", b"\x00\x00",
]) | st.binary(max_size=30).map(framed)  # fmt: skip

_ACTIONS = st.one_of(
    st.tuples(st.just("call"), st.sampled_from(_METHODS_H2), _MESSAGES, st.booleans()),
    st.tuples(st.just("data"), _MESSAGES, st.booleans()),
    st.tuples(st.just("reset"), st.integers(0, 13)),
    st.tuples(st.just("ping"), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just("settings"), st.sampled_from([
        {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0},
        {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1},
        {h2.settings.SettingCodes.MAX_FRAME_SIZE: 2**24 - 1},
        {h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0},
        {h2.settings.SettingCodes.ENABLE_PUSH: 0},
    ])),
    st.tuples(st.just("window"), st.integers(1, 2**31 - 1), st.booleans()),
    st.tuples(st.just("continuation"), st.booleans()),
)


def _call_headers(method: str) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), (b":scheme", b"http"),
            (b":path", f"/inference.GRPCInferenceService/{method}".encode()),
            (b":authority", b"localhost"), (b"content-type", b"application/grpc"),
            (b"te", b"trailers")]  # fmt: skip


def _render(actions: list[tuple[Any, ...]]) -> bytes:
    """The bytes h2's client sends for ``actions`` (one it refuses is left out)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    out = [conn.data_to_send()]
    stream = 0
    for action in actions:
        try:
            if action[0] == "call":
                stream = conn.get_next_available_stream_id()
                conn.send_headers(stream, _call_headers(action[1]))
                conn.send_data(stream, action[2], end_stream=action[3])
            elif action[0] == "data" and stream:
                conn.send_data(stream, action[1], end_stream=action[2])
            elif action[0] == "reset" and stream:
                conn.reset_stream(stream, action[1])
            elif action[0] == "ping":
                conn.ping(action[1])
            elif action[0] == "settings":
                conn.update_settings(action[1])
            elif action[0] == "window":
                on = stream if action[2] and stream else None
                conn.increment_flow_control_window(action[1], stream_id=on)
            elif action[0] == "continuation":  # a header block split in two, by hand
                out.append(conn.data_to_send())
                stream = conn.get_next_available_stream_id()
                block = hpack.Encoder().encode(_call_headers("ServerLive"))
                end = 0x1 if action[1] else 0
                out.append(frame(HEADERS_FRAME, end, stream, block[:5])
                           + frame(CONTINUATION, 0x4, stream, block[5:]))  # fmt: skip
                conn = _skip_stream(conn, stream)
                continue
        except (h2.exceptions.ProtocolError, h2.exceptions.FrameTooLargeError,
                h2.exceptions.FlowControlError, ValueError, KeyError):  # fmt: skip
            continue
        out.append(conn.data_to_send())
    out.append(conn.data_to_send())
    return b"".join(out)


def _skip_stream(conn: h2.connection.H2Connection, stream: int) -> h2.connection.H2Connection:
    # h2 must not reuse the id the hand-made frames took: open it on its side, then forget.
    conn.highest_outbound_stream_id = stream
    return conn


@st.composite
def h2_streams(draw: st.DrawFn) -> tuple[bytes, bool, bool]:
    """A frame sequence, whether it was mutated, and whether it opens a stream call."""
    actions = draw(st.lists(_ACTIONS, min_size=1, max_size=6))
    data = _render(actions)
    streams = any(action[:2] == ("call", "ModelStreamInfer") for action in actions)
    if draw(st.booleans()):
        return draw(mutated(data)), True, streams
    return data, False, streams


_DONE_PING = frame(PING, 0, 0, b"fuzzdone")
_DONE_ACK = frame(PING, 0x1, 0, b"fuzzdone")


def _frames(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if len(data) < 9 + length:
            return  # cut short as the connection closed or went quiet
        kind, flags = data[3], data[4]
        stream = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        yield kind, flags, stream, data[9 : 9 + length]
        data = data[9 + length :]


@fuzz(HTTP2_EXAMPLES)
@given(h2_streams())
@example((_render([  # found: a zero window held the answer, and the connection, for good
    ("settings", {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}),
    ("call", "ModelInfer", framed(iris_request().SerializeToString()), True),
]), False, False))  # fmt: skip
def test_http2_frame_sequences_are_answered_or_closed(
    target: Server, worker: Worker, stream: tuple[bytes, bool, bool]
) -> None:
    data, is_mutated, streams = stream
    # A PING after the sequence: its ACK says the server has read all before it.
    received = exchange(worker, target.grpc_port, data + _DONE_PING, may_hold=streams,
                        done=lambda received: _DONE_ACK in received)  # fmt: skip
    decoder = hpack.Decoder()
    block = b""
    for kind, flags, _, payload in _frames(received):
        if kind == GOAWAY:
            code = int.from_bytes(payload[4:8], "big")
            assert code != INTERNAL_ERROR, payload
            # h2 lets a client's SETTINGS push a stream's window past 2^31-1: the server's
            # FLOW_CONTROL_ERROR is right (RFC 9113 §6.9.2).
            assert is_mutated or code in (0x0, 0x3, 0xB), (code, payload)
        elif kind == RST_STREAM:
            assert int.from_bytes(payload, "big") != INTERNAL_ERROR
        elif kind in (HEADERS_FRAME, CONTINUATION):
            block += payload
            if flags & 0x4:  # END_HEADERS: the server's HPACK must decode
                headers = dict(decoder.decode(block, raw=True))
                block = b""
                if headers.get(b"grpc-status") == b"13":  # INTERNAL: bad gRPC framing only
                    assert headers[b"grpc-message"].startswith(FRAMING_ERRORS), headers
                assert headers.get(b":status", b"200") != b"500", headers
    worker.check()
    still_serving(target)

"""The h2 gRPC transport (``--grpc-transport h2``) at the wire: what a client can get wrong.

The methods themselves are the grpc.aio transport's (``test_grpc.py`` and the
conformance suite run over whichever transport is the default); these tests drive the
HTTP/2 framing with the ``h2`` library as a raw client, on real sockets, and check that
each mistake gets a clear status and that the server keeps serving.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ligeiro.protocol._generated import grpc_service_pb2 as pb
from ligeiro.protocol._generated.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.conftest import Server, start_server
from tests.models import write

SERVICE = "/inference.GRPCInferenceService/"
LIMIT = 64 * 1024  # the servers' --grpc-max-message-bytes here


def echo_model(elem: int) -> onnx.ModelProto:
    """``x`` [-1, -1] → ``y``, one tensor of one type."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "echo",
        [helper.make_tensor_value_info("x", elem, ["batch", "n"])],
        [helper.make_tensor_value_info("y", elem, ["batch", "n"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def echo_request(model: str, values: np.ndarray) -> pb.ModelInferRequest:
    datatype = "BYTES" if values.dtype == object else "FP32"
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="x", datatype=datatype, shape=list(values.shape)
    )
    request = pb.ModelInferRequest(model_name=model, inputs=[tensor])
    if datatype == "BYTES":
        request.inputs[0].contents.bytes_contents.extend(v.encode() for v in values.ravel())
    else:
        request.raw_input_contents.append(values.tobytes())
    return request


def repository(root: Path) -> Path:
    write(echo_model(TensorProto.FLOAT), root, "echo")
    write(echo_model(TensorProto.STRING), root, "echo_bytes")
    return root


def framed(message: bytes, flag: int = 0) -> bytes:
    return bytes((flag,)) + len(message).to_bytes(4, "big") + message


def iris_request() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="iris",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="float_input", datatype="FP32", shape=[1, 4])
        ],
        raw_input_contents=[np.array([5.1, 3.5, 1.4, 0.2], dtype=np.float32).tobytes()],
    )


@dataclass
class Answer:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytes = b""
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    reset: int | None = None
    goaway: int | None = None
    is_over: bool = False

    @property
    def status(self) -> int:
        """The gRPC status, from the trailers (or a trailers-only answer's headers)."""
        return int((self.trailers or self.headers)[b"grpc-status"])

    @property
    def message(self) -> str:
        from urllib.parse import unquote

        raw = (self.trailers or self.headers).get(b"grpc-message", b"")
        return unquote(raw.decode())

    def messages(self) -> list[bytes]:
        found, data = [], self.data
        while data:
            length = int.from_bytes(data[1:5], "big")
            found.append(data[5 : 5 + length])
            data = data[5 + length :]
        return found


class RawClient:
    """One HTTP/2 connection driven by hand."""

    def __init__(self, port: int, *, window: int | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.events: list[h2.events.Event] = []
        self.answers: dict[int, Answer] = {}
        self.goaway: int | None = None

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> bool:
        """Read once and record what arrived; False once the server has closed."""
        try:
            data = self.sock.recv(65536)
        except ConnectionError:
            return False
        if not data:
            return False
        for event in self.conn.receive_data(data):
            self._record(event)
        try:
            self.flush()
        except ConnectionError:
            return False
        return True

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def request(
        self,
        method: str,
        body: bytes | None = None,
        *,
        extra: list[tuple[bytes, bytes]] | None = None,
        content_type: bytes = b"application/grpc",
        end: bool = True,
    ) -> int:
        stream = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", (SERVICE + method).encode()),
            (b":authority", b"localhost"), (b"content-type", content_type), (b"te", b"trailers"),
            *(extra or []),
        ]  # fmt: skip
        self.conn.send_headers(stream, headers, end_stream=body is None and end)
        self.flush()
        while body:  # as the server's window allows
            size = min(self.conn.local_flow_control_window(stream), len(body),
                       self.conn.max_outbound_frame_size)  # fmt: skip
            if size == 0:
                self._receive()
                continue
            self.conn.send_data(stream, body[:size])
            self.flush()
            body = body[size:]
        if body is not None and end:
            self.conn.end_stream(stream)
            self.flush()
        return stream

    def answer(self, stream: int, timeout_s: float = 10.0) -> Answer:
        """Read until ``stream`` ends, is reset, or the connection goes away."""
        deadline = time.monotonic() + timeout_s
        while not self._is_over(stream):
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream} did not end within {timeout_s} s")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not self._receive():
                break
        answer = self.answers.setdefault(stream, Answer())
        answer.goaway = self.goaway
        return answer

    def _is_over(self, stream: int) -> bool:
        answer = self.answers.get(stream)
        # GOAWAY with NO_ERROR lets the streams already open finish.
        return bool(self.goaway) or (answer is not None and answer.is_over)

    def _record(self, event: h2.events.Event) -> None:
        self.events.append(event)
        if isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event.error_code
            for answer in self.answers.values():
                answer.goaway = event.error_code
            return
        stream = getattr(event, "stream_id", 0)
        if not stream:
            return
        answer = self.answers.setdefault(stream, Answer())
        if self.goaway is not None:
            answer.goaway = self.goaway
        if isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, stream)
            answer.data += event.data
        elif isinstance(event, h2.events.ResponseReceived):
            answer.headers = dict(event.headers)
        elif isinstance(event, h2.events.TrailersReceived):
            answer.trailers = dict(event.headers)
        elif isinstance(event, h2.events.StreamReset):
            answer.reset = event.error_code
            answer.is_over = True
        elif isinstance(event, h2.events.StreamEnded):
            answer.is_over = True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def h2_server(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Iterator[Server]:
    root = repository(tmp_path_factory.mktemp("h2-transport"))
    (root / "iris").symlink_to(examples / "iris")
    srv = start_server(root, "--grpc-transport", "h2", "--threads", "1")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def small_limit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import os

    root = repository(tmp_path_factory.mktemp("h2-limit"))
    os.environ["LIGEIRO_GRPC__MAX_MESSAGE_BYTES"] = str(LIMIT)
    try:
        srv = start_server(root, "--grpc-transport", "h2", "--threads", "1")
    finally:
        del os.environ["LIGEIRO_GRPC__MAX_MESSAGE_BYTES"]
    yield srv
    srv.stop()


@pytest.fixture
def raw(h2_server: Server) -> Iterator[RawClient]:
    client = RawClient(h2_server.grpc_port)
    yield client
    client.close()


def still_serving(server: Server) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = GRPCInferenceServiceStub(channel).ModelInfer(iris_request(), timeout=10)
    assert np.frombuffer(answer.raw_output_contents[0], dtype=np.int64).tolist() == [0]


def test_a_raw_client_gets_an_answer_and_ok_trailers(raw: RawClient) -> None:
    answer = raw.answer(raw.request("ModelInfer", framed(iris_request().SerializeToString())))
    assert answer.headers[b":status"] == b"200"
    assert answer.headers[b"content-type"] == b"application/grpc"
    assert answer.status == 0
    [message] = answer.messages()
    assert pb.ModelInferResponse.FromString(message).model_name == "iris"


def test_many_calls_on_one_connection(raw: RawClient) -> None:
    streams = [raw.request("ServerLive", framed(b"")) for _ in range(50)]
    for stream in streams:
        answer = raw.answer(stream)
        assert answer.status == 0
        assert pb.ServerLiveResponse.FromString(answer.messages()[0]).live


def test_wrong_content_type_is_415_and_invalid_argument(h2_server: Server, raw: RawClient) -> None:
    answer = raw.answer(raw.request("ServerLive", b"{}", content_type=b"application/json"))
    assert answer.headers[b":status"] == b"415"
    assert answer.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "application/grpc" in answer.message
    still_serving(h2_server)


def test_unknown_method_is_unimplemented(raw: RawClient) -> None:
    answer = raw.answer(raw.request("NoSuchMethod", framed(b"")))
    assert answer.status == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert "NoSuchMethod" in answer.message


def test_malformed_message_is_invalid_argument(h2_server: Server, raw: RawClient) -> None:
    answer = raw.answer(raw.request("ModelInfer", framed(b"\xff\xff\xff\xff")))
    assert answer.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "malformed inference.ModelInferRequest" in answer.message
    still_serving(h2_server)


def test_a_request_cut_inside_its_message_is_internal(raw: RawClient) -> None:
    cut = framed(iris_request().SerializeToString())[:20]
    answer = raw.answer(raw.request("ModelInfer", cut))
    assert answer.status == grpc.StatusCode.INTERNAL.value[0]
    assert "ended inside a message" in answer.message


def test_two_messages_on_a_unary_call_are_unimplemented(raw: RawClient) -> None:
    answer = raw.answer(raw.request("ServerLive", framed(b"") + framed(b"")))
    assert answer.status == grpc.StatusCode.UNIMPLEMENTED.value[0]


def test_no_message_on_a_unary_call_is_unimplemented(raw: RawClient) -> None:
    answer = raw.answer(raw.request("ServerLive", None))
    assert answer.status == grpc.StatusCode.UNIMPLEMENTED.value[0]


def test_compressed_flag_without_encoding_is_internal(raw: RawClient) -> None:
    answer = raw.answer(raw.request("ServerLive", framed(b"", flag=1)))
    assert answer.status == grpc.StatusCode.INTERNAL.value[0]
    assert "grpc-encoding" in answer.message


def test_grpc_encoding_other_than_identity_is_unimplemented(h2_server: Server) -> None:
    with grpc.insecure_channel(h2_server.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(iris_request(), timeout=10, compression=grpc.Compression.Gzip)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "gzip" in info.value.details()
    still_serving(h2_server)


def test_grpc_encoding_answer_names_what_is_accepted(raw: RawClient) -> None:
    extra = [(b"grpc-encoding", b"gzip")]
    answer = raw.answer(raw.request("ServerLive", framed(b""), extra=extra))
    assert answer.status == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert answer.headers[b"grpc-accept-encoding"] == b"identity"


def test_grpc_timeout_ends_a_waiting_call(raw: RawClient) -> None:
    # A stream that never sends its request waits: its deadline ends it.
    started = time.monotonic()
    stream = raw.request("ModelStreamInfer", None, extra=[(b"grpc-timeout", b"200m")], end=False)
    answer = raw.answer(stream, timeout_s=5)
    assert answer.status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert 0.15 < time.monotonic() - started < 3


def test_malformed_grpc_timeout_is_internal(raw: RawClient) -> None:
    extra = [(b"grpc-timeout", b"soon")]
    answer = raw.answer(raw.request("ServerLive", framed(b""), extra=extra))
    assert answer.status == grpc.StatusCode.INTERNAL.value[0]


def test_stream_infer_answers_each_request_in_order(raw: RawClient) -> None:
    body = b"".join(
        framed(pb.ModelInferRequest(model_name=name, id=str(i)).SerializeToString())
        if name != "iris"
        else framed(iris_request().SerializeToString())
        for i, name in enumerate(["iris", "nope", "iris"])
    )
    answer = raw.answer(raw.request("ModelStreamInfer", body))
    assert answer.status == 0
    replies = [pb.ModelStreamInferResponse.FromString(m) for m in answer.messages()]
    assert [r.infer_response.model_name for r in replies] == ["iris", "", "iris"]
    assert "unknown model 'nope'" in replies[1].error_message


def test_ping_is_answered(raw: RawClient) -> None:
    raw.conn.ping(b"12345678")
    raw.flush()
    stream = raw.request("ServerLive", framed(b""))
    raw.answer(stream)
    acks = [e for e in raw.events if isinstance(e, h2.events.PingAckReceived)]
    assert [a.ping_data for a in acks] == [b"12345678"]


def test_a_large_answer_waits_for_the_clients_window(h2_server: Server) -> None:
    # 400 KB each way, through a client that grants 1,000 bytes at a time.
    client = RawClient(h2_server.grpc_port, window=1000)
    try:
        values = np.arange(100_000, dtype=np.float32).reshape(1, -1)
        request = echo_request("echo", values).SerializeToString()
        answer = client.answer(client.request("ModelInfer", framed(request)))
        assert answer.status == 0
        [message] = answer.messages()
        reply = pb.ModelInferResponse.FromString(message)
        assert np.array_equal(np.frombuffer(reply.raw_output_contents[0], np.float32), values[0])
    finally:
        client.close()


def test_a_large_request_across_many_frames(h2_server: Server) -> None:
    values = np.arange(3_000_000, dtype=np.float32).reshape(3, -1)  # 36 MB
    with grpc.insecure_channel(
        h2_server.grpc_target, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        reply = GRPCInferenceServiceStub(channel).ModelInfer(
            echo_request("echo", values), timeout=60
        )
    out = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(values.shape)
    assert np.array_equal(out, values)


def test_oversized_request_is_resource_exhausted(small_limit_server: Server) -> None:
    request = echo_request("echo", np.zeros((1, LIMIT // 4 + 10), dtype=np.float32))
    with grpc.insecure_channel(small_limit_server.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"vs. {LIMIT}" in info.value.details()
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_oversized_answer_is_resource_exhausted(small_limit_server: Server) -> None:
    # Typed contents in (two bytes of framing per element), raw out (four): the request
    # fits under the limit, the answer does not.
    request = echo_request("echo_bytes", np.array([["x"] * (LIMIT // 4)], dtype=object))
    assert request.ByteSize() < LIMIT
    with grpc.insecure_channel(small_limit_server.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Sent message larger than max" in info.value.details()


def test_bad_preface_closes_only_that_connection(h2_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", h2_server.grpc_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    # Our SETTINGS, then GOAWAY (type 7) with PROTOCOL_ERROR, then the close.
    assert b"\x07\x00\x00\x00\x00\x00" in received
    still_serving(h2_server)


def test_bad_frame_gets_goaway_and_the_server_keeps_serving(
    h2_server: Server, raw: RawClient
) -> None:
    # A PING whose payload is 5 bytes, not 8: FRAME_SIZE_ERROR (0x6) for the connection.
    raw.send(b"\x00\x00\x05\x06\x00\x00\x00\x00\x00" + b"12345")
    answer = raw.answer(stream=1)
    assert answer.goaway == 0x6
    still_serving(h2_server)


def test_headers_on_an_even_stream_is_a_protocol_error(raw: RawClient) -> None:
    block = b"\x83"  # ":method: POST", all the header a stream needs to be refused
    raw.send(b"\x00\x00\x01\x01\x05\x00\x00\x00\x02" + block)
    answer = raw.answer(stream=2)
    assert answer.goaway == 0x1


def test_rst_stream_cancels_a_call_and_the_connection_goes_on(raw: RawClient) -> None:
    stream = raw.request("ModelStreamInfer", None, end=False)
    raw.conn.reset_stream(stream)
    raw.flush()
    answer = raw.answer(raw.request("ServerLive", framed(b"")))
    assert answer.status == 0


def raw_frames(sock: socket.socket) -> list[tuple[int, int, int, bytes]]:
    """Every frame until the server closes: (type, flags, stream, payload)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    frames = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        stream = int.from_bytes(data[5:9], "big")
        frames.append((data[3], data[4], stream, data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


def test_shutdown_ends_idle_streams_and_finishes_running_calls(tmp_path: Path) -> None:
    srv = start_server(repository(tmp_path), "--grpc-transport", "h2", "--threads", "1")
    client = RawClient(srv.grpc_port)
    try:
        idle = client.request("ModelStreamInfer", None, end=False)
        client.answer(client.request("ServerLive", framed(b"")))  # the stream is open
        started = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        # h2's client stops reading at GOAWAY, so the frames are read by hand here.
        frames = raw_frames(client.sock)
        assert time.monotonic() - started < 5  # the idle stream ended after ~1 s
        kinds = [(kind, stream) for kind, _, stream, _ in frames]
        assert kinds.index((0x7, 0)) < kinds.index((0x1, idle))  # GOAWAY, then its end
        [(_, flags, _, block)] = [f for f in frames if f[0] == 0x1 and f[2] == idle]
        assert flags & 0x1  # END_STREAM
        assert b"grpc-status\x010" in block  # OK, as grpc.aio ends it
        # Wait for the exit the first signal started: stop() would signal again, and a
        # second SIGTERM in the last steps of the exit (handlers gone) ends it with -15.
        assert srv.process.wait(30) == 0
    finally:
        client.close()
        srv.stop()


def test_a_peer_that_does_not_read_is_not_read_from(h2_server: Server) -> None:
    # A PING flood whose acks are never read: once they fill what the server buffers,
    # it stops reading that connection, so the flood's sends block; others are served.
    # (Or the flood passes the PING budget first, and the connection is cut off.)
    sock = socket.create_connection(("127.0.0.1", h2_server.grpc_port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
        sock.setblocking(False)
        chunk = memoryview(ping * 4096)
        pending = chunk  # what is left of the chunk: frames stay whole across sends
        sent, blocked_since, stopped, deadline = 0, None, False, time.monotonic() + 30
        while not stopped and time.monotonic() < deadline:
            try:
                n = sock.send(pending)
            except ConnectionError:  # GOAWAY ENHANCE_YOUR_CALM, then the close
                break
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                stopped = time.monotonic() - blocked_since > 2  # not read from for 2 s
                time.sleep(0.05)
                continue
            sent += n
            pending = pending[n:] or chunk
            blocked_since = None
        assert time.monotonic() < deadline, f"the server went on reading: {sent} bytes in 30 s"
        with grpc.insecure_channel(f"127.0.0.1:{h2_server.grpc_port}") as channel:
            stub = GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    finally:
        sock.close()

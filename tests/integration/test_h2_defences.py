"""The h2 gRPC transport's HTTP/2 defences (issue 17), driven with raw frames on real sockets.

Each attack an adversarial probe found against the own HTTP/2 framing gets the answer
nghttp2 would give it: REFUSED_STREAM, a FLOW_CONTROL_ERROR or COMPRESSION_ERROR, or
GOAWAY ENHANCE_YOUR_CALM once a per-second budget is spent; silent connections and
calls that never send their message end on a timer. A few attacks run for a few
seconds while a well-behaved client calls: its p99 stays low, the worker's memory flat.
"""

from __future__ import annotations

import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ligeiro.protocol._generated import grpc_service_pb2 as pb
from ligeiro.protocol._generated.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.conftest import Server, start_server
from tests.integration.test_grpc_transport import RawClient, framed, iris_request, still_serving

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x6, 0x7, 0x8, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4
NO_ERROR, FLOW_CONTROL_ERROR, REFUSED_STREAM = 0x0, 0x3, 0x7
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB
TABLE_SIZE_UPDATE = b"\x3f\xe1\x1f"  # "dynamic table size: 4096", HPACK §6.3
# The limits the `limits` server runs with (the budgets are the defaults).
LIMITS = {
    "LIGEIRO_GRPC__HANDSHAKE_TIMEOUT_S": "1",
    "LIGEIRO_GRPC__IDLE_TIMEOUT_S": "2",
    "LIGEIRO_GRPC__REQUEST_TIMEOUT_S": "1",
    "LIGEIRO_GRPC__MAX_BUFFERED_BYTES": str(4 << 20),
}


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def literal(name: bytes, value: bytes) -> bytes:
    """A header as an HPACK literal without indexing: no table state to keep in step."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


def request_block(method: str = "ModelStreamInfer") -> bytes:
    return b"".join(literal(name, value) for name, value in (
        (b":method", b"POST"), (b":scheme", b"http"),
        (b":path", f"/inference.GRPCInferenceService/{method}".encode()),
        (b":authority", b"localhost"), (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ))  # fmt: skip


class Peer:
    """One connection that speaks frames by hand, ignoring whatever limit it likes."""

    def __init__(self, port: int, *, handshake: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._data = b""
        if handshake:
            self.send(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, data: bytes) -> bool:
        """False once the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def frames(self, timeout_s: float = 5.0) -> Iterator[tuple[int, int, int, bytes]]:
        """Frames from the server, (type, flags, stream, payload), until it closes."""
        deadline = time.monotonic() + timeout_s
        while True:
            while len(self._data) >= 9:
                length = int.from_bytes(self._data[:3], "big")
                if len(self._data) < 9 + length:
                    break
                kind, flags = self._data[3], self._data[4]
                stream = int.from_bytes(self._data[5:9], "big") & 0x7FFFFFFF
                payload, self._data = self._data[9 : 9 + length], self._data[9 + length :]
                yield kind, flags, stream, payload
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                return
            self._data += chunk

    def goaway(self, timeout_s: float = 5.0) -> int | None:
        """The error code of the server's GOAWAY, or None if none came in time."""
        for kind, _, _, payload in self.frames(timeout_s):
            if kind == GOAWAY:
                return int.from_bytes(payload[4:8], "big")
        return None

    def is_closed(self, timeout_s: float) -> bool:
        """Whether the server closes the connection within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for _ in self.frames(timeout_s):
            pass
        return time.monotonic() < deadline

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def limits(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("h2-defences")
    (root / "iris").symlink_to(examples / "iris")
    srv = start_server(root, "--grpc-transport", "h2", "--threads", "1",
                       env={**os.environ, **LIMITS})  # fmt: skip
    yield srv
    srv.stop()


@pytest.fixture
def peer(limits: Server) -> Iterator[Peer]:
    connection = Peer(limits.grpc_port)
    yield connection
    connection.close()


# -- streams and calls (defect 3) ----------------------------------------------------------


def test_max_concurrent_streams_is_advertised_and_enforced(limits: Server) -> None:
    client = RawClient(limits.grpc_port)  # h2 sends before it has read our settings
    try:
        streams = [client.request("ModelStreamInfer", None, end=False) for _ in range(129)]
        answer = client.answer(streams[-1], timeout_s=5)
        assert answer.reset == REFUSED_STREAM
        assert client.conn.remote_settings.max_concurrent_streams == 128
        assert not any(client.answers.get(s) for s in streams[:-1])  # the others go on
    except TimeoutError:
        pytest.fail("the 129th stream was not refused")
    finally:
        client.close()
    still_serving(limits)


def test_a_unary_call_whose_message_never_arrives_ends_deadline_exceeded(
    limits: Server,
) -> None:
    client = RawClient(limits.grpc_port)
    try:
        started = time.monotonic()
        silent = client.request("ModelInfer", None, end=False)  # no grpc-timeout either
        unended = client.request("ModelInfer", framed(iris_request().SerializeToString()),
                                 end=False)  # fmt: skip
        for stream in (silent, unended):
            answer = client.answer(stream, timeout_s=5)
            assert answer.status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            assert "did not arrive within 1 s" in answer.message
        assert 1.0 < time.monotonic() - started < 4
    finally:
        client.close()


def test_request_messages_still_arriving_are_bounded_per_worker(peer: Peer) -> None:
    # Calls 3 MiB into a 10 MiB message each: the second passes the worker's 4 MiB.
    def call(stream: int) -> bytes:
        data = b"\x00" + (10 << 20).to_bytes(4, "big") + bytes(3 << 20)
        chunks = (data[i : i + 16_384] for i in range(0, len(data), 16_384))
        return frame(HEADERS, END_HEADERS, stream, request_block("ModelInfer")) + b"".join(
            frame(DATA, 0, stream, chunk) for chunk in chunks
        )

    def status(stream: int, timeout_s: float) -> bytes:
        for kind, _, on, block in peer.frames(timeout_s):
            if kind == HEADERS and on == stream:
                return block
        pytest.fail(f"no answer on stream {stream} within {timeout_s} s")

    peer.send(call(1) + call(3))
    block = status(3, 3)
    assert b"grpc-status\x018" in block  # RESOURCE_EXHAUSTED
    assert b"request messages still arriving" in block
    # Stream 1's bytes are let go with it: a new call fits again, and waits for the rest
    # of its message until request_timeout_s.
    peer.send(frame(RST_STREAM, 0, 1, b"\x00\x00\x00\x08") + call(5))
    assert b"grpc-status\x014" in status(5, 5)  # DEADLINE_EXCEEDED


def test_a_length_prefix_over_the_message_limit_is_refused_before_the_message(
    peer: Peer,
) -> None:
    prefix = b"\x00" + (1 << 30).to_bytes(4, "big")  # 1 GiB announced, 5 bytes sent
    peer.send(frame(HEADERS, END_HEADERS, 1, request_block("ModelInfer")))
    peer.send(frame(DATA, 0, 1, prefix))
    [block] = [p for kind, _, stream, p in peer.frames(3) if kind == HEADERS and stream == 1]
    assert b"grpc-status\x018" in block  # RESOURCE_EXHAUSTED, at once
    assert b"1073741824 vs. 67108864" in block


# -- SETTINGS and windows (defects 1 and 9) ------------------------------------------------


def test_a_settings_frame_of_many_entries_is_refused(peer: Peer) -> None:
    opened = b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, request_block()) for i in range(100))
    entries = struct.pack(">HI", 0x4, 65_535) * 1000
    started = time.monotonic()
    peer.send(opened + frame(SETTINGS, 0, 0, entries))
    assert peer.goaway() == ENHANCE_YOUR_CALM
    assert time.monotonic() - started < 1


def test_a_settings_change_past_the_largest_window_is_a_flow_control_error(peer: Peer) -> None:
    # The stream's window grows to 2^31-1 (allowed), then SETTINGS adds one more.
    peer.send(frame(HEADERS, END_HEADERS, 1, request_block()))
    peer.send(frame(WINDOW_UPDATE, 0, 1, (2**31 - 1 - 65_535).to_bytes(4, "big")))
    peer.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 65_536)))
    assert peer.goaway() == FLOW_CONTROL_ERROR


def test_data_past_the_stream_window_is_a_flow_control_error(peer: Peer) -> None:
    # Defect 7: a stream's messages queue faster than ModelStreamInfer takes them, so the
    # server holds its WINDOW_UPDATEs back; a peer that sends on regardless is stopped.
    message = framed(pb.ModelInferRequest(model_name="nope", id="x" * 8000).SerializeToString())
    data = message * (4 * 1024 * 1024 // len(message))
    chunks = (data[i : i + 16_384] for i in range(0, len(data), 16_384))
    peer.send(frame(HEADERS, END_HEADERS, 1, request_block()) + b"".join(
        frame(DATA, 0, 1, chunk) for chunk in chunks
    ))  # fmt: skip
    assert peer.goaway() == FLOW_CONTROL_ERROR


# -- header blocks (defect 2, CONTINUATION flood, HPACK bomb) ------------------------------


def test_a_single_headers_frame_over_the_limit_is_refused(peer: Peer) -> None:
    block = TABLE_SIZE_UPDATE * (100 * 1024 // 3)  # 100 KiB that decode to nothing, slowly
    started = time.monotonic()
    peer.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    assert peer.goaway() == ENHANCE_YOUR_CALM
    assert time.monotonic() - started < 1


def test_more_than_two_table_size_updates_is_a_compression_error(peer: Peer) -> None:
    block = TABLE_SIZE_UPDATE * 3 + request_block("ServerLive")
    peer.send(frame(HEADERS, END_HEADERS, 1, block))
    assert peer.goaway() == COMPRESSION_ERROR


def test_a_continuation_past_the_limit_is_refused_as_it_arrives(peer: Peer) -> None:
    # 16 KiB is the limit; a block cut into 8 KiB frames that never ends.
    peer.send(frame(HEADERS, 0, 1, request_block() + b"\x00\x01a\x7f" + bytes(8000)))
    for _ in range(3):
        if not peer.send(frame(CONTINUATION, 0, 1, bytes(8192))):
            break
    assert peer.goaway() == ENHANCE_YOUR_CALM


def test_an_hpack_bomb_is_a_compression_error(peer: Peer) -> None:
    # One 4,000-byte header put in the table, then 200 one-byte references to it: a
    # 4 KB block that decodes to 800 KB.
    value = b"x" * 4000
    insert = b"\x40\x01a" + b"\x7f" + _hpack_int(len(value) - 127) + value
    peer.send(frame(HEADERS, END_HEADERS, 1, insert + b"\xbe" * 200))
    assert peer.goaway() == COMPRESSION_ERROR


def _hpack_int(value: int) -> bytes:
    out = bytearray()
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# -- floods (defect 9) ---------------------------------------------------------------------


def _flood(kind: str) -> bytes:
    open_stream = frame(HEADERS, END_HEADERS, 1, request_block())
    if kind == "rapid reset":
        return b"".join(
            frame(HEADERS, END_HEADERS, 2 * i + 1, request_block())
            + frame(RST_STREAM, 0, 2 * i + 1, b"\x00\x00\x00\x08")
            for i in range(1000)
        )
    if kind == "empty CONTINUATION":
        return frame(HEADERS, 0, 1, request_block()) + frame(CONTINUATION, 0, 1) * 5000
    if kind == "empty DATA":
        return open_stream + frame(DATA, 0, 1) * 5000
    single = {
        "PING": frame(PING, 0, 0, b"12345678"),
        "SETTINGS": frame(SETTINGS, 0, 0),
        "PRIORITY": frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
        "unknown frame type": frame(0x20, 0, 0, b"x"),
    }[kind]
    return open_stream + single * 5000


FLOODS = ["rapid reset", "empty CONTINUATION", "empty DATA", "PING", "SETTINGS", "PRIORITY",
          "unknown frame type"]  # fmt: skip


@pytest.mark.parametrize("kind", FLOODS)
def test_a_flood_gets_goaway_enhance_your_calm(limits: Server, peer: Peer, kind: str) -> None:
    peer.send(_flood(kind))
    assert peer.goaway() == ENHANCE_YOUR_CALM
    still_serving(limits)


# -- connections (defect 5) ----------------------------------------------------------------


def test_a_silent_connection_is_closed_after_the_handshake_timeout(limits: Server) -> None:
    silent = Peer(limits.grpc_port, handshake=False)
    try:
        started = time.monotonic()
        assert silent.is_closed(timeout_s=5), "a connection that sent nothing stayed open"
        assert 1.0 < time.monotonic() - started < 3.5
    finally:
        silent.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout(limits: Server) -> None:
    client = RawClient(limits.grpc_port)
    try:
        assert client.answer(client.request("ServerLive", framed(b""))).status == 0
        started = time.monotonic()
        answer = client.answer(0, timeout_s=8)  # nothing more: wait for the GOAWAY
        assert answer.goaway == NO_ERROR
        assert 2.0 < time.monotonic() - started < 5.5
    except TimeoutError:
        pytest.fail("an idle connection stayed open")
    finally:
        client.close()


def test_connections_past_max_connections_are_closed(tmp_path: Path, examples: Path) -> None:
    (tmp_path / "iris").symlink_to(examples / "iris")
    srv = start_server(tmp_path, "--grpc-transport", "h2", "--threads", "1",
                       env={**os.environ, "LIGEIRO_GRPC__MAX_CONNECTIONS": "4"})  # fmt: skip
    peers = [Peer(srv.grpc_port) for _ in range(4)]
    try:
        for open_peer in peers:  # each handshake is answered: the four are in
            assert open_peer.send(frame(PING, 0, 0, b"12345678"))
            assert any(kind == PING for kind, *_ in open_peer.frames(1))
        extra = Peer(srv.grpc_port)
        assert extra.goaway() == ENHANCE_YOUR_CALM
        assert extra.is_closed(timeout_s=2)
        extra.close()
        peers.pop().close()
        time.sleep(0.2)
        still_serving(srv)  # one left: a new connection is let in
    finally:
        for open_peer in peers:
            open_peer.close()
        srv.stop()


# -- attacks while a well-behaved client calls (acceptance: 10 s; 3.5 s by default) --------

# Each attack runs this long: TEST_H2_ATTACK_S=10 for the acceptance's 10 s (not a
# LIGEIRO_* name: the server under test would read that as a setting). The well-behaved
# client calls for half a second less, from 0.2 s after the attack starts.
ATTACK_S = float(os.environ.get("TEST_H2_ATTACK_S", "3.5"))


def _settings_on_open_streams() -> bytes:
    # Defect 1: 174,762 INITIAL_WINDOW_SIZE entries (1 MiB) over 100 open streams.
    opened = b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, request_block()) for i in range(100))
    return opened + frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 65_535) * 174_762)


ATTACKS = {
    "rapid reset": lambda: _flood("rapid reset"),
    "PING flood": lambda: _flood("PING"),
    "SETTINGS of 174,762 entries": _settings_on_open_streams,
    "1 MiB HEADERS of table size updates": lambda: frame(
        HEADERS, END_HEADERS | END_STREAM, 1, TABLE_SIZE_UPDATE * (1_048_000 // 3)
    ),
}


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# The abusive client runs in a process of its own, so that it takes no time from the
# well-behaved one's interpreter: connection after connection, as fast as they close,
# each sending the attack and reading until GOAWAY; it prints each GOAWAY's code. It
# runs niced, as if from another machine: what is measured is the server's handling of
# the attack, not the CPU the attacker's own process takes from it on a shared machine.
ATTACKER = """
import socket, sys, time
port, payload, seconds = int(sys.argv[1]), open(sys.argv[2], "rb").read(), float(sys.argv[3])
codes, deadline = [], time.monotonic() + seconds
while time.monotonic() < deadline:
    code, data = None, b""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError as exc:
        print("connect:", exc, file=sys.stderr)
        continue
    try:
        sock.sendall(payload)
        while code is None and (chunk := sock.recv(65536)):
            data += chunk
            while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
                if data[3] == 0x7:
                    code = int.from_bytes(data[13:17], "big")
                data = data[9 + int.from_bytes(data[:3], "big"):]
    except OSError:
        pass
    sock.close()
    codes.append(code)
print(" ".join(map(str, codes)))
"""


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_attack_leaves_a_well_behaved_client_served(
    limits: Server, attack: str, tmp_path: Path
) -> None:
    payload = tmp_path / "attack"
    payload.write_bytes(PREFACE + frame(SETTINGS, 0, 0) + ATTACKS[attack]())
    with grpc.insecure_channel(limits.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        stub.ServerLive(pb.ServerLiveRequest(), timeout=10)  # connected
        rss_before = _rss_bytes(limits.process.pid)
        attacker = subprocess.Popen(
            [sys.executable, "-c", ATTACKER, str(limits.grpc_port), str(payload), str(ATTACK_S)],
            stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(19),
        )  # fmt: skip
        try:
            time.sleep(0.2)  # under way
            latencies, deadline = [], time.monotonic() + ATTACK_S - 0.5
            while time.monotonic() < deadline:
                started = time.perf_counter()
                if len(latencies) % 2:
                    stub.ModelInfer(iris_request(), timeout=10)
                else:
                    stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
                latencies.append(time.perf_counter() - started)
                time.sleep(0.005)
            output, _ = attacker.communicate(timeout=ATTACK_S + 10)
        finally:
            attacker.kill()
            attacker.wait()
        rss_growth = _rss_bytes(limits.process.pid) - rss_before
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(  # the measurement, with -s
        f"\n{attack}: {ATTACK_S:g} s, p99 {p99 * 1e3:.1f} ms over {len(latencies)} calls, "
        f"RSS {rss_growth / (1 << 20):+.1f} MiB, {len(output.split())} attacking connections"
    )
    assert p99 < 0.050, (
        f"{attack}: p99 {p99 * 1e3:.1f} ms over {len(latencies)} calls, "
        f"{len(output.split())} attacking connections"
    )
    assert rss_growth < 50 << 20, f"{attack}: the worker grew {rss_growth >> 20} MiB"
    codes = output.split()
    assert len(codes) >= 5, f"{attack}: only {len(codes)} attacking connections in {ATTACK_S:g} s"
    assert set(codes) == {str(ENHANCE_YOUR_CALM)}, f"{len(codes)} connections: {codes}"


def test_streams_reset_while_reading_are_not_logged(limits: Server) -> None:
    # A ModelStreamInfer reset while it waits for its next message once left that read
    # behind, logged with a traceback when collected: a log line per reset stream.
    client = RawClient(limits.grpc_port)
    try:
        for _ in range(20):
            stream = client.request("ModelStreamInfer", framed(b""), end=False)
            deadline = time.monotonic() + 5
            while not client.answers.get(stream, None) or not client.answers[stream].data:
                assert time.monotonic() < deadline, "no answer to the stream's first message"
                client._receive()
            client.conn.reset_stream(stream)
            client.flush()
        assert client.answer(client.request("ServerLive", framed(b""))).status == 0
    finally:
        client.close()
    time.sleep(0.5)
    assert "never retrieved" not in limits.output()


def test_the_grpcio_transport_advertises_the_stream_and_header_limits(
    tmp_path: Path, examples: Path
) -> None:
    (tmp_path / "iris").symlink_to(examples / "iris")
    env = {**os.environ, "LIGEIRO_GRPC__MAX_CONCURRENT_STREAMS": "64"}
    srv = start_server(tmp_path, "--grpc-transport", "grpcio", "--threads", "1", env=env)
    client = RawClient(srv.grpc_port)
    try:
        assert client.answer(client.request("ServerLive", framed(b""))).status == 0
        assert client.conn.remote_settings.max_concurrent_streams == 64
        # grpcio's hard limit is 1.25 times grpc.max_metadata_size, its soft one.
        assert client.conn.remote_settings.max_header_list_size == 16 * 1024 * 5 // 4
    finally:
        client.close()
        srv.stop()

"""Scheduling end to end, on real sockets, over both transports: dynamic batching on the
example MLP, back-pressure (429 / RESOURCE_EXHAUSTED), queue timeouts (504 /
DEADLINE_EXCEEDED) and Triton's statistics read by ``tritonclient``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.datasets import load_digits

from ligeiro import Engine
from ligeiro.client import AsyncClient, AsyncGrpcClient
from ligeiro.errors import DeadlineExceededError, InvalidInputError, ServerOverloadedError
from ligeiro.repository.registry import Registry
from tests.conftest import EXAMPLE_NAMES, Server, start_server
from tests.models import write

ROWS = load_digits().data.astype(np.float32)


@pytest.fixture(scope="module", params=["http", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def tight(examples: Path) -> Iterator[Server]:
    """The MLP without batching, a queue of 4 and one run at a time: easy to overload.

    The model runs on its own thread, so the event loop reads every request while it
    computes and the queue fills as fast as clients send.
    """
    srv = start_server(
        examples,
        "--threads",
        "1",
        "--batch",
        "mlp:max_batch_size=1,max_queue_size=4,run_on=thread",
    )
    yield srv
    srv.stop()


def async_client(transport: str, srv: Server) -> AsyncClient | AsyncGrpcClient:
    """ligeiro's own async client over ``transport``: one connection each."""
    if transport == "http":
        return AsyncClient(f"http://{srv.host}:{srv.port}")
    return AsyncGrpcClient(srv.grpc_target)


def burst(
    transport: str, srv: Server, rows: list[np.ndarray], timeout_us: int | None = None
) -> list[dict[str, np.ndarray] | Exception]:
    """Send every row at once, each on its own connection; the answers or the errors."""

    async def one(row: np.ndarray) -> dict[str, np.ndarray] | Exception:
        client = async_client(transport, srv)
        try:
            return await client.infer("mlp", {"float_input": row[None, :]}, timeout_us=timeout_us)
        except (ServerOverloadedError, DeadlineExceededError) as exc:
            return exc
        finally:
            await client.aclose()

    async def everything() -> list[dict[str, np.ndarray] | Exception]:
        return list(await asyncio.gather(*(one(row) for row in rows)))

    return asyncio.run(everything())


def batch_sizes(srv: Server) -> dict[int, int]:
    stats = srv.get("/v2/models/mlp/stats").json()["model_stats"][0]
    return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}


def test_concurrent_requests_are_batched_and_split_back_exactly(
    transport: str, server: Server, examples: Path
) -> None:
    rows = [ROWS[i] for i in range(48)]
    before = batch_sizes(server)
    answers = burst(transport, server, rows)
    with Engine.from_repository(examples) as engine:
        expected = engine.infer("mlp", {"float_input": np.stack(rows)})
    for i, answer in enumerate(answers):
        assert isinstance(answer, dict), answer
        assert answer["output_label"].tolist() == [expected["output_label"][i]]
        np.testing.assert_allclose(
            answer["output_probability"][0], expected["output_probability"][i], atol=1e-5
        )
    after = batch_sizes(server)
    grown = {size: after[size] - before.get(size, 0) for size in after}
    assert sum(size * n for size, n in grown.items()) == 48  # every row ran exactly once
    assert max(size for size, n in grown.items() if n) > 1  # and some ran together


def test_a_full_queue_answers_overloaded_and_the_server_recovers(
    transport: str, tight: Server
) -> None:
    answers = burst(transport, tight, [ROWS[i % 10] for i in range(32)])
    refused = [a for a in answers if isinstance(a, ServerOverloadedError)]
    served = [a for a in answers if isinstance(a, dict)]
    assert len(refused) + len(served) == 32
    assert refused
    assert served
    assert "queue full (4 requests waiting); retry later" in str(refused[0])
    assert isinstance(burst(transport, tight, [ROWS[0]])[0], dict)


def raw_infer_request() -> bytes:
    """One HTTP/1.1 request for the mlp, bytes ready to send."""
    body = json.dumps(
        {"inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP32",
                     "data": ROWS[0].tolist()}]}
    ).encode()  # fmt: skip
    head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
    return head % len(body) + body


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP answer (with a content-length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def test_an_overloaded_http_answer_says_when_to_retry(tight: Server) -> None:
    # Every connection is open and every request sent before the first can finish: the
    # server reads them together, runs one, queues four and refuses the rest.
    sockets = [socket.create_connection((tight.host, tight.port), timeout=30) for _ in range(32)]
    request = raw_infer_request()
    for sock in sockets:
        sock.sendall(request)
    seen = [read_answer(sock) for sock in sockets]
    for sock in sockets:
        sock.close()
    assert {status for status, _, _ in seen} <= {200, 429}
    refused = [(headers, body) for status, headers, body in seen if status == 429]
    assert refused, "32 requests at once should overflow a queue of 4"
    assert all(headers["retry-after"] == "1" for headers, _ in refused)
    assert "queue full" in json.loads(refused[0][1])["error"]


def test_a_request_that_waits_past_its_timeout_gets_deadline_exceeded(
    transport: str, tight: Server
) -> None:
    # Twelve at once: some wait behind the first (some may find the queue full).
    answers = burst(transport, tight, [ROWS[i] for i in range(12)], timeout_us=1)
    late = [a for a in answers if isinstance(a, DeadlineExceededError)]
    # The first finds the model idle and runs at once; the others wait and expire.
    assert any(isinstance(a, dict) for a in answers)
    assert late
    assert "timeout of 1 us passed while it waited in the queue" in str(late[0])


@pytest.mark.parametrize(("timeout", "grpc_field"), [("soon", "string_param"), (-5, "int64_param")])
def test_a_bad_timeout_parameter_is_refused(
    transport: str, server: Server, timeout: Any, grpc_field: str
) -> None:
    message = f"parameter timeout must be a whole number of microseconds >= 0, got {timeout!r}"
    if transport == "http":
        request = {
            "inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP32",
                        "data": ROWS[0].tolist()}],
            "parameters": {"timeout": timeout},
        }  # fmt: skip
        answer = server.post("/v2/models/mlp/infer", request)
        assert (answer.status, answer.json()["error"]) == (400, message)
        return
    import grpc

    from ligeiro.protocol._generated import grpc_service_pb2 as pb
    from ligeiro.protocol._generated.grpc_service_pb2_grpc import GRPCInferenceServiceStub

    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="float_input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(ROWS[0].tobytes())
    setattr(request.parameters["timeout"], grpc_field, timeout)
    with (
        grpc.insecure_channel(server.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == message


def test_tritonclient_reads_statistics_and_sends_timeouts(transport: str, server: Server) -> None:
    client: Any
    api: Any
    if transport == "http":
        api, client = httpclient, httpclient.InferenceServerClient(f"{server.host}:{server.port}")
        before = client.get_inference_statistics("iris")
    else:
        api, client = grpcclient, grpcclient.InferenceServerClient(server.grpc_target)
        before = client.get_inference_statistics("iris", as_json=True)
    x = api.InferInput("float_input", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
    for _ in range(3):  # Triton's own timeout parameter (µs), as tritonclient sends it
        assert client.infer("iris", [x], timeout=10_000_000).as_numpy("output_label")[0] == 0
    after = (
        client.get_inference_statistics("iris")
        if transport == "http"
        else client.get_inference_statistics("iris", as_json=True)
    )
    client.close()

    def counts(stats: dict[str, Any]) -> tuple[int, int, int]:
        (model,) = stats["model_stats"]
        assert (model["name"], model["version"]) == ("iris", "1")
        success = model["inference_stats"]["success"]
        return (
            int(model.get("inference_count", 0)),
            int(model.get("execution_count", 0)),
            int(success.get("count", 0)),
        )

    grown = [b - a for a, b in zip(counts(before), counts(after), strict=True)]
    assert grown[0] >= 3
    assert grown[1] >= 3
    assert grown[2] >= 3


def test_every_model_stats_route(server: Server) -> None:
    every = server.get("/v2/models/stats").json()["model_stats"]
    assert [(m["name"], m["version"]) for m in every] == [
        (name, "1") for name in EXAMPLE_NAMES.split(", ")
    ]
    one = server.get("/v2/models/mlp/versions/1/stats").json()["model_stats"]
    assert [(m["name"], m["version"]) for m in one] == [("mlp", "1")]
    missing = server.get("/v2/models/nope/stats")
    assert missing.status == 404
    assert missing.json()["error"].startswith("unknown model 'nope'")


def test_batching_a_model_without_a_batch_axis_is_a_load_error(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "fixed", [x], [y])
    write(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
          tmp_path, "fixed")  # fmt: skip
    (tmp_path / "fixed" / "config.toml").write_text("[batching]\nmax_batch_size = 8\n")
    (state,) = Registry(tmp_path).index()
    assert not state.is_ready
    assert state.reason.endswith(
        "[batching] needs a variable first (batch) axis on every input and output; "
        "these have none: input 'x' [2, 3], output 'y' [2, 3]"
    )


def test_a_bad_batching_section_names_the_file_and_field(tmp_path: Path, examples: Path) -> None:
    root = tmp_path / "models"
    (root / "mlp" / "1").mkdir(parents=True)
    (root / "mlp" / "1" / "model.onnx").write_bytes(
        (examples / "mlp" / "1" / "model.onnx").read_bytes()
    )
    (root / "mlp" / "config.toml").write_text("[batching]\nmax_batch_size = -1\n")
    (state,) = Registry(root).index()
    assert state.reason == (
        f"{root / 'mlp' / 'config.toml'}: Expected `int` >= 0 - at `$.batching.max_batch_size`"
    )


def test_invalid_input_is_still_checked_before_the_queue(transport: str, tight: Server) -> None:
    async def wrong_width() -> None:
        client = async_client(transport, tight)
        try:
            with pytest.raises(InvalidInputError, match=r"expected shape \[-1, 64\], got \[1, 3\]"):
                await client.infer("mlp", {"float_input": np.zeros((1, 3), np.float32)})
        finally:
            await client.aclose()

    asyncio.run(wrong_width())


def test_a_client_that_disconnects_leaves_the_queue(tight: Server) -> None:
    def executions() -> int:
        stats = tight.get("/v2/models/mlp/stats").json()["model_stats"][0]
        return int(stats["inference_count"])

    request = raw_infer_request()
    dropped = []
    # A loaded machine can stall this client between sending and closing for longer
    # than the model runs; then the abandoned requests ran before the server saw them
    # go. One attempt out of five in which some never ran shows they leave the queue.
    for _ in range(5):
        before = executions()
        sockets = [socket.create_connection((tight.host, tight.port)) for _ in range(4)]
        for sock in sockets:
            sock.sendall(request)
        for sock in sockets[:3]:  # gone while their requests wait behind the first
            sock.close()
        kept = sockets[3]
        kept.settimeout(30)
        status, _, _ = read_answer(kept)
        kept.close()
        assert status == 200
        ran = executions() - before
        assert 1 <= ran <= 4
        dropped.append(4 - ran)
        if dropped[-1]:
            break
    assert any(dropped), f"every abandoned request ran in all attempts: {dropped}"

"""ligeiro.client's gRPC clients against a real server: the REST clients' API and answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from ligeiro import (
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServerOverloadedError,
)
from ligeiro.client import AsyncGrpcClient, Client, GrpcClient
from ligeiro.protocol.datatypes import dtype_of
from tests.conftest import Server, start_server
from tests.models import ONNX_TYPES

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


def test_health_and_metadata_match_rest(server: Server) -> None:
    with GrpcClient(server.grpc_target) as client:
        assert client.is_live()
        assert client.is_ready()
        metadata = client.model_metadata("iris")
        assert client.model_metadata("iris", version="1") == metadata
    with Client(f"http://{server.host}:{server.port}") as rest:
        assert metadata == rest.model_metadata("iris")
    assert metadata["inputs"] == [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["parameters"] == {"execution_provider": "CPUExecutionProvider"}


def test_infer(server: Server) -> None:
    with GrpcClient(server.grpc_target) as client:
        outputs = client.infer("iris", {"float_input": X}, request_id="r-1")
        assert list(outputs) == ["output_label", "output_probability"]
        assert outputs["output_label"].tolist() == [0, 2]
        assert outputs["output_probability"].dtype == np.float32
        assert outputs["output_probability"].shape == (2, 3)
        only = client.infer("iris", {"float_input": X}, outputs=["output_label"], version="1")
        assert list(only) == ["output_label"]
        assert only["output_label"].tolist() == [0, 2]


def test_errors_are_ligeiro_classes(server: Server) -> None:
    with GrpcClient(server.grpc_target) as client:
        with pytest.raises(InvalidInputError, match=r"expected shape \[-1, 4\], got \[2, 2\]"):
            client.infer("iris", {"float_input": X[:, :2]})
        with pytest.raises(ModelNotFoundError, match="unknown model 'roses'"):
            client.infer("roses", {"float_input": X})
        with pytest.raises(ModelNotFoundError, match="roses"):
            client.model_metadata("roses")
        with pytest.raises(ModelNotFoundError, match="version"):
            client.infer("iris", {"float_input": X}, version="9")
        # the channel carries on after errors
        assert client.infer("iris", {"float_input": X})["output_label"].tolist() == [0, 2]


def test_an_unreachable_server_is_unavailable() -> None:
    with (
        GrpcClient("127.0.0.1:1", timeout_s=5) as client,
        pytest.raises(ModelNotReadyError, match=r"127\.0\.0\.1:1"),
    ):
        client.is_live()


def test_a_message_over_the_limit_is_overloaded(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIGEIRO_GRPC__MAX_MESSAGE_BYTES", "1000")
    srv = start_server(repository, "--threads", "1")
    try:
        with GrpcClient(srv.grpc_target) as client:
            with pytest.raises(ServerOverloadedError, match="larger than max"):
                client.infer("iris", {"float_input": np.zeros((100, 4), np.float32)})
            assert client.infer("iris", {"float_input": X})["output_label"].tolist() == [0, 2]
    finally:
        assert srv.stop() == 0


def extremes(datatype: str) -> np.ndarray:
    """Each datatype's edges as a [1, 3] tensor (text with a non-ASCII letter for BYTES)."""
    dtype = dtype_of(datatype)
    if dtype.kind == "b":
        return np.array([[True, False, True]])
    if dtype.kind == "O":
        return np.array([["olá", "", "x"]], dtype=object)
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    return np.array([[info.min, info.max, 0.5 if dtype.kind == "f" else 1]], dtype)


def test_every_datatype_round_trips(identity_server: Server) -> None:
    inputs = {f"in_{datatype}": extremes(datatype) for datatype in ONNX_TYPES}
    with GrpcClient(identity_server.grpc_target) as client:
        outputs = client.infer("identity", inputs)
    for name, array in inputs.items():
        out = outputs["out_" + name[3:]]
        assert out.dtype == array.dtype, name
        np.testing.assert_array_equal(out, array)


def test_async_client(server: Server) -> None:
    async def main() -> None:
        async with AsyncGrpcClient(server.grpc_target) as client:
            assert await client.is_live()
            assert await client.is_ready()
            results = await asyncio.gather(
                *(client.infer("iris", {"float_input": X[i : i + 1]}) for i in (0, 1, 0, 1, 0))
            )
            assert [r["output_label"].tolist() for r in results] == [[0], [2], [0], [2], [0]]
            metadata = await client.model_metadata("iris")
            assert metadata["name"] == "iris"
            assert metadata["versions"] == ["1"]
            only = await client.infer(
                "iris", {"float_input": X}, outputs=["output_probability"], version="1"
            )
            assert list(only) == ["output_probability"]
            with pytest.raises(ModelNotFoundError, match="unknown model 'roses'"):
                await client.infer("roses", {"float_input": X})
            with pytest.raises(InvalidInputError, match="float_input"):
                await client.infer("iris", {"float_input": X.astype(np.float64)})

    asyncio.run(main())

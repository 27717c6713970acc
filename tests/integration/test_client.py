"""ligeiro.client against a real server: numpy in and out, errors as ligeiro's classes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ligeiro import InvalidInputError, ModelNotFoundError
from ligeiro.client import AsyncClient, Client
from tests.conftest import EXAMPLE_NAMES, Server

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


def url(server: Server) -> str:
    return f"http://{server.host}:{server.port}"


def test_sync_client(server: Server) -> None:
    with Client(url(server)) as client:
        assert client.is_live()
        assert client.is_ready()
        assert client.model_metadata("iris")["inputs"][0]["name"] == "float_input"
        outputs = client.infer("iris", {"float_input": X})
        assert outputs["output_label"].tolist() == [0, 2]
        assert outputs["output_probability"].dtype == np.float32
        assert outputs["output_probability"].shape == (2, 3)
        only = client.infer("iris", {"float_input": X}, outputs=["output_label"], version="1")
        assert list(only) == ["output_label"]
        seed = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
        assert client.predict("iris", seed)["label"] == "iris-virginica"
        with pytest.raises(InvalidInputError, match=r"expected shape \[-1, 4\], got \[2, 2\]"):
            client.infer("iris", {"float_input": X[:, :2]})
        with pytest.raises(ModelNotFoundError, match="unknown model 'roses'"):
            client.infer("roses", {"float_input": X})
        assert client.infer("iris", {"float_input": X})["output_label"].tolist() == [0, 2]


def test_sync_client_reconnects_after_the_server_closed(server: Server) -> None:
    with Client(url(server)) as client:
        assert client.is_ready()
        client._sock.shutdown(2)  # type: ignore[union-attr]  # as if the server had closed it
        assert client.is_ready()


def test_async_client(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(url(server)) as client:
            assert await client.is_ready()
            results = await asyncio.gather(
                *(client.infer("iris", {"float_input": X}) for _ in range(5))
            )
            assert all(r["output_label"].tolist() == [0, 2] for r in results)
            assert (await client.model_metadata("iris"))["name"] == "iris"
            assert (await client.predict("iris", {"instances": [[5.1, 3.5, 1.4, 0.2]]}))[
                "predictions"
            ][0]["label"] == "iris-setosa"
            with pytest.raises(ModelNotFoundError):
                await client.infer("roses", {"float_input": X})

    asyncio.run(main())


def test_every_datatype_round_trips_through_the_client(identity_server: Server) -> None:
    inputs = {
        "in_BOOL": np.array([[True, False]]),
        "in_UINT8": np.array([[0, 255]], np.uint8),
        "in_UINT16": np.array([[0, 65535]], np.uint16),
        "in_UINT32": np.array([[0, 2**32 - 1]], np.uint32),
        "in_UINT64": np.array([[0, 2**64 - 1]], np.uint64),
        "in_INT8": np.array([[-128, 127]], np.int8),
        "in_INT16": np.array([[-(2**15), 2**15 - 1]], np.int16),
        "in_INT32": np.array([[-(2**31), 2**31 - 1]], np.int32),
        "in_INT64": np.array([[-(2**63), 2**63 - 1]], np.int64),
        "in_FP16": np.array([[0.5, -1.25]], np.float16),
        "in_FP32": np.array([[0.1, -2.5]], np.float32),
        "in_FP64": np.array([[0.1, 1e300]], np.float64),
        "in_BYTES": np.array([["olá", ""]], dtype=object),
    }
    with Client(url(identity_server)) as client:
        outputs = client.infer("identity", inputs)
    for name, array in inputs.items():
        out = outputs["out_" + name[3:]]
        assert out.dtype == array.dtype, name
        np.testing.assert_array_equal(out, array)


def test_cli_infer_one_shot(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from click.testing import CliRunner

    from ligeiro.cli import cli, main

    seed = '{"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}'
    result = CliRunner().invoke(cli, ["infer", "iris", "--url", url(server), "--data", seed])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["label"] == "iris-virginica"

    v2 = '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
    result = CliRunner().invoke(
        cli, ["infer", "iris", "--url", url(server), "--version", "1"], input=v2
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["outputs"][0]["data"] == [0]

    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "roses", "--url", url(server), "--data", seed])
    assert exit_info.value.code == 3
    assert (
        capsys.readouterr().err
        == f"error: unknown model 'roses'; the repository has {EXAMPLE_NAMES}\n"
    )

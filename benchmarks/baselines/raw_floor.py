"""The Python floor: uvloop + httptools + orjson + ONNX Runtime, and no protocol at all.

What the fastest hand-written Python server for this one model costs per request: an
:class:`asyncio.Protocol` on uvloop feeding httptools' parser, answering inside the
parser's callback, with orjson on both sides and one ``session.run``. It checks nothing
a real server must (datatypes, shapes against data, names, sizes, limits), knows one
model, keeps no metrics and logs nothing. ligeiro's V2 path is measured against it in
``bench_iris`` (issue 16's target: 0.7x this floor). It answers:

- ``POST /v2/models/iris/infer``: the V2 JSON body, reading only ``inputs[0]``'s
  ``data`` and ``shape``; the answer is a V2 JSON response with both outputs;
- ``POST /predict``: the seed article's four named features; the answer is the label and
  the three probabilities, as the FastAPI baselines give them;
- ``GET /health``: 200.

The session is set up as ligeiro sets up its own for one core (one intra-op thread, no
spinning), so the floor and ligeiro run the same model the same way.

Run::

    IRIS_ONNX=examples/models/iris/1/model.onnx \
        python -m benchmarks.baselines.raw_floor --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import httptools
import numpy as np
import onnxruntime as ort
import orjson
import uvloop

LABELS = ("iris-setosa", "iris-versicolor", "iris-virginica")
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
_HEAD = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}


class Iris:
    """One ONNX Runtime session and the two request shapes the floor answers."""

    def __init__(self, path: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def v2(self, body: bytes) -> bytes:
        tensor = orjson.loads(body)["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        results = self.session.run(self.output_names, {self.input_name: rows})
        outputs = [
            {
                "name": name,
                "datatype": "INT64" if result.dtype == np.int64 else "FP32",
                "shape": result.shape,
                "data": result.ravel(),
            }
            for name, result in zip(self.output_names, results, strict=True)
        ]
        return orjson.dumps(
            {"model_name": "iris", "model_version": "1", "outputs": outputs},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    def predict(self, body: bytes) -> bytes:
        features = orjson.loads(body)
        rows = np.array([[features[name] for name in FEATURES]], dtype=np.float32)
        labels, probabilities = self.session.run(self.output_names, {self.input_name: rows})
        return orjson.dumps(
            {
                "label": LABELS[int(labels[0])],
                "probabilities": dict(zip(LABELS, probabilities[0].tolist(), strict=True)),
            }
        )


class Connection(asyncio.Protocol):
    """One keep-alive connection: httptools parses, each complete request is answered."""

    def __init__(self, iris: Iris) -> None:
        self.iris = iris
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b'{"error":"bad request"}')
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        try:
            if self.url == b"/v2/models/iris/infer":
                self._send(200, self.iris.v2(body))
            elif self.url == b"/predict":
                self._send(200, self.iris.predict(body))
            elif self.url == b"/health":
                self._send(200, b'{"status":"ok"}')
            else:
                self._send(404, b'{"error":"not found"}')
        except (KeyError, IndexError, TypeError, ValueError, orjson.JSONDecodeError):
            self._send(400, b'{"error":"bad request"}')
        if not self.parser.should_keep_alive():
            assert self.transport is not None
            self.transport.close()

    def _send(self, status: int, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(_HEAD % (status, _REASONS[status], len(payload)) + payload)


async def serve(host: str, port: int, iris: Iris) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(iris), host, port, backlog=1024)
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    async with server:
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    options = parser.parse_args()
    iris = Iris(os.environ.get("IRIS_ONNX", "examples/models/iris/1/model.onnx"))
    uvloop.run(serve(options.host, options.port, iris))


if __name__ == "__main__":
    main()

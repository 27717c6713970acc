"""Model lifecycle under load: reloads swap versions with zero failed requests.

A client keeps requests in flight (keep-alive connections, raw HTTP/1.1) while the
repository changes, by the repository API (explicit) or on disk (poll), with one
worker and with two. Every answer must be a 200, and the answers must move to the new
version. A corrupt new version never takes over. Also: traffic splits, version labels,
the index, and the admin token.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import IRIS_REQUEST, Server, start_server

TOKEN = "s3cret-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
_BODY = json.dumps(IRIS_REQUEST).encode()
_REQUEST = (
    b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


class Load:
    """Requests kept in flight on ``connections`` keep-alive connections, in a thread.

    ``answers`` holds, in order of arrival, the version that answered each 200, or
    ``"failed: ..."`` for anything else.
    """

    def __init__(self, srv: Server, connections: int = 8) -> None:
        self.srv = srv
        self.connections = connections
        self.answers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        self.wait_for(lambda: len(self.answers) > 50, "the load to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self.connections)))

    async def _client(self) -> None:
        reader, writer = await asyncio.open_connection(self.srv.host, self.srv.port)
        try:
            while not self._stop.is_set():
                writer.write(_REQUEST)
                closing = False
                try:
                    status = int((await reader.readline()).split()[1])
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.partition(b":")
                        if name.lower() == b"content-length":
                            length = int(value)
                        elif name.lower() == b"connection" and value.strip() == b"close":
                            closing = True
                    body = await reader.readexactly(length)
                except (IndexError, ValueError, OSError, asyncio.IncompleteReadError) as exc:
                    self.answers.append(f"failed: connection: {exc!r}")
                    return
                if closing:  # http.max_requests_per_connection: a new connection goes on
                    writer.close()
                    reader, writer = await asyncio.open_connection(self.srv.host, self.srv.port)
                if status == 200:
                    self.answers.append(json.loads(body)["model_version"])
                else:
                    self.answers.append(f"failed: {status} {body[:200]!r}")
        finally:
            writer.close()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last: {self.answers[-5:]}")
            time.sleep(0.02)

    def switched_to(self, version: str, settle: int = 200) -> None:
        """Wait until the last ``settle`` answers all come from ``version``."""
        self.wait_for(
            lambda: len(self.answers) > settle and set(self.answers[-settle:]) == {version},
            f"answers from version {version}",
        )


def _version(root: Path, version: int, data: bytes) -> None:
    """Write a version folder whole: into a hidden folder, then renamed into place."""
    staging = root / "iris" / f".staging-{version}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(data)
    staging.rename(root / "iris" / str(version))


def _index(srv: Server) -> dict[str, dict[str, str]]:
    answer = srv.request("POST", "/v2/repository/index", "{}", AUTH)
    assert answer.status == 200, answer.body
    return {f"{m['name']}/{m['version']}": m for m in answer.json() if m["name"] == "iris"}


@pytest.fixture
def model_bytes(repository: Path) -> bytes:
    return (repository / "iris" / "1" / "model.onnx").read_bytes()


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("mode", ["explicit", "poll"])
def test_swaps_under_load_fail_nothing(
    repository: Path, model_bytes: bytes, mode: str, workers: str
) -> None:
    srv = start_server(
        repository, "--workers", workers, "--model-control", mode, "--admin-token", TOKEN
    )

    def load(expect: int = 200) -> None:
        if mode == "explicit":
            answer = srv.request("POST", "/v2/repository/models/iris/load", "{}", AUTH)
            assert answer.status == expect, answer.body

    try:
        with Load(srv) as traffic:
            # A new version: it takes the unversioned requests.
            _version(repository, 2, model_bytes)
            load()
            traffic.switched_to("2")
            assert srv.post("/v2/models/iris/versions/1/infer", IRIS_REQUEST).status == 200
            # Only the latest version: version 1 drains and is unloaded.
            config = repository / "iris" / "config.toml"
            config.write_text(config.read_text() + "version_policy = { latest = 1 }\n")
            load()
            traffic.wait_for(
                lambda: srv.post("/v2/models/iris/versions/1/infer", IRIS_REQUEST).status == 404,
                "version 1 to be unloaded",
            )
            # A corrupt version 3 never takes over: version 2 serves on.
            _version(repository, 3, model_bytes[: len(model_bytes) // 2])
            load(expect=400)
            traffic.wait_for(
                lambda: _index(srv).get("iris/3", {}).get("state") == "UNAVAILABLE",
                "the failed version 3 in the index",
            )
            index = _index(srv)
            assert index["iris/2"]["state"] == "READY"
            assert index["iris/3"]["reason"], index
            count = len(traffic.answers)
            traffic.wait_for(lambda: len(traffic.answers) > count + 500, "more answers")
            assert set(traffic.answers[count:]) == {"2"}
            # Fixed: version 3 takes over.
            shutil.rmtree(repository / "iris" / "3")
            _version(repository, 3, model_bytes)
            load()
            traffic.switched_to("3")
            traffic.wait_for(lambda: len(traffic.answers) >= 10_000, "10,000 answers", 120)
        answers = traffic.answers
        failed = [a for a in answers if a.startswith("failed")]
        assert not failed, (len(failed), failed[:5])
        assert len(answers) >= 10_000
        seen = Counter(answers)
        assert {"1", "2", "3"} <= set(seen), seen
        # Answers switched once each: no 2 after the last 3 settled in, no 1 after the 2s.
        assert "1" not in answers[answers.index("3") :]
        assert srv.get("/v2/health/ready").status == 200
    finally:
        assert srv.stop() == 0
    log = srv.output()
    assert "drained and unloaded 'iris' version 1" in log
    assert "Traceback" not in log


@pytest.fixture
def two_versions(repository: Path, model_bytes: bytes) -> Path:
    _version(repository, 2, model_bytes)
    config = repository / "iris" / "config.toml"
    config.write_text(
        config.read_text()
        + 'version_labels = { stable = 1, canary = 2 }\ntraffic = { stable = 90, "2" = 10 }\n'
    )
    return repository


@pytest.mark.parametrize("workers", ["1", "2"])
def test_traffic_split_and_labels(two_versions: Path, workers: str) -> None:
    srv = start_server(two_versions, "--workers", workers)
    try:
        for label, version in (("stable", "1"), ("canary", "2"), ("2", "2")):
            answer = srv.post(f"/v2/models/iris/versions/{label}/infer", IRIS_REQUEST)
            assert answer.json()["model_version"] == version
        with Load(srv, connections=4) as traffic:
            traffic.wait_for(lambda: len(traffic.answers) >= 10_000, "10,000 answers", 120)
        counts = Counter(traffic.answers[:10_000])
        assert set(counts) == {"1", "2"}, counts
        assert abs(counts["2"] / 10_000 - 0.10) <= 0.03, counts
        metrics = srv.get("/metrics").body.decode()
        assert 'version="1"' in metrics
        assert 'version="2"' in metrics
        unknown = srv.post("/v2/models/iris/versions/beta/infer", IRIS_REQUEST)
        assert unknown.status == 404
        assert unknown.json()["error"] == (
            "model 'iris' has no version 'beta'; versions: 1, 2; labels: stable, canary"
        )
    finally:
        srv.stop()


def test_traffic_changes_through_the_api(two_versions: Path) -> None:
    srv = start_server(two_versions, "--model-control", "explicit", "--admin-token", TOKEN)
    try:
        config = {
            "features": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
            "traffic": {"1": 0, "2": 100},
        }
        body = json.dumps({"parameters": {"config": json.dumps(config)}})
        answer = srv.request("POST", "/v2/repository/models/iris/load", body, AUTH)
        assert answer.status == 200, answer.body
        versions = {m["version"]: m["state"] for m in answer.json()}
        assert versions == {"1": "READY", "2": "READY"}
        answers = {srv.post("/v2/models/iris/infer", IRIS_REQUEST).json()["model_version"]
                   for _ in range(50)}  # fmt: skip
        assert answers == {"2"}
        bad = json.dumps({"parameters": {"config": json.dumps({"traffic": {"9x": 1}})}})
        answer = srv.request("POST", "/v2/repository/models/iris/load", bad, AUTH)
        assert answer.status == 400
        assert "traffic names '9x', neither a version number nor a label" in answer.json()["error"]
        # Unload: requests in flight finish; then the model is unavailable.
        answer = srv.request("POST", "/v2/repository/models/iris/unload", "", AUTH)
        assert answer.status == 200, answer.body
        gone = srv.post("/v2/models/iris/infer", IRIS_REQUEST)
        assert gone.status == 503
        assert gone.json()["error"].startswith("model 'iris' is not ready: unloaded")
        assert srv.request("POST", "/v2/repository/models/iris/load", "", AUTH).status == 200
        assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).status == 200
        missing = srv.request("POST", "/v2/repository/models/ghost/load", "", AUTH)
        assert missing.status == 404
        for name in (".staging", "%2E%2E"):  # hidden folders and the parent are not models
            outside = srv.request("POST", f"/v2/repository/models/{name}/load", "", AUTH)
            assert outside.status == 404, name
    finally:
        srv.stop()


def test_admin_token(repository: Path) -> None:
    srv = start_server(repository, "--model-control", "explicit", "--admin-token", TOKEN)
    try:
        path = "/v2/repository/models/iris/load"
        for headers, message in (
            ({}, "the repository API needs 'Authorization: Bearer <token>'"),
            ({"authorization": "Bearer wrong"}, "the bearer token is not the admin token"),
            ({"authorization": f"Basic {TOKEN}"}, "needs 'Authorization: Bearer <token>'"),
        ):
            answer = srv.request("POST", path, "", headers)
            assert answer.status == 401
            assert message in answer.json()["error"]
            assert answer.headers["www-authenticate"].startswith("Bearer")
        assert srv.request("POST", "/v2/repository/index", "", {}).status == 401
        assert srv.request("POST", path, "", AUTH).status == 200
        # The inference API needs no token.
        assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).status == 200
        assert srv.request("GET", path, None, AUTH).status == 405
    finally:
        srv.stop()


def test_repository_api_is_off_without_explicit_control(repository: Path) -> None:
    srv = start_server(repository)
    try:
        answer = srv.request("POST", "/v2/repository/models/iris/load", "", AUTH)
        assert answer.status == 403
        assert "needs --model-control explicit" in answer.json()["error"]
        index = srv.request("POST", "/v2/repository/index", '{"ready": true}', {})
        assert index.json() == [
            {
                "name": "iris",
                "version": "1",
                "state": "READY",
                "reason": "",
                "parameters": {"execution_provider": "CPUExecutionProvider"},
            }
        ]
    finally:
        srv.stop()


def test_explicit_control_needs_a_token(repository: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ligeiro", "serve", str(repository), "--model-control", "explicit"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "LIGEIRO_ADMIN_TOKEN"},
    )
    assert result.returncode == 2
    assert "model_control = 'explicit' needs an admin token" in result.stderr


def test_pipelines_follow_their_steps(repository: Path, model_bytes: bytes) -> None:
    from tests.integration.test_pipelines import BOTH_CONFIG, DOUBLED, SCALE_CONFIG, SCALE_MODEL

    for name, config, script in (("scale", SCALE_CONFIG, SCALE_MODEL), ("both", BOTH_CONFIG, None)):
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.toml").write_text(config.replace("version = 1\n", ""))
        if script is not None:
            (repository / name / "1" / "model.py").write_text(script)
    request = {
        "inputs": [
            {"name": "raw", "shape": [1, 4], "datatype": "FP32", "data": DOUBLED[0].tolist()}
        ]
    }
    srv = start_server(repository, "--model-control", "explicit", "--admin-token", TOKEN)
    try:
        assert srv.post("/v2/models/both/infer", request).status == 200
        _version(repository, 2, model_bytes)
        assert srv.request("POST", "/v2/repository/models/iris/load", "", AUTH).status == 200
        assert srv.post("/v2/models/both/infer", request).status == 200
        # Its step unloaded, the pipeline cannot serve, and says why.
        assert srv.request("POST", "/v2/repository/models/iris/unload", "", AUTH).status == 200
        answer = srv.post("/v2/models/both/infer", request)
        assert answer.status == 503
        assert "steps[1] 'iris': model 'iris' is not ready: unloaded" in answer.json()["error"]
        assert srv.request("POST", "/v2/repository/models/iris/load", "", AUTH).status == 200
        assert srv.post("/v2/models/both/infer", request).json()["outputs"][0]["data"] == [0]
    finally:
        srv.stop()
    assert "Traceback" not in srv.output()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_tritonclient_drives_the_repository_api(
    repository: Path, model_bytes: bytes, transport: str
) -> None:
    """Triton's own clients load, unload and list models, with the token as a header."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    srv = start_server(repository, "--model-control", "explicit", "--admin-token", TOKEN)
    client = (
        httpclient.InferenceServerClient(f"{srv.host}:{srv.port}")
        if transport == "http"
        else grpcclient.InferenceServerClient(srv.grpc_target)
    )
    headers = {"authorization": f"Bearer {TOKEN}"}
    try:
        _version(repository, 2, model_bytes)
        client.load_model("iris", headers=headers)
        assert client.get_model_metadata("iris", headers=headers)  # no token needed, but harmless
        assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).json()["model_version"] == "2"
        client.load_model("iris", headers=headers, config=json.dumps({"traffic": {"1": 100}}))
        assert srv.post("/v2/models/iris/infer", IRIS_REQUEST).json()["model_version"] == "1"
        index = client.get_model_repository_index(headers=headers)
        if transport == "grpc":
            index = [{"name": m.name, "version": m.version, "state": m.state} for m in index.models]
        assert {(m["version"], m["state"]) for m in index} == {("1", "READY"), ("2", "READY")}
        client.unload_model("iris", headers=headers)
        assert not client.is_model_ready("iris")
        with pytest.raises(InferenceServerException, match="bearer token is not the admin token"):
            client.load_model("iris", headers={"authorization": "Bearer nope"})
        with pytest.raises(InferenceServerException, match="needs 'Authorization: Bearer"):
            client.load_model("iris")
        with pytest.raises(InferenceServerException, match="no model folder 'ghost'"):
            client.load_model("ghost", headers=headers)
    finally:
        client.close()
        srv.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_poll_sees_a_change_made_as_soon_as_the_server_serves(
    repository: Path, model_bytes: bytes, workers: str
) -> None:
    """The watcher is armed before the server says it serves (it once started in a
    thread after that line, so a version written at once was never loaded)."""
    srv = start_server(repository, "--workers", workers, "--model-control", "poll")
    try:
        _version(repository, 2, model_bytes)
        deadline = time.monotonic() + 10
        version = ""
        while version != "2" and time.monotonic() < deadline:
            version = srv.post("/v2/models/iris/infer", IRIS_REQUEST).json()["model_version"]
            time.sleep(0.05)
        assert version == "2", srv.output()
    finally:
        assert srv.stop() == 0
    assert "Traceback" not in srv.output()

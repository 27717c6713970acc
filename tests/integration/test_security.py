"""Safe on a network (issue 17): inference tokens, TLS on both transports, the HTTP
limits, the rate limit, and what clients may not see (server paths), on real sockets.

Certificates are made per session with the ``openssl`` command line (``cryptography``
is not a dependency): a CA, a server certificate for 127.0.0.1, and a client one.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import IRIS_REQUEST, ROOT, Server, start_server

TOKEN = "t0k3n-inference"
ADMIN = "t0k3n-admin"
INFER = json.dumps(IRIS_REQUEST)


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "2", "-subj", "/CN=ligeiro test CA", cwd=folder)  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *ext,
                 cwd=folder)  # fmt: skip
    # The same key certified again (a new serial): the renewal SIGHUP picks up.
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAserial", "ca.srl", "-out", "renewed.pem", "-days", "2", "-extfile",
             "server.ext", cwd=folder)  # fmt: skip
    return Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key",
                 folder / "client.pem", folder / "client.key")  # fmt: skip


@pytest.fixture(scope="module")
def iris_only(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Path:
    root = tmp_path_factory.mktemp("security-repo")
    (root / "iris").symlink_to(examples / "iris")
    return root


@pytest.fixture(scope="module")
def secure(iris_only: Path, certs: Certs) -> Iterator[Server]:
    """TLS on both ports, an inference token and an admin token."""
    srv = start_server(
        iris_only, "--threads", "1", "--inference-token", TOKEN, "--tls-cert", str(certs.cert),
        "--tls-key", str(certs.key), "--admin-token", ADMIN,
    )  # fmt: skip
    yield srv
    srv.stop()


def _curl(srv: Server, path: str, *args: str, certs: Certs) -> tuple[int, str]:
    """``curl`` over https with the test CA: (status, body); status 0 when it failed."""
    out = subprocess.run(
        ["curl", "-s", "--cacert", str(certs.ca), "-o", "-", "-w", "\n%{http_code}",
         "--max-time", "10", *args, f"https://127.0.0.1:{srv.port}{path}"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def _bearer(token: str) -> list[str]:
    return ["-H", f"Authorization: Bearer {token}"]


def test_https_with_the_token_answers_and_without_is_401(secure: Server, certs: Certs) -> None:
    post = ["-H", "content-type: application/json", "-d", INFER]
    status, body = _curl(secure, "/v2/models/iris/infer", *post, *_bearer(TOKEN), certs=certs)
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == [0]
    assert _curl(secure, "/v2/models/iris/infer", *post, certs=certs)[0] == 401
    assert _curl(secure, "/v2/models/iris/infer", *post, *_bearer("nope"), certs=certs)[0] == 401
    # Health stays open for probes; metadata, stats, metrics and unknown paths do not.
    assert _curl(secure, "/v2/health/live", certs=certs) == (200, '{"live":true}')
    assert _curl(secure, "/v2/health/ready", certs=certs)[0] == 200
    for path in ("/v2/models/iris", "/v2", "/v2/models/stats", "/metrics", "/no/such/route"):
        assert _curl(secure, path, certs=certs)[0] == 401, path
    assert _curl(secure, "/v2/models/iris", *_bearer(TOKEN), certs=certs)[0] == 200
    # The admin token passes a protected route too; the index takes either token.
    assert _curl(secure, "/v2/models/stats", *_bearer(ADMIN), certs=certs)[0] == 200
    index = ["-X", "POST", "-d", "{}"]
    assert _curl(secure, "/v2/repository/index", *index, certs=certs)[0] == 401
    assert _curl(secure, "/v2/repository/index", *index, *_bearer(TOKEN), certs=certs)[0] == 200


def test_401_names_the_scheme_and_tls_is_modern(secure: Server, certs: Certs) -> None:
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection("127.0.0.1", secure.port, context=context, timeout=10)
    conn.request("GET", "/v2/health/live")
    assert conn.getresponse().read() == b'{"live":true}'
    assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert conn.sock.selected_alpn_protocol() == "http/1.1"
    assert conn.sock.compression() is None
    conn.request("GET", "/v2/models/iris")
    answer = conn.getresponse()
    assert answer.status == 401
    assert answer.getheader("www-authenticate") == 'Bearer realm="ligeiro"'
    assert answer.getheader("connection") == "close"  # its body, if any, is never kept
    assert "Bearer" in json.loads(answer.read())["error"]
    conn.close()
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(certs.ca))
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", secure.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="127.0.0.1")


def test_plain_http_to_the_tls_port_gets_no_answer(secure: Server) -> None:
    with socket.create_connection(("127.0.0.1", secure.port), timeout=10) as raw:
        raw.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        assert not raw.recv(4096).startswith(b"HTTP/1.1 200")


def test_tritonclient_http_over_tls_with_headers(secure: Server, certs: Certs) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(
        f"127.0.0.1:{secure.port}", ssl=True, ssl_options={"ca_certs": str(certs.ca)}
    )
    try:
        assert client.is_server_live()
        with pytest.raises(InferenceServerException, match="Bearer"):
            client.get_model_metadata("iris")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get_model_metadata("iris", headers=headers)["name"] == "iris"
        x = httpclient.InferInput("float_input", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
        answer = client.infer("iris", [x], headers=headers)
        assert answer.as_numpy("output_label").tolist() == [0]
    finally:
        client.close()


def _grpc_checks(target: str, certs: Certs) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(
        target, ssl=True, root_certificates=str(certs.ca)
    )
    try:
        assert client.is_server_live()  # health: no token
        assert client.is_server_ready()
        with pytest.raises(InferenceServerException, match="Bearer") as info:
            client.get_model_metadata("iris")
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match="not one this server accepts"):
            client.get_model_metadata("iris", headers={"authorization": "Bearer wrong"})
        headers = {"authorization": f"Bearer {TOKEN}"}
        assert client.get_model_metadata("iris", headers=headers).name == "iris"
        x = grpcclient.InferInput("float_input", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED|Bearer"):
            client.infer("iris", [x])
        assert client.infer("iris", [x], headers=headers).as_numpy("output_label").tolist() == [0]
    finally:
        client.close()


def test_tritonclient_grpc_over_tls_with_the_token(secure: Server, certs: Certs) -> None:
    _grpc_checks(secure.grpc_target, certs)


def test_grpcio_transport_checks_tokens_and_serves_tls(iris_only: Path, certs: Certs) -> None:
    srv = start_server(
        iris_only, "--threads", "1", "--grpc-transport", "grpcio", "--inference-token", TOKEN,
        "--tls-cert", str(certs.cert), "--tls-key", str(certs.key),
    )  # fmt: skip
    try:
        _grpc_checks(srv.grpc_target, certs)
    finally:
        srv.stop()


def test_mutual_tls_needs_a_client_certificate(iris_only: Path, certs: Certs) -> None:
    srv = start_server(
        iris_only, "--threads", "1", "--tls-cert", str(certs.cert), "--tls-key",
        str(certs.key), "--tls-client-ca", str(certs.ca),
    )  # fmt: skip
    try:
        mine = ["--cert", str(certs.client_cert), "--key", str(certs.client_key)]
        assert _curl(srv, "/v2/models/iris", *mine, certs=certs)[0] == 200
        assert _curl(srv, "/v2/models/iris", certs=certs)[0] == 0  # the handshake fails
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(
            srv.grpc_target, ssl=True, root_certificates=str(certs.ca),
            private_key=str(certs.client_key), certificate_chain=str(certs.client_cert),
        )  # fmt: skip
        assert client.get_model_metadata("iris").name == "iris"
        client.close()
    finally:
        srv.stop()


def _serial(port: int, certs: Certs) -> str:
    """The serial number of the certificate a new TLS connection to ``port`` gets."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return str(tls.getpeercert()["serialNumber"])


@pytest.mark.parametrize("transport", ["h2", "grpcio"])
def test_sighup_reads_the_certificate_again(
    iris_only: Path, certs: Certs, tmp_path: Path, transport: str
) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_bytes(certs.cert.read_bytes())
    srv = start_server(
        iris_only, "--threads", "1", "--tls-cert", str(cert), "--tls-key", str(certs.key),
        "--grpc-transport", transport,
    )  # fmt: skip
    try:
        ports = (srv.port, srv.grpc_port)
        before = [_serial(port, certs) for port in ports]
        cert.write_bytes((certs.cert.parent / "renewed.pem").read_bytes())
        srv.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _serial(srv.port, certs) == before[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        after = [_serial(port, certs) for port in ports]
        assert after[0] != before[0] and after[1] != before[1]
        cert.write_text("not a certificate")  # a broken renewal keeps the one in use
        srv.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert [_serial(port, certs) for port in ports] == after
        assert "the previous certificate stays in use" in srv.output()
    finally:
        srv.stop()


def _raw(srv: Server, *chunks: bytes, pause_s: float = 0.0, timeout: float = 10) -> bytes:
    """Send ``chunks`` on a new connection (``pause_s`` apart); everything read back
    until the server closes it (or ``timeout``)."""
    with socket.create_connection((srv.host, srv.port), timeout=timeout) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed while we were still sending
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        except (ConnectionResetError, TimeoutError):
            pass
        return received


def _head(path: bytes = b"/v2/health/live", extra: bytes = b"", *, close: bool = True) -> bytes:
    extra += b"connection: close\r\n" if close else b""
    return b"GET " + path + b" HTTP/1.1\r\nhost: x\r\n" + extra + b"\r\n"


def _status(srv: Server, path: str, token: str | None) -> int:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_sighup_rereads_the_token_file_in_every_worker(iris_only: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# rotated monthly\nfirst\n")
    srv = start_server(
        iris_only, "--threads", "1", "--workers", "2", "--inference-token-file", str(tokens)
    )
    try:
        assert _status(srv, "/v2/models/iris", "first") == 200
        assert _status(srv, "/v2/models/iris", "second") == 401
        tokens.write_text("second\n")
        srv.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        # Each new connection may reach either worker: all must have read the file.
        while time.monotonic() < deadline:
            seen = {(_status(srv, "/v2/models/iris", t)) for t in ("first", "second")}
            answers = [_status(srv, "/v2/models/iris", "second") for _ in range(8)]
            if seen == {200, 401} and set(answers) == {200}:
                break
            time.sleep(0.2)
        assert all(_status(srv, "/v2/models/iris", "second") == 200 for _ in range(8))
        assert all(_status(srv, "/v2/models/iris", "first") == 401 for _ in range(8))
        assert srv.process.poll() is None  # SIGHUP stops nothing
    finally:
        srv.stop()


def test_metrics_public_leaves_only_metrics_open(iris_only: Path) -> None:
    srv = start_server(
        iris_only, "--threads", "1", "--inference-token", TOKEN, "--metrics-public"
    )
    try:
        assert _status(srv, "/metrics", None) == 200
        assert _status(srv, "/v2/models/iris", None) == 401
        # Refused before its body is read, answered in its turn among pipelined ones.
        good = _head(b"/v2/models/iris", b"authorization: Bearer " + TOKEN.encode() + b"\r\n",
                     close=False)  # fmt: skip
        bad = b"POST /v2/models/iris/infer HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello"
        answers = _raw(srv, good + bad + good)
        assert answers.startswith(b"HTTP/1.1 200 ")
        assert answers.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 401 " in answers
    finally:
        srv.stop()


def test_with_tokens_the_pages_load_and_what_shows_the_models_needs_one(
    iris_only: Path,
) -> None:
    # A browser cannot send a bearer token when it navigates: the dashboard, /docs and
    # their assets load without one; the data they fetch (the user's token) needs it.
    srv = start_server(iris_only, "--threads", "1", "--inference-token", TOKEN)
    try:
        for page in ("/", "/docs", "/ui/dashboard.js"):
            assert _status(srv, page, None) == 200, page
        for data in ("/ui/status", "/openapi.json", "/v2/models/iris", "/v2"):
            assert _status(srv, data, None) == 401, data
            assert _status(srv, data, TOKEN) == 200, data
    finally:
        srv.stop()


def test_rate_limit_answers_429_with_retry_after(iris_only: Path) -> None:
    srv = start_server(iris_only, "--threads", "1", "--rate-limit", "1")
    try:
        first = srv.post("/v2/models/iris/infer", INFER)
        second = srv.post("/v2/models/iris/infer", INFER)
        assert first.status == 200
        assert second.status == 429
        assert second.headers["retry-after"] == "1"
        assert "rate limit of 1 requests a second" in second.json()["error"]
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(srv.grpc_target)
        statuses = []
        for _ in range(3):
            try:
                client.get_model_metadata("iris")
                statuses.append("OK")
            except InferenceServerException as exc:
                statuses.append(exc.status())
        client.close()
        assert "StatusCode.RESOURCE_EXHAUSTED" in statuses
    finally:
        srv.stop()


def test_start_warns_when_exposed_without_a_token(iris_only: Path) -> None:
    # Tests bind loopback only: --print-config says what the start would log.
    def config(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ligeiro", "serve", str(iris_only), "--print-config", *args],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip

    exposed = config("--host", "0.0.0.0")
    assert "warning: listening on 0.0.0.0 with no inference token" in exposed.stderr
    assert "--inference-token" in exposed.stderr
    clear = config("--host", "0.0.0.0", "--inference-token", "s3cret-value")
    assert "without TLS" in clear.stderr
    assert "s3cret-value" not in clear.stdout + clear.stderr
    assert json.loads(clear.stdout)["inference_tokens"] == ["<set>"]
    assert config().stderr == ""  # loopback: nothing to warn about


# -- what clients may not see, and strict input (defects 10 and 11) ---------------------


@pytest.fixture(scope="module")
def broken(
    tmp_path_factory: pytest.TempPathFactory, examples: Path
) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("broken-repo").resolve()
    (root / "iris").symlink_to(examples / "iris")
    (root / "bad" / "1").mkdir(parents=True)
    (root / "bad" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    srv = start_server(
        root, "--threads", "1", "--model-control", "explicit", "--admin-token", ADMIN
    )
    yield srv, root
    srv.stop()


def test_no_server_path_reaches_a_client(broken: tuple[Server, Path]) -> None:
    srv, root = broken
    answer = srv.get("/v2/models/bad")
    assert answer.status == 503
    error = answer.json()["error"]
    assert "bad/1/model.onnx: not a loadable ONNX model" in error
    assert str(root) not in error and str(root.parent) not in error
    index = srv.request(
        "POST", "/v2/repository/index", b"{}", {"authorization": f"Bearer {ADMIN}"}
    )
    reasons = [m.get("reason", "") for m in index.json() if m["name"] == "bad"]
    assert reasons and "model.onnx" in reasons[0]
    assert str(root) not in index.body.decode()
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(srv.grpc_target)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("bad")
        assert "model.onnx" in info.value.message()
        assert str(root) not in info.value.message()
        grpc_index = client.get_model_repository_index(
            headers={"authorization": f"Bearer {ADMIN}"}
        )
        assert all(str(root) not in m.reason for m in grpc_index.models)
    finally:
        client.close()
    assert str(root) in srv.output()  # the log keeps the whole path


def test_loading_an_empty_model_name_is_400(broken: tuple[Server, Path]) -> None:
    srv, _ = broken
    answer = srv.request(
        "POST", "/v2/repository/models//load", b"", {"authorization": f"Bearer {ADMIN}"}
    )
    assert answer.status == 400
    assert answer.json()["error"] == "the repository API needs a model name; got an empty one"
    unload = srv.request(
        "POST", "/v2/repository/models//unload", b"", {"authorization": f"Bearer {ADMIN}"}
    )
    assert unload.status == 400


@pytest.mark.parametrize(
    ("data", "got"),
    [("[5.1, \"2.5\", 1.4, 0.2]", "str '2.5'"), ("[5.1, true, 1.4, 0.2]", "bool True"),
     ("[5.1, 3.5, null, 0.2]", "null"), ("[[5.1, 3.5], [1.4, null]]", "null")],
)  # fmt: skip
def test_fp32_json_data_is_strict(broken: tuple[Server, Path], data: str, got: str) -> None:
    srv, _ = broken
    shape = "[2, 2]" if data.startswith("[[") else "[1, 4]"
    body = (
        '{"inputs":[{"name":"float_input","shape":' + shape
        + ',"datatype":"FP32","data":' + data + "}]}"
    )  # fmt: skip
    answer = srv.post("/v2/models/iris/infer", body)
    assert answer.status == 400
    assert answer.json()["error"] == f"input 'float_input': FP32 data must be numbers, got {got}"


def test_only_the_admin_token_loads_models(iris_only: Path) -> None:
    srv = start_server(
        iris_only, "--threads", "1", "--model-control", "explicit", "--admin-token", ADMIN,
        "--inference-token", TOKEN,
    )  # fmt: skip
    try:
        def post(path: str, token: str) -> int:
            answer = srv.request("POST", path, b"{}", {"authorization": f"Bearer {token}"})
            return answer.status

        assert post("/v2/repository/models/iris/load", TOKEN) == 401
        assert post("/v2/repository/models/iris/load", ADMIN) == 200
        assert post("/v2/repository/index", TOKEN) == 200
        assert post("/v2/repository/index", "wrong") == 401
    finally:
        srv.stop()

"""ligeiro.server.access: tokens, the rate limiter, path redaction, the start warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from ligeiro.errors import AuthenticationError, ConfigError, RateLimitedError
from ligeiro.server.access import Access, PathRedactor, RateLimiter, Route, exposure_warning
from ligeiro.server.grpc import METHOD_ACCESS
from ligeiro.server.http import route_access
from ligeiro.settings import load_settings


def test_tokens_pass_protected_routes_and_health_stays_open() -> None:
    access = Access(["a", "bb"], admin_token="admin")
    for token in (b"Bearer a", b"bearer bb", b"Bearer admin"):
        access.check(Route.PROTECTED, token)
    access.check(Route.OPEN, None)
    access.check(Route.ADMIN, None)  # Control checks the admin token itself
    with pytest.raises(AuthenticationError, match="needs 'Authorization: Bearer <token>'"):
        access.check(Route.PROTECTED, None)
    with pytest.raises(AuthenticationError, match="needs"):
        access.check(Route.PROTECTED, b"Basic YTpi")
    for wrong in (b"Bearer b", b"Bearer a ", b"Bearer abb", b"Bearer " + b"a" * 1000):
        if wrong.strip() != b"Bearer a":
            with pytest.raises(AuthenticationError, match="not one this server accepts"):
                access.check(Route.PROTECTED, wrong)
    with pytest.raises(AuthenticationError):
        access.check(Route.METRICS, None)
    Access(["a"], metrics_public=True).check(Route.METRICS, None)


def test_without_tokens_everything_is_open() -> None:
    access = Access(admin_token="admin")
    assert not access.is_enabled
    access.check(Route.PROTECTED, None)
    access.check(Route.METRICS, None)


def test_token_file_is_read_again_and_a_bad_read_keeps_the_old(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# comment\n\none\n  two  \n")
    access = Access(token_file=str(path))
    access.check(Route.PROTECTED, b"Bearer two")
    path.write_text("three\n")
    assert access.reload() == 1
    access.check(Route.PROTECTED, b"Bearer three")
    with pytest.raises(AuthenticationError):
        access.check(Route.PROTECTED, b"Bearer one")
    path.unlink()
    assert access.reload() == 1  # logged; three still passes
    access.check(Route.PROTECTED, b"Bearer three")
    path.write_text("")
    assert access.reload() == 0
    with pytest.raises(AuthenticationError):  # an empty file lets no one in
        access.check(Route.PROTECTED, b"Bearer three")
    with pytest.raises(ConfigError, match="cannot read"):
        Access(token_file=str(tmp_path / "missing"))


def test_route_tables_default_to_protected() -> None:
    assert route_access(b"/v2/health/live") is Route.OPEN
    assert route_access(b"/v2/health/ready/") is Route.OPEN
    assert route_access(b"/metrics") is Route.METRICS
    assert route_access(b"/v2/repository/models/iris/load") is Route.ADMIN
    for path in (b"/v2/models/iris/infer", b"/v2", b"/", b"/docs", b"/openapi.json",
                 b"/v2/repository/index", b"/v1/embeddings", b"/v2/health/livex", b"/new"):
        assert route_access(path) is Route.PROTECTED, path  # fmt: skip
    assert METHOD_ACCESS["ServerLive"] is Route.OPEN
    assert "ModelInfer" not in METHOD_ACCESS and "ModelReady" not in METHOD_ACCESS


def test_rate_limiter_refills_and_bounds_its_table() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 2, clock=lambda: now[0], max_clients=3)
    limiter.admit("a")
    limiter.admit("a")
    with pytest.raises(RateLimitedError) as info:
        limiter.admit("a")
    assert info.value.retry_after_s == pytest.approx(0.5)
    now[0] = 0.5
    limiter.admit("a")
    for client in ("b", "c", "d", "e"):
        limiter.admit(client)
    assert len(limiter) == 3


def test_redactor_keeps_model_paths_and_drops_the_server_s() -> None:
    redact = PathRedactor(Path("/srv/models"))
    text = redact(
        "model 'bad' is not ready: /srv/models/bad/1/model.onnx: Load model from "
        "/srv/models/bad/1/model.onnx failed; see /usr/lib/libonnxruntime.so and http://a/b/c"
    )
    assert text == (
        "model 'bad' is not ready: bad/1/model.onnx: Load model from bad/1/model.onnx "
        "failed; see libonnxruntime.so and http://a/b/c"
    )


@pytest.mark.parametrize(
    ("cli", "expected"),
    [
        ({}, None),
        ({"http": {"host": "::1"}, "grpc": {"host": "localhost"}}, None),
        ({"http": {"host": "0.0.0.0"}}, "with no inference token"),
        ({"grpc": {"host": "10.0.0.5"}}, "listening on 10.0.0.5 with no inference token"),
        ({"http": {"host": "0.0.0.0"}, "inference_tokens": ["x"]}, "without TLS"),
    ],
)
def test_exposure_warning(cli: dict[str, object], expected: str | None) -> None:
    warning = exposure_warning(load_settings(cli, env={}))
    if expected is None:
        assert warning is None
    else:
        assert warning is not None and expected in warning


def test_settings_read_tokens_from_the_environment_and_check_tls() -> None:
    settings = load_settings({}, env={"LIGEIRO_INFERENCE_TOKENS": "a,b"})
    assert settings.inference_tokens == ["a", "b"]
    with pytest.raises(ConfigError, match="both a certificate and its key"):
        load_settings({"tls": {"cert": "c.pem"}}, env={})
    with pytest.raises(ConfigError, match="needs a server certificate"):
        load_settings({"tls": {"client_ca": "ca.pem"}}, env={})
    limits = load_settings({}, env={}).http
    assert (limits.max_url_bytes, limits.max_header_bytes, limits.max_headers) == (8192, 32768, 100)
    assert (limits.header_timeout_s, limits.request_timeout_s) == (10.0, 120.0)
    assert (limits.max_connections, limits.max_pipelined) == (1000, 64)
    assert limits.max_requests_per_connection == 10_000
    assert limits.max_json_bytes == 8 * 1024 * 1024

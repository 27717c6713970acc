from __future__ import annotations

from pathlib import Path

import pytest

from ligeiro.errors import ConfigError
from ligeiro.scheduling.policy import BatchingPolicy
from ligeiro.settings import cores, cpu_quota, load_settings


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert (settings.http.host, settings.http.port, settings.workers) == ("127.0.0.1", 8000, 0)


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "ligeiro.toml"
    config.write_text('workers = 3\n[http]\nport = 7000\nhost = "0.0.0.0"\n')
    env = {"LIGEIRO_HTTP__PORT": "7100", "LIGEIRO_RUNTIME__THREADS": "2"}
    settings = load_settings({"http": {"port": 7200, "host": None}}, config_file=config, env=env)
    assert settings.http.port == 7200  # CLI
    assert settings.runtime.threads == 2  # env
    assert settings.http.host == "0.0.0.0"  # file
    assert settings.workers == 3  # file


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LIGEIRO_HTTP__PROT": "1"},
            r"environment \(LIGEIRO_\* variables\): Object contains unknown field `prot` - at `\$.http`",
        ),
        ({"LIGEIRO_HTTP__PORT": "eighty"}, r"Expected `int`, got `str` - at `\$.http.port`"),
        ({"LIGEIRO_WORKERS": "-1"}, r"Expected `int` >= 0 - at `\$.workers`"),
    ],
)
def test_bad_env(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_bad_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "ligeiro.toml"
    config.write_text("[http]\nbacklog = 5\n")
    with pytest.raises(
        ConfigError, match=rf"{config}: Object contains unknown field `backlog` - at `\$.http`"
    ):
        load_settings(config_file=config, env={})


def test_threads_default_shares_the_cores() -> None:
    settings = load_settings({"workers": 1}, env={})
    assert settings.runtime_threads() == cores()
    assert load_settings({"runtime": {"threads": 3}}, env={}).runtime_threads() == 3


def test_workers_default_to_one_per_core_and_threads_to_one_each() -> None:
    settings = load_settings(env={})
    assert settings.worker_count() == cores()
    assert settings.runtime_threads() == 1


def test_batching_per_model_from_file_env_and_cli(tmp_path: Path) -> None:
    config = tmp_path / "ligeiro.toml"
    config.write_text("[batching.mlp]\nmax_batch_size = 32\nmax_queue_delay_us = 100\n")
    env = {
        "LIGEIRO_BATCHING__MLP__MAX_BATCH_SIZE": "16",
        "LIGEIRO_BATCHING__MLP__MAX_QUEUE_SIZE": "50",
    }
    settings = load_settings(
        {"batching": {"iris": {"max_batch_size": 0}}}, config_file=config, env=env
    )
    assert settings.batching["mlp"] == BatchingPolicy(
        max_batch_size=16, max_queue_delay_us=100, max_queue_size=50
    )
    assert settings.batching["iris"].max_batch_size == 0


def test_bad_batching_names_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "ligeiro.toml"
    config.write_text("[batching.mlp]\nmax_batch_size = 4\npreferred_batch_sizes = [8]\n")
    with pytest.raises(ConfigError, match=r"preferred_batch_sizes \[8\] exceed max_batch_size 4"):
        load_settings(config_file=config, env={})


def test_providers_default_to_the_cpu_and_are_checked() -> None:
    assert load_settings(env={}).runtime.providers == ["cpu"]
    settings = load_settings({"runtime": {"providers": ["tensorrt", "cuda", "cpu"]}}, env={})
    assert settings.runtime.providers == ["tensorrt", "cuda", "cpu"]
    assert settings.worker_count() == 1  # one process owns the GPU
    with pytest.raises(ConfigError, match=r"command line: providers\[0\] 'gpu' is not"):
        load_settings({"runtime": {"providers": ["gpu"]}}, env={})


def test_grpc_http2_limits_have_defaults_and_bounds() -> None:
    grpc = load_settings({}, env={}).grpc
    assert (grpc.max_concurrent_streams, grpc.max_header_list_bytes) == (128, 16 * 1024)
    assert (grpc.max_resets_per_s, grpc.max_control_frames_per_s) == (200, 1000)
    assert (grpc.handshake_timeout_s, grpc.idle_timeout_s, grpc.request_timeout_s) == (10, 300, 60)
    assert (grpc.max_connections, grpc.max_buffered_bytes) == (1000, 256 * 1024 * 1024)
    env = {"LIGEIRO_GRPC__MAX_CONCURRENT_STREAMS": "64"}
    assert load_settings({}, env=env).grpc.max_concurrent_streams == 64
    with pytest.raises(ConfigError, match="max_concurrent_streams"):
        load_settings({}, env={"LIGEIRO_GRPC__MAX_CONCURRENT_STREAMS": str(2**32)})
    with pytest.raises(ConfigError, match="max_header_list_bytes"):
        load_settings({}, env={"LIGEIRO_GRPC__MAX_HEADER_LIST_BYTES": "10"})


def test_request_limits_have_defaults_and_come_from_file_and_env(tmp_path: Path) -> None:
    settings = load_settings({}, env={})
    assert (settings.max_request_rows, settings.max_bytes_element_bytes) == (
        1_000_000,
        16 * 1024 * 1024,
    )
    config = tmp_path / "ligeiro.toml"
    config.write_text("max_request_rows = 10\nmax_bytes_element_bytes = 100\n")
    env = {"LIGEIRO_MAX_BYTES_ELEMENT_BYTES": "200"}
    settings = load_settings({}, config_file=config, env=env)
    assert (settings.max_request_rows, settings.max_bytes_element_bytes) == (10, 200)
    with pytest.raises(ConfigError, match="max_request_rows"):
        load_settings({}, env={"LIGEIRO_MAX_REQUEST_ROWS": "0"})


def _cgroup(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "self").write_text(membership)
    return root, tmp_path / "self"


@pytest.mark.parametrize(
    ("membership", "files", "quota"),
    [
        ("0::/\n", {"cpu.max": "50000 100000\n"}, 0.5),  # v2, a container's --cpus 0.5
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        ("0::/app\n", {"app/cpu.max": "150000 100000\n", "cpu.max": "max 100000\n"}, 1.5),
        (
            "4:memory:/x\n2:cpu,cpuacct:/\n",
            {
                "cpu,cpuacct/cpu.cfs_quota_us": "200000\n",
                "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            },
            2.0,
        ),
        ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ("0::/\n", {}, None),  # nothing readable: no quota
        ("garbage\n", {"cpu.max": "50000 100000\n"}, None),
    ],
)
def test_cpu_quota_reads_the_cgroup(
    tmp_path: Path, membership: str, files: dict[str, str], quota: float | None
) -> None:
    root, self_file = _cgroup(tmp_path, membership, files)
    assert cpu_quota(root, self_file) == quota


def test_cores_are_held_to_the_cpu_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    import ligeiro.settings as settings

    monkeypatch.setattr(settings.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(settings, "cpu_quota", lambda: 0.5)
    assert cores() == 1
    monkeypatch.setattr(settings, "cpu_quota", lambda: 2.5)
    assert cores() == 3
    monkeypatch.setattr(settings, "cpu_quota", lambda: None)
    assert cores() == 4

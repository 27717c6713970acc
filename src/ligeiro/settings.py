"""Server settings: small frozen sections, one precedence rule.

Precedence is CLI > ``LIGEIRO_*`` environment > ``ligeiro.toml`` > defaults. An
environment variable maps to a key by one rule: ``LIGEIRO_HTTP__PORT`` is
``http.port`` (``__`` separates sections). Unknown keys are errors, each naming where
it came from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .errors import ConfigError
from .runtime.providers import DEFAULT_PROVIDERS, check_providers, uses_gpu
from .scheduling.policy import BatchingPolicy

__all__ = [
    "GrpcSettings",
    "HttpSettings",
    "RuntimeSettings",
    "ServerSettings",
    "TlsSettings",
    "load_settings",
]

CONFIG_FILE = "ligeiro.toml"
ENV_PREFIX = "LIGEIRO_"


class HttpSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[http]``: where to listen and how much to accept."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    max_request_bytes: Annotated[int, msgspec.Meta(gt=0)] = 64 * 1024 * 1024
    # An idle keep-alive connection is closed after this long without a request.
    keep_alive_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # A request that stops arriving half-way is answered 408 after this long of silence.
    receive_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Slowloris: a request's line and headers must all arrive within header_timeout_s of
    # its first byte (and a new connection's first request within it of the accept), the
    # whole request within request_timeout_s; total times, not silences. 408 past them.
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    request_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    # The request line's target (414 past it), the whole head (431, cut as it arrives,
    # before the parser buffers more) and the number of header fields (431).
    max_url_bytes: Annotated[int, msgspec.Meta(gt=0)] = 8 * 1024
    max_header_bytes: Annotated[int, msgspec.Meta(gt=0)] = 32 * 1024
    max_headers: Annotated[int, msgspec.Meta(gt=0)] = 100
    # A JSON body (no binary tensor data) decodes to about 20x its size in Python objects
    # and arrays: it has a lower limit than max_request_bytes (413 past it).
    max_json_bytes: Annotated[int, msgspec.Meta(gt=0)] = 8 * 1024 * 1024
    # Open connections per worker: one more gets 503 and is closed.
    max_connections: Annotated[int, msgspec.Meta(gt=0)] = 1000
    # Requests a client may pipeline ahead of its answers before we stop reading from it.
    max_pipelined: Annotated[int, msgspec.Meta(gt=0)] = 64
    # Requests on one keep-alive connection; the last one's answer closes it.
    max_requests_per_connection: Annotated[int, msgspec.Meta(gt=0)] = 10_000


class GrpcSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[grpc]``: the V2 gRPC service's address, message limit and HTTP/2 limits.

    The HTTP/2 limits hold on the h2 transport; grpcio's applies the stream and header
    limits itself (``grpc.max_concurrent_streams``, ``grpc.max_metadata_size``).
    """

    # Off, a worker never imports grpcio: 14 MB less RSS, about 0.07 s less start-up.
    enabled: bool = True
    # None: the same host as ``[http]``.
    host: str | None = None
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8001
    # Larger messages, in either direction, get RESOURCE_EXHAUSTED from grpc itself.
    max_message_bytes: Annotated[int, msgspec.Meta(gt=0)] = 64 * 1024 * 1024
    # Calls (streams included) a worker runs at once; more get RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: Annotated[int, msgspec.Meta(gt=0)] = 1024
    # What carries gRPC: our HTTP/2 framing on the event loop ("h2", 2-3x grpc.aio's
    # throughput), or grpcio's grpc.aio server ("grpcio"). See docs/adr/0007.
    transport: Literal["h2", "grpcio"] = "h2"
    # HTTP/2 limits, per connection unless said otherwise (docs/security.md). Streams
    # open at once: advertised; one more is refused (REFUSED_STREAM), so one connection
    # cannot take every call a worker runs.
    max_concurrent_streams: Annotated[int, msgspec.Meta(gt=0, le=2**31 - 1)] = 128
    # A request's header block, compressed and decoded: advertised; larger ones close the
    # connection (GOAWAY ENHANCE_YOUR_CALM) as they arrive, before they are decoded.
    max_header_list_bytes: Annotated[int, msgspec.Meta(ge=1024, le=2**31 - 1)] = 16 * 1024
    # RST_STREAMs from the client, and streams it opens past the limit, in a second
    # (rapid reset, CVE-2023-44487); over it: GOAWAY ENHANCE_YOUR_CALM.
    max_resets_per_s: Annotated[int, msgspec.Meta(gt=0)] = 200
    # SETTINGS, PING, PRIORITY, empty DATA and CONTINUATION frames and unknown frame
    # types in a second; over it: GOAWAY ENHANCE_YOUR_CALM.
    max_control_frames_per_s: Annotated[int, msgspec.Meta(gt=0)] = 1000
    # Connections a worker keeps open; more are closed at once (GOAWAY).
    max_connections: Annotated[int, msgspec.Meta(gt=0)] = 1000
    # A connection must send its preface and SETTINGS within this, and is closed after
    # this long without a frame and without an open stream.
    handshake_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    idle_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    # A unary call whose request message has not all arrived after this long ends
    # DEADLINE_EXCEEDED, grpc-timeout or not (ModelStreamInfer is exempt).
    request_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # Bytes of request messages still arriving, summed over a worker's calls; the call
    # that would pass it ends RESOURCE_EXHAUSTED.
    max_buffered_bytes: Annotated[int, msgspec.Meta(gt=0)] = 256 * 1024 * 1024


class TlsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[tls]``: HTTPS and gRPC over TLS on the same ports (``ligeiro.server.tls``); with
    ``client_ca``, clients must show a certificate it signed (mTLS). Read again on SIGHUP."""

    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None

    @property
    def is_enabled(self) -> bool:
        return self.cert is not None


class RuntimeSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[runtime]``: ONNX Runtime threads per worker (0: cores / workers), and the
    execution providers of the models whose config.toml names none (``--providers``;
    see ``ligeiro.runtime.providers``)."""

    threads: Annotated[int, msgspec.Meta(ge=0)] = 0
    providers: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_PROVIDERS))

    def __post_init__(self) -> None:
        check_providers(self.providers)


def cores() -> int:
    """The cores this process may use: its affinity (``taskset`` narrows it), and no
    more than its cgroup's CPU quota rounded up (a container's ``--cpus 0.5``: 1)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
    quota = cpu_quota()
    return count if quota is None else max(1, min(count, math.ceil(quota)))


def cpu_quota(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> float | None:
    """This process's CPU quota in CPUs (cgroup v2 ``cpu.max``, or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), read in its own cgroup and at the
    hierarchy's root (a container sees its own there); ``None`` when there is none or
    it cannot be read. The smallest found wins."""
    places: list[Path] = []
    try:
        for line in membership.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            relative = path.lstrip("/")
            if not controllers:  # v2
                places += [root / relative / "cpu.max", root / "cpu.max"]
            elif "cpu" in controllers.split(","):  # v1
                folder = root / controllers
                places += [folder / relative / "cpu.cfs_quota_us", folder / "cpu.cfs_quota_us"]
    except (OSError, ValueError):
        return None
    quotas = [q for q in map(_quota_at, places) if q is not None]
    return min(quotas) if quotas else None


def _quota_at(path: Path) -> float | None:
    try:
        if path.name == "cpu.max":
            quota, period = path.read_text().split()[:2]
        else:
            quota = path.read_text().strip()
            period = (path.parent / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Everything ``ligeiro serve`` can be told.

    ``workers = 0`` (the default) starts one worker per core. ``batching`` sets, per
    model name, a ``[batching]`` section that replaces the one in the model's
    config.toml (``[batching.iris]`` in ligeiro.toml, ``--batch`` on the command line).
    """

    repository: str = "models"
    # Set, ``repository`` is one model's folder served under this name (KServe's
    # /mnt/models): its model.onnx at the top, or version folders.
    model_name: str | None = None
    workers: Annotated[int, msgspec.Meta(ge=0)] = 0
    graceful_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    log_level: str = "info"
    # One JSON line per inference request: "-" for standard output, or a file path.
    access_log: str | None = None
    # OpenTelemetry traces to this OTLP/HTTP collector (base URL, as
    # OTEL_EXPORTER_OTLP_ENDPOINT); unset, the OTEL_* variables decide (ligeiro.tracing).
    otel_endpoint: str | None = None
    # How the repository may change while serving (ligeiro.server.control): never,
    # when its files change, or through the repository API (which needs admin_token).
    model_control: Literal["none", "poll", "explicit"] = "none"
    # The bearer token of the repository API (LIGEIRO_ADMIN_TOKEN); no inference
    # request needs it.
    admin_token: str | None = None
    # Bearer tokens every route but health needs (ligeiro.server.access); any one of
    # them passes (LIGEIRO_INFERENCE_TOKENS="a,b"). The file holds one a line and is
    # read again on SIGHUP. None of either: inference is open, as before.
    inference_tokens: list[str] = []
    inference_token_file: str | None = None
    # /metrics without a token (a scraper on a private network).
    metrics_public: bool = False
    # Requests per second per client address, over both transports (0: no limit);
    # past it 429 with Retry-After, or RESOURCE_EXHAUSTED. burst 0: one second's worth.
    rate_limit_per_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    rate_limit_burst: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Per inference request, on every transport (400 / INVALID_ARGUMENT past them): the
    # rows of an input (its first dimension; a batched model's max_batch_size also
    # holds), and the bytes of one BYTES element (UTF-8 bytes for text).
    max_request_rows: Annotated[int, msgspec.Meta(gt=0)] = 1_000_000
    max_bytes_element_bytes: Annotated[int, msgspec.Meta(gt=0)] = 16 * 1024 * 1024
    # The dashboard (/) and the API docs (/docs) for people; /openapi.json is served
    # either way (ligeiro.web).
    ui: bool = True
    http: HttpSettings = HttpSettings()
    grpc: GrpcSettings = GrpcSettings()
    tls: TlsSettings = TlsSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    batching: dict[str, BatchingPolicy] = {}

    def worker_count(self) -> int:
        """Worker processes to run: as set, or one per core (one in all with GPU
        providers: one process owns a GPU, its batches fill it)."""
        if self.workers:
            return self.workers
        return 1 if uses_gpu(self.runtime.providers) else cores()

    def grpc_host(self) -> str:
        """Where gRPC listens: ``[grpc] host``, or ``[http] host`` when unset."""
        return self.http.host if self.grpc.host is None else self.grpc.host

    def runtime_threads(self) -> int:
        """Intra-op threads per worker: as set, or the cores shared among workers."""
        if self.runtime.threads:
            return self.runtime.threads
        return max(1, cores() // self.worker_count())


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_LIST_KEYS = {("inference_tokens",), ("runtime", "providers")}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name, value in sorted(env.items()):  # LIGEIRO_HTTP before LIGEIRO_HTTP__PORT
        if not name.startswith(ENV_PREFIX):
            continue
        *sections, key = name[len(ENV_PREFIX) :].lower().split("__")
        target = layer
        for section in sections:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):  # LIGEIRO_HTTP=x and LIGEIRO_HTTP__PORT=1
                raise ConfigError(
                    f"environment ({ENV_PREFIX}* variables): {name} sets a field of "
                    f"{section!r}, which another variable sets to a value"
                )
        # A list from the environment is comma-separated: LIGEIRO_INFERENCE_TOKENS="a,b".
        target[key] = value.split(",") if (*sections, key) in _LIST_KEYS else value
    return layer


def _from_file(path: Path) -> dict[str, Any]:
    try:
        layer: dict[str, Any] = msgspec.toml.decode(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return layer


def _check(layer: dict[str, Any], source: str) -> None:
    try:
        msgspec.convert(layer, ServerSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ServerSettings:
    """Combine the defaults, ``ligeiro.toml``, the environment and CLI options.

    Args:
        cli: options given on the command line, nested like the settings
            (``{"http": {"port": 8080}}``); ``None`` values are ignored.
        config_file: the TOML file; by default ``./ligeiro.toml`` if it exists.
        env: the environment (default ``os.environ``).

    Raises:
        ConfigError: an unknown key or a bad value, naming the file, variable or option.
    """
    merged: dict[str, Any] = {}
    if config_file is None and Path(CONFIG_FILE).is_file():
        config_file = Path(CONFIG_FILE)
    if config_file is not None:
        layer = _from_file(config_file)
        _check(layer, str(config_file))
        merged = _merge(merged, layer)
    layer = _from_env(os.environ if env is None else env)
    _check(layer, f"environment ({ENV_PREFIX}* variables)")
    merged = _merge(merged, layer)
    layer = _drop_none(cli or {})
    _check(layer, "command line")
    merged = _merge(merged, layer)
    settings: ServerSettings = msgspec.convert(merged, ServerSettings, strict=False)
    tls = settings.tls
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    if tls.client_ca is not None and tls.cert is None:
        raise ConfigError("--tls-client-ca needs a server certificate (--tls-cert, --tls-key)")
    if settings.model_control == "explicit" and not settings.admin_token:
        raise ConfigError(
            "model_control = 'explicit' needs an admin token (--admin-token or "
            "LIGEIRO_ADMIN_TOKEN): the repository API loads and unloads models"
        )
    return settings


def _drop_none(layer: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: _drop_none(value) if isinstance(value, Mapping) else value
        for key, value in layer.items()
        if value is not None
    }

"""Run the server: one process, or a supervisor and N workers sharing the port.

A worker listens (HTTP, and gRPC on its own port, both on one event loop), and on
SIGTERM/SIGINT stops accepting, lets each connection finish the requests it is
receiving or computing, the last answer saying ``Connection: close`` (an idle one waits
half a second for a request its client may be sending; gRPC calls get the same grace),
closes what is left at the graceful timeout, then exits. With
``workers > 1`` each worker binds its own ``SO_REUSEPORT`` sockets (the kernel spreads
connections evenly); the supervisor reserves both ports first so ``port = 0`` works,
restarts a worker that dies, and forwards the shutdown. SIGHUP (forwarded to every
worker) reads the inference token file and the TLS certificate again.

Weights are loaded once: with one runtime thread per worker (the default when there
is a worker per core) the supervisor loads the repository and forks the workers from
it, so they share the models' memory copy-on-write, and a restarted worker starts
without loading anything. ONNX Runtime's thread pools do not survive a fork (a forked
session runs on one thread), so with more threads per worker each worker loads its
own copy (docs/adr/0005-workers-share-weights.md). The supervisor is supervisor.py;
this module is what a worker runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, LigeiroError
from ..repository.layout import discover

if TYPE_CHECKING:
    from collections.abc import Mapping
    from multiprocessing.connection import Connection

    from ..metrics import Metrics
    from ..repository.registry import Registry
    from ..settings import ServerSettings
    from .access import Access
    from .http import Connections
    from .tls import ServerTls

__all__ = ["bind", "grpc_address", "scheme", "serve", "worker_main"]

logger = logging.getLogger(__name__)

_BACKLOG = 2048


def bind(
    host: str, port: int, *, reuse_port: bool = False, listen: bool = True, what: str = "HTTP"
) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when the host has a colon).

    Raises:
        OSError: the bind failed; the message names the address.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"cannot listen for {what} on {grpc_address(host, port)}: {exc.strerror}"
        ) from None
    if listen:
        sock.listen(_BACKLOG)
    sock.setblocking(False)
    return sock


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as grpc, the logs and the errors write it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _serve(
    settings: ServerSettings,
    sock: socket.socket,
    grpc_port: int,
    ready: Connection | None,
    registry: Registry | None,
    control_pipe: Connection | None = None,
) -> None:
    # Imported here, after the supervisor has set PROMETHEUS_MULTIPROC_DIR.
    from ..dataplane import DataPlane
    from ..engine import Engine
    from ..metrics import Metrics
    from .control import Control, LocalControl, Watcher, WorkerControl
    from ..web import Site
    from .access import Access
    from .http import Connections, HttpApp, HttpConnection

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    access = Access.from_settings(settings)
    tls = None
    if settings.tls.is_enabled:
        from .tls import ServerTls

        tls = ServerTls(settings.tls)
    loop.add_signal_handler(signal.SIGHUP, _reload, access, tls)
    _raise_fd_limit(settings)

    metrics = Metrics()
    watcher: Watcher | None = None
    if control_pipe is None and settings.model_control == "poll":
        # Armed before the repository loads: a change made meanwhile is reloaded.
        root = Path(settings.repository).absolute()
        discover(root, settings.model_name)  # a missing repository: its error, not the watcher's
        watcher = Watcher(root, settings.model_name)
    if registry is None:
        engine = Engine.from_repository(
            settings.repository,
            threads=settings.runtime_threads(),
            metrics=metrics,
            batching=settings.batching,
            providers=settings.runtime.providers,
            model_name=settings.model_name,
        )
    else:
        engine = Engine(registry, metrics=metrics)
    access_log = None
    if settings.access_log is not None:
        from ..accesslog import AccessLog

        access_log = AccessLog.open(settings.access_log)
    tracing = None
    if _tracing_enabled(settings):
        from ..tracing import Tracing  # only when on: opentelemetry is never imported off

        tracing = Tracing(settings.otel_endpoint)
    control: Control
    watching = None
    if control_pipe is not None:  # one of several workers: the supervisor leads changes
        control = WorkerControl(engine, settings.model_control, settings.admin_token, control_pipe)
    else:
        local = control = LocalControl(engine, settings.model_control, settings.admin_token)
        if watcher is not None:
            watching = loop.create_task(local.watch(watcher, stop))
    plane = DataPlane(
        engine,
        metrics,
        access_log=access_log,
        tracing=tracing,
        max_rows=settings.max_request_rows,
        max_element_bytes=settings.max_bytes_element_bytes,
    )
    site = Site(
        engine,
        metrics,
        explicit_control=settings.model_control == "explicit",
        workers=settings.worker_count(),
        pages=settings.ui,
    )
    app = HttpApp(plane, settings.http, control=control, site=site, access=access)
    # Everything loaded so far lives as long as the process: keep it out of the
    # collector's full passes (and off copy-on-write pages after a fork).
    gc.freeze()
    connections = Connections(settings.http)
    connections.start_sweeping()

    _on_stop_signals(loop, connections, stop)
    sampler = _ProcessSampler(metrics, loop)
    server = await loop.create_server(
        lambda: HttpConnection(app, connections),
        sock=sock,
        backlog=_BACKLOG,
        ssl=None if tls is None else tls.http,
        ssl_handshake_timeout=None if tls is None else settings.http.header_timeout_s,
    )
    grpc_server = None
    grpc_text = ""
    if settings.grpc.enabled:
        from .grpc import start_grpc_server

        # One worker: a taken gRPC port is an error. Several: they share the port the
        # supervisor reserved.
        grpc_server = await start_grpc_server(
            plane,
            settings.grpc,
            grpc_address(settings.grpc_host(), grpc_port),
            reuse_port=ready is not None,
            control=control,
            access=access,
            tls=tls,
        )
        grpc_port = grpc_server.port
        grpc_text = f" and {scheme(settings, 'grpc')}://"
        grpc_text += grpc_address(settings.grpc_host(), grpc_port)
    host, port = sock.getsockname()[:2]
    if ready is None:
        models = sum(1 for s in engine.index() if s.is_ready)
        logger.info(
            "serving %d model version(s) on %s://%s:%d%s (pid %d)",
            models,
            scheme(settings, "http"),
            host,
            port,
            grpc_text,
            os.getpid(),
        )
    else:
        ready.send(os.getpid())
        ready.close()

    await stop.wait()
    sampler.cancel()
    if watching is not None:
        await watching
    if isinstance(control, WorkerControl):
        control.close()
    logger.info("shutting down (pid %d): draining %d connection(s)", os.getpid(), len(connections))
    server.close()
    grpc_stopped = (
        asyncio.ensure_future(grpc_server.stop(settings.graceful_timeout_s))
        if grpc_server is not None
        else None
    )
    connections.stop_sweeping()
    connections.shutdown()
    try:
        await asyncio.wait_for(connections.empty.wait(), settings.graceful_timeout_s)
    except TimeoutError:
        aborted = connections.abort()
        logger.warning("graceful timeout: closed %d connection(s) mid-request", aborted)
    if grpc_stopped is not None:
        await grpc_stopped
    if access_log is not None:
        access_log.close()
    if tracing is not None:
        tracing.close()
    engine.close()


def _on_stop_signals(
    loop: asyncio.AbstractEventLoop, connections: Connections, stop: asyncio.Event
) -> None:
    """On SIGTERM/SIGINT, shut the connections down and set ``stop``.

    The loop runs its handler once it reads the signal off its wake-up pipe, which can
    be after a read it polled at the same time: a request parsed in that read must
    already be answered with ``Connection: close``. So the signal handler itself, run
    between two bytecodes before any later Python code, marks the connections as
    closing (one attribute, safe anywhere), then hands on to the loop's.
    """

    def stopping() -> None:
        connections.shutdown()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping)
        wake = signal.getsignal(signum)  # the loop's: it notes the signal for its pipe

        def noted(signum: int, frame: object, wake: Any = wake) -> None:
            connections.closing = True
            if callable(wake):
                wake(signum, frame)

        signal.signal(signum, noted)


def scheme(settings: ServerSettings, plain: str) -> str:
    """``plain`` ("http", "grpc") with an "s" when TLS is on, for the serving log line."""
    return plain + "s" if settings.tls.is_enabled else plain


def _reload(access: Access, tls: ServerTls | None) -> None:
    """SIGHUP: the token file and the TLS certificate, read again (each keeps its old
    state when the new one fails to load)."""
    if access.token_file is not None:
        logger.info("SIGHUP: %d token(s) pass (pid %d)", access.reload(), os.getpid())
    if tls is not None:
        tls.reload()


def _raise_fd_limit(settings: ServerSettings) -> None:
    """Raise the soft descriptor limit to fit the connection limits (up to the hard one):
    a worker at the limit would refuse new clients with a reset instead of a 503."""
    needed = settings.http.max_connections + 256
    if settings.grpc.enabled:
        needed += getattr(settings.grpc, "max_connections", 1024)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _tracing_enabled(settings: ServerSettings, env: Mapping[str, str] = os.environ) -> bool:
    """Whether to trace (README, "Tracing"): ``otel_endpoint`` set, or the standard
    variables name an OTLP endpoint or a traces exporter; ``OTEL_SDK_DISABLED=true`` or
    ``OTEL_TRACES_EXPORTER=none`` keep it off whatever else is set."""
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        return False
    return settings.otel_endpoint is not None or any(
        name in env
        for name in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_TRACES_EXPORTER",
        )
    )


_SAMPLE_INTERVAL_S = 1.0


class _ProcessSampler:
    """Records the worker's memory and CPU in the metrics now and every second."""

    def __init__(self, metrics: Metrics, loop: asyncio.AbstractEventLoop) -> None:
        self._metrics = metrics
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._tick()

    def _tick(self) -> None:
        self._metrics.sample_process()
        self._handle = self._loop.call_later(_SAMPLE_INTERVAL_S, self._tick)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def _run_worker(
    settings: ServerSettings,
    sock: socket.socket,
    grpc_port: int,
    ready: Connection | None,
    registry: Registry | None = None,
    control_pipe: Connection | None = None,
) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(settings, sock, grpc_port, ready, registry, control_pipe))


def worker_main(
    settings: ServerSettings,
    ports: tuple[int, int],
    ready: Connection,
    registry: Registry | None,
    control_pipe: Connection,
) -> None:
    """A forked worker (supervisor.py starts it): its own ``SO_REUSEPORT`` socket on the
    reserved port, then the serve loop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; Ctrl-C reaches it
    # Until the worker's loop handles it: a SIGHUP forwarded during start must not kill it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Bound but not listening: the kernel must not hand this worker connections before
    # its models are loaded; the server listens once it starts serving.
    sock = bind(settings.http.host, ports[0], reuse_port=True, listen=False)
    _run_worker(settings, sock, ports[1], ready, registry, control_pipe)


def serve(settings: ServerSettings) -> None:
    """Serve ``settings.repository`` until SIGTERM or SIGINT.

    Raises:
        OSError: the address cannot be bound.
    """
    if _tracing_enabled(settings):  # before any worker starts: one line, exit 2
        from ..extras import require  # importlib.metadata: 10 ms of a cold start, when off

        require("otel", "tracing (--otel-endpoint, OTEL_*)")
    from .access import Access, exposure_warning

    warning = exposure_warning(settings)
    if warning is not None:
        logger.warning("%s", warning)
    Access.from_settings(settings)  # an unreadable token file fails here, not in N workers
    if settings.tls.is_enabled:
        from .tls import ServerTls

        ServerTls(settings.tls)  # and so does a bad certificate
    if settings.worker_count() == 1:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop's handler is in place
        _run_worker(
            settings,
            bind(settings.http.host, settings.http.port, listen=False),  # listens once loaded
            settings.grpc.port,
            None,
        )
        return
    # A missing repository fails here, not in N workers.
    discover(Path(settings.repository), settings.model_name)
    on_gpu = _gpu_models(settings)
    if on_gpu:
        raise ConfigError(
            f"{settings.worker_count()} workers: {', '.join(on_gpu)} run on a GPU, which one "
            "worker process owns (CUDA does not survive a fork, and a copy of the model "
            "per process splits the GPU instead of filling it); serve with --workers 1, "
            "whose batches ([batching] instances) fill the GPU"
        )
    from .supervisor import Supervisor

    Supervisor(settings).run()


def _gpu_models(settings: ServerSettings) -> list[str]:
    """The models that ask for a GPU provider this machine's onnxruntime has."""
    import onnxruntime

    from ..repository.config import load_config
    from ..runtime.providers import GPU_PROVIDERS, PROVIDERS

    available = {n for n in GPU_PROVIDERS if PROVIDERS[n] in onnxruntime.get_available_providers()}
    if not available:
        return []
    found = []
    for folder in discover(Path(settings.repository), settings.model_name):
        try:
            config = load_config(folder.path)
        except LigeiroError:  # a broken config fails its model's load, with the reason
            continue
        providers = (config.runtime and config.runtime.providers) or settings.runtime.providers
        if config.platform == "onnxruntime" and available & set(providers):
            found.append(repr(folder.name))
    return found

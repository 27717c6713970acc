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
own copy (docs/adr/0005-workers-share-weights.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, LigeiroError
from ..repository.layout import discover, fingerprint

if TYPE_CHECKING:
    from collections.abc import Mapping
    from multiprocessing.process import BaseProcess

    from ..metrics import Metrics
    from ..repository.registry import Registry
    from ..settings import ServerSettings
    from .access import Access
    from .control import Change, Coordinator, Watcher
    from .tls import ServerTls

__all__ = ["serve"]

logger = logging.getLogger(__name__)

_BACKLOG = 2048
_RESTART_BACKOFF_S = 1.0
_START_TIMEOUT_S = 120.0


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
            f"cannot listen for {what} on {_grpc_address(host, port)}: {exc.strerror}"
        ) from None
    if listen:
        sock.listen(_BACKLOG)
    sock.setblocking(False)
    return sock


def _grpc_address(host: str, port: int) -> str:
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
            _grpc_address(settings.grpc_host(), grpc_port),
            reuse_port=ready is not None,
            control=control,
            access=access,
            tls=tls,
        )
        grpc_port = grpc_server.port
        grpc_text = f" and {_scheme(settings, 'grpc')}://"
        grpc_text += _grpc_address(settings.grpc_host(), grpc_port)
    host, port = sock.getsockname()[:2]
    if ready is None:
        models = sum(1 for s in engine.index() if s.is_ready)
        logger.info(
            "serving %d model version(s) on %s://%s:%d%s (pid %d)",
            models,
            _scheme(settings, "http"),
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


def _scheme(settings: ServerSettings, plain: str) -> str:
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


def _worker_main(
    settings: ServerSettings,
    ports: tuple[int, int],
    ready: Connection,
    registry: Registry | None,
    control_pipe: Connection,
) -> None:
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
    _Supervisor(settings).run()


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


def _ready_pid(ready: Connection) -> int | None:
    """The pid a worker sends once it listens; None if it died or hung first."""
    try:
        pid: int | None = ready.recv() if wait([ready], timeout=_START_TIMEOUT_S) else None
    except EOFError:  # the worker exited before saying it was ready
        pid = None
    ready.close()
    return pid


class _Supervisor:
    """Starts the workers, restarts any that die, and shuts them all down on a signal."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.workers = settings.worker_count()
        self._registry: Registry | None = None
        self._context = multiprocessing.get_context("fork")
        self._workers: dict[int, tuple[BaseProcess, float]] = {}
        # Each worker's control pipe (ligeiro.server.control): model changes run on all.
        self._pipes: dict[int, Connection] = {}
        self._coordinator: Coordinator | None = None
        self._root = Path(settings.repository)
        self._started_with: frozenset[tuple[str, int, int]] | None = None
        self._stopping = False
        # The signal handler writes here so that wait() wakes up: no polling.
        self._wake_read, self._wake_write = os.pipe()

    def run(self) -> None:
        settings = self.settings
        metrics_dir = tempfile.mkdtemp(prefix="ligeiro-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        # Reserve the port (and learn it when 0) without listening: only the workers'
        # listening sockets receive connections.
        reserved = bind(settings.http.host, settings.http.port, reuse_port=True, listen=False)
        grpc_reserved = (
            bind(
                settings.grpc_host(), settings.grpc.port, reuse_port=True, listen=False, what="gRPC"
            )
            if settings.grpc.enabled
            else None
        )
        ports = (
            reserved.getsockname()[1],
            grpc_reserved.getsockname()[1] if grpc_reserved is not None else 0,
        )
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        watcher: Watcher | None = None
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._forward_hangup)
        try:
            self._load_shared()
            if self._registry is None and settings.model_control == "none":
                # Each worker loads from disk: a restarted one must find it unchanged.
                self._started_with = fingerprint(self._root)
            pending = [self._start(slot, ports) for slot in range(self.workers)]
            pids = [pid for pid in map(_ready_pid, pending) if pid is not None]
            if len(pids) < self.workers:
                raise LigeiroError(
                    f"{self.workers - len(pids)} of {self.workers} workers did not "
                    "start (their errors are logged above)"
                )
            if settings.model_control == "poll":
                from .control import Watcher

                # Armed before the server says it serves: a change made as soon as it
                # does is reloaded on every worker. (After the workers' first fork: a
                # fork should not copy a process whose other threads may hold locks.)
                watcher = Watcher(Path(settings.repository).resolve(), settings.model_name)
            grpc_text = (
                f" and {_scheme(settings, 'grpc')}://"
                f"{_grpc_address(settings.grpc_host(), ports[1])}"
                if grpc_reserved is not None
                else ""
            )
            logger.info(
                "serving on %s://%s:%d%s with %d workers (pids %s)",
                _scheme(settings, "http"),
                settings.http.host,
                ports[0],
                grpc_text,
                len(pids),
                ", ".join(map(str, pids)),
            )
            self._watch(ports, watcher)
        finally:
            self._shutdown()
            if watcher is not None:
                watcher.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            reserved.close()
            if grpc_reserved is not None:
                grpc_reserved.close()
            os.close(self._wake_read)
            os.close(self._wake_write)
            shutil.rmtree(metrics_dir, ignore_errors=True)
            if self._registry is not None:
                self._registry.close()

    def _load_shared(self) -> None:
        """Load the repository here, once, for the workers to share (one thread each)."""
        settings = self.settings
        threads = settings.runtime_threads()
        if threads != 1:
            logger.info(
                "%d runtime threads per worker: each worker loads its own copy of the models "
                "(ONNX Runtime's thread pools do not survive a fork)",
                threads,
            )
            return
        from ..repository.registry import Registry

        self._registry = Registry(
            Path(settings.repository),
            threads=1,
            batching=settings.batching,
            providers=settings.runtime.providers,
            model_name=settings.model_name,
        )
        # What every worker imports, imported once here so that the workers share its
        # pages too (grpcio aside: it is imported after the fork, in the worker).
        import uvloop  # noqa: F401

        from .. import engine, metrics  # noqa: F401
        from . import http  # noqa: F401

        # Long-lived objects out of the collector's reach: its passes would write to
        # every object's header and un-share the pages after the fork.
        gc.freeze()
        logger.info("repository loaded once; %d workers share it", self.workers)

    def _start(self, slot: int, ports: tuple[int, int]) -> Connection:
        receiver, sender = self._context.Pipe(duplex=False)
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main,
            args=(self.settings, ports, sender, self._registry, theirs),
            name=f"ligeiro-worker-{slot}",
        )
        process.start()
        sender.close()
        theirs.close()
        old = self._pipes.pop(slot, None)
        if old is not None:
            old.close()
        self._pipes[slot] = ours
        self._workers[slot] = (process, time.monotonic())
        return receiver

    def _forward_hangup(self, signum: int, frame: object) -> None:
        for process, _ in self._workers.values():
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True
        os.write(self._wake_write, b"x")

    def _watch(self, ports: tuple[int, int], watcher: Watcher | None) -> None:
        from .control import Coordinator, watch

        self._coordinator = Coordinator(self._registry, _START_TIMEOUT_S)
        changes, send = self._context.Pipe(duplex=False)
        stop_watching = threading.Event()
        thread = None
        if watcher is not None:
            thread = threading.Thread(
                target=watch,
                args=(watcher, send.send, stop_watching),
                name="ligeiro-watch",
                daemon=True,
            )
            thread.start()
        try:
            self._wait(ports, changes)
        finally:
            stop_watching.set()
            if thread is not None:
                thread.join(5)
            changes.close()
            send.close()

    def _change(self, change: Change, origin: tuple[int, int] | None) -> None:
        """Run a change on every worker; answer the worker that asked, if one did."""
        assert self._coordinator is not None
        states, error = self._coordinator.run(self._pipes, change)
        if origin is not None:
            slot, ident = origin
            pipe = self._pipes.get(slot)
            if pipe is not None:
                with contextlib.suppress(OSError):  # it died meanwhile
                    pipe.send(("done", ident, (states, error)))

    def _wait(self, ports: tuple[int, int], changes: Connection) -> None:
        assert self._coordinator is not None
        while not self._stopping:
            for slot, message in self._coordinator.deferred:
                if message[0] == "change":
                    self._change(message[2], (slot, message[1]))
            self._coordinator.deferred.clear()
            sentinels = {process.sentinel: slot for slot, (process, _) in self._workers.items()}
            pipes = {pipe: slot for slot, pipe in self._pipes.items()}
            for sentinel in wait([*sentinels, *pipes, changes, self._wake_read]):
                if sentinel == self._wake_read:
                    break
                if sentinel is changes:
                    self._change((changes.recv(), None, False), None)
                    continue
                if sentinel in pipes:
                    try:
                        message = sentinel.recv()
                    except (EOFError, OSError):  # the worker died (and may be restarted)
                        continue
                    if message[0] == "change":
                        self._change(message[2], (pipes[sentinel], message[1]))
                    continue
                slot = sentinels[sentinel]  # type: ignore[index]
                process, started = self._workers[slot]
                process.join()
                if self._stopping:
                    break
                logger.error(
                    "worker %d (pid %s) exited with %s; restarting",
                    slot,
                    process.pid,
                    process.exitcode,
                )
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(process.pid)
                # A worker that dies at start-up must not make the supervisor spin.
                if time.monotonic() - started < _RESTART_BACKOFF_S:
                    logger.warning(
                        "worker %d died within %.0f s of starting; restarting in %.0f s",
                        slot,
                        _RESTART_BACKOFF_S,
                        _RESTART_BACKOFF_S,
                    )
                    if wait([self._wake_read], timeout=_RESTART_BACKOFF_S):
                        break
                if not self._may_restart(slot):
                    continue
                self._start(slot, ports).close()
                if self._registry is None:  # it loaded the disk's state: replay the API's
                    for change in self._coordinator.applied:
                        self._coordinator.run({slot: self._pipes[slot]}, change, replay=True)

    def _may_restart(self, slot: int) -> bool:
        """Whether a worker may load the repository from disk again: always, unless it
        changed since the start without model control (the others serve what was
        there then). Without one left, the server fails."""
        if self._started_with is None or fingerprint(self._root) == self._started_with:
            return True
        self._workers.pop(slot)
        self._pipes.pop(slot).close()
        logger.error(
            "worker %d is not restarted: the repository changed on disk since the server "
            "started, and with --model-control none a new worker (each loads its own copy) "
            "would serve the change; %d worker(s) serve on what was there at the start. "
            "Restart the server to serve the change, or use --model-control poll",
            slot,
            len(self._workers),
        )
        if not self._workers:
            raise LigeiroError(
                "no worker left: the repository changed on disk since the server started "
                "(--model-control none); restart the server to serve the change"
            )
        return False

    def _shutdown(self) -> None:
        processes = [process for process, _ in self._workers.values() if process.is_alive()]
        for process in processes:
            process.terminate()
        deadline = time.monotonic() + self.settings.graceful_timeout_s + 5
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.warning("worker pid %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()

"""The supervisor of ``workers > 1``: it reserves the ports, starts the workers (forked,
sharing the repository it loaded when each has one runtime thread), restarts one that
dies, runs model changes on all of them, forwards SIGHUP, and shuts them down on
SIGTERM/SIGINT. ``app.py`` holds what each worker runs.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LigeiroError
from ..repository.layout import fingerprint
from .app import bind, grpc_address, scheme, worker_main

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from ..repository.registry import Registry
    from ..settings import ServerSettings
    from .control import Change, Coordinator, Watcher

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)

_RESTART_BACKOFF_S = 1.0
_START_TIMEOUT_S = 120.0


def _ready_pid(ready: Connection) -> int | None:
    """The pid a worker sends once it listens; None if it died or hung first."""
    try:
        pid: int | None = ready.recv() if wait([ready], timeout=_START_TIMEOUT_S) else None
    except EOFError:  # the worker exited before saying it was ready
        pid = None
    ready.close()
    return pid


class Supervisor:
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
                f" and {scheme(settings, 'grpc')}://{grpc_address(settings.grpc_host(), ports[1])}"
                if grpc_reserved is not None
                else ""
            )
            logger.info(
                "serving on %s://%s:%d%s with %d workers (pids %s)",
                scheme(settings, "http"),
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
            target=worker_main,
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

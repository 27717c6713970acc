"""Model control (``--model-control``): how repository changes reach the serving engines.

- ``none``: the repository loads at start and never changes.
- ``poll``: a watcher (watchfiles: the kernel's file events, no sleep loop) sees a model
  folder change and reloads that model. It is armed before the repository loads, so a
  change made while the server starts, or right after it says it serves, is seen.
- ``explicit``: the repository API (``POST /v2/repository/models/{m}/load`` and
  ``/unload``, and their gRPC twins) reloads or unloads a model; it needs the admin
  bearer token.

Every change is two-phase so that no worker serves a mix of versions for longer than a
moment: each worker loads and warms the change on the side (``Engine.prepare``), and
only when all have done so does each switch (``Engine.commit``); the versions replaced
then finish their requests (drain) and are unloaded. One process does both steps
itself (``LocalControl``); a worker of several asks the supervisor, which runs them
across every worker (``WorkerControl`` here, ``Coordinator`` for the supervisor).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import (
    AuthenticationError,
    ControlDisabledError,
    InvalidInputError,
    LigeiroError,
    ModelLoadError,
    ModelNotFoundError,
)
from ..repository.config import ModelConfig, decode_config
from ..repository.registry import DISABLED

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterable
    from multiprocessing.connection import Connection

    from ..engine import Engine
    from ..repository.registry import ModelState, Registry, Staged

__all__ = [
    "Control",
    "Coordinator",
    "LocalControl",
    "Watcher",
    "WorkerControl",
    "model_names",
    "watch",
]

logger = logging.getLogger(__name__)

Mode = Literal["none", "poll", "explicit"]
# A change as it travels between processes: (models, override config JSON, unload).
Change = tuple[tuple[str, ...], bytes | None, bool]
# How long the watcher waits for a burst of file events to settle (a copy, an unpack).
DEBOUNCE_MS = 400


def _override(name: str, config: bytes | None) -> dict[str, ModelConfig]:
    if config is None:
        return {}
    return {name: decode_config(config, f"load {name!r}: config", json=True)}


def _outcome(names: Iterable[str], states: list[ModelState]) -> list[ModelState]:
    """The states of ``names``; an error if a load of any of them failed."""
    wanted = set(names)
    mine = [s for s in states if s.name in wanted]
    # A version that disabled_versions keeps from loading is as asked, not a failure.
    failed = [s for s in mine if (not s.is_ready or s.reason) and not s.reason.startswith(DISABLED)]
    if failed and not any(s.reason == "unloaded" for s in failed):
        raise ModelLoadError(
            "; ".join(
                f"model {s.name!r} version {s.version or '-'}: {s.reason}"
                + ("" if not s.is_ready else " (the previous version serves on)")
                for s in failed
            )
        )
    return mine


def model_names(root: Path, paths: Iterable[str], model_name: str | None = None) -> set[str]:
    """The model folders (first path part under ``root``) that ``paths`` fall in; or
    ``model_name``, for a change anywhere under ``root`` when ``root`` is that one model."""
    names = set()
    for path in paths:
        try:
            parts = Path(path).relative_to(root).parts
        except ValueError:
            continue
        if model_name is not None:
            names.add(model_name)
        elif parts and not parts[0].startswith("."):
            names.add(parts[0])
    return names


def _check_name(name: str) -> None:
    if not name:
        raise InvalidInputError("the repository API needs a model name; got an empty one")


class Control:
    """What the repository API asks of model control.

    Args:
        engine: this worker's engine.
        mode: ``none``, ``poll`` or ``explicit``.
        admin_token: the bearer token the API needs (explicit control needs one).
    """

    def __init__(self, engine: Engine, mode: Mode, admin_token: str | None) -> None:
        self.engine = engine
        self.mode = mode
        self._token = None if admin_token is None else admin_token.encode()

    def authorize(self, authorization: bytes | None, *, change: bool) -> None:
        """Check a request to the repository API.

        The index is readable without a token unless the server has one; a change
        (load, unload) needs explicit control and the token.

        Raises:
            ControlDisabledError: a change while model control is not explicit.
            AuthenticationError: the token is missing or wrong.
        """
        if change and self.mode != "explicit":
            raise ControlDisabledError(
                f"model control is {self.mode!r}: loading and unloading through the API "
                "needs --model-control explicit"
            )
        if self._token is None:
            return
        given = b""
        if authorization is not None and authorization[:7].lower() == b"bearer ":
            given = authorization[7:].strip()
        if not given:
            raise AuthenticationError("the repository API needs 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given, self._token):
            raise AuthenticationError("the bearer token is not the admin token")

    async def load(self, name: str, config: bytes | None = None) -> list[ModelState]:
        """Reload model ``name`` from the repository (with ``config`` as its config.toml,
        a JSON object, when given); answer its versions' states.

        Raises:
            ModelLoadError: the config is invalid, or the model failed to load (the
                versions it served before, if any, serve on).
        """
        _check_name(name)
        single = self.engine.single_model
        if single is not None:
            if name != single:
                raise ModelNotFoundError(
                    f"unknown model {name!r}; this server serves one model, {single!r}"
                )
        elif name.startswith(".") or not self.engine.folder(name).is_dir():
            raise ModelNotFoundError(f"no model folder {name!r} in the repository")
        _override(name, config)  # a bad config is refused here, before any worker loads
        return await self.apply((name,), config, False)

    async def unload(self, name: str) -> list[ModelState]:
        """Stop serving ``name`` (after its requests in flight end).

        Raises:
            ModelNotFoundError: no such model.
        """
        _check_name(name)
        if name not in self.engine.names():
            raise ModelNotFoundError(f"unknown model {name!r}")
        return await self.apply((name,), None, True)

    async def apply(
        self, names: tuple[str, ...], config: bytes | None, unload: bool
    ) -> list[ModelState]:
        raise NotImplementedError


class LocalControl(Control):
    """The one process serves: it prepares and commits changes itself."""

    def __init__(self, engine: Engine, mode: Mode, admin_token: str | None) -> None:
        super().__init__(engine, mode, admin_token)
        self._lock = asyncio.Lock()

    async def apply(
        self, names: tuple[str, ...], config: bytes | None, unload: bool
    ) -> list[ModelState]:
        async with self._lock:  # one change at a time
            override = _override(names[0], config)
            staged = await self.engine.prepare(names, override=override, unload=unload)
            self.engine.commit(staged)
        outcome = _outcome(names, staged.states())  # a failed load raises: not "loaded"
        _log(names, staged, unload)
        return outcome

    async def watch(self, watcher: Watcher, stop: asyncio.Event) -> None:
        """Reload each model whose folder changes, until ``stop`` is set."""
        while (names := await asyncio.to_thread(watcher.changes, stop)) is not None:
            for name in sorted(names):
                try:
                    await self.apply((name,), None, False)
                except LigeiroError as exc:
                    logger.error("reload of %r after a change on disk: %s", name, exc)
        watcher.close()


def _log(names: Iterable[str], staged: Staged, unload: bool) -> None:
    what = "unloaded" if unload else "loaded"
    logger.info("%s %s in %.3f s", what, ", ".join(map(repr, names)), staged.seconds)


class WorkerControl(Control):
    """A worker of several: changes run on every worker at once, led by the supervisor.

    The worker's end of its control pipe carries, from the supervisor: ``prepare``,
    ``commit``, ``abort`` (of a change) and ``done`` (the answer to a change this worker
    asked for); to it: ``change`` requests and the replies to the steps.
    """

    def __init__(
        self, engine: Engine, mode: Mode, admin_token: str | None, pipe: Connection
    ) -> None:
        super().__init__(engine, mode, admin_token)
        self._pipe = pipe
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._staged: dict[int, Staged] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop.add_reader(pipe.fileno(), self._receive)

    def close(self) -> None:
        self._loop.remove_reader(self._pipe.fileno())

    async def apply(
        self, names: tuple[str, ...], config: bytes | None, unload: bool
    ) -> list[ModelState]:
        ident = next(self._ids)
        answer = self._waiting[ident] = self._loop.create_future()
        self._pipe.send(("change", ident, (names, config, unload)))
        try:
            states, error = await answer
        finally:
            self._waiting.pop(ident, None)
        if error is not None:
            raise ModelLoadError(error)
        return _outcome(names, states)

    def _receive(self) -> None:
        try:
            message = self._pipe.recv()
        except EOFError:  # the supervisor is gone: the worker is shutting down
            self.close()
            return
        kind, ident, payload = message
        if kind == "done":
            future = self._waiting.get(ident)
            if future is not None and not future.done():
                future.set_result(payload)
        elif kind == "prepare":
            task = self._loop.create_task(self._prepare(ident, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == "commit":
            staged = self._staged.pop(ident)
            self.engine.commit(staged)
            self._pipe.send(("committed", ident, staged.states()))
        elif kind == "abort":
            self._staged.pop(ident, None)

    async def _prepare(self, ident: int, change: Change) -> None:
        names, config, unload = change
        try:
            override = _override(names[0], config)
            self._staged[ident] = await self.engine.prepare(names, override=override, unload=unload)
        except Exception as exc:
            logger.exception("preparing a change of %s", ", ".join(names))
            self._pipe.send(("prepared", ident, str(exc)))
        else:
            self._pipe.send(("prepared", ident, None))


class Coordinator:
    """The supervisor's side: runs each change on every worker, two-phase.

    Args:
        registry: the supervisor's own copy, which restarted workers are forked from
            (None when each worker loads its own).
    """

    def __init__(self, registry: Registry | None, timeout_s: float) -> None:
        self.registry = registry
        self._timeout_s = timeout_s
        self._ids = itertools.count()
        # Messages read while waiting for another one: handled after the change.
        self.deferred: list[tuple[int, tuple[str, int, Any]]] = []
        # The changes made so far, for a worker that restarts and loads from disk
        # (when there is no supervisor's copy to fork it from).
        self.applied: list[Change] = []

    def run(
        self, pipes: dict[int, Connection], change: Change, *, replay: bool = False
    ) -> tuple[list[Any], str | None]:
        """Apply ``change`` on every worker of ``pipes`` (slot → pipe); the states after
        it, or an error. ``replay``: a change made before, for a restarted worker."""
        from multiprocessing.connection import wait

        ident = next(self._ids)
        names, config, unload = change
        live = dict(pipes)
        for slot, pipe in list(live.items()):
            try:
                pipe.send(("prepare", ident, change))
            except OSError:
                live.pop(slot)

        def collect(kind: str) -> dict[int, Any]:
            replies: dict[int, Any] = {}
            pending = dict(live)
            while pending:
                ready = wait(list(pending.values()), timeout=self._timeout_s)
                if not ready:
                    raise LigeiroError(
                        f"workers {sorted(pending)} did not answer {kind} "
                        f"in {self._timeout_s:.0f} s"
                    )
                for slot, pipe in list(pending.items()):
                    if pipe not in ready:
                        continue
                    try:
                        message = pipe.recv()
                    except EOFError:  # the worker died; it restarts from the supervisor
                        pending.pop(slot)
                        live.pop(slot)
                        continue
                    if message[0] == kind and message[1] == ident:
                        replies[slot] = message[2]
                        pending.pop(slot)
                    else:
                        self.deferred.append((slot, message))
            return replies

        try:
            prepared = collect("prepared")
            errors = [e for e in prepared.values() if e is not None]
            if errors:
                for pipe in live.values():
                    pipe.send(("abort", ident, None))
                return [], errors[0]
            for pipe in live.values():
                pipe.send(("commit", ident, None))
            committed = collect("committed")
        except LigeiroError as exc:
            return [], str(exc)
        if replay:
            return [], None
        if self.registry is None:
            self.applied.append(change)
        else:  # so that a restarted worker forks the new state
            override = _override(names[0], config)
            # Not warmed: the supervisor serves nothing, and a model's first run (a
            # tokenizer's thread pool) is better made after the fork.
            staged = self.registry.prepare(names, override=override, unload=unload, warm=None)
            for version in self.registry.commit(staged):
                version.runtime.close()
        states: list[Any] = next(iter(committed.values()), [])
        logger.info(
            "%s %s on %d workers", "unloaded" if unload else "loaded", ", ".join(names), len(live)
        )
        return states, None


class Watcher:
    """The model folders that change under ``root`` (``model_name`` for any change, when
    ``root`` is that one model's folder), watched from the moment this is made.

    ``watchfiles.watch`` and ``awatch`` start watching only when first iterated, in
    whichever thread gets there: a change made before that (a new version written just
    after the server said it serves, while the supervisor's watch thread was still
    importing watchfiles) was never seen, and never reloaded. So this makes watchfiles'
    own ``RustNotify`` at once, before the repository loads; the kernel's events queue
    in it until the first ``changes`` call.
    """

    def __init__(self, root: Path, model_name: str | None = None) -> None:
        from watchfiles import DefaultFilter
        from watchfiles._rust_notify import RustNotify  # what watchfiles.watch runs

        self.root = root
        self._model_name = model_name
        self._filter = DefaultFilter()  # editors' swap files, __pycache__, .git
        # (paths, debug, force_polling, poll_delay_ms, recursive, ignore_permission_denied)
        self._notify = RustNotify([str(root)], False, False, 300, True, False)

    def changes(self, stop: threading.Event | asyncio.Event) -> set[str] | None:
        """Wait for a burst of file events to settle; the model folders they touched
        (maybe none), or None once ``stop`` is set. Blocks: run it in a thread."""
        from watchfiles import Change

        raw = self._notify.watch(DEBOUNCE_MS, 50, 0, stop)
        if isinstance(raw, str):  # "stop" ("signal" and "timeout" cannot come in a thread)
            return None
        paths = (path for change, path in raw if self._filter(Change(change), path))
        return model_names(self.root, paths, self._model_name)

    def close(self) -> None:
        self._notify.close()


def watch(
    watcher: Watcher, send: Callable[[tuple[str, ...]], None], stop: threading.Event
) -> None:
    """Call ``send`` with the model folders that change, until ``stop``.

    Runs in a thread of the supervisor (the wait blocks).
    """
    while (names := watcher.changes(stop)) is not None:
        if names:
            send(tuple(sorted(names)))

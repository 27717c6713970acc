"""Start a coroutine here, now, and make it a task only if it has to wait.

An unbatched model runs on the event loop: its whole request, from the parsed bytes to
the answer's, never waits. Run as a task, it would cost a task, a pass through the
loop's queue to start it and another for its done callback, for nothing (Python 3.12's
eager tasks, by hand: the server runs on 3.11). Both transports that parse their own
bytes run the answers of one loop pass this way, together, once every connection has
been read: HTTP/1.1 (``http_connection.Connections``) and gRPC over HTTP/2
(``grpc_h2``). Not inside the read itself: that measured slower (docs/adr/0009).
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Coroutine, Generator

__all__ = ["start"]

_T = TypeVar("_T")


def start(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, _T]
) -> tuple[asyncio.Task[_T] | None, _T | None]:
    """Run ``coro`` up to its first real wait: ``(None, its result)`` when it finished
    without one, else ``(the task that goes on with it, None)``.

    It runs in its own copy of the context either way, as a task would. An exception it
    raises before its first wait is raised here.
    """
    context = contextvars.copy_context()
    try:
        waiting = context.run(coro.send, None)
    except StopIteration as finished:
        return None, finished.value
    return loop.create_task(_resumed(coro, waiting), context=context), None


@types.coroutine
def _resumed(coro: Coroutine[Any, Any, _T], waiting: Any) -> Generator[Any, Any, _T]:
    """Go on with a coroutine already started by hand (``start``), as a task's body."""
    while True:
        try:
            sent = yield waiting
        except BaseException as exc:  # a cancellation, forwarded
            try:
                waiting = coro.throw(exc)
            except StopIteration as finished:
                return finished.value  # type: ignore[no-any-return]
        else:
            try:
                waiting = coro.send(sent)
            except StopIteration as finished:
                return finished.value  # type: ignore[no-any-return]

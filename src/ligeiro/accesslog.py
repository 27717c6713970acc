"""The access log: one JSON line per inference request, off unless asked for.

Lines are buffered and written together at the end of the event loop's pass (one
``write`` for every request answered in that pass), in chunks that end at a line and
stay under ``PIPE_BUF``, so several workers writing to one pipe or ``O_APPEND`` file
never interleave within a line. A write that fails (a full disk, a closed pipe) drops
its lines and never fails a request: the first failure is logged once, and so is the
count dropped when writing works again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, final

import msgspec

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["AccessLog", "AccessRecord"]

logger = logging.getLogger(__name__)

# POSIX guarantees writes up to PIPE_BUF bytes to a pipe are not interleaved.
_CHUNK = 4096


class AccessRecord(msgspec.Struct, omit_defaults=True):
    """One line of the access log.

    Attributes:
        time: when the answer was ready, seconds since the epoch (UTC).
        protocol: ``http`` or ``grpc``.
        model, version: what served it (empty when the model was not found).
        status: the HTTP status, or the gRPC status code's name.
        latency_ms: complete request received to answer ready.
        request_id: the V2 request's ``id``, when it had one.
        pid: the worker that answered.
    """

    time: float
    protocol: str
    model: str
    version: str
    status: str
    latency_ms: float
    pid: int
    request_id: str | None = None


_encode = msgspec.json.Encoder().encode


@final
class AccessLog:
    """Writes ``AccessRecord`` lines to a file descriptor.

    Args:
        fd: where the lines go (``1`` is standard output); not closed here unless
            ``owned``.
        owned: close ``fd`` on ``close()``.
    """

    def __init__(self, fd: int = 1, *, owned: bool = False) -> None:
        self._fd = fd
        self._owned = owned
        self._pending: list[bytes] = []
        self._pid = os.getpid()
        self._dropped = 0  # lines lost since a write failed; 0 while writes work

    @classmethod
    def open(cls, target: str | Path) -> AccessLog:
        """``-`` for standard output, else a file opened for appending (created if needed)."""
        if str(target) == "-":
            return cls(1)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return cls(fd, owned=True)

    def record(
        self,
        protocol: str,
        model: str,
        version: str,
        status: str,
        seconds: float,
        request_id: str | None,
    ) -> None:
        """Add a line; it is written at the end of the loop's current pass."""
        line = _encode(
            AccessRecord(
                time.time(),  # calendar time on purpose: it is for people and log stores
                protocol,
                model,
                version,
                status,
                round(seconds * 1e3, 3),
                self._pid,
                request_id,
            )
        )
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(line + b"\n")

    def flush(self) -> None:
        """Write every pending line now."""
        pending, self._pending = self._pending, []
        chunk: list[bytes] = []
        size = 0
        for line in pending:
            if chunk and size + len(line) > _CHUNK:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            if not self._dropped:
                logger.error("access log: cannot write (%s); dropping its lines until it can", exc)
            self._dropped += bytes(view).count(b"\n")  # a line cut short is dropped too
            return
        if self._dropped:
            logger.warning("access log: writing again; %d line(s) dropped", self._dropped)
            self._dropped = 0

    def close(self) -> None:
        """Write what is pending; close the file if this log opened it."""
        self.flush()
        if self._owned:
            os.close(self._fd)

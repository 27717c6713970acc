"""The access log's writes: a failing one drops its lines, says so once, and recovers."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from ligeiro.accesslog import AccessLog


def test_a_failing_write_drops_lines_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    log = AccessLog(fd, owned=True)

    async def requests(count: int) -> None:
        for _ in range(count):
            log.record("http", "iris", "1", "200", 0.001, None)
        await asyncio.sleep(0)  # the loop's pass ends: the lines are written

    with caplog.at_level(logging.WARNING, logger="ligeiro.accesslog"):
        asyncio.run(requests(3))
        asyncio.run(requests(2))
        assert [r.getMessage() for r in caplog.records] == [
            "access log: cannot write ([Errno 28] No space left on device); "
            "dropping its lines until it can"
        ]
        target = tmp_path / "access.jsonl"
        room = os.open(target, os.O_WRONLY | os.O_CREAT)
        os.dup2(room, fd)  # the disk has room again
        os.close(room)
        asyncio.run(requests(1))
        assert caplog.records[-1].getMessage() == "access log: writing again; 5 line(s) dropped"
    log.close()
    assert len(target.read_text().splitlines()) == 1

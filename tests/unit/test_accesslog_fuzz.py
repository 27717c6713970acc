"""Fuzzing the access log: any record is written as one JSON line that reads back the same.

``AccessLog.record`` gets generated batches of records (model names, versions, statuses
and request ids of any text: quotes, backslashes, newlines, control characters, any
plane; latencies from 0 to huge), flushed as the event loop's pass ends, to a file. Each
must come out as exactly one line, in order, that JSON-decodes to what was recorded.
"""

from __future__ import annotations

import asyncio
import os

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ligeiro.accesslog import AccessLog, AccessRecord
from tests.fuzz import fuzz

_TEXT = st.text(max_size=20) | st.text(st.characters(codec="utf-8"), max_size=300)
_RECORDS = st.lists(
    st.tuples(
        st.sampled_from(["http", "grpc"]), _TEXT, _TEXT,
        st.sampled_from(["200", "400", "NOT_FOUND"]) | _TEXT,
        st.floats(0, 1e6) | st.sampled_from([0.0, 1e-9, 1e300]),
        st.none() | _TEXT,
    ),
    min_size=1, max_size=40,
)  # fmt: skip


@fuzz(300)
@given(_RECORDS)
def test_any_record_is_one_json_line_that_reads_back(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[tuple[str, str, str, str, float, str | None]],
) -> None:
    path = tmp_path_factory.getbasetemp() / "access-fuzz.log"
    path.unlink(missing_ok=True)
    log = AccessLog.open(path)

    async def write() -> None:
        for record in records:
            log.record(*record)
        await asyncio.sleep(0)  # the pass ends: the lines go out together

    try:
        asyncio.run(write())
        log.close()
        lines = path.read_bytes().split(b"\n")
    finally:
        path.unlink(missing_ok=True)
    assert lines.pop() == b""  # every line ends with a newline
    assert len(lines) == len(records)
    decode = msgspec.json.Decoder(AccessRecord).decode
    for line, (protocol, model, version, status, seconds, request_id) in zip(
        lines, records, strict=True
    ):
        got = decode(line)
        assert (got.protocol, got.model, got.version, got.status, got.request_id) == (
            protocol, model, version, status, request_id,
        )  # fmt: skip
        assert got.latency_ms == round(seconds * 1e3, 3)
        assert got.pid == os.getpid()

"""``ligeiro bench --html`` opens in a browser with its plots: Debian's chromium-headless-shell
(unpacked by `make test`, scripts/fetch_chromium.sh) screenshots the report, and the PNG holds
the plot series' colours."""

from __future__ import annotations

import struct
import subprocess
import zlib
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from ligeiro.cli import cli
from tests.conftest import ROOT, debian_tool

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Server

CHROMIUM = ROOT / ".venv" / "chromium" / "headless-shell"
WIDTH, HEIGHT = 1200, 900


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, header, idat = 8, b"", b""
    while pos < len(data):
        (length, kind), body = struct.unpack(">I4s", data[pos : pos + 8]), data[pos + 8 :]
        if kind == b"IHDR":
            header = body[:13]
        elif kind == b"IDAT":
            idat += body[:length]
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8, depth
    assert color in (2, 6), color
    assert interlace == 0, interlace
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:  # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        else:
            assert kind == 0, f"PNG filter {kind}"
        rows.append(bytes(line) if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3))
        prev = line
    return width, height, rows


def test_html_report_renders_its_plots(server: Server, tmp_path: Path) -> None:
    version = debian_tool(CHROMIUM, "chromium-headless-shell")
    page, shot = tmp_path / "bench.html", tmp_path / "bench.png"
    url = f"http://{server.host}:{server.port}"
    result = CliRunner().invoke(
        cli,
        ["bench", url, "iris", "--concurrency", "1:2:x2", "--duration", "0.5", "--warmup", "0",
         "--html", str(page)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    browser = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
         f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert browser.returncode == 0, f"{version}: {browser.stderr[-4000:]}"
    assert shot.is_file(), f"{version} wrote no --screenshot: {browser.stderr[-4000:]}"
    width, height, rows = read_png(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    assert len(set(rows)) > 20, "the screenshot is (nearly) one flat colour"
    # The page's text, axes and grid are grey; only the plotted series are coloured
    # (_report._COLORS: p50 #1b9e77, p90 #7570b3, p95 #d95f02, p99 #e7298a, ok/s #1f77b4).
    coloured = sum(
        1
        for row in rows
        for i in range(0, len(row), 3)
        if max(row[i : i + 3]) - min(row[i : i + 3]) > 60
    )
    assert coloured > 500, f"{coloured} coloured pixels: no plotted series on screen"

"""``ligeiro bench``'s reports: a terminal table, JSON, and one self-contained HTML file."""

# ruff: noqa: E501  (SVG markup reads best one element per line)

from __future__ import annotations

import dataclasses
import html
import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._runner import Level

logger = logging.getLogger(__name__)

__all__ = ["format_table", "to_html", "to_json"]

_COLUMNS = ("level", "sent", "ok/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms",
            "errors", "server CPU", "server RSS", "client CPU")  # fmt: skip
_COLORS = {"p50": "#1b9e77", "p90": "#7570b3", "p95": "#d95f02", "p99": "#e7298a", "max": "#999"}


def _ms(level: Level, key: str) -> str:
    value = level.latency_ms.get(key)
    return "-" if value is None else f"{value:.2f}"


def _row(level: Level) -> list[str]:
    errors = ", ".join(f"{k}:{v}" for k, v in sorted(level.errors.items())) or "0"
    cores = "-" if level.server_cpu_cores is None else f"{level.server_cpu_cores:.2f} cores"
    rss = "-" if level.server_rss_bytes is None else f"{level.server_rss_bytes / 2**20:.0f} MiB"
    client = f"{level.client_cpu:.0%}" + (" (!)" if level.is_client_bound else "")
    return [
        level.label, f"{level.sent:,}", f"{level.throughput_per_s:,.1f}",
        *(_ms(level, k) for k in ("p50", "p90", "p95", "p99", "max")),
        errors, cores, rss, client,
    ]  # fmt: skip


def format_table(levels: Sequence[Level]) -> str:
    """The levels as an aligned text table, one row each."""
    rows = [list(_COLUMNS), *(_row(level) for level in levels)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _level_dict(level: Level) -> dict[str, Any]:
    out = dataclasses.asdict(level)
    out["error_count"] = level.error_count
    out["is_client_bound"] = level.is_client_bound
    return out


def to_json(levels: Sequence[Level], meta: dict[str, Any]) -> dict[str, Any]:
    """The run as a JSON-ready dict: ``meta`` (target, options, date) and ``levels``.

    Levels of mode ``"window"`` (``--window``) go under ``windows`` instead.
    """
    out: dict[str, Any] = {
        "meta": meta,
        "levels": [_level_dict(level) for level in levels if level.mode != "window"],
    }
    windows = [_level_dict(level) for level in levels if level.mode == "window"]
    if windows:
        out["windows"] = windows
    return out


def _nice(value: float) -> float:
    """A round axis maximum at or above ``value``."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    base = 10 ** math.floor(math.log10(value))
    return float(next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= value))


def _plot(
    title: str, labels: Sequence[str], series: dict[str, list[float | None]], unit: str
) -> str:
    """One SVG line chart: a point per level, a line per series."""
    width, height, left, right, top, bottom = 640, 300, 60, 110, 30, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for vs in series.values() for v in vs if v is not None]
    top_value = _nice(max(values, default=1.0))
    n = len(labels)

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n if n else 0)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / top_value)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
    ]  # fmt: skip
    for tick in range(5):
        v = top_value * tick / 4
        parts.append(
            f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + plot_w}" y2="{y(v):.1f}" stroke="#eee"/>'
        )
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    for i, label in enumerate(labels):
        parts.append(
            f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{html.escape(label)}</text>'
        )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" text-anchor="middle">{html.escape(unit)}</text>'
    )
    for k, (name, vs) in enumerate(series.items()):
        color = _COLORS.get(name, "#1f77b4")
        points = [(x(i), y(v)) for i, v in enumerate(vs) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>'
            )
        parts.extend(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"/>' for px, py in points
        )
        parts.append(
            f'<text x="{left + plot_w + 10}" y="{top + 14 * k + 10}" fill="{color}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def to_html(levels: Sequence[Level], meta: dict[str, Any]) -> str:
    """One self-contained HTML page (no scripts, no external files): plots and the table."""
    labels = [level.label for level in levels]
    latency = {k: [level.latency_ms.get(k) for level in levels] for k in _COLORS}
    throughput: dict[str, list[float | None]] = {
        "ok/s": [level.throughput_per_s for level in levels]
    }
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in _row(level)) + "</tr>"
        for level in levels
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
    about = "".join(
        f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in meta.items()
    )
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>ligeiro bench</title>'
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child{text-align:left}</style></head><body>\n"
        f"<h1>ligeiro bench</h1><ul>{about}</ul>\n"
        f"{_plot('Latency per level (2xx answers)', labels, latency, 'ms')}\n"
        f"{_plot('Throughput per level', labels, throughput, 'requests/s')}\n"
        f"<table><tr>{head}</tr>{rows}</table>\n</body></html>\n"
    )

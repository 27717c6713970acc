"""The server's own CPU and memory, read from ligeiro's Prometheus metrics."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ..client import Client

logger = logging.getLogger(__name__)

__all__ = ["ServerSample", "scrape"]

# ligeiro's own (summed over workers, sampled each second by each) first; the
# prometheus_client process collector (exact, single-process servers only) wins if present.
_CPU = ("process_cpu_seconds_total", "ligeiro_process_cpu_seconds_total")
_RSS = ("process_resident_memory_bytes", "ligeiro_process_resident_memory_bytes")


@dataclass(frozen=True)
class ServerSample:
    """One scrape: when, the server's CPU seconds and resident bytes."""

    at_s: float  # time.monotonic()
    cpu_s: float
    rss_bytes: float


def _value(text: str, names: tuple[str, ...]) -> float | None:
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name in names:
            found[name] = float(rest.split()[0])
    return next((found[n] for n in names if n in found), None)


def scrape(client: Client, path: str = "/metrics") -> ServerSample | None:
    """Read CPU and RSS from ``path``; None when the server does not export them."""
    try:
        text = client.request("GET", path).decode("utf-8", "replace")
    except Exception as exc:  # any failure means: no server metrics
        logger.debug("no metrics at %s: %s", path, exc)
        return None
    cpu, rss = _value(text, _CPU), _value(text, _RSS)
    if cpu is None or rss is None:
        return None
    return ServerSample(time.monotonic(), cpu, rss)


def metrics_path(url: str) -> str:
    """The path part of a metrics URL (``/metrics`` when it has none)."""
    return urlsplit(url).path or "/metrics"

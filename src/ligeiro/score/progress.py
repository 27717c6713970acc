"""A one-line progress display on stderr: rows, rows/s and, when the total is known, ETA."""

from __future__ import annotations

import logging
import time
from typing import IO, TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Progress"]

logger = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@final
class Progress:
    """Redraws ``rows, rows/s[, %, ETA]`` at most every ``interval_s`` seconds.

    Args:
        stream: where to draw (stderr); None draws nothing.
        total: rows expected, when known.
        clock: monotonic seconds; injectable for tests.
        interval_s: the shortest time between two redraws (0.2 s: about 5 a second).
    """

    def __init__(
        self,
        stream: IO[str] | None,
        total: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = 0.2,
    ) -> None:
        self.stream = stream
        self.total = total
        self.rows = 0
        self._clock = clock
        self._interval_s = interval_s
        self._start = clock()
        self._drawn = -interval_s
        self._width = 0

    def line(self) -> str:
        """The text of the progress line as of now."""
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = self.rows / elapsed
        text = f"{self.rows:,} rows  {rate:,.0f} rows/s"
        if self.total:
            share = min(self.rows / self.total, 1.0)
            eta = (self.total - self.rows) / rate if rate > 0 else 0.0
            text += f"  {share:6.1%}  ETA {_duration(max(eta, 0.0))}"
        return text

    def advance(self, rows: int) -> None:
        """Count ``rows`` more; redraw if the last redraw is old enough."""
        self.rows += rows
        if self.stream is None:
            return
        now = self._clock()
        if now - self._drawn >= self._interval_s:
            self._drawn = now
            self._draw()

    def _draw(self) -> None:
        assert self.stream is not None
        text = self.line()
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def close(self) -> None:
        """Draw the final count and end the line."""
        if self.stream is not None and self._width:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

"""A one-line progress bar on stderr: count, rate and estimated time left."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``Progress(total, label)``; ``update(n)`` adds ``n`` done, ``close()`` ends the line.

    Redraws at most every ``interval`` seconds (and at the end) with ``\\r`` when ``stream`` is a
    terminal, as whole lines otherwise (so logs stay readable). ``quiet=True`` draws nothing.
    ``total`` must be positive.
    """

    def __init__(
        self,
        total: int,
        label: str,
        *,
        stream: TextIO | None = None,
        interval: float = 0.5,
        quiet: bool = False,
    ) -> None:
        if total < 1:
            raise ValueError(f"total must be positive, got {total}")
        self.total, self.label, self.done = total, label, 0
        self.stream = sys.stderr if stream is None else stream
        self.quiet = quiet
        self.interval = interval if self.stream.isatty() else max(interval, 10.0)
        self.note = ""
        self._start = self._drawn = time.perf_counter()
        self._closed = False
        self._shown: tuple[int, str] | None = None

    def update(self, n: int = 1, note: str | None = None) -> None:
        """Add ``n`` to the count; ``note`` replaces the text shown after the bar."""
        self.done = min(self.total, self.done + n)
        if note is not None:
            self.note = note
        now = time.perf_counter()
        if now - self._drawn >= self.interval or self.done == self.total:
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The bar as text: ``label [#####.....] done/total pct rate eta note``."""
        now = time.perf_counter() if now is None else now
        elapsed = now - self._start
        frac = self.done / self.total
        width = 24
        filled = round(frac * width)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = f"{left:4.0f}s left" if left == left else "   ? left"
        return (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{100 * frac:3.0f}% {elapsed:5.0f}s {eta} {self.note}"
        ).rstrip()

    def _draw(self, now: float) -> None:
        self._drawn = now
        self._shown = (self.done, self.note)
        if self.quiet:
            return
        end = "" if self.stream.isatty() else "\n"
        prefix = "\r" if self.stream.isatty() else ""
        self.stream.write(prefix + self.line(now) + end)
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line (once)."""
        if self._closed:
            return
        self._closed = True
        if self._shown != (self.done, self.note):
            self._draw(time.perf_counter())
        if not self.quiet and self.stream.isatty():
            self.stream.write("\n")
            self.stream.flush()
